"""py4DSTEM (EMD 1.0) files read with h5py alone, in the main (numpy 2) environment.

The files are written here with h5py in the layout that py4DSTEM 0.14.18 writes
through emdfile 0.0.16 (``py4DSTEM.save``; checked against a file it saved): a
root group ``<name>_root`` (``emd_group_type="root"``) with the calibration in
``metadatabundle/calibration`` (one dataset or group per item, its kind in a
``type`` attribute) and the DataCube group (``emd_group_type="array"``,
``python_class="DataCube"``) holding ``data`` (Rx, Ry, Qx, Qy) and ``dim0..3``.
``tests/test_py4dstem.py`` cross-checks files saved by py4DSTEM itself in the
py4DSTEM environment.
"""

import sys
import uuid

import h5py
import numpy as np
import pytest

import hyperspy_cnmf.io as hio
from hyperspy_cnmf.signals import STEM4D, LazySTEM4D

RX, RY, QX, QY = 3, 4, 5, 6
Q_SIZE, R_SIZE = 0.0234, 1.7


@pytest.fixture(autouse=True)
def no_py4dstem(monkeypatch):
    """Every test here runs as if py4DSTEM were not installed."""
    monkeypatch.setitem(sys.modules, "py4DSTEM", None)


# ---------------------------------------------------------------------------
# a writer of emdfile's layout (h5py only)
# ---------------------------------------------------------------------------


def _save_item(grp, key, value):
    """``emdfile.Metadata._save_item``: one calibration item."""
    if isinstance(value, dict):
        sub = grp.create_group(key)
        sub.attrs["type"] = "dict"
        for k, v in value.items():
            _save_item(sub, k, v)
    elif value is None:
        grp.create_dataset(key, data=b"_None").attrs["type"] = b"None"
    elif isinstance(value, str):
        grp.create_dataset(key, data=value.encode("utf-8")).attrs["type"] = b"string"
    elif isinstance(value, bool):
        grp.create_dataset(key, data=value, dtype=bool).attrs["type"] = b"bool"
    elif isinstance(value, (int, float)):
        grp.create_dataset(key, data=value, dtype=type(value)).attrs["type"] = b"number"
    elif isinstance(value, np.ndarray):
        grp.create_dataset(key, data=value, dtype=value.dtype).attrs["type"] = b"array"
    elif isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
        sub = grp.create_group(key)
        kind = "tuple" if isinstance(value, tuple) else "list"
        sub.attrs["type"] = f"{kind}_of_strings".encode()
        sub.attrs["length"] = len(value)
        for i, s in enumerate(value):
            sub.create_dataset(str(i), data=s.encode("utf-8"))
    elif isinstance(value, (tuple, list)):
        kind = "tuple" if isinstance(value, tuple) else "list"
        grp.create_dataset(key, data=value).attrs["type"] = kind.encode()
    else:  # pragma: no cover - not needed here
        raise TypeError(type(value))


def _save_array_node(parent, name, data, python_class, dims):
    grp = parent.create_group(name)
    grp.attrs.create("emd_group_type", "array")
    grp.attrs.create("python_class", python_class)
    dset = grp.create_dataset(
        "data", data=data, chunks=(1, 2) + data.shape[2:] if data.ndim == 4 else None
    )
    dset.attrs.create("units", "pixel intensity")
    for i, (dim_name, units, values) in enumerate(dims):
        d = grp.create_dataset(f"dim{i}", data=values)
        d.attrs.create("name", dim_name)
        d.attrs.create("units", units)
    return grp


def _cube_dims(data, r_size=1, r_units="pixels", q_size=1, q_units="pixels"):
    rx, ry, qx, qy = data.shape
    return [
        ("Rx", r_units, np.arange(2) * r_size),
        ("Ry", r_units, np.arange(2) * r_size),
        ("Qx", q_units, np.arange(qx) * q_size),
        ("Qy", q_units, np.arange(qy) * q_size),
    ]


