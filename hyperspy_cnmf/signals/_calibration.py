"""Calibration helpers: direct-beam disk and probe size of a 4D-STEM signal."""

import functools
import re
import unicodedata

import numpy as np

from hyperspy_cnmf._beam import (
    HIDDEN_BEAM_CONTRAST,
    SHADOW_SHARE,
    beam_search_pixels,
    dark_share,
    defect_pixels,
    hidden_beam,
    search_beam,
)
from hyperspy_cnmf._warnings import warn
from hyperspy_cnmf.constraints import (
    AIRY_FWHM,
    electron_wavelength,
    probe_fwhm_from_convergence,
)

#: Unit strings that carry no physical calibration (pint would read "px" as 1/96 inch).
UNCALIBRATED_UNITS = frozenset(
    {
        "",
        "px",
        "pixel",
        "pixels",
        "<undefined>",
        "undefined",
        "none",
        "a.u.",
        "au",
        "step",
        "steps",
        "index",
        "channel",
        "channels",
    }
)
#: pyxem's names of what a reciprocal axis measures (``s.unit = "k_nm^-1"``,
#: ``pyxem.utils.calibration``): ``k`` = 1/d (the spatial frequency, as 1/nm or
#: Å^-1), ``q`` = 2 pi / d (so 1 q_nm^-1 is 1/(2 pi) nm^-1 of k), ``2th`` = the
#: scattering angle 2 theta.
_QUANTITY_PREFIX = re.compile(r"^(k|q|2th)_(.+)$")
#: A lone "A" (not part of a word such as "mA"): ångström on a microscope's axis,
#: which pint would read as the ampere.
_LONE_A = re.compile(r"(?<![A-Za-z_])A(?![A-Za-z_])")
#: An exponent written without "^" ("nm-1", "Å-1").
_BARE_EXPONENT = re.compile(r"([A-Za-zÅµ])-(\d)")


def microscopy_spelling(text):
    """A unit as microscopy files spell it, rewritten as pint reads it.

    The preprocessor of the package's pint registry (:func:`unit_registry`):
    rules, not a table of names. Matplotlib's TeX is dropped (``$A^{-1}$``,
    ``$\\AA^{-1}$`` and ``nm$^{-1}$``, as pyxem writes them, become
    ``Å^-1`` and ``nm^-1``); pyxem's quantity prefixes are read (``k_`` the
    spatial frequency 1/d, ``q_`` the scattering vector 2 pi / d, i.e. the
    unit divided by 2 pi, ``2th_`` the scattering angle); a lone ``A`` is the
    ångström; ``nm-1`` is ``nm^-1``.

    Parameters
    ----------
    text : str

    Returns
    -------
    str

    Examples
    --------
    >>> microscopy_spelling("$A^{-1}$"), microscopy_spelling("q_nm^-1")
    ('Å^-1', '(nm^-1) / (2 * pi)')
    """
    t = unicodedata.normalize("NFC", str(text)).strip()  # the Å sign is Å
    for tex, plain in (
        ("$", ""),
        ("{", ""),
        ("}", ""),
        ("\\AA", "Å"),
        ("\\mu ", "µ"),
        ("\\mu", "µ"),
    ):
        t = t.replace(tex, plain)
    t = t.replace("\\mathrm", "").replace("\\", "").strip()
    m = _QUANTITY_PREFIX.match(t)
    if m:
        kind, t = m.groups()
        if kind == "q":
            t = f"({t}) / (2 * pi)"
    t = _LONE_A.sub("Å", t)
    return _BARE_EXPONENT.sub(r"\1^-\2", t)


@functools.lru_cache(maxsize=1)
def unit_registry():
    """The package's pint registry, reading units as :func:`microscopy_spelling` rewrites them.

    pint's default definitions and nothing added, so that units convert
    exactly as in HyperSpy's own registry (``axis.convert_to_units``), which
    is left untouched. Built once, on first use.
    """
    import pint

    return pint.UnitRegistry(preprocessors=[microscopy_spelling])


def _units(axis):
    u = axis.units
    return None if u is None else str(u).strip()


