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
