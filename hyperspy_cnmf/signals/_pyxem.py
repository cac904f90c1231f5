"""pyxem's conventions, read and written by the functional API (:mod:`hyperspy_cnmf.api`).

What pyxem 0.21 stores and where (``pyxem/utils/calibration.py``,
``pyxem/signals/diffraction2d.py``), and who reads it here:

- **beam centre**: ``s.calibration.center`` is ``-offset / scale`` of the
  signal axes, in px: the calibrated origin
  (:func:`hyperspy_cnmf.signals._axes.calibrated_origin_px`), the
  clustering's default centre when it agrees with the beam measured on the
  data;
- **beam energy, convergence angle**: ``metadata.Acquisition_instrument.TEM``
  ``beam_energy`` (kV) and ``convergence_angle`` (mrad, the semi-angle), with
  ``*_units`` beside them when set through ``s.calibration``: read, units
  converted by pint, by
  :func:`hyperspy_cnmf.signals._calibration.beam_energy_and_convergence`
  (the probe size of ``map_resolution="auto"``);
- **unit names** of the signal axes (``$A^{-1}$``, ``k_A^-1``, ``k_nm^-1``,
  ``q_nm^-1``, ``q_A^-1``, ``2th_deg``, ...): read by pint through
  :func:`hyperspy_cnmf.signals._calibration.microscopy_spelling`;
- **mask**: ``metadata.General.mask`` (``s.calibration.mask``), bool of the
  detector's shape (rows, columns), True = excluded, as ``signal_mask``:
  :func:`stored_mask`, the decomposition's default ``signal_mask``;
- **beam positions**: ``s.get_direct_beam_position(method=...)`` returns a
  ``BeamShift`` (scan | 2): per pattern the shift ``(x, y)`` px that brings
  its direct beam to the detector's middle (``signal_shape / 2``), i.e.
  minus this package's offsets: :func:`beam_shift_offsets`;
- **polar patterns**: ``PolarDiffraction2D`` has signal axes (azimuth,
  radius), the azimuth in rad over [-pi, pi) increasing from +kx towards
  -ky (measured with ``get_azimuthal_integral2d``: a spot at +ky, a larger
  detector row, lands at -pi/2); this package's ``polar_transform`` runs
  from +kx towards +ky in deg over [0, 360): :func:`as_polar_diffraction`
  converts.

pyxem is never imported here except to build a pyxem signal from the result
of a pyxem signal (pyxem is then imported already).
"""

import numpy as np

#: pyxem's names of the polar signal axes (``get_azimuthal_integral2d``)
PYXEM_AZIMUTH = {"name": "Radians", "units": "Rad"}
PYXEM_RADIUS_NAME = "Radius"


def is_pyxem_signal(signal):
    """True if the signal's class is pyxem's (``ElectronDiffraction2D``, ``LazyDiffraction2D``, ...)."""
    return any(
        (getattr(cls, "__module__", "") or "").split(".")[0] == "pyxem"
        for cls in type(signal).__mro__
    )


def _computed(data):
    data = getattr(data, "data", data)  # a signal
    if hasattr(data, "compute"):
        data = data.compute()
    return np.asarray(data)


def stored_mask(signal):
    """pyxem's stored detector mask (``s.calibration.mask``) as a ``signal_mask``, or None.

    Parameters
    ----------
    signal : pyxem signal
        Any other signal gives None: ``metadata.General.mask`` is pyxem's
        place, not HyperSpy's.

    Returns
    -------
    ndarray of bool, shape (qy, qx), or None
        True = excluded (pyxem's convention and ``signal_mask``'s). A copy;
        the shape is checked by the decomposition with its other arguments.
    """
    if not is_pyxem_signal(signal):
        return None
    mask = signal.metadata.get_item("General.mask", None)
    if mask is None:
        return None
    return _computed(mask).astype(bool)


def is_beam_shift(value):
    """True for pyxem's ``BeamShift`` (``get_direct_beam_position``'s result), lazy or not."""
    return is_pyxem_signal(value) and (
        value.metadata.get_item("Signal.signal_type", "") == "beam_shift"
    )


