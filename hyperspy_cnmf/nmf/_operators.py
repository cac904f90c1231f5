"""Data operators: the only way the solver touches the (large) data matrix.

The solver never indexes the data. It asks an operator for products with the
small factor matrices, which lets one solver drive an in-memory array (one
chunk), a stream of dask chunks (:mod:`hyperspy_cnmf.chunked`) or a randomized
sketch of either. An operator represents the *effective* data

``Xe = diag(row_scale) @ X @ diag(col_scale)``

where a scale of 0 masks a row (probe position) or column (detector pixel)
and non-unit scales implement the Poisson (Keenan-Kotula) normalisation.
Masked entries must be finite.

Every operator provides:

- ``shape``, ``dtype``, ``row_scale``, ``col_scale``;
- ``rescaled(row_scale, col_scale)``: the same data with other scales;
- ``row_col_sums(row_valid, col_valid)``, ``mean_pattern(row_valid)``: raw
  sums for the Poisson normalisation and the calibration helpers, rounded by
  :func:`round_sums` (the same however the rows are split);
- ``stats()``: ``dict(total, sq_norm, minimum, n_bad)`` over unmasked entries;
- ``beam_positions()``: the direct-beam centre ``(x, y)`` in px of every row
  (pattern), measured in the same read as ``stats()``
  (:func:`~hyperspy_cnmf.nmf._kernels.block_beam_centres`), or None when the
  detector shape is not known (``signal_shape`` not given);
- ``right(A)``: ``Xe @ A`` for ``A`` of shape (n_cols, r);
- ``left_t(B)``: ``Xe.T @ B`` for ``B`` of shape (n_rows, r);
- ``right_left_t(A, B)``: ``(Xe @ A, Xe.T @ B)`` in *one* read (the
  constrained iteration's products, :func:`~hyperspy_cnmf.nmf._solver._iterate`);
- ``n_passes``: reads of the data so far (0 for a sketch);
- ``fused_pass(W, Ht, update)``: one read of the data that updates the maps
  block by block (``update(W_block, (Xe @ Ht)_block, skip_block)``, in place)
  and returns ``Xe.T @ W`` computed with the *updated* maps.

Optionally (operators whose reads are expensive, such as
:class:`hyperspy_cnmf.chunked.DaskOperator`):

- ``right_gram(A)``: ``(Y, Xe.T @ Y)`` with ``Y = Xe @ A``, in *one* read.
  :func:`randomized_range` then needs ``n_power_iter + 1`` reads instead of
  ``2 n_power_iter + 2``;
- ``expect_right_gram(A)``: compute ``right_gram(A)`` along with the first
  read of the statistics, so that the range finder's first product costs no
  read of its own (see :func:`range_test_matrix`).
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from hyperspy_cnmf._beam import beam_search_pixels
from hyperspy_cnmf.nmf._kernels import (
    block_beam_centres,
    block_left,
    block_right,
    block_row_col_sums,
    block_stats,
)

_BLOCK_BYTES = 2 * 2**20

#: Significant bits kept by :func:`round_sums` (float32's 24): sums that differ in
#: their last float64 digits (about 1e-15) then round alike unless one lies
#: within that distance of a rounding midpoint (about 1e-8 per entry).
SUM_BITS = 24


def round_sums(a):
    """Sums over probe positions rounded so that their summation order cannot show.

    A float64 sum over positions changes in its last digits with the order in
    which it was summed: the threads of :class:`DenseOperator`, the chunks of
    an out-of-core operator. The fit amplifies such differences: at k = 30 on
    high-count data (the 3-phase descan multislice case at 40000 counts per
    unit intensity) in-memory and lazy runs parted by 1e-15 ended in different
    local minima (label ARI 0.79 between them). Every sum that feeds the fit
    (the mean pattern, the Poisson row and column sums, the range finder's
    ``Xe.T @ Y``) is therefore rounded onto a grid of about ``2**-SUM_BITS`` of
    its largest magnitude (per column of a 2D array), a power of two, so the
    rounding itself is exact arithmetic. In-memory runs on any number of
    threads and lazy runs in any chunks then start from the same numbers.

    The price: data multiplied by a constant other than a power of two round
    differently in the 24th bit (as storing them in float32 would), so the
    fit of ``c X`` equals ``c`` times that of ``X`` to its convergence (measured
    within 7e-5 of the maximum) rather than to float64 precision. The exact
    iterations' ``Xe.T @ W``, sums of non-negative terms, are rounded entry by
    entry instead (:func:`round_entries`).

    Parameters
    ----------
    a : array-like, 1D or 2D, float
        The sums; NaN entries stay NaN.

    Returns
    -------
    ndarray, float64, same shape
    """
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0:
        return a.copy()
    with np.errstate(invalid="ignore"):
        peak = np.nanmax(np.abs(a), axis=0, initial=0.0)
    exponent = np.frexp(np.where(np.isfinite(peak), peak, 0.0))[1]
    grid = np.ldexp(1.0, exponent - SUM_BITS)
    grid = np.where((peak > 0) & np.isfinite(peak), grid, 1.0)
    return np.round(a / grid) * grid


def round_entries(a):
    """Every entry rounded to ``SUM_BITS`` significant bits (float32's mantissa).

    For sums of non-negative terms, such as the exact iterations' ``Xe.T @ W``
    (data and maps non-negative), whose float64 value changes with the
    summation order (threads, chunks) only in its last digits: each entry
    keeps its own relative precision (``2**-SUM_BITS``), so weak detector
    pixels beside a bright direct beam are not rounded away, as a grid set by
    the largest entry (:func:`round_sums`, for sums with cancellation) would
    do (a pixel 1e5 times weaker than the beam lost all its digits). A flip
    needs a sum within its float64 error of a rounding midpoint (about 1e-8
    per entry). Powers of two scale exactly; NaN and infinities stay.

    Parameters
    ----------
    a : array-like, float

    Returns
    -------
    ndarray, float64, same shape
    """
    mantissa, exponent = np.frexp(np.asarray(a, dtype=np.float64))
    return np.ldexp(np.round(np.ldexp(mantissa, SUM_BITS)), exponent - SUM_BITS)


def compute_dtype(dtype):
    """The float type the kernels read data of ``dtype`` in: float64 for float64
    (and wider) data, float32 for everything else (integer counts included), in
    memory and out of core alike."""
    dtype = np.dtype(dtype)
    wide = np.issubdtype(dtype, np.floating) and dtype.itemsize >= 8
    return np.dtype(np.float64 if wide else np.float32)


def _beam_shape(signal_shape, n_cols):
    """``(ny, nx)`` of a 2D detector with ``n_cols`` pixels, or None."""
    if signal_shape is None or len(signal_shape) != 2:
        return None
    ny, nx = (int(v) for v in signal_shape)
    if ny * nx != n_cols:
        raise ValueError(
            f"signal_shape {tuple(signal_shape)} does not match the {n_cols} columns of the data"
        )
    return ny, nx


def _scale_vector(scale, n, name):
    if scale is None:
        return np.ones(n)
    scale = np.asarray(scale, dtype=np.float64).ravel()
    if scale.shape != (n,):
        raise ValueError(f"{name} must have {n} entries, got {scale.shape}")
    return scale


class DenseOperator:
    """An in-memory data matrix, read in blocks of rows.

    The products with the factors are Numba kernels
    (:func:`~hyperspy_cnmf.nmf._kernels.block_right`,
    :func:`~hyperspy_cnmf.nmf._kernels.block_left`) run by ``n_threads``
    threads, each on its own contiguous range of rows (other layouts and
    dtypes than C-contiguous float32/float64 are copied block by block).
    ``Xe @ A`` is computed row by row, the same however the rows are split;
    ``Xe.T @ B`` is summed in float64, so the split shows only in its last
    digits, which the solver rounds away (:func:`round_entries`,
    :func:`round_sums`). In :meth:`fused_pass` the ``update`` of a block is
    called by the thread that owns the block (blocks of different threads are
    disjoint), so ``update`` must only touch the rows it is given.

    Parameters
    ----------
    X : ndarray, shape (n_rows, n_cols), float32 or float64
        The unfolded data (rows = probe positions). Not copied, not modified.
    row_scale, col_scale : array-like or None
        Per-row and per-column scales (0 = masked); None means all ones.
    block_rows : int or None
        Rows per block of the fused pass; None picks about 2 MiB blocks, which
        stay in cache between the two products of a block.
    n_threads : int or None
        Threads for the products; None: Numba's thread count
        (``numba.get_num_threads()``, i.e. ``NUMBA_NUM_THREADS``).
    signal_shape : tuple of int or None
        Detector shape ``(ny, nx)`` of a row (C order), e.g. ``(qy, qx)``; with
        it :meth:`stats` also measures the direct beam of every row
        (:meth:`beam_positions`).
    """

    def __init__(
        self,
        X,
        row_scale=None,
        col_scale=None,
        block_rows=None,
        n_threads=None,
        signal_shape=None,
    ):
        if X.ndim != 2:
            raise ValueError("the data operator needs a 2D (positions x pixels) array")
        self.X = X
        self.shape = X.shape
        self.dtype = compute_dtype(X.dtype)  # the float type the kernels read
        self.row_scale = _scale_vector(row_scale, X.shape[0], "row_scale")
        self.col_scale = _scale_vector(col_scale, X.shape[1], "col_scale")
        if block_rows is None:
            block_rows = max(1, _BLOCK_BYTES // max(1, X.shape[1] * X.itemsize))
        self.block_rows = int(block_rows)
        if n_threads is None:
            n_threads = numba.get_num_threads()
        self.n_threads = max(1, int(n_threads))
        # other layouts and dtypes: read as C-contiguous blocks of self.dtype
        self._kernels = X.flags.c_contiguous and X.dtype == self.dtype
        self._stats = None
        self._beam = None
        self.signal_shape = _beam_shape(signal_shape, X.shape[1])
        self.n_passes = 0

    def _blocks(self):
        n = self.shape[0]
        for start in range(0, n, self.block_rows):
            yield slice(start, min(n, start + self.block_rows))

    def _thread_blocks(self):
        """The row blocks, split into one contiguous run of blocks per thread."""
        blocks = list(self._blocks())
        if not blocks:
            return [[]]
        n_t = min(self.n_threads, len(blocks))
        bounds = np.linspace(0, len(blocks), n_t + 1).round().astype(int)
        return [blocks[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def _map_threads(self, work):
        """Run ``work(blocks)`` for every thread's blocks; results in order."""
        parts = self._thread_blocks()
        if len(parts) == 1:
            return [work(parts[0])]
        return list(_pool(len(parts)).map(work, parts))

    def stats(self):
        """Sums over the unmasked effective data (computed once, cached).

        With a ``signal_shape``, the same read measures the direct beam of
        every row (see :meth:`beam_positions`).
        """
        if self._stats is None:
            self.n_passes += 1
            total = sq = 0.0
            mn = np.inf
            n_bad = 0
            beam = self._beam is None and self.signal_shape is not None
            if beam:
                self._beam = np.empty((self.shape[0], 2))
                # masked pixels take no part, except a masked region that may hold the direct beam
                row_valid, col_valid = (
                    self.row_scale != 0,
                    beam_search_pixels(
                        (self.col_scale == 0).reshape(self.signal_shape)
                    ).ravel(),
                )
            for sl in self._blocks():
                t, s, m, b = block_stats(self.X[sl], self.row_scale[sl], self.col_scale)
                total += t
                sq += s
                mn = min(mn, m)
                n_bad += b
                if beam:
                    block_beam_centres(
                        self.X[sl],
                        *self.signal_shape,
                        row_valid[sl],
                        col_valid,
                        self._beam[sl],
                    )
            self._stats = dict(total=total, sq_norm=sq, minimum=mn, n_bad=n_bad)
        return self._stats

    def beam_positions(self):
        """Direct-beam centre of every row, measured in the statistics read.

        Returns
        -------
        ndarray, shape (n_rows, 2), or None
            ``(x, y)`` (detector column, row) in px, from
            :func:`~hyperspy_cnmf.nmf._kernels.block_beam_centres` over the
            finite unmasked pixels (a masked region large enough to hold the
            direct beam is read: a mask over the direct beam itself is common;
            :func:`~hyperspy_cnmf._beam.beam_search_pixels`); NaN for masked rows. None without a
            ``signal_shape``. Computed by :meth:`stats` (no read of its own
            once the statistics are known).
        """
        if self.signal_shape is None:
            return None
        if self._beam is None:
            self._stats = None
            self.stats()
        return self._beam.copy()

    def rescaled(self, row_scale, col_scale):
        """The same data with other row/column scales (no copy)."""
        op = DenseOperator(
            self.X,
            row_scale,
            col_scale,
            self.block_rows,
            self.n_threads,
            self.signal_shape,
        )
        if self._beam is not None and np.array_equal(
            op.row_scale != 0, self.row_scale != 0
        ):
            op._beam = self._beam  # same rows: same measurement, not read again
        return op

    def row_col_sums(self, row_valid, col_valid):
        """Raw row sums over valid columns and column sums over valid rows (:func:`round_sums`)."""
        self.n_passes += 1
        rows = np.zeros(self.shape[0])
        cols = np.zeros(self.shape[1])
        for sl in self._blocks():
            r, c = block_row_col_sums(self.X[sl], row_valid[sl], col_valid)
            rows[sl] = r
            cols += c
        return round_sums(rows), round_sums(cols)

    def mean_pattern(self, row_valid):
        """Mean raw pattern over the valid rows (masked pixels included)."""
        self.n_passes += 1
        row_valid = np.asarray(row_valid, dtype=bool)
        X = (
            self.X if row_valid.all() else self.X[row_valid]
        )  # no copy when nothing is masked
        return round_sums(X.mean(axis=0, dtype=np.float64))

    def _scaled_patterns_t(self, A):
        """``(diag(col_scale) @ A).T`` in the kernels' precision, C-contiguous."""
        return np.ascontiguousarray((A * self.col_scale[:, None]).T, dtype=self.dtype)

    def _rows(self, sl):
        """Rows ``sl`` of the data as the kernels read them (a copy only for other layouts)."""
        X = self.X[sl]
        return X if self._kernels else np.ascontiguousarray(X, self.dtype)

    def _scaled_rows(self, B, sl):
        """``diag(row_scale) @ B`` on the rows ``sl``, float64."""
        return B[sl] * self.row_scale[sl, None]

    def _summed(self, parts):
        """The threads' float64 ``(Xe.T @ B).T`` summed and scaled."""
        return _sum_parts(parts).T * self.col_scale[:, None]

    def right(self, A):
        self.n_passes += 1
        HcT = self._scaled_patterns_t(A)
        out = np.empty((self.shape[0], A.shape[1]))

        def work(blocks):
            for sl in blocks:
                block_right(self._rows(sl), HcT, self.row_scale[sl], out[sl])

        self._map_threads(work)
        return out

    def left_t(self, B):
        self.n_passes += 1
        B = np.asarray(B, dtype=np.float64)

        def work(blocks):
            pairs = ((self._rows(sl), self._scaled_rows(B, sl)) for sl in blocks)
            return summed_left(pairs, B.shape[1], self.shape[1])

        return self._summed(self._map_threads(work))

    def right_left_t(self, A, B):
        self.n_passes += 1
        B = np.asarray(B, dtype=np.float64)
        AcT = self._scaled_patterns_t(A)
        R = np.empty((self.shape[0], A.shape[1]))

        def pairs(blocks):
            for sl in blocks:
                Xb = self._rows(sl)
                block_right(Xb, AcT, self.row_scale[sl], R[sl])
                yield Xb, self._scaled_rows(B, sl)

        def work(blocks):
            return summed_left(pairs(blocks), B.shape[1], self.shape[1])

        return R, self._summed(self._map_threads(work))

    def right_gram(self, A):
        """``Y = Xe @ A`` and ``Xe.T @ Y`` in one read (:func:`randomized_range`'s product).

        Computed block by block as the out-of-core operators compute it
        (:func:`gram_block`): ``Y``'s rows then do not depend on how the rows are
        split (threads here, chunks there) and ``Xe.T @ Y``, a float64 sum over
        the rows, only in its last digits, which :func:`round_sums` removes.
        """
        self.n_passes += 1
        A = np.asarray(A, dtype=np.float64)
        AcT = self._scaled_patterns_t(A)
        Y = np.empty((self.shape[0], A.shape[1]))

        def work(blocks):
            P = np.zeros((A.shape[1], self.shape[1]))
            for sl in blocks:
                gram_block(self._rows(sl), self.row_scale[sl], AcT, Y[sl], P)
            return P

        P = _sum_parts(self._map_threads(work)).T
        return Y, P * self.col_scale[:, None]

    def fused_pass(self, W, Ht, update):
        self.n_passes += 1
        skip = self.row_scale == 0
        HcT = self._scaled_patterns_t(Ht)
        k, m = HcT.shape

        def pairs(blocks):
            for sl in blocks:
                Xb = self._rows(sl)
                Rb = np.empty((Xb.shape[0], k))
                block_right(Xb, HcT, self.row_scale[sl], Rb)
                update(W[sl], Rb, skip[sl])
                yield Xb, self._scaled_rows(W, sl)

        def work(blocks):
            return summed_left(pairs(blocks), k, m)

        return self._summed(self._map_threads(work))


def summed_left(pairs, k, m):
    """``sum(Xb.T @ Br)`` over ``(Xb, Br)`` row blocks, transposed: shape (k, m), float64.

    Products and sums in float64 (``Br`` float64, ``Xb`` in the data's
    precision), so that the total depends on the order of the rows only in
    its last digits, which :func:`round_entries` then removes: in float32 the
    partial sums differed by 1e-7 between splits of the data (threads,
    chunks), and long exact phases at high counts parted (label ARI 0.78
    between 1 and 3 threads). Used by the in-memory operator and by the
    out-of-core blocks.
    """
    total = np.zeros((k, m))
    for Xb, Br in pairs:
        block_left(Xb, Br, total)
    return total


def gram_block(X, row_scale, AcT, Y, P):
    """``Y = diag(r) X AcT.T`` (in place) and ``P += (Xe.T @ Y).T`` without the column scale.

    ``P`` is float64: ``Y`` may be ill-conditioned and the range finder
    multiplies ``P`` by the inverse of its R factor (:func:`_orth_range`).
    One block of rows of the in-memory or the out-of-core data.
    """
    block_right(X, AcT, row_scale, Y)
    block_left(X, Y * row_scale[:, None], P)


def _sum_parts(parts):
    total = parts[0]
    for p in parts[1:]:
        total += p
    return total


_POOLS = {}
_POOLS_LOCK = threading.Lock()


def _pool(n):
    """A persistent pool of ``n`` worker threads (the kernels release the GIL)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(n)
        if pool is None:
            pool = _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="cnmf-dense")
        return pool


class _LowRankOperator:
    """The products of an operator held as two factors, ``Xe = left @ right.T`` (no read).

    Subclasses set ``self._factors = (left, right)``, shapes (n_rows, r) and (n_cols, r).
    """

    def right(self, A):
        left, right = self._factors
        return left @ (right.T @ A)

    def left_t(self, B):
        left, right = self._factors
        return right @ (left.T @ B)

    def right_left_t(self, A, B):
        return self.right(A), self.left_t(B)

    def fused_pass(self, W, Ht, update):
        R = self.right(Ht)
        update(W, R, self.row_scale == 0)
        return self.left_t(W)


class SketchOperator(_LowRankOperator):
    """A low-rank sketch ``Xe ~ Q @ Bt.T`` of another operator.

    Products cost ``O((n_rows + n_cols) * rank * k)`` instead of a data read.
    ``stats()`` are those of the exact data, so losses stay comparable.

    Parameters
    ----------
    Q : ndarray, shape (n_rows, rank)
        Orthonormal basis of the (approximate) range of ``Xe``.
    Bt : ndarray, shape (n_cols, rank)
        ``Xe.T @ Q``.
    base : operator
        The operator that was sketched (for scales and statistics).
    """

    def __init__(self, Q, Bt, base):
        self.Q = Q
        self.Bt = Bt
        self._factors = (Q, Bt)
        self.base = base
        self.shape = base.shape
        self.dtype = np.dtype(np.float64)
        self.row_scale = base.row_scale
        self.col_scale = base.col_scale
        self.n_passes = 0

    def stats(self):
        return self.base.stats()


class FactoredOperator(_LowRankOperator):
    """A fitted model ``Xe = W @ Ht.T`` (effective units) as data: no read of any file.

    Another fit can then be run on a former fit's model, e.g. one component
    per grain on the model of an over-complete fit (the clustering's refit,
    :func:`~hyperspy_cnmf.clustering.cluster_components`). Products cost
    ``O((n_rows + n_cols) * rank * k)``; unlike :class:`SketchOperator`,
    ``stats()`` are the model's own (its loss is the distance to the model).

    Parameters
    ----------
    W : ndarray, shape (n_rows, rank)
        Maps in effective units (``row_scale`` times data units), finite and
        non-negative (as ``Ht``); masked rows should hold zeros (not checked:
        the solver skips the rows whose scale is 0).
    Ht : ndarray, shape (n_cols, rank)
        Patterns in effective units (zeros in masked columns, as ``W``).
    row_scale, col_scale : ndarray, shapes (n_rows,), (n_cols,)
        The scales the model was fitted with (0: masked), so that the
        constraints act in data units as they did.

    Raises
    ------
    ValueError
        For factors of inconsistent shapes, not finite or negative, or scales
        of the wrong length.

    Examples
    --------
    >>> W = np.array([[1.0, 0.0], [0.0, 2.0]]); Ht = np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    >>> op = FactoredOperator(W, Ht, np.ones(2), np.ones(3))
    >>> np.allclose(op.right(np.eye(3)), W @ Ht.T), op.stats()["sq_norm"]
    (True, 10.0)
    """

    def __init__(self, W, Ht, row_scale, col_scale):
        W = np.asarray(W, dtype=np.float64)
        Ht = np.asarray(Ht, dtype=np.float64)
        if W.ndim != 2 or Ht.ndim != 2 or W.shape[1] != Ht.shape[1]:
            raise ValueError(
                f"W and Ht must be (n_rows, rank) and (n_cols, rank), got {W.shape} and {Ht.shape}"
            )
        if not (np.isfinite(W).all() and np.isfinite(Ht).all()):
            raise ValueError("the factored model must be finite (zero where masked)")
        if W.min(initial=0.0) < 0 or Ht.min(initial=0.0) < 0:
            raise ValueError("the factored model must be non-negative (an NMF fit)")
        self.W, self.Ht = W, Ht
        self._factors = (W, Ht)
        self.shape = (W.shape[0], Ht.shape[0])
        self.dtype = np.dtype(np.float64)
        self.row_scale = _scale_vector(row_scale, self.shape[0], "row_scale")
        self.col_scale = _scale_vector(col_scale, self.shape[1], "col_scale")
        self.n_passes = 0
        self._stats = dict(
            total=float(W.sum(axis=0) @ Ht.sum(axis=0)),
            sq_norm=float(((W.T @ W) * (Ht.T @ Ht)).sum()),
            minimum=0.0,
            n_bad=0,
        )

    def stats(self):
        return self._stats


def _orth_range(op, A):
    """``Q = orth(Xe @ A)`` and, where the operator can, ``Xe.T @ Q`` from the same read.

    The orthonormal basis is the QR factor of ``Y = Xe @ A`` for every
    operator (so in-memory and out-of-core data give the same basis); with
    ``right_gram`` ``Xe.T @ Q = (Xe.T @ Y) R^-1``. Where ``R`` is too
    ill-conditioned for that (data of lower rank than ``A`` has columns,
    e.g. noise-free), the basis is rotated onto the singular vectors of ``R``
    (``Q U``, with ``R = U S V^T``) and ``Xe.T @ Q U = (Xe.T @ Y) V S^-1``
    is kept for the singular values above ``S[0] / _MAX_COND``; the others
    span rounding error of ``Y`` and get zero columns. No read of its own,
    so the result does not depend on how the data are split. Operators
    without ``right_gram`` return ``None``: the caller reads ``Xe.T @ Q``.
    """
    gram = getattr(op, "right_gram", None)
    if gram is None:
        Q, _ = np.linalg.qr(op.right(A))
        return Q, None
    Y, P = gram(A)
    Q, R = np.linalg.qr(Y)
    if not R.size:
        return Q, None
    # Y's rows do not depend on how the data are split; P is a sum over them
    P = round_sums(P)
    if np.linalg.cond(R) <= _MAX_COND:
        return Q, np.linalg.solve(R.T, P.T).T
    U, S, Vt = np.linalg.svd(R)
    keep = S > S[0] / _MAX_COND
    XtQ = np.zeros_like(P)
    XtQ[:, keep] = (P @ Vt[keep].T) / S[keep]
    return Q @ U, XtQ


#: Largest condition number of the range-finder product for which
#: ``Xe.T @ Q`` is taken from ``Xe.T @ Y`` (rounded by :func:`round_sums`:
#: relative error about ``2**-24 * cond``, at most 6e-4); beyond it, the
#: directions of ``Y`` weaker than ``1 / _MAX_COND`` of the strongest are
#: dropped (:func:`_orth_range`). Measured on the six multislice cases
#: (k = 30): 13-30 with the default Poisson weighting and direct-beam mask,
#: 850-1300 with neither.
_MAX_COND = 1e4


def range_test_matrix(op, rank, rng):
    """The Gaussian test matrix with which :func:`randomized_range` starts.

    ``rank`` is clipped to the data's shape and masked columns are zero. It
    is the first draw from ``rng``; out-of-core operators can compute its
    product during an earlier read (``expect_right_gram``).
    """
    n_rows, n_cols = op.shape
    rank = int(min(rank, n_rows, n_cols))
    omega = rng.standard_normal((n_cols, rank))
    omega[op.col_scale == 0] = 0.0
    return omega


def randomized_range(op, rank, n_power_iter=1, rng=None):
    """Randomized range finder (Halko, Martinsson & Tropp 2011, alg. 4.4).

    Costs ``2 * n_power_iter + 2`` reads of the data through ``op``, or
    ``n_power_iter + 1`` for an operator with ``right_gram`` (each read
    returns ``Xe @ A`` and ``Xe.T @ (Xe @ A)``; :func:`_orth_range`).

    Parameters
    ----------
    op : operator
    rank : int
        Number of basis vectors (target rank plus oversampling).
    n_power_iter : int
        Subspace (power) iterations; each sharpens the basis for data with a
        slowly decaying spectrum, such as counting noise.
    rng : numpy.random.Generator

    Returns
    -------
    Q : ndarray, shape (n_rows, rank)
    Bt : ndarray, shape (n_cols, rank)
        ``Xe.T @ Q``, so that ``Xe ~ Q @ Bt.T``.
    """
    rng = np.random.default_rng(rng)
    Q, XtQ = _orth_range(op, range_test_matrix(op, rank, rng))
    for _ in range(n_power_iter):
        Z, _ = np.linalg.qr(op.left_t(Q) if XtQ is None else XtQ)
        Q, XtQ = _orth_range(op, Z)
    return Q, op.left_t(Q) if XtQ is None else XtQ
