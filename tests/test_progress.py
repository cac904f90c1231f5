"""What users see while a fit runs and after it (issue 11, item 15).

Progress bars end at the real number of iterations of each phase (not at
``max_iter``), primitive runs are labelled so, the loss is named for what it
is (a Poisson-weighted reduced chi-square or an MSE, never on one axis), the
``learning_results`` summary lists the constrained-NMF and clustering
settings, and the scree plot has a meaning for NMF.
"""

import json
import re
import warnings

import hyperspy.api as hs
import matplotlib.pyplot as plt
import numpy as np
import pytest

from hyperspy_cnmf.data import simulated_precipitates
from hyperspy_cnmf.report import plot_loss


@pytest.fixture(scope="module")
def small():
    return simulated_precipitates(
        scan_shape=(24, 24),
        detector_shape=(32, 32),
        n_grains=3,
        grain_diameter=4.0,
        random_state=0,
    )


def _final_renders(err):
    """The last rendering of every progress line, by its description."""
    last = {}
    for part in re.split(r"[\r\n]", err):
        m = re.match(r"\s*((?:primitive|constrained) NMF[^:]*?)(?::|\s+\d+%)", part)
        if m:
            last[m.group(1).strip()] = part
    return last


def _fit(s, capsys, **kw):
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = s.deepcopy().decomposition(
            algorithm="constrained_nmf",
            output_dimension=4,
            random_state=0,
            print_info=False,
            return_info=True,
            show_progressbar=True,
            **kw,
        )
    return info, capsys.readouterr().err


def test_bars_end_at_the_real_iterations(small, capsys):
    info, err = _fit(small, capsys)
    last = _final_renders(err)
    n_sketch, n_exact = info["n_iter_sketch"], info["n_iter"]
    assert 0 < n_sketch < 200 and 0 < n_exact < 200
    assert (
        f"{n_sketch}/{n_sketch}" in last["constrained NMF (iterations on the sketch)"]
    )
    assert f"{n_exact}/{n_exact}" in last["constrained NMF (exact iterations)"]
    assert "100%" in last["constrained NMF (exact iterations)"]
    n_support = info["n_iter_support"]  # the grains' maps confined (map_support)
    assert 0 < n_support <= 10 and info["confined_maps"]
    bar = last["constrained NMF (iterations with the maps' supports)"]
    assert f"{n_support}/{n_support}" in bar
    assert not any("/200" in line for line in last.values())
    assert (
        "constrained NMF: reading the data" in err
        and "constrained NMF: initialisation" in err
    )
    assert "primitive" not in err


def test_primitive_run_is_labelled_and_capped_exact_phase(small, capsys):
    info, err = _fit(
        small,
        capsys,
        map_resolution=None,
        diffraction_constraint=False,
        max_exact_iter=1,
    )
    last = _final_renders(err)
    assert "constrained NMF" not in err
    assert "1/1" in last["primitive NMF (exact iterations)"]  # the cap, not 1/200
    assert info["n_iter"] == 1


def test_every_start_has_its_bar(small, capsys):
    info, err = _fit(small, capsys, n_init=2)
    last = _final_renders(err)
    assert "constrained NMF (iterations on the sketch, start 2)" in last
    for line in last.values():
        m = re.search(r"(\d+)/(\d+)", line)
        if m:
            assert m.group(1) == m.group(2), line


def test_loss_plot_names_each_kind_on_its_own_axis(tmp_path):
    fig = plot_loss(
        {
            "primitive NMF": np.array([2.0, 1.5, 1.4]),
            "constrained NMF": np.array([1.2, 1.05, 1.0]),
        },
        {"primitive NMF": False, "constrained NMF": True},
    )
    labels = sorted(a.get_ylabel() for a in fig.axes)
    assert labels == [
        "mean squared error (data units²)",
        "reduced chi-square (Poisson-weighted)",
    ]
    fig.savefig(tmp_path / "loss.png")
    one = plot_loss({"constrained NMF": np.array([1.2, 1.0])}, True)
    assert [a.get_ylabel() for a in one.axes] == [
        "reduced chi-square (Poisson-weighted)"
    ]
    plt.close("all")


