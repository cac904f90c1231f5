"""Numba kernels of the NMF core.

Every kernel works in place on preallocated float64 factor arrays, is compiled
lazily on first use (``cache=True`` keeps the machine code between sessions) and
releases the GIL (``nogil=True``) so that dask threads can run them side by
side. The plain-Python iteration loop lives in :mod:`hyperspy_cnmf.nmf._solver`.

Notation: the data ``X`` (rows = probe positions, columns = detector pixels) is
approximated by ``W @ Ht.T``; ``W`` holds the maps (one column per component)
and ``Ht`` the diffraction patterns (one column per component).
"""

import numba
import numpy as np

#: Rows updated side by side by :func:`hals_rows` (SIMD lanes across rows).
_HALS_LANES = 8
#: Floating-point reordering allowed in the block products (vectorized sums).
_FAST = {"reassoc", "contract"}


@numba.njit(nogil=True, cache=True)
def hals_rows(A, R, G, skip, n_inner, inner_tol):
    """Row-wise HALS sweeps for ``min_{A >= 0} 0.5 tr(A G A^T) - tr(R A^T)``.

    Both NMF sub-problems have this form: the maps ``W`` with ``R = X Ht`` and
    ``G = Ht^T Ht``; the patterns ``Ht`` with ``R = X^T W`` and
    ``G = W^T W``. Rows are independent, so each row gets its own inner
    iterations (accelerated HALS, Gillis & Glineur 2012), stopped when a sweep
    changes the row by less than ``inner_tol`` times the first sweep.

    Rows are processed ``_HALS_LANES`` at a time in a transposed local buffer
    so that the sweeps vectorize across rows; a row that has met its stopping
    criterion is frozen while the others of its group continue, so the result
    is exactly (bitwise) that of updating the rows one after the other.

    Parameters
    ----------
    A : ndarray, shape (n, k), float64
        Current non-negative factor, updated in place.
    R : ndarray, shape (n, k)
        Right-hand side.
    G : ndarray, shape (k, k), float64
        Gram matrix.
    skip : ndarray of bool, shape (n,) or (0,)
        Rows not to update (masked positions); an empty array skips none.
    n_inner : int
        Maximum number of sweeps per row.
    inner_tol : float
        Relative change that stops the inner sweeps.
    """
    n, k = A.shape
    has_skip = skip.shape[0] == n
    tol2 = inner_tol * inner_tol
    L = _HALS_LANES
    a = np.zeros((k, L))
    r = np.zeros((k, L))
    s = np.empty(L)
    change = np.empty(L)
    first = np.zeros(L)
    active = np.zeros(L, dtype=np.bool_)
    for i0 in range(0, n, L):
        nb = min(L, n - i0)
        n_active = 0
        for t in range(L):
            active[t] = t < nb and not (has_skip and skip[i0 + t])
            if active[t]:
                n_active += 1
                for j in range(k):
                    a[j, t] = A[i0 + t, j]
                    r[j, t] = np.float64(R[i0 + t, j])
            else:
                for j in range(k):
                    a[j, t] = 0.0
                    r[j, t] = 0.0
        if n_active == 0:
            continue
        for it in range(n_inner):
            for t in range(L):
                change[t] = 0.0
            for j in range(k):
                gjj = G[j, j]
                if gjj <= 0.0:
                    continue
                for t in range(L):
                    s[t] = r[j, t]
                for m in range(k):
                    gmj = G[m, j]
                    for t in range(L):
                        s[t] -= a[m, t] * gmj
                for t in range(L):
                    old = a[j, t]
                    new = old + s[t] / gjj
                    new = new if new > 0.0 else 0.0
                    d = new - old
                    act = active[t]
                    change[t] += d * d if act else 0.0
                    a[j, t] = new if act else old
            for t in range(L):
                if active[t]:
                    if it == 0:
                        first[t] = change[t]
                        if change[t] == 0.0:
                            active[t] = False
                            n_active -= 1
                    elif change[t] <= tol2 * first[t]:
                        active[t] = False
                        n_active -= 1
            if n_active == 0:
                break
        for t in range(nb):
            if not (has_skip and skip[i0 + t]):
                for j in range(k):
                    A[i0 + t, j] = a[j, t]


