"""The direct beam of a diffraction pattern (numpy and scipy only).

The one direct-beam finder of the package: the decomposition (default size
and centre of the diffraction constraint, probe size from calibrated
diffraction), the calibration helpers and the rotation-invariant clustering
(centre of the polar transform) all call :func:`locate_direct_beam`.

The one beam and centre convention: a :class:`Beam`, ``(x, y, radius)`` in
detector px, **x first** (``x`` the column, ``y`` the row of the pattern
array). The decomposition records it (``direct_beam_x_px``, ...), the dip
constraint is built from it
(:meth:`~hyperspy_cnmf.constraints.DiffractionDipConstraint.from_beam`), and
every ``centre`` the package takes or shows is ``(x, y)``; only the Numba
kernels take array order ``(cy, cx)``, from :attr:`Beam.yx`. A centre outside
the detector raises (:func:`check_centre`), so a swapped ``(y, x)`` on a
non-square detector, or off its middle, is caught where it falls outside.
"""

import warnings
from collections import namedtuple

import numpy as np
from scipy import ndimage

__all__ = [
    "beam_contrast",
    "beam_motion",
    "beam_drift_t",
    "fit_plane",
    "Beam",
    "beam_search_pixels",
    "check_centre",
    "defect_pixels",
    "fill_pixels",
    "dark_share",
    "friedel_centre",
    "hidden_beam",
    "locate_direct_beam",
    "positions_across_dead_pixels",
    "search_beam",
]


class Beam(namedtuple("Beam", ["x", "y", "radius"])):
    """The direct beam on the detector: centre ``(x, y)`` and disk radius, in px.

    ``x`` is the column, ``y`` the row of the pattern array (x first, as
    HyperSpy's ``signal_shape`` and every ``centre`` of the package). A named
    tuple of floats, so immutable and unpacked as ``x, y, radius``.

    Parameters
    ----------
    x, y : float
        Centre, px.
    radius : float, default NaN
        Radius of the disk (or of the masked disk, where that is meant), px;
        NaN when unknown.

    Examples
    --------
    >>> from hyperspy_cnmf._beam import Beam
    >>> beam = Beam(30, 12.5, 4)
    >>> beam.xy, beam.yx
    ((30.0, 12.5), (12.5, 30.0))
    >>> Beam.from_record(beam.record()) == beam
    True
    >>> beam.check((40, 24))  # (qy, qx): x = 30 is beyond the 24 columns
    Traceback (most recent call last):
    ...
    ValueError: The centre (x, y) = (30, 12.5) px is outside the pattern (x in [0, 23], y in [0, 39] px).
    """

    __slots__ = ()

    def __new__(cls, x, y, radius=float("nan")):
        return super().__new__(cls, float(x), float(y), float(radius))

    @property
    def xy(self):
        """``(x, y)``: the centre as every ``centre`` argument of the package takes it."""
        return (self.x, self.y)

    @property
    def yx(self):
        """``(y, x)``: the centre in array order (row, column), for the Numba kernels only."""
        return (self.y, self.x)

    def check(self, shape):
        """This beam, after checking that its centre lies on a detector of ``shape`` (qy, qx)."""
        check_centre(self, shape)
        return self

    #: The fields of a decomposition record (``cnmf_parameters``) that hold a beam.
    RECORD_KEYS = ("direct_beam_x_px", "direct_beam_y_px", "direct_beam_radius_px")

    def record(self):
        """``{"direct_beam_x_px": x, "direct_beam_y_px": y, "direct_beam_radius_px": radius}``."""
        return dict(zip(self.RECORD_KEYS, self))

    @classmethod
    def from_record(cls, record):
        """The beam of a :meth:`record` (e.g. the decomposition's settings), or None if absent."""
        if not record or any(key not in record for key in cls.RECORD_KEYS):
            return None
        return cls(*(record[key] for key in cls.RECORD_KEYS))


def check_centre(centre, shape):
    """A centre ``(x, y)`` (px) checked against a pattern ``shape`` (qy, qx).

    Parameters
    ----------
    centre : Beam or pair of float
        ``(x, y)``: x the column, y the row.
    shape : tuple of int
        ``(qy, qx)``, array order.

    Returns
    -------
    (x, y) : tuple of float

    Raises
    ------
    ValueError
        If ``centre`` is not a pair of finite numbers, or lies outside the
        pattern (``x`` beyond the columns or ``y`` beyond the rows: e.g. a
        centre given row first).
    """
    if isinstance(centre, Beam):
        centre = centre.xy
    try:
        cx, cy = (float(c) for c in centre)
    except (TypeError, ValueError):
        raise ValueError(f"`centre` must be a pair (x, y), got {centre!r}.") from None
    ny, nx = shape
    if not (np.isfinite(cx) and np.isfinite(cy)):
        raise ValueError(f"`centre` must be finite, got {(cx, cy)}.")
    if not (0 <= cx <= nx - 1 and 0 <= cy <= ny - 1):
        raise ValueError(
            f"The centre (x, y) = ({cx:g}, {cy:g}) px is outside the pattern "
            f"(x in [0, {nx - 1}], y in [0, {ny - 1}] px)."
        )
    return cx, cy


#: A pixel of a mean pattern more than this many times brighter than the brightest of its 8
#: neighbours is a hot pixel (a Bragg disk or the direct beam is never that sharp: its neighbours
#: receive a good part of its intensity).
HOT_PIXEL_RATIO = 5.0
#: ... and brighter than this fraction of the pattern's (median-filtered) maximum, so that a
#: stray count in a dark corner is not reported.
HOT_PIXEL_FLOOR = 1e-3
#: With ``poisson=True`` (counts data) a hot pixel must also stand out of the counting noise:
#: its excess over :data:`HOT_PIXEL_RATIO` times its brightest neighbour, in counts summed over
#: the positions, is at least this many Poisson standard errors of that difference. A dark pixel
#: with a few stray counts over a short or low-dose scan (a 3 x 3 crop, 20 counts per pattern)
#: is then no hot pixel; one needs > 25 counts where its neighbours have none.
HOT_PIXEL_SIGNIFICANCE = 5.0
#: A pixel whose mean is exactly 0 where the lower quartile of the pixels around it (see
#: :func:`_dead_pixels`), summed over all positions, is at least this many counts is dead
#: (the chance of no count at all is e**-10; at 20 the dark side of a 2-px gap, 10-20 counts
#: over the descan case's scan, stayed live).
DEAD_PIXEL_COUNTS = 10.0
#: Half-side (px) of the square about a zero pixel whose pixels (its own zero region left out)
#: give its expected counts: 3 px reaches across the gaps between the chips of a pixelated
#: detector (a cross of zero lines up to 6 px wide, as Medipix quads write them), whose middle
#: pixels have no live neighbour among their 8.
DEAD_PIXEL_REACH = 3


