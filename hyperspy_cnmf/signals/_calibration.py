"""Calibration helpers: direct-beam disk and probe size of a 4D-STEM signal."""

import warnings

import numpy as np

from hyperspy_cnmf._beam import locate_direct_beam
from hyperspy_cnmf.constraints import (
    AIRY_FWHM,
    electron_wavelength,
    probe_fwhm_from_convergence,
)

#: Length units understood on the navigation axes, as nanometres per unit.
LENGTH_TO_NM = {"nm": 1.0, "Å": 0.1, "A": 0.1, "angstrom": 0.1, "µm": 1e3, "um": 1e3, "μm": 1e3, "pm": 1e-3}
#: Reciprocal-length units understood on the signal axes, as 1/nm per unit.
RECIPROCAL_TO_INV_NM = {
    "1/nm": 1.0, "nm^-1": 1.0, "nm-1": 1.0, "1 / nm": 1.0,
    "1/Å": 10.0, "Å^-1": 10.0, "1/A": 10.0, "A^-1": 10.0, "1 / Å": 10.0,
    "1/pm": 1e3,
}


def _units(axis):
    u = axis.units
    return None if u is None else str(u).strip()


def find_beam_disk(pattern):
    """Centre and radius (pixels) of the direct-beam disk of a mean pattern.

    Array-order wrapper of :func:`hyperspy_cnmf._beam.locate_direct_beam`
    (the package's one direct-beam finder): the disk is the connected region
    around the brightest pixel (after a light smoothing) that is brighter
    than halfway between the pattern's median and that maximum; its radius
    is ``sqrt(area / pi)``, its centre the centre of mass of the intensity
    above that level.

    Parameters
    ----------
    pattern : ndarray, shape (qy, qx)

    Returns
    -------
    (cy, cx, radius) : tuple of float
        Row, column and radius in px.
    """
    beam = locate_direct_beam(pattern)
    return beam.y, beam.x, beam.radius


def beam_energy_and_convergence(signal):
    """``(beam_energy_keV, convergence_angle_mrad)`` from metadata, None if absent."""
    md = signal.metadata
    energy = md.get_item("Acquisition_instrument.TEM.beam_energy", None)
    alpha = md.get_item("Acquisition_instrument.TEM.convergence_angle", None)
    return energy, alpha


def estimate_probe_fwhm(signal, mean_pattern):
    """Estimate the probe FWHM in the units of the navigation axes.

    Tried in order (the first that applies wins):

    1. ``metadata.Acquisition_instrument.TEM`` has ``convergence_angle``
       (mrad) and ``beam_energy`` (keV): diffraction-limited probe,
       ``d = 0.514 lambda / alpha``.
    2. The signal axes are calibrated in reciprocal length (1/nm, 1/Å) or in
       mrad with a known beam energy: the direct-beam disk of the mean
       pattern has radius ``alpha / lambda``, so ``d = 0.514 / k_alpha``.
    3. Otherwise (uncalibrated axes) a documented fallback: ``d = 2`` scan
       steps, i.e. the cutoff sits at the Nyquist frequency and only the
       corners of the map spectra beyond the sampling circle are removed. A
       warning says how to set the value.

    Rules 1-2 need the navigation axes in a length unit (nm, Å, µm, pm).
    Diffraction-limited estimates ignore aberrations, so the cutoff errs on
    the side of keeping detail.

    Returns
    -------
    fwhm : float
        In navigation-axis units.
    how : str
        Which rule was used.
    """
    nav = signal.axes_manager.navigation_axes
    nav_units = {_units(a) for a in nav}
    to_nm = LENGTH_TO_NM.get(nav_units.pop()) if len(nav_units) == 1 else None
    energy, alpha = beam_energy_and_convergence(signal)
    if to_nm is not None:
        if energy and alpha:
            d_nm = probe_fwhm_from_convergence(alpha, energy)
            return d_nm / to_nm, "convergence_angle and beam_energy metadata (0.514 lambda/alpha)"
        sig = signal.axes_manager.signal_axes
        sig_units = {_units(a) for a in sig}
        scale = float(np.mean([a.scale for a in sig]))
        _, _, radius_px = find_beam_disk(mean_pattern)
        if len(sig_units) == 1:
            unit = sig_units.pop()
            k_alpha = None
            if unit in RECIPROCAL_TO_INV_NM:
                k_alpha = radius_px * scale * RECIPROCAL_TO_INV_NM[unit]
            elif unit == "mrad" and energy:
                k_alpha = radius_px * scale * 1e-3 / electron_wavelength(energy)
            if k_alpha:
                return AIRY_FWHM / k_alpha / to_nm, "direct-beam disk radius in calibrated diffraction units (0.514/k_alpha)"
    step = max(abs(a.scale) for a in nav)
    warnings.warn(
        "map_resolution='auto' could not determine the probe size (needs the "
        "convergence angle and beam energy in metadata, or calibrated "
        "navigation lengths and diffraction axes); using 2 scan steps "
        f"({2 * step:g}), which only removes frequencies beyond the sampling "
        "(Nyquist) circle. Pass map_resolution=<probe FWHM in navigation "
        "units> to set it.",
        UserWarning,
        stacklevel=3,
    )
    return 2.0 * step, "fallback: 2 scan steps (Nyquist)"