def unit_quantity(units):
    """The pint quantity ``1 units``, or None for an uncalibrated axis (px, undefined).

    Read by :func:`unit_registry`, i.e. with microscopy's and pyxem's spellings
    (:func:`microscopy_spelling`): ``1 q_nm^-1`` is ``1 / (2 pi) nm^-1``, so
    compare quantities by their ratio (``(a / b).to("")``) or convert them
    (``q.to("1/nm")``), not by their magnitudes.

    Examples
    --------
    >>> for u in ("$A^{-1}$", "k_A^-1", "k_nm^-1", "q_nm^-1", "2th_deg"):
    ...     print(u, round(float(unit_quantity(u).to("1/nm" if "_deg" not in u else "mrad").m), 4))
    $A^{-1}$ 10.0
    k_A^-1 10.0
    k_nm^-1 1.0
    q_nm^-1 0.1592
    2th_deg 17.4533

    Raises
    ------
    ValueError
        If the unit is not understood.
    """
    if units is None or str(units).strip().lower() in UNCALIBRATED_UNITS:
        return None
    try:
        q = unit_registry().parse_expression(str(units).strip())
        if not hasattr(q, "units") or q.unitless:  # a bare number ("2")
            raise TypeError("a number, not a unit")
        return q
    except (
        Exception
    ) as exc:  # pint raises several kinds (UndefinedUnitError, TypeError, ...)
        raise ValueError(f"unit {units!r} is not understood (pint: {exc})") from None


def unit_quantity_or_none(units):
    """:func:`unit_quantity`, with None also for a unit pint does not know."""
    try:
        return unit_quantity(units)
    except ValueError:
        return None


def _is_uncalibrated(units):
    return units is None or str(units).strip().lower() in UNCALIBRATED_UNITS


def _is_angle(q):
    return q is not None and str(q.to_base_units().units) == "radian"


def _axis_label(axis):
    name = str(axis.name)
    return (
        name
        if name not in ("", "<undefined>", "None")
        else f"index {axis.index_in_axes_manager}"
    )


def _common_scales(axes, kind):
    """Steps of two axes in the units of the first; raises for units that do not convert."""
    ax0, ax1 = axes
    u0, u1 = _units(ax0), _units(ax1)
    s0, s1 = abs(float(ax0.scale)), abs(float(ax1.scale))
    if u0 == u1 or (_is_uncalibrated(u0) and _is_uncalibrated(u1)):
        return s0, s1, u0
    try:
        q0, q1 = unit_quantity(u0), unit_quantity(u1)
    except ValueError as exc:
        q0 = q1 = None
        why = f" ({exc})"
    else:
        why = ""
    if (
        q0 is None
        or q1 is None
        or not q1.is_compatible_with(q0)
        or _is_angle(q0) != _is_angle(q1)
    ):
        raise ValueError(
            f"the {kind} axes have incompatible units: {_axis_label(ax0)!r} in {u0!r} and "
            f"{_axis_label(ax1)!r} in {u1!r}{why}; their steps cannot be compared. Give both one "
            f"unit, e.g. s.axes_manager[{_axis_label(ax1)!r}].convert_to_units({u0!r}), or set "
            "the units and scales of both axes"
        )
    return s0, s1 * float((q1 / q0).to("").magnitude), u0


def navigation_scales(signal):
    """The scan steps ``(step_y, step_x)`` in one unit, and that unit.

    Both steps are expressed in the units of the x (first navigation) axis;
    a y axis in another length unit (Å against nm, ...) is converted with
    pint (HyperSpy's own unit registry), so that the map filter and the map
    spectra are isotropic in space.

    Raises
    ------
    ValueError
        If a step is zero or not finite (a negative step, a flipped axis,
        counts by its size), naming the axis and how to set it; or if the two
        axes have different units that cannot be converted into each other
        (e.g. nm and px, or a unit pint does not know): the scan geometry is
        then undefined.
    """
    axes = signal.axes_manager.navigation_axes
    for ax in axes:
        step = float(ax.scale)
        if step == 0 or not np.isfinite(step):
            label, units = _axis_label(ax), _units(ax)
            raise ValueError(
                f"the navigation axis {label!r} has scale {step:g} {units}: its scan step must be a "
                f"finite non-zero length. Set it, e.g. s.axes_manager[{label!r}].scale = 0.5 "
                "(the step between probe positions, in the axis's units), or pass "
                "map_resolution=None to run without the map constraint, which needs it"
            )
    sx, sy, unit = _common_scales(axes, "navigation")
    return sy, sx, unit


