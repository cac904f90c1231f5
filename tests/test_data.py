"""Tests of hyperspy_cnmf.data: the simulated precipitate dataset."""

import hyperspy.api as hs
import numpy as np
import pytest

from hyperspy_cnmf.data import electron_wavelength, simulated_precipitates
from hyperspy_cnmf.data._simulate import render_bragg_pattern
from hyperspy_cnmf.signals import STEM4D, LazySTEM4D

SMALL = dict(
    scan_shape=(24, 20),
    detector_shape=(32, 32),
    n_grains=3,
    n_phases=3,
    grain_diameter=3.0,
    dose=500.0,
)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def _rotate(img, theta_deg, centre):
    """``out(k) = img(R(theta) k)`` by bilinear interpolation about ``centre``.

    ``R`` acts on ``(kx, ky)`` = (column, row) offsets, so this undoes a
    rotation by ``theta`` in the convention of ``rotation_deg``.
    """
    t = np.deg2rad(theta_deg)
    c, s = np.cos(t), np.sin(t)
    rows, cols = np.indices(img.shape, dtype=float)
    kx, ky = cols - centre[1], rows - centre[0]
    sx = c * kx - s * ky + centre[1]
    sy = s * kx + c * ky + centre[0]
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = sx - x0, sy - y0
    out = np.zeros(img.shape)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            ok = (yy >= 0) & (yy < img.shape[0]) & (xx >= 0) & (xx < img.shape[1])
            out[ok] += (wy * wx)[ok] * img[yy[ok], xx[ok]]
    return out


def _smooth(img, sigma=1.0):
    """Separable Gaussian smoothing (zero padding), to hide interpolation error."""
    x = np.arange(-4, 5, dtype=float)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    img = np.apply_along_axis(np.convolve, 0, img, w, mode="same")
    return np.apply_along_axis(np.convolve, 1, img, w, mode="same")


def _cosine(a, b):
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def _model(truth):
    return np.einsum("cyx,cqp->yxqp", truth.maps, truth.patterns)


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default():
    return simulated_precipitates()


@pytest.fixture(scope="module")
def small():
    return simulated_precipitates(**SMALL, random_state=3)


@pytest.fixture(scope="module")
def clean():
    return simulated_precipitates(**SMALL, random_state=3, noise=False)


# --------------------------------------------------------------------------
# Shapes, class, dtype, calibration, metadata
# --------------------------------------------------------------------------
def test_default_shapes_class_dtype(default):
    s = default
    assert type(s) is STEM4D
    assert s.data.shape == (48, 48, 48, 48)
    assert s.data.dtype == np.float32
    assert s.metadata.Signal.signal_type == "4D-STEM"
    assert s.metadata.General.title
    t = s.metadata.Simulation
    assert t.n_components == 7
    assert t.maps.shape == (7, 48, 48)
    assert t.patterns.shape == (7, 48, 48)
    assert t.reference_patterns.shape == (2, 48, 48)
    assert t.phase_of_component.shape == (7,)
    assert t.phase_of_component[0] == 0
    assert set(t.phase_of_component[1:]) == {1, 2}
    assert t.rotation_deg[0] == 0
    assert t.phase_names == "amorphous,hexagonal,square"
    assert t.phase_map.shape == t.grain_map.shape == (48, 48)
    assert np.issubdtype(t.phase_map.dtype, np.integer)
    # Poisson counts stored as floats.
    assert np.all(s.data >= 0)
    assert np.array_equal(s.data, np.round(s.data))


def test_axes_calibration(default):
    am = default.axes_manager
    for ax, name in zip(am.navigation_axes, ("x", "y")):
        assert ax.name == name
        assert ax.units == "nm"
        assert ax.scale == pytest.approx(0.5)
        assert ax.offset == 0
    t = default.metadata.Simulation
    for ax, name, c in zip(am.signal_axes, ("kx", "ky"), t.centre_px[::-1]):
        assert ax.name == name
        assert ax.units == "1/nm"
        assert ax.scale == pytest.approx(t.reciprocal_scale_inv_nm)
        assert ax.offset == pytest.approx(-c * ax.scale)
        # The detector spans about +-9.6 1/nm: halos and spots inside.
        assert ax.axis[0] == pytest.approx(-9.6)
        assert ax.axis[-1] > 9.0