@numba.njit(nogil=True, cache=True)
def mu_rows(A, R, G, skip, eps):
    """One multiplicative (Lee-Seung) update of the rows of ``A``, in place.

    ``A <- A * R / (A G)`` with the denominator floored at ``eps``.
    Same sub-problem and arguments as :func:`hals_rows`.
    """
    n, k = A.shape
    has_skip = skip.shape[0] == n
    den = np.empty(k)
    for i in range(n):
        if has_skip and skip[i]:
            continue
        for j in range(k):
            s = 0.0
            for m in range(k):
                s += A[i, m] * G[m, j]
            den[j] = s if s > eps else eps
        for j in range(k):
            r = np.float64(R[i, j])
            if r < 0.0:
                r = 0.0
            A[i, j] = A[i, j] * r / den[j]


@numba.njit(nogil=True, cache=True, fastmath=_FAST)
def block_right(X, HcT, row_scale, R):
    """``R = diag(row_scale) @ X @ HcT.T`` for a block of rows, in place.

    The product of a data block with the (scaled) patterns, accumulated in the
    data's precision (float32 data: float32 sums, like BLAS ``sgemm``) and
    written as float64. Two rows times four components are accumulated side
    by side (register blocking); the sums over pixels are vectorized.

    Parameters
    ----------
    X : ndarray, shape (n, m), C-contiguous
        A block of rows of the data.
    HcT : ndarray, shape (k, m), same dtype as ``X``, C-contiguous
        Column-scaled patterns, transposed.
    row_scale : ndarray, shape (n,), float64
    R : ndarray, shape (n, k), float64
        Output.
    """
    n, m = X.shape
    k = HcT.shape[0]
    zero = np.zeros(1, dtype=X.dtype)[0]  # sums in the data's precision
    for i in range(0, n, 2):
        i1 = i + 1 if i + 1 < n else i  # odd n: the last row twice (same values)
        r0 = row_scale[i]
        r1 = row_scale[i1]
        if r0 == 0.0 and r1 == 0.0:
            for j in range(k):
                R[i, j] = 0.0
                R[i1, j] = 0.0
            continue
        x0 = X[i]
        x1 = X[i1]
        j = 0
        while j + 4 <= k:
            h0 = HcT[j]
            h1 = HcT[j + 1]
            h2 = HcT[j + 2]
            h3 = HcT[j + 3]
            s00 = s01 = s02 = s03 = zero
            s10 = s11 = s12 = s13 = zero
            for p in range(m):
                a = x0[p]
                b = x1[p]
                q0 = h0[p]
                q1 = h1[p]
                q2 = h2[p]
                q3 = h3[p]
                s00 += a * q0
                s01 += a * q1
                s02 += a * q2
                s03 += a * q3
                s10 += b * q0
                s11 += b * q1
                s12 += b * q2
                s13 += b * q3
            R[i, j] = s00 * r0
            R[i, j + 1] = s01 * r0
            R[i, j + 2] = s02 * r0
            R[i, j + 3] = s03 * r0
            R[i1, j] = s10 * r1
            R[i1, j + 1] = s11 * r1
            R[i1, j + 2] = s12 * r1
            R[i1, j + 3] = s13 * r1
            j += 4
        while j < k:
            h0 = HcT[j]
            s00 = s10 = zero
            for p in range(m):
                s00 += x0[p] * h0[p]
                s10 += x1[p] * h0[p]
            R[i, j] = s00 * r0
            R[i1, j] = s10 * r1
            j += 1