def _length_in_nm(units):
    """Nanometres per ``units``, or None if it is not a length (px, angle, unknown, ...)."""
    if _is_uncalibrated(units):
        return None
    q = unit_quantity_or_none(units)
    if q is None or not q.is_compatible_with("nm"):
        return None
    return float(q.to("nm").magnitude)


def _reciprocal_scale_inv_nm(axes, energy):
    """Mean detector step in 1/nm of two signal axes, or None if uncalibrated.

    Reciprocal lengths (1/nm, 1/Å, Å^-1, ...) convert directly, angles (mrad,
    rad, deg) through the electron wavelength when the beam energy is known.
    """
    steps = []
    for axis in axes:
        units = _units(axis)
        if _is_uncalibrated(units):
            return None
        q = unit_quantity(units)
        if q.is_compatible_with("1/nm") and not _is_angle(q):
            steps.append(abs(float(axis.scale)) * float(q.to("1/nm").magnitude))
        elif _is_angle(q) and energy:
            steps.append(
                abs(float(axis.scale))
                * float(q.to("rad").magnitude)
                / electron_wavelength(energy)
            )
        else:
            return None
    return float(np.mean(steps))


def disk_radius_from_metadata(signal):
    """Radius (px) of the Bragg and direct-beam disks from the metadata, or None.

    ``alpha / lambda`` (the convergence semi-angle ``alpha`` and the beam
    energy from ``metadata.Acquisition_instrument.TEM``) in the detector's
    calibrated reciprocal or angular units; None where either is missing or
    the detector is uncalibrated. Used where the beam is hidden (a beam
    stop) and its disk cannot be measured.
    """
    energy, alpha = beam_energy_and_convergence(signal)
    if not (energy and alpha):
        return None
    k_step = _reciprocal_scale_inv_nm(signal.axes_manager.signal_axes, energy)
    if not k_step:
        return None
    return float(alpha * 1e-3 / electron_wavelength(energy) / k_step)


def find_beam_disk(pattern, mask=None, dead=None):
    """Centre and radius (pixels) of the direct-beam disk of a mean pattern.

    :func:`hyperspy_cnmf._beam.locate_direct_beam` with a ``signal_mask``
    (the package's one direct-beam finder): the disk is the connected region
    around the brightest pixel (after a light smoothing; hot pixels left out,
    see :func:`hyperspy_cnmf._beam.defect_pixels`) that is brighter
    than halfway between the pattern's median and that maximum; its radius
    is ``sqrt(area / pi)``, its centre the centre of mass of the intensity
    above that level.

    Parameters
    ----------
    pattern : ndarray, shape (qy, qx)
    mask : ndarray of bool, shape (qy, qx), optional
        The ``signal_mask`` (True = excluded): masked pixels take no part,
        except a masked region that can hold the direct beam itself
        (:func:`hyperspy_cnmf._beam.beam_search_pixels`).
    dead : ndarray of bool, shape (qy, qx), optional
        Dead pixels (:func:`hyperspy_cnmf._beam.defect_pixels`): always
        left out, even where they could hold the beam (a detector's gap
        through the beam reads zero).

    Returns
    -------
    Beam
        ``(x, y, radius)`` in px, x (column) first.

    Notes
    -----
    A beam hidden by a beam stop is not searched for
    (:func:`beam_and_contrast`): its centre is the pattern's centre of
    inversion symmetry and its radius the stop's shadow's
    (:func:`hyperspy_cnmf._beam.hidden_beam`).
    """
    return beam_and_contrast(pattern, mask, dead)[0]


#: The largest pattern (pixels) on which :func:`beam_and_contrast` looks for a stop's
#: shadow at every contrast (512 x 512; larger ones only below the contrast threshold).
FRIEDEL_MAX_PIXELS = 512 * 512