def test_direct_beam_at_calibrated_origin(default):
    mean = default.data.mean(axis=(0, 1))
    kx_ax, ky_ax = default.axes_manager.signal_axes
    iy, ix = np.unravel_index(np.argmax(mean), mean.shape)
    win = mean[iy - 2 : iy + 3, ix - 2 : ix + 3]
    cy = (win.sum(axis=1) * ky_ax.axis[iy - 2 : iy + 3]).sum() / win.sum()
    cx = (win.sum(axis=0) * kx_ax.axis[ix - 2 : ix + 3]).sum() / win.sum()
    assert abs(cx) < 0.5 * kx_ax.scale
    assert abs(cy) < 0.5 * ky_ax.scale


def test_beam_metadata_and_wavelength(default):
    assert electron_wavelength(200) == pytest.approx(2.508e-3, rel=2e-4)
    assert electron_wavelength(300) == pytest.approx(1.969e-3, rel=2e-4)
    tem = default.metadata.Acquisition_instrument.TEM
    assert tem.beam_energy == 200
    alpha = 0.514 * electron_wavelength(200) / 1.5
    assert tem.convergence_angle == pytest.approx(alpha * 1e3)
    t = default.metadata.Simulation
    assert t.probe_fwhm_nm == 1.5
    assert t.scan_step_nm == 0.5
    assert t.beam_disk_radius_physical_inv_nm == pytest.approx(0.514 / 1.5)
    # 0.343 1/nm < 1 px (0.4 1/nm): the drawn disk is clamped to 1 px.
    assert t.beam_disk_radius_px == 1.0
    assert t.beam_disk_radius_inv_nm == pytest.approx(t.reciprocal_scale_inv_nm)


def test_disk_radius_matches_convergence_angle():
    s = simulated_precipitates(
        scan_shape=(12, 12),
        detector_shape=(128, 128),
        n_grains=1,
        n_phases=1,
        probe_fwhm=0.8,
        grain_diameter=2.0,
        noise=False,
    )
    t = s.metadata.Simulation
    assert t.beam_disk_radius_inv_nm == pytest.approx(0.514 / 0.8)
    r_px = t.beam_disk_radius_px
    assert r_px > 4
    beam = t.patterns[0]
    cy, cx = (int(c) for c in t.centre_px)
    win = beam[cy - 10 : cy + 11, cx - 10 : cx + 11]
    # The halos and background are flat and faint under the disk: the
    # half-maximum area of the soft disk is its geometric area.
    plateau = win.max()
    floor = np.median(beam[cy - 12 : cy + 13, cx + 10 : cx + 13])
    n_half = np.count_nonzero(win - floor > 0.5 * (plateau - floor))
    assert np.sqrt(n_half / np.pi) == pytest.approx(r_px, abs=0.3)
    # Bragg disks have the same radius (the brightest spot of the grain).
    spots = t.patterns[1]
    iy, ix = np.unravel_index(np.argmax(spots), spots.shape)
    win = spots[iy - 10 : iy + 11, ix - 10 : ix + 11]
    n_half = np.count_nonzero(win > 0.5 * win.max())
    assert np.sqrt(n_half / np.pi) == pytest.approx(r_px, abs=0.3)


@pytest.mark.parametrize("detector", [48, 96])
def test_halo_radii_scale_with_detector(detector):
    s = simulated_precipitates(
        scan_shape=(12, 12),
        detector_shape=(detector, detector),
        n_grains=1,
        n_phases=1,
        grain_diameter=2.0,
        noise=False,
    )
    t = s.metadata.Simulation
    scale = t.reciprocal_scale_inv_nm
    assert scale == pytest.approx(19.2 / detector)
    rows, cols = np.indices(t.patterns[0].shape)
    k = np.hypot(rows - t.centre_px[0], cols - t.centre_px[1]) * scale
    for k0 in t.halo_radii_inv_nm:
        # Radial profile: a local maximum within 0.5 1/nm of each halo.
        shells = np.arange(k0 - 1.5, k0 + 1.5, scale)
        prof = [t.patterns[0][(k >= a) & (k < a + scale)].mean() for a in shells]
        assert abs(shells[int(np.argmax(prof))] + 0.5 * scale - k0) < 0.5