@numba.njit(nogil=True, cache=True, fastmath=_FAST)
def block_left(X, Wr, AccT):
    """``AccT += Wr.T @ X`` for a block of rows, in place.

    Accumulates the transposed-data product with the (row-scaled) maps in
    ``AccT``'s precision (float64 in the package:
    :func:`~hyperspy_cnmf.nmf._operators.summed_left`). Four rows times four
    components at a time; the updates along the pixels are vectorized.

    Parameters
    ----------
    X : ndarray, shape (n, m), float32 or float64, C-contiguous
        A block of rows of the data.
    Wr : ndarray, shape (n, k), float64 (or ``X``'s dtype)
        Row-scaled maps of the block.
    AccT : ndarray, shape (k, m), ``Wr``'s dtype, C-contiguous
        Accumulator.
    """
    n, m = X.shape
    k = Wr.shape[1]
    if n == 0:
        return
    zero = np.zeros(1, dtype=Wr.dtype)[0]
    for i in range(0, n, 4):
        # rows past the end repeat the last one with weight zero (finite data)
        ok1 = i + 1 < n
        ok2 = i + 2 < n
        ok3 = i + 3 < n
        i1 = i + 1 if ok1 else i
        i2 = i + 2 if ok2 else i
        i3 = i + 3 if ok3 else i
        x0 = X[i]
        x1 = X[i1]
        x2 = X[i2]
        x3 = X[i3]
        j = 0
        while j + 4 <= k:
            a = AccT[j]
            b = AccT[j + 1]
            c = AccT[j + 2]
            d = AccT[j + 3]
            w0 = Wr[i, j]
            w1 = Wr[i1, j] if ok1 else zero
            w2 = Wr[i2, j] if ok2 else zero
            w3 = Wr[i3, j] if ok3 else zero
            v0 = Wr[i, j + 1]
            v1 = Wr[i1, j + 1] if ok1 else zero
            v2 = Wr[i2, j + 1] if ok2 else zero
            v3 = Wr[i3, j + 1] if ok3 else zero
            u0 = Wr[i, j + 2]
            u1 = Wr[i1, j + 2] if ok1 else zero
            u2 = Wr[i2, j + 2] if ok2 else zero
            u3 = Wr[i3, j + 2] if ok3 else zero
            z0 = Wr[i, j + 3]
            z1 = Wr[i1, j + 3] if ok1 else zero
            z2 = Wr[i2, j + 3] if ok2 else zero
            z3 = Wr[i3, j + 3] if ok3 else zero
            for p in range(m):
                y0 = x0[p]
                y1 = x1[p]
                y2 = x2[p]
                y3 = x3[p]
                a[p] += w0 * y0 + w1 * y1 + w2 * y2 + w3 * y3
                b[p] += v0 * y0 + v1 * y1 + v2 * y2 + v3 * y3
                c[p] += u0 * y0 + u1 * y1 + u2 * y2 + u3 * y3
                d[p] += z0 * y0 + z1 * y1 + z2 * y2 + z3 * y3
            j += 4
        while j < k:
            a = AccT[j]
            w0 = Wr[i, j]
            w1 = Wr[i1, j] if ok1 else zero
            w2 = Wr[i2, j] if ok2 else zero
            w3 = Wr[i3, j] if ok3 else zero
            for p in range(m):
                a[p] += w0 * x0[p] + w1 * x1[p] + w2 * x2[p] + w3 * x3[p]
            j += 1


@numba.njit(nogil=True, cache=True)
def _morph_pass(img, valid, dy, dx, out, take_max):
    ny, nx = img.shape
    n_off = dy.shape[0]
    for y in range(ny):
        for x in range(nx):
            if not valid[y, x]:
                out[y, x] = img[y, x]
                continue
            best = img[y, x]
            for o in range(n_off):
                yy = y + dy[o]
                xx = x + dx[o]
                if yy < 0 or yy >= ny or xx < 0 or xx >= nx:
                    continue
                if not valid[yy, xx]:
                    continue
                v = img[yy, xx]
                if take_max:
                    if v > best:
                        best = v
                elif v < best:
                    best = v
            out[y, x] = best


@numba.njit(nogil=True, cache=True)
def grey_closing_stack(stack, valid, dy, dx):
    """Grey-scale closing (dilation then erosion) of each image of a stack.

    The structuring element is given by its offsets ``(dy, dx)`` (symmetric,
    containing the origin); pixels with ``valid == False`` (masked detector
    pixels) and pixels outside the image take no part, and are returned
    unchanged. The closing is extensive (never below the input) and
    idempotent; it fills valleys the structuring element cannot fit into and
    leaves peaks untouched.

    Parameters
    ----------
    stack : ndarray, shape (k, ny, nx), float64
    valid : ndarray of bool, shape (ny, nx)
    dy, dx : ndarray of int64
        Offsets of the structuring element.

    Returns
    -------
    ndarray, shape (k, ny, nx)
    """
    k = stack.shape[0]
    out = np.empty_like(stack)
    tmp = np.empty(stack.shape[1:], dtype=stack.dtype)
    for c in range(k):
        _morph_pass(stack[c], valid, dy, dx, tmp, True)
        _morph_pass(tmp, valid, dy, dx, out[c], False)
    return out


