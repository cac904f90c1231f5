"""Numerical core of the simulated precipitate 4D-STEM dataset (numpy only).

The model is the linear mixing model the constrained NMF is built on:

.. math:: X(y, x, k_y, k_x) = \\sum_c C_c(y, x) \\, S_c(k_y, k_x) + \\text{noise}

with one amorphous-matrix component (direct beam, two diffuse halos and a
smooth background) and one component per crystalline grain (the grain's Bragg
spots only). Maps are in counts, patterns have unit sum, the noise is Poisson.

Nothing here imports HyperSpy, dask or scipy: arrays in, arrays out. The
HyperSpy wrapper lives in :mod:`hyperspy_cnmf.data`.

Coordinate conventions
----------------------
- Navigation: pixel ``(iy, ix)`` sits at ``(y, x) = (iy, ix) * scan_step`` nm.
- Detector: pixel ``(row, col)`` sits at
  ``(k_y, k_x) = ((row, col) - centre_px) * k_scale`` 1/nm; the direct beam is
  at ``centre_px`` (row, column), i.e. at ``k = 0``.
- Rotations: a grain rotated by ``theta`` carries the spot
  ``R(theta) g`` with ``R = [[cos, -sin], [sin, cos]]`` acting on
  ``(k_x, k_y)``: counter-clockwise in the ``(k_x, k_y)`` frame, i.e.
  clockwise on screen when ``k_y`` (rows) increases downwards.
"""

import numpy as np

from hyperspy_cnmf.constraints import AIRY_FWHM, electron_wavelength

__all__ = [
    "electron_wavelength",
    "convergence_angle",
    "reciprocal_scale",
    "lattice_spots",
    "render_matrix_pattern",
    "render_bragg_pattern",
    "simulate_precipitates",
    "PHASE_NAMES",
]

#: FWHM = _FWHM_PER_SIGMA * sigma for a Gaussian.
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

#: Half width (1/nm) of the reciprocal field of view across the smaller
#: detector side; 48 px -> 0.4 1/nm per pixel.
K_HALF_FIELD = 9.6
#: Largest allowed disk radius alpha / lambda (1/nm): half the shortest |g|.
MAX_DISK_RADIUS = 1.5
#: Gaussian sigma (detector pixels) of the soft edge of every disk.
EDGE_SIGMA_PX = 0.5

#: First and second amorphous halos: (radius, Gaussian sigma) in 1/nm.
HALO_1 = (4.0, 0.35)
HALO_2 = (6.9, 0.5)
#: e-folding length (1/nm) of the smooth diffuse background.
BACKGROUND_DECAY = 2.0
#: Fractions of the matrix pattern's counts: beam, halo 1, halo 2, background.
MATRIX_WEIGHTS = (0.40, 0.25, 0.10, 0.25)
#: Fraction of the counts that a grain's Bragg spots take from the matrix at
#: the grain's thickest point (the map grows as thickness squared).
GRAIN_FRACTION = 0.3
#: Bragg spot intensity ~ exp(-(|g| / SPOT_DECAY)^2) (Debye-Waller-like).
SPOT_DECAY = 5.0

_HEX_G = 3.7
_SQUARE_G = 4.3
#: Phase 0 is the amorphous matrix; phases 1.. are crystalline.
PHASE_NAMES = ("amorphous", "hexagonal", "square", "rectangular")
#: Reciprocal basis vectors (g1, g2) in 1/nm, as (g_x, g_y), of phases 1..3.
#: Rotational symmetry period (degrees) of each phase's pattern.
_PHASE_PERIOD_DEG = (60.0, 90.0, 180.0)
#: Smallest difference (degrees, modulo the symmetry) between the rotations of
#: two grains of one phase, so that every grain has its own pattern.
MIN_ROTATION_DIFFERENCE_DEG = 12.0

_PHASE_BASES = (
    ((_HEX_G, 0.0), (0.5 * _HEX_G, 0.5 * np.sqrt(3.0) * _HEX_G)),  # 6-fold
    ((_SQUARE_G, 0.0), (0.0, _SQUARE_G)),  # 4-fold
    ((3.0, 0.0), (0.0, 5.2)),  # 2-fold
)