def test_lazy_equal_values(small):
    s = simulated_precipitates(**SMALL, random_state=3, lazy=True)
    assert type(s) is LazySTEM4D
    assert s._lazy
    assert s.data.dtype == np.float32
    assert s.data.chunks[2:] == ((32,), (32,))
    np.testing.assert_array_equal(s.data.compute(), small.data)
    np.testing.assert_array_equal(
        s.metadata.Simulation.maps, small.metadata.Simulation.maps
    )
    assert (
        s.axes_manager.signal_axes[0].offset == small.axes_manager.signal_axes[0].offset
    )


def test_dtype_option():
    s = simulated_precipitates(**SMALL, dtype="float64")
    assert s.data.dtype == np.float64


# --------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------
def test_determinism(small):
    again = simulated_precipitates(**SMALL, random_state=3)
    np.testing.assert_array_equal(again.data, small.data)
    np.testing.assert_array_equal(
        again.metadata.Simulation.maps, small.metadata.Simulation.maps
    )
    other = simulated_precipitates(**SMALL, random_state=4)
    assert not np.array_equal(other.data, small.data)
    assert not np.allclose(
        other.metadata.Simulation.maps, small.metadata.Simulation.maps
    )


def test_noise_does_not_change_the_truth(small, clean):
    for key in ("maps", "patterns", "rotation_deg", "phase_of_component", "phase_map"):
        np.testing.assert_array_equal(
            small.metadata.Simulation[key], clean.metadata.Simulation[key]
        )


# --------------------------------------------------------------------------
# The linear mixing model and the noise
# --------------------------------------------------------------------------
def test_clean_model_is_sum_of_map_times_pattern(clean):
    t = clean.metadata.Simulation
    np.testing.assert_allclose(clean.data, _model(t), rtol=1e-5, atol=1e-4)
    assert np.all(t.maps >= 0) and np.all(t.patterns >= 0)
    np.testing.assert_allclose(t.patterns.sum(axis=(1, 2)), 1.0, rtol=1e-10)
    np.testing.assert_allclose(t.reference_patterns.sum(axis=(1, 2)), 1.0, rtol=1e-10)
    # Expected counts per probe position = dose, everywhere.
    np.testing.assert_allclose(t.maps.sum(axis=0), t.dose, rtol=1e-9)
    np.testing.assert_allclose(clean.data.sum(axis=(2, 3)), t.dose, rtol=1e-4)
    # The matrix map is ~1 x dose, reduced by ~30 % in the grain centres.
    rel = t.maps[0] / t.dose
    assert rel.max() == pytest.approx(1.0, abs=1e-6)
    assert 0.6 < rel.min() < 0.8


def test_bragg_patterns_have_no_direct_beam(clean):
    t = clean.metadata.Simulation
    cy, cx = (int(c) for c in t.centre_px)
    beam = t.patterns[0][cy - 1 : cy + 2, cx - 1 : cx + 2].sum()
    assert beam > 0.2
    rows, cols = np.indices(t.patterns.shape[1:])
    near_beam = np.hypot(rows - cy, cols - cx) * t.reciprocal_scale_inv_nm < 1.2
    for p in t.patterns[1:]:
        assert p[near_beam].sum() < 1e-12
        # Friedel pairs: centrosymmetric about the direct beam.
        np.testing.assert_allclose(p[1:, 1:], p[1:, 1:][::-1, ::-1], atol=1e-12)


