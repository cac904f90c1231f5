"""The direct beam's drift over the scan (descan): measure it and correct it.

On real scans the direct beam carries most of the counts and moves with the
probe position (descan: imperfect de-scan coils, a tilted specimen). A
decomposition then spends components on the moving beam, and a polar
transform about one fixed centre smears every pattern's rings.

- :func:`direct_beam_positions` / ``STEM4D.get_direct_beam_position``: the
  beam centre ``(x, y)`` in px of every pattern, in one read of the data
  (:func:`hyperspy_cnmf.nmf._kernels.block_beam_centres`, the same kernel
  the decomposition runs in its statistics read);
- :func:`beam_motion` and :func:`warn_if_beam_moves`: how far the beam moves
  (the rule of the decomposition's warning);
- ``STEM4D.center_direct_beam``: a new signal with every pattern shifted
  (sub-pixel) so that the beam sits at one position.

The names follow pyxem (``get_direct_beam_position``, ``center_direct_beam``);
the plane fit of the measured positions follows py4DSTEM's ``fit_origin``.
"""

import warnings

import numpy as np

from hyperspy_cnmf._beam import (
    BEAM_MOTION_SIGNIFICANCE,
    _centres,
    beam_drift_t,
    beam_motion,
    defect_pixels,
    fit_plane,
    positions_across_dead_pixels,
)
from hyperspy_cnmf._warnings import warn
from hyperspy_cnmf.signals._axes import calibrated_origin_px, check_4d
from hyperspy_cnmf.signals._calibration import beam_and_contrast, hidden_beam_text

__all__ = [
    "BEAM_MOTION_LIMIT",
    "beam_motion",
    "warn_if_beam_moves",
    "direct_beam_positions",
    "fit_plane",
    "get_direct_beam_position",
    "center_direct_beam",
]

#: Largest beam motion (px, see :func:`beam_motion`) accepted without a
#: warning before a decomposition.
BEAM_MOTION_LIMIT = 0.5


def _positions_rows(X, sig_shape):
    """Beam centres of the rows of an unfolded (n, ny * nx) block: (n, 2) x-first."""
    X = np.asarray(X)
    if not (np.issubdtype(X.dtype, np.floating) and X.dtype.itemsize >= 4):
        X = X.astype(np.float32)
    ny, nx = (int(n) for n in sig_shape)
    return _centres(X.reshape(-1, ny, nx), np.ones((ny, nx), dtype=bool))


def _positions_chunk(block):
    """Beam centres of a (..., ky, kx) chunk: (..., 2) x-first."""
    sig = block.shape[-2:]
    return _positions_rows(block.reshape(-1, sig[0] * sig[1]), sig).reshape(
        block.shape[:-2] + (2,)
    )


def direct_beam_positions(signal):
    """Direct-beam centre of every pattern of a 4D-STEM signal, in one read.

    The centre of mass of the pattern's brightest region, refined in a disk
    about it (:func:`hyperspy_cnmf.nmf._kernels.block_beam_centres`); dead
    pixels near the beam (a detector's gaps, found on the mean pattern by
    :func:`hyperspy_cnmf._beam.defect_pixels`) have their bias removed
    (:func:`hyperspy_cnmf._beam.positions_across_dead_pixels`), as in the
    decomposition. A lazy signal is read once, chunk by chunk (never loaded
    whole).

    Parameters
    ----------
    signal : STEM4D or LazySTEM4D
        Two navigation and two signal axes.

    Returns
    -------
    ndarray, shape (ny, nx, 2), float64
        ``(x, y)`` (detector column, row) in px for every scan position in
        array order (row ``iy``, column ``ix``); NaN where a pattern has no
        positive value.

    Raises
    ------
    ValueError
        If the signal is not 2+2 dimensional.
    """
    check_4d(signal, "the direct-beam position")
    data = signal.data
    if np.iscomplexobj(data):
        raise TypeError("the direct-beam position needs real data, got complex data")
    ny, nx, ky, kx = data.shape
    if signal._lazy:
        import dask
        import dask.array as da

        nd = data.ndim
        data = data.rechunk(data.chunks[:-2] + (-1, -1))
        pos = da.map_blocks(
            _positions_chunk,
            data,
            drop_axis=[nd - 1],
            chunks=data.chunks[:-2] + ((2,),),
            dtype=np.float64,
        )
        # one read: the mean pattern (for the dead pixels) beside the centres
        pos, mean = dask.compute(pos, da.nanmean(data.astype(np.float64), axis=(0, 1)))
        pos = np.asarray(pos)
    else:
        pos = _positions_rows(data.reshape(ny * nx, ky * kx), (ky, kx))
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN pixel: NaN
            mean = np.nanmean(data, axis=(0, 1), dtype=np.float64)
    mean = np.asarray(mean)
    finite = np.isfinite(mean)
    if finite.any():  # NaN pixels (NaN in every pattern) take no part
        hot, dead = defect_pixels(mean, ny * nx, mask=~finite, poisson=True)
        beam, contrast, hidden = beam_and_contrast(mean, mask=~finite, dead=dead)
        if hidden:
            warn(
                hidden_beam_text(beam, contrast)
                + ", but no pattern's own centre can be measured; the positions are NaN",
                UserWarning,
            )
            return np.full((ny, nx, 2), np.nan)
        pos = positions_across_dead_pixels(
            pos.reshape(-1, 2), mean, dead, valid=finite, hot=hot
        )
    return np.asarray(pos).reshape(ny, nx, 2)


