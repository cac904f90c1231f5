"""Out-of-core data operator over a LiberTEM dataset: one UDF per read.

:class:`LiberTEMOperator` is :class:`hyperspy_cnmf.chunked.DaskOperator` with
another engine: every read of the data is one ``ctx.run_udf`` of one generic
UDF (:class:`BlockUDF`) instead of one ``dask.compute``. Everything else (the
statistics shared by the first read, ``right_gram``, ``fused_pass``, the
rescaled operators that reuse the sums already read) is inherited unchanged,
so the same solver (:func:`hyperspy_cnmf.nmf.constrained_nmf`) drives both,
and LiberTEM's readers (MIB, K2IS, FRMS6, SEQ, raw, NPY, HDF5, ...) and
executors (inline, threads, dask, pipelined) read the data.

The UDF's ``process_partition`` calls the same block function as the dask
path (``chunked._summary_block``, ``_right_block``, ``_fused_block``, ...,
i.e. the Numba kernels of :mod:`hyperspy_cnmf.nmf._kernels`) on the
partition reshaped to ``(positions, pixels)``; the partition's rows are its
slice's origin in the flat navigation index. Per-position inputs (the row
scale, the map rows of a fused pass, masks) arrive as LiberTEM auxiliary data
(``kind="nav"``). Each partition returns its per-position outputs and its
partial sums in one ``kind="single"`` object buffer; ``merge`` combines the
partial sums with the tree of :func:`hyperspy_cnmf.chunked.tree_reduce`
(groups of :data:`~hyperspy_cnmf.chunked.SPLIT_EVERY` partitions in partition
order, level by level), merging a group as soon as all its members have
arrived. The sums therefore do not depend on the order in which an
executor's workers finish, and equal those of a ``DaskOperator`` whose blocks
are the dataset's partitions.

This module knows LiberTEM and dask (through :mod:`hyperspy_cnmf.chunked`),
not HyperSpy; LiberTEM is imported here only.
"""

import warnings

import numpy as np
import threadpoolctl
from libertem.io.dataset.base import DataSet
from libertem.udf import UDF

from hyperspy_cnmf.chunked import SPLIT_EVERY, DaskOperator, _merge, _Shared
from hyperspy_cnmf.nmf._operators import compute_dtype

__all__ = ["BlockUDF", "LiberTEMOperator"]