def test_poisson_statistics(default):
    data = default.data.astype(float)
    model = _model(default.metadata.Simulation)
    # Mean: the total of 2304 x 2000 counts is within ~4 sigma of the model.
    assert abs(data.sum() - model.sum()) / model.sum() < 2e-3
    # Variance ~ mean, per intensity band.
    for lo, hi in ((0.5, 2.0), (2.0, 10.0), (10.0, np.inf)):
        sel = (model > lo) & (model <= hi)
        assert sel.sum() > 2e4
        z = (data[sel] - model[sel]) / np.sqrt(model[sel])
        assert abs(z.mean()) < 0.02
        assert z.var() == pytest.approx(1.0, abs=0.05)


# --------------------------------------------------------------------------
# Crystallography: rotated copies of a phase, distinct phases
# --------------------------------------------------------------------------
def test_grain_patterns_are_rotated_phase_references():
    s = simulated_precipitates(
        scan_shape=(32, 32),
        n_grains=5,
        n_phases=3,
        grain_diameter=4.0,
        noise=False,
        random_state=1,
    )
    t = s.metadata.Simulation
    shape = t.patterns.shape[1:]
    refs = [_smooth(r) for r in t.reference_patterns]
    angles = np.arange(0.0, 360.0, 2.0)
    for c in range(1, t.n_components):
        p = t.phase_of_component[c]
        theta = t.rotation_deg[c]
        # Exactly the reference rendered at the grain's rotation.
        np.testing.assert_allclose(
            t.patterns[c],
            render_bragg_pattern(
                shape,
                t.centre_px,
                t.reciprocal_scale_inv_nm,
                t.beam_disk_radius_px,
                p,
                theta,
            ),
            atol=1e-12,
        )
        # Rotating back gives the reference (up to interpolation error).
        back = _smooth(_rotate(t.patterns[c], theta, t.centre_px))
        assert _cosine(back, refs[p - 1]) >= 0.98
        # ... and no rotation makes it look like another phase.
        rotated = [_smooth(_rotate(t.patterns[c], a, t.centre_px)) for a in angles]
        for q in range(1, 4):
            if q != p:
                best = max(_cosine(r, refs[q - 1]) for r in rotated)
                assert best < 0.6


def test_phase_symmetries(clean):
    t = clean.metadata.Simulation
    centre = t.centre_px
    refs = t.reference_patterns
    for p, fold in ((1, 6), (2, 4), (3, 2)):
        ref = _smooth(refs[p - 1])
        assert _cosine(_smooth(_rotate(refs[p - 1], 360 / fold, centre)), ref) > 0.98
        if fold < 6:
            # Not a higher symmetry: rotating by half the angle changes it.
            half = _smooth(_rotate(refs[p - 1], 180 / fold, centre))
            assert _cosine(half, ref) < 0.8


# --------------------------------------------------------------------------
# Maps: phase map, geometry, spatial resolution
# --------------------------------------------------------------------------
def test_phase_map_consistent_with_maps(default):
    t = default.metadata.Simulation
    grains = t.maps[1:]
    # geometric: the probe position inside a grain's projected disk
    ny, nx = t.phase_map.shape
    yy, xx = np.indices((ny, nx)) * t.scan_step_nm
    disks = np.stack(
        [
            np.hypot(yy - cy, xx - cx) < d / 2
            for (cy, cx), d in zip(t.grain_centres_nm, t.grain_diameters_nm)
        ]
    )
    assert not np.any(disks.sum(axis=0) > 1)  # non-overlapping grains
    above = grains > 0.5 * grains.max(axis=(1, 2), keepdims=True)
    for c in range(1, t.n_components):
        mask = disks[c - 1]
        assert mask.sum() > 10 and np.all(
            mask[above[c - 1]]
        )  # the half-maximum lies inside
        assert np.all(t.phase_map[mask] == t.phase_of_component[c])
        assert np.all(t.grain_map[mask] == c)
    assert np.all(t.phase_map[~disks.any(axis=0)] == 0)
    assert np.all(t.grain_map[~disks.any(axis=0)] == 0)
    # Grains are disks of about grain_diameter (+-20 %) inside the field.
    d = t.grain_diameters_nm
    assert np.all((d >= 0.8 * 6.0) & (d <= 1.2 * 6.0))
    extent = 47 * 0.5
    c = t.grain_centres_nm
    assert np.all(c - 0.5 * d[:, None] >= 0) and np.all(c + 0.5 * d[:, None] <= extent)
    dist = np.linalg.norm(c[:, None] - c[None], axis=2)
    np.fill_diagonal(dist, np.inf)
    assert np.all(dist >= 0.5 * (d[:, None] + d[None]))
    # Bragg intensity ~ thickness^2 (kinematic): the half maximum of
    # 1 - (r/R)^2 is at r = 0.71 R (50 % of the disk area); the probe blur
    # lowers the peak and shrinks it a little more.
    ratio = above.sum(axis=(1, 2)) / (np.pi * (0.5 * d / 0.5) ** 2)
    assert np.all((ratio > 0.35) & (ratio < 0.6))


