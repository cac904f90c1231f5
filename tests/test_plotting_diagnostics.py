"""Diagnostics of a decomposition: map spectra with the resolution circle, dip measure."""

import re
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.patches import Circle

from hyperspy_cnmf.constraints import (
    DiffractionDipConstraint,
    dip_measure,
    map_power_beyond,
)
from hyperspy_cnmf.data import simulated_precipitates
from hyperspy_cnmf.plotting import plot_dip_measure, plot_map_spectra

K = 4


def _small():
    return simulated_precipitates(
        scan_shape=(24, 24), detector_shape=(24, 24), n_grains=2
    )


def _decompose(signal, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signal.decomposition(
            algorithm="constrained_nmf",
            output_dimension=K,
            random_state=0,
            print_info=False,
            **kw,
        )
    return signal


@pytest.fixture(scope="module")
def runs():
    constrained = _decompose(_small())
    primitive = _decompose(_small(), map_resolution=None, diffraction_constraint=False)
    yield constrained, primitive
    plt.close("all")


def _title_percent(ax):
    return (
        float(re.search(r"power beyond 1/d: ([0-9.e+-]+) %", ax.get_title()).group(1))
        / 100
    )


def _circles(ax):
    return [p for p in ax.patches if isinstance(p, Circle)]


def test_plot_map_spectra_arrays():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 20, 30))
    fig = plot_map_spectra(
        maps, resolution=2.0, scale=(0.5, 0.25), units="nm", per_row=2
    )
    # map + spectrum per component and a colour bar for each, unused slots removed
    assert len(fig.axes) == 12
    labels = [a.get_ylabel() for a in fig.axes if a.get_label() == "<colorbar>"]
    assert labels == ["loading", "power / maximum"] * 3
    expected = map_power_beyond(maps, 2.0, (0.5, 0.25))
    np.testing.assert_allclose(fig.power_beyond, expected)
    spectra = [a for a in fig.axes if "FT" in a.get_title()]
    assert len(spectra) == 3
    for ax, value in zip(spectra, expected):
        (circle,) = _circles(ax)
        assert circle.get_radius() == pytest.approx(0.5)  # 1 / resolution in 1/nm
        assert circle.center == (0.0, 0.0)
        assert _title_percent(ax) == pytest.approx(value, rel=5e-3)
        assert "1/nm" in ax.get_xlabel()
        # frequency axes: Nyquist 1 / (2 * 0.25) = 2 1/nm along x, 1 1/nm along y
        assert max(abs(v) for v in ax.get_xlim()) == pytest.approx(2.0, rel=0.1)
        assert max(abs(v) for v in ax.get_ylim()) == pytest.approx(1.0, rel=0.1)
    with pytest.raises(ValueError, match="resolution"):
        plot_map_spectra(maps, resolution=0.0)
    plt.close("all")


def test_signal_map_spectra_constrained_vs_primitive(runs, tmp_path):
    constrained, primitive = runs
    res = constrained.learning_results.cnmf_map_resolution
    scale = tuple(abs(a.scale) for a in constrained.axes_manager.navigation_axes)[::-1]
    ny, nx = constrained.axes_manager._navigation_shape_in_array
    for s in runs:
        maps = s.learning_results.loadings.T.reshape(K, ny, nx)
        expected = map_power_beyond(maps, res, scale)
        np.testing.assert_allclose(s.get_map_power_beyond(resolution=res), expected)
        fig = s.plot_map_spectra(resolution=res)
        assert len(fig.axes) == 4 * K  # map, spectrum and their colour bars
        bars = [a.get_ylabel() for a in fig.axes if a.get_label() == "<colorbar>"]
        assert (
            bars == ["counts per position", "power / maximum"] * K
        )  # constrained NMF: unit-sum patterns
        spectra = [a for a in fig.axes if "FT" in a.get_title()]
        for ax, value in zip(spectra, expected):
            assert _circles(ax)[0].get_radius() == pytest.approx(1 / res)
            assert _title_percent(ax) == pytest.approx(value, rel=5e-3)
        fig.savefig(tmp_path / "spectra.png")
    # the map constraint removes the power beyond the circle; primitive NMF keeps noise there
    assert constrained.get_map_power_beyond().max() < 2e-3
    assert primitive.get_map_power_beyond(resolution=res).max() > 0.05
    # default resolution of a run without the map constraint: estimated (same probe here)
    np.testing.assert_allclose(
        primitive.get_map_power_beyond(), primitive.get_map_power_beyond(resolution=res)
    )
    fig = constrained.plot_map_spectra(components=[2, 0])
    assert len(fig.axes) == 8 and fig.axes[0].get_title() == "Component 2"
    plt.close("all")


