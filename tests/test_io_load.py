"""``hyperspy_cnmf.io.load``: damaged ``.zspy`` files and files it cannot read give one clear error."""

import logging
import shutil
import warnings

import h5py
import numpy as np
import pytest

from hyperspy_cnmf.io import load

CHUNKS = (4, 4, 8, 8)
MISSING = (1, 2, 0, 0)


@pytest.fixture(scope="module")
def zspy_file(tmp_path_factory):
    import hyperspy.api as hs
    import zarr  # noqa: F401  (the tests extra installs zarr<3)

    data = np.random.default_rng(0).poisson(3.0, (8, 12, 8, 8)).astype("float32") + 1
    s = hs.signals.Signal2D(data)
    s.metadata.General.title = "scan"
    path = tmp_path_factory.mktemp("zspy") / "scan.zspy"
    s.save(path, chunks=CHUNKS)
    return path, data


def _chunk_file(path, idx=MISSING):
    return path / "Experiments" / "scan" / "data" / "/".join(str(i) for i in idx)


def _copy(zspy_file, tmp_path, name):
    path, _ = zspy_file
    dst = tmp_path / name
    shutil.copytree(path, dst)
    assert _chunk_file(dst).is_file()  # the layout this test relies on
    return dst


def _load(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load(*args, **kwargs)


@pytest.mark.parametrize("lazy", [False, True])
def test_complete_zspy_loads(zspy_file, lazy):
    path, data = zspy_file
    s = _load(path, lazy=lazy)
    np.testing.assert_array_equal(s.data.compute() if lazy else s.data, data)


@pytest.mark.parametrize("lazy", [False, True])
def test_missing_zspy_chunk_is_an_error_naming_file_and_chunk(
    zspy_file, tmp_path, lazy
):
    # zarr reads an absent chunk as the fill value: before, this loaded and was analysed as zeros
    path = _copy(zspy_file, tmp_path, "lost.zspy")
    _chunk_file(path).unlink()
    with pytest.raises(ValueError) as info:
        _load(path, lazy=lazy)
    msg = str(info.value)
    assert "lost.zspy" in msg and "is missing" in msg
    assert "chunk (1, 2, 0, 0)" in msg and "array region [4:8, 8:12, 0:8, 0:8]" in msg
    assert "data/1/2/0/0" in msg
    assert "\n" not in msg


def test_missing_chunk_count_and_check_reads_no_chunk(zspy_file, tmp_path):
    path = _copy(zspy_file, tmp_path, "lost3.zspy")
    # every remaining chunk undecodable: the check must only look at the keys
    for f in (path / "Experiments" / "scan" / "data").rglob("*"):
        if f.is_file() and not f.name.startswith("."):
            f.write_bytes(b"not a blosc frame")
    for idx in (MISSING, (0, 0, 0, 0), (1, 0, 0, 0)):
        _chunk_file(path, idx).unlink()
    with pytest.raises(
        ValueError,
        match=r"chunk \(0, 0, 0, 0\).*is missing, and 2 more of its 6 chunks",
    ):
        _load(path, lazy=True)


def test_corrupted_zspy_chunk_eager_names_file_and_chunk(
    zspy_file, tmp_path, capfd, caplog
):
    path = _copy(zspy_file, tmp_path, "bad.zspy")
    _chunk_file(path).write_bytes(b"garbage garbage garbage")
    with caplog.at_level(logging.DEBUG), pytest.raises(ValueError) as info:
        _load(path, lazy=False)
    msg = str(info.value)
    assert "bad.zspy" in msg and "damaged" in msg
    assert "chunk (1, 2, 0, 0)" in msg and "cannot be decoded" in msg
    # one error, without RosettaSciIO's "please report" line
    assert "please report" not in capfd.readouterr().err
    assert not any("please report" in r.getMessage() for r in caplog.records)


def test_python_file_one_clear_message(tmp_path, capfd, caplog):
    script = tmp_path / "analysis.py"
    script.write_text("print('hello')\n")
    with caplog.at_level(logging.DEBUG), pytest.raises(ValueError) as info:
        _load(script)
    msg = str(info.value)
    assert (
        "'.py' is not a format that HyperSpy/RosettaSciIO reads" in msg
        and "analysis.py" in msg
    )
    err = capfd.readouterr().err
    assert "please report" not in err and "Unable to infer file type" not in err
    assert not any(
        "please report" in r.getMessage() or "Unable to infer" in r.getMessage()
        for r in caplog.records
    )


def test_non_4d_hdf5_says_what_was_found_and_what_is_needed(tmp_path):
    path = tmp_path / "spectra.h5"
    with h5py.File(path, "w") as f:
        f["entry/data"] = np.ones((4, 5, 6))
        f["entry/mask"] = np.ones((5,), dtype="uint8")
    with pytest.raises(ValueError) as info:
        _load(path)
    msg = str(info.value)
    assert "select" not in msg and "reader" not in msg  # the CLI has no reader option
    assert "'entry/data' (4, 5, 6) float64" in msg and "'entry/mask' (5,) uint8" in msg
    assert "4-dimensional dataset (2 scan + 2 detector dimensions)" in msg


def test_py4dstem_install_hint_names_the_pypi_package():
    from hyperspy_cnmf.io._py4dstem import INSTALL_HINT

    # PyPI has py4DSTEM (pip: py4dstem), not hyperspy_cnmf
    assert INSTALL_HINT == 'pip install "py4dstem>=0.14.18,<0.15"'


def test_hyperspy_file_with_an_hdf5_extension_loads(tmp_path):
    import hyperspy.api as hs

    data = np.arange(2 * 3 * 4 * 5, dtype="float32").reshape(2, 3, 4, 5)
    hs.signals.Signal2D(data).save(tmp_path / "scan.hspy")
    (tmp_path / "scan.hspy").rename(tmp_path / "scan.h5")  # before: "select a reader"
    np.testing.assert_array_equal(_load(tmp_path / "scan.h5").data, data)
