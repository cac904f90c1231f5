"""The fpd HDF5 reader and the ``load`` helper on tiny synthetic files."""

import warnings

import h5py
import numpy as np
import pytest

from hyperspy_cnmf.io import load, load_fpd_hdf5
from hyperspy_cnmf.signals import STEM4D, LazySTEM4D

STEP = 5.4826


def write_fpd(path, shape=(3, 4, 12, 10), seed=0, with_tags=True):
    """A file with the fpd package's layout: counts (scanY, scanX, detY, detX)."""
    rng = np.random.default_rng(seed)
    data = rng.poisson(3.0, size=shape).astype(">u2")
    ny, nx, qy, qx = shape
    with h5py.File(path, "w") as f:
        f.attrs["fpd_version"] = "0.1.1"
        g = f.create_group("fpd_expt/fpd_data")
        d = g.create_dataset(
            "data", data=data, chunks=(1, 2, qy, qx), compression="gzip"
        )
        d.attrs["units"] = "Counts"
        for name, n, label, units, step in (
            ("dim1", ny, "scanY", "nm", STEP),
            ("dim2", nx, "scanX", "nm", STEP),
            ("dim3", qy, "detY", "pixels", 1.0),
            ("dim4", qx, "detX", "pixels", 1.0),
        ):
            v = g.create_dataset(
                name, data=np.arange(n) * step - (4e-8 if units == "nm" else 0)
            )
            v.attrs["name"], v.attrs["units"] = label, units
        hdr = f.create_group("fpd_expt/merlin_hdr")
        hdr.create_dataset("chip_type", data=b"Medipix 3RX")
        hdr.create_dataset("time_and_date_stamp", data=b"7/11/2022 2:03:28 PM")
        if with_tags:
            desc = f.create_group(
                "fpd_expt/TIA0/tags/ObjectInfo/ExperimentalDescription"
            )
            desc.create_dataset("High tension_kV", data=300.0)
            desc.create_dataset("Camera length_m", data=0.6)
            desc.create_dataset("Microscope", data=b"Microscope Titan")
    return data.astype(np.uint16)


@pytest.fixture
def fpd_file(tmp_path):
    path = tmp_path / "scan.hdf5"
    data = write_fpd(path)
    return path, data


def test_eager_calibrated(fpd_file):
    path, data = fpd_file
    s = load_fpd_hdf5(path)
    assert isinstance(s, STEM4D) and not s._lazy
    np.testing.assert_array_equal(s.data, data)
    assert s.data.dtype.byteorder in ("=", "|", "<")
    x, y = s.axes_manager.navigation_axes
    assert (x.size, y.size) == (4, 3)
    for ax in (x, y):
        assert ax.units == "nm"
        assert ax.scale == pytest.approx(STEP)
        assert ax.offset == 0.0  # -4e-8 nm rounding noise dropped
    kx, ky = s.axes_manager.signal_axes
    assert (kx.size, ky.size, kx.units, kx.scale) == (10, 12, "px", 1.0)
    tem = s.metadata.Acquisition_instrument.TEM
    assert tem.beam_energy == 300.0
    assert tem.camera_length == pytest.approx(600.0)
    assert tem.microscope == "Titan"
    assert s.metadata.General.date == "2022-07-11"
    assert s.metadata.General.time == "14:03:28"
    assert s.original_metadata.merlin_hdr.chip_type == "Medipix 3RX"


def test_binning_sums_and_crops(fpd_file):
    path, data = fpd_file
    with pytest.warns(UserWarning, match="cropped"):
        s = load_fpd_hdf5(path, bin_signal=4)  # 12 x 10 -> 3 x 2, cropping 2 columns
    expected = data[:, :, :12, :8].reshape(3, 4, 3, 4, 2, 4).sum(axis=(3, 5))
    np.testing.assert_array_equal(s.data, expected)
    kx, ky = s.axes_manager.signal_axes
    assert (kx.size, ky.size) == (2, 3)
    assert kx.scale == 4.0 and kx.offset == pytest.approx(1.5)  # centre of pixels 0..3
    assert s.data.dtype == np.uint32


