"""Tests of the quality measures of hyperspy_cnmf.report used by the demo and benchmarks."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from hyperspy_cnmf import report


def test_adjusted_rand_index_matches_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.integers(0, 4, 50), rng.integers(0, 3, 50)
        assert report.adjusted_rand_index(a, b) == pytest.approx(
            adjusted_rand_score(a, b)
        )
    assert report.adjusted_rand_index([0, 0, 1], [5, 5, 2]) == 1.0
    with pytest.raises(ValueError, match="sizes"):
        report.adjusted_rand_index([0, 1], [0, 1, 2])


def test_clear_component_phases():
    rng = np.random.default_rng(1)
    truth = rng.random((3, 8, 8))
    phases = np.array([0, 1, 2])
    est = np.stack(
        [
            2.0 * truth[2].ravel() + 0.01 * rng.random(64),  # clearly true component 2
            truth[0].ravel() + truth[1].ravel(),  # a mixture: not clear
            truth[1].ravel(),
        ]
    )
    clear, phase = report.clear_component_phases(est, truth, phases)
    assert clear.tolist() == [True, False, True]
    assert phase[clear].tolist() == [2, 1]
    assert report.clear_component_phases(est, truth, phases, min_corr=0.5)[0].all()


def test_plot_components_draws_the_masked_beam_grey():
    """The direct-beam disk left out of the fit (NaN) is drawn as no data, not as zero."""
    import warnings

    import matplotlib.pyplot as plt
    from matplotlib import colors

    from hyperspy_cnmf.data import simulated_precipitates
    from hyperspy_cnmf.plotting._cluster import MASKED_COLOR, MASKED_NOTE

    s = simulated_precipitates(
        scan_shape=(20, 20),
        detector_shape=(24, 24),
        n_grains=1,
        n_phases=1,
        grain_diameter=4.0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.decomposition(
            algorithm="constrained_nmf",
            output_dimension=2,
            random_state=0,
            max_iter=5,
            print_info=False,
        )  # default: direct_beam_mask="auto"
    F, _ = report.components(s)
    nan = ~np.isfinite(F[0])
    assert nan.any()
    fig = report.plot_components(s, "components")
    im = fig.axes[0].get_images()[0]
    rgba = im.to_rgba(im.get_array())
    np.testing.assert_allclose(
        rgba[nan], np.broadcast_to(colors.to_rgba(MASKED_COLOR), rgba[nan].shape)
    )
    assert MASKED_NOTE in fig._suptitle.get_text()
    plt.close("all")


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64, np.float16])
@pytest.mark.parametrize("lazy", [False, True])
def test_model_mse_equals_the_mean_squared_residual(dtype, lazy):
    """The residual read (a Numba pass in the data's dtype) gives the numpy formula."""
    from hyperspy_cnmf.signals import STEM4D

    rng = np.random.default_rng(3)
    n_nav, k = (6, 5), 3
    W = rng.random((30, k))
    H = rng.random((64, k))
    X = rng.poisson(20 * W @ H.T).astype(dtype)
    s = STEM4D(X.reshape(*n_nav, 8, 8))
    if lazy:
        s = s.as_lazy()
        s.data = s.data.rechunk((2, 5, 8, 8))
    lr = s.learning_results
    H = H.copy()
    H[5] = np.nan  # a pixel the decomposition left out
    lr.loadings, lr.factors = W, H
    lr.mean = rng.random(64) if dtype == np.float64 else None  # a centred model
    mask = np.zeros(64, bool)
    mask[[0, 9]] = True  # the baseline's signal_mask
    mse, base = report.model_mse(s, baseline=True, baseline_mask=mask.reshape(8, 8))

    x = X.astype(np.float64)
    on = np.ones(64, bool)
    on[5] = False
    model = W @ np.nan_to_num(H).T + (0.0 if lr.mean is None else lr.mean)
    assert mse == pytest.approx(np.mean((x - model)[:, on] ** 2), rel=1e-12)
    xb = x[:, ~mask]
    pattern = xb.sum(axis=0) / xb.sum()
    ref = np.mean((xb - xb.sum(axis=1, keepdims=True) * pattern) ** 2)
    assert base == pytest.approx(ref, rel=1e-12)