@numba.njit(nogil=True, cache=True)
def block_stats(X, row_scale, col_scale):
    """One read of a data block: sums needed by the solver and input checks.

    Entries whose row or column scale is zero (masked) are ignored.

    Parameters
    ----------
    X : ndarray, shape (n, m)
        A block of rows of the unfolded data (any real dtype).
    row_scale : ndarray, shape (n,), float64
    col_scale : ndarray, shape (m,), float64

    Returns
    -------
    total : float
        Sum of the scaled entries.
    sq_norm : float
        Sum of the squared scaled entries.
    minimum : float
        Smallest raw (unscaled) entry (``inf`` if none).
    n_nan : int
        Number of NaN (or infinite) raw entries.
    """
    n, m = X.shape
    total = 0.0
    sq = 0.0
    mn = np.inf
    n_bad = 0
    for i in range(n):
        r = row_scale[i]
        if r == 0.0:
            continue
        for j in range(m):
            c = col_scale[j]
            if c == 0.0:
                continue
            v = np.float64(X[i, j])
            if not np.isfinite(v):
                n_bad += 1
                continue
            if v < mn:
                mn = v
            v = v * r * c
            total += v
            sq += v * v
    return total, sq, mn, n_bad


@numba.njit(nogil=True, cache=True)
def block_row_col_sums(X, row_valid, col_valid):
    """Row sums over valid columns and column sums over valid rows of a block.

    Used for the Poisson (Keenan-Kotula) noise normalisation.
    """
    n, m = X.shape
    rows = np.zeros(n)
    cols = np.zeros(m)
    for i in range(n):
        if not row_valid[i]:
            continue
        for j in range(m):
            if not col_valid[j]:
                continue
            v = np.float64(X[i, j])
            rows[i] += v
            cols[j] += v
    return rows, cols


@numba.njit(nogil=True, cache=True, fastmath=_FAST)
def _summary_finite(X, row_scale, col_scale, poisson):
    """:func:`block_summary` for a block without non-finite entries (vectorized).

    Per-column accumulators instead of running scalars let the sums over
    pixels vectorize (``reassoc``: the order of the sums differs from the
    entry-by-entry kernel; measured on a 4096 x 8100 float32 block: 56 ms
    against 98 ms). The last value returned is True when a non-finite entry
    was met: the results are then not valid.
    """
    n, m = X.shape
    cvalid = np.empty(m)
    for j in range(m):
        cvalid[j] = 1.0 if col_scale[j] != 0.0 else 0.0
    rows = np.zeros(n)
    cols = np.zeros(m)
    pattern = np.zeros(m)
    p_sum = np.zeros(m)
    p_sq = np.zeros(m)
    p_min = np.full(m, np.inf)
    t_col = np.zeros(m)
    s_col = np.zeros(m)
    c_min = np.full(m, np.inf)
    n_rows = 0
    bad = 0.0
    for i in range(n):
        r = row_scale[i]
        if r == 0.0:
            continue
        n_rows += 1
        x = X[i]
        rs = 0.0
        for j in range(m):
            v = np.float64(x[j])
            pattern[j] += v
            vc = v * cvalid[j]
            bad += (v - v) * cvalid[j]  # NaN once a valid entry is not finite
            rs += vc
            cols[j] += vc
            w = vc * r * col_scale[j]
            t_col[j] += w
            s_col[j] += w * w
            u = v if cvalid[j] != 0.0 else np.inf
            c_min[j] = min(c_min[j], u)
        rows[i] = rs
        if not (poisson and rs > 0.0):
            continue
        rho = 1.0 / np.sqrt(rs)
        for j in range(m):
            v = np.float64(x[j])
            w = v * rho * cvalid[j]
            p_sum[j] += w
            p_sq[j] += w * w
            u = v if cvalid[j] != 0.0 else np.inf
            p_min[j] = min(p_min[j], u)
    total = 0.0
    sq = 0.0
    mn = np.inf
    for j in range(m):
        total += t_col[j]
        sq += s_col[j]
        mn = min(mn, c_min[j])
    p_bad = np.zeros(m, dtype=np.int64)
    return (
        total,
        sq,
        mn,
        0,
        n_rows,
        rows,
        cols,
        pattern,
        p_sum,
        p_sq,
        p_bad,
        p_min,
        bad != 0.0,
    )