def warn_if_beam_moves(positions, nav_shape=None, limit=BEAM_MOTION_LIMIT):
    """Warn (``UserWarning``) when the beam moves significantly more than ``limit`` px; returns the motion.

    The rule: along x or y, the motion (:func:`beam_motion`) exceeds
    ``limit`` px **and** is significant: the plane fitted to the centres
    has a slope more than
    :data:`~hyperspy_cnmf._beam.BEAM_MOTION_SIGNIFICANCE` (5) standard
    errors from 0, the errors measured from the centres' own scatter (their
    counting noise; :func:`~hyperspy_cnmf._beam.beam_drift_t`), with at least
    16 measured centres. So counting noise at low dose (20 counts per
    pattern) or on a small crop (3 x 3 positions) is no descan, and a beam
    that moves 1 px on a 1500-count scan is. The
    warning names the fix: ``s.center_direct_beam()`` (this package) or
    pyxem's ``center_direct_beam``.
    """
    if positions is None:
        return np.zeros(2)
    motion = beam_motion(positions, nav_shape)
    t = beam_drift_t(positions, nav_shape)
    moves = (motion > limit) & (t > BEAM_MOTION_SIGNIFICANCE)
    if moves.any():
        warn(
            f"the direct beam moves over the scan by {motion[0]:.2f} px in x and {motion[1]:.2f} px in y "
            f"(1st-99th percentile of the 3x3-smoothed measured centres; limit {limit:g} px), "
            f"a drift of {t[0]:.3g} and {t[1]:.3g} standard errors of the centres (significance "
            f"limit {BEAM_MOTION_SIGNIFICANCE:g}): descan. "
            "Components and clusters will follow the moving beam; centre the patterns first with "
            "s = s.center_direct_beam() (or pyxem's center_direct_beam).",
            UserWarning,
        )
    return motion


def _position_signal(signal, pos):
    """A (ny, nx | 2) signal of positions with the scan's navigation axes."""
    from hyperspy.signals import Signal1D

    out = Signal1D(pos)
    for src, dst in zip(
        signal.axes_manager.navigation_axes, out.axes_manager.navigation_axes
    ):
        dst.update_from(src, ("name", "units", "scale", "offset"))
    sig = out.axes_manager.signal_axes[0]
    sig.name = "beam position (x, y)"
    sig.units = "px"
    out.metadata.General.title = "Direct beam position (x, y) px"
    return out


def get_direct_beam_position(self, method="com"):
    """Direct-beam centre of every pattern, in one pass over the data.

    Named after pyxem's ``get_direct_beam_position``; unlike pyxem it returns
    the positions themselves, not the shifts to the detector's middle
    (pyxem's ``BeamShift``, ``signal_shape / 2 - position``, which
    ``center_direct_beam(shifts=...)`` also accepts).

    Parameters
    ----------
    method : {"com"}, default "com"
        The centre of mass of the pattern's brightest region (pixels above
        half the pattern's maximum, weighted by their excess), refined twice
        by the plain centre of mass in the disk of that region's radius plus
        2 px (:func:`hyperspy_cnmf.nmf._kernels.block_beam_centres`); all
        finite pixels are used, and the bias of dead pixels near the beam
        (a detector's gaps) is removed
        (:func:`hyperspy_cnmf._beam.positions_across_dead_pixels`).

    Returns
    -------
    hyperspy.signals.Signal1D
        Navigation axes those of the scan, one signal axis of size 2:
        ``(x, y)`` (detector column, row) in px, NaN where a pattern has no
        positive value. Always in memory (small); a lazy signal is read once,
        chunk by chunk.

    Raises
    ------
    ValueError
        If the signal is not 2+2 dimensional or ``method`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> import hyperspy.api as hs
    >>> yy, xx = np.mgrid[:32, :32]
    >>> disk = (np.hypot(xx - 15.3, yy - 16.0) <= 4).astype(float)
    >>> s = hs.signals.Signal2D(np.tile(disk, (2, 3, 1, 1)) + 0.01)
    >>> s.set_signal_type("4D-STEM")
    >>> pos = s.get_direct_beam_position()
    >>> pos.data.shape
    (2, 3, 2)
    >>> np.round(pos.data[0, 0], 1)
    array([15.3, 16. ])
    """
    if method != "com":
        raise ValueError(f"unknown method {method!r}; the only method is 'com'")
    return _position_signal(self, direct_beam_positions(self))