# --------------------------------------------------------------------------
# Physics helpers
# --------------------------------------------------------------------------
def convergence_angle(probe_fwhm_nm, energy_kev=200.0):
    """Convergence semi-angle of a diffraction-limited probe.

    Uses ``d = 0.514 lambda / alpha`` for the probe FWHM ``d``.

    Parameters
    ----------
    probe_fwhm_nm : float
        Probe FWHM in nm.
    energy_kev : float, default 200.0
        Beam energy in keV.

    Returns
    -------
    float
        Convergence semi-angle in rad.
    """
    return AIRY_FWHM * electron_wavelength(energy_kev) / float(probe_fwhm_nm)


def reciprocal_scale(detector_shape):
    """Reciprocal-space sampling (1/nm per detector pixel).

    The reciprocal field of view is fixed (``±K_HALF_FIELD`` across the smaller
    detector side), so larger detectors sample it more finely and the halos
    and Bragg spots stay at the same relative place.

    Parameters
    ----------
    detector_shape : tuple of int
        ``(qy, qx)``.

    Returns
    -------
    float
    """
    return 2.0 * K_HALF_FIELD / min(detector_shape)


def lattice_spots(phase, g_max):
    """Reciprocal lattice vectors and intensities of a crystalline phase.

    Parameters
    ----------
    phase : int
        1 (hexagonal, 6-fold), 2 (square, 4-fold) or 3 (rectangular, 2-fold).
    g_max : float
        Keep spots with ``0 < |g| <= g_max`` (1/nm). Friedel pairs ``±g``
        are always both included.

    Returns
    -------
    g : ndarray, shape (n, 2)
        Spot positions ``(g_x, g_y)`` in 1/nm, unrotated.
    intensity : ndarray, shape (n,)
        Relative spot intensities, ``exp(-(|g| / SPOT_DECAY)^2)``.
    """
    if phase not in (1, 2, 3):
        raise ValueError(f"phase must be 1, 2 or 3, got {phase}")
    b1, b2 = (np.asarray(b, dtype=float) for b in _PHASE_BASES[phase - 1])
    n = int(np.ceil(g_max / min(np.linalg.norm(b1), np.linalg.norm(b2)))) + 2
    h, k = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    g = h.reshape(-1, 1) * b1 + k.reshape(-1, 1) * b2
    norm = np.linalg.norm(g, axis=1)
    keep = (norm > 1e-9) & (norm <= g_max + 1e-9)
    g, norm = g[keep], norm[keep]
    order = np.lexsort((np.arctan2(g[:, 1], g[:, 0]), np.round(norm, 9)))
    g, norm = g[order], norm[order]
    return g, np.exp(-((norm / SPOT_DECAY) ** 2))


def _rotation_matrix(theta_deg):
    t = np.deg2rad(theta_deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s], [s, c]])


# --------------------------------------------------------------------------
# Image helpers
# --------------------------------------------------------------------------
def _gaussian_kernel_1d(sigma, truncate=4.0):
    radius = max(1, int(np.ceil(truncate * sigma)))
    x = np.arange(-radius, radius + 1, dtype=float)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _blur_separable(image, sigma):
    """Gaussian blur with zero padding (separable direct convolution)."""
    if sigma <= 0:
        return image.copy()
    w = _gaussian_kernel_1d(sigma)
    r = w.size // 2
    out = image
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(out, pad)
        n = out.shape[axis]
        acc = np.zeros_like(out, dtype=float)
        for i, wi in enumerate(w):
            sl = [slice(None), slice(None)]
            sl[axis] = slice(i, i + n)
            acc += wi * p[tuple(sl)]
        out = acc
    return out


def _blur_fft(images, sigma):
    """Periodic Gaussian blur of the last two axes via FFT (sum preserving)."""
    images = np.asarray(images, dtype=float)
    if sigma <= 0:
        return images.copy()
    ny, nx = images.shape[-2:]
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.rfftfreq(nx)[None, :]
    transfer = np.exp(-2.0 * np.pi**2 * sigma**2 * (fy**2 + fx**2))
    out = np.fft.irfft2(np.fft.rfft2(images) * transfer, s=(ny, nx))
    return out


