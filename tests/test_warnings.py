"""Warnings of the main job point at the user's line (hyperspy_cnmf._warnings).

Each warning is raised through the ``STEM4D`` method and the functional API
(and HyperSpy's ``s.decomposition(algorithm=ConstrainedNMF(...))``), eager and
lazy; ``record[0].filename`` must be this file, not a wrapper of the package.
"""

import warnings

import hyperspy.api as hs
import numpy as np
import pytest

import hyperspy_cnmf
from hyperspy_cnmf._warnings import at_user_site, user_stacklevel, warn
from hyperspy_cnmf.data import simulated_precipitates
from hyperspy_cnmf.nmf import ConvergenceWarning

KW = dict(print_info=False, show_progressbar=False, random_state=0)


def _sim():
    return simulated_precipitates(
        scan_shape=(16, 16), detector_shape=(24, 24), n_grains=2, grain_diameter=3.0
    )


def _descan():
    s = _sim()
    for ix in range(16):  # the beam walks 3 px along x over the scan
        s.data[:, ix] = np.roll(s.data[:, ix], ix // 5, axis=-1)
    return s


def _hot():
    s = _sim()
    s.data[..., 5, 5] = 50 * s.data.max()
    return s


def _decompose(s, path, **kw):
    kw = dict(KW, **kw)
    if path == "method":
        s.decomposition(algorithm="constrained_nmf", output_dimension=3, **kw)
    else:
        hyperspy_cnmf.decomposition(s, 3, **kw)


def _ours(record, category=UserWarning, match=""):
    return [
        w
        for w in record
        if issubclass(w.category, category) and match in str(w.message)
    ]


@pytest.mark.parametrize("path", ["method", "api"])
@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize(
    "make, kw, category, match",
    [
        (_descan, {}, UserWarning, "direct beam moves"),
        (_hot, {}, UserWarning, "hot detector pixel"),
        (_sim, {"max_iter": 2}, ConvergenceWarning, "iteration cap"),
    ],
    ids=["descan", "hot-pixel", "convergence"],
)
def test_decomposition_warnings_point_at_the_call(
    path, lazy, make, kw, category, match
):
    s = make()
    s = s.as_lazy() if lazy else s
    with pytest.warns(category, match=match) as record:
        _decompose(s, path, **kw)
    ours = _ours(record, category, match)
    assert len(ours) == 1
    assert ours[0].filename == __file__


@pytest.mark.filterwarnings("ignore::hyperspy_cnmf.nmf.ConvergenceWarning")
@pytest.mark.parametrize("path", ["method", "api"])
def test_clustering_warnings_point_at_the_call(path):
    s = _sim()
    s.decomposition(algorithm="constrained_nmf", output_dimension=4, **KW)
    # the calibrated origin 5 px off the measured beam, and a Euclidean-only linkage
    s.axes_manager.signal_axes[0].offset += 5 * s.axes_manager.signal_axes[0].scale
    with pytest.warns(UserWarning) as record:
        if path == "method":
            s.cluster_diffraction(n_clusters=2, method="ward")
        else:
            hyperspy_cnmf.cluster_diffraction(s, n_clusters=2, method="ward")
    for match in ("calibrated origin", "Euclidean"):
        ours = _ours(record, UserWarning, match)
        assert len(ours) == 1, match
        assert ours[0].filename == __file__
    assert all(w.filename == __file__ for w in record)  # numpy's, if any, too


def test_estimator_in_hyperspys_decomposition_points_at_the_call():
    s = hs.signals.Signal2D(_sim().data.reshape(256, 24, 24))
    est = hyperspy_cnmf.ConstrainedNMF(n_components=3, max_iter=2, random_state=0)
    with pytest.warns(ConvergenceWarning) as record:
        s.decomposition(algorithm=est, output_dimension=3, print_info=False)
    assert _ours(record, ConvergenceWarning)[0].filename == __file__


# -- the helpers ------------------------------------------------------------


def test_warn_and_stacklevel_leave_the_package():
    with pytest.warns(UserWarning, match="here") as record:
        warn("here")
    assert record[0].filename == __file__
    assert user_stacklevel() == 1  # this file is outside the package


def test_at_user_site_repoints_package_warnings_only_and_keeps_filters():
    def third_party():
        warnings.warn("not ours", RuntimeWarning, stacklevel=1)

    @at_user_site
    def entry(inner=None):
        if inner is not None:
            return inner()
        third_party()
        np.ones(2) / np.zeros(2)  # noqa: B018 (a NumPy warning of this file's line)
        return 1

    @at_user_site
    def outer():
        return entry(lambda: warn("nested"))

    with pytest.warns(RuntimeWarning) as record:
        assert entry() == 1
    assert [str(w.message) for w in record][0] == "not ours"
    assert all(w.filename == __file__ for w in record)
    with pytest.warns(UserWarning, match="nested") as record:
        outer()
    assert len(record) == 1 and record[0].filename == __file__
    with warnings.catch_warnings():  # the user's filters still apply inside
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="not ours"):
            entry()


def test_warnings_before_an_error_are_issued():
    @at_user_site
    def fails():
        warn("first")
        raise ValueError("then")

    with pytest.warns(UserWarning, match="first") as record:
        with pytest.raises(ValueError, match="then"):
            fails()
    assert record[0].filename == __file__
