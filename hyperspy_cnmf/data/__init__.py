"""Example and simulated datasets with full ground truth.

- :func:`simulated_precipitates`: a simulated 4D-STEM dataset of crystalline
  nanoprecipitates in an amorphous matrix (the situation of Kimoto et al.,
  *Sci. Rep.* 15, 39143 (2025): a Zr-Cu-Al metallic glass), returned as a
  :class:`~hyperspy_cnmf.signals.STEM4D` with the linear-mixing ground truth
  (maps and patterns) in ``metadata.Simulation``.
- :func:`electron_wavelength`: relativistic electron wavelength (nm).
- :func:`load_multislice_case`: a multislice (abTEM) test case with its truth, calibrated.
"""

import numpy as np

from hyperspy_cnmf.data._multislice import load_multislice_case
from hyperspy_cnmf.data._simulate import (
    HALO_1,
    HALO_2,
    PHASE_NAMES,
    electron_wavelength,
    simulate_precipitates,
)

__all__ = ["simulated_precipitates", "electron_wavelength", "load_multislice_case"]

_BEAM_ENERGY_KEV = 200.0
#: Target size (bytes) of one dask chunk of the lazy signal.
_CHUNK_BYTES = 8 * 2**20


def _nav_chunks(scan_shape, detector_shape, itemsize):
    per_pattern = detector_shape[0] * detector_shape[1] * itemsize
    side = max(1, int(np.sqrt(_CHUNK_BYTES / per_pattern)))
    # Balanced chunks: n split into ceil(n / side) near-equal parts.
    nav = tuple(-(-n // -(-n // side)) for n in scan_shape)
    return (*nav, *detector_shape)


def _axes(shape, step, k_scale, centre_px):
    """HyperSpy axes: navigation ``y, x`` in nm, signal ``ky, kx`` in 1/nm, beam at 0."""
    ny, nx, qy, qx = shape
    cy, cx = centre_px
    axes = [
        {"name": "y", "size": ny, "scale": step, "offset": 0.0, "units": "nm"},
        {"name": "x", "size": nx, "scale": step, "offset": 0.0, "units": "nm"},
        {"name": "ky", "size": qy, "scale": k_scale, "offset": -cy * k_scale},
        {"name": "kx", "size": qx, "scale": k_scale, "offset": -cx * k_scale},
    ]
    for ax in axes[2:]:
        ax["units"] = "1/nm"
    for ax, nav in zip(axes, (True, True, False, False)):
        ax["navigate"] = nav
    return axes


def _ground_truth(truth, n_phases, step, probe_fwhm, dose):
    """The ``metadata.Simulation`` dictionary (without ``random_state``)."""
    k_scale = truth["k_scale"]
    return {
        "n_components": int(truth["maps"].shape[0]),
        "maps": truth["maps"],
        "patterns": truth["patterns"],
        "phase_of_component": truth["phase_of_component"],
        "rotation_deg": truth["rotation_deg"],
        "phase_names": ",".join(PHASE_NAMES[: n_phases + 1]),
        "reference_patterns": truth["reference_patterns"],
        "phase_map": truth["phase_map"],
        "grain_map": truth["grain_map"],
        "grain_centres_nm": truth["grain_centres_nm"],
        "grain_diameters_nm": truth["grain_diameters_nm"],
        "probe_fwhm_nm": float(probe_fwhm),
        "scan_step_nm": step,
        "dose": float(dose),
        "beam_disk_radius_inv_nm": float(truth["radius_px"] * k_scale),
        "beam_disk_radius_px": float(truth["radius_px"]),
        "beam_disk_radius_physical_inv_nm": float(
            truth["convergence_angle_rad"] / truth["wavelength_nm"]
        ),
        "reciprocal_scale_inv_nm": float(k_scale),
        "centre_px": truth["centre_px"],
        "halo_radii_inv_nm": np.array([HALO_1[0], HALO_2[0]]),
    }


def simulated_precipitates(
    *,
    scan_shape=(48, 48),
    detector_shape=(48, 48),
    n_grains=6,
    n_phases=2,
    scan_step=0.5,
    probe_fwhm=1.5,
    grain_diameter=6.0,
    dose=2000.0,
    random_state=0,
    noise=True,
    lazy=False,
    dtype="float32",
):
    """Simulated 4D-STEM dataset: crystalline precipitates in an amorphous matrix.

    The data follow the linear mixing model of NMF,
    ``X = sum_c map_c (x) pattern_c`` + Poisson noise, with

    - component 0, the amorphous matrix: a direct-beam disk, two diffuse halo
      rings (Gaussian radial profiles at |k| = 4.0 and 6.9 1/nm, typical of a
      Zr-Cu-Al metallic glass) and a smooth exponentially decaying
      background. Its map is 1 everywhere, reduced by up to 30 % inside the
      grains (a grain replaces part of the matrix thickness), times ``dose``;
    - components 1..n_grains, one per grain: that grain's Bragg spots only
      (no direct beam), i.e. the reciprocal lattice of its phase (Friedel
      pairs included, intensities ``exp(-(|g|/5)^2)``) rotated in-plane by a
      random angle. Phase 1 is hexagonal (6-fold, first ring |g| = 3.7 1/nm,
      on the first halo), phase 2 square (4-fold, |g| = 4.3 and 6.08 1/nm),
      phase 3 rectangular (2-fold). The map is ``0.3 t^2`` with
      ``t = sqrt(1 - (r/R)^2)`` the projected thickness of a sphere of random
      diameter (``grain_diameter`` ± 20 %), times ``dose``: a thin crystal's
      Bragg intensity grows as its thickness squared (kinematic scattering),
      as the multislice cases of
      :func:`~hyperspy_cnmf.data.load_multislice_case` show; the matrix map
      gives up the counts the grain's spots take.

    All maps are blurred by the probe (Gaussian of FWHM ``probe_fwhm``), so the
    expected total count per probe position is exactly ``dose``. Bragg disks
    and the direct beam have the same radius ``alpha / lambda = 0.514 /
    probe_fwhm`` (1/nm) of a diffraction-limited probe, with a soft edge (disk
    convolved with a 0.5 px Gaussian); the drawn radius is at least 1 detector
    pixel. Grains do not overlap and lie inside the field with a margin of
    ``probe_fwhm / 2``.

    Parameters
    ----------
    scan_shape : tuple of int, default (48, 48)
        Navigation shape ``(ny, nx)``, at least 4 x 4.
    detector_shape : tuple of int, default (48, 48)
        Detector shape ``(qy, qx)``, at least 16 x 16. The reciprocal field of
        view is fixed to ±9.6 1/nm across the smaller side (0.4 1/nm per
        pixel for 48 px), so larger detectors sample it more finely.
    n_grains : int, default 6
        Number of crystalline grains (one component each), ``>= n_phases``.
    n_phases : {1, 2, 3}, default 2
        Number of distinct crystalline phases; each is used at least once.
    scan_step : float, default 0.5
        Scan step in nm per navigation pixel.
    probe_fwhm : float, default 1.5
        Probe FWHM in nm: the spatial resolution of the maps and, through the
        convergence angle, the radius of the diffraction disks.
    grain_diameter : float, default 6.0
        Mean grain diameter in nm.
    dose : float, default 2000.0
        Expected total counts per probe position.
    random_state : int, numpy.random.Generator or None, default 0
        Seed of every random choice (phases, sizes, positions, rotations,
        noise); the same integer gives identical data.
    noise : bool, default True
        Draw Poisson noise; if False, return the noise-free expectation.
    lazy : bool, default False
        Return a :class:`~hyperspy_cnmf.signals.LazySTEM4D` (dask-backed, with
        navigation chunks of about 8 MiB) instead of a
        :class:`~hyperspy_cnmf.signals.STEM4D`. The values are the same.
    dtype : str or numpy.dtype, default "float32"
        Floating-point dtype of the data (integers are refused).

    Returns
    -------
    STEM4D or LazySTEM4D
        Data of shape ``(ny, nx, qy, qx)``. Navigation axes ``x``, ``y`` in nm
        (scale ``scan_step``, offset 0), signal axes ``kx``, ``ky`` in 1/nm,
        offset ``-centre_px * scale`` so that the direct beam is at (0, 0).
        ``metadata.Signal.signal_type == "4D-STEM"``;
        ``metadata.Acquisition_instrument.TEM`` holds ``beam_energy`` (keV,
        200) and ``convergence_angle`` (mrad, ``0.514 lambda / probe_fwhm``).
        The ground truth is in ``metadata.Simulation`` (numbers, strings and
        arrays only, so it survives saving to ``.hspy``):

        ``n_components`` : int
            ``n_grains + 1``.
        ``maps`` : ndarray, shape (n_components, ny, nx), float64
            Noise-free maps in counts (component 0 is the matrix).
        ``patterns`` : ndarray, shape (n_components, qy, qx), float64
            Diffraction patterns, each with unit sum. The noise-free data is
            ``einsum("cyx,cqp->yxqp", maps, patterns)``.
        ``phase_of_component`` : ndarray, shape (n_components,), int
            0 for the amorphous matrix, 1..n_phases for the grains.
        ``rotation_deg`` : ndarray, shape (n_components,), float
            In-plane rotation of each grain's pattern with respect to its
            phase's reference pattern (0 for the matrix): a spot ``g`` of the
            reference is at ``R(theta) g`` with ``R = [[cos, -sin], [sin,
            cos]]`` acting on ``(kx, ky)``.
        ``phase_names`` : str
            Comma-separated names indexed by phase number, e.g.
            ``"amorphous,hexagonal,square"``.
        ``reference_patterns`` : ndarray, shape (n_phases, qy, qx), float64
            Unit-sum Bragg pattern of phases 1..n_phases at rotation 0.
        ``phase_map`` : ndarray, shape (ny, nx), int
            Phase of the grain whose projected disk holds the probe centre
            (the thickest one where disks overlap), else 0 (amorphous): the
            geometric convention of the multislice test cases.
        ``grain_map`` : ndarray, shape (ny, nx), int
            Component index of that dominant grain, else 0.
        ``grain_centres_nm`` : ndarray, shape (n_grains, 2), float
            Grain centres ``(y, x)`` in nm (component ``i + 1``).
        ``grain_diameters_nm`` : ndarray, shape (n_grains,), float
            Grain diameters in nm.
        ``probe_fwhm_nm``, ``scan_step_nm``, ``dose`` : float
            The corresponding parameters.
        ``beam_disk_radius_inv_nm`` : float
            Radius of the drawn direct-beam (and Bragg) disks in 1/nm.
        ``beam_disk_radius_px`` : float
            The same in detector pixels (at least 1).
        ``beam_disk_radius_physical_inv_nm`` : float
            ``alpha / lambda`` before clamping to 1 pixel.
        ``reciprocal_scale_inv_nm`` : float
            Detector sampling, 1/nm per pixel.
        ``centre_px`` : ndarray, shape (2,), float
            Direct beam position (row, column) = (ky, kx) pixel indices.
        ``halo_radii_inv_nm`` : ndarray, shape (2,), float
            Radii of the two amorphous halos.
        ``random_state`` : int
            The seed (only stored when an integer was given).

    Raises
    ------
    ValueError
        For non-positive sizes, ``n_phases`` not in {1, 2, 3} or larger than
        ``n_grains``, grains that cannot fit in the scanned field, a beam disk
        too large for the detector or a non-floating ``dtype``.

    See Also
    --------
    electron_wavelength

    Examples
    --------
    >>> from hyperspy_cnmf.data import simulated_precipitates
    >>> s = simulated_precipitates(scan_shape=(32, 32), n_grains=3)
    >>> s
    <STEM4D, title: Simulated precipitates in an amorphous matrix, dimensions: (32, 32|48, 48)>
    >>> truth = s.metadata.Simulation
    >>> truth.maps.shape, truth.patterns.shape
    ((4, 32, 32), (4, 48, 48))
    >>> truth.phase_names
    'amorphous,hexagonal,square'
    >>> s.axes_manager.signal_axes[0].units
    '1/nm'
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating-point type, got {dtype}")
    truth = simulate_precipitates(
        scan_shape=scan_shape,
        detector_shape=detector_shape,
        n_grains=n_grains,
        n_phases=n_phases,
        scan_step=scan_step,
        probe_fwhm=probe_fwhm,
        grain_diameter=grain_diameter,
        dose=dose,
        beam_energy=_BEAM_ENERGY_KEV,
        random_state=random_state,
        noise=noise,
    )
    from hyperspy_cnmf.signals import STEM4D

    data = truth["data"].astype(dtype, copy=False)
    ny, nx, qy, qx = data.shape
    step = float(scan_step)
    axes = _axes(data.shape, step, truth["k_scale"], truth["centre_px"])
    simulation = _ground_truth(truth, int(n_phases), step, probe_fwhm, dose)
    if isinstance(random_state, (int, np.integer)):
        simulation["random_state"] = int(random_state)
    metadata = {
        "General": {"title": "Simulated precipitates in an amorphous matrix"},
        "Signal": {"signal_type": "4D-STEM"},
        "Acquisition_instrument": {
            "TEM": {
                "beam_energy": _BEAM_ENERGY_KEV,
                "convergence_angle": float(truth["convergence_angle_rad"] * 1e3),
            }
        },
        "Simulation": simulation,
    }
    s = STEM4D(data, axes=axes, metadata=metadata)
    if lazy:
        s = s.as_lazy()
        s.data = s.data.rechunk(_nav_chunks((ny, nx), (qy, qx), dtype.itemsize))
    return s