def beam_shift_offsets(shifts):
    """pyxem's ``BeamShift`` as this package's ``shifts`` (the beam's offsets); else unchanged.

    pyxem's shift ``(x, y)`` moves a pattern so that its beam reaches
    ``signal_shape / 2``; ``center_direct_beam(shifts=...)`` here takes the
    beam's offset from its target and moves the pattern by minus it. The
    offsets are therefore minus pyxem's shifts, and
    ``hyperspy_cnmf.center_direct_beam(s, shifts=bs)`` gives the patterns of
    pyxem's ``s.center_direct_beam(shifts=bs)``.

    Returns
    -------
    ndarray, shape (ny, nx, 2), or ``shifts`` itself
    """
    if not is_beam_shift(shifts):
        return shifts
    return -_computed(shifts).astype(np.float64)


def _pyxem_metadata(signal, title, signal_type):
    """The input's metadata for a result: title and type set, the detector mask dropped."""
    md = signal.metadata.deepcopy().as_dictionary()
    md.setdefault("General", {}).pop("mask", None)
    md["General"]["title"] = title
    md.setdefault("Signal", {})["signal_type"] = signal_type
    return md


def as_polar_diffraction(polar, signal):
    """``polar_transform``'s result as pyxem's ``PolarDiffraction2D``, in pyxem's azimuth.

    The azimuth is reversed and rolled (no interpolation): sample ``j`` of
    this package, at ``phi_j = j * 360 / n`` deg from +kx towards +ky, is at
    ``-phi_j`` in pyxem's convention; the result's azimuth axis runs over
    ``-(n // 2) * 2 pi / n`` ... in rad (from -pi for even ``n``), named and
    united as pyxem's (``"Radians"``, ``"Rad"``), and the radius axis is
    ``"Radius"``. Axis values are the sampled angles and radii; pyxem's own
    ``get_azimuthal_integral2d`` labels each bin by its lower edge, half a
    step before its centre. The metadata (beam energy, ...) is the input's.

    Parameters
    ----------
    polar : hyperspy.signals.Signal2D
        From :func:`hyperspy_cnmf.signals._cluster.polar_transform`
        (signal axes ``phi`` in deg, ``r``), lazy or not.
    signal : pyxem signal
        Its input.

    Returns
    -------
    pyxem.signals.PolarDiffraction2D or LazyPolarDiffraction2D
    """
    from pyxem.signals import LazyPolarDiffraction2D, PolarDiffraction2D

    phi_axis, r_axis = polar.axes_manager.signal_axes
    n = int(phi_axis.size)
    if not (float(phi_axis.offset) == 0.0 and np.isclose(phi_axis.scale * n, 360.0)):
        raise RuntimeError(
            f"expected a full azimuth from 0 deg, got offset {phi_axis.offset}, scale {phi_axis.scale}"
        )
    step = 2 * np.pi / n
    data = polar.data[..., (n // 2 - np.arange(n)) % n]
    axes = [dict(d) for d in polar.axes_manager._get_navigation_axes_dicts()]
    radius = dict(r_axis.get_axis_dictionary(), navigate=False, name=PYXEM_RADIUS_NAME)
    azimuth = dict(
        phi_axis.get_axis_dictionary(),
        navigate=False,
        scale=step,
        offset=-(n // 2) * step,
        **PYXEM_AZIMUTH,
    )
    for d in (radius, azimuth):
        d.pop("_type", None)
    axes += [radius, azimuth]
    md = _pyxem_metadata(signal, polar.metadata.General.title, "polar_diffraction")
    md["Signal"]["polar_centre_px"] = polar.metadata.Signal.polar_centre_px
    cls = LazyPolarDiffraction2D if polar._lazy else PolarDiffraction2D
    return cls(data, axes=axes, metadata=md)


def with_input_metadata(results, signal):
    """The clustering's patterns of a pyxem signal, carrying the input's metadata.

    ``merged_factors`` and ``mean_patterns`` already have the input's signal
    type (``ElectronDiffraction2D`` for an ``ElectronDiffraction2D`` or its
    lazy class) and calibrated axes; here they also get the input's
    ``Acquisition_instrument`` (beam energy, convergence angle, ...) and
    pyxem's detector mask, which pyxem's azimuthal integration uses by
    default. ``results`` is changed in place and returned.
    """
    md = signal.metadata
    mask = stored_mask(signal)
    for key in ("merged_factors", "mean_patterns"):
        patterns = results.get(key)
        if patterns is None:
            continue
        if md.has_item("Acquisition_instrument"):
            patterns.metadata.set_item(
                "Acquisition_instrument", md.Acquisition_instrument.deepcopy()
            )
        if mask is not None:
            patterns.metadata.set_item("General.mask", mask)
    return results
