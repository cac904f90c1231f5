"""Out-of-core data operator: dask navigation chunks through the NMF kernels.

:class:`DaskOperator` gives the solver (:func:`hyperspy_cnmf.nmf.constrained_nmf`)
exactly the interface of :class:`hyperspy_cnmf.nmf.DenseOperator`, for data
that live in a dask array (a lazy HyperSpy signal, a ``.zspy``/``.hspy`` file
opened lazily, ...). It follows LiberTEM's process + merge model: every method
is **one read of the data**, i.e. one ``dask.compute`` in which each
navigation chunk is processed by the same per-block code as the in-memory
operator (the Numba kernels of :mod:`hyperspy_cnmf.nmf._kernels`:
``block_right`` for ``X @ A``, ``block_left`` for ``X.T @ B``), and the
partial ``X.T @ B`` sums are merged by a tree reduction. Only small arrays
(factor blocks, per-pixel sums) travel back to the driver. The read of each
chunk is fused into the task that processes it (:func:`fused_compute`), so
that on a ``distributed`` cluster a chunk never leaves the worker that read
it: only the shared factors go out and the partial sums come back
(``benchmarks/bench_transfer.py`` measures it).

The products are single-threaded Numba kernels on purpose: the scheduler's
threads (or worker processes) are the parallelism. Multi-threaded BLAS calls
inside the block tasks oversubscribe the cores (two dask threads times two
OpenBLAS threads on a 2-core machine), which was measured to make every read
of the 2.1 GB benchmark file 1.2-1.8x slower; the kernels are also faster
than single-threaded BLAS for the few components of NMF (k = 7: 6 ms against
12 ms for ``X @ A`` on a 2048 x 8100 float32 block).

No scheduler is chosen here: ``dask.compute`` uses whatever is active (the
threaded scheduler by default, or a ``distributed.Client`` created by the
user). All block functions and the solver's update closures pickle, so they
run on distributed workers too.

Reads are combined where the interface allows it:

- ``stats()``, ``mean_pattern()`` and ``row_col_sums()`` share **one** read
  (the first one asked computes all three, and the statistics of the
  Poisson-normalised data as well, so ``rescaled()`` with the Poisson scales
  costs no read);
- the same read measures the direct-beam centre of every pattern
  (:meth:`DaskOperator.beam_positions`, 2D detectors only);
- ``right_gram(A)`` returns ``Xe @ A`` and ``Xe.T @ (Xe @ A)`` from one read,
  which :func:`hyperspy_cnmf.nmf._operators.randomized_range` uses: the
  randomized range finder costs ``n_power_iter + 1`` reads instead of
  ``2 n_power_iter + 2``.

This module knows dask, not HyperSpy.
"""

import functools
import itertools
import operator
import uuid

import dask
import dask.array as da
import numpy as np
from dask.sizeof import sizeof

from hyperspy_cnmf._beam import beam_search_pixels
from hyperspy_cnmf.nmf._kernels import (
    block_beam_centres,
    block_right,
    block_row_col_sums,
    block_stats,
    block_summary,
)
from hyperspy_cnmf.nmf._operators import (
    _beam_shape,
    _scale_vector,
    compute_dtype,
    gram_block,
    round_sums,
    summed_left,
)

__all__ = ["DaskOperator"]

#: Largest block (bytes, in the analysis dtype) of one task; larger chunks
#: are split along the navigation axes (never merged). Splitting a chunk costs
#: a rechunk on every read (measured +0.2 s, 20 %, per read of the 2.1 GB
#: benchmark file with its 132 MB chunks at a 64 MiB limit) and does not lower
#: the peak memory, since the whole chunk is decompressed anyway; the limit
#: only bounds the float copies of integer chunks.
MAX_BLOCK_BYTES = 256 * 2**20
#: Fan-in of the tree reduction of the partial sums.
SPLIT_EVERY = 4


# --------------------------------------------------------------------------
# block functions (module level: they pickle by reference for distributed)
# --------------------------------------------------------------------------


