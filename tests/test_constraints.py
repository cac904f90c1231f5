"""The two domain constraints and their diagnostics (hyperspy_cnmf.constraints)."""

import numpy as np
import pytest

from hyperspy_cnmf.constraints import (
    DiffractionDipConstraint,
    MapResolutionConstraint,
    dip_measure,
    electron_wavelength,
    map_power_beyond,
    probe_fwhm_from_convergence,
)


def _blob_map(n=48, fwhm_px=6.0):
    """A grain disk blurred by a Gaussian probe of the given FWHM."""
    yy, xx = np.indices((n, n))
    disk = ((yy - 20) ** 2 + (xx - 25) ** 2 < 8**2).astype(float)
    f = np.sqrt(np.fft.fftfreq(n)[:, None] ** 2 + np.fft.fftfreq(n)[None, :] ** 2)
    sigma = fwhm_px / 2.3548
    return np.real(
        np.fft.ifft2(np.fft.fft2(disk) * np.exp(-2 * np.pi**2 * sigma**2 * f**2))
    )


def test_electron_wavelength_and_probe_size():
    assert electron_wavelength(200) == pytest.approx(2.5079e-3, rel=1e-4)
    assert electron_wavelength(300) == pytest.approx(1.9687e-3, rel=1e-4)
    # 0.514 lambda / alpha
    assert probe_fwhm_from_convergence(1.0, 200) == pytest.approx(
        0.514 * 2.5079e-3 / 1e-3, rel=1e-4
    )


@pytest.mark.parametrize("filt", ["tukey", "hard", "gaussian"])
def test_map_constraint_removes_power_beyond_the_resolution_circle(filt):
    rng = np.random.default_rng(0)
    n = 48
    noise = rng.random((n * n, 3))
    c = MapResolutionConstraint((n, n), resolution=4.0, filter=filt)
    out = c(noise)
    assert out.min() >= 0
    before = map_power_beyond(noise.T.reshape(3, n, n), 4.0)
    after = map_power_beyond(out.T.reshape(3, n, n), 4.0)
    assert np.all(before > 0.5)  # white noise: mostly outside the circle
    # The smooth filters leave < 2 %; the hard mask rings and the clipping of
    # its negative lobes puts back a few %.
    assert np.all(after < (0.1 if filt == "hard" else 0.02))


def test_map_constraint_keeps_detail_at_the_resolution_limit():
    m = _blob_map(fwhm_px=6.0)  # probe FWHM 6 px
    c = MapResolutionConstraint(m.shape, resolution=6.0)
    out = c(m.reshape(-1, 1)).reshape(m.shape)
    assert np.corrcoef(m.ravel(), out.ravel())[0, 1] > 0.999
    assert np.abs(out - m).max() < 0.02 * m.max()


def test_map_constraint_calibrated_and_anisotropic():
    c = MapResolutionConstraint((32, 64), resolution=1.0, scale=(0.5, 0.25))
    assert c.cutoff == 1.0
    # The cutoff 1/nm lies beyond neither Nyquist (1/(2*0.5) = 1, 1/(2*0.25) = 2) in x, inside in y
    assert c.active
    inactive = MapResolutionConstraint((32, 32), resolution=0.1, scale=(1.0, 1.0))
    assert not inactive.active
    with pytest.raises(ValueError, match="positive"):
        MapResolutionConstraint((8, 8), resolution=-1)
    with pytest.raises(ValueError, match="unknown map filter"):
        MapResolutionConstraint((8, 8), resolution=2, filter="box")


def _ring_pattern(n=64, with_spot=False, with_hole=False):
    yy, xx = np.indices((n, n)).astype(float)
    r = np.hypot(yy - 32, xx - 32)
    p = (
        5 * np.exp(-0.5 * (r / 1.2) ** 2)
        + np.exp(-0.5 * ((r - 14) / 2.0) ** 2)
        + 0.3 * np.exp(-r / 20)
    )
    spot = np.exp(-0.5 * ((yy - 18) ** 2 + (xx - 32) ** 2) / 0.8**2)
    if with_spot:
        p = p + 2 * spot
    if with_hole:
        p = p * (1 - 0.5 * spot)
    return p


def test_dip_constraint_fills_a_carved_hole_and_keeps_real_valleys():
    clean = _ring_pattern()
    holed = _ring_pattern(with_hole=True)
    c = DiffractionDipConstraint(clean.shape, radius=2, centre=(32, 32))
    out = c(holed.reshape(-1, 1)).reshape(clean.shape)
    # the hole (on the halo at (18, 32)) is filled back to within 5 % of the clean pattern
    assert out[18, 32] == pytest.approx(clean[18, 32], rel=0.05)
    assert holed[18, 32] < 0.6 * clean[18, 32]
    # the real radial valley between the direct beam and the halo is kept
    # (bilinear sampling of the circles changes it by ~1.3 % of the halo crest)
    same = c(clean.reshape(-1, 1)).reshape(clean.shape)
    assert np.abs(same - clean).max() < 0.02 * clean[18, 32]
    # the isotropic disk closing, by contrast, raises that valley
    iso = DiffractionDipConstraint(clean.shape, radius=3, mode="isotropic")
    raised = iso(clean.reshape(-1, 1)).reshape(clean.shape)
    assert (raised - clean).max() > 0.05 * clean[18, 32]