def beam_and_contrast(pattern, mask=None, dead=None):
    """:func:`find_beam_disk`, the beam's contrast, and whether it is hidden.

    The pattern's centre of inversion symmetry
    (:func:`hyperspy_cnmf._beam.hidden_beam`, hot pixels left out) must read
    nothing (below :data:`hyperspy_cnmf._beam.SHADOW_LEVEL` of its median,
    masked or dead), and either the brightest region stands less than
    :data:`hyperspy_cnmf._beam.HIDDEN_BEAM_CONTRAST` times above the median
    (:func:`hyperspy_cnmf._beam.beam_contrast`) or at least
    :data:`hyperspy_cnmf._beam.SHADOW_SHARE` of the pixels within
    :data:`hyperspy_cnmf._beam.SHADOW_TEST_RADIUS` px of it read nothing
    (:func:`hyperspy_cnmf._beam.dark_share`: a stop's compact shadow, not a
    gap's lines; on patterns of up to :data:`FRIEDEL_MAX_PIXELS` pixels, the
    symmetry search costing about 1 s at 1024 x 1024). A faint beam that is
    there (a tightly cropped detector, a thick specimen) is still searched
    for. Not seen: a stop that passes 0.05-0.2 % of the beam; a gap of 3 px
    through a faint or small beam can be taken for a stop (its centre is then
    still right).

    Returns
    -------
    beam : Beam
        :func:`hyperspy_cnmf._beam.hidden_beam`'s where hidden.
    contrast : float
    hidden : bool
    """
    excluded = None if mask is None else ~beam_search_pixels(mask)
    if dead is not None and np.any(dead):
        dead = np.asarray(dead, dtype=bool)
        excluded = dead if excluded is None else excluded | dead
    disk, contrast, hot = search_beam(pattern, mask=excluded)
    faint = contrast < HIDDEN_BEAM_CONTRAST
    if faint or np.size(pattern) <= FRIEDEL_MAX_PIXELS:
        # hot pixels left out, as by the contrast (one under a stop took its place)
        beam = hidden_beam(pattern, mask=hot if excluded is None else excluded | hot)
        if beam.radius > 0 and (  # its place reads nothing
            faint
            or dark_share(pattern, beam.xy, mask=excluded, hot=hot) >= SHADOW_SHARE
        ):
            return beam, contrast, True
    return disk, contrast, False


def hidden_beam_text(beam, contrast):
    """The opening of the warnings on a hidden beam (decomposition, beam positions)."""
    return (
        f"the direct beam is not visible in the mean pattern (nothing reads at its centre "
        f"of inversion symmetry; contrast {contrast:.3g}; a beam stop?): its centre is taken "
        f"from the pattern's inversion symmetry (Friedel's law), ({beam.x:.2f}, "
        f"{beam.y:.2f}) px"
    )


def warn_defect_pixels(mean_pattern, n_positions, mask=None, excluded=False):
    """Warn about hot and dead pixels of the mean pattern left outside ``mask``.

    See :func:`hyperspy_cnmf._beam.defect_pixels` for the criteria (the
    mean pattern of counts data: a hot pixel must be significant against
    Poisson noise, ``poisson=True``). The warning names the pixels (row,
    column) and, for hot pixels the caller leaves out of the fit
    (``excluded=True``, the decomposition's ``defect_pixel_mask``), says
    so; otherwise it gives the remedy: ``signal_mask``. Dead pixels are
    left out of the direct-beam finding (a dead line through the beam moved
    the measured beam by 2 px and halved its radius) and fitted as the
    zeros they read, which scored higher than masking them.

    Returns
    -------
    hot, dead : ndarray of bool, shape (qy, qx)
    """
    hot, dead = defect_pixels(mean_pattern, n_positions, mask=mask, poisson=True)
    for kind, found, why in (
        ("hot", hot, "far brighter than all its neighbours in the mean pattern"),
        ("dead", dead, "always zero where the pixels around are not"),
    ):
        if found.any():
            rows, cols = np.nonzero(found)
            where = ", ".join(f"({r}, {c})" for r, c in zip(rows[:10], cols[:10]))
            more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
            remedy = (
                "they are left out of the fit (NaN in the factors, added to "
                "learning_results.signal_mask; defect_pixel_mask=False fits them)"
                if excluded and kind == "hot"
                else "they are left out of the direct-beam finding and fitted as the zeros they "
                "read; signal_mask (True = excluded) leaves them out of the fit too"
                if kind == "dead"
                else "they distort the components. Exclude them with signal_mask (True = "
                f"excluded), e.g. mask = np.zeros({tuple(found.shape)}, bool); "
                f"mask[{tuple(rows[:10].tolist())}, {tuple(cols[:10].tolist())}] = True"
            )
            warn(
                f"{len(rows)} {kind} detector pixel(s) ({why}) at (row, column) "
                f"{where}{more}; {remedy}",
                UserWarning,
            )
    return hot, dead


