"""Polar transform of diffraction patterns, direct-beam detection and rotation.

Conventions (used throughout :mod:`hyperspy_cnmf.clustering`):

- Patterns are arrays ``(..., qy, qx)``; pixel ``(iy, ix)`` sits at the point
  ``(x, y) = (ix, iy)``. Centres are given as ``(x, y)`` in these pixel
  coordinates, or as a :class:`~hyperspy_cnmf._beam.Beam` (the package's one
  beam convention); a centre outside the pattern raises.
- The azimuth ``phi`` is measured from the +x (``kx``) axis towards the +y
  (``ky``) axis, in degrees. With the usual image display (``ky`` pointing
  down) a positive angle is therefore a *clockwise* rotation on screen.
- A rotation by ``a`` maps the intensity at ``phi`` to ``phi + a``; the
  mirror maps ``phi`` to ``-phi`` (``y - cy -> -(y - cy)``).
- Missing pixels are NaN and stay missing (see :mod:`._kernels`).
"""

import math

import numpy as np
from scipy import fft as sp_fft

from hyperspy_cnmf._beam import beam_search_pixels, check_centre, locate_direct_beam
from hyperspy_cnmf._docstrings import fill_doc
from hyperspy_cnmf.clustering import _kernels

__all__ = [
    "default_n_theta",
    "estimate_direct_beam_radius",
    "find_direct_beam",
    "polar_transform",
    "radial_profile",
    "rotate_patterns",
]


def _as_stack(patterns, name="patterns"):
    """Return ``patterns`` as float64 C-contiguous (n, qy, qx) and leading shape."""
    arr = np.asarray(patterns)
    if arr.ndim < 2:
        raise ValueError(f"`{name}` must have at least 2 dimensions (..., qy, qx).")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"`{name}` must be a real numeric array.")
    lead = arr.shape[:-2]
    stack = np.ascontiguousarray(arr.reshape((-1,) + arr.shape[-2:]), dtype=np.float64)
    return stack, lead


#: Validate a pixel centre ``(x, y)`` (or a :class:`~hyperspy_cnmf._beam.Beam`) against a
#: pattern shape (qy, qx): the package's one check (:func:`hyperspy_cnmf._beam.check_centre`).
_check_centre = check_centre


def default_n_theta(r_max):
    """Default number of azimuthal samples for a maximum radius ``r_max`` (px).

    Follows the convention of the method's author (DigitalMicrograph script
    ``OffCentRotAve.s``): ``8 * r_max`` samples, i.e. an arc step of
    ``2 pi / 8 ~ 0.79`` px at the outermost ring, finer than the Nyquist limit
    of one sample per pixel of circumference (``2 pi r_max``), so the spots of
    the outer rings are not aliased. The value is rounded up to a length for
    which the FFT is fast, and is at least 16.

    Parameters
    ----------
    r_max : float
        Outer radius in pixels.

    Returns
    -------
    int

    Examples
    --------
    >>> from hyperspy_cnmf.clustering import default_n_theta
    >>> default_n_theta(30)
    240
    """
    return int(
        sp_fft.next_fast_len(max(16, int(math.ceil(8.0 * float(r_max)))), real=True)
    )


def find_direct_beam(pattern, sigma=0.7, mask=None):
    """Locate the direct beam: the centre of the brightest disk.

    The direct-beam finder of the package
    (:func:`hyperspy_cnmf._beam.locate_direct_beam`): the disk is the
    half-maximum region around the brightest pixel of the smoothed pattern,
    its centre the centre of mass of the intensity above that level, so it
    is found for disks of any size, flat-topped or Gaussian.

    Parameters
    ----------
    pattern : array_like, shape (qy, qx)
        A representative pattern (e.g. the mean pattern, or the weighted sum of
        the NMF factors). NaN pixels are read from the valid pixels around
        them (:func:`hyperspy_cnmf._beam.fill_pixels`).
    sigma : float, default 0.7
        Gaussian smoothing before the search, in px.
    mask : ndarray of bool, shape (qy, qx), optional
        Pixels that take no part (True), e.g. a decomposition's
        ``signal_mask`` through :func:`hyperspy_cnmf._beam.beam_search_pixels`
        (``mask=~beam_search_pixels(signal_mask)``).

    Returns
    -------
    tuple of float
        ``(x, y)`` in pixel coordinates.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import find_direct_beam
    >>> yy, xx = np.mgrid[:64, :64]
    >>> img = np.exp(-((xx - 30.3) ** 2 + (yy - 33.6) ** 2) / 8.0)
    >>> x, y = find_direct_beam(img)
    >>> round(x, 1), round(y, 1)
    (30.3, 33.6)
    """
    return locate_direct_beam(pattern, sigma=sigma, mask=mask).xy


