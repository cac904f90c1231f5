"""Tests of the py4DSTEM bridge (hyperspy_cnmf.io).

Tests marked ``py4dstem`` need py4DSTEM (deselected by default; run them in the
py4DSTEM environment with ``bash .ci/py4dstem_env.sh``). The unmarked ones run
in the main environment: error messages, unit tables, the signal <-> parts
mapping and the cheap-import guarantee.
"""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import hyperspy_cnmf.io as hio
from hyperspy_cnmf.io import _py4dstem as bridge

RX, RY, QX, QY = 3, 4, 5, 6


def _make_signal(lazy=False):
    import hyperspy.api as hs

    data = np.arange(RX * RY * QX * QY, dtype="float32").reshape(RX, RY, QX, QY)
    s = hs.signals.Signal2D(data)
    s.set_signal_type("4D-STEM")
    s.metadata.General.title = "scan"
    nav_x, nav_y = s.axes_manager.navigation_axes
    sig_x, sig_y = s.axes_manager.signal_axes
    for ax in (nav_x, nav_y):
        ax.scale, ax.units = 1.5, "nm"
    for ax in (sig_x, sig_y):
        ax.scale, ax.units = 0.02, "1/Å"
    sig_y.offset = -2.2 * 0.02  # qx0 = 2.2 px
    sig_x.offset = -3.1 * 0.02  # qy0 = 3.1 px
    return s.as_lazy() if lazy else s


@pytest.fixture
def no_py4dstem(monkeypatch):
    """Make ``import py4DSTEM`` fail, as if it were not installed."""
    monkeypatch.setitem(sys.modules, "py4DSTEM", None)


# ---------------------------------------------------------------------------
# main environment (no py4DSTEM needed)
# ---------------------------------------------------------------------------


def test_public_api():
    assert set(hio.__all__) == {
        "from_py4dstem",
        "to_py4dstem",
        "load_py4dstem",
        "as_signal",
        "load",
        "load_fpd_hdf5",
    }
    for name in hio.__all__:
        assert getattr(hio, name).__doc__


