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