def write_emd1(path, data, name="datacube", calibration=None, extra=None):
    """An EMD 1.0 file as ``py4DSTEM.save(path, DataCube(data, name=name))`` writes it.

    ``calibration``: the Calibration items (py4DSTEM's defaults when None);
    ``extra``: ``[(name, data, python_class)]`` nodes written inside the
    DataCube group (as ``dc.attach(node)`` does).
    """
    cal = {
        "Q_pixel_size": 1,
        "R_pixel_size": 1,
        "Q_pixel_units": "pixels",
        "R_pixel_units": "pixels",
        "QR_flip": False,
    }
    cal.update(calibration or {})
    with h5py.File(path, "w") as f:
        f.attrs.create("emd_group_type", "file")
        f.attrs.create("version_major", 1)
        f.attrs.create("version_minor", 0)
        f.attrs.create("UUID", str(uuid.uuid4()))
        f.attrs.create("authoring_program", "emdfile")
        f.attrs.create("authoring_user", "")
        root = f.create_group(f"{name}_root")
        root.attrs.create("emd_group_type", "root")
        root.attrs.create("python_class", "Root")
        bundle = root.create_group("metadatabundle")
        bundle.attrs.create("emd_group_type", "metadatabundle")
        grp = bundle.create_group("calibration")
        grp.attrs.create("emd_group_type", "metadata")
        grp.attrs.create("python_class", "Calibration")
        items = dict(cal, _root_treepath="", _target_paths=[f"/{name}"])
        for key in sorted(items):
            _save_item(grp, key, items[key])
        cube = _save_array_node(
            root,
            name,
            data,
            "DataCube",
            _cube_dims(
                data,
                cal["R_pixel_size"],
                cal["R_pixel_units"],
                cal["Q_pixel_size"],
                cal["Q_pixel_units"],
            ),
        )
        for node_name, node_data, python_class in extra or ():
            if python_class == "DataCube":
                dims = _cube_dims(node_data)
            else:
                dims = [
                    (f"dim{i}", "pixels", np.arange(2)) for i in range(node_data.ndim)
                ]
            _save_array_node(cube, node_name, node_data, python_class, dims)


def _calibrated(rng):
    qx0 = 2.2 + 0.1 * rng.random((RX, RY))
    qy0 = 3.1 + 0.1 * rng.random((RX, RY))
    # as Calibration.set_origin + set_QR_flip + set_QR_rotation_degrees + free items
    return {
        "Q_pixel_size": Q_SIZE,
        "Q_pixel_units": "A^-1",
        "R_pixel_size": R_SIZE,
        "R_pixel_units": "nm",
        "qx0": qx0,
        "qx0_mean": float(np.mean(qx0)),
        "qx0_shift": qx0 - np.mean(qx0),
        "qy0": qy0,
        "qy0_mean": float(np.mean(qy0)),
        "qy0_shift": qy0 - np.mean(qy0),
        "QR_flip": True,
        "QR_rotation_degrees": 7.5,
        "QR_rotation": float(np.deg2rad(7.5)),
        "probe_semiangle": 1.5,
        "ellipse": {"a": 1.0, "b": 2.0},
        "center_guess": (2.0, 3.5),
        "labels": ("a", "b"),
        "nothing": None,
    }


