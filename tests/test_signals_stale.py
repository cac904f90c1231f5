"""Stale results are never served (issue 11, item 5).

A new decomposition (another k, SVD, any HyperSpy algorithm) removes the
clustering of the old components and the ``cnmf_*`` record of a constrained
run it replaces; HyperSpy's ``cluster_analysis`` removes the ``cdiff_*`` /
``cpat_*`` records whose ``cluster_*`` fields it overwrites; a decomposition
changed by any other route (``learning_results.load``, a crop) is detected
by the fingerprint stored with the clustering. Saved and loaded results
stay valid.
"""

import json
import warnings

import hyperspy.api as hs
import matplotlib.pyplot as plt
import numpy as np
import pytest

from hyperspy_cnmf.data import simulated_precipitates
from hyperspy_cnmf.signals import STEM4D

K = 6


def _prefixed(lr, prefix):
    return sorted(n for n in vars(lr) if n.startswith(prefix))


@pytest.fixture(scope="module")
def clustered():
    s = simulated_precipitates(
        scan_shape=(24, 24),
        detector_shape=(32, 32),
        n_grains=3,
        grain_diameter=4.0,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.decomposition(
            algorithm="constrained_nmf",
            output_dimension=K,
            random_state=0,
            print_info=False,
            show_progressbar=False,
        )
        s.cluster_diffraction()
    return s


@pytest.fixture
def s(clustered):
    out = clustered.deepcopy()
    # the clustered components: the refit's when the clustering refitted (K over-complete)
    assert out.learning_results.cdiff_labels.size == _clustered(out, K)
    return out


def _clustered(s, k):
    """Components the last clustering clustered: the refit's, else the decomposition's k."""
    refit = json.loads(str(s.learning_results.cdiff_parameters))["refit_components"]
    return refit or k


def _assert_no_clustering(s):
    lr = s.learning_results
    assert _prefixed(lr, "cdiff_") == []
    with pytest.raises(RuntimeError, match="cluster_diffraction"):
        s.get_cluster_diffraction_results()
    with pytest.raises(RuntimeError, match="cluster_diffraction"):
        s.plot_cluster_gallery()
    with pytest.raises(RuntimeError, match="cluster_diffraction"):
        s.plot_cluster_dendrogram()


@pytest.mark.parametrize("k", [4, K])
def test_new_constrained_decomposition_clears_the_clustering(s, k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.decomposition(
            algorithm="constrained_nmf",
            output_dimension=k,
            random_state=1,
            print_info=False,
            show_progressbar=False,
        )
    _assert_no_clustering(s)
    lr = s.learning_results
    assert (
        lr.cluster_labels is None and lr.cluster_algorithm is None
    )  # HyperSpy's fields it wrote
    with pytest.raises(RuntimeError):
        s.plot_cluster_results()
    assert (
        lr.cnmf_parameters is not None and lr.factors.shape[1] == k
    )  # the new run's record
    res = s.cluster_diffraction()  # clustering again works, on the new components
    assert (
        res["labels"].data.size == _clustered(s, k)
        and s.learning_results.cluster_algorithm == "cluster_diffraction"
    )


def test_svd_clears_the_clustering_and_the_cnmf_record(s):
    s.decomposition(algorithm="SVD", output_dimension=K, print_info=False)
    _assert_no_clustering(s)
    lr = s.learning_results
    assert _prefixed(lr, "cnmf_") == []  # no constrained-NMF record beside SVD factors
    assert lr.decomposition_algorithm == "SVD" and lr.cluster_labels is None
    plt.close("all")


def test_hyperspy_cluster_analysis_removes_the_older_clustering_records(s):
    s.learning_results.cpat_labels = np.array(
        [0, 1]
    )  # as if cluster_patterns had run too
    s.cluster_analysis(
        cluster_source="decomposition", n_clusters=2, preprocessing="norm"
    )
    lr = s.learning_results
    assert lr.cluster_labels.shape == (2, 24 * 24)
    assert _prefixed(lr, "cdiff_") == [] and _prefixed(lr, "cpat_") == []
    with pytest.raises(RuntimeError, match="cluster_diffraction"):
        s.get_cluster_diffraction_results()


def test_cluster_analysis_by_another_route_is_detected(s):
    # the plain Signal2D's cluster_analysis (no STEM4D override) leaves the cdiff_* fields
    s.set_signal_type("")
    s.cluster_analysis(
        cluster_source="decomposition", n_clusters=2, preprocessing="norm"
    )
    s.set_signal_type("4D-STEM")
    assert s.learning_results.cdiff_labels is not None
    with pytest.raises(
        RuntimeError, match="cluster_analysis .* run cluster_diffraction again"
    ):
        s.get_cluster_diffraction_results()
    with pytest.raises(RuntimeError, match="cluster_analysis"):
        s.plot_cluster_gallery()


def test_decomposition_changed_by_another_route_is_detected(s, clustered, tmp_path):
    other = clustered.deepcopy()
    other.decomposition(algorithm="SVD", output_dimension=K, print_info=False)
    f = tmp_path / "other.npz"
    other.learning_results.save(f, overwrite=True)
    s.learning_results.load(
        f
    )  # the SVD factors now, the cdiff_* fields of the NMF run still there
    assert s.learning_results.cdiff_labels is not None
    for call in (
        s.get_cluster_diffraction_results,
        s.plot_cluster_gallery,
        s.plot_cluster_dendrogram,
    ):
        with pytest.raises(
            RuntimeError, match="older decomposition; run cluster_diffraction again"
        ):
            call()
    t = clustered.deepcopy()
    t.learning_results.crop_decomposition_dimension(K - 2)
    for call in (
        t.get_cluster_diffraction_results,
        t.plot_cluster_results,
    ):  # cluster_* fields still there
        with pytest.raises(RuntimeError, match="older decomposition"):
            call()


def test_saved_and_loaded_clustering_stays_valid(clustered, tmp_path):
    expected = clustered.get_cluster_diffraction_results()["labels"].data
    f = tmp_path / "lr.npz"
    clustered.learning_results.save(f, overwrite=True)
    t = STEM4D(np.zeros(clustered.data.shape))
    t.axes_manager = clustered.axes_manager.deepcopy()
    t.learning_results.load(f)
    np.testing.assert_array_equal(
        t.get_cluster_diffraction_results()["labels"].data, expected
    )
    g = tmp_path / "s.hspy"
    clustered.save(g, overwrite=True)
    for lazy in (False, True):
        r = hs.load(g, lazy=lazy)
        np.testing.assert_array_equal(
            r.get_cluster_diffraction_results()["labels"].data, expected
        )
        r.plot_cluster_gallery()
        plt.close("all")


def test_pattern_clustering_does_not_depend_on_the_decomposition(s):
    res = s.cluster_patterns(step=4, n_clusters=2)
    labels = res["labels"].data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.decomposition(
            algorithm="constrained_nmf",
            output_dimension=3,
            random_state=0,
            print_info=False,
            show_progressbar=False,
        )
    np.testing.assert_array_equal(
        s.get_cluster_diffraction_results(source="patterns")["labels"].data, labels
    )
    assert (
        s.learning_results.cluster_algorithm == "cluster_patterns"
    )  # its cluster_* fields stay


def test_a_new_clustering_leaves_no_field_of_the_old_one(s):
    s.learning_results.cdiff_obsolete_field = np.arange(
        3
    )  # e.g. written by an older version
    s.cluster_diffraction(n_clusters=2)
    assert not hasattr(s.learning_results, "cdiff_obsolete_field")
