"""Shared fixtures: small deterministic synthetic data."""

import numpy as np
import pytest

# the agg backend and the progress bars off: ../conftest.py (tests and doctests)


@pytest.fixture
def lowrank():
    """Poisson counts from a random non-negative rank-4 model, 600 x 200."""
    rng = np.random.default_rng(1)
    W = rng.random((600, 4)) ** 3
    H = rng.random((4, 200)) ** 3
    X = rng.poisson(40 * W @ H).astype(np.float64)
    return X


@pytest.fixture(scope="session")
def sim():
    """The default simulated precipitates (48 x 48 scan, 48 x 48 detector)."""
    from hyperspy_cnmf.data import simulated_precipitates

    return simulated_precipitates(random_state=0)