@pytest.fixture
def emd_file(tmp_path):
    rng = np.random.default_rng(42)
    data = rng.random((RX, RY, QX, QY)).astype("float32")
    cal = _calibrated(rng)
    path = tmp_path / "scan.h5"
    write_emd1(path, data, name="mycube", calibration=cal)
    return path, data, cal


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("lazy", [False, True])
def test_reads_data_and_maps_calibration_as_from_py4dstem(emd_file, lazy):
    path, data, cal = emd_file
    s = hio.load_py4dstem(path, lazy=lazy)
    assert type(s) is (LazySTEM4D if lazy else STEM4D)
    np.testing.assert_array_equal(np.asarray(s.data), data)
    assert s.metadata.General.title == "mycube"
    assert s.metadata.Signal.signal_type == "4D-STEM"
    am = s.axes_manager
    assert am.navigation_shape == (RY, RX) and am.signal_shape == (QY, QX)
    nav_x, nav_y = am.navigation_axes
    sig_x, sig_y = am.signal_axes
    assert (nav_x.name, nav_y.name, sig_x.name, sig_y.name) == ("x", "y", "kx", "ky")
    for ax in (nav_x, nav_y):
        assert (ax.scale, ax.units, ax.offset) == (R_SIZE, "nm", 0.0)
    for ax in (sig_x, sig_y):
        assert (ax.scale, ax.units) == (Q_SIZE, "1/Å")
    assert sig_y.offset == -cal["qx0_mean"] * Q_SIZE  # ky <-> Qx
    assert sig_x.offset == -cal["qy0_mean"] * Q_SIZE  # kx <-> Qy
    assert s.inav[3, 2].isig[5, 4].data == data[2, 3, 4, 5]
    p4 = s.metadata.Signal.py4DSTEM
    np.testing.assert_array_equal(p4.origin_qx0, cal["qx0"])
    np.testing.assert_array_equal(p4.origin_qy0, cal["qy0"])
    assert p4.origin_qx0_mean == cal["qx0_mean"]
    c = p4.calibration.as_dictionary()
    assert c.pop("QR_flip") is True
    assert c.pop("QR_rotation_degrees") == 7.5
    assert c.pop("QR_rotation") == pytest.approx(np.deg2rad(7.5))
    assert c.pop("probe_semiangle") == 1.5
    assert c.pop("ellipse") == {"a": 1.0, "b": 2.0}
    np.testing.assert_array_equal(c.pop("center_guess"), [2.0, 3.5])  # tuples as arrays
    # strings tuples, None and private items (_root_treepath, _target_paths) are dropped
    assert c == {}


def test_metadata_reader_follows_emdfile_types(emd_file):
    path, _, cal = emd_file
    from hyperspy_cnmf.io._py4dstem import _read_emd_calibration

    with h5py.File(path, "r") as f:
        items = _read_emd_calibration(f, "mycube_root/mycube")
    # the values py4DSTEM.read gives (emdfile.Metadata._read_item)
    assert items["Q_pixel_units"] == "A^-1" and items["QR_flip"] is True
    assert isinstance(items["Q_pixel_size"], float) and isinstance(
        items["QR_flip"], bool
    )
    assert items["center_guess"] == (2.0, 3.5) and items["labels"] == ("a", "b")
    assert items["nothing"] is None and items["_target_paths"] == ["/mycube"]
    np.testing.assert_array_equal(items["qy0_shift"], cal["qy0_shift"])


def test_lazy_reads_chunks_along_the_scan_only_when_computed(emd_file, monkeypatch):
    path, data, _ = emd_file
    reads = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        out = original(self, key)
        if self.ndim == 4:
            reads.append(np.size(out))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    s = hio.load_py4dstem(path, lazy=True, chunks=(1, 2, -1, -1))
    assert sum(reads) == 0  # nothing read yet (at most empty dask meta probes)
    assert s.data.chunks == ((1, 1, 1), (2, 2), (QX,), (QY,))
    graph = dict(s.data.__dask_graph__())
    assert any(
        isinstance(v, h5py.Dataset) for v in graph.values()
    )  # the file, not a copy
    assert not any(isinstance(v, np.ndarray) and v.size for v in graph.values())
    np.testing.assert_array_equal(s.data[1].compute(), data[1])
    assert sum(reads) == RY * QX * QY  # one scan row: two of the twelve chunks
    assert max(reads) == 2 * QX * QY
    np.testing.assert_array_equal(s.data.compute(), data)
    # default: whole patterns in every chunk
    s = hio.load_py4dstem(path, lazy=True)
    assert s.data.chunks[2:] == ((QX,), (QY,))


def test_eager_read_closes_the_file(emd_file):
    path, _, _ = emd_file
    hio.load_py4dstem(path)
    with h5py.File(path, "r+"):  # refused if the reader still held it open read-only
        pass