@pytest.mark.parametrize("b", [2, 3, 4])
def test_binning_is_hyperspy_rebin_eager_and_lazy(fpd_file, b):
    """Binning is HyperSpy's rebin on the calibrated signal, cropped first; counts conserved."""
    path, data = fpd_file
    full = load_fpd_hdf5(path)
    qy, qx = data.shape[2] // b * b, data.shape[3] // b * b
    reference = full.isig[:qx, :qy].rebin(scale=(1, 1, b, b), dtype=np.uint32)
    cropped = data[:, :, :qy, :qx]
    by_hand = cropped.reshape(3, 4, qy // b, b, qx // b, b).sum(
        axis=(3, 5), dtype=np.uint32
    )
    for lazy in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the crop warning (12 x 10 by 3 or 4)
            s = load_fpd_hdf5(path, bin_signal=b, lazy=lazy)
        assert s._lazy == lazy
        out = s.data.compute() if lazy else s.data
        assert out.dtype == np.uint32
        np.testing.assert_array_equal(out, by_hand)
        np.testing.assert_array_equal(out, reference.data)
        assert int(out.sum()) == int(cropped.sum())  # counts conserved
        for ax, ref in zip(s.axes_manager._axes, reference.axes_manager._axes):
            assert (ax.name, ax.size, ax.scale, ax.offset, ax.units) == (
                ref.name,
                ref.size,
                ref.scale,
                ref.offset,
                ref.units,
            )
        assert s.metadata.Signal.signal_type == "4D-STEM"
        assert s.metadata.Acquisition_instrument.TEM.beam_energy == 300.0


def test_hyperspy_load_cannot_choose_and_our_load_reads_it(fpd_file):
    """The route the README shows: hs.load stops at "multiple file readers"."""
    import hyperspy.api as hs

    path, data = fpd_file
    with pytest.raises(ValueError, match="multiple file readers"):
        hs.load(path)
    s = load(path)
    assert isinstance(s, STEM4D) and s.axes_manager.navigation_axes[0].units == "nm"
    np.testing.assert_array_equal(s.data, data)


def test_lazy_does_not_read_and_matches(fpd_file, monkeypatch):
    path, data = fpd_file
    reads = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        out = original(self, key)
        if self.ndim == 4:
            reads.append(np.size(out))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    s = load_fpd_hdf5(path, lazy=True, bin_signal=2)
    assert isinstance(s, LazySTEM4D)
    assert sum(reads) == 0  # at most empty probes (dask meta), no data read
    out = s.data.compute()
    expected = data.reshape(3, 4, 6, 2, 5, 2).sum(axis=(3, 5))
    np.testing.assert_array_equal(out, expected)
    assert sum(reads) == data.size


def test_load_dispatches_fpd(fpd_file):
    path, data = fpd_file
    s = load(path, bin_signal=2)
    assert isinstance(s, STEM4D)
    assert s.data.shape == (3, 4, 6, 5)
    assert isinstance(load(path, lazy=True), LazySTEM4D)


def test_errors(tmp_path, fpd_file):
    path, _ = fpd_file
    with pytest.raises(FileNotFoundError):
        load_fpd_hdf5(tmp_path / "missing.hdf5")
    with pytest.raises(ValueError, match="positive integer"):
        load_fpd_hdf5(path, bin_signal=0)
    with pytest.raises(ValueError, match="larger than the detector"):
        load_fpd_hdf5(path, bin_signal=64)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="not an fpd"):
        load_fpd_hdf5(other)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not an HDF5"):
        load_fpd_hdf5(text)


def test_load_hspy_and_errors(tmp_path):
    import hyperspy.api as hs

    s = hs.signals.Signal2D(
        np.random.default_rng(0).random((3, 4, 8, 8)).astype("float32")
    )
    s.save(tmp_path / "a.hspy")
    t = load(tmp_path / "a.hspy")
    assert isinstance(t, STEM4D)
    t2 = load(tmp_path / "a.hspy", bin_signal=2, lazy=True)
    assert isinstance(t2, LazySTEM4D) and t2.data.shape == (3, 4, 4, 4)
    np.testing.assert_allclose(
        t2.data.compute(), s.data.reshape(3, 4, 4, 2, 4, 2).sum(axis=(3, 5)), rtol=1e-6
    )
    hs.signals.Signal2D(np.zeros((5, 8, 8))).save(tmp_path / "b.hspy")
    with pytest.raises(ValueError, match="not 4D-STEM"):
        load(tmp_path / "b.hspy")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nope.hspy")
    (tmp_path / "c.hspy").write_text("garbage")
    with pytest.raises(ValueError, match="cannot read"):
        load(tmp_path / "c.hspy")