def _neighbours(img, reduce):
    """The max or median of the 8 neighbours of every pixel (edges: the nearest pixel repeated)."""
    footprint = np.ones((3, 3), dtype=bool)
    footprint[1, 1] = False
    if reduce == "max":
        return ndimage.maximum_filter(img, footprint=footprint, mode="nearest")
    return ndimage.median_filter(img, footprint=footprint, mode="nearest")


def defect_pixels(pattern, n_positions=1, mask=None, poisson=False):
    """Hot and dead pixels of a mean pattern.

    * hot: more than :data:`HOT_PIXEL_RATIO` times brighter than the
      brightest of its 8 neighbours (or, for touching hot pixels, a group
      of at most 2 x 2 more than 3 px from the direct beam's half-maximum
      disk: than the brightest pixel 2 px away), and brighter than
      :data:`HOT_PIXEL_FLOOR` times the pattern's maximum after a 3 x 3
      median filter (scale-free: the same pixels for data in any units).
      With ``poisson=True`` (counts data) also significant against the
      counting noise: with ``T = pattern * n_positions`` (counts summed over
      the positions), ``T_pix - 5 T_nmax > z sqrt(T_pix + 25 T_nmax)``, with
      ``z =`` :data:`HOT_PIXEL_SIGNIFICANCE` and ``T_nmax`` the brightest
      neighbour;
    * dead: exactly 0 where the lower quartile of the pixels within
      :data:`DEAD_PIXEL_REACH` px of it (a square; masked pixels and its
      own zero region left out, other zeros counted), times ``n_positions``
      (the mean pattern's number of positions), is at least
      :data:`DEAD_PIXEL_COUNTS` (counts data: a live pixel would have
      recorded something). Lines of zeros a few pixels wide (the gaps
      between the chips of a pixelated detector) are dead as single pixels
      are. Hot pixels beside dead or masked ones are compared with those
      read from the pixels around (:func:`fill_pixels`), but within the
      direct beam's region (pieces of the beam cut by a gap).

    Parameters
    ----------
    pattern : array_like, shape (qy, qx)
        The mean pattern (non-finite pixels are ignored).
    n_positions : int, default 1
        Number of patterns averaged into ``pattern``.
    mask : ndarray of bool, shape (qy, qx), optional
        Pixels already excluded (True): never reported, and not used as
        neighbours.
    poisson : bool, default False
        Counts data: a hot pixel must be significant against Poisson noise
        (see above).

    Returns
    -------
    hot, dead : ndarray of bool, shape (qy, qx)
    """
    img = np.asarray(pattern, dtype=np.float64)
    bad = (
        ~np.isfinite(img)
        if mask is None
        else ~np.isfinite(img) | np.asarray(mask, dtype=bool)
    )
    img = np.where(bad, 0.0, img)
    hot = _hot_pixels(img, img, bad, n_positions, poisson)
    dead = _dead_pixels(img, bad, float(n_positions))
    bad = bad | dead
    if bad.any() and not bad.all():
        # hot pixels again, each dead or masked pixel read from the valid ones around it
        # (fill_pixels), the hot pixels of the first pass left out of that reading: a piece
        # of the direct beam cut off by a detector's gap (within the beam's region) is no hot
        # pixel, a hot pixel beside the gap still is
        hot = _hot_pixels(
            img,
            fill_pixels(img, bad),
            bad,
            n_positions,
            poisson,
            reference=fill_pixels(img, bad | hot) if hot.any() else None,
            beside=bad,
        )
    return hot, dead


#: Zero pixels whose windows are read at once by :func:`_dead_pixels` (bounds its memory).
_DEAD_CHUNK = 65536