def test_uncalibrated_integer_cube_and_big_endian(tmp_path):
    data = np.arange(2 * 2 * QX * QY, dtype=">u2").reshape(2, 2, QX, QY)
    write_emd1(tmp_path / "plain.h5", data)
    for lazy in (False, True):
        s = hio.load_py4dstem(tmp_path / "plain.h5", lazy=lazy)
        assert s.metadata.General.title == "datacube"
        assert all(
            (ax.units, ax.scale, ax.offset) == ("px", 1, 0)
            for ax in s.axes_manager._axes
        )
        assert s.data.dtype == np.dtype("uint16") and s.data.dtype.isnative
        np.testing.assert_array_equal(np.asarray(s.data), data)
        assert s.metadata.Signal.py4DSTEM.calibration.as_dictionary() == {
            "QR_flip": False
        }


def test_file_without_calibration_group(tmp_path):
    data = np.ones((2, 2, QX, QY), dtype="float32")
    write_emd1(tmp_path / "x.h5", data)
    with h5py.File(tmp_path / "x.h5", "a") as f:
        del f["datacube_root/metadatabundle"]
    s = hio.load_py4dstem(tmp_path / "x.h5")
    assert all(ax.units == "px" and ax.scale == 1 for ax in s.axes_manager._axes)
    assert not s.metadata.Signal.has_item("py4DSTEM")


def test_several_nodes_and_datapath(tmp_path, emd_file):
    _, data, cal = emd_file
    second = np.full((2, 2, QX, QY), 7.0)
    path = tmp_path / "two.h5"
    write_emd1(
        path,
        data,
        name="first",
        calibration=cal,
        extra=[
            ("image", np.ones((RX, RY)), "RealSlice"),
            ("second", second, "DataCube"),
        ],
    )
    with pytest.raises(ValueError, match="Several DataCubes.*first_root/first.*second"):
        hio.load_py4dstem(path)
    with pytest.raises(ValueError, match="not a DataCube"):
        hio.load_py4dstem(path, datapath="first_root/first/image")
    for lazy in (False, True):
        s = hio.load_py4dstem(path, datapath="/first_root/first/second", lazy=lazy)
        assert s.metadata.General.title == "second"
        np.testing.assert_array_equal(np.asarray(s.data), second)
        assert s.axes_manager.signal_axes[0].scale == Q_SIZE  # one calibration per tree
        s = hio.load_py4dstem(path, datapath="first_root/first", lazy=lazy)
        np.testing.assert_array_equal(np.asarray(s.data), data)


def test_no_datacube(tmp_path):
    path = tmp_path / "image.h5"
    write_emd1(path, np.ones((2, 2, 2, 2)), name="cube")
    with h5py.File(path, "a") as f:
        f["cube_root/cube"].attrs["python_class"] = "RealSlice"
    with pytest.raises(
        ValueError, match=r"No py4DSTEM DataCube.*cube_root/cube \(RealSlice\)"
    ):
        hio.load_py4dstem(path)


def test_load_dispatches_emd1_without_py4dstem(emd_file):
    path, data, _ = emd_file
    s = hio.load(path)
    assert type(s) is STEM4D and s.metadata.General.title == "mycube"
    np.testing.assert_array_equal(s.data, data)
    with pytest.warns(UserWarning, match="cropped"):  # 5 x 6 detector
        s = hio.load(path, lazy=True, bin_signal=2)
    assert type(s) is LazySTEM4D and s.data.shape == (RX, RY, QX // 2, QY // 2)


def test_legacy_file_needs_py4dstem(tmp_path):
    # not EMD 1.0 (e.g. written by py4DSTEM <= 0.13): only py4DSTEM.read knows it
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.attrs["version_major"] = 0
        f["4DSTEM_experiment/data/datacubes/datacube/data"] = np.ones((2, 2, 2, 2))
    with pytest.raises(
        ImportError, match=r"not an EMD 1\.0 file.*pip install \"py4dstem"
    ):
        hio.load_py4dstem(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        hio.load_py4dstem(tmp_path / "missing.h5")