def _soft_disks(shape, centres, radius_px, weights, oversample=8):
    """Sum of soft-edged disks, each of total intensity ``weights[i]``.

    Every disk is the pixel-area coverage of a hard disk of ``radius_px``
    (``oversample`` x ``oversample`` sub-samples per pixel), convolved with a
    Gaussian of sigma ``EDGE_SIGMA_PX``.

    Parameters
    ----------
    shape : tuple of int
        ``(qy, qx)``.
    centres : ndarray, shape (n, 2)
        Disk centres as (row, column), sub-pixel.
    radius_px : float
    weights : ndarray, shape (n,)
    """
    img = np.zeros(shape, dtype=float)
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    half = int(np.ceil(radius_px)) + 1
    for (cr, cc), wgt in zip(np.atleast_2d(centres), np.atleast_1d(weights)):
        r0, c0 = int(np.floor(cr)) - half, int(np.floor(cc)) - half
        rows = np.arange(r0, r0 + 2 * half + 2)
        cols = np.arange(c0, c0 + 2 * half + 2)
        dy = rows[:, None, None, None] + sub[None, None, :, None] - cr
        dx = cols[None, :, None, None] + sub[None, None, None, :] - cc
        cover = ((dy**2 + dx**2) <= radius_px**2).mean(axis=(2, 3))
        if cover.sum() == 0:  # pragma: no cover - radius_px >= 1 guarantees > 0
            continue
        cover *= wgt / cover.sum()
        rin = (rows >= 0) & (rows < shape[0])
        cin = (cols >= 0) & (cols < shape[1])
        img[np.ix_(rows[rin], cols[cin])] += cover[np.ix_(rin, cin)]
    return _blur_separable(img, EDGE_SIGMA_PX)


def _k_grid(shape, centre_px, k_scale):
    rows = (np.arange(shape[0]) - centre_px[0]) * k_scale
    cols = (np.arange(shape[1]) - centre_px[1]) * k_scale
    return np.hypot(rows[:, None], cols[None, :])


def _spot_g_max(shape, centre_px, k_scale, radius_px):
    """Largest |g| whose soft disk stays inside the detector."""
    room_px = min(
        centre_px[0],
        shape[0] - 1 - centre_px[0],
        centre_px[1],
        shape[1] - 1 - centre_px[1],
    )
    return (room_px - radius_px - 4.0 * EDGE_SIGMA_PX) * k_scale


# --------------------------------------------------------------------------
# Patterns
# --------------------------------------------------------------------------
def render_matrix_pattern(shape, centre_px, k_scale, radius_px):
    """Diffraction pattern of the amorphous matrix (unit sum).

    Direct-beam disk + two Gaussian halo rings (``HALO_1``, ``HALO_2``) + an
    exponentially decaying diffuse background, mixed with ``MATRIX_WEIGHTS``.

    Parameters
    ----------
    shape : tuple of int
        ``(qy, qx)``.
    centre_px : tuple of float
        Direct beam position (row, column).
    k_scale : float
        1/nm per detector pixel.
    radius_px : float
        Drawn radius of the direct-beam disk (pixels).

    Returns
    -------
    ndarray, shape (qy, qx)
    """
    k = _k_grid(shape, centre_px, k_scale)
    beam = _soft_disks(shape, np.array([centre_px], dtype=float), radius_px, [1.0])
    parts = [beam]
    for k0, sig in (HALO_1, HALO_2):
        parts.append(np.exp(-0.5 * ((k - k0) / sig) ** 2))
    parts.append(np.exp(-k / BACKGROUND_DECAY))
    pattern = sum(w * p / p.sum() for w, p in zip(MATRIX_WEIGHTS, parts))
    return pattern / pattern.sum()