def test_dip_measure_figure_and_values(runs, tmp_path):
    constrained, primitive = runs
    d_c = constrained.get_dip_measure()
    d_p = primitive.get_dip_measure(
        radius=constrained.learning_results.cnmf_diffraction_constraint_size
    )
    assert d_c.shape == d_p.shape == (K,)
    assert np.all(d_c >= 0) and np.all(np.isfinite(d_p))
    assert d_p.mean() > d_c.mean()  # primitive NMF carves holes
    fig = constrained.plot_dip_measure({"primitive": primitive}, n_show=2)
    bars = fig.axes[0]
    assert len(fig.axes) == 1 + 2 * 2
    heights = np.array([b.get_height() for b in bars.patches]).reshape(2, K)
    np.testing.assert_allclose(heights[0], 100 * d_c)
    np.testing.assert_allclose(heights[1], 100 * fig.dip_measure["primitive"])
    np.testing.assert_allclose(
        fig.dip_measure["primitive"], d_p, rtol=1e-3
    )  # beam centre of each run
    fig.savefig(tmp_path / "dips.png")
    plt.close("all")


def test_plot_dip_measure_arrays():
    p = np.ones((2, 21, 21))
    p[1, 10, 5] = 0.0
    fig = plot_dip_measure(p, 1.0, n_show=1)
    assert len(fig.axes) == 2
    np.testing.assert_allclose(fig.dip_measure["Factors"], dip_measure(p, 1.0))
    assert len(_circles(fig.axes[1])) == 1  # the hole is circled
    c = DiffractionDipConstraint((21, 21), 1.0, mode="isotropic")
    fig = plot_dip_measure([p, p[:1]], c, labels=["a", "b"])
    assert set(fig.dip_measure) == {"a", "b"} and len(fig.axes[0].patches) == 3
    plt.close("all")


def test_errors_without_decomposition():
    s = _small()
    for method in (
        s.plot_map_spectra,
        s.get_map_power_beyond,
        s.get_dip_measure,
        s.plot_dip_measure,
    ):
        with pytest.raises(RuntimeError, match="No decomposition"):
            method()
    # a decomposition of data that are not 2+2 dimensional: a clear error
    from hyperspy_cnmf.signals import _diagnostics

    flat = s.inav[0]  # one navigation dimension left
    flat.learning_results.factors = np.ones((4, 2))
    flat.learning_results.loadings = np.ones((4, 2))
    with pytest.raises(
        ValueError, match="computing the diagnostics needs 4D-STEM data"
    ):
        _diagnostics._check_decomposition(flat)


def test_other_algorithm_uses_estimated_resolution():
    s = _small()
    s.decomposition(print_info=False)  # SVD: no constrained-NMF settings
    values = s.get_map_power_beyond(components=3)
    assert values.shape == (3,) and np.all((values >= 0) & (values <= 1))
    fig = s.plot_map_spectra(components=2)
    assert len(fig.axes) == 8  # 2 maps, 2 spectra, 4 colour bars
    assert [a.get_ylabel() for a in fig.axes if a.get_label() == "<colorbar>"][
        0
    ] == "loading (a.u.)"
    plt.close("all")
