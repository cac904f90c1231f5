"""The ``hyperspy-cnmf`` command line, in-process on tiny data."""

import json
import warnings

import numpy as np
import pytest

from hyperspy_cnmf.cli import main


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    from hyperspy_cnmf.data import simulated_precipitates

    s = simulated_precipitates(
        scan_shape=(16, 16),
        detector_shape=(24, 24),
        n_grains=2,
        grain_diameter=3.0,
        random_state=1,
    )
    path = tmp_path_factory.mktemp("data") / "tiny.hspy"
    s.save(path)
    return path


def _run(argv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(argv)


def test_run_writes_loadable_results(tiny_file, tmp_path, capsys):
    import hyperspy.api as hs

    out = tmp_path / "out"
    rc = _run(
        [
            "run",
            str(tiny_file),
            "-k",
            "4",
            "--max-iter",
            "20",
            "--clusters",
            "3",
            "--output",
            str(out),
            "--seed",
            "1",
        ]
    )
    assert rc == 0
    for name in (
        "factors.hspy",
        "loadings.hspy",
        "learning_results.npz",
        "cluster_merged_diffraction.hspy",
        "cluster_mean_patterns.hspy",
        "cluster_maps.hspy",
        "cluster_position_labels.hspy",
        "report.md",
        "components.png",
        "map_spectra.png",
        "dips.png",
        "loss.png",
        "dendrogram.png",
        "cluster_gallery.png",
        "overview.png",
    ):
        assert (out / name).is_file(), name
    factors = hs.load(out / "factors.hspy")
    assert factors.data.shape == (4, 24, 24)
    assert factors.axes_manager.signal_axes[0].units == "1/nm"
    loadings = hs.load(out / "loadings.hspy")
    assert (
        loadings.data.shape == (4, 16, 16)
        and loadings.axes_manager.signal_axes[0].units == "nm"
    )
    assert np.nanmin(factors.data) >= 0 and np.nanmin(loadings.data) >= 0
    merged = hs.load(out / "cluster_merged_diffraction.hspy")
    assert merged.data.shape == (3, 24, 24)
    mean = hs.load(out / "cluster_mean_patterns.hspy")
    assert (
        mean.data.shape == (3, 24, 24)
        and mean.axes_manager.signal_axes[0].units == "1/nm"
    )
    lr = np.load(out / "learning_results.npz", allow_pickle=False)
    assert lr["factors"].shape == (24 * 24, 4) and "cdiff_labels" in lr.files
    report = (out / "report.md").read_text()
    assert "reconstruction MSE" in report and "![components](components.png)" in report
    # the default fit is Poisson-weighted: its loss is a reduced chi-square, not an MSE in counts²
    assert (
        "final loss (reduced chi-square (Poisson-weighted))" in report
        and "solver MSE" not in report
    )
    # convergence is reported as what ran: True, or the default refinement's budget
    row = next(line for line in report.splitlines() if line.startswith("| converged"))
    assert row in ("| converged | True |",) or "exact refinement of 9 iterations" in row
    assert "| converged | False |" not in report


def test_run_options_zspy_mask_poisson(tiny_file, tmp_path):
    import hyperspy.api as hs

    out = tmp_path / "z"
    rc = _run(
        [
            "run",
            str(tiny_file),
            "-k",
            "3",
            "--max-iter",
            "10",
            "--format",
            "zspy",
            "--output",
            str(out),
            "--signal-mask-beam",
            "--poisson",
            "--map-resolution",
            "none",
            "--no-diffraction-constraint",
            "--bin",
            "2",
            "--eager",
            "--distance-threshold",
            "gap",
            "--solver",
            "mu",
        ]
    )
    assert rc == 0
    f = hs.load(out / "factors.zspy")
    assert f.data.shape == (3, 12, 12)
    assert np.isnan(f.data).any()  # the masked direct beam
    assert not (out / "map_spectra.png").exists()  # map constraint off


def test_run_lazy(tiny_file, tmp_path):
    out = tmp_path / "lazy"
    rc = _run(
        [
            "run",
            str(tiny_file),
            "-k",
            "3",
            "--max-iter",
            "10",
            "--lazy",
            "--clusters",
            "2",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    assert (out / "factors.hspy").is_file() and (out / "cluster_gallery.png").is_file()
    assert "(lazy)" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "{missing}"], "No such file"),
        (["run", "{file}", "-k", "0"], "positive integer"),
        (["run", "{file}", "--map-resolution", "fast"], "'auto', 'none'"),
        (
            ["run", "{file}", "--clusters", "2", "--distance-threshold", "0.3"],
            "not allowed with",
        ),
        (["run", "{file}", "--bin", "100"], "larger than the detector"),
        (["run", "{file}", "-k", "1000"], "larger than min"),
        (["run", "{three_d}"], "not 4D-STEM"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_errors_exit_2_with_one_line(argv, message, tiny_file, tmp_path, capsys):
    import hyperspy.api as hs

    three_d = tmp_path / "spectra.hspy"
    hs.signals.Signal1D(np.ones((4, 5, 6))).save(three_d)
    argv = [
        a.format(missing=tmp_path / "nope.hspy", file=tiny_file, three_d=three_d)
        for a in argv
    ]
    rc = _run(argv)
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hyperspy-cnmf: error:"), err
    assert message in lines[0]
    assert "Traceback" not in err


def test_help(capsys):
    assert main(["run", "--help"]) == 0
    assert "--signal-mask-beam" in capsys.readouterr().out


def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert _run(["demo", "--quick", "--output", str(out)]) == 0
    text = (out / "report.md").read_text()
    for name in (
        "pca_components.png",
        "primitive_components.png",
        "constrained_components.png",
        "map_spectra.png",
        "dips.png",
        "dendrogram.png",
        "cluster_gallery.png",
    ):
        assert (out / name).is_file()
        assert f"({name})" in text
    assert "PCA (SVD)" in text and "ARI" in text
    printed = capsys.readouterr().out
    assert "constrained NMF" in printed


def _one_error_line(err):
    # progress bars and phase lines (tqdm, on stderr) aside
    lines = [
        line
        for line in err.splitlines()
        if line.strip()
        and "it/s]" not in line
        and not line.lstrip().startswith(("constrained NMF", "primitive NMF"))
    ]
    assert len(lines) == 1 and lines[0].startswith("hyperspy-cnmf: error:"), err
    assert "Traceback" not in err
    return lines[0]


def test_run_one_component(tiny_file, tmp_path):
    import hyperspy.api as hs

    # export_decomposition_results failed for k = 1 after the whole fit
    out = tmp_path / "k1"
    assert (
        _run(
            ["run", str(tiny_file), "-k", "1", "--max-iter", "5", "--output", str(out)]
        )
        == 0
    )
    assert hs.load(out / "factors.hspy").data.shape == (1, 24, 24)
    loadings = hs.load(out / "loadings.hspy")
    assert loadings.data.shape == (1, 16, 16)
    assert [a.units for a in loadings.axes_manager.signal_axes] == ["nm", "nm"]
    assert (out / "report.md").is_file() and (out / "learning_results.npz").is_file()


def test_export_decomposition_results_one_component(tiny_file, tmp_path):
    from hyperspy_cnmf.io import load

    s = load(tiny_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.decomposition(
            algorithm="constrained_nmf",
            output_dimension=1,
            max_iter=3,
            print_info=False,
        )
    files = s.export_decomposition_results(folder=tmp_path / "e")
    import hyperspy.api as hs

    f = hs.load(files[0])
    assert f.data.shape == (1, 24, 24)
    np.testing.assert_allclose(
        f.data[0], s.learning_results.factors[:, 0].reshape(24, 24), rtol=1e-6
    )
    with pytest.raises(ValueError, match="out of range for 1 component"):
        s.export_decomposition_results(comp_ids=[1], folder=tmp_path / "e")


@pytest.fixture(scope="module")
def tiny_zspy(tiny_file, tmp_path_factory):
    import hyperspy.api as hs

    s = hs.load(tiny_file)
    s.metadata.General.title = "tiny"
    path = tmp_path_factory.mktemp("zspy") / "tiny.zspy"
    s.save(path, chunks=(8, 8, 24, 24))
    return path


def _damaged_copy(tiny_zspy, tmp_path, name, how):
    import shutil

    dst = tmp_path / name
    shutil.copytree(tiny_zspy, dst)
    chunk = dst / "Experiments" / "tiny" / "data" / "1" / "0" / "0" / "0"
    assert chunk.is_file()
    if how == "missing":
        chunk.unlink()
    else:
        chunk.write_bytes(b"garbage garbage garbage")
    return dst


@pytest.mark.parametrize("mode", ["--eager", "--lazy"])
def test_run_missing_zspy_chunk(tiny_zspy, tmp_path, capsys, mode):
    # before: analysed as zeros, rc 0
    path = _damaged_copy(tiny_zspy, tmp_path, "lost.zspy", "missing")
    out = tmp_path / "out"
    assert (
        _run(
            ["run", str(path), "-k", "2", "--max-iter", "3", mode, "--output", str(out)]
        )
        == 2
    )
    line = _one_error_line(capsys.readouterr().err)
    assert "lost.zspy" in line and "chunk (1, 0, 0, 0)" in line and "is missing" in line
    assert not (out / "factors.hspy").exists()


@pytest.mark.parametrize("mode", ["--eager", "--lazy"])
def test_run_corrupted_zspy_chunk(tiny_zspy, tmp_path, capsys, mode):
    # before: a raw decompression traceback (lazy) / a "please report" line (eager)
    path = _damaged_copy(tiny_zspy, tmp_path, "bad.zspy", "corrupted")
    out = tmp_path / "out"
    assert (
        _run(
            ["run", str(path), "-k", "2", "--max-iter", "3", mode, "--output", str(out)]
        )
        == 2
    )
    line = _one_error_line(capsys.readouterr().err)
    assert "bad.zspy" in line and ("damaged" in line)
    if mode == "--eager":
        assert "chunk (1, 0, 0, 0)" in line
    else:
        assert "decompression" in line


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("notes.py", lambda p: p.write_text("print(1)\n"), "'.py' is not a format"),
        ("cube.h5", "h5", "'data' (4, 5, 6) float64"),
    ],
)
def test_run_unreadable_inputs_one_clear_line(tmp_path, capsys, name, make, message):
    path = tmp_path / name
    if make == "h5":
        import h5py

        with h5py.File(path, "w") as f:
            f["data"] = np.ones((4, 5, 6))
    else:
        make(path)
    assert _run(["run", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    line = _one_error_line(err)
    assert message in line and "select" not in line and "please report" not in err


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if the data are read."""
    import hyperspy_cnmf.io

    def fail(*args, **kwargs):
        raise AssertionError("the data were read before the output folder was checked")

    monkeypatch.setattr(hyperspy_cnmf.io, "load", fail)


@pytest.mark.parametrize("where", ["file", "below_file"])
def test_output_folder_is_a_file_checked_before_loading(
    tiny_file, tmp_path, capsys, no_load, where
):
    f = tmp_path / "taken"
    f.write_text("x")
    out = f if where == "file" else f / "sub"
    assert _run(["run", str(tiny_file), "--output", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(out) in line and "is a file" in line


@pytest.mark.parametrize("how", ["chmod", "simulated"])
def test_read_only_output_folder_checked_before_loading(
    tiny_file, tmp_path, capsys, no_load, monkeypatch, how
):
    import os
    import tempfile

    ro = tmp_path / "ro"
    ro.mkdir()
    if how == "chmod":
        if not hasattr(os, "geteuid") or os.geteuid() == 0:
            pytest.skip("root can write to read-only folders")
    else:  # what a read-only folder (or file system) answers

        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "TemporaryFile", denied)
        monkeypatch.setattr(tempfile, "mkdtemp", denied)
    ro.chmod(0o555)
    try:
        for out in (ro, ro / "new"):
            assert _run(["run", str(tiny_file), "--output", str(out)]) == 2
            line = _one_error_line(capsys.readouterr().err)
            assert str(out) in line and "Permission denied" in line
    finally:
        ro.chmod(0o755)


def test_os_and_runtime_errors_mid_run_one_line(
    tiny_file, tmp_path, capsys, monkeypatch
):
    from hyperspy_cnmf.signals import STEM4D

    def denied(self, *args, **kwargs):
        raise PermissionError(
            13, "Permission denied", str(tmp_path / "out" / "factors.hspy")
        )

    args = [
        "run",
        str(tiny_file),
        "-k",
        "2",
        "--max-iter",
        "3",
        "--output",
        str(tmp_path / "out"),
    ]
    monkeypatch.setattr(STEM4D, "export_decomposition_results", denied)
    assert _run(args) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert (
        "PermissionError" in line
        and "Permission denied" in line
        and "factors.hspy" in line
    )

    def broken(self, *args, **kwargs):
        raise RuntimeError("disk went away")

    monkeypatch.setattr(STEM4D, "export_decomposition_results", broken)
    assert _run(args) == 2
    assert "RuntimeError: disk went away" in _one_error_line(capsys.readouterr().err)


def test_ctrl_c_one_line_exit_130(tiny_file, tmp_path, capsys, monkeypatch):
    import hyperspy_cnmf.io

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hyperspy_cnmf.io, "load", interrupted)
    try:
        rc = _run(["run", str(tiny_file), "--output", str(tmp_path / "out")])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main(): a traceback instead of one line")
    assert rc == 130
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.strip()] == [
        "hyperspy-cnmf: interrupted"
    ]


def test_sigint_in_a_real_process(tiny_file, tmp_path):
    import subprocess
    import sys

    # SIGINT delivered by the OS while the decomposition runs, as Ctrl-C does
    code = (
        "import os, signal, sys, warnings; warnings.simplefilter('ignore')\n"
        # as in a terminal: a parent (e.g. a pytest-xdist worker) may leave SIGINT ignored
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from hyperspy_cnmf import cli\n"
        "from hyperspy_cnmf.signals import STEM4D\n"
        "def decomposition(self, *a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    import time; time.sleep(30)\n"
        "STEM4D.decomposition = decomposition\n"
        f"sys.exit(cli.main(['run', {str(tiny_file)!r}, '--output', {str(tmp_path / 'out')!r}]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 130, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        "hyperspy-cnmf: interrupted"
    ]


def test_run_refits_over_complete_fits_unless_told_not_to(tiny_file, tmp_path):
    """k = 8 on a 16 x 16 scan with 2 small grains: the clustering refits the grains it counts
    + 2 components to the model and saves them; ``--no-refit`` clusters the decomposition's own
    8 components."""
    import hyperspy.api as hs

    def argv(out):
        return [
            "run",
            str(tiny_file),
            "-k",
            "8",
            "--max-iter",
            "30",
            "--output",
            str(out),
        ]

    params = {}
    for flag in ([], ["--no-refit"]):
        out = tmp_path / ("plain" if flag else "refit")
        assert _run(argv(out) + flag) == 0
        lr = np.load(out / "learning_results.npz", allow_pickle=True)
        params[bool(flag)] = json.loads(str(lr["cdiff_parameters"]))
        labels = hs.load(out / "cluster_labels.hspy").data
        assert labels.shape == (params[bool(flag)]["refit_components"] or 8,)
        assert (out / "cluster_refit_factors.hspy").is_file() != bool(flag)
    assert params[False]["refit_grains"] >= 1
    assert params[False]["refit_components"] == params[False]["refit_grains"] + 2
    # a second run into the first's folder leaves none of its refit files
    again = tmp_path / "refit"
    assert _run(argv(again) + ["--no-refit"]) == 0
    assert not (again / "cluster_refit_factors.hspy").exists()
    assert not (again / "cluster_refit_loadings.hspy").exists()
    assert params[True]["refit_components"] == 0