def _distinct_rotations(rng, phases):
    """Random in-plane rotations, distinct within each phase modulo its symmetry.

    Two grains of one phase whose rotations agree modulo the pattern's
    symmetry have the same pattern and cannot be told apart by any
    factorization; rotations are redrawn until every pair of grains of one
    phase differs by at least ``MIN_ROTATION_DIFFERENCE_DEG``.
    """
    rotations = np.empty(len(phases))
    for i, phase in enumerate(phases):
        period = _PHASE_PERIOD_DEG[phase - 1]
        for _ in range(1000):
            theta = rng.uniform(0.0, 360.0)
            ok = True
            for j in range(i):
                if phases[j] == phase:
                    d = abs(theta - rotations[j]) % period
                    if min(d, period - d) < MIN_ROTATION_DIFFERENCE_DEG:
                        ok = False
                        break
            if ok:
                break
        rotations[i] = theta
    return rotations


def render_bragg_pattern(shape, centre_px, k_scale, radius_px, phase, rotation_deg):
    """Bragg-spot pattern (no direct beam) of one grain (unit sum).

    Parameters
    ----------
    shape : tuple of int
        ``(qy, qx)``.
    centre_px : tuple of float
        Direct beam position (row, column).
    k_scale : float
        1/nm per detector pixel.
    radius_px : float
        Drawn disk radius (pixels), the same as the direct beam's.
    phase : int
        Crystalline phase, 1..3 (see ``PHASE_NAMES``).
    rotation_deg : float
        In-plane rotation (degrees, counter-clockwise in ``(k_x, k_y)``).

    Returns
    -------
    ndarray, shape (qy, qx)
    """
    g_max = _spot_g_max(shape, centre_px, k_scale, radius_px)
    g, intensity = lattice_spots(phase, g_max)
    if g.shape[0] == 0:
        raise ValueError(
            "the detector is too small to hold any Bragg spot; "
            "use a larger detector_shape"
        )
    gr = g @ _rotation_matrix(rotation_deg).T  # (g_x, g_y)
    centres = np.column_stack(
        [centre_px[0] + gr[:, 1] / k_scale, centre_px[1] + gr[:, 0] / k_scale]
    )
    pattern = _soft_disks(shape, centres, radius_px, intensity)
    return pattern / pattern.sum()


# --------------------------------------------------------------------------
# Maps
# --------------------------------------------------------------------------
def _place_grains(rng, scan_shape, scan_step, diameters, margin, gap, restarts=100):
    """Random non-overlapping grain centres (nm), largest grain first."""
    ext_y = (scan_shape[0] - 1) * scan_step
    ext_x = (scan_shape[1] - 1) * scan_step
    radii = 0.5 * np.asarray(diameters)
    order = np.argsort(-radii, kind="stable")
    n_try = 512
    for _ in range(restarts):
        centres = np.full((radii.size, 2), np.nan)
        ok = True
        for i in order:
            lo = radii[i] + margin
            cand = np.column_stack(
                [
                    rng.uniform(lo, ext_y - lo, n_try),
                    rng.uniform(lo, ext_x - lo, n_try),
                ]
            )
            placed = ~np.isnan(centres[:, 0])
            if placed.any():
                d = np.linalg.norm(cand[:, None, :] - centres[None, placed, :], axis=2)
                good = np.all(d >= radii[i] + radii[placed][None, :] + gap, axis=1)
            else:
                good = np.ones(n_try, dtype=bool)
            if not good.any():
                ok = False
                break
            centres[i] = cand[np.argmax(good)]
        if ok:
            return centres
    raise ValueError(
        f"could not place {radii.size} non-overlapping grains of diameter "
        f"~{np.mean(diameters):.3g} nm in a {ext_y:.3g} x {ext_x:.3g} nm field; "
        "use fewer or smaller grains or a larger scan_shape/scan_step"
    )


def _thickness_maps(scan_shape, scan_step, centres, diameters):
    """Projected-thickness profiles sqrt(1 - (r/R)^2), one per grain."""
    y = np.arange(scan_shape[0]) * scan_step
    x = np.arange(scan_shape[1]) * scan_step
    maps = np.empty((len(diameters), *scan_shape))
    for i, ((cy, cx), dia) in enumerate(zip(centres, diameters)):
        r2 = ((y[:, None] - cy) ** 2 + (x[None, :] - cx) ** 2) / (0.5 * dia) ** 2
        maps[i] = np.sqrt(np.clip(1.0 - r2, 0.0, None))
    return maps


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------
def _check_shape(name, value, minimum):
    try:
        shape = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"{name} must be a pair of integers, got {value!r}") from None
    if len(shape) != 2 or any(int(v) != v for v in value):
        raise ValueError(f"{name} must be a pair of integers, got {value!r}")
    if min(shape) < minimum:
        raise ValueError(f"{name} must be at least {minimum} x {minimum}, got {shape}")
    return shape


