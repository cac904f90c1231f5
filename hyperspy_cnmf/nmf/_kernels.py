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


@numba.njit(nogil=True, cache=True)
def hals_rows(A, R, G, skip, n_inner, inner_tol):
    """Row-wise HALS sweeps for ``min_{A >= 0} 0.5 tr(A G A^T) - tr(R A^T)``.

    Both NMF sub-problems have this form: the maps ``W`` with ``R = X Ht`` and
    ``G = Ht^T Ht``; the patterns ``Ht`` with ``R = X^T W`` and
    ``G = W^T W``. Rows are independent, so each row gets its own inner
    iterations (accelerated HALS, Gillis & Glineur 2012), stopped when a sweep
    changes the row by less than ``inner_tol`` times the first sweep.

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
    for i in range(n):
        if has_skip and skip[i]:
            continue
        first = 0.0
        for it in range(n_inner):
            change = 0.0
            for j in range(k):
                gjj = G[j, j]
                if gjj <= 0.0:
                    continue
                s = np.float64(R[i, j])
                for m in range(k):
                    s -= A[i, m] * G[m, j]
                new = A[i, j] + s / gjj
                if new < 0.0:
                    new = 0.0
                d = new - A[i, j]
                change += d * d
                A[i, j] = new
            if it == 0:
                first = change
                if first == 0.0:
                    break
            elif change <= tol2 * first:
                break


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


@numba.njit(nogil=True, cache=True)
def _bilinear(img, valid, y, x):
    """Bilinear sample of ``img`` at (y, x); NaN outside or on masked pixels."""
    ny, nx = img.shape
    if y < 0.0 or x < 0.0 or y > ny - 1 or x > nx - 1:
        return np.nan
    y0 = int(np.floor(y))
    x0 = int(np.floor(x))
    y1 = min(y0 + 1, ny - 1)
    x1 = min(x0 + 1, nx - 1)
    if not (valid[y0, x0] and valid[y0, x1] and valid[y1, x0] and valid[y1, x1]):
        return np.nan
    fy = y - y0
    fx = x - x0
    return (img[y0, x0] * (1 - fy) * (1 - fx) + img[y0, x1] * (1 - fy) * fx
            + img[y1, x0] * fy * (1 - fx) + img[y1, x1] * fy * fx)


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
    k, ny, nx = stack.shape
    out = stack.copy()
    n_s = 4 * half + 1
    line = np.empty(n_s)
    for y in range(ny):
        for x in range(nx):
            if not valid[y, x]:
                continue
            dy = y - cy
            dx = x - cx
            rho = np.sqrt(dy * dy + dx * dx)
            if rho < r_min:
                continue
            theta = np.arctan2(dy, dx)
            for c in range(k):
                img = stack[c]
                for i in range(n_s):
                    u = i - 2 * half
                    if u == 0:
                        line[i] = img[y, x]
                    else:
                        t = theta + u / rho
                        line[i] = _bilinear(img, valid, cy + rho * np.sin(t), cx + rho * np.cos(t))
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
                if best != np.inf and best > out[c, y, x]:
                    out[c, y, x] = best
    return out