@numba.njit(nogil=True, cache=True)
def block_summary(X, row_scale, col_scale, poisson=True):
    """Everything the wrapper and solver need before iterating, in one sweep.

    For the rows and columns with a non-zero scale: the statistics of
    :func:`block_stats`, the raw row and column sums of
    :func:`block_row_col_sums`, and the
    raw pattern sum over the valid rows (masked pixels included). With
    ``rho_i = 1 / sqrt(row sum)`` (the Poisson row scale), also per column
    ``sum_i rho_i x_ij``, ``sum_i (rho_i x_ij)^2``, the number of non-finite
    entries and the smallest entry over the rows with ``rho_i > 0``: the
    statistics of the Poisson-normalised data then follow for any column
    scale without another read. Used by :class:`hyperspy_cnmf.chunked.DaskOperator`,
    whose first read of the data gathers all of this at once.

    Blocks of finite data take a vectorized path (:func:`_summary_finite`,
    which sums in another order); others the exact entry-by-entry one. With
    ``poisson=False`` the Poisson-normalised column statistics are skipped on
    that path (returned as zeros and ``inf``).
    """
    out = _summary_finite(X, row_scale, col_scale, poisson)
    if not out[12]:
        return (
            out[0],
            out[1],
            out[2],
            out[3],
            out[4],
            out[5],
            out[6],
            out[7],
            out[8],
            out[9],
            out[10],
            out[11],
        )
    return _summary_checked(X, row_scale, col_scale)


@numba.njit(nogil=True, cache=True)
def _summary_checked(X, row_scale, col_scale):
    """:func:`block_summary` entry by entry, skipping non-finite entries."""
    n, m = X.shape
    total = 0.0
    sq = 0.0
    mn = np.inf
    n_bad = 0
    n_rows = 0
    rows = np.zeros(n)
    cols = np.zeros(m)
    pattern = np.zeros(m)
    p_sum = np.zeros(m)
    p_sq = np.zeros(m)
    p_bad = np.zeros(m, dtype=np.int64)
    p_min = np.full(m, np.inf)
    for i in range(n):
        r = row_scale[i]
        if r == 0.0:
            continue
        n_rows += 1
        rs = 0.0
        for j in range(m):
            v = np.float64(X[i, j])
            pattern[j] += v
            c = col_scale[j]
            if c == 0.0:
                continue
            rs += v
            cols[j] += v
            if not np.isfinite(v):
                n_bad += 1
                continue
            if v < mn:
                mn = v
            w = v * r * c
            total += w
            sq += w * w
        rows[i] = rs
        if not rs > 0.0:
            continue
        rho = 1.0 / np.sqrt(rs)
        for j in range(m):
            if col_scale[j] == 0.0:
                continue
            v = np.float64(X[i, j])
            if not np.isfinite(v):
                p_bad[j] += 1
                continue
            if v < p_min[j]:
                p_min[j] = v
            w = v * rho
            p_sum[j] += w
            p_sq[j] += w * w
    return total, sq, mn, n_bad, n_rows, rows, cols, pattern, p_sum, p_sq, p_bad, p_min