def _check_positive(name, value):
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return value


def _check_counts(n_grains, n_phases):
    """``(n_grains, n_phases)`` as integers, checked against each other."""
    if int(n_phases) != n_phases or int(n_phases) not in (1, 2, 3):
        raise ValueError(f"n_phases must be 1, 2 or 3, got {n_phases}")
    n_phases = int(n_phases)
    if int(n_grains) != n_grains or n_grains < 1:
        raise ValueError(f"n_grains must be a positive integer, got {n_grains}")
    n_grains = int(n_grains)
    if n_phases > n_grains:
        raise ValueError(
            f"n_phases ({n_phases}) must not exceed n_grains ({n_grains}): "
            "every phase needs at least one grain"
        )
    return n_grains, n_phases


def _check_field(scan_shape, scan_step, grain_diameter, margin):
    """Refuse a field too small for the largest grain and its margins."""
    ext = min(scan_shape) - 1
    if 1.2 * grain_diameter + 2 * margin > ext * scan_step:
        raise ValueError(
            f"grains of diameter up to {1.2 * grain_diameter:.3g} nm (+ margin "
            f"{margin:.3g} nm each side) cannot fit in the "
            f"{ext * scan_step:.3g} nm wide field; reduce grain_diameter or "
            "increase scan_shape/scan_step"
        )


