"""decomposition(algorithm="constrained_nmf") on STEM4D signals."""

import json

import hyperspy.api as hs
import matplotlib.pyplot as plt
import numpy as np
import pytest

from hyperspy_cnmf.constraints import map_power_beyond
from hyperspy_cnmf.signals import STEM4D


def _run(s, k=7, **kw):
    kw.setdefault("random_state", 0)
    kw.setdefault("print_info", False)
    return s.decomposition(
        algorithm="constrained_nmf", output_dimension=k, return_info=True, **kw
    )


@pytest.fixture(scope="module")
def fitted(sim):
    s = sim.deepcopy()
    info = _run(s, normalize_poissonian_noise=True)
    return s, info


def test_learning_results_filled_as_hyperspy_expects(fitted):
    s, info = fitted
    lr = s.learning_results
    assert lr.factors.shape == (48 * 48, 7) and lr.loadings.shape == (48 * 48, 7)
    assert lr.decomposition_algorithm == "constrained_nmf"
    assert lr.output_dimension == 7 and lr.number_significant_components == 7
    assert lr.mean is None and lr.explained_variance is None
    assert np.nanmin(lr.factors) >= 0 and np.nanmin(lr.loadings) >= 0
    np.testing.assert_allclose(np.nansum(lr.factors, axis=0), 1.0, rtol=1e-6)
    totals = lr.loadings.sum(axis=0)
    assert np.all(np.diff(totals) <= 0)  # sorted by total intensity
    assert lr.cnmf_loss.ndim == 1 and lr.cnmf_loss[-1] == pytest.approx(
        info["final_loss"]
    )
    params = json.loads(lr.cnmf_parameters)
    assert params["solver"] == "hals" and params["map_resolution"] == pytest.approx(
        1.5, rel=1e-3
    )
    assert params["map_resolution_method"].startswith("convergence_angle")


def test_constrained_beats_primitive_on_the_artifacts_of_the_paper(sim, fitted):
    """Primitive NMF: high-frequency map noise and dips; constrained: neither."""
    s, _ = fitted
    T = sim.metadata.Simulation
    prim = sim.deepcopy()
    # the paper's primitive NMF: plain least squares on every pixel, no constraint, no separation
    _run(
        prim,
        map_resolution=None,
        diffraction_constraint=False,
        separate_components=False,
        normalize_poissonian_noise=False,
        direct_beam_mask=False,
    )
    scale = (T.scan_step_nm, T.scan_step_nm)

    def maps(sig):
        return sig.learning_results.loadings.T.reshape(7, 48, 48)

    truth_power = map_power_beyond(np.asarray(T.maps), T.probe_fwhm_nm, scale)
    prim_power = map_power_beyond(maps(prim), T.probe_fwhm_nm, scale)
    cnmf_power = map_power_beyond(maps(s), T.probe_fwhm_nm, scale)
    assert truth_power.max() < 0.01
    assert prim_power.max() > 0.3  # a noise-dominated map
    assert cnmf_power.max() < 0.01
    # the diffraction constraint's own closing defines a dip
    from hyperspy_cnmf.constraints import DiffractionDipConstraint, dip_measure

    c = DiffractionDipConstraint(
        (48, 48),
        radius=s.learning_results.cnmf_diffraction_constraint_size,
        centre=tuple(T.centre_px[::-1]),
    )
    prim_dips = dip_measure(prim.learning_results.factors.T.reshape(7, 48, 48), c)
    cnmf_dips = dip_measure(s.learning_results.factors.T.reshape(7, 48, 48), c)
    truth_dips = dip_measure(np.asarray(T.patterns), c)
    assert prim_dips.max() > 0.1
    assert cnmf_dips.max() < max(2 * truth_dips.max(), 0.02)


def _matched_cosines(truth_patterns, factors):
    """Cosine of every true pattern with its match (Hungarian assignment).

    Over the fitted pixels only: the direct-beam disk, left out of the fit by default, is NaN.
    """
    from scipy.optimize import linear_sum_assignment

    fitted = np.isfinite(factors).all(axis=1)
    P = truth_patterns.reshape(truth_patterns.shape[0], -1)[:, fitted]
    F = factors[fitted].T
    cos = (P / np.linalg.norm(P, axis=1, keepdims=True)) @ (
        F / np.linalg.norm(F, axis=1, keepdims=True)
    ).T
    rows, cols = linear_sum_assignment(-cos)
    return cos[rows, cols]


def test_every_grain_recovered(sim, fitted):
    s, _ = fitted
    matched = _matched_cosines(
        np.asarray(sim.metadata.Simulation.patterns), s.learning_results.factors
    )
    assert matched.min() >= 0.95, matched


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_grain_recovered_on_other_datasets(seed):
    """Recovery at k = true count is robust, not one lucky seed."""
    from hyperspy_cnmf.data import simulated_precipitates

    s = simulated_precipitates(random_state=seed)
    T = s.metadata.Simulation
    k = np.asarray(T.patterns).shape[0]
    _run(s, k=k, normalize_poissonian_noise=True, show_progressbar=False)
    # the grains' maps grow as thickness^2 (kinematic), so a small grain
    # carries few counts: its pattern is the least well recovered (minimum
    # cosine measured 0.944 / 0.944 / 0.953 on seeds 1 / 2 / 3)
    assert (
        _matched_cosines(np.asarray(T.patterns), s.learning_results.factors).min()
        >= 0.93
    )
    # the maps too: correlation of each true map with its matched loading
    maps = np.asarray(T.maps).reshape(k, -1)
    corr = np.corrcoef(np.vstack([maps, s.learning_results.loadings.T]))[:k, k:]
    assert np.sort(corr.max(axis=1))[0] >= 0.95