def _metadata_value(md, path, unit):
    """The number at ``path`` in ``unit``, or None; units read where the metadata gives them.

    pyxem's ``Calibration`` setters (``s.calibration.beam_energy = 200``)
    store a magnitude at ``path`` and its unit at ``path + "_units"``
    (``"kilovolt"``, ``"milliradian"``); a pint quantity at ``path`` carries
    its own. Without a unit the number is taken to be in ``unit`` (HyperSpy's
    metadata convention). An accelerating voltage (kV) is the beam energy
    (keV) of the electron.

    Raises
    ------
    ValueError
        If the stored unit is not understood or does not convert to ``unit``.
    """
    value = md.get_item(path, None)
    if value is None:
        return None
    units = md.get_item(path + "_units", None)
    if hasattr(value, "magnitude") and hasattr(value, "units"):  # any pint registry
        value, units = value.magnitude, str(value.units)
    if units is None or str(units).strip() == "":
        return float(value)
    try:
        q = float(value) * unit_quantity(units)
        reg = unit_registry()
        if q.is_compatible_with("V"):
            q = q * reg.elementary_charge
        return float(q.to(unit).magnitude)
    except Exception as exc:  # pint raises several kinds
        raise ValueError(
            f"metadata {path} = {value!r} in {units!r} ({path}_units) cannot be read as {unit}: "
            f"{exc}; set it in {unit} and remove {path}_units"
        ) from None


#: The beam energies (keV) accepted from metadata: every transmission electron microscope,
#: from low-voltage (a few kV) to high-voltage (3 MV) instruments. A value outside is a unit
#: mistake, most often an energy in eV (200000 for 200 keV) where HyperSpy's metadata take keV.
BEAM_ENERGY_RANGE_KEV = (1.0, 3000.0)


def check_beam_energy(
    energy_kev, where="metadata Acquisition_instrument.TEM.beam_energy"
):
    """The beam energy (keV), refused outside :data:`BEAM_ENERGY_RANGE_KEV` with the likely fix.

    Parameters
    ----------
    energy_kev : float or None
        None passes (no beam energy known).
    where : str
        How the error names the value.

    Returns
    -------
    float or None

    Raises
    ------
    ValueError
        If the energy is not finite or outside 1-3000 keV; a value in eV
        (1000 times a plausible energy) is named as such, with the value to
        set.
    """
    if energy_kev is None:
        return None
    e = float(energy_kev)
    lo, hi = BEAM_ENERGY_RANGE_KEV
    if np.isfinite(e) and lo <= e <= hi:
        return e
    hint = ""
    if np.isfinite(e) and lo <= e / 1e3 <= hi:
        hint = f" It looks like an energy in eV: {e / 1e3:g} keV?"
    raise ValueError(
        f"{where} = {e:g} keV is not a plausible TEM beam energy ({lo:g}-{hi:g} keV).{hint} "
        "HyperSpy's metadata take the beam energy in keV (the accelerating voltage in kV), e.g. "
        "s.metadata.set_item('Acquisition_instrument.TEM.beam_energy', 200); a value in another "
        "unit can carry it in beam_energy_units (e.g. 'eV'), which is converted with pint"
    )