def test_import_is_cheap_and_as_signal_does_not_import_py4dstem():
    code = (
        "import sys\n"
        "import hyperspy_cnmf.io as hio\n"
        "assert 'py4DSTEM' not in sys.modules\n"
        "assert 'hyperspy' not in sys.modules\n"
        "import numpy as np, hyperspy.api as hs\n"
        "s = hs.signals.Signal2D(np.zeros((2, 3, 4, 4)))\n"
        "assert hio.as_signal(s) is s\n"
        "try:\n"
        "    hio.from_py4dstem(s)\n"
        "except TypeError:\n"
        "    pass\n"
        "assert 'py4DSTEM' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_as_signal_returns_signal_unchanged(no_py4dstem):
    s = _make_signal()
    assert hio.as_signal(s) is s
    lazy = _make_signal(lazy=True)
    assert hio.as_signal(lazy) is lazy


def test_as_signal_rejects_other_objects():
    with pytest.raises(TypeError, match="HyperSpy signal or a py4DSTEM DataCube"):
        hio.as_signal(np.zeros((2, 2, 2, 2)))


def test_from_py4dstem_rejects_non_datacube():
    with pytest.raises(TypeError, match="expects a py4DSTEM DataCube"):
        hio.from_py4dstem(np.zeros((2, 2, 2, 2)))
    with pytest.raises(TypeError, match="expects a py4DSTEM DataCube"):
        hio.from_py4dstem(_make_signal())


def test_to_py4dstem_import_error_hint(no_py4dstem):
    with pytest.raises(ImportError, match=r'pip install "py4dstem>=0\.14\.18,<0\.15"'):
        hio.to_py4dstem(_make_signal())


def test_load_py4dstem_needs_py4dstem_only_for_legacy_files(no_py4dstem, tmp_path):
    # EMD 1.0 files are read with h5py (tests/test_io_emd.py); a file in another
    # layout (py4DSTEM <= 0.13) still needs py4DSTEM.read
    import h5py

    with pytest.raises(FileNotFoundError):
        hio.load_py4dstem(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "old.h5", "w") as f:
        f["4DSTEM_experiment/data"] = np.ones(2)
    with pytest.raises(ImportError, match=r'pip install "py4dstem>=0\.14\.18,<0\.15"'):
        hio.load_py4dstem(tmp_path / "old.h5")


def test_to_py4dstem_rejects_non_signal():
    with pytest.raises(TypeError, match="Expected a HyperSpy signal"):
        hio.to_py4dstem(np.zeros((2, 2, 2, 2)))


def test_to_py4dstem_rejects_wrong_dimensions():
    s = _make_signal()
    with pytest.raises(ValueError, match="2 navigation and 2 signal"):
        hio.to_py4dstem(s.inav[0])
    with pytest.raises(ValueError, match="2 navigation and 2 signal"):
        hio.to_py4dstem(s.as_signal1D(0))


def test_to_py4dstem_rejects_inconsistent_axes():
    s = _make_signal()
    s.axes_manager.signal_axes[0].scale = 0.03
    with pytest.raises(ValueError, match="single Q pixel size"):
        hio.to_py4dstem(s)
    s = _make_signal()
    s.axes_manager.navigation_axes[1].units = "Å"
    with pytest.raises(ValueError, match="single R pixel size"):
        hio.to_py4dstem(s)
    s = _make_signal()
    for ax in s.axes_manager.signal_axes:
        ax.units = "eV"
    with pytest.raises(ValueError, match="no py4DSTEM equivalent"):
        hio.to_py4dstem(s)


@pytest.mark.parametrize(
    "units, space, expected",
    [
        ("1/Å", "Q", ("A^-1", 1.0)),
        ("1 / Å", "Q", ("A^-1", 1.0)),
        ("1/\u212b", "Q", ("A^-1", 1.0)),  # ANGSTROM SIGN
        ("1/A", "Q", ("A^-1", 1.0)),
        ("1/nm", "Q", ("A^-1", 0.1)),
        ("mrad", "Q", ("mrad", 1.0)),
        ("rad", "Q", ("mrad", 1000.0)),
        ("px", "Q", ("pixels", 1.0)),
        ("<undefined>", "Q", ("pixels", 1.0)),
        ("Å", "R", ("A", 1.0)),
        ("nm", "R", ("nm", 1.0)),
        ("µm", "R", ("um", 1.0)),
        ("\u03bcm", "R", ("um", 1.0)),  # GREEK MU
        ("px", "R", ("pixels", 1.0)),
        ("<undefined>", "R", ("pixels", 1.0)),
        ("furlong", "R", ("furlong", 1.0)),
    ],
)
def test_units_to_py4dstem(units, space, expected):
    assert bridge._units_to_py4dstem(units, space) == expected


@pytest.mark.parametrize(
    "units, space, expected",
    [
        ("A^-1", "Q", "1/Å"),
        ("mrad", "Q", "mrad"),
        ("pixels", "Q", "px"),
        ("A", "R", "Å"),
        ("nm", "R", "nm"),
        ("um", "R", "µm"),
        ("pixels", "R", "px"),
        ("furlong", "R", "furlong"),
    ],
)
def test_units_to_hyperspy_round_trip(units, space, expected):
    assert bridge._units_to_hyperspy(units, space) == expected
    assert bridge._units_to_py4dstem(expected, space) == (units, 1.0)


def test_parts_axis_mapping():
    params = {
        "Q_pixel_size": 0.02,
        "R_pixel_size": 1.5,
        "Q_pixel_units": "A^-1",
        "R_pixel_units": "nm",
        "qx0": np.full((RX, RY), 2.2),
        "qy0": np.full((RX, RY), 3.1),
        "qx0_mean": 2.2,
        "qy0_mean": 3.1,
        "QR_flip": True,
        "QR_rotation_degrees": 12.5,
        "probe_center": (1.0, 2.0),
        "nothing": None,
    }
    data = np.random.default_rng(0).random((RX, RY, QX, QY))
    s = bridge._signal_from_parts(data, params, name="cube")
    assert type(s).__name__ == "STEM4D"
    assert s.data is data
    assert s.metadata.General.title == "cube"
    am = s.axes_manager
    assert am.navigation_shape == (RY, RX)
    assert am.signal_shape == (QY, QX)
    nav_x, nav_y = am.navigation_axes
    sig_x, sig_y = am.signal_axes
    assert (nav_x.name, nav_y.name, sig_x.name, sig_y.name) == ("x", "y", "kx", "ky")
    assert (nav_x.size, nav_y.size, sig_x.size, sig_y.size) == (RY, RX, QY, QX)
    assert nav_x.units == nav_y.units == "nm"
    assert nav_x.scale == nav_y.scale == 1.5
    assert sig_x.units == sig_y.units == "1/Å"
    assert sig_y.offset == pytest.approx(-2.2 * 0.02)  # Qx
    assert sig_x.offset == pytest.approx(-3.1 * 0.02)  # Qy
    # dc.data[rx, ry, qx, qy] is s.inav[ry, rx].isig[qy, qx]
    assert s.inav[2, 1].isig[4, 3].data == data[1, 2, 3, 4]
    p4 = s.metadata.Signal.py4DSTEM
    np.testing.assert_array_equal(p4.origin_qx0, params["qx0"])
    np.testing.assert_array_equal(p4.origin_qy0, params["qy0"])
    assert p4.calibration.QR_flip is True
    assert p4.calibration.QR_rotation_degrees == 12.5
    np.testing.assert_array_equal(p4.calibration.probe_center, [1.0, 2.0])
    assert not p4.calibration.has_item("nothing")

    data2, name, params2 = bridge._parts_from_signal(s)
    assert data2 is data
    assert name == "cube"
    for key in ("Q_pixel_size", "R_pixel_size", "Q_pixel_units", "R_pixel_units"):
        assert params2[key] == params[key]
    for key in ("qx0", "qy0"):
        np.testing.assert_array_equal(params2[key], params[key])
    assert params2["QR_flip"] is True
    assert params2["QR_rotation_degrees"] == 12.5


def test_parts_no_origin_stays_without_origin():
    params = {"Q_pixel_size": 1, "R_pixel_size": 1}
    params.update(Q_pixel_units="pixels", R_pixel_units="pixels")
    s = bridge._signal_from_parts(np.zeros((RX, RY, QX, QY)), params)
    assert not s.metadata.has_item("Signal.py4DSTEM")
    assert all(ax.units == "px" for ax in s.axes_manager._axes)
    _, name, params2 = bridge._parts_from_signal(s)
    assert name == "datacube"
    assert params2 == params


def test_parts_offsets_rule_the_origin():
    s = _make_signal()
    _, _, params = bridge._parts_from_signal(s)
    assert params["qx0_mean"] == pytest.approx(2.2)
    assert params["qy0_mean"] == pytest.approx(3.1)
    assert "qx0" not in params
    # per-position origins are shifted to the offsets' mean
    s.metadata.set_item(
        "Signal.py4DSTEM.origin_qx0", np.arange(RX * RY).reshape(RX, RY)
    )
    _, _, params = bridge._parts_from_signal(s)
    assert np.mean(params["qx0"]) == pytest.approx(2.2)
    np.testing.assert_allclose(np.diff(params["qx0"], axis=1), 1.0)
    # a cropped signal drops the (now wrong-shaped) per-position origin
    with pytest.warns(UserWarning, match="only the mean origin"):
        _, _, params = bridge._parts_from_signal(s.inav[:2])
    assert "qx0" not in params
    assert params["qx0_mean"] == pytest.approx(2.2)


def test_parts_unit_conversion_and_nav_offset_warning():
    s = _make_signal()
    for ax in s.axes_manager.signal_axes:
        ax.units, ax.scale = "1/nm", 0.2
    s.axes_manager.navigation_axes[0].offset = 3.0
    with pytest.warns(UserWarning, match="no real-space origin"):
        _, _, params = bridge._parts_from_signal(s)
    assert params["Q_pixel_units"] == "A^-1"
    assert params["Q_pixel_size"] == pytest.approx(0.02)


def test_parts_lazy_signal():
    params = {"Q_pixel_size": 0.5, "R_pixel_size": 2.0}
    params.update(Q_pixel_units="mrad", R_pixel_units="A")
    data = np.ones((RX, RY, QX, QY))
    s = bridge._signal_from_parts(data, params, lazy=True, chunks=(1, 2, -1, -1))
    assert type(s).__name__ == "LazySTEM4D"
    assert s.data.chunks[0] == (1, 1, 1)
    data[1, 2, 3, 4] = -7.0  # no copy: the dask array reads `data`
    assert s.data[1, 2, 3, 4].compute() == -7.0
    assert s.axes_manager.signal_axes[0].units == "mrad"
    assert s.axes_manager.navigation_axes[0].units == "Å"


# ---------------------------------------------------------------------------
# py4DSTEM environment
# ---------------------------------------------------------------------------


@pytest.fixture
def py4DSTEM():
    if os.environ.get("HYPERSPY_CNMF_REQUIRE_PY4DSTEM"):
        import py4DSTEM  # fail loudly in the py4DSTEM environment

        return py4DSTEM
    return pytest.importorskip("py4DSTEM")


def _make_datacube(py4DSTEM, per_position_origin=True, name="mycube"):
    rng = np.random.default_rng(42)
    data = rng.random((RX, RY, QX, QY)).astype("float32")
    dc = py4DSTEM.DataCube(data=data, name=name)
    cal = dc.calibration
    cal.set_Q_pixel_size(0.0234)
    cal.set_Q_pixel_units("A^-1")
    cal.set_R_pixel_size(1.7)
    cal.set_R_pixel_units("nm")
    if per_position_origin:
        cal.set_origin(
            (2.2 + 0.1 * rng.random((RX, RY)), 3.1 + 0.1 * rng.random((RX, RY)))
        )
    else:
        cal.set_qx0_mean(2.2)
        cal.set_qy0_mean(3.1)
        dc.calibrate()
    cal.set_QR_flip(True)
    cal.set_QR_rotation_degrees(7.5)
    return dc


def _assert_same_datacube(dc, dc2):
    np.testing.assert_array_equal(dc2.data, dc.data)
    assert dc2.name == dc.name
    c, c2 = dc.calibration, dc2.calibration
    assert c2.get_Q_pixel_size() == c.get_Q_pixel_size()
    assert c2.get_R_pixel_size() == c.get_R_pixel_size()
    assert c2.get_Q_pixel_units() == c.get_Q_pixel_units()
    assert c2.get_R_pixel_units() == c.get_R_pixel_units()
    assert c2.get_origin_mean() == c.get_origin_mean()
    if c.get_origin() is None:
        assert c2.get_origin() is None
    else:
        for a, b in zip(c.get_origin(), c2.get_origin()):
            np.testing.assert_array_equal(b, a)
    assert c2.get_QR_flip() == c.get_QR_flip()
    assert c2.get_QR_rotation_degrees() == c.get_QR_rotation_degrees()
    assert c2.get_QR_rotation() == c.get_QR_rotation()
    for k in range(4):
        np.testing.assert_allclose(dc2.dims[k], dc.dims[k])


def _assert_same_signal(s, s2):
    assert type(s2) is type(s)
    np.testing.assert_array_equal(np.asarray(s2.data), np.asarray(s.data))
    assert s2.metadata.General.title == s.metadata.General.title
    for ax, ax2 in zip(s.axes_manager._axes, s2.axes_manager._axes):
        assert (ax2.name, ax2.size, ax2.units, ax2.navigate) == (
            ax.name,
            ax.size,
            ax.units,
            ax.navigate,
        )
        assert ax2.scale == ax.scale
        assert ax2.offset == ax.offset


@pytest.mark.py4dstem
@pytest.mark.parametrize("per_position_origin", [True, False])
def test_from_py4dstem_mapping(py4DSTEM, per_position_origin):
    dc = _make_datacube(py4DSTEM, per_position_origin)
    s = hio.from_py4dstem(dc)
    assert type(s).__name__ == "STEM4D"
    assert s.metadata.Signal.signal_type == "4D-STEM"
    assert s.metadata.General.title == "mycube"
    assert s.data is dc.data  # no copy
    am = s.axes_manager
    assert am.navigation_shape == (RY, RX) and am.signal_shape == (QY, QX)
    nav_x, nav_y = am.navigation_axes
    sig_x, sig_y = am.signal_axes
    assert nav_x.scale == nav_y.scale == 1.7
    assert nav_x.units == nav_y.units == "nm"
    assert sig_x.scale == sig_y.scale == 0.0234
    assert sig_x.units == sig_y.units == "1/Å"
    qx0_mean, qy0_mean = dc.calibration.get_origin_mean()
    assert sig_y.offset == -qx0_mean * 0.0234  # ky <-> Qx
    assert sig_x.offset == -qy0_mean * 0.0234  # kx <-> Qy
    # the origin pixel has coordinate 0
    assert sig_y.index2value(0) + qx0_mean * sig_y.scale == pytest.approx(0)
    assert s.inav[3, 2].isig[5, 4].data == dc.data[2, 3, 4, 5]
    p4 = s.metadata.Signal.py4DSTEM
    if per_position_origin:
        qx0, qy0 = dc.calibration.get_origin()
        np.testing.assert_array_equal(p4.origin_qx0, qx0)
        np.testing.assert_array_equal(p4.origin_qy0, qy0)
    else:
        assert not p4.has_item("origin_qx0")
    assert p4.calibration.QR_flip is True
    assert p4.calibration.QR_rotation_degrees == 7.5


@pytest.mark.py4dstem
@pytest.mark.parametrize("per_position_origin", [True, False])
def test_round_trip_datacube_signal_datacube(py4DSTEM, per_position_origin):
    dc = _make_datacube(py4DSTEM, per_position_origin)
    dc2 = hio.to_py4dstem(hio.from_py4dstem(dc))
    assert isinstance(dc2, py4DSTEM.DataCube)
    _assert_same_datacube(dc, dc2)


@pytest.mark.py4dstem
def test_round_trip_uncalibrated_datacube(py4DSTEM):
    dc = py4DSTEM.DataCube(data=np.ones((RX, RY, QX, QY)))
    s = hio.from_py4dstem(dc)
    assert all(ax.units == "px" and ax.offset == 0 for ax in s.axes_manager._axes)
    dc2 = hio.to_py4dstem(s)
    _assert_same_datacube(dc, dc2)
    assert dc2.calibration.get_origin_mean() == (None, None)


@pytest.mark.py4dstem
@pytest.mark.parametrize("lazy", [False, True])
def test_round_trip_signal_datacube_signal(py4DSTEM, lazy):
    s = _make_signal(lazy=lazy)
    dc = hio.to_py4dstem(s)
    assert isinstance(dc, py4DSTEM.DataCube)
    assert dc.name == "scan"
    cal = dc.calibration
    assert cal.get_Q_pixel_size() == 0.02
    assert cal.get_Q_pixel_units() == "A^-1"
    assert cal.get_R_pixel_size() == 1.5
    assert cal.get_R_pixel_units() == "nm"
    assert cal.get_origin_mean() == pytest.approx((2.2, 3.1))
    np.testing.assert_array_equal(dc.data, np.asarray(s.data))
    s2 = hio.from_py4dstem(dc, lazy=lazy)
    _assert_same_signal(s, s2)


@pytest.mark.py4dstem
def test_to_py4dstem_converts_units(py4DSTEM):
    s = _make_signal()
    for ax in s.axes_manager.signal_axes:
        ax.units, ax.scale, ax.offset = "mrad", 0.5, 0.0
    for ax in s.axes_manager.navigation_axes:
        ax.units = "Å"
    cal = hio.to_py4dstem(s).calibration
    assert (cal.get_Q_pixel_units(), cal.get_Q_pixel_size()) == ("mrad", 0.5)
    assert cal.get_R_pixel_units() == "A"
    assert cal.get_origin_mean() == (None, None)
    for ax in s.axes_manager.signal_axes:
        ax.units, ax.scale = "1/nm", 0.2
    cal = hio.to_py4dstem(s).calibration
    assert cal.get_Q_pixel_units() == "A^-1"
    assert cal.get_Q_pixel_size() == pytest.approx(0.02)


@pytest.mark.py4dstem
def test_from_py4dstem_lazy_does_not_copy(py4DSTEM):
    import dask.array as da

    dc = _make_datacube(py4DSTEM)
    s = hio.from_py4dstem(dc, lazy=True)
    assert type(s).__name__ == "LazySTEM4D"
    assert isinstance(s.data, da.Array)
    assert s.data.chunks[2:] == ((QX,), (QY,))
    dc.data[1, 2, 3, 4] = -7.0  # visible through the lazy signal: no copy
    assert s.data[1, 2, 3, 4].compute() == -7.0
    s_eager = hio.from_py4dstem(dc)
    s.compute()
    _assert_same_signal(s_eager, s)


@pytest.mark.py4dstem
def test_from_py4dstem_not_4d(py4DSTEM):
    dc = _make_datacube(py4DSTEM)
    dc.data = dc.data[0]
    with pytest.raises(ValueError, match="must be 4D"):
        hio.from_py4dstem(dc)


@pytest.mark.py4dstem
def test_as_signal_converts_datacube(py4DSTEM):
    dc = _make_datacube(py4DSTEM)
    s = hio.as_signal(dc)
    assert type(s).__name__ == "STEM4D"
    assert type(hio.as_signal(dc, lazy=True)).__name__ == "LazySTEM4D"
    assert hio.as_signal(s) is s


@pytest.mark.py4dstem
@pytest.mark.parametrize("lazy", [False, True])
def test_load_py4dstem(py4DSTEM, tmp_path, lazy):
    dc = _make_datacube(py4DSTEM)
    fname = tmp_path / "scan.h5"
    py4DSTEM.save(str(fname), dc, mode="o")
    s = hio.load_py4dstem(fname, lazy=lazy)
    assert type(s).__name__ == ("LazySTEM4D" if lazy else "STEM4D")
    _assert_same_signal(hio.from_py4dstem(dc, lazy=lazy), s)
    p4 = s.metadata.Signal.py4DSTEM
    np.testing.assert_array_equal(p4.origin_qx0, dc.calibration.get_origin()[0])
    _assert_same_datacube(dc, hio.to_py4dstem(s))
    # also straight from py4DSTEM.read
    _assert_same_datacube(dc, py4DSTEM.read(str(fname)))


@pytest.mark.py4dstem
def test_load_py4dstem_errors(py4DSTEM, tmp_path):
    with pytest.raises(FileNotFoundError):
        hio.load_py4dstem(tmp_path / "missing.h5")

    # a file without any DataCube
    image = py4DSTEM.RealSlice(data=np.ones((RX, RY)), name="image")
    no_cube = tmp_path / "image.h5"
    py4DSTEM.save(str(no_cube), image, mode="o")
    with pytest.raises(ValueError, match="No py4DSTEM DataCube.*image"):
        hio.load_py4dstem(no_cube)

    # a file with two DataCubes: datapath picks one
    dc = _make_datacube(py4DSTEM, name="first")
    second = py4DSTEM.DataCube(data=np.ones((2, 2, QX, QY)), name="second")
    dc.attach(second)
    two = tmp_path / "two.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        py4DSTEM.save(str(two), dc.root, mode="o")
    with pytest.raises(ValueError, match="Several DataCubes.*first.*second"):
        hio.load_py4dstem(two)
    with pytest.raises(ValueError, match="not a DataCube"):
        hio.load_py4dstem(two, datapath="nowhere")
    for lazy in (False, True):
        s = hio.load_py4dstem(two, datapath="/first_root/first/second", lazy=lazy)
        assert s.metadata.General.title == "second"
        assert s.axes_manager.navigation_shape == (2, 2)
        # the calibration is shared by the whole tree
        assert s.axes_manager.signal_axes[0].scale == 0.0234
        s = hio.load_py4dstem(two, datapath="first_root/first", lazy=lazy)
        assert s.axes_manager.navigation_shape == (RY, RX)


@pytest.mark.py4dstem
def test_pick_datacube_from_tree(py4DSTEM):
    dc = _make_datacube(py4DSTEM, name="first")
    assert bridge._pick_datacube(dc, "x") is dc
    assert bridge._pick_datacube(dc.root, "x") is dc
    second = py4DSTEM.DataCube(data=np.ones((2, 2, QX, QY)), name="second")
    dc.attach(second)
    with pytest.raises(ValueError, match="Several DataCubes"):
        bridge._pick_datacube(dc.root, "x")
    with pytest.raises(ValueError, match="No py4DSTEM DataCube"):
        bridge._pick_datacube(["root_a", "root_b"], "x")


# A file saved by py4DSTEM reads identically without py4DSTEM -------------------

_READ_WITHOUT_PY4DSTEM = """
import pickle, sys

class _Block:  # refuse py4DSTEM and its submodules, as if not installed
    def find_spec(self, name, path=None, target=None):
        if name == "py4DSTEM" or name.startswith("py4DSTEM."):
            raise ImportError("py4DSTEM blocked")

sys.meta_path.insert(0, _Block())
import numpy as np
import hyperspy_cnmf.io as hio

out = {}
for key, (fname, datapath, lazy) in pickle.loads(bytes.fromhex(sys.argv[1])).items():
    s = hio.load_py4dstem(fname, datapath=datapath, lazy=lazy)
    axes = [(a.name, a.size, a.scale, a.offset, a.units, a.navigate) for a in s.axes_manager._axes]
    out[key] = (type(s).__name__, np.asarray(s.data), axes, s.metadata.as_dictionary())
assert not any(m.split(".")[0] == "py4DSTEM" for m in sys.modules), "py4DSTEM was imported"
sys.stdout.write(pickle.dumps(out).hex())
"""


def _summary(s):
    axes = [
        (a.name, a.size, a.scale, a.offset, a.units, a.navigate)
        for a in s.axes_manager._axes
    ]
    return type(s).__name__, np.asarray(s.data), axes, s.metadata.as_dictionary()


def _assert_deep_equal(a, b, where="metadata"):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, sorted(a), sorted(b))
        for k in a:
            _assert_deep_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert np.asarray(a).dtype == np.asarray(b).dtype, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert type(a) is type(b) and a == b, (where, a, b)


