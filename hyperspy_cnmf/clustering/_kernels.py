"""Numba kernels of the clustering core (polar resampling, rotation).

All kernels are compiled lazily (``cache=True``), release the GIL
(``nogil=True``) and take float64 arrays only, so that each compiles a single
specialisation. Pixel centres sit at integer coordinates: pixel ``(iy, ix)`` of
an image is the point ``(x, y) = (ix, iy)``.

Missing values (NaN) are handled by bilinear interpolation over the *valid*
neighbours only: the weights of the NaN neighbours are dropped and the
remaining ones renormalised; a sample whose valid neighbours carry less than
half of the interpolation weight is NaN. Samples outside the image are NaN.
"""

import math

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def bilinear_table(xs, ys, ny, nx):
    """Neighbour indices and weights of bilinear samples at ``(xs, ys)``.

    Parameters
    ----------
    xs, ys : ndarray, float64, shape (m,)
        Sample coordinates (column, row).
    ny, nx : int
        Image shape.

    Returns
    -------
    index : ndarray, int64, shape (m, 4)
        Flat pixel indices of the 4 neighbours; -1 for a zero weight or a
        sample outside the image (then all four are -1).
    weight : ndarray, float64, shape (m, 4)
    """
    m = xs.shape[0]
    index = np.full((m, 4), -1, dtype=np.int64)
    weight = np.zeros((m, 4), dtype=np.float64)
    for s in range(m):
        x = xs[s]
        y = ys[s]
        if not (x >= 0.0 and y >= 0.0 and x <= nx - 1 and y <= ny - 1):
            continue
        x0 = int(math.floor(x))
        y0 = int(math.floor(y))
        if x0 > nx - 2:
            x0 = nx - 2 if nx > 1 else 0
        if y0 > ny - 2:
            y0 = ny - 2 if ny > 1 else 0
        fx = x - x0
        fy = y - y0
        q = 0
        for dy in range(2):
            yy = y0 + dy
            wy = fy if dy == 1 else 1.0 - fy
            for dx in range(2):
                xx = x0 + dx
                wx = fx if dx == 1 else 1.0 - fx
                w = wx * wy
                if w > 0.0 and yy < ny and xx < nx:
                    index[s, q] = yy * nx + xx
                    weight[s, q] = w
                q += 1
    return index, weight


@numba.njit(nogil=True, cache=True)
def apply_table(images, index, weight, out):
    """Resample flattened images with a bilinear table, NaN-aware.

    Parameters
    ----------
    images : ndarray, float64, shape (n, ny * nx)
    index, weight : ndarray, shape (m, 4)
        From :func:`bilinear_table`.
    out : ndarray, float64, shape (n, m)
        Filled in place (see the module doc for the NaN rule).
    """
    n = images.shape[0]
    m = index.shape[0]
    for i in range(n):
        img = images[i]
        for s in range(m):
            acc = 0.0
            wsum = 0.0
            for q in range(4):
                j = index[s, q]
                if j < 0:
                    continue
                v = img[j]
                if math.isnan(v):
                    continue
                acc += weight[s, q] * v
                wsum += weight[s, q]
            if wsum < 0.5:
                out[i, s] = np.nan
            else:
                out[i, s] = acc / wsum


@numba.njit(nogil=True, cache=True)
def rotate_resample(images, cx, cy, angles, mirror, out):
    """Rotate (and optionally mirror) images about ``(cx, cy)``.

    The output ``out[i]`` is ``images[i]`` transformed by ``R(angles[i]) M``
    where ``M`` (applied first, only when ``mirror[i]``) mirrors the azimuth
    ``phi -> -phi`` (i.e. ``y - cy -> -(y - cy)``) and ``R(a)`` rotates by ``a``
    radians from +x towards +y. In polar terms ``out(phi) = image(phi - a)``,
    or ``image(a - phi)`` with the mirror.

    Parameters
    ----------
    images : ndarray, float64, shape (n, ny, nx)
    cx, cy : float
    angles : ndarray, float64, shape (n,)
        Radians.
    mirror : ndarray, bool, shape (n,)
    out : ndarray, float64, shape (n, ny, nx)
        Filled in place.
    """
    n, ny, nx = images.shape
    xs = np.empty(ny * nx)
    ys = np.empty(ny * nx)
    for i in range(n):
        c = math.cos(angles[i])
        s = math.sin(angles[i])
        for iy in range(ny):
            dy = iy - cy
            for ix in range(nx):
                dx = ix - cx
                # inverse rotation R(-a)
                sx = dx * c + dy * s
                sy = -dx * s + dy * c
                if mirror[i]:
                    sy = -sy
                xs[iy * nx + ix] = cx + sx
                ys[iy * nx + ix] = cy + sy
        index, weight = bilinear_table(xs, ys, ny, nx)
        apply_table(
            images[i].reshape(1, ny * nx), index, weight, out[i].reshape(1, ny * nx)
        )