def _detector(detector_shape, probe_fwhm, beam_energy):
    """Detector calibration and disk radius (dict), refusing disks that overlap the beam."""
    k_scale = reciprocal_scale(detector_shape)
    wavelength = electron_wavelength(beam_energy)
    alpha = convergence_angle(probe_fwhm, beam_energy)
    radius_unclamped_px = alpha / wavelength / k_scale
    if alpha / wavelength > MAX_DISK_RADIUS:
        raise ValueError(
            f"probe_fwhm={probe_fwhm} nm gives diffraction disks of radius "
            f"{alpha / wavelength:.3g} 1/nm > {MAX_DISK_RADIUS} 1/nm: the Bragg "
            "disks would overlap the direct beam; use a larger probe_fwhm"
        )
    return {
        "k_scale": k_scale,
        "centre_px": (float(detector_shape[0] // 2), float(detector_shape[1] // 2)),
        "wavelength": wavelength,
        "alpha": alpha,
        "radius_unclamped_px": radius_unclamped_px,
        "radius_px": max(radius_unclamped_px, 1.0),
    }


def _component_maps(thickness, probe_fwhm, scan_step, dose):
    """Maps in counts: matrix first, then the probe-blurred grains' thickness^2 (kinematic)."""
    sigma_scan = probe_fwhm / scan_step / _FWHM_PER_SIGMA
    grain_maps = np.clip(_blur_fft(GRAIN_FRACTION * thickness**2, sigma_scan), 0, None)
    matrix_map = 1.0 - grain_maps.sum(axis=0)
    return dose * np.concatenate([matrix_map[None], grain_maps], axis=0)


def _component_patterns(
    detector_shape, centre_px, k_scale, radius_px, phases, rotations, n_phases
):
    """Unit-sum patterns (matrix, then one per grain) and each phase's unrotated reference."""
    patterns = np.empty((len(phases) + 1, *detector_shape))
    patterns[0] = render_matrix_pattern(detector_shape, centre_px, k_scale, radius_px)
    for i in range(len(phases)):
        patterns[i + 1] = render_bragg_pattern(
            detector_shape, centre_px, k_scale, radius_px, phases[i], rotations[i]
        )
    reference = np.stack(
        [
            render_bragg_pattern(detector_shape, centre_px, k_scale, radius_px, p, 0.0)
            for p in range(1, n_phases + 1)
        ]
    )
    return patterns, reference


def _dominant_grain(thickness, phases):
    """Grain and phase maps of the grain whose projected disk holds the probe centre."""
    # The thickest one where disks overlap: the geometric convention of the
    # multislice test cases.
    above = thickness > 0
    dominant = np.argmax(np.where(above, thickness, -np.inf), axis=0)
    has_grain = above.any(axis=0)
    grain_map = np.where(has_grain, dominant + 1, 0).astype(np.int64)
    phase_map = np.where(has_grain, phases[dominant], 0).astype(np.int64)
    return grain_map, phase_map


def simulate_precipitates(
    scan_shape=(48, 48),
    detector_shape=(48, 48),
    n_grains=6,
    n_phases=2,
    scan_step=0.5,
    probe_fwhm=1.5,
    grain_diameter=6.0,
    dose=2000.0,
    beam_energy=200.0,
    random_state=0,
    noise=True,
):
    """Simulate crystalline precipitates in an amorphous matrix (arrays only).

    See :func:`hyperspy_cnmf.data.simulated_precipitates` for the physics and
    the parameters; this function returns plain numpy arrays.

    Returns
    -------
    dict
        ``data`` (ny, nx, qy, qx) float64 (Poisson counts, or the expectation
        when ``noise=False``) and the ground truth: ``maps``, ``patterns``,
        ``phase_of_component``, ``rotation_deg``, ``phase_map``,
        ``grain_map``, ``reference_patterns``, ``grain_centres_nm``,
        ``grain_diameters_nm``, ``k_scale``, ``centre_px``, ``radius_px``,
        ``radius_unclamped_px``, ``convergence_angle_rad``, ``wavelength_nm``.
    """
    scan_shape = _check_shape("scan_shape", scan_shape, 4)
    detector_shape = _check_shape("detector_shape", detector_shape, 16)
    scan_step = _check_positive("scan_step", scan_step)
    probe_fwhm = _check_positive("probe_fwhm", probe_fwhm)
    grain_diameter = _check_positive("grain_diameter", grain_diameter)
    dose = _check_positive("dose", dose)
    beam_energy = _check_positive("beam_energy", beam_energy)
    n_grains, n_phases = _check_counts(n_grains, n_phases)
    # Field geometry: grains (up to 1.2 x grain_diameter) must fit with margin.
    margin = gap = 0.5 * probe_fwhm
    _check_field(scan_shape, scan_step, grain_diameter, margin)
    rng = np.random.default_rng(random_state)
    det = _detector(detector_shape, probe_fwhm, beam_energy)
    k_scale, centre_px, radius_px = det["k_scale"], det["centre_px"], det["radius_px"]

    # Grains: phases (each used once at least), sizes, positions, rotations.
    phases = np.concatenate(
        [np.arange(1, n_phases + 1), rng.integers(1, n_phases + 1, n_grains - n_phases)]
    )
    phases = rng.permutation(phases)
    diameters = grain_diameter * rng.uniform(0.8, 1.2, n_grains)
    centres = _place_grains(rng, scan_shape, scan_step, diameters, margin, gap)
    rotations = _distinct_rotations(rng, phases)

    thickness = _thickness_maps(scan_shape, scan_step, centres, diameters)
    maps = _component_maps(thickness, probe_fwhm, scan_step, dose)
    patterns, reference = _component_patterns(
        detector_shape, centre_px, k_scale, radius_px, phases, rotations, n_phases
    )
    grain_map, phase_map = _dominant_grain(thickness, phases)
    expected = np.einsum("cyx,cqp->yxqp", maps, patterns)
    data = rng.poisson(expected).astype(float) if noise else expected

    return {
        "data": data,
        "maps": maps,
        "patterns": patterns,
        "phase_of_component": np.concatenate([[0], phases]).astype(np.int64),
        "rotation_deg": np.concatenate([[0.0], rotations]),
        "phase_map": phase_map,
        "grain_map": grain_map,
        "reference_patterns": reference,
        "grain_centres_nm": centres,
        "grain_diameters_nm": diameters,
        "k_scale": k_scale,
        "centre_px": np.asarray(centre_px),
        "radius_px": radius_px,
        "radius_unclamped_px": det["radius_unclamped_px"],
        "convergence_angle_rad": det["alpha"],
        "wavelength_nm": det["wavelength"],
    }