def test_summary_lists_constraints_convergence_and_clustering(small, tmp_path):
    s = small.deepcopy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.decomposition(
            algorithm="constrained_nmf",
            output_dimension=6,
            random_state=0,
            print_info=False,
            show_progressbar=False,
        )
        s.cluster_diffraction()
    lr = s.learning_results
    params = json.loads(lr.cnmf_parameters)
    text = lr.summary()
    assert text.startswith("Decomposition parameters")  # HyperSpy's part first
    assert "Constrained NMF parameters" in text
    assert f"map constraint: resolution={params['map_resolution']:.4g}" in text
    assert f"size={params['diffraction_constraint_size']:.4g} px" in text
    assert params["n_iter_support"] > 0  # the grains' maps confined (map_support)
    assert (
        f"iterations={lr.cnmf_n_iter_sketch} on the sketch + "
        f"{params['n_iter_support']} with the maps' supports {params['confined_maps']} + "
        f"{lr.cnmf_n_iter} exact" in text
    )
    assert f"converged={lr.cnmf_converged}" in text
    assert f"final reduced chi-square (Poisson-weighted)={lr.cnmf_loss[-1]:.6g}" in text
    assert "Clustering parameters (cluster_diffraction)" in text
    n_refit = json.loads(lr.cdiff_parameters)["refit_components"]
    assert 0 < n_refit == lr.cdiff_labels.size < 6  # grains counted + matrix + spare
    assert (
        f"number_of_clusters={int(lr.cdiff_labels.max()) + 1} of {n_refit} refit components "
        "(fitted to the model of the decomposition's 6 components; "
        "cluster_diffraction(refit=False) clusters those)" in text
    )
    s.cluster_diffraction(refit=False)
    assert (
        f"number_of_clusters={int(lr.cdiff_labels.max()) + 1} of 6 components"
        in lr.summary()
    )
    s.cluster_diffraction()
    text = lr.summary()
    n_texture = int(np.sum(lr.cdiff_texture))
    assert (f"texture components={n_texture} " in text) == (n_texture > 0)
    assert (
        f"min_cluster_positions={json.loads(lr.cdiff_parameters)['min_cluster_positions']}"
        in text
    )
    assert repr(lr) == text
    f = tmp_path / "s.hspy"
    s.save(f, overwrite=True)
    assert hs.load(f).learning_results.summary() == text  # the same after a round trip
    s.decomposition(
        algorithm="constrained_nmf",
        output_dimension=4,
        map_resolution=None,
        diffraction_constraint=False,
        print_info=False,
        show_progressbar=False,
    )
    text = s.learning_results.summary()
    assert (
        "Primitive NMF (no constraint) parameters" in text
        and "map constraint: off" in text
    )
    assert "Clustering" not in text  # the clustering of the old components is gone
    s.decomposition(algorithm="SVD", print_info=False)
    assert "NMF" not in s.learning_results.summary()


def test_explained_variance_ratio_after_a_decomposition(small):
    s = small.deepcopy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.decomposition(
            algorithm="constrained_nmf",
            output_dimension=4,
            random_state=0,
            print_info=False,
            show_progressbar=False,
        )
    lr = s.learning_results
    counts = np.nansum(
        lr.loadings, axis=0
    )  # unit-sum patterns: the loadings are counts
    np.testing.assert_allclose(lr.explained_variance_ratio, counts / counts.sum())
    assert np.all(np.diff(lr.explained_variance_ratio) <= 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HyperSpy deprecates the name
        ax = s.plot_explained_variance_ratio()
    assert ax.get_ylabel() == "Share of the modelled counts"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), lr.explained_variance_ratio)
    assert (
        "share of the modelled counts" in s.get_scree_plot_data().metadata.General.title
    )
    plt.close("all")


def test_printed_summary_names_a_primitive_run(capsys):
    """Both constraints off: the printed summary says it is the paper's primitive NMF."""
    import warnings

    from hyperspy_cnmf.data import simulated_precipitates

    s = simulated_precipitates(
        scan_shape=(16, 16), detector_shape=(24, 24), n_grains=2, grain_diameter=3.0
    )
    kw = dict(
        algorithm="constrained_nmf",
        output_dimension=3,
        random_state=0,
        show_progressbar=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.decomposition(map_resolution=None, diffraction_constraint=False, **kw)
        assert "primitive NMF: both constraints off" in capsys.readouterr().out
        s.decomposition(**kw)
        assert "primitive" not in capsys.readouterr().out