def _shifted_dtype(dtype):
    """float64 stays, every other dtype is shifted as float32."""
    return np.dtype(np.float64 if np.dtype(dtype) == np.float64 else np.float32)


def _shift_pattern(image, shift, interpolation_order, fill_value, clip):
    from hyperspy._signals.signal2d import shift_image

    image = image.astype(
        _shifted_dtype(image.dtype), copy=False
    )  # interpolated counts are not integers
    out = shift_image(
        image,
        shift=shift,
        interpolation_order=interpolation_order,
        fill_value=fill_value,
    )
    if clip:
        out = np.clip(out, 0, None)
    return out


def _as_positions(value, nav_shape, name):
    data = getattr(value, "data", value)
    if hasattr(data, "compute"):
        data = data.compute()
    arr = np.asarray(data, dtype=np.float64)
    if arr.shape == (2,):
        arr = np.broadcast_to(arr, tuple(nav_shape) + (2,))
    if arr.shape != tuple(nav_shape) + (2,):
        raise ValueError(
            f"{name} must have the shape {tuple(nav_shape) + (2,)} (scan rows, scan columns, "
            f"(x, y)) or (2,), got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _calibrated_origin(signal):
    """The pixel ``(x, y)`` where both signal axes read 0 (their calibrated origin)."""
    origin = np.array(calibrated_origin_px(signal), dtype=np.float64)
    sizes = np.array([ax.size for ax in signal.axes_manager.signal_axes])  # (kx, ky)
    if np.any(origin < 0) or np.any(origin > sizes - 1):
        raise ValueError(
            f"the calibrated origin (signal axes at 0) lies outside the detector: "
            f"pixel ({origin[0]:.2f}, {origin[1]:.2f})"
        )
    return origin


def center_direct_beam(
    self,
    shifts=None,
    method="com",
    fit="plane",
    origin="median",
    interpolation_order=1,
    fill_value=0.0,
    return_shifts=False,
    show_progressbar=None,
):
    """A new signal with the direct beam at one position in every pattern.

    Each pattern is shifted sub-pixel (HyperSpy's ``shift_image``, i.e.
    :func:`scipy.ndimage.shift`, run by ``map``) by minus its beam offset.
    The input is never modified; a lazy signal gives a lazy result and is
    never loaded whole (measuring the positions reads it once, chunk by
    chunk; the shift runs when the result is computed). Axes calibrations
    (scales, offsets, units, names) and metadata are kept.

    Named after pyxem's ``center_direct_beam`` (here always ``inplace=False``);
    the plane fit follows py4DSTEM's ``fit_origin``.

    Parameters
    ----------
    shifts : array_like, signal or None, default None
        Offset ``(x, y)`` in detector px of the beam from where it should be,
        per scan position: shape ``(ny, nx, 2)`` in array order (a signal of
        that data shape, e.g. ``get_direct_beam_position() - (x0, y0)``), or
        ``(2,)`` for all positions. Pattern ``(iy, ix)`` is moved by
        ``-shifts[iy, ix]``. Used as given (no fit, ``origin`` ignored).
        Through ``hyperspy_cnmf.center_direct_beam`` (and the method), pyxem's
        ``BeamShift`` from its ``s.get_direct_beam_position(method=...)`` is
        accepted as it is: its values move the beam to the detector's
        middle, so minus them are used, and the result equals pyxem's
        ``s.center_direct_beam(shifts=bs)``.
        None: measured (``method``), fitted (``fit``) and referred to
        ``origin``.
    method : {"com"}, default "com"
        How the beam is measured when ``shifts`` is None; see
        :meth:`get_direct_beam_position`.
    fit : {"plane"} or None, default "plane"
        ``"plane"``: a least-squares plane of each coordinate over the scan
        (the linear drift that descan coils leave; free of the per-pattern
        counting noise and of grains that pull the centre of mass).
        None: every pattern by its own measured centre.
    origin : "median", "calibration" or (x, y), default "median"
        Where the beam is put, in px: the median of the (fitted) positions
        (the smallest shifts), the pixel where both calibrated signal axes
        read 0, or the given pixel.
    interpolation_order : int, default 1
        Spline order of the sub-pixel shift. 1 (bilinear) keeps the counts
        non-negative; higher orders ring, and the result is then clipped at 0.
    fill_value : float, default 0.0
        Value of the pixels shifted in from outside the detector (not NaN,
        which a decomposition would refuse).
    return_shifts : bool, default False
        Also return the applied shifts.
    show_progressbar : bool or None
        HyperSpy's progress bar for the shift (None: its preference).

    Returns
    -------
    STEM4D or LazySTEM4D
        The centred signal: float data (float64 stays, other dtypes such as
        integer counts are interpolated as float32), same shape and axes.
    ndarray, shape (ny, nx, 2)
        Only with ``return_shifts=True``: the offsets ``(x, y)`` px that were
        removed.

    Raises
    ------
    ValueError
        If the signal is not 2+2 dimensional, an option is unknown,
        ``shifts`` or ``origin`` has the wrong shape, no beam is found (all
        patterns empty), or the calibrated origin is outside the detector.

    Examples
    --------
    >>> import numpy as np
    >>> import hyperspy.api as hs
    >>> yy, xx = np.mgrid[:32, :32]
    >>> data = np.empty((4, 4, 32, 32))
    >>> for iy in range(4):
    ...     for ix in range(4):  # a Gaussian beam walks 0.2 px per scan column
    ...         data[iy, ix] = np.exp(-((xx - 15 - 0.2 * ix) ** 2 + (yy - 16) ** 2) / 8)
    >>> s = hs.signals.Signal2D(data)
    >>> s.set_signal_type("4D-STEM")
    >>> round(float(np.ptp(s.get_direct_beam_position().data[..., 0])), 1)
    0.6
    >>> c, shifts = s.center_direct_beam(return_shifts=True, show_progressbar=False)
    >>> np.round(shifts[0, :, 0], 1)  # x offsets removed from the first scan row
    array([-0.3, -0.1,  0.1,  0.3])
    >>> c.data.shape == s.data.shape, c is s
    (True, False)
    """
    check_4d(self, "center_direct_beam")
    nav_shape = self.axes_manager._navigation_shape_in_array
    if shifts is None:
        if method != "com":
            raise ValueError(f"unknown method {method!r}; the only method is 'com'")
        if fit not in ("plane", None):
            raise ValueError(f"fit must be 'plane' or None, got {fit!r}")
        pos = direct_beam_positions(self)
        if not np.isfinite(pos).any():
            raise ValueError(
                "no direct beam found: every pattern is empty, or the beam is hidden "
                "(a beam stop; pass shifts=... measured otherwise)"
            )
        if fit == "plane":
            pos = fit_plane(pos)
        else:
            ok = np.isfinite(pos)
            pos = np.where(
                ok, pos, np.nanmedian(pos.reshape(-1, 2), axis=0)
            )  # empty patterns stay
        if isinstance(origin, str) and origin == "median":
            target = np.median(pos.reshape(-1, 2), axis=0)
        elif isinstance(origin, str) and origin == "calibration":
            target = _calibrated_origin(self)
        elif isinstance(origin, str):
            raise ValueError(
                f"origin must be 'median', 'calibration' or (x, y), got {origin!r}"
            )
        else:
            target = np.asarray(origin, dtype=np.float64)
            if target.shape != (2,):
                raise ValueError(f"origin must be (x, y) in px, got {origin!r}")
        offsets = pos - target
    else:
        offsets = _as_positions(shifts, nav_shape, "shifts")

    from hyperspy.signals import BaseSignal

    # (dy, dx) per position in array order, as scipy.ndimage.shift wants it
    yx = np.ascontiguousarray(-offsets[..., ::-1])
    shift_signal = BaseSignal(yx).transpose(signal_axes=1)
    out = self.map(
        _shift_pattern,
        shift=shift_signal,
        interpolation_order=int(interpolation_order),
        fill_value=float(fill_value),
        clip=int(interpolation_order) > 1,
        inplace=False,
        ragged=False,
        show_progressbar=show_progressbar,
        # known output: no trial run on the first pattern (a read of its chunk)
        output_signal_size=tuple(self.axes_manager._signal_shape_in_array),
        output_dtype=_shifted_dtype(self.data.dtype),
    )
    if return_shifts:
        return out, np.array(offsets)
    return out