def test_separation_keeps_the_fit(sim):
    """Moving shared content between components costs (almost) no fit."""
    a, b = sim.deepcopy(), sim.deepcopy()
    # the beam fitted too (direct_beam_mask=False): its share in the grains is what moves
    ia = _run(
        a,
        normalize_poissonian_noise=True,
        separate_components=False,
        direct_beam_mask=False,
    )
    ib = _run(b, normalize_poissonian_noise=True, direct_beam_mask=False)
    assert ib["final_loss"] <= ia["final_loss"] * 1.03  # measured: +1.7 %
    # and removes the matrix (direct beam) share from the grains' patterns
    centre = tuple(int(round(c)) for c in sim.metadata.Simulation.centre_px)
    beam = np.ravel_multi_index(centre, (48, 48))
    share = [np.sort(s.learning_results.factors[beam, 1:])[-1] for s in (a, b)]
    assert share[1] < 0.5 * share[0]


def test_data_unchanged_and_folded(sim):
    s = sim.deepcopy()
    before = s.data.copy()
    _run(s, max_iter=5)
    np.testing.assert_array_equal(s.data, before)
    assert s.axes_manager.navigation_dimension == 2 and s.data.shape == before.shape


def test_hyperspy_tools_work_on_the_result(fitted, tmp_path):
    s, _ = fitted
    factors = s.get_decomposition_factors()
    assert isinstance(factors, STEM4D) or factors.axes_manager.signal_dimension == 2
    assert (
        factors.axes_manager.signal_axes[0].units == s.axes_manager.signal_axes[0].units
    )
    loadings = s.get_decomposition_loadings()
    assert loadings.axes_manager.signal_shape == (48, 48)
    model = s.get_decomposition_model()
    assert model.data.shape == s.data.shape
    fitted_px = ~np.asarray(
        s.learning_results.signal_mask
    )  # the direct beam is left out
    X, M = s.data[..., fitted_px], model.data[..., fitted_px]
    # better than the counts-per-position baseline (each position's total times the mean pattern)
    mean = X.mean(axis=(0, 1))
    baseline = X.sum(axis=-1, keepdims=True) * mean / mean.sum()
    assert np.linalg.norm(M - X) < 0.9 * np.linalg.norm(baseline - X)
    s.plot_decomposition_results()
    s.plot_decomposition_factors(comp_ids=3)
    s.plot_decomposition_loadings(comp_ids=3)
    plt.close("all")
    files = s.export_decomposition_results(folder=str(tmp_path), comp_ids=[0, 2])
    exported = hs.load(files[0])
    assert exported.axes_manager.navigation_shape == (2,)
    np.testing.assert_allclose(
        exported.data[1].ravel(), s.learning_results.factors[:, 2], rtol=1e-6
    )
    s.cluster_analysis(
        cluster_source="decomposition", n_clusters=3, preprocessing="norm"
    )
    assert s.learning_results.cluster_labels.shape == (3, 48 * 48)


def test_results_survive_save_and_load(fitted, tmp_path):
    s, _ = fitted
    lr_file = tmp_path / "lr.npz"
    s.learning_results.save(lr_file, overwrite=True)
    t = STEM4D(np.zeros((2, 2, 3, 3)))
    t.learning_results.load(lr_file)
    np.testing.assert_array_equal(
        t.learning_results.factors, s.learning_results.factors
    )
    np.testing.assert_array_equal(
        t.learning_results.cnmf_loss, s.learning_results.cnmf_loss
    )
    assert t.learning_results.decomposition_algorithm == "constrained_nmf"
    assert t.learning_results.cnmf_parameters == s.learning_results.cnmf_parameters
    f = tmp_path / "s.hspy"
    s.save(f, overwrite=True)
    r = hs.load(f)
    assert isinstance(r, STEM4D)
    np.testing.assert_array_equal(
        r.learning_results.loadings, s.learning_results.loadings
    )
    np.testing.assert_array_equal(
        r.learning_results.cnmf_loss, s.learning_results.cnmf_loss
    )
    assert r.learning_results.cnmf_parameters == s.learning_results.cnmf_parameters