def _write_mib(path, data):
    """A minimal single-chip Quantum Detectors Merlin .mib file (U16 frames)."""
    ny, nx, qy, qx = data.shape
    with open(path, "wb") as f:
        for i, frame in enumerate(data.reshape(-1, qy, qx)):
            head = ",".join(
                [
                    "MQ1",
                    f"{i + 1:06d}",
                    "00384",
                    "01",
                    f"{qx:04d}",
                    f"{qy:04d}",
                    "U16",
                    "   1x1",
                    "01",
                    "2020-01-01T00:00:00.000000000Z",
                    "1000000ns",
                    "0",
                    "0",
                ]
            )
            f.write(head.encode().ljust(384, b"\0"))
            f.write(frame.astype(">u2").tobytes())


def test_load_merlin_mib_and_emd(tmp_path):
    """RosettaSciIO formats reach the same loader: .mib (Merlin) and .emd."""
    import hyperspy.api as hs

    d = np.random.default_rng(0).poisson(3, (4, 5, 8, 8)).astype("uint16")
    _write_mib(tmp_path / "scan.mib", d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = load(tmp_path / "scan.mib", navigation_shape=(5, 4))
    assert type(s).__name__ == "STEM4D" and s.data.shape == (4, 5, 8, 8)
    np.testing.assert_array_equal(
        np.asarray(s.data)[:, :, ::-1], d
    )  # RosettaSciIO flips Merlin rows
    s.decomposition(
        algorithm="constrained_nmf",
        output_dimension=2,
        max_iter=5,
        print_info=False,
        map_resolution=None,
        show_progressbar=False,
    )
    assert s.learning_results.factors.shape == (64, 2)

    hs.signals.Signal2D(d).save(tmp_path / "scan.emd")
    t = load(tmp_path / "scan.emd")
    assert type(t).__name__ == "STEM4D"
    np.testing.assert_array_equal(t.data, d)
    lazy = load(tmp_path / "scan.emd", lazy=True)
    assert type(lazy).__name__ == "LazySTEM4D"


def test_load_blockfile(tmp_path):
    """NanoMegas/ASTAR .blo through RosettaSciIO (needs scikit-image)."""
    import hyperspy.api as hs

    d = np.random.default_rng(1).poisson(3, (4, 5, 8, 8)).astype("uint8")
    hs.signals.Signal2D(d).save(tmp_path / "scan.blo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = load(tmp_path / "scan.blo")
    assert type(s).__name__ == "STEM4D"
    np.testing.assert_array_equal(s.data, d)


def test_bin_detector_crops_then_rebins_lazy_and_eager(tmp_path):
    """A detector side that is not a multiple of the factor: cropped (HyperSpy's
    lazy rebin refuses such a shape, and its eager one interpolates)."""
    import hyperspy.api as hs

    d = np.random.default_rng(2).poisson(3, (3, 4, 8, 7)).astype("uint16")
    hs.signals.Signal2D(d).save(tmp_path / "odd.hspy")
    expected = d[:, :, :6, :6].reshape(3, 4, 2, 3, 2, 3).sum(axis=(3, 5))
    for lazy in (False, True):
        with pytest.warns(UserWarning, match="not a multiple of the binning factor 3"):
            s = load(tmp_path / "odd.hspy", bin_signal=3, lazy=lazy)
        out = s.data.compute() if lazy else s.data
        assert out.dtype == np.uint32
        np.testing.assert_array_equal(out, expected)
        kx, ky = s.axes_manager.signal_axes
        assert (kx.size, ky.size, kx.scale, kx.offset) == (2, 2, 3.0, 1.0)