def _dead_pixels(img, bad, n_positions):
    """The dead pixels of :func:`defect_pixels`.

    A zero pixel of a thin zero region (no pixel of it farther than
    :data:`DEAD_PIXEL_REACH` px from a nonzero one, sqrt(2) times that where
    two lines cross: a single pixel, a line up to twice that wide) is dead
    where the lower quartile of the pixels within :data:`DEAD_PIXEL_REACH`
    px (a square; masked pixels and, for a line longer than two windows,
    e.g. a gap, its own zero region left out; other zeros counted), times
    ``n_positions``, reaches :data:`DEAD_PIXEL_COUNTS`. The quartile,
    zeros counted, and the thinness keep the dark rim of a bright disk at
    low counts live; only zero pixels with a bright enough pixel in reach
    are examined (a large dark detector costs little).
    """
    zero = (img == 0) & ~bad
    dead = np.zeros_like(zero)
    w = DEAD_PIXEL_REACH
    near = ndimage.maximum_filter(np.where(bad, 0.0, img), size=2 * w + 1)
    candidates = zero & (near * n_positions >= DEAD_PIXEL_COUNTS)
    if not candidates.any():
        return dead
    region, n_regions = ndimage.label(zero, structure=np.ones((3, 3), dtype=bool))
    # only thin zero regions (single pixels, lines up to 2 DEAD_PIXEL_REACH wide): a broad
    # one is a dark part of the pattern (a low-dose scan's outer detector, where the zeros
    # at a bright disk's rim join it), whatever shines beside it
    depth = ndimage.maximum(
        ndimage.distance_transform_edt(zero), region, np.arange(1, n_regions + 1)
    )
    thin = np.r_[False, np.asarray(depth) <= (w + 0.5) * np.sqrt(2)]  # crossings too
    candidates &= thin[region]
    if not candidates.any():
        return dead
    # a line or a cross of lines (a gap: longer than two windows, at most twice its length
    # times its width) is left out of its own pixels' windows; the zeros of another region
    # count (random zeros of a dark, low-count area)
    area = np.bincount(region.ravel(), minlength=n_regions + 1)
    long = np.r_[
        False,
        [
            (side := max(b.stop - b.start for b in box)) >= 2 * (2 * w + 1)
            and area[i] <= 2 * side * (2 * depth[i - 1] + 1)
            for i, box in enumerate(ndimage.find_objects(region), start=1)
        ],
    ]
    values = np.pad(np.where(bad, np.nan, img), w, constant_values=np.nan)
    owner = np.pad(region, w, constant_values=0)
    win = (2 * w + 1, 2 * w + 1)
    v_windows = np.lib.stride_tricks.sliding_window_view(values, win)
    o_windows = np.lib.stride_tricks.sliding_window_view(owner, win)
    rows, cols = np.nonzero(candidates)
    level = np.empty(rows.size)
    for i0 in range(0, rows.size, _DEAD_CHUNK):
        r, c = rows[i0 : i0 + _DEAD_CHUNK], cols[i0 : i0 + _DEAD_CHUNK]
        v = v_windows[r, c].reshape(r.size, -1)
        own = (o_windows[r, c].reshape(r.size, -1) == region[r, c][:, None]) & long[
            region[r, c]
        ][:, None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows
            level[i0 : i0 + _DEAD_CHUNK] = np.nan_to_num(
                np.nanpercentile(np.where(own, np.nan, v), 25, axis=1)
            )
    dead[rows, cols] = level * n_positions >= DEAD_PIXEL_COUNTS
    return dead


#: Gaussian sigma (px) of :func:`fill_pixels`' weighted mean of the valid pixels around.
FILL_SIGMA = 1.0


def fill_pixels(img, bad):
    """``img`` with its ``bad`` pixels read from the valid ones around (a new array).

    The Gaussian-weighted mean of the valid pixels (normalized convolution,
    sigma :data:`FILL_SIGMA` px, :func:`scipy.ndimage.gaussian_filter`):
    across a line of dead pixels it interpolates between both sides, so a
    gap through the direct beam leaves its centre where it is (the nearest
    valid pixel, taken from one side, moves it towards that side). Where
    hardly any valid pixel lies within 3 sigma (inside a large masked
    region) the nearest valid pixel.

    Parameters
    ----------
    img : ndarray, shape (qy, qx), float64
    bad : ndarray of bool, shape (qy, qx)
        Pixels to fill; at least one pixel must be valid.

    Returns
    -------
    ndarray, shape (qy, qx), float64

    Examples
    --------
    >>> img = np.array([[4.0, 0.0, 0.0, 1.0]])  # a 2-px dead line between 4 and 1
    >>> fill_pixels(img, img == 0).round(2)
    array([[4.  , 3.45, 1.55, 1.  ]])
    """
    bad = np.asarray(bad, dtype=bool)
    if not bad.any():
        return np.array(img, dtype=np.float64)
    valid = (~bad).astype(np.float64)
    weight = ndimage.gaussian_filter(valid, FILL_SIGMA, mode="constant")
    total = ndimage.gaussian_filter(
        np.where(bad, 0.0, img), FILL_SIGMA, mode="constant"
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(bad, total / weight, img)
    far = bad & ~(weight > 1e-3)
    if far.any():  # inside a large masked region: the nearest valid pixel
        nearest = ndimage.distance_transform_edt(
            bad, return_distances=False, return_indices=True
        )
        out[far] = img[tuple(idx[far] for idx in nearest)]
    return out


def _beam_region(pattern, iterations, structure=None):
    """The direct beam's half-maximum region of a smoothed ``pattern``, dilated ``iterations`` times.

    The connected region about the brightest pixel at half the maximum or
    more (:func:`scipy.ndimage.binary_dilation` with ``structure``; default
    its cross).
    """
    lit, _ = ndimage.label(pattern >= 0.5 * pattern.max())
    return ndimage.binary_dilation(
        lit == lit.flat[np.argmax(pattern)], structure=structure, iterations=iterations
    )


def _hot_pixels(img, filled, bad, n_positions, poisson, reference=None, beside=None):
    """The hot pixels of :func:`defect_pixels`.

    The direct beam's region is read on ``filled``, the neighbours on
    ``reference`` (default ``filled``); pixels beside ``beside`` within the
    beam's region are no hot pixels (pieces of the beam cut by a gap).
    """
    ref = filled if reference is None else reference
    smooth = ndimage.median_filter(filled, size=3, mode="nearest")
    top = float(smooth.max())

    def above(reference):
        out = (img > HOT_PIXEL_RATIO * reference) & (img > HOT_PIXEL_FLOOR * top) & ~bad
        if poisson:
            n = float(n_positions)
            count, ncount = np.maximum(img, 0.0) * n, np.maximum(reference, 0.0) * n
            out &= count - HOT_PIXEL_RATIO * ncount > HOT_PIXEL_SIGNIFICANCE * np.sqrt(
                count + HOT_PIXEL_RATIO**2 * ncount
            )
        return out

    hot = above(_neighbours(ref, "max"))
    # touching hot pixels (a pair, a 2 x 2 block) are each other's brightest
    # neighbour: compared with the ring of pixels 2 away instead, as a group of
    # at most 2 x 2 pixels away from the direct beam (the brightest feature
    # that a 3 x 3 median keeps, to its half maximum)
    ring = np.ones((5, 5), dtype=bool)
    ring[1:4, 1:4] = False
    groups, n_groups = ndimage.label(
        above(ndimage.maximum_filter(ref, footprint=ring, mode="nearest")) & ~hot,
        structure=np.ones((3, 3), dtype=bool),
    )
    # the direct beam's half-maximum disk and 3 px around it
    beam = _beam_region(smooth, 3)
    for g, box in enumerate(ndimage.find_objects(groups), start=1):
        rows, cols = box
        member = groups[box] == g
        if (
            rows.stop - rows.start <= 2
            and cols.stop - cols.start <= 2
            and not beam[box][member].any()
        ):
            hot[box] |= member
    if beside is not None:
        # the beam's region read on the pattern as it is (the gap's zeros in): a pair of hot
        # pixels flanking a gap, filled across it, would outshine the beam on ``filled``
        square = np.ones((3, 3), dtype=bool)
        core = _beam_region(  # across a gap as wide as dead lines are found
            ndimage.median_filter(img, size=3, mode="nearest"),
            3 + 2 * DEAD_PIXEL_REACH,
            square,
        )
        hot &= ~(core & ndimage.binary_dilation(beside, structure=square))
    return hot


def beam_search_pixels(mask):
    """The detector pixels the direct-beam finders may use, given a ``signal_mask``.

    Masked pixels take no part, except masked *regions* that could hold the
    direct beam: a connected masked region containing a full 3 x 3 block
    (e.g. a disk over the direct beam, a common way of leaving it out of a
    fit). The beam is still found inside such a region from its data, which
    are valid counts (a region as compact as a disk: not a detector's gap,
    a line or a cross of lines). Isolated masked pixels, lines and small clusters (hot
    or dead pixels, bad columns) are always left out.

    Parameters
    ----------
    mask : ndarray of bool, shape (qy, qx)
        True = masked.

    Returns
    -------
    ndarray of bool, shape (qy, qx)
        True where the beam finders may read the pixel.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return ~mask
    labels, _ = ndimage.label(mask)
    core = ndimage.binary_erosion(mask, structure=np.ones((3, 3), dtype=bool))
    regions = np.unique(labels[core])
    regions = [r for r in regions[regions > 0] if _compact(labels == r)]
    return ~mask | np.isin(labels, regions)


def _compact(region):
    """Whether a masked region is disk-like (could cover the direct beam), not a line or a cross.

    Its bounding box no more than 3 times as long as wide, and at least half
    filled (a disk fills pi / 4 of its box, half a detector all of its box;
    a detector's gap, a line or a cross of lines, fills little of a square
    box or lies in a thin one).
    """
    rows, cols = np.nonzero(region)
    h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
    return max(h, w) <= 3 * min(h, w) and rows.size >= 0.5 * h * w


def _search_image(pattern, sigma, mask):
    """The pattern as the beam finders read it: ``(smoothed, hot)``.

    Missing, masked and hot pixels (:func:`defect_pixels`, returned) are read
    from the valid ones around (:func:`fill_pixels`), then the pattern is
    smoothed with a Gaussian of ``sigma`` px (none for 0).
    """
    img = np.asarray(pattern, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError("`pattern` must be a 2D array (qy, qx).")
    valid = np.isfinite(img)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != img.shape:
            raise ValueError(
                f"`mask` must have the pattern's shape {img.shape}, got {mask.shape}"
            )
        valid &= ~mask
    if not valid.any():
        raise ValueError(
            "`pattern` has no finite value."
            if mask is None
            else "`pattern` has no unmasked finite value."
        )
    hot = defect_pixels(img, mask=~valid)[0]
    valid &= ~hot
    filled = fill_pixels(img, ~valid) if not valid.all() else img
    smooth = ndimage.gaussian_filter(filled, sigma) if sigma else filled
    return smooth, hot


def _contrast(smooth):
    """:func:`beam_contrast` of a search image."""
    top, median = float(np.max(smooth)), float(np.median(smooth))
    if median <= 0:
        return np.inf if top > 0 else 1.0
    return top / median


def _disk(smooth):
    """:func:`locate_direct_beam` (steps 2-3) on a search image."""
    peak = np.unravel_index(np.argmax(smooth), smooth.shape)
    level = 0.5 * (np.median(smooth) + smooth[peak])
    labels, _ = ndimage.label(smooth >= level)
    region = labels == labels[peak]
    weights = np.where(region, smooth - level, 0.0)
    if weights.sum() > 0:
        cy, cx = ndimage.center_of_mass(weights)
    else:  # flat pattern: no disk stands out
        cy, cx = peak
    return Beam(float(cx), float(cy), float(np.sqrt(region.sum() / np.pi)))


def search_beam(pattern, mask=None, sigma=0.7):
    """:func:`locate_direct_beam`, :func:`beam_contrast` and the hot pixels, from one search.

    The pattern is read once (:func:`defect_pixels`, filled, smoothed) for
    the three.

    Returns
    -------
    beam : Beam
    contrast : float
    hot : ndarray of bool, shape (qy, qx)
    """
    smooth, hot = _search_image(pattern, sigma, mask)
    return _disk(smooth), _contrast(smooth), hot


#: Below this contrast (:func:`beam_contrast`) a mean pattern whose centre of
#: inversion symmetry reads nothing (a beam stop's shadow) has its beam hidden
#: (``signals._calibration.beam_and_contrast``). Measured: 337-19558 on the 56
#: multislice cases, the embedded default and the NIST scan (unbinned and binned
#: by 4); a beam stop 4 or 8 px wider than the beam (a disk, with or without an arm
#: to the edge) left 2.1-22.6 (``/work/notes/s29/hidden.py``, ``hidden2.py``). A
#: faint visible beam can fall below it (a 24-px detector filled by its halo: 14.9),
#: hence the second condition.
HIDDEN_BEAM_CONTRAST = 50.0


def beam_contrast(pattern, sigma=0.7, mask=None):
    """How far the brightest region of a pattern stands above its median.

    The largest value of the pattern as :func:`locate_direct_beam` reads it
    (defects and ``mask`` filled from around, smoothed by ``sigma`` px)
    over that pattern's median. A mean pattern's direct beam gives hundreds
    to thousands; below :data:`HIDDEN_BEAM_CONTRAST`, where the pattern reads
    nothing at its centre of inversion symmetry, the beam is hidden (a beam
    stop; so is one whose compact shadow :func:`dark_share` finds at any
    contrast) and :func:`hidden_beam` gives it.

    Parameters
    ----------
    pattern : array_like, shape (qy, qx)
    sigma : float, default 0.7
    mask : ndarray of bool, shape (qy, qx), optional
        Pixels that take no part (True).

    Returns
    -------
    float
        ``inf`` where the median is 0 and the maximum is not.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf._beam import beam_contrast
    >>> yy, xx = np.mgrid[:48, :48]
    >>> halo = np.exp(-((np.hypot(xx - 24, yy - 24) - 15) ** 2) / 8) + 0.1
    >>> round(beam_contrast(halo), 1)  # a halo alone: no beam
    9.1
    >>> bool(beam_contrast(halo + 500 * (np.hypot(xx - 24, yy - 24) <= 3)) > 50)
    True
    """
    return _contrast(_search_image(pattern, sigma, mask)[0])


#: The fewest pixel pairs, as a share of the most, that :func:`friedel_centre` compares
#: about a candidate centre (a centre near the detector's edge pairs few pixels).
FRIEDEL_MIN_OVERLAP = 0.2


def friedel_centre(pattern, valid=None):
    """Centre ``(x, y)`` (px) of a pattern's inversion symmetry (Friedel's law).

    A zero-order pattern is centrosymmetric about the direct beam,
    ``I(c + q) = I(c - q)``; its centre can be found where the beam itself
    is hidden (a beam stop). For every candidate ``s = 2 c`` Pearson's
    correlation of the pattern with its inversion about ``c``, over the
    pixel pairs ``(q, s - q)`` both valid (sums from four FFT convolutions,
    ``scipy.signal.fftconvolve``; a flat background, symmetric about every
    point, carries no weight), is largest at the centre; a parabola through
    its neighbours gives the sub-pixel position. Candidates that pair
    fewer than :data:`FRIEDEL_MIN_OVERLAP` of the most pixel pairs are left
    out. The reference is py4DSTEM's ``get_origin_friedel`` (also for beam
    stops).

    Parameters
    ----------
    pattern : array_like, shape (qy, qx)
        A mean pattern (non-negative).
    valid : ndarray of bool, shape (qy, qx), optional
        Pixels to compare (default: the finite ones).

    Returns
    -------
    tuple of float
        ``(x, y)`` in px, x the column.

    Raises
    ------
    ValueError
        If no pixel is valid.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf._beam import friedel_centre
    >>> yy, xx = np.mgrid[:48, :48]
    >>> halo = np.exp(-((np.hypot(xx - 21.3, yy - 25.6) - 12) ** 2) / 8)
    >>> stop = np.hypot(xx - 21.3, yy - 25.6) <= 6  # a beam stop over the beam
    >>> x, y = friedel_centre(halo * ~stop, valid=~stop)
    >>> round(x, 1), round(y, 1)
    (21.3, 25.6)
    """
    from scipy.signal import fftconvolve

    img = np.asarray(pattern, dtype=np.float64)
    ok = (
        np.isfinite(img)
        if valid is None
        else np.asarray(valid, bool) & np.isfinite(img)
    )
    if not ok.any():
        raise ValueError("`pattern` has no valid pixel to compare.")
    f = np.where(ok, img, 0.0)
    v = ok.astype(np.float64)
    # sums over the pixel pairs (q, s - q) both valid, for every s: their count, the
    # pattern's sum and sum of squares over them (the same for q and s - q), and the
    # products
    pairs = np.rint(fftconvolve(v, v, mode="full"))
    sum_f = fftconvolve(f, v, mode="full")
    sum_ff = fftconvolve(f * f, v, mode="full")
    sum_fg = fftconvolve(f, f, mode="full")
    n = np.maximum(pairs, 1.0)
    var = sum_ff - sum_f**2 / n
    keep = (pairs >= FRIEDEL_MIN_OVERLAP * pairs.max()) & (var > 1e-9 * var.max())
    # Pearson's correlation of the pattern with its inversion about s / 2
    score = np.where(keep, (sum_fg - sum_f**2 / n) / np.where(keep, var, 1.0), -np.inf)
    sy, sx = np.unravel_index(np.argmax(score), score.shape)

    def vertex(a, b, c):
        curve = a - 2 * b + c
        if not (np.isfinite(curve) and curve < 0):
            return 0.0
        return float(np.clip(0.5 * (a - c) / curve, -0.5, 0.5))

    ny, nx = score.shape
    dy = vertex(*score[sy - 1 : sy + 2, sx]) if 0 < sy < ny - 1 else 0.0
    dx = vertex(*score[sy, sx - 1 : sx + 2]) if 0 < sx < nx - 1 else 0.0
    return float(sx + dx) / 2.0, float(sy + dy) / 2.0


#: A pixel of a mean pattern below this fraction of the pattern's median reads nothing
#: (a beam stop's shadow, with stray counts or a stop that passes a little): left out
#: of :func:`friedel_centre` and measured by :func:`hidden_beam`. A review measured it
#: on the 56 multislice cases: stray counts of 1e-4 to 1e-2 per pixel and shadows at
#: 0.1-1 % of the median were found hidden in 56 / 46 / 10 and 56 of 56 (exact zeros
#: only: 47 / 15 / 0 and 20 of 56), no visible beam called hidden
#: (``/work/notes/s29/review29b``).
SHADOW_LEVEL = 0.05


def _reading(img, mask=None):
    """The valid pixels of ``img`` that read something (>= :data:`SHADOW_LEVEL` x median)."""
    valid = np.isfinite(img)
    if mask is not None:
        valid &= ~np.asarray(mask, dtype=bool)
    level = (
        SHADOW_LEVEL * max(float(np.median(img[valid])), 0.0) if valid.any() else 0.0
    )
    return valid & (np.nan_to_num(img) > level)


#: Radius (px) about a pattern's centre of inversion symmetry, and the share of its
#: pixels that must read nothing, for :func:`dark_share` to call the beam hidden
#: whatever the contrast. Measured (``/work/notes/s29/compact_rule.py``): 0 on the 56
#: multislice cases, 0.31-0.75 with a 1-3 px cross of dead lines through the beam, 1.00
#: under stops 4 px wider than the beam (56 of 56; 1 px wider: 44 of 56 at >= 0.9) and
#: on the NIST scan under stops 2-8 px wider than its beam (contrast 180-716).
SHADOW_TEST_RADIUS = 4.0
SHADOW_SHARE = 0.9


def dark_share(pattern, centre, mask=None, hot=None):
    """Share of the pixels within :data:`SHADOW_TEST_RADIUS` px of ``centre`` that read nothing.

    Reading nothing: masked, not finite, or below :data:`SHADOW_LEVEL` of the
    pattern's median; ``hot`` pixels (left out of ``mask``) count as read.

    Parameters
    ----------
    pattern : array_like, shape (qy, qx)
    centre : tuple of float
        ``(x, y)`` px.
    mask, hot : ndarray of bool, shape (qy, qx), optional

    Returns
    -------
    float
        In [0, 1].
    """
    img = np.asarray(pattern, dtype=np.float64)
    read = _reading(img, mask)
    if hot is not None:
        read |= np.asarray(hot, dtype=bool)
    yy, xx = np.indices(img.shape)
    disk = np.hypot(xx - centre[0], yy - centre[1]) <= SHADOW_TEST_RADIUS
    return float(np.mean(~read[disk])) if disk.any() else 0.0


def hidden_beam(pattern, mask=None):
    """The direct beam of a pattern whose beam is hidden (a beam stop): ``Beam``.

    Centre from :func:`friedel_centre` on the pattern's valid pixels that
    read something (at least :data:`SHADOW_LEVEL` of the pattern's median;
    the others are shadowed or dead); radius: the distance from it to the
    nearest of those pixels (the shadow's radius; 0 where the centre pixel
    itself reads something).

    Parameters
    ----------
    pattern : array_like, shape (qy, qx)
    mask : ndarray of bool, shape (qy, qx), optional
        Pixels that take no part (True).

    Returns
    -------
    Beam
    """
    img = np.asarray(pattern, dtype=np.float64)
    live = _reading(img, mask)
    x, y = friedel_centre(img, live)
    yy, xx = np.indices(img.shape)
    iy, ix = int(round(y)), int(round(x))
    inside = 0 <= iy < img.shape[0] and 0 <= ix < img.shape[1] and live[iy, ix]
    radius = 0.0 if inside else float(np.min(np.hypot(xx[live] - x, yy[live] - y)))
    return Beam(float(x), float(y), radius)


def locate_direct_beam(pattern, sigma=0.7, mask=None):
    """Centre and radius (px) of the direct-beam disk of a pattern.

    1. Missing (NaN, infinite) pixels, the pixels of ``mask`` and hot pixels
       (:func:`defect_pixels`) are read from the valid pixels around them
       (:func:`fill_pixels`: across a dead line, from both sides), and the
       pattern is smoothed with a Gaussian of ``sigma`` px.
    2. The disk is the connected region around the brightest pixel that is
       brighter than halfway between the pattern's median and that maximum
       (a half-maximum contour, so it adapts to any disk size); its radius is
       ``sqrt(area / pi)``. Hot pixels are left out in step 1: a single pixel
       far brighter than the beam (10 x) would otherwise still outshine it
       after the smoothing (sigma 0.7 px keeps about a third of a pixel's
       value at its place). A 3 x 3 median filter is not used: it erases a
       sharp beam (radius ~1 px) and lets broader Bragg disks win.
    3. The centre is the centre of mass of the intensity *above that level*
       inside the region: the weights fall continuously to zero at the
       region's edge, so neither the pixelated edge nor the background biases
       it (sub-0.1 px on Gaussian beams and on flat disks of any size).

    Parameters
    ----------
    pattern : array_like, shape (qy, qx)
        A representative pattern: the mean pattern, or the intensity-weighted
        sum of the NMF factors.
    sigma : float, default 0.7
        Gaussian smoothing (px) before the search; 0 for none.
    mask : ndarray of bool, shape (qy, qx), optional
        Pixels that take no part (True), e.g. ``signal_mask`` through
        :func:`beam_search_pixels`.

    Returns
    -------
    Beam
        ``(x, y, radius)`` in px; ``x`` is the column, ``y`` the row.

    Raises
    ------
    ValueError
        If the pattern is not 2D or has no finite value.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf._beam import locate_direct_beam
    >>> yy, xx = np.mgrid[:64, :64]
    >>> disk = (np.hypot(xx - 30.0, yy - 40.0) <= 8).astype(float)
    >>> beam = locate_direct_beam(disk + 0.01)
    >>> round(beam.x, 1), round(beam.y, 1), round(beam.radius, 1)
    (30.0, 40.0, 7.9)
    """
    return _disk(_search_image(pattern, sigma, mask)[0])


#: Step (px) of the grid of beam shifts on which :func:`positions_across_dead_pixels`
#: measures the centre-of-mass response, and the most grid points along an axis.
_RESPONSE_STEP = 0.2
_RESPONSE_POINTS = 41


def _centres(stack, valid):
    """:func:`~hyperspy_cnmf.nmf._kernels.block_beam_centres` of a stack ``(n, qy, qx)``."""
    from hyperspy_cnmf.nmf._kernels import block_beam_centres

    n, qy, qx = stack.shape
    out = np.empty((n, 2))
    block_beam_centres(
        np.ascontiguousarray(stack.reshape(n, -1)),
        qy,
        qx,
        np.ones(n, dtype=bool),
        np.asarray(valid, dtype=bool).ravel(),
        out,
    )
    return out


def positions_across_dead_pixels(positions, mean_pattern, dead, valid=None, hot=None):
    """Per-position beam centres measured with dead pixels (detector gaps) near the beam, unbiased.

    The per-position centre of mass
    (:func:`~hyperspy_cnmf.nmf._kernels.block_beam_centres`) reads a gap's
    zeros: a gap through the beam cuts its disk, and the part left moves
    away from the gap as the beam crosses it, so that the beam's motion
    (descan) reads too large (a 2-px cross through the 3.4-px beam of the
    descan multislice case: 1.9 times the true motion, rms error 0.62 px
    against 0.07 px without the gap). This maps every measured centre back
    through the measurement's response: the mean pattern, its dead pixels
    filled (:func:`fill_pixels`), is moved (``scipy.ndimage.shift``,
    bilinear) over a grid of shifts (:data:`_RESPONSE_STEP` px, at most
    :data:`_RESPONSE_POINTS` per axis) covering the measured centres, its
    dead pixels set to 0 and its hot ones left in place, and measured as
    the data were; the measured centres are interpolated back to the true
    ones (``scipy.interpolate.LinearNDInterpolator``; nearest grid point
    beyond it). The mean pattern is the beam blurred by its own motion: the
    response is measured twice, the second time on the mean pattern
    sharpened by the centres the first gave (:func:`_sharpened`). On that
    case the rms error falls to 0.22 px (0.25 px without the sharpening;
    0.21 px noise-free: the beam disk's own intensity varies with the grains
    under it), the motion (:func:`beam_motion`) reads 1.29 / 0.90 px for
    the true 1.33 / 0.67 (2.66 / 1.61 uncorrected).

    Parameters
    ----------
    positions : ndarray, shape (n, 2), float64
        Measured ``(x, y)`` centres, px (NaN kept).
    mean_pattern : ndarray, shape (qy, qx)
        The mean pattern of the same data.
    dead : ndarray of bool, shape (qy, qx)
        Dead pixels (:func:`defect_pixels`); pixels whose mean is 0 are
        read as zero too.
    valid : ndarray of bool, shape (qy, qx), optional
        The pixels the centres were measured on (default all); the others
        (a masked gap) bias the centres as dead ones do.
    hot : ndarray of bool, shape (qy, qx), optional
        Hot pixels left in the data: they stay where they are while the
        beam moves.

    Returns
    -------
    ndarray, shape (n, 2), float64
        A new array; ``positions`` itself (not a copy) when no dead or
        masked pixel lies within reach of the beam's measurement (then
        nothing is computed).

    Raises
    ------
    ValueError
        If ``dead`` and ``mean_pattern`` differ in shape.

    Notes
    -----
    Limits (measured by a review, ``/work/notes/s29/review29``): crosses of
    4 px or more through a 3-4 px beam leave too little of it to measure
    (rms 4.5-8 px before and after); a gap 4 px beside the beam reads
    slightly worse after (0.12-0.47 px from 0.05-0.24); a descan of +-5 px
    gains nothing.
    """
    pos = np.asarray(positions, dtype=np.float64)
    mean = np.asarray(mean_pattern, dtype=np.float64)
    dead = np.asarray(dead, dtype=bool)
    if dead.shape != mean.shape:
        raise ValueError(
            f"`dead` must have the mean pattern's shape {mean.shape}, got {dead.shape}"
        )
    valid = np.ones(dead.shape, bool) if valid is None else np.asarray(valid, bool)
    hot = np.zeros(dead.shape, bool) if hot is None else np.asarray(hot, bool)
    # read as zero in every pattern: dead pixels, and any that the scan's mean finds
    # zero (a gap only partly found dead on a short scan); not read: masked pixels
    zero = (dead | (np.nan_to_num(mean) == 0)) & np.isfinite(mean)
    unread = zero | ~valid | ~np.isfinite(mean)
    ok = np.all(np.isfinite(pos), axis=1)
    if not np.any(zero | ~valid) or not ok.any() or (unread | hot).all():
        return positions
    from hyperspy_cnmf.nmf._kernels import BEAM_DISK_MARGIN

    template = fill_pixels(np.nan_to_num(mean), unread)
    centre = np.median(pos[ok], axis=0)
    spread = float(np.percentile(np.abs(pos[ok] - centre), 99.5)) + 0.5
    radius = np.sqrt(np.sum(template >= 0.5 * np.max(template)) / np.pi)
    reach = spread + radius + BEAM_DISK_MARGIN + 1.0
    yy, xx = np.indices(dead.shape)
    dist = np.hypot(xx - centre[0], yy - centre[1])
    near = dist <= reach
    # "hot" pixels where the beam moves are pieces of it beside a gap not wholly
    # found dead (a short scan): they move with it
    hot = hot & ~unread & (dist > radius + spread + 1.0)
    if hot.any():
        template = fill_pixels(np.nan_to_num(mean), unread | hot)
    if not np.any((zero | ~valid) & near):
        return positions
    # the beam's window only (a large detector's mean pattern is not moved whole)
    h = int(np.ceil(reach)) + 2
    y0, x0 = (max(0, int(np.floor(c)) - h) for c in centre[::-1])
    y1, x1 = (min(n, int(np.ceil(c)) + h + 1) for c, n in zip(centre[::-1], dead.shape))
    win = (slice(y0, y1), slice(x0, x1))
    corner = np.array([x0, y0], dtype=np.float64)
    template, valid = template[win], valid[win]
    fixed = (zero | hot)[win]
    fixed_values = np.where(hot, np.nan_to_num(mean), 0.0)[win][fixed]
    out = np.full_like(pos, np.nan)
    args = (valid, fixed, fixed_values, corner, centre, spread)
    out[ok] = _through_response(pos[ok], template, *args)
    # the mean pattern is the beam blurred by its own motion: sharpened by the
    # distribution of the centres so found, the response is measured again
    sharp = _sharpened(template, out[ok] - corner)
    out[ok] = _through_response(pos[ok], sharp, *args)
    return out


def _through_response(
    pos, template, valid, fixed, fixed_values, corner, centre, spread
):
    """Measured centres ``pos`` (m, 2) mapped back through the response of ``template``.

    ``template`` (a window of the detector whose corner pixel is ``corner``,
    ``(x, y)``) is moved over the grid of shifts within ``spread`` px of
    ``centre``; the ``fixed`` pixels, which do not move with the beam (dead:
    0; hot: their own value), keep ``fixed_values``; it is measured on
    ``valid``.
    """
    from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

    step = max(_RESPONSE_STEP, 2 * spread / (_RESPONSE_POINTS - 1))
    t = np.arange(-spread, spread + 1e-9, step)
    shifts = np.stack(np.meshgrid(t, t), axis=-1).reshape(-1, 2)  # (dx, dy)
    # the template's own centre, on every pixel (its unread ones are filled)
    origin = centre - corner - _centres(template[None], np.ones_like(valid))[0]
    moved = np.stack(
        [
            ndimage.shift(
                template, (origin[1] + dy, origin[0] + dx), order=1, mode="nearest"
            )
            for dx, dy in shifts
        ]
    )
    moved[:, fixed] = fixed_values
    measured = _centres(moved, valid) + corner
    good = np.all(np.isfinite(measured), axis=1)
    true = centre + shifts[good]
    out = LinearNDInterpolator(measured[good], true)(pos)
    beyond = ~np.all(np.isfinite(out), axis=1)
    if beyond.any():
        out[beyond] = NearestNDInterpolator(measured[good], true)(pos[beyond])
    return out


#: Richardson-Lucy iterations of :func:`_sharpened`.
_SHARPEN_ITERATIONS = 30


def _sharpened(image, centres):
    """``image`` deconvolved by the distribution of ``centres`` (m, 2) ``(x, y)`` px (a new array).

    Richardson-Lucy (:data:`_SHARPEN_ITERATIONS` iterations,
    ``scipy.signal.fftconvolve``) with the centres' histogram about their
    median (bilinear weights) as the blur: the beam of one pattern from the
    mean of patterns whose beams moved.
    """
    from scipy.signal import fftconvolve

    c = np.median(centres, axis=0)
    h = int(np.ceil(np.max(np.abs(centres - c)))) + 1
    d = centres - c + h
    x0, y0 = np.floor(d).astype(int).T
    fx, fy = (d - np.floor(d)).T
    psf = np.zeros((2 * h + 2, 2 * h + 2))
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            np.add.at(psf, (y0 + dy, x0 + dx), wy * wx)
    psf = psf[: 2 * h + 1, : 2 * h + 1] + 0.0  # the centre at [h, h]
    if psf.sum() <= 0 or psf.size == 1:
        return image
    psf /= psf.sum()
    flipped = psf[::-1, ::-1]
    image = np.clip(image, 0.0, None)
    floor = 1e-12 * max(float(image.max()), 1e-300)
    out = image.copy()
    for _ in range(_SHARPEN_ITERATIONS):
        blurred = fftconvolve(out, psf, mode="same")
        out = out * fftconvolve(
            image / np.maximum(blurred, floor), flipped, mode="same"
        )
        out = np.clip(out, 0.0, None)
    return out


#: Side (scan positions) of the mean filter applied to the measured positions
#: before :func:`beam_motion` takes their range: it averages out the
#: per-pattern counting noise (0.05 px rms per coordinate at 1500 counts per
#: pattern on ``zrcual_3phase_descan_32x32_40x40_seed202``) and keeps the
#: smooth drift.
_MOTION_SMOOTH = 3


#: A measured centre farther than this many robust standard deviations from the median of its
#: 3 x 3 neighbourhood is a failed measurement (at very low dose the brightest region of a
#: pattern can be a few stray counts, px away from the beam) and is left out of the motion.
_MOTION_OUTLIER = 5.0


def _position_maps(positions, nav_shape):
    """The ``(ny, nx, 2)`` positions with failed measurements (outliers) set to NaN."""
    pos = np.array(positions, dtype=np.float64)
    if nav_shape is not None:
        pos = pos.reshape(tuple(nav_shape) + (2,))
    if pos.ndim == 2:
        pos = pos[None]
    for c in range(2):
        v = pos[..., c]
        ok = np.isfinite(v)
        if ok.sum() < 3:
            continue
        size = [min(_MOTION_SMOOTH, n) for n in v.shape]
        filled = np.where(ok, v, np.median(v[ok]))
        resid = (v - ndimage.median_filter(filled, size, mode="nearest"))[ok]
        scale = 1.4826 * np.median(np.abs(resid - np.median(resid)))
        if scale > 0:
            bad = np.zeros_like(ok)
            bad[ok] = np.abs(resid) > _MOTION_OUTLIER * scale
            v[bad] = np.nan
    return pos


def _smoothed(v):
    """The :data:`_MOTION_SMOOTH` square mean of a map (NaN left out) and its finite count."""
    ok = np.isfinite(v)
    size = [min(_MOTION_SMOOTH, n) for n in v.shape]
    num = ndimage.uniform_filter(np.where(ok, v, 0.0), size, mode="nearest")
    den = ndimage.uniform_filter(ok.astype(float), size, mode="nearest")
    return (num / np.where(den > 0, den, 1.0))[ok], den[ok] * np.prod(size)


def beam_motion(positions, nav_shape=None):
    """How far the direct beam moves over the scan, robust to counting noise.

    Rule: failed measurements (a centre more than :data:`_MOTION_OUTLIER`
    robust standard deviations from the median of its 3 x 3 neighbourhood)
    are left out; each coordinate's map of positions is smoothed by a
    :data:`_MOTION_SMOOTH` x :data:`_MOTION_SMOOTH` mean over the scan (NaN
    positions left out), and the motion is the range between its 1st and 99th
    percentiles. The mean filter divides the per-pattern noise by 3 (on the
    no-descan abTEM files the motion reads 0.05-0.1 px, on the descan file
    1.3 px in x and 0.6 px in y for a true 1.33 and 0.67 px). Whether the
    motion stands out of the noise: :func:`beam_drift_t`.

    Parameters
    ----------
    positions : array_like, shape (ny, nx, 2) or (ny * nx, 2)
        ``(x, y)`` beam centres in px (NaN allowed).
    nav_shape : tuple (ny, nx) or None
        Scan shape in array order, needed for flat positions.

    Returns
    -------
    ndarray, shape (2,)
        Motion along x and y in px (0 when fewer than two positions are
        finite).
    """
    pos = _position_maps(positions, nav_shape)
    out = np.zeros(2)
    for c in range(2):
        if np.isfinite(pos[..., c]).sum() < 2:
            continue
        smooth, _ = _smoothed(pos[..., c])
        lo, hi = np.percentile(smooth, [1, 99])
        out[c] = hi - lo
    return out


#: A motion is a descan only if the plane fitted to the centres (the descan model of
#: :func:`fit_plane`) has a slope this many standard errors from 0 (:func:`beam_drift_t`).
BEAM_MOTION_SIGNIFICANCE = 5.0
#: The fewest finite (not failed) centres that can show a drift: a smaller scan or crop (3 x 3)
#: cannot tell a drift from counting noise.
_MOTION_MIN_POSITIONS = 16


def beam_drift_t(positions, nav_shape=None):
    """How significant the beam's drift is against the centres' own noise: a t statistic per coordinate.

    Each coordinate's centres (failed measurements left out as in
    :func:`beam_motion`) are fitted by a least-squares plane ``a + b ix +
    c iy`` over the scan (the descan model, :func:`fit_plane`); the standard
    errors of the slopes come from the scatter of the centres about the
    plane, i.e. the centroids' own uncertainty (counting noise: ``R / (2
    sqrt(N))`` for a disk of radius ``R`` and ``N`` counts, plus any failed
    fit at very low dose), measured on the data, so the rule is free of the
    data's scale. The statistic is the larger ``|slope| / SE(slope)`` of the
    two scan axes.

    Parameters
    ----------
    positions : array_like, shape (ny, nx, 2) or (ny * nx, 2)
        ``(x, y)`` beam centres in px (NaN allowed).
    nav_shape : tuple (ny, nx) or None
        Scan shape in array order, needed for flat positions.

    Returns
    -------
    ndarray, shape (2,)
        Along x and y; 0 with fewer than :data:`_MOTION_MIN_POSITIONS`
        finite centres (no drift can be shown), infinite for an exact plane
        with a slope (noise-free data).

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf._beam import beam_drift_t
    >>> rng = np.random.default_rng(0)
    >>> iy, ix = np.mgrid[:32, :32]
    >>> still = 20 + rng.normal(0, 0.3, (32, 32, 2))  # 0.3 px counting noise
    >>> bool(np.all(beam_drift_t(still) < 5))
    True
    >>> drift = still + np.stack([0.03 * ix, 0 * iy], axis=-1)  # 1 px over the scan in x
    >>> bool(beam_drift_t(drift)[0] > 5)
    True
    """
    pos = _position_maps(positions, nav_shape)
    ny, nx = pos.shape[:2]
    iy, ix = np.mgrid[:ny, :nx]
    columns = [np.ones(ny * nx)] + [
        a.ravel().astype(float) for a, n in ((ix, nx), (iy, ny)) if n > 1
    ]
    A = np.stack(columns, axis=1)
    out = np.zeros(2)
    for c in range(2):
        v = pos[..., c].ravel()
        ok = np.isfinite(v)
        if ok.sum() < max(_MOTION_MIN_POSITIONS, A.shape[1] + 1):
            continue
        coef, *_ = np.linalg.lstsq(A[ok], v[ok], rcond=None)
        resid = v[ok] - A[ok] @ coef
        s2 = float(resid @ resid) / (ok.sum() - A.shape[1])
        slopes = np.abs(coef[1:])
        if s2 <= 1e-18:  # an exact plane (noise-free centres): 1e-9 px rms
            out[c] = np.inf if np.any(slopes > 1e-12) else 0.0
            continue
        se = np.sqrt(s2 * np.diag(np.linalg.inv(A[ok].T @ A[ok]))[1:])
        out[c] = float(np.max(slopes / se))
    return out


def fit_plane(positions):
    """Least-squares plane ``a + b ix + c iy`` of each coordinate over the scan.

    The usual model of descan, as py4DSTEM's ``fit_origin`` (``fitfunction=
    "plane"``); NaN positions are left out of the fit.

    Parameters
    ----------
    positions : array_like, shape (ny, nx, 2)

    Returns
    -------
    ndarray, shape (ny, nx, 2)
        The fitted positions (finite everywhere).

    Raises
    ------
    ValueError
        If fewer than three positions are finite.
    """
    pos = np.asarray(positions, dtype=np.float64)
    ny, nx = pos.shape[:2]
    iy, ix = np.mgrid[:ny, :nx]
    A = np.stack([np.ones(ny * nx), ix.ravel(), iy.ravel()], axis=1)
    out = np.empty_like(pos)
    for c in range(2):
        v = pos[..., c].ravel()
        ok = np.isfinite(v)
        if ok.sum() < 3:
            raise ValueError("a plane fit needs at least three finite beam positions")
        coef = np.linalg.lstsq(A[ok], v[ok], rcond=None)[0]
        out[..., c] = (A @ coef).reshape(ny, nx)
    return out