def test_dip_constraint_never_lowers_or_erases_bragg_spots():
    p = _ring_pattern(with_spot=True)
    c = DiffractionDipConstraint(p.shape, radius=2, centre=(32, 32))
    out = c(p.reshape(-1, 1)).reshape(p.shape)
    assert np.all(out >= p - 1e-12)
    assert out[18, 32] == pytest.approx(p[18, 32])
    # a pattern made of isolated Bragg spots only is unchanged
    yy, xx = np.indices((64, 64))
    spots = sum(
        np.exp(
            -0.5 * ((yy - 32 - 15 * np.sin(a)) ** 2 + (xx - 32 - 15 * np.cos(a)) ** 2)
        )
        for a in np.arange(6) * np.pi / 3
    )
    out = c(spots.reshape(-1, 1)).reshape(spots.shape)
    assert np.abs(out - spots).max() < 5e-3 * spots.max()


def test_dip_constraint_masked_pixels_and_strength():
    p = _ring_pattern(with_hole=True)
    valid = np.ones(p.shape, bool)
    valid[17:20, 31:34] = False  # mask the hole itself
    c = DiffractionDipConstraint(p.shape, radius=2, centre=(32, 32), valid=valid)
    out = c(p.reshape(-1, 1)).reshape(p.shape)
    np.testing.assert_array_equal(out[~valid], p[~valid])
    half = DiffractionDipConstraint(p.shape, radius=2, centre=(32, 32), strength=0.5)
    full = DiffractionDipConstraint(p.shape, radius=2, centre=(32, 32))
    a = half(p.reshape(-1, 1)) - p.reshape(-1, 1)
    b = full(p.reshape(-1, 1)) - p.reshape(-1, 1)
    np.testing.assert_allclose(a, 0.5 * b)
    with pytest.raises(ValueError, match="strength"):
        DiffractionDipConstraint(p.shape, radius=2, strength=0)
    with pytest.raises(ValueError, match=">= 1 pixel"):
        DiffractionDipConstraint(p.shape, radius=0.5)


def test_dip_measure_separates_holes_from_clean_patterns():
    clean = _ring_pattern()
    holed = _ring_pattern(with_hole=True)
    c = DiffractionDipConstraint(clean.shape, radius=2, centre=(32, 32))
    d = dip_measure(np.stack([clean, holed]), c)
    # the hole holds ~0.2 % of the pattern's intensity; the clean floor (sampling) is ~0.6 %
    assert d[0] < 0.01
    assert d[1] - d[0] > 1e-3


def test_truth_patterns_of_the_simulation_have_no_dips(sim):
    T = sim.metadata.Simulation
    P = np.asarray(T.patterns)
    c = DiffractionDipConstraint(P.shape[1:], radius=2, centre=tuple(T.centre_px[::-1]))
    assert dip_measure(P, c).max() < 0.05


def test_map_support_confines_objects_and_leaves_the_matrix_free():
    """A grain's support: its cores' connected region down to the level, grown by one step."""
    from hyperspy_cnmf.constraints import MapSupport

    n = 16
    grain = np.full((n, n), 0.02)  # a floor below the support level
    grain[3:6, 3:6] = 1.0  # two grains of one orientation
    grain[11:13, 10:12] = 0.8
    grain[14, 0] = 0.1  # a patch above the level, away from every core
    W = np.stack([grain.ravel(), np.ones(n * n), np.zeros(n * n)], axis=1)
    m = MapSupport((n, n)).masks(W)
    assert m.shape == W.shape and set(np.unique(m)) <= {0.0, 1.0}
    support = m[:, 0].reshape(n, n).astype(bool)
    assert support.sum() == 5 * 5 + 4 * 4  # each core grown by one step
    assert support[2:7, 2:7].all() and support[10:14, 9:13].all()
    assert not support[14, 0]
    assert m[:, 1].all() and m[:, 2].all()  # the matrix and a dead map stay free
    assert MapSupport((n, n), dilation=0).masks(W)[:, 0].sum() == 9 + 4
    # a map wider than max_fraction of the scan is free
    assert MapSupport((n, n), max_fraction=0.1).masks(W)[:, 0].all()
    for bad in (
        dict(level=0.6),
        dict(core=0.0),
        dict(max_fraction=0.0),
        dict(dilation=-1),
    ):
        with pytest.raises(ValueError):
            MapSupport((n, n), **bad)


def test_map_support_counts_the_unmasked_positions():
    """max_fraction is a share of the valid (unmasked) positions."""
    from hyperspy_cnmf.constraints import MapSupport

    w = np.zeros((20, 20))
    w[:, :4] = 1.0  # a quarter of the scan, 5/8 of the valid columns 0-7
    valid = np.zeros((20, 20), bool)
    valid[:, :8] = True
    W = w.reshape(-1, 1)
    assert not MapSupport((20, 20), dilation=0).masks(W).all()
    assert MapSupport((20, 20), dilation=0).masks(W, valid=valid.ravel()).all()
