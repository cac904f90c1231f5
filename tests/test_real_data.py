"""End-to-end run on a real 4D-STEM scan (NIST, Merlin Medipix3, Au-Pd, 16 x 16 x 256 x 256).

The file lives outside the repository (``../shared/data``, see its README for
provenance and licence) or where ``HYPERSPY_CNMF_NIST`` points. Missing file:
the tests fail on CI (the environment variable ``CI`` is set, and CI has
``shared/`` beside the clone) and are skipped elsewhere.
"""

import numpy as np
import pytest
from _shared_data import nist_path

BIN = 8
BEAM_ROW_COL = (126, 128)  # direct beam in the summed pattern, unbinned pixels
STEP_NM = 5.4826


@pytest.fixture(scope="module")
def nist():
    from hyperspy_cnmf.io import load

    return load(nist_path(), bin_signal=BIN)


@pytest.fixture(scope="module")
def decomposed(nist):
    s = nist.deepcopy()
    # no convergence angle in the file and detector pixels uncalibrated:
    # map_resolution="auto" falls back to 2 scan steps, with a warning
    # the direct beam is fitted here (direct_beam_mask=False), so that the model's
    # total counts can be checked against the measured ones
    with pytest.warns(UserWarning, match="could not determine the probe size"):
        info = s.decomposition(
            algorithm="constrained_nmf",
            output_dimension=5,
            random_state=0,
            max_iter=50,
            print_info=False,
            return_info=True,
            direct_beam_mask=False,
        )
    return s, info


def test_default_leaves_the_direct_beam_out(nist):
    """Default call: the beam disk takes no part; the model matches the counts outside it."""
    from hyperspy_cnmf import report

    s = nist.deepcopy()
    with pytest.warns(UserWarning, match="could not determine the probe size"):
        info = s.decomposition(
            algorithm="constrained_nmf",
            output_dimension=5,
            random_state=0,
            max_iter=50,
            print_info=False,
            return_info=True,
        )
    beam_mask = np.asarray(s.learning_results.signal_mask)
    assert info["normalize_poissonian_noise"] and info["direct_beam_mask"] == "auto"
    x, y, r = (
        info["direct_beam_x_px"],
        info["direct_beam_y_px"],
        info["direct_beam_mask_radius_px"],
    )
    assert (
        abs(y - BEAM_ROW_COL[0] / BIN) <= 1.5 and abs(x - BEAM_ROW_COL[1] / BIN) <= 1.5
    )
    yy, xx = np.indices(beam_mask.shape)
    np.testing.assert_array_equal(beam_mask, np.hypot(yy - y, xx - x) <= r)
    F, L = report.components(s)
    assert np.isnan(F[:, beam_mask]).all() and np.isfinite(F[:, ~beam_mask]).all()
    outside = nist.data[..., ~beam_mask].sum()
    # measured 1.10: the component separation may add at most 10 % of what it moves
    assert 0.9 < L.sum() / outside < 1.15
    # the fit, on the pixels it saw, beats the counts-per-position baseline there
    mse = report.reconstruction_mse(s)  # the left-out beam is excluded
    assert mse < 0.98 * report.mean_pattern_mse(nist, signal_mask=beam_mask)


def test_reader_calibration_and_metadata(nist):
    s = nist
    assert type(s).__name__ == "STEM4D"
    assert s.data.shape == (16, 16, 256 // BIN, 256 // BIN)
    for ax in s.axes_manager.navigation_axes:
        assert ax.units == "nm"
        assert ax.scale == pytest.approx(STEP_NM, rel=1e-4)
    assert s.metadata.Acquisition_instrument.TEM.beam_energy == pytest.approx(200.0)
    # low-count data: ~5,100 counts per frame, binning conserves counts
    total = s.data.sum(axis=(2, 3))
    assert 3000 < total.mean() < 8000
    mean = s.data.mean(axis=(0, 1))
    peak = np.unravel_index(np.argmax(mean), mean.shape)
    assert (
        abs(peak[0] - BEAM_ROW_COL[0] / BIN) <= 1.5
        and abs(peak[1] - BEAM_ROW_COL[1] / BIN) <= 1.5
    )


def test_lazy_reader_matches(nist):
    from hyperspy_cnmf.io import load

    lazy = load(nist_path(), bin_signal=BIN, lazy=True)
    assert type(lazy).__name__ == "LazySTEM4D"
    np.testing.assert_array_equal(lazy.data.compute(), nist.data)


def test_constrained_nmf_end_to_end(nist, decomposed):
    from hyperspy_cnmf import report

    s, info = decomposed
    lr = s.learning_results
    F, L = report.components(s)
    assert np.isfinite(F).all() and np.isfinite(L).all()
    assert F.min() >= 0 and L.min() >= 0  # non-negative factors and maps
    np.testing.assert_allclose(F.sum(axis=(1, 2)), 1.0, rtol=1e-6)  # unit-sum patterns
    # loadings are counts: they add up to the measured counts per position
    total = nist.data.sum(axis=(2, 3)).astype(float)
    assert np.corrcoef(L.sum(axis=0).ravel(), total.ravel())[0, 1] > 0.85
    # the model's total counts match the measured ones (measured 1.016: the
    # component separation may add at most 10 % of what it moves)
    assert 0.95 < L.sum() / total.sum() < 1.05
    # better than the model that knows only the counts per position
    mse = report.reconstruction_mse(s)
    baseline = report.mean_pattern_mse(nist)
    assert mse < 0.98 * baseline, (mse, baseline)
    assert np.isfinite(lr.cnmf_loss).all() and lr.cnmf_loss[-1] <= lr.cnmf_loss[0]
    # the direct beam is found: the strongest component peaks at the beam
    peak = np.unravel_index(np.argmax(F[0]), F[0].shape)
    assert (
        abs(peak[0] - BEAM_ROW_COL[0] / BIN) <= 1.5
        and abs(peak[1] - BEAM_ROW_COL[1] / BIN) <= 1.5
    )
    # maps calibrated like the scan
    maps = s.get_decomposition_loadings()
    assert maps.axes_manager.signal_axes[0].scale == pytest.approx(STEP_NM, rel=1e-4)
    assert maps.axes_manager.signal_axes[0].units == "nm"


def test_cluster_diffraction_on_real_components(decomposed):
    s, _ = decomposed
    res = s.cluster_diffraction()
    lr = s.learning_results
    labels = np.asarray(lr.cdiff_labels)
    k = lr.factors.shape[1]
    assert labels.shape == (k,) and 1 <= labels.max() + 1 <= k
    D = np.asarray(lr.cdiff_pseudo_distance)
    assert (
        D.shape == (k, k)
        and np.allclose(np.diag(D), 0, atol=1e-6)
        and np.allclose(D, D.T, atol=1e-6)
    )
    merged = res["merged_factors"]
    assert merged.data.shape[0] == labels.max() + 1
    assert np.nanmin(merged.data) >= 0
    pos = res["position_labels"].data
    assert pos.shape == (16, 16) and pos.max() <= labels.max()