def _read_without_py4dstem(cases):
    import pickle

    arg = pickle.dumps(
        {k: (str(f), d, lazy) for k, (f, d, lazy) in cases.items()}
    ).hex()
    run = subprocess.run(
        [sys.executable, "-c", _READ_WITHOUT_PY4DSTEM, arg],
        check=True,
        capture_output=True,
        text=True,
    )
    return pickle.loads(bytes.fromhex(run.stdout))


def _assert_same_summary(expected, got):
    name, data, axes, md = expected
    name2, data2, axes2, md2 = got
    assert name2 == name
    assert data2.dtype == data.dtype
    np.testing.assert_array_equal(data2, data)
    assert axes2 == axes  # exact scales and offsets
    _assert_deep_equal(md, md2)


@pytest.mark.py4dstem
def test_file_saved_by_py4dstem_reads_identically_without_py4dstem(py4DSTEM, tmp_path):
    from test_io_emd import _calibrated, write_emd1

    files = {}
    # a calibrated cube with per-position origin and free calibration items
    dc = _make_datacube(py4DSTEM)
    cal = dc.calibration
    cal["probe_semiangle"] = 1.5
    cal["ellipse"] = {"a": 1.0, "b": 2.0}
    cal["center_guess"] = (2.0, 3.5)
    cal["label"] = "test"
    py4DSTEM.save(str(tmp_path / "rich.h5"), dc, mode="o")
    files["rich"] = (tmp_path / "rich.h5", None)
    # a mean origin only
    py4DSTEM.save(str(tmp_path / "mean.h5"), _make_datacube(py4DSTEM, False), mode="o")
    files["mean"] = (tmp_path / "mean.h5", None)
    # uncalibrated integer counts
    plain = py4DSTEM.DataCube(
        data=np.arange(2 * 2 * QX * QY, dtype="uint16").reshape(2, 2, QX, QY)
    )
    py4DSTEM.save(str(tmp_path / "plain.h5"), plain, mode="o")
    files["plain"] = (tmp_path / "plain.h5", None)
    # a tree: a second DataCube and an image attached to the first
    dc = _make_datacube(py4DSTEM, name="first")
    dc.attach(py4DSTEM.DataCube(data=np.full((2, 2, QX, QY), 7.0), name="second"))
    dc.attach(py4DSTEM.RealSlice(data=np.ones((RX, RY)), name="image"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        py4DSTEM.save(str(tmp_path / "tree.h5"), dc.root, mode="o")
    files["tree_second"] = (tmp_path / "tree.h5", "first_root/first/second")
    files["tree_first"] = (tmp_path / "tree.h5", "first_root/first")
    # the layout tests/test_io_emd.py writes with h5py (checks that py4DSTEM reads it alike)
    rng = np.random.default_rng(42)
    write_emd1(
        tmp_path / "h5py.h5",
        rng.random((RX, RY, QX, QY)).astype("float32"),
        name="mycube",
        calibration=_calibrated(rng),
    )
    files["h5py_writer"] = (tmp_path / "h5py.h5", None)

    cases = {
        (k, lazy): (f, d, lazy) for k, (f, d) in files.items() for lazy in (False, True)
    }
    got = _read_without_py4dstem(cases)
    for (key, lazy), (fname, datapath, _) in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if datapath is None:
                datacube = py4DSTEM.read(str(fname))
            else:
                datacube = py4DSTEM.read(str(fname), datapath=datapath, tree=False)
        assert isinstance(datacube, py4DSTEM.DataCube), key
        expected = _summary(hio.from_py4dstem(datacube, lazy=lazy))
        _assert_same_summary(expected, got[key, lazy])
    # the free items did travel
    p4 = got["rich", False][3]["Signal"]["py4DSTEM"]["calibration"]
    assert p4["probe_semiangle"] == 1.5 and p4["ellipse"] == {"a": 1.0, "b": 2.0}
    assert p4["label"] == "test"