@numba.njit(nogil=True, cache=True)
def azimuthal_table(valid, cy, cx, half, r_min):
    """Sampling table of :func:`azimuthal_closing_stack` (it depends on the geometry only).

    For every pixel that the closing may change, its ``4 * half + 1`` samples
    along the circle about ``(cy, cx)``: the flat indices of the four
    bilinear neighbours and the fractional offsets ``(fy, fx)``, or a flag
    for the pixel itself (the centre sample) and for a sample that is off the
    detector or touches a masked pixel.

    Returns
    -------
    pix : ndarray of int64, shape (n,)
        Flat indices of the pixels.
    kind : ndarray of int8, shape (n, 4 * half + 1)
        0: no sample (NaN), 1: the pixel itself, 2: bilinear.
    idx : ndarray of int64, shape (n, 4 * half + 1, 4)
        Flat indices ``(y0, x0), (y0, x1), (y1, x0), (y1, x1)``.
    frac : ndarray of float64, shape (n, 4 * half + 1, 2)
        ``(fy, fx)``.
    """
    ny, nx = valid.shape
    n_s = 4 * half + 1
    n = 0
    for y in range(ny):
        for x in range(nx):
            dy = y - cy
            dx = x - cx
            if valid[y, x] and np.sqrt(dy * dy + dx * dx) >= r_min:
                n += 1
    pix = np.empty(n, np.int64)
    kind = np.zeros((n, n_s), np.int8)
    idx = np.zeros((n, n_s, 4), np.int64)
    frac = np.zeros((n, n_s, 2))
    p = 0
    for y in range(ny):
        for x in range(nx):
            if not valid[y, x]:
                continue
            dy = y - cy
            dx = x - cx
            rho = np.sqrt(dy * dy + dx * dx)
            if rho < r_min:
                continue
            pix[p] = y * nx + x
            theta = np.arctan2(dy, dx)
            for i in range(n_s):
                u = i - 2 * half
                if u == 0:
                    kind[p, i] = 1
                    continue
                t = theta + u / rho
                sy = cy + rho * np.sin(t)
                sx = cx + rho * np.cos(t)
                if sy < 0.0 or sx < 0.0 or sy > ny - 1 or sx > nx - 1:
                    continue
                y0 = int(np.floor(sy))
                x0 = int(np.floor(sx))
                y1 = min(y0 + 1, ny - 1)
                x1 = min(x0 + 1, nx - 1)
                if not (
                    valid[y0, x0] and valid[y0, x1] and valid[y1, x0] and valid[y1, x1]
                ):
                    continue
                kind[p, i] = 2
                idx[p, i, 0] = y0 * nx + x0
                idx[p, i, 1] = y0 * nx + x1
                idx[p, i, 2] = y1 * nx + x0
                idx[p, i, 3] = y1 * nx + x1
                frac[p, i, 0] = sy - y0
                frac[p, i, 1] = sx - x0
            p += 1
    return pix, kind, idx, frac


@numba.njit(nogil=True, cache=True)
def azimuthal_closing_apply(stack, pix, kind, idx, frac, half):
    """The azimuthal closing of a stack with a precomputed :func:`azimuthal_table`.

    Parameters
    ----------
    stack : ndarray, shape (k, ny, nx), float64
    pix, kind, idx, frac : ndarray
        The table of :func:`azimuthal_table` (same detector shape and ``half``).
    half : int

    Returns
    -------
    ndarray, shape (k, ny, nx)
    """
    k = stack.shape[0]
    flat = stack.reshape(k, -1)
    out = stack.copy()
    oflat = out.reshape(k, -1)
    n_s = 4 * half + 1
    line = np.empty(n_s)
    for p in range(pix.shape[0]):
        q = pix[p]
        for c in range(k):
            img = flat[c]
            for i in range(n_s):
                kd = kind[p, i]
                if kd == 1:
                    line[i] = img[q]
                elif kd == 0:
                    line[i] = np.nan
                else:
                    fy = frac[p, i, 0]
                    fx = frac[p, i, 1]
                    line[i] = (
                        img[idx[p, i, 0]] * (1 - fy) * (1 - fx)
                        + img[idx[p, i, 1]] * (1 - fy) * fx
                        + img[idx[p, i, 2]] * fy * (1 - fx)
                        + img[idx[p, i, 3]] * fy * fx
                    )
            best = np.inf
            for a in range(0, 2 * half + 1):
                # segment [a, a + 2 half] of the samples contains the centre 2 half
                m = -np.inf
                ok = True
                for i in range(a, a + 2 * half + 1):
                    w = line[i]
                    if w != w:
                        ok = False
                        break
                    if w > m:
                        m = w
                if ok and m < best:
                    best = m
            if best != np.inf and best > oflat[c, q]:
                oflat[c, q] = best
    return out