def test_masks_are_honoured(sim):
    s = sim.deepcopy()
    sig_mask = np.zeros((48, 48), bool)
    sig_mask[22:27, 22:27] = True  # the direct beam
    nav_mask = np.zeros((48, 48), bool)
    nav_mask[:4] = True
    s.data[:4] = np.nan  # masked positions may hold anything
    before = s.data.copy()
    _run(s, k=4, signal_mask=sig_mask, navigation_mask=nav_mask, max_iter=30)
    lr = s.learning_results
    assert np.all(np.isnan(lr.factors[sig_mask.ravel()]))
    assert not np.any(np.isnan(lr.factors[~sig_mask.ravel()]))
    assert np.all(np.isnan(lr.loadings[nav_mask.ravel()]))
    assert not np.any(np.isnan(lr.loadings[~nav_mask.ravel()]))
    np.testing.assert_array_equal(lr.signal_mask, sig_mask)
    np.testing.assert_array_equal(s.data, before)


def test_poisson_normalisation_and_integer_data(sim):
    s = sim.deepcopy()
    info = _run(s, k=4, normalize_poissonian_noise=True, max_iter=30)
    assert s.learning_results.poissonian_noise_normalized is True
    assert np.nanmin(s.learning_results.loadings) >= 0 and info["n_iter"] >= 1
    counts = STEM4D(np.round(sim.data).astype(np.uint16))
    counts.axes_manager = sim.axes_manager.deepcopy() if False else counts.axes_manager
    _run(counts, k=3, max_iter=10, map_resolution=2.0)
    assert counts.data.dtype == np.uint16  # the user's data keep their dtype
    assert counts.learning_results.factors.dtype == np.float64


def test_custom_init_warm_start(fitted):
    s, _ = fitted
    t = s.deepcopy()
    lr = s.learning_results
    info = _run(
        t, init=(lr.loadings, lr.factors), max_iter=20, normalize_poissonian_noise=True
    )
    assert info["final_loss"] <= s.learning_results.cnmf_loss[-1] * 1.05


def test_other_algorithms_fall_through(sim):
    s = sim.inav[:16, :16].deepcopy()
    s.decomposition(print_info=False)
    assert s.learning_results.decomposition_algorithm == "SVD"
    s.decomposition(algorithm="NMF", output_dimension=3, print_info=False, max_iter=50)
    assert s.learning_results.factors.shape[1] == 3


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(output_dimension=None), ValueError, "output_dimension"),
        (dict(output_dimension=100000), ValueError, "larger than"),
        (dict(solver="cd"), ValueError, "unknown solver"),
        (dict(init="svd"), ValueError, "unknown init"),
        (dict(map_resolution="probe"), ValueError, "map_resolution"),
        (
            dict(navigation_mask=np.ones((48, 48), bool)),
            ValueError,
            "all data are masked",
        ),
        (dict(signal_mask=np.zeros((3, 3), bool)), ValueError, "signal_mask"),
        (dict(signal_mask=np.zeros((48, 48))), TypeError, "boolean"),
    ],
)
def test_argument_errors(sim, kwargs, err, match):
    kwargs.setdefault("output_dimension", 3)
    with pytest.raises(err, match=match):
        sim.decomposition(algorithm="constrained_nmf", print_info=False, **kwargs)


def test_bad_data_errors(sim):
    neg = sim.inav[:8, :8].deepcopy()
    neg.data[0, 0, 0, 0] = -5
    with pytest.raises(ValueError, match="non-negative"):
        _run(neg, k=2)
    nan = sim.inav[:8, :8].deepcopy()
    nan.data[1, 1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _run(nan, k=2)
    three_d = hs.signals.Signal2D(np.ones((5, 8, 8)))
    three_d.set_signal_type("4D-STEM")
    with pytest.raises(ValueError, match="2 navigation"):
        STEM4D.decomposition(three_d, algorithm="constrained_nmf", output_dimension=2)


def test_poisson_weighted_loss_reads_as_reduced_chi_square(fitted):
    """With Poisson weighting a fit at the noise level has a loss near 1."""
    _, info = fitted
    assert 0.9 < info["final_loss"] < 1.1


def test_grain_maps_are_confined_to_their_supports(sim, fitted):
    """map_support (default): the grains' maps are zero away from their grains,
    the matrix's is not; the record names the confined components in the
    stored order; map_support=False leaves every map free."""
    s, info = fitted
    par = json.loads(s.learning_results.cnmf_parameters)
    confined = par["confined_maps"]
    assert par["map_support"] is True and confined == info["confined_maps"]
    assert info["n_iter_support"] > 0
    W = s.learning_results.loadings
    zero = (W == 0).mean(axis=0)
    assert len(confined) >= sim.metadata.Simulation.n_components - 2
    for j in range(W.shape[1]):
        if j in confined:
            assert zero[j] > 0.5  # a grain's support covers under a quarter of the scan
        else:
            assert zero[j] < 0.25
    free = sim.deepcopy()
    info_free = _run(free, normalize_poissonian_noise=True, map_support=False)
    assert info_free["confined_maps"] == [] and info_free["n_iter_support"] == 0
    with pytest.raises(ValueError, match="map_support"):
        _run(sim.deepcopy(), map_support="yes")
    # without the map constraint the supports do not act, and the record says so
    off = sim.deepcopy()
    info_off = _run(off, map_resolution=None)
    assert json.loads(off.learning_results.cnmf_parameters)["map_support"] is False
    assert info_off["confined_maps"] == [] and info_off["n_iter_support"] == 0