class _OrderedTree:
    """The tree reduction of :func:`~hyperspy_cnmf.chunked.tree_reduce`, fed in any order.

    ``add(index, part)`` stores the partial result of block ``index`` (of
    ``n`` blocks); a group of :data:`SPLIT_EVERY` neighbours (fewer at the end
    of a level) is merged as soon as all its members are there, so that no
    more parts wait than the executor's disorder requires.
    """

    def __init__(self, n):
        self.sizes = [n]
        while self.sizes[-1] > 1:
            self.sizes.append(-(-self.sizes[-1] // SPLIT_EVERY))
        self.nodes = {}
        self.locals = {}

    def add(self, index, part):
        level = 0
        self.nodes[(level, index)] = part
        while level + 1 < len(self.sizes):
            parent = index // SPLIT_EVERY
            group = range(
                parent * SPLIT_EVERY,
                min((parent + 1) * SPLIT_EVERY, self.sizes[level]),
            )
            if any((level, j) not in self.nodes for j in group):
                return
            merged = _merge([self.nodes.pop((level, j)) for j in group])
            level, index = level + 1, parent
            self.nodes[(level, index)] = merged

    def result(self):
        """``(locals in block order, merged partial sums)`` once every block was added."""
        if len(self.locals) != self.sizes[0] or list(self.nodes) != [
            (len(self.sizes) - 1, 0)
        ]:
            raise RuntimeError(
                f"{len(self.locals)} of {self.sizes[0]} partitions of the dataset were "
                "processed: the read is incomplete"
            )
        return [self.locals[i] for i in range(self.sizes[0])], self.nodes[
            (len(self.sizes) - 1, 0)
        ]


def _release_openblas():
    """Let this thread set OpenBLAS's thread count again (threadpoolctl >= 3.8).

    threadpoolctl gives the control of OpenBLAS's process-wide pool to the
    first thread that sets it and silently ignores the others; a worker thread
    of LiberTEM's threaded executor keeps that control after a run.
    """
    controller = getattr(threadpoolctl, "OpenBLASController", None)
    clear = getattr(controller, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


def _keeping_thread_limits(run):
    """``run()``, with the driver's BLAS/OpenMP thread limits as they were before it.

    LiberTEM's threaded executor limits the numerical libraries to one thread
    in every task and then restores limits it saw earlier, from a worker
    thread that keeps the control of OpenBLAS (:func:`_release_openblas`):
    measured (LiberTEM 0.16, threadpoolctl 3.8) to leave OpenBLAS at 2
    threads inside the fit's single-threaded-BLAS block: the threads
    executor's fit in ``benchmarks/bench_libertem.py`` took 20.7 s (7.6 s
    with this guard, the machine at load 9-12) and its factors differed from
    the dask path's by 1.5e-4 (0 with it).
    """
    _release_openblas()
    before = {
        lib["filepath"]: lib["num_threads"] for lib in threadpoolctl.threadpool_info()
    }
    try:
        return run()
    finally:
        _release_openblas()
        for lib in threadpoolctl.ThreadpoolController().lib_controllers:
            n = before.get(lib.filepath)
            if n is not None and lib.num_threads != n:
                lib.set_num_threads(n)


class BlockUDF(UDF):
    """One read of a :class:`LiberTEMOperator`: a block function on every partition.

    Not meant to be built by hand: :meth:`LiberTEMOperator._read` makes one
    per read. Parameters (LiberTEM UDF keyword arguments):

    - ``func``: the block function,
      ``func(block, rows, shape, row_scale, *inputs, *args, shared)``,
      returning a dict of partial sums, or ``(local, dict)`` if ``local``;
    - ``args``: extra positional arguments, the same for all partitions;
    - ``shared``: the :class:`~hyperspy_cnmf.chunked._Shared` arguments;
    - ``local``: whether ``func`` returns per-position outputs;
    - ``origins``: the first flat navigation index of every partition, in
      partition order (the block index of a partial result);
    - ``n_inputs`` and ``input0``, ``input1``, ...: per-position inputs
      (LiberTEM auxiliary data, ``kind="nav"``), the first the row scale;
    - ``dtype``: the analysis dtype (float32 or float64) LiberTEM converts the
      data to.

    Its one result buffer, ``blocks`` (``kind="single"``, ``dtype=object``),
    holds an :class:`_OrderedTree` after the merge.
    """

    def get_result_buffers(self):
        return {"blocks": self.buffer(kind="single", dtype=object)}

    def get_preferred_input_dtype(self):
        return self.params.dtype

    def get_backends(self):
        # Dense NumPy partitions for the Numba kernels (LiberTEM converts sparse
        # and device arrays).
        return ("numpy",)

    def process_partition(self, partition):
        p = self.params
        n = partition.shape[0]
        origin = int(self.meta.slice.origin[0])
        # Own copies: the block functions may update their inputs (the map rows of a fused pass).
        inputs = [np.array(getattr(p, f"input{i}")) for i in range(p.n_inputs)]
        out = p.func(
            partition,
            slice(origin, origin + n),
            (n, int(np.prod(partition.shape[1:]))),
            inputs[0],
            *inputs[1:],
            *p.args,
            p.shared,
        )
        self.results.blocks[0] = (origin, out)

    def merge(self, dest, src):
        tree = dest.blocks[0]
        if not isinstance(tree, _OrderedTree):
            tree = _OrderedTree(len(self.params.origins))
            dest.blocks[0] = tree
        origin, out = src.blocks[0]
        index = self.params.origins.index(origin)
        local, part = out if self.params.local else (None, out)
        tree.locals[index] = local
        tree.add(index, part)


class _PartitionLayout:
    """The partitions of a LiberTEM dataset as the blocks of a DaskOperator."""

    darray = None

    def __init__(self, ctx, dataset):
        if not isinstance(dataset, DataSet):
            raise TypeError(
                f"dataset must be a LiberTEM DataSet (from ctx.load(...)), got {type(dataset).__name__}"
            )
        shape = dataset.shape
        self.ctx, self.dataset = ctx, dataset
        self.nav_shape = tuple(int(n) for n in shape.nav)
        self.signal_shape = tuple(int(n) for n in shape.sig)
        self.shape = (int(np.prod(self.nav_shape)), int(np.prod(self.signal_shape)))
        dtype = np.dtype(dataset.dtype)
        if np.issubdtype(dtype, np.complexfloating) or not (
            np.issubdtype(dtype, np.number) or dtype.kind == "b"
        ):
            raise TypeError(f"the data must be real numbers, got dtype {dtype}")
        self.dtype = compute_dtype(dtype)
        self.blocks = []
        for part in dataset.get_partitions():
            start = int(part.slice.origin[0])
            self.blocks.append((None, slice(start, start + int(part.slice.shape[0]))))
        self.origins = tuple(rows.start for _, rows in self.blocks)

    def row_count(self, rows):
        return rows.stop - rows.start


class LiberTEMOperator(DaskOperator):
    """A data matrix held in a LiberTEM dataset, read by one UDF run per pass.

    The operator interface of :class:`~hyperspy_cnmf.nmf.DenseOperator` and
    :class:`~hyperspy_cnmf.chunked.DaskOperator` (all methods inherited from
    the latter), with every read of the data a ``ctx.run_udf`` of a
    :class:`BlockUDF`: the dataset's partitions are the blocks, and the numbers
    are those of a ``DaskOperator`` over the same blocks (the same block
    functions, the same order of the sums).

    Parameters
    ----------
    dataset : libertem.io.dataset.base.DataSet
        From ``ctx.load(...)``: navigation axes, then signal axes (any number
        of each; rows are the positions in C order, columns the detector
        pixels in C order). Integer data are analysed as float32, float64 data
        as float64 (LiberTEM converts each partition). Read only, never
        modified; a ``roi`` is not supported (mask positions with
        ``row_scale`` = 0).
    row_scale, col_scale : array-like or None
        Per-row and per-column scales (0 = masked); None means all ones.
    ctx : libertem.api.Context
        The context whose executor runs the UDFs (inline, threads, dask, ...).
    poisson_stats : bool, default True
        See :class:`~hyperspy_cnmf.chunked.DaskOperator`.
    progress : bool, default False
        LiberTEM's progress bar of every read.

    Attributes
    ----------
    n_passes : int
        Reads of the data so far (UDF runs).
    n_repeated_reads : int
        Reads repeated because the executor returned an incomplete run (each
        with a ``RuntimeWarning``; a second incomplete run of one read raises
        ``RuntimeError``). Not counted in ``n_passes``.

    Raises
    ------
    TypeError
        If ``dataset`` is not a LiberTEM dataset or its dtype is not real.

    Examples
    --------
    >>> import numpy as np
    >>> from libertem.api import Context
    >>> from hyperspy_cnmf.chunked_libertem import LiberTEMOperator
    >>> from hyperspy_cnmf.nmf import constrained_nmf
    >>> rng = np.random.default_rng(0)
    >>> X = rng.poisson(20 * rng.random((64, 3)) @ rng.random((3, 100)))
    >>> ctx = Context.make_with("inline")
    >>> ds = ctx.load("memory", data=X.reshape(8, 8, 10, 10), num_partitions=4)
    >>> op = LiberTEMOperator(ds, ctx=ctx)
    >>> op.shape, op.dtype
    ((64, 100), dtype('float32'))
    >>> result = constrained_nmf(op, 3, random_state=0, max_iter=50, tol=1e-4)
    >>> result.W.shape, result.Ht.shape  # maps (positions, k), patterns (pixels, k)
    ((64, 3), (100, 3))
    """

    n_repeated_reads = 0

    def __init__(
        self,
        dataset,
        row_scale=None,
        col_scale=None,
        *,
        ctx=None,
        poisson_stats=True,
        progress=False,
        _layout=None,
        _base=None,
    ):
        if _layout is None:
            if ctx is None:
                raise TypeError(
                    "LiberTEMOperator needs the LiberTEM Context: LiberTEMOperator(ds, ctx=ctx)"
                )
            _layout = _PartitionLayout(ctx, dataset)
        self.progress = bool(progress)
        super().__init__(
            None,
            row_scale,
            col_scale,
            poisson_stats=poisson_stats,
            _layout=_layout,
            _base=_base,
        )

    def __repr__(self):
        return (
            f"<LiberTEMOperator shape={self.shape} dtype={self.dtype} "
            f"partitions={len(self._layout.blocks)} passes={self.n_passes}>"
        )

    @property
    def dataset(self):
        """The LiberTEM dataset that is read."""
        return self._layout.dataset

    def rescaled(self, row_scale, col_scale):
        op = super().rescaled(row_scale, col_scale)
        op.progress = self.progress
        return op

    rescaled.__doc__ = DaskOperator.rescaled.__doc__

    def _read(self, func, *args, per_block=None, local=False, **shared):
        """One read: ``func`` on every partition (one UDF run), partial dicts merged by the tree.

        The contract of :meth:`DaskOperator._read <hyperspy_cnmf.chunked.DaskOperator._read>`:
        ``per_block(rows)`` gives the per-position inputs of the rows
        ``rows``; it is called once for all rows, and LiberTEM hands every
        partition its share.
        """
        lay = self._layout
        sh = _Shared(
            dtype=self.dtype,
            col_scale=self.col_scale,
            col_masked=self.col_scale == 0,
            **shared,
        )
        everything = slice(0, self.shape[0])
        inputs = [self.row_scale]
        if per_block is not None:
            inputs += list(per_block(everything))
        aux = {}
        for i, a in enumerate(inputs):
            a = np.ascontiguousarray(a)
            aux[f"input{i}"] = BlockUDF.aux_data(
                a.reshape(-1), kind="nav", extra_shape=a.shape[1:], dtype=a.dtype
            )
        self.n_passes += 1
        for attempt in range(2):
            udf = BlockUDF(
                func=func,
                args=args,
                shared=sh,
                local=bool(local),
                origins=lay.origins,
                n_inputs=len(inputs),
                dtype=self.dtype,
                **aux,
            )
            res = _keeping_thread_limits(
                lambda: lay.ctx.run_udf(
                    dataset=lay.dataset, udf=udf, progress=self.progress
                )
            )
            tree = res["blocks"].data[0]
            if isinstance(tree, _OrderedTree) and len(tree.locals) == tree.sizes[0]:
                break
            # Measured once in CI (LiberTEM 0.16, distributed 2026.8, dask
            # executor on 2 loaded cores): a run returned without merging any
            # partition (the buffer still held its initial 0). The read is
            # repeated once; a second incomplete run raises.
            done = len(tree.locals) if isinstance(tree, _OrderedTree) else 0
            if attempt == 0:
                warnings.warn(
                    f"the LiberTEM executor returned {done} of {len(lay.origins)} "
                    "partitions of this read; the read is repeated",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.n_repeated_reads += 1
            else:
                raise RuntimeError(
                    f"the LiberTEM executor returned {done} of {len(lay.origins)} "
                    "partitions twice: the read is incomplete (is the cluster "
                    "losing workers?)"
                )
        got_locals, merged = tree.result()
        return (got_locals if local else []), merged