@numba.njit(nogil=True, cache=True)
def azimuthal_closing_stack(stack, valid, cy, cx, half, r_min):
    """Grey-scale closing of each image along the azimuth about ``(cy, cx)``.

    At every pixel ``p`` the pattern is sampled (bilinearly) on the circle
    about the centre through ``p``, at arc lengths ``-2 half ... 2 half``
    pixels, and the one-dimensional closing with a
    flat segment of ``2 * half + 1`` pixels is evaluated at ``p``:
    ``min over the segments containing p of the max over the segment``.
    Dips narrower than the segment *along the azimuth* are filled; radial
    structure (halos and the valleys between them) and peaks are left alone
    (the value at ``p`` is one of the samples, so nothing is lowered). Pixels
    closer than ``r_min`` to the centre and masked pixels are unchanged;
    samples off the detector or on masked pixels are ignored.

    The sampling geometry is computed by :func:`azimuthal_table` and applied
    by :func:`azimuthal_closing_apply`; callers that close many stacks with
    one geometry (the NMF iterations) keep the table.

    Parameters
    ----------
    stack : ndarray, shape (k, ny, nx), float64
    valid : ndarray of bool, shape (ny, nx)
    cy, cx : float
        Centre (pixels).
    half : int
        Half-length of the closing segment (pixels).
    r_min : float
        Radius (pixels) inside which nothing is changed.

    Returns
    -------
    ndarray, shape (k, ny, nx)
    """
    pix, kind, idx, frac = azimuthal_table(valid, cy, cx, half, r_min)
    return azimuthal_closing_apply(stack, pix, kind, idx, frac, half)


#: Margin (px) added to the half-maximum radius of the direct beam for the
#: integration disk of :func:`block_beam_centres`.
BEAM_DISK_MARGIN = 2.0