@pytest.mark.parametrize("probe_fwhm", [1.0, 2.0])
def test_maps_respect_probe_resolution(probe_fwhm):
    s = simulated_precipitates(
        scan_shape=(40, 40),
        detector_shape=(16, 16),
        n_grains=3,
        probe_fwhm=probe_fwhm,
        noise=False,
    )
    t = s.metadata.Simulation
    fy = np.fft.fftfreq(40, d=t.scan_step_nm)
    f = np.hypot(fy[:, None], fy[None, :])  # cycles per nm
    beyond = f > 1.0 / probe_fwhm
    for m in t.maps:
        power = np.abs(np.fft.fft2(m - m.mean())) ** 2
        assert power[beyond].sum() / power.sum() < 0.05


def test_every_phase_used():
    for seed in range(4):
        t = simulated_precipitates(
            scan_shape=(24, 24),
            detector_shape=(16, 16),
            n_grains=3,
            n_phases=3,
            grain_diameter=3.0,
            random_state=seed,
            noise=False,
        ).metadata.Simulation
        assert sorted(t.phase_of_component) == [0, 1, 2, 3]
        assert t.phase_names == "amorphous,hexagonal,square,rectangular"


# --------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------
def test_save_load_roundtrip(small, tmp_path):
    fname = tmp_path / "sim.hspy"
    small.save(fname)
    s2 = hs.load(fname)
    assert type(s2) is STEM4D
    np.testing.assert_array_equal(s2.data, small.data)
    t1, t2 = small.metadata.Simulation, s2.metadata.Simulation
    assert set(t1.keys()) == set(t2.keys())
    for key, value in t1:
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(t2[key], value)
        else:
            assert t2[key] == value
    tem = s2.metadata.Acquisition_instrument.TEM
    assert (
        tem.convergence_angle
        == small.metadata.Acquisition_instrument.TEM.convergence_angle
    )
    for a, b in zip(s2.axes_manager._axes, small.axes_manager._axes):
        assert (a.name, a.units, a.scale, a.offset) == (
            b.name,
            b.units,
            b.scale,
            b.offset,
        )


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_phases=4), "n_phases must be 1, 2 or 3"),
        (dict(n_phases=0), "n_phases must be 1, 2 or 3"),
        (dict(n_grains=2, n_phases=3), r"n_phases \(3\) must not exceed n_grains"),
        (dict(n_grains=0, n_phases=1), "n_grains must be a positive integer"),
        (dict(grain_diameter=30.0), "cannot fit"),
        (dict(n_grains=40), "could not place 40"),
        (dict(scan_step=0), "scan_step must be positive"),
        (dict(probe_fwhm=-1.0), "probe_fwhm must be positive"),
        (dict(grain_diameter=0.0), "grain_diameter must be positive"),
        (dict(dose=0.0), "dose must be positive"),
        (dict(scan_shape=(2, 48)), "scan_shape must be at least"),
        (dict(detector_shape=(48,)), "detector_shape must be a pair"),
        (dict(probe_fwhm=0.3), "Bragg disks would overlap"),
        (dict(dtype="int32"), "dtype must be a floating-point"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulated_precipitates(**kwargs)
