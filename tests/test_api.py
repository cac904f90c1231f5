"""The functional API (hyperspy_cnmf.api) on plain signals, and the ConstrainedNMF estimator."""

import warnings

import hyperspy.api as hs
import matplotlib.pyplot as plt
import numpy as np
import pytest

import hyperspy_cnmf
from hyperspy_cnmf import api
from hyperspy_cnmf.data import simulated_precipitates

GETTERS = (
    "get_map_power_beyond",
    "get_dip_measure",
    "get_direct_beam_position",
    "polar_transform",
    "center_direct_beam",
)
PLOTS = (
    "plot_map_spectra",
    "plot_dip_measure",
    "plot_cluster_dendrogram",
    "plot_cluster_gallery",
)


@pytest.fixture(scope="module")
def data():
    return simulated_precipitates(
        scan_shape=(16, 16), detector_shape=(24, 24), n_grains=2, grain_diameter=3.0
    ).data


def _values(x):
    x = getattr(x, "data", x)
    return np.asarray(x.compute() if hasattr(x, "compute") else x)


def _assert_same_learning_results(a, b):
    va, vb = vars(a), vars(b)
    assert set(va) == set(vb)
    for name in va:
        x, y = va[name], vb[name]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
        else:
            assert x == y, name


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_plain_signal2d_gives_the_stem4d_results(data, lazy):
    plain = hs.signals.Signal2D(data.copy())
    stem = hs.signals.Signal2D(data.copy())
    stem.set_signal_type("4D-STEM")
    if lazy:
        plain, stem = plain.as_lazy(), stem.as_lazy()
    cls, original = type(plain), plain.data
    before = _values(plain).copy()
    axes_before = plain.axes_manager.as_dictionary()
    kw = dict(print_info=False, random_state=0, map_resolution=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert hyperspy_cnmf.decomposition(plain, 4, **kw) is None
        stem.decomposition(algorithm="constrained_nmf", output_dimension=4, **kw)
        _assert_same_learning_results(plain.learning_results, stem.learning_results)
        assert plain.learning_results.decomposition_algorithm == "constrained_nmf"
        assert plain.learning_results.cnmf_parameters is not None

        res = hyperspy_cnmf.cluster_diffraction(plain)
        stem_res = stem.cluster_diffraction()
        assert sorted(res) == sorted(stem_res)
        _assert_same_learning_results(plain.learning_results, stem.learning_results)
        for key, value in hyperspy_cnmf.get_cluster_diffraction_results(plain).items():
            ref = stem.get_cluster_diffraction_results()[key]
            np.testing.assert_array_equal(_values(value), _values(ref), err_msg=key)

        for name in GETTERS:
            np.testing.assert_array_equal(
                _values(getattr(hyperspy_cnmf, name)(plain)),
                _values(getattr(stem, name)()),
                err_msg=name,
            )
        for name in PLOTS:
            fig = getattr(hyperspy_cnmf, name)(plain)
            assert fig is not None, name
            plt.close("all")

        hyperspy_cnmf.cluster_patterns(plain, step=2, n_clusters=3)
        stem.cluster_patterns(step=2, n_clusters=3)
        _assert_same_learning_results(plain.learning_results, stem.learning_results)

    # the user's signal: same class (all its methods), same data object and values, same axes
    assert type(plain) is cls and plain.data is original
    assert plain.metadata.Signal.signal_type == ""
    np.testing.assert_array_equal(_values(plain), before)
    assert plain.axes_manager.as_dictionary() == axes_before
    model = plain.get_decomposition_model()  # HyperSpy's own methods read the results
    assert model.data.shape == plain.data.shape


def test_stem4d_methods_wrap_the_public_functions(monkeypatch):
    from hyperspy_cnmf.signals import STEM4D

    calls = []
    monkeypatch.setattr(api, "get_dip_measure", lambda s, *a, **k: calls.append(s))
    s = hs.signals.Signal2D(np.ones((2, 2, 4, 4)))
    s.set_signal_type("4D-STEM")
    s.get_dip_measure()
    assert calls == [s]
    assert STEM4D.get_dip_measure.__doc__.startswith("Fraction of each factor")


def test_decomposition_clears_the_old_clustering(data):
    s = hs.signals.Signal2D(data.copy())
    kw = dict(print_info=False, random_state=0, map_resolution=2.0)
    hyperspy_cnmf.decomposition(s, 3, **kw)
    hyperspy_cnmf.cluster_diffraction(s)
    assert s.learning_results.cluster_algorithm == "cluster_diffraction"
    hyperspy_cnmf.decomposition(s, 3, **kw)
    assert s.learning_results.cluster_labels is None
    assert not [n for n in vars(s.learning_results) if n.startswith("cdiff_")]


WRONG = {
    "1+2": lambda: hs.signals.Signal2D(np.ones((4, 8, 8))),
    "2+1": lambda: hs.signals.Signal1D(np.ones((4, 4, 8))),
    "3+2": lambda: hs.signals.Signal2D(np.ones((2, 3, 4, 8, 8))),
}
FUNCTIONS = [
    name for name in api.__all__ if name not in ("ConstrainedNMF", "decomposition")
]


@pytest.mark.parametrize("shape", sorted(WRONG))
@pytest.mark.parametrize("name", ["decomposition", *FUNCTIONS])
def test_wrong_dimensions_raise_one_clear_error(name, shape):
    s = WRONG[shape]()
    args = (2,) if name == "decomposition" else ()
    with pytest.raises(
        ValueError, match=r"2 navigation \(scan\) and 2 signal \(detector\) dimensions"
    ):
        getattr(hyperspy_cnmf, name)(s, *args)


@pytest.mark.parametrize("name", ["decomposition", *FUNCTIONS])
def test_not_a_signal_raises_type_error(name):
    with pytest.raises(TypeError, match="needs a HyperSpy signal"):
        getattr(hyperspy_cnmf, name)(np.ones((4, 4, 8, 8)))


def test_public_names_and_docstrings():
    assert sorted(hyperspy_cnmf._API) == sorted(api.__all__)
    for name in api.__all__:
        obj = getattr(hyperspy_cnmf, name)
        assert obj is getattr(api, name)
        assert "Examples\n--------" in (obj.__doc__ or "").replace("    ", ""), name
    doc = api.decomposition.__doc__
    assert "\nsignal : " in doc and "\nalgorithm :" not in doc
    assert doc.index("\noutput_dimension :") < doc.index("\nsolver :")
    assert "self :" not in api.cluster_diffraction.__doc__


# ConstrainedNMF ------------------------------------------------------------


def test_estimator_params():
    from hyperspy_cnmf import ConstrainedNMF

    est = ConstrainedNMF(n_components=3, random_state=1)
    assert ConstrainedNMF(n_components=3).random_state == 0  # a fixed default seed
    params = est.get_params()
    assert params["n_components"] == 3 and params["navigation_shape"] is None
    assert est.set_params(tol=1e-3, navigation_shape=(4, 4)) is est
    assert est.tol == 1e-3 and est.navigation_shape == (4, 4)
    with pytest.raises(ValueError, match="invalid parameter 'n_comp'"):
        est.set_params(n_comp=2)
    assert (
        repr(est)
        == "ConstrainedNMF(n_components=3, navigation_shape=(4, 4), random_state=1, tol=0.001)"
    )
    assert type(est)(**est.get_params()).get_params() == est.get_params()


def test_estimator_clone_with_sklearn():
    import sklearn.base as base  # the tests extra installs scikit-learn

    from hyperspy_cnmf import ConstrainedNMF

    est = ConstrainedNMF(n_components=2, map_resolution=3.0, navigation_shape=(4, 4))
    copy = base.clone(est)
    assert copy is not est and copy.get_params() == est.get_params()


def _core_fit(X, k, nav_shape, sig_shape, resolution):
    from hyperspy_cnmf._beam import locate_direct_beam
    from hyperspy_cnmf.constraints import (
        DiffractionDipConstraint,
        MapResolutionConstraint,
    )
    from hyperspy_cnmf.nmf import DenseOperator, constrained_nmf

    map_c = (
        None
        if nav_shape is None
        else MapResolutionConstraint(nav_shape, resolution, filter="tukey")
    )
    diff_c = None
    if sig_shape is not None:
        beam = locate_direct_beam(X.mean(axis=0).reshape(sig_shape))
        diff_c = DiffractionDipConstraint.from_beam(beam, sig_shape)
    return constrained_nmf(
        DenseOperator(X),
        k,
        random_state=0,
        map_constraint=map_c,
        diffraction_constraint=diff_c,
        sketch=True,
        separate=True,
    )


def test_estimator_through_hyperspy_on_a_signal2d_matches_the_core(data):
    from hyperspy_cnmf import ConstrainedNMF

    s = hs.signals.Signal2D(data.copy())
    est = ConstrainedNMF(
        n_components=3,
        navigation_shape=s.data.shape[:2],
        map_resolution=3.0,
        signal_shape=s.data.shape[-2:],
        random_state=0,
    )
    s.decomposition(algorithm=est, print_info=False)
    lr = s.learning_results
    assert type(s) is hs.signals.Signal2D
    assert lr.factors.shape == (24 * 24, 3) and lr.loadings.shape == (256, 3)
    assert (lr.factors >= 0).all() and (lr.loadings >= 0).all()

    X = np.ascontiguousarray(data.reshape(256, 24 * 24))
    ref = _core_fit(X, 3, (16, 16), (24, 24), 3.0)
    np.testing.assert_allclose(lr.loadings, ref.W, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(lr.factors, ref.Ht, rtol=1e-6, atol=1e-9)
    assert est.components_.shape == (3, 24 * 24) and est.n_iter_ >= 1
    np.testing.assert_allclose(
        est.reconstruction_err_, np.linalg.norm(X - ref.W @ ref.Ht.T), rtol=1e-6
    )

    # transform: the non-negative least-squares maps for the fitted patterns fit no worse
    T = est.transform(X)
    assert (T >= 0).all()
    assert np.linalg.norm(X - T @ est.components_) <= est.reconstruction_err_ * (
        1 + 1e-6
    )


def test_estimator_on_a_signal1d():
    from hyperspy_cnmf import ConstrainedNMF

    rng = np.random.default_rng(0)
    maps = rng.random((2, 12, 10))
    spectra = rng.random((2, 30))
    s = hs.signals.Signal1D(
        rng.poisson(50 * np.einsum("kyx,kc->yxc", maps, spectra)).astype(float)
    )
    est = ConstrainedNMF(
        n_components=2, navigation_shape=(12, 10), map_resolution=2.5, random_state=0
    )
    s.decomposition(algorithm=est, print_info=False)
    lr = s.learning_results
    assert lr.factors.shape == (30, 2) and lr.loadings.shape == (120, 2)
    assert (lr.factors >= 0).all() and (lr.loadings >= 0).all()
    ref = _core_fit(
        np.ascontiguousarray(s.data.reshape(120, 30), dtype=np.float64),
        2,
        (12, 10),
        None,
        2.5,
    )
    np.testing.assert_allclose(lr.loadings, ref.W, rtol=1e-6, atol=1e-9)

    with pytest.raises(ValueError, match="signal_shape .* does not match"):
        ConstrainedNMF(n_components=2, signal_shape=(30,)).fit(s.data.reshape(120, 30))


def test_estimator_errors():
    from hyperspy_cnmf import ConstrainedNMF

    X = np.ones((16, 9))
    with pytest.raises(ValueError, match="needs n_components"):
        ConstrainedNMF().fit(X)
    with pytest.raises(ValueError, match="non-negative"):
        ConstrainedNMF(n_components=2).fit(-X)
    with pytest.raises(ValueError, match="give both or neither"):
        ConstrainedNMF(n_components=2, navigation_shape=(4, 4)).fit(X)
    with pytest.raises(ValueError, match="navigation_shape .* does not match"):
        ConstrainedNMF(n_components=2, navigation_shape=(3, 4), map_resolution=2).fit(X)
    with pytest.raises(RuntimeError, match="not fitted"):
        ConstrainedNMF(n_components=2).transform(X)
    # a navigation_mask removes rows: the map constraint says so
    s = hs.signals.Signal1D(np.random.default_rng(0).random((4, 4, 9)))
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    est = ConstrainedNMF(n_components=2, navigation_shape=(4, 4), map_resolution=2)
    with pytest.raises(ValueError, match="no navigation_mask"):
        s.decomposition(algorithm=est, navigation_mask=mask, print_info=False)