@numba.njit(nogil=True, cache=True, fastmath=_FAST)
def block_beam_centres(X, ny, nx, row_valid, col_valid, out):
    """Direct-beam centre ``(x, y)`` (px) of every row (pattern) of a block.

    Needs only the row itself, so it runs inside any read of the data (no
    calibration or mean pattern known in advance). For each valid row:

    1. the thresholded centre of mass: weights ``max(v - vmax / 2, 0)`` over
       the valid, finite pixels, where ``vmax`` is the row's largest value
       (the spirit of :func:`hyperspy_cnmf._beam.locate_direct_beam`); the
       number ``a`` of pixels above ``vmax / 2`` gives the half-maximum radius
       ``sqrt(a / pi)``. A single bright pixel is not a beam: when the
       brightest pixel stands alone (neither left/right neighbour reaches
       half of it), each pixel counts for ``vmax`` at most as much as its
       brighter left/right neighbour, and a pixel above the level with
       neither neighbour above it takes no part (an unmasked hot pixel
       brighter than the beam cannot move it; measured cost on the realistic
       block below: 66 ms instead of 57 ms);
    2. twice, the plain centre of mass of the raw values in the disk of
       radius ``sqrt(a / pi) + BEAM_DISK_MARGIN`` about the previous centre:
       linear in the beam's intensity, so the sub-pixel position carries no
       threshold (pixel-locking) bias.

    Parameters
    ----------
    X : ndarray, shape (n, ny * nx)
        Rows of the unfolded data (C order pixels: row ``y`` then column ``x``).
    ny, nx : int
        Detector shape (rows, columns).
    row_valid : ndarray of bool, shape (n,)
        Rows to measure; others get NaN.
    col_valid : ndarray of bool, shape (ny * nx,)
        Pixels used (masked pixels, e.g. hot pixels, are ignored; the
        operators pass :func:`hyperspy_cnmf._beam.beam_search_pixels` of the
        user's ``signal_mask``).
    out : ndarray, shape (n, 2), float64
        Receives ``(x, y)`` (column, row) in px; NaN where a row has no
        positive valid value.

    Notes
    -----
    Two sweeps of each row (its maximum, then the thresholded sums) plus the
    small disk. Measured on a 4096 x 8100 float32 block (90 x 90 detector,
    one core): 55-60 ms, against 47-50 ms for :func:`block_summary` on the
    same block; the first sweep reads the block from memory, as the summary
    does.
    """
    n = X.shape[0]
    cvalid = np.empty(ny * nx)
    for j in range(ny * nx):
        cvalid[j] = 1.0 if col_valid[j] else 0.0
    for i in range(n):
        out[i, 0] = np.nan
        out[i, 1] = np.nan
        if not row_valid[i]:
            continue
        x = X[i]
        vmax = 0.0
        for j in range(ny * nx):
            v = np.float64(x[j]) * cvalid[j]
            vmax = v if v > vmax else vmax  # NaN never wins
        if not vmax > 0.0:
            continue
        jmax = 0
        while np.float64(x[jmax]) * cvalid[jmax] != vmax:
            jmax += 1
        xm = jmax % nx
        nb = np.float64(x[jmax - 1]) * cvalid[jmax - 1] if xm > 0 else 0.0
        nr = np.float64(x[jmax + 1]) * cvalid[jmax + 1] if xm < nx - 1 else 0.0
        lone = not (nb >= 0.5 * vmax or nr >= 0.5 * vmax)
        if lone:
            # The brightest pixel stands alone (a hot pixel): every pixel counts at most as
            # much as its brighter left/right neighbour, so that a single pixel never wins.
            vmax = 0.0
            for yy in range(ny):
                for xx in range(nx):
                    j = yy * nx + xx
                    v = np.float64(x[j]) * cvalid[j]
                    nb = np.float64(x[j - 1]) * cvalid[j - 1] if xx > 0 else 0.0
                    nr = np.float64(x[j + 1]) * cvalid[j + 1] if xx < nx - 1 else 0.0
                    nb = nr if nr > nb else nb
                    v = nb if nb < v else v
                    vmax = v if v > vmax else vmax
            if not vmax > 0.0:
                continue
        level = 0.5 * vmax
        s = 0.0
        sx = 0.0
        sy = 0.0
        area = 0.0
        for yy in range(ny):
            srow = 0.0
            sxrow = 0.0
            arow = 0.0
            for xx in range(nx):
                j = yy * nx + xx
                w = (np.float64(x[j]) - level) * cvalid[j]
                w = w if w > 0.0 else 0.0  # NaN: 0
                if (
                    lone and w > 0.0
                ):  # an isolated pixel above the level (a hot pixel) takes no part
                    left = xx > 0 and np.float64(x[j - 1]) * cvalid[j - 1] > level
                    right = xx < nx - 1 and np.float64(x[j + 1]) * cvalid[j + 1] > level
                    w = w if (left or right) else 0.0
                srow += w
                sxrow += w * xx
                arow += 1.0 if w > 0.0 else 0.0
            s += srow
            sx += sxrow
            sy += srow * yy
            area += arow
        if not s > 0.0:
            continue
        cx = sx / s
        cy = sy / s
        rad = np.sqrt(area / np.pi) + BEAM_DISK_MARGIN
        for _ in range(2):
            y0 = max(0, int(np.floor(cy - rad)))
            y1 = min(ny - 1, int(np.ceil(cy + rad)))
            s = 0.0
            sx = 0.0
            sy = 0.0
            for yy in range(y0, y1 + 1):
                half = rad * rad - (yy - cy) ** 2
                if half < 0.0:
                    continue
                half = np.sqrt(half)
                srow = 0.0
                sxrow = 0.0
                for xx in range(
                    max(0, int(np.ceil(cx - half))),
                    min(nx - 1, int(np.floor(cx + half))) + 1,
                ):
                    j = yy * nx + xx
                    v = np.float64(x[j])
                    if col_valid[j] and np.isfinite(v):
                        srow += v
                        sxrow += v * xx
                s += srow
                sx += sxrow
                sy += srow * yy
            if not s > 0.0:
                break
            cx = sx / s
            cy = sy / s
        out[i, 0] = cx
        out[i, 1] = cy