def beam_energy_and_convergence(signal):
    """``(beam_energy_keV, convergence_angle_mrad)`` from metadata, None if absent.

    Read from ``metadata.Acquisition_instrument.TEM`` (HyperSpy's and pyxem's
    paths), with the units that pyxem stores beside them
    (``beam_energy_units``, ``convergence_angle_units``) converted by pint;
    ``convergence_angle`` is the semi-angle (HyperSpy's metadata convention,
    pyxem's ``calibration.convergence_angle``).

    Raises
    ------
    ValueError
        If the beam energy, in keV after conversion, is outside 1-3000 keV
        (:func:`check_beam_energy`: e.g. 200000, an energy in eV without
        ``beam_energy_units``), or a stored unit does not convert.
    """
    md = signal.metadata
    energy = _metadata_value(md, "Acquisition_instrument.TEM.beam_energy", "keV")
    energy = check_beam_energy(energy)
    alpha = _metadata_value(md, "Acquisition_instrument.TEM.convergence_angle", "mrad")
    return energy, alpha


def estimate_probe_fwhm(signal, mean_pattern, beam_radius_px=None):
    """Estimate the probe FWHM in the units of the x (first) navigation axis.

    Tried in order (the first that applies wins):

    1. ``metadata.Acquisition_instrument.TEM`` has ``convergence_angle``
       (mrad) and ``beam_energy`` (keV): diffraction-limited probe,
       ``d = 0.514 lambda / alpha``.
    2. The signal axes are calibrated in reciprocal length (1/nm, 1/Å, Å^-1,
       ...) or in an angle (mrad, rad, deg) with a known beam energy: the
       direct-beam disk of the mean pattern has radius ``alpha / lambda``, so
       ``d = 0.514 / k_alpha``.
    3. Otherwise (uncalibrated axes) a documented fallback: ``d = 2`` scan
       steps, i.e. the cutoff sits at the Nyquist frequency and only the
       corners of the map spectra beyond the sampling circle are removed. A
       warning says how to set the value.

    Rules 1-2 need the navigation axes in a length unit (nm, Å, µm, pm, ...).
    Units are converted with pint (HyperSpy's unit registry), so the two
    axes of a kind may have different units (x in nm, y in Å); units that do
    not convert into each other raise a ``ValueError`` (see
    :func:`navigation_scales`). Diffraction-limited estimates ignore
    aberrations, so the cutoff errs on the side of keeping detail.

    Parameters
    ----------
    signal : STEM4D
    mean_pattern : ndarray, shape (qy, qx)
        For rule 2, when ``beam_radius_px`` is not given.
    beam_radius_px : float, optional
        The direct-beam radius already found (e.g. with the ``signal_mask``);
        NaN where the beam is hidden (a beam stop): rule 2 does not apply.

    Returns
    -------
    fwhm : float
        In the units of the x navigation axis (both axes are converted to it).
    how : str
        Which rule was used.
    """
    step_y, step_x, nav_unit = navigation_scales(signal)
    to_nm = _length_in_nm(nav_unit)
    energy, alpha = beam_energy_and_convergence(signal)
    if to_nm is not None:
        if energy and alpha:
            d_nm = probe_fwhm_from_convergence(alpha, energy)
            return (
                d_nm / to_nm,
                "convergence_angle and beam_energy metadata (0.514 lambda/alpha)",
            )
        sig = signal.axes_manager.signal_axes
        _common_scales(
            sig, "signal"
        )  # one calibration for both detector axes, or a clear error
        k_step = _reciprocal_scale_inv_nm(sig, energy)
        if k_step:
            if beam_radius_px is None:
                beam_radius_px = find_beam_disk(mean_pattern).radius
            k_alpha = beam_radius_px * k_step
            if k_alpha and np.isfinite(k_alpha):  # NaN: a hidden beam, not measured
                return (
                    AIRY_FWHM / k_alpha / to_nm,
                    "direct-beam disk radius in calibrated diffraction units (0.514/k_alpha)",
                )
    step = max(step_x, step_y)
    warn(
        "map_resolution='auto' could not determine the probe size (needs the "
        "convergence angle and beam energy in metadata, or calibrated "
        "navigation lengths and diffraction axes); using 2 scan steps "
        f"({2 * step:g}), which only removes frequencies beyond the sampling "
        "(Nyquist) circle. Pass map_resolution=<probe FWHM in navigation "
        "units> to set it.",
        UserWarning,
    )
    return 2.0 * step, "fallback: 2 scan steps (Nyquist)"