class _Shared:
    """Arguments common to all block tasks of one read (one graph key, sent once)."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@sizeof.register(_Shared)
def _sizeof_shared(sh):
    """The bytes of what it carries (the scheduler's transfer costs and logs count them)."""
    return sizeof(sh.__dict__)


def _prepare(block, shape, dtype, row_scale, col_masked):
    """A chunk as a 2D float block, with non-finite masked entries set to 0.

    The chunk is never modified (it may be a view of the user's array).
    """
    X = np.ascontiguousarray(block).reshape(shape)
    owned = False
    if X.dtype != dtype:
        X = X.astype(dtype)
        owned = True
    row_masked = row_scale == 0
    for sel in (row_masked, col_masked):
        if not sel.any():
            continue
        sub = X[sel] if sel is row_masked else X[:, sel]
        bad = ~np.isfinite(sub)
        if bad.any():
            if not owned:
                X = X.copy()
                owned = True
            sub[bad] = 0
            if sel is row_masked:
                X[sel] = sub
            else:
                X[:, sel] = sub
    return X


def _summary_block(block, rows, shape, row_scale, sh):
    X = _prepare(block, shape, sh.dtype, row_scale, sh.col_masked)
    out = block_summary(X, row_scale, sh.col_scale, sh.poisson)
    keys = (
        "total",
        "sq_norm",
        "minimum",
        "n_bad",
        "n_rows",
        "rows",
        "cols",
        "pattern",
        "p_sum",
        "p_sq",
        "p_bad",
        "p_min",
    )
    part = dict(zip(keys, out))
    rows_sum = part.pop("rows")
    beam = None
    if (
        sh.beam_shape is not None
    ):  # the direct beam of every pattern, while the block is in memory
        beam = np.empty((X.shape[0], 2))
        block_beam_centres(X, *sh.beam_shape, row_scale != 0, sh.beam_pixels, beam)
    if sh.AcT is None:
        return (rows_sum, None, beam), part
    # the expected range-finder product (right_gram), while the block is in memory
    Y, gram = _gram(X, row_scale, sh.AcT)
    part.update(gram)
    return (rows_sum, Y, beam), part


def _gram(X, row_scale, AcT):
    """``Y = diag(r) X AcT.T`` and ``(Xe.T @ Y).T`` (float64 sums, no column scale)."""
    Y = np.empty((X.shape[0], AcT.shape[0]))
    P = np.zeros((Y.shape[1], X.shape[1]))
    gram_block(X, row_scale, AcT, Y, P)
    return Y, {"P": P}


def _sums_block(block, rows, shape, row_scale, row_valid, sh):
    X = _prepare(block, shape, sh.dtype, row_scale, sh.col_masked)
    r, c = block_row_col_sums(X, row_valid, sh.col_valid)
    return r, {"cols": c}


def _pattern_block(block, rows, shape, row_scale, row_valid, sh):
    X = _prepare(block, shape, sh.dtype, row_scale, sh.col_masked)
    return {
        "pattern": X[row_valid].sum(axis=0, dtype=np.float64),
        "n_rows": int(row_valid.sum()),
    }


def _stats_block(block, rows, shape, row_scale, sh):
    X = _prepare(block, shape, sh.dtype, row_scale, sh.col_masked)
    t, s, m, b = block_stats(X, row_scale, sh.col_scale)
    return {"total": t, "sq_norm": s, "minimum": m, "n_bad": b}


def _right_block(block, rows, shape, row_scale, sh):
    X = _prepare(block, shape, sh.dtype, row_scale, sh.col_masked)
    if sh.gram:
        return _gram(X, row_scale, sh.AcT)
    Y = np.empty((X.shape[0], sh.AcT.shape[0]))
    block_right(X, sh.AcT, row_scale, Y)
    return Y, {}


def _left(X, B, row_scale):
    """``(X.T @ diag(row_scale) B).T``, float64 (:func:`~hyperspy_cnmf.nmf._operators.summed_left`)."""
    return summed_left([(X, B * row_scale[:, None])], B.shape[1], X.shape[1])


def _left_t_block(block, rows, shape, row_scale, B, sh):
    X = _prepare(block, shape, sh.dtype, row_scale, sh.col_masked)
    return {"P": _left(X, B, row_scale)}


def _right_left_t_block(block, rows, shape, row_scale, B, sh):
    X = _prepare(block, shape, sh.dtype, row_scale, sh.col_masked)
    Y = np.empty((X.shape[0], sh.AcT.shape[0]))
    block_right(X, sh.AcT, row_scale, Y)
    return Y, {"P": _left(X, B, row_scale)}


def _fused_block(block, rows, shape, row_scale, W, sh):
    X = _prepare(block, shape, sh.dtype, row_scale, sh.col_masked)
    R = np.empty((X.shape[0], sh.HcT.shape[0]))
    block_right(X, sh.HcT, row_scale, R)
    sh.update(W, R, row_scale == 0)
    return W, {"P": _left(X, W, row_scale)}


_MERGE = {
    "total": "sum",
    "sq_norm": "sum",
    "minimum": "min",
    "n_bad": "sum",
    "n_rows": "sum",
    "cols": "sum",
    "pattern": "sum",
    "p_sum": "sum",
    "p_sq": "sum",
    "p_bad": "sum",
    "p_min": "min",
    "P": "sum",
}


def tree_reduce(parts, merge, name):
    """One delayed result: ``merge`` applied to groups of :data:`SPLIT_EVERY` parts, level by level.

    The per-block partial results of a pass are combined in a tree (never all
    in one task), so that no task holds more than ``SPLIT_EVERY`` of them;
    ``name`` prefixes the dask keys (``name-level-index``).
    """
    level = 0
    while len(parts) > 1:
        parts = [
            dask.delayed(merge, pure=True)(
                parts[i : i + SPLIT_EVERY], dask_key_name=f"{name}-{level}-{i}"
            )
            for i in range(0, len(parts), SPLIT_EVERY)
        ]
        level += 1
    return parts[0]


def fused_compute(outputs, tasks):
    """``dask.compute(*outputs)``, with every chunk read fused into the task that uses it.

    Each task of ``tasks`` (the per-block tasks of one read) becomes one task
    with the part of the graph that it alone uses: the read of its chunk
    (and any per-chunk step before it: a cast, a slice of a split chunk).
    What several tasks share (the open file, the factors of :class:`_Shared`)
    stays a key of its own. On a ``distributed`` cluster a chunk is then read
    where it is processed: only the shared arguments travel to the workers
    and only the partial results travel back, never the data. The same
    functions run on the same values in the same order of merges, so the
    results are those of the unfused graph, and each chunk is read once.

    Parameters
    ----------
    outputs : sequence
        What ``dask.compute`` is given: ``dask.delayed`` objects or (nested)
        lists of them.
    tasks : sequence of dask.delayed.Delayed
        The per-block tasks, among the dependencies of ``outputs``.

    Returns
    -------
    tuple
        ``dask.compute(*outputs)``.

    Examples
    --------
    >>> import dask
    >>> import dask.array as da
    >>> import numpy as np
    >>> from hyperspy_cnmf.chunked import fused_compute
    >>> x = da.arange(6, chunks=3)
    >>> sums = [dask.delayed(np.sum)(chunk) for chunk in x.to_delayed()]
    >>> int(fused_compute((dask.delayed(sum)(sums),), sums)[0])  # 2 tasks, not 4
    15
    """
    from dask._task_spec import Task, convert_legacy_graph  # dask >= 2024.12
    from dask.core import flatten
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    flat = list(flatten(outputs, container=(list, tuple)))
    keys = {d.key for d in flat}
    graph = HighLevelGraph.merge(*(d.__dask_graph__() for d in flat))
    dsk = convert_legacy_graph(dict(graph.cull(keys)))
    dependents = {key: set() for key in dsk}
    for key, node in dsk.items():
        for dep in node.dependencies:
            if dep in dependents:
                dependents[dep].add(key)
    for task in tasks:
        group, todo = {task.key}, list(dsk[task.key].dependencies)
        while todo:  # the ancestors whose every dependent is in the group
            key = todo.pop()
            if key in group or key in keys or not dependents.get(key, {None}) <= group:
                continue
            group.add(key)
            todo.extend(dsk[key].dependencies)
        if len(group) > 1:
            nodes = [dsk.pop(key) for key in group - {task.key}]
            dsk[task.key] = Task.fuse(*nodes, dsk[task.key], key=task.key)
    name = f"cnmf-fused-{uuid.uuid4().hex}"
    fused = HighLevelGraph({name: dsk}, {name: set()})

    def rebuild(x):
        if isinstance(x, (list, tuple)):
            return type(x)(rebuild(v) for v in x)
        return Delayed(x.key, fused, layer=name)

    return dask.compute(*rebuild(list(outputs)))


def _merge(parts):
    """Combine partial results (dicts) of several blocks."""
    out = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        fn = np.minimum if _MERGE[key] == "min" else operator.add
        out[key] = functools.reduce(fn, values[1:], values[0])
    return out


# --------------------------------------------------------------------------
# the operator
# --------------------------------------------------------------------------


def _mean(part):
    with np.errstate(invalid="ignore", divide="ignore"):
        return round_sums(part["pattern"] / part["n_rows"])


def _split(chunks, limit):
    """Split every chunk size into near-equal parts of at most ``limit``."""
    out = []
    for c in chunks:
        n = -(-c // limit)
        out += [c // n + (1 if i < c % n else 0) for i in range(n)]
    return tuple(out)


class _Layout:
    """Blocks of whole patterns of a dask array, with their global row indices."""

    def __init__(self, darray, signal_ndim, max_block_bytes):
        if not isinstance(darray, da.Array):
            darray = da.asarray(darray)
        nd = darray.ndim
        if signal_ndim is None:
            signal_ndim = 1 if nd == 2 else 2
        if nd < 2 or not 1 <= signal_ndim < nd:
            raise ValueError(
                "the data must have navigation axes followed by signal axes, e.g. a 2D "
                f"(positions, pixels) or 4D (ny, nx, qy, qx) array; got shape {darray.shape} "
                f"with signal_ndim={signal_ndim}"
            )
        if np.issubdtype(darray.dtype, np.complexfloating) or not (
            np.issubdtype(darray.dtype, np.number) or darray.dtype == bool
        ):
            raise TypeError(f"the data must be real numbers, got dtype {darray.dtype}")
        nav_nd = nd - signal_ndim
        self.nav_shape = tuple(int(n) for n in darray.shape[:nav_nd])
        self.signal_shape = tuple(int(n) for n in darray.shape[nav_nd:])
        n_rows = int(np.prod(self.nav_shape))
        n_cols = int(np.prod(darray.shape[nav_nd:]))
        self.shape = (n_rows, n_cols)
        self.dtype = compute_dtype(darray.dtype)

        # Whole patterns in every block (merging signal chunks is lazy: each
        # block task reads the chunks of its own navigation region), and at
        # most ``max_block_bytes`` per block (navigation chunks are only split).
        chunks = [tuple(c) for c in darray.chunks]
        max_rows = max(1, int(max_block_bytes) // max(1, n_cols * self.dtype.itemsize))
        for a in range(nav_nd):
            if np.prod([max(c) for c in chunks[:nav_nd]]) <= max_rows:
                break
            inner = int(np.prod([max(c) for c in chunks[a + 1 : nav_nd]]))
            chunks[a] = _split(chunks[a], max(1, max_rows // inner))
        for a in range(nav_nd, nd):
            chunks[a] = (darray.shape[a],)
        if tuple(chunks) != tuple(darray.chunks):
            darray = darray.rechunk(tuple(chunks))
        self.darray = darray
        self.chunks = tuple(chunks)

        delayed = darray.to_delayed()
        grid = np.arange(n_rows).reshape(self.nav_shape)
        bounds = [np.cumsum((0,) + c) for c in chunks[:nav_nd]]
        self.blocks = []
        for idx in itertools.product(*(range(len(c)) for c in chunks[:nav_nd])):
            sl = tuple(slice(b[i], b[i + 1]) for b, i in zip(bounds, idx))
            rows = grid[sl].ravel()
            if rows.size and rows[-1] - rows[0] + 1 == rows.size:
                rows = slice(int(rows[0]), int(rows[-1]) + 1)
            self.blocks.append((delayed[idx + (0,) * signal_ndim], rows))

    def row_count(self, rows):
        return rows.stop - rows.start if isinstance(rows, slice) else rows.size


class DaskOperator:
    """A data matrix held in a dask array, read chunk by chunk.

    Provides the operator interface of
    :class:`~hyperspy_cnmf.nmf.DenseOperator` (see
    :mod:`hyperspy_cnmf.nmf._operators`) for out-of-core data: every method
    reads the data at most once (one ``dask.compute``), never holds more
    than a few navigation chunks in memory, and gives the same numbers as
    the in-memory operator.

    Parameters
    ----------
    darray : dask.array.Array or array-like
        The data: navigation axes first, then ``signal_ndim`` signal axes,
        e.g. 2D ``(positions, pixels)`` or 4D ``(ny, nx, qy, qx)``. Rows of the
        unfolded matrix are the navigation positions in C order, columns the
        signal pixels in C order. Never copied, never modified, never
        materialised as a whole. Integer and float16 chunks are analysed as
        float32 (cast chunk by chunk); NaN or infinite values in masked
        entries (scale 0) are read as 0.
    row_scale, col_scale : array-like or None
        Per-row and per-column scales (0 = masked); None means all ones.
    signal_ndim : int or None
        Number of trailing signal axes; None means 1 for 2D data, else 2.
    max_block_bytes : int, default :data:`MAX_BLOCK_BYTES`
        Navigation chunks whose whole patterns would exceed this size (in the
        analysis dtype) are split into smaller blocks; signal-chunked inputs
        are merged along the signal axes lazily, inside each block's task.
    poisson_stats : bool, default True
        Let the first read also gather the per-pixel sums from which the
        statistics of the Poisson-normalised data follow (so that
        :meth:`rescaled` with the Poisson scales needs no read). False makes
        that read cheaper (measured: 38 ms instead of 59 ms of kernel time
        per 4096 x 8100 float32 block); such a rescaled operator then reads
        its statistics again.

    Attributes
    ----------
    n_passes : int
        Reads of the data so far.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from hyperspy_cnmf.chunked import DaskOperator
    >>> from hyperspy_cnmf.nmf import constrained_nmf
    >>> rng = np.random.default_rng(0)
    >>> X = rng.poisson(20 * rng.random((64, 3)) @ rng.random((3, 100)))
    >>> op = DaskOperator(da.from_array(X.reshape(8, 8, 10, 10), chunks=(2, 8, 10, 10)))
    >>> op.shape, op.dtype
    ((64, 100), dtype('float32'))
    >>> result = constrained_nmf(op, 3, random_state=0, max_iter=50, tol=1e-4)
    >>> result.W.shape, result.Ht.shape  # maps (positions, k), patterns (pixels, k)
    ((64, 3), (100, 3))
    """

    def __init__(
        self,
        darray,
        row_scale=None,
        col_scale=None,
        *,
        signal_ndim=None,
        max_block_bytes=MAX_BLOCK_BYTES,
        poisson_stats=True,
        _layout=None,
        _base=None,
    ):
        self._layout = (
            _layout
            if _layout is not None
            else _Layout(darray, signal_ndim, max_block_bytes)
        )
        self.shape = self._layout.shape
        self.dtype = self._layout.dtype
        self.row_scale = _scale_vector(row_scale, self.shape[0], "row_scale")
        self.col_scale = _scale_vector(col_scale, self.shape[1], "col_scale")
        self.n_passes = 0
        self.poisson_stats = bool(poisson_stats)
        self._summary = None
        self._base = _base  # summary of the operator this one was rescaled from
        self._stats = None
        self._expected = None  # (A, AcT) of an expected right_gram, then (A, Y, P)

    def __repr__(self):
        return (
            f"<DaskOperator shape={self.shape} dtype={self.dtype} "
            f"blocks={len(self._layout.blocks)} passes={self.n_passes}>"
        )

    @property
    def darray(self):
        """The (re)chunked dask array that is read."""
        return self._layout.darray

    # -- the engine ---------------------------------------------------------

    def _shared(self, **kwargs):
        name = f"cnmf-shared-{uuid.uuid4().hex}"
        sh = _Shared(
            dtype=self.dtype,
            col_scale=self.col_scale,
            col_masked=self.col_scale == 0,
            **kwargs,
        )
        return dask.delayed(sh, name=name, traverse=False)

    def _read(self, func, *args, per_block=None, local=False, **shared):
        """One read: ``func`` on every block, partial dicts merged by a tree.

        ``func(block, rows, shape, row_scale, *per_block_args, *args, shared)``
        returns a dict of partial results, or ``(local, dict)`` if ``local``:
        the local parts come back to the driver block by block.
        """
        token = uuid.uuid4().hex
        sh = self._shared(**shared)
        n_cols = self.shape[1]
        locals_, parts, tasks = [], [], []
        for b, (blk, rows) in enumerate(self._layout.blocks):
            shape = (self._layout.row_count(rows), n_cols)
            extra = per_block(rows) if per_block is not None else ()
            task = dask.delayed(func, pure=True, nout=2 if local else None)(
                blk,
                rows,
                shape,
                self.row_scale[rows],
                *extra,
                *args,
                sh,
                dask_key_name=f"cnmf-{func.__name__}-{token}-{b}",
            )
            tasks.append(task)
            if local:  # the two halves of the result, under keys of this read
                for out, i in ((locals_, 0), (parts, 1)):
                    out.append(
                        dask.delayed(operator.getitem, pure=True)(
                            task, i, dask_key_name=f"cnmf-out{i}-{token}-{b}"
                        )
                    )
            else:
                parts.append(task)
        self.n_passes += 1
        got_locals, merged = fused_compute(
            (locals_, tree_reduce(parts, _merge, f"cnmf-merge-{token}")), tasks
        )
        return got_locals, merged

    def _scatter(self, blocks, width):
        out = np.zeros((self.shape[0], width))
        for (_, rows), value in zip(self._layout.blocks, blocks):
            out[rows] = value
        return out

    # -- statistics (one shared read) --------------------------------------

    def _summarize(self):
        if self._summary is None:
            expected = (
                self._expected
                if self._expected is not None and len(self._expected) == 2
                else None
            )
            beam_shape = _beam_shape(self._layout.signal_shape, self.shape[1])
            # masked pixels take no part in the beam finding, except a masked region that may hold the beam
            beam_pixels = (
                None
                if beam_shape is None
                else beam_search_pixels(
                    (self.col_scale == 0).reshape(beam_shape)
                ).ravel()
            )
            local, s = self._read(
                _summary_block,
                local=True,
                AcT=None if expected is None else expected[1],
                poisson=self.poisson_stats,
                beam_shape=beam_shape,
                beam_pixels=beam_pixels,
            )
            s["rows"] = self._scatter([r[:, None] for r, _, _ in local], 1)[:, 0]
            s["beam"] = (
                None
                if beam_shape is None
                else self._scatter([b for _, _, b in local], 2)
            )
            s["row_valid"] = self.row_scale != 0
            s["col_valid"] = self.col_scale != 0
            s["poisson"] = self.poisson_stats
            if expected is not None:
                A = expected[0]
                Y = self._scatter([y for _, y, _ in local], A.shape[1])
                self._expected = (A, Y, s.pop("P").T * self.col_scale[:, None])
            self._summary = s
        return self._summary

    def expect_right_gram(self, A):
        """Compute ``right_gram(A)`` in the first read of the statistics.

        The first read (``stats``, ``mean_pattern``, ``row_col_sums``) then
        also multiplies every block by ``A``, and a later ``right_gram`` with
        an equal ``A`` returns that result without reading the data again:
        the randomized range finder's first product (see
        :func:`hyperspy_cnmf.nmf._operators.range_test_matrix`) shares the
        read that the checks before a fit need anyway. No effect once the
        statistics have been read.
        """
        if self._summary is None:
            A = np.array(A, dtype=np.float64)
            AcT = np.ascontiguousarray(
                (A * self.col_scale[:, None]).T, dtype=self.dtype
            )
            self._expected = (A, AcT)

    def _known(self):
        """The summaries (own, or of the operator this one was rescaled from)."""
        return [s for s in (self._summary, self._base) if s is not None]

    def stats(self):
        """Sums over the unmasked effective data (computed once, cached).

        Returns
        -------
        dict
            ``total``, ``sq_norm`` (of the scaled entries), ``minimum`` (of
            the raw entries) and ``n_bad`` (non-finite raw entries).
        """
        if self._stats is None and self._base is not None:
            self._stats = self._stats_from_base()
        if self._stats is None:
            s = self._summarize()
            self._stats = {k: s[k] for k in ("total", "sq_norm", "minimum", "n_bad")}
        return dict(self._stats)

    def _stats_from_base(self):
        s = self._base
        c = self.col_scale
        if np.array_equal(self.row_scale, s["row_scale"]) and np.array_equal(
            c, s["col_scale"]
        ):
            return {k: s[k] for k in ("total", "sq_norm", "minimum", "n_bad")}
        if not s["poisson"]:
            return None
        rows = s["rows"]
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.where(
                s["row_valid"] & (rows > 0),
                1.0 / np.sqrt(np.where(rows > 0, rows, 1.0)),
                0.0,
            )
        on = c != 0
        # Poisson row scales up to a constant factor (the wrapper's sqrt(total))
        lit = rho > 0
        alpha = float(self.row_scale[lit][0] / rho[lit][0]) if lit.any() else 1.0
        if not (
            np.allclose(self.row_scale, alpha * rho, rtol=1e-12, atol=0)
            and not np.any(on & ~s["col_valid"])
        ):
            return None
        p_min = s["p_min"][on]
        return dict(
            total=alpha * float(np.dot(c[on], s["p_sum"][on])),
            sq_norm=alpha**2 * float(np.dot(c[on] ** 2, s["p_sq"][on])),
            minimum=float(p_min.min()) if p_min.size else np.inf,
            n_bad=int(s["p_bad"][on].sum()),
        )

    def beam_positions(self):
        """Direct-beam centre of every pattern, measured in the statistics read.

        The first read of the data (``stats``, ``mean_pattern``,
        ``row_col_sums``) runs :func:`~hyperspy_cnmf.nmf._kernels.block_beam_centres`
        on every block while it is in memory: no read of its own once the
        statistics are known (an operator from :meth:`rescaled` reuses the
        measurement of the one it came from when the same rows are
        unmasked).

        Returns
        -------
        ndarray, shape (n_rows, 2), or None
            ``(x, y)`` (detector column, row) in px over the finite unmasked
            pixels (a masked region large enough to hold the direct beam is
            read: a mask over the direct beam itself is common;
            :func:`~hyperspy_cnmf._beam.beam_search_pixels`); NaN for masked rows. None unless the data
            have two signal axes.
        """
        if _beam_shape(self._layout.signal_shape, self.shape[1]) is None:
            return None
        for s in self._known():
            if s.get("beam") is not None and np.array_equal(
                s["row_valid"], self.row_scale != 0
            ):
                return s["beam"].copy()
        return self._summarize()[
            "beam"
        ].copy()  # own rows differ from those read: read (once)

    def rescaled(self, row_scale, col_scale):
        """The same data with other row/column scales (no copy, no read).

        Scale-independent sums already read (mean pattern, row/column sums)
        are reused, and so are the statistics when the new scales are the
        Poisson (Keenan-Kotula) scales built from :meth:`row_col_sums`.
        """
        base = self._summary if self._summary is not None else self._base
        if base is not None:
            base = (
                dict(base, row_scale=self.row_scale, col_scale=self.col_scale)
                if base is self._summary
                else base
            )
        return type(self)(  # the same engine (a LiberTEMOperator stays one)
            None,
            row_scale,
            col_scale,
            poisson_stats=self.poisson_stats,
            _layout=self._layout,
            _base=base,
        )

    def row_col_sums(self, row_valid, col_valid):
        """Raw row sums over valid columns and column sums over valid rows (:func:`round_sums`)."""
        row_valid = np.asarray(row_valid, dtype=bool)
        col_valid = np.asarray(col_valid, dtype=bool)
        if (
            not self._known()
            and np.array_equal(row_valid, self.row_scale != 0)
            and np.array_equal(col_valid, self.col_scale != 0)
        ):
            self._summarize()
        for s in self._known():
            if np.array_equal(row_valid, s["row_valid"]) and np.array_equal(
                col_valid, s["col_valid"]
            ):
                return round_sums(s["rows"]), round_sums(s["cols"])
        rows, part = self._read(
            _sums_block,
            local=True,
            per_block=lambda r: (row_valid[r],),
            col_valid=col_valid,
        )
        rows = self._scatter([r[:, None] for r in rows], 1)[:, 0]
        return round_sums(rows), round_sums(part["cols"])

    def mean_pattern(self, row_valid):
        """Mean raw pattern over the valid rows (masked pixels included)."""
        row_valid = np.asarray(row_valid, dtype=bool)
        if not self._known() and np.array_equal(row_valid, self.row_scale != 0):
            self._summarize()
        for s in self._known():
            if np.array_equal(row_valid, s["row_valid"]):
                return _mean(s)
        _, part = self._read(_pattern_block, per_block=lambda r: (row_valid[r],))
        return _mean(part)

    # -- products -----------------------------------------------------------

    def right(self, A):
        """``Xe @ A`` for ``A`` of shape (n_cols, r), in one read."""
        return self._right(A, gram=False)[0]

    def right_gram(self, A):
        """``Y = Xe @ A`` and ``Xe.T @ Y`` (float64 sums), in one read.

        The range finder's step: each block multiplies its rows of ``Y`` back
        while it is in memory, so that the following ``Xe.T @ Q`` (``Q`` the
        orthonormalised ``Y``) needs no read.
        """
        A = np.asarray(A, dtype=np.float64)
        if self._expected is not None and len(self._expected) == 3:
            A0, Y, P = self._expected
            if A0.shape == A.shape and np.array_equal(A0, A):
                self._expected = None
                return Y, P
        return self._right(A, gram=True)

    def _right(self, A, gram):
        A = np.asarray(A, dtype=np.float64)
        AcT = np.ascontiguousarray((A * self.col_scale[:, None]).T, dtype=self.dtype)
        Y, part = self._read(_right_block, local=True, AcT=AcT, gram=gram)
        Y = self._scatter(Y, A.shape[1])
        return Y, (part["P"].T * self.col_scale[:, None] if gram else None)

    def left_t(self, B):
        """``Xe.T @ B`` for ``B`` of shape (n_rows, r), in one read."""
        B = np.asarray(B, dtype=np.float64)
        _, part = self._read(_left_t_block, per_block=lambda r: (B[r],))
        return self._summed(part)

    def right_left_t(self, A, B):
        """``Xe @ A`` and ``Xe.T @ B`` (shapes (n_cols, r), (n_rows, s)), in one read."""
        A = np.asarray(A, dtype=np.float64)
        B = np.asarray(B, dtype=np.float64)
        AcT = np.ascontiguousarray((A * self.col_scale[:, None]).T, dtype=self.dtype)
        Y, part = self._read(
            _right_left_t_block, local=True, per_block=lambda r: (B[r],), AcT=AcT
        )
        return self._scatter(Y, A.shape[1]), self._summed(part)

    def fused_pass(self, W, Ht, update):
        """Update the maps block by block and return ``Xe.T @ W`` (updated maps).

        One read: every block computes ``R = (Xe @ Ht)_block``, calls
        ``update(W_block, R, skip_block)`` on its own copy of the map rows,
        and returns the updated rows and its share of ``Xe.T @ W``. ``W`` is
        updated in place on the driver.
        """
        HcT = np.ascontiguousarray(
            (np.asarray(Ht, np.float64) * self.col_scale[:, None]).T, dtype=self.dtype
        )
        Wb, part = self._read(
            _fused_block,
            local=True,
            per_block=lambda r: (np.array(W[r], dtype=np.float64),),
            HcT=HcT,
            update=update,
        )
        for (_, rows), value in zip(self._layout.blocks, Wb):
            W[rows] = value
        return self._summed(part)

    def _summed(self, part):
        """The blocks' float64 ``(Xe.T @ B).T``, scaled."""
        return part["P"].T * self.col_scale[:, None]