def beam_search_mask(signal_mask):
    """The pixels a direct-beam search leaves out, given a decomposition's ``signal_mask``.

    ``~beam_search_pixels(signal_mask)``
    (:func:`hyperspy_cnmf._beam.beam_search_pixels`: masked pixels, except a
    masked region that could hold the beam), or None without a mask; the
    ``mask`` of :func:`find_direct_beam`.
    """
    return None if signal_mask is None else ~beam_search_pixels(signal_mask)


def radial_profile(pattern, centre, r_max=None):
    """Azimuthal mean of ``pattern`` in 1-px rings about ``centre`` (NaN-aware).

    Returns the profile at radii ``0, 1, ..., r_max`` px (ring ``i`` holds the
    pixels with ``i - 0.5 <= r < i + 0.5``).
    """
    img = np.asarray(pattern, dtype=np.float64)
    cx, cy = _check_centre(centre, img.shape)
    yy, xx = np.indices(img.shape)
    r = np.rint(np.hypot(xx - cx, yy - cy)).astype(np.int64)
    if r_max is None:
        r_max = int(r.max())
    valid = np.isfinite(img) & (r <= r_max)
    tot = np.bincount(r[valid], weights=img[valid], minlength=r_max + 1)
    cnt = np.bincount(r[valid], minlength=r_max + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return tot[: r_max + 1] / cnt[: r_max + 1]


def estimate_direct_beam_radius(pattern, centre, fraction=0.1, factor=2.0, margin=1.0):
    """Radius (px) about the direct beam to leave out of the correlations.

    The azimuthally averaged profile of ``pattern`` about ``centre`` is
    followed outwards until it first drops below
    ``background + fraction * (peak - background)`` (``background``: the
    profile's minimum): that is the disk edge ``r_edge``. The returned radius
    is ``factor * r_edge + margin``, capped at a quarter of the distance from
    the centre to the nearest edge (so that a pattern without a clear direct
    beam is not masked away).

    Why twice the disk: besides the disk itself, its surroundings carry the
    largest Poisson noise of the dataset, which over-complete NMF fits with
    spurious components whose only structure lies there; in a nano-beam
    pattern with non-overlapping disks, Bragg disks are centred at least two
    disk radii from the direct beam, so ``2 r_edge`` removes little
    structural information. On the simulated precipitates this tightened the
    merges within a phase (e.g. 0.28 -> 0.23 pseudo-distance) without
    bringing the phases closer.

    Parameters
    ----------
    pattern : array_like, shape (qy, qx)
        A representative pattern (mean pattern, intensity-weighted sum of the
        factors).
    centre : tuple of float
        ``(x, y)`` in px.
    fraction : float, default 0.1
        Level defining the disk edge.
    factor : float, default 2.0
    margin : float, default 1.0
        Px added (soft disk edges, centre error).

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import estimate_direct_beam_radius
    >>> yy, xx = np.mgrid[:65, :65]
    >>> disk = (np.hypot(xx - 32, yy - 32) <= 4).astype(float)
    >>> estimate_direct_beam_radius(disk + 0.01, (32, 32))
    8.0
    """
    img = np.asarray(pattern, dtype=np.float64)
    cx, cy = _check_centre(centre, img.shape)
    edge = min(_edge_distances(cx, cy, img.shape))
    prof = radial_profile(img, (cx, cy), r_max=max(1, int(edge)))
    if not np.any(np.isfinite(prof)):
        return 0.0
    inner = prof[: max(2, int(0.25 * edge) + 1)]
    # a masked direct beam leaves the inner rings NaN: no peak, the bound below
    peak = np.nanmax(inner) if np.isfinite(inner).any() else np.nan
    bg = np.nanmin(prof)
    level = bg + float(fraction) * (peak - bg)
    below = np.flatnonzero(prof <= level)
    r_edge = float(below[0]) if below.size else float(edge)
    return float(min(float(factor) * r_edge + float(margin), 0.25 * edge))


#: A direct beam farther than this many px (along either axis) from the detector's middle is off
#: it (:func:`clustering_radius`); a beam at the middle pixel of an even-sized detector lies
#: 0.5 px from it.
OFF_MIDDLE_PX = 1.0


def _edge_distances(cx, cy, shape):
    """Distances (px) from ``(cx, cy)`` to the 4 edges of a ``(qy, qx)`` detector: left, top, right, bottom."""
    ny, nx = shape
    return (cx, cy, nx - 1 - cx, ny - 1 - cy)


def clustering_radius(centre, shape):
    """The clustering's default outer radius (px) about ``centre`` on a ``(qy, qx)`` detector.

    The nearest edge (the author's convention: every ring complete) for a
    beam at the detector's middle, the farthest edge for a beam off it (by
    more than :data:`OFF_MIDDLE_PX` along either axis): the far side's rings take part, their
    parts off the detector read from their Friedel mates
    (``polar_transform(friedel=True)``).

    Examples
    --------
    >>> clustering_radius((24.0, 24.0), (48, 48)), clustering_radius((12.0, 12.0), (36, 36))
    (23.0, 23.0)
    >>> clustering_radius((12.0, 12.0), (48, 48))
    35.0
    >>> clustering_radius((24.0, 12.0), (24, 48))  # the middle of a non-square detector
    11.0
    """
    cx, cy = (float(v) for v in centre)
    ny, nx = shape
    off = max(abs(cx - (nx - 1) / 2), abs(cy - (ny - 1) / 2)) > OFF_MIDDLE_PX
    return (max if off else min)(_edge_distances(cx, cy, shape))


@fill_doc
def polar_transform(
    patterns,
    centre=None,
    radial_range=None,
    delta_r=1.0,
    n_theta=None,
    delta_theta=None,
    direct_beam_radius=None,
    friedel=False,
):
    """Resample diffraction patterns on a polar ``(r, phi)`` grid (bilinear).

    All lengths in px.

    Parameters
    ----------
    patterns : array_like, shape (..., qy, qx)
        Any number of leading dimensions. NaN marks missing pixels.
    centre : tuple of float, optional
        ``(x, y)`` of the direct beam in pixel coordinates (column, row). If
        None it is found with :func:`find_direct_beam` on the mean pattern.
        A centre outside the pattern raises ``ValueError``.
    %(polar_grid)s
    direct_beam_radius : float or "auto", optional
        Rings with ``r < direct_beam_radius`` (px) are set to NaN (masked), so
        that the direct beam does not take part in later correlations.
        ``"auto"``: :func:`estimate_direct_beam_radius` of the mean pattern.
        Default None: nothing masked.
    friedel : bool, default False
        Samples off the detector take the value of their Friedel mate (the
        same radius, azimuth + 180 degrees) where that lies on the detector
        (Friedel's law: a zone-axis pattern is centrosymmetric; for an odd
        ``n_theta`` the mean of the two samples about it). False: they are
        NaN.

    Returns
    -------
    polar : ndarray, shape (..., n_r, n_theta)
        The polar images (azimuth on the last axis).
    radii : ndarray, shape (n_r,)
        Radii in px.
    theta : ndarray, shape (n_theta,)
        Azimuths in degrees, from +x towards +y.

    Raises
    ------
    ValueError
        For a centre outside the pattern, an empty radial range or one wholly
        off the detector, a bad
        ``delta_r``/``n_theta``, or a ``direct_beam_radius`` that masks every
        ring (nothing left to compare).

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import polar_transform
    >>> patterns = np.random.default_rng(0).random((3, 5, 33, 33))
    >>> polar, radii, theta = polar_transform(patterns, centre=(16, 16))
    >>> polar.shape, float(radii[-1]), theta.size
    ((3, 5, 17, 128), 16.0, 128)
    """
    stack, lead = _as_stack(patterns)
    ny, nx = stack.shape[-2:]
    if centre is None:
        with np.errstate(invalid="ignore"):
            centre = find_direct_beam(np.nanmean(stack, axis=0))
    cx, cy = _check_centre(centre, (ny, nx))
    if delta_r <= 0:
        raise ValueError("`delta_r` must be positive.")
    if radial_range is None:
        r_min, r_max = 0.0, min(_edge_distances(cx, cy, (ny, nx)))
    else:
        r_min, r_max = (float(v) for v in radial_range)
    if not (0 <= r_min < r_max):
        raise ValueError(
            f"`radial_range` must satisfy 0 <= r_min < r_max, got ({r_min}, {r_max}) "
            "px; the centre may be on the detector border."
        )
    # 1 px of slack: callers' centres differ by fractions of a px from the one given
    reach = math.hypot(max(cx, nx - 1 - cx), max(cy, ny - 1 - cy))
    if r_min > reach + 1.0:
        raise ValueError(
            f"`radial_range` ({r_min:.4g}-{r_max:.4g} px) lies wholly off the detector: its "
            f"farthest pixel is {reach:.4g} px from the centre ({cx:.4g}, {cy:.4g}) px. Signal "
            "methods take radii in the signal's calibrated units unless units='px'."
        )
    n_r = int(math.floor((r_max - r_min) / delta_r + 1e-9)) + 1
    radii = r_min + delta_r * np.arange(n_r, dtype=np.float64)
    if n_theta is None:
        if delta_theta is not None:
            if delta_theta <= 0:
                raise ValueError("`delta_theta` must be positive.")
            n_theta = max(4, int(round(360.0 / float(delta_theta))))
        else:
            n_theta = default_n_theta(r_max)
    n_theta = int(n_theta)
    if n_theta < 4:
        raise ValueError("`n_theta` must be at least 4.")
    theta = np.arange(n_theta) * (360.0 / n_theta)
    t = np.deg2rad(theta)
    xs = (cx + radii[:, None] * np.cos(t)[None, :]).ravel()
    ys = (cy + radii[:, None] * np.sin(t)[None, :]).ravel()
    index, weight = _kernels.bilinear_table(xs, ys, ny, nx)
    out = np.empty((stack.shape[0], n_r * n_theta), dtype=np.float64)
    _kernels.apply_table(stack.reshape(stack.shape[0], -1), index, weight, out)
    out = out.reshape(-1, n_r, n_theta)
    if friedel:
        # the mate of azimuth i is i + n_theta / 2: a sample for even n_theta, midway between
        # two (their mean) for odd
        off = np.all(index < 0, axis=1).reshape(n_r, n_theta)
        lo = (np.arange(n_theta) + n_theta // 2) % n_theta
        hi = (lo + n_theta % 2) % n_theta
        rows, cols = np.nonzero(off & ~off[:, lo] & ~off[:, hi])
        if rows.size:
            out[:, rows, cols] = 0.5 * (out[:, rows, lo[cols]] + out[:, rows, hi[cols]])
    if isinstance(direct_beam_radius, str):
        if direct_beam_radius != "auto":
            raise ValueError("`direct_beam_radius` must be a number, 'auto' or None.")
        with np.errstate(invalid="ignore"):
            direct_beam_radius = estimate_direct_beam_radius(
                np.nanmean(stack, axis=0), (cx, cy)
            )
    if direct_beam_radius is not None:
        if not np.any(radii >= float(direct_beam_radius)):
            raise ValueError(
                f"`direct_beam_radius` ({float(direct_beam_radius):.3g} px) masks every ring of the "
                f"radial range ({radii[0]:.3g}-{radii[-1]:.3g} px): nothing is left to compare. "
                "Pass a smaller direct_beam_radius or a larger radial_range (same units)."
            )
        out[:, radii < float(direct_beam_radius), :] = np.nan
    return out.reshape(lead + (n_r, n_theta)), radii, theta


def rotate_patterns(patterns, centre, angles, mirror=None):
    """Rotate (and optionally mirror) patterns about ``centre`` (bilinear).

    Pattern ``i`` is mirrored (``phi -> -phi``) first when ``mirror[i]``, then
    rotated by ``angles[i]`` degrees (from +x towards +y): in polar terms the
    result is ``p(phi - a)`` (``p(a - phi)`` with the mirror). This is the
    transformation reported by
    :func:`~hyperspy_cnmf.clustering.rotational_similarity` to bring a pattern
    onto another one.

    Parameters
    ----------
    patterns : array_like, shape (..., qy, qx)
    centre : tuple of float
        ``(x, y)`` in px.
    angles : array_like of float
        Degrees, broadcastable to the leading shape of ``patterns``.
    mirror : array_like of bool, optional
        Broadcastable to the leading shape; default no mirror.

    Returns
    -------
    ndarray, shape (..., qy, qx)
        Float64; pixels that come from outside the detector (or from NaN
        pixels) are NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import rotate_patterns
    >>> img = np.zeros((21, 21)); img[10, 15] = 1.0
    >>> out = rotate_patterns(img, centre=(10, 10), angles=90)
    >>> np.unravel_index(np.nanargmax(out), out.shape)
    (np.int64(15), np.int64(10))
    """
    stack, lead = _as_stack(patterns)
    cx, cy = _check_centre(centre, stack.shape[-2:])
    n = stack.shape[0]
    ang = np.broadcast_to(np.asarray(angles, dtype=np.float64), lead).reshape(n)
    if mirror is None:
        mir = np.zeros(n, dtype=np.bool_)
    else:
        mir = np.broadcast_to(np.asarray(mirror, dtype=np.bool_), lead).reshape(n)
    out = np.empty_like(stack)
    _kernels.rotate_resample(
        stack, cx, cy, np.deg2rad(ang), np.ascontiguousarray(mir), out
    )
    return out.reshape(lead + stack.shape[-2:])
