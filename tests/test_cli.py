"""The ``hyperspy-cnmf`` command line, in-process on tiny data."""

import warnings

import numpy as np
import pytest

from hyperspy_cnmf.cli import main


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    from hyperspy_cnmf.data import simulated_precipitates

    s = simulated_precipitates(scan_shape=(16, 16), detector_shape=(24, 24), n_grains=2,
                               grain_diameter=3.0, random_state=1)
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
    rc = _run(["run", str(tiny_file), "-k", "4", "--max-iter", "20", "--clusters", "3", "--output", str(out),
               "--seed", "1"])
    assert rc == 0
    for name in ("factors.hspy", "loadings.hspy", "learning_results.npz", "cluster_merged_diffraction.hspy",
                 "cluster_maps.hspy", "cluster_position_labels.hspy", "report.md", "components.png",
                 "map_spectra.png", "dips.png", "loss.png", "dendrogram.png", "cluster_gallery.png", "overview.png"):
        assert (out / name).is_file(), name
    factors = hs.load(out / "factors.hspy")
    assert factors.data.shape == (4, 24, 24)
    assert factors.axes_manager.signal_axes[0].units == "1/nm"
    loadings = hs.load(out / "loadings.hspy")
    assert loadings.data.shape == (4, 16, 16) and loadings.axes_manager.signal_axes[0].units == "nm"
    assert np.nanmin(factors.data) >= 0 and np.nanmin(loadings.data) >= 0
    merged = hs.load(out / "cluster_merged_diffraction.hspy")
    assert merged.data.shape == (3, 24, 24)
    lr = np.load(out / "learning_results.npz", allow_pickle=False)
    assert lr["factors"].shape == (24 * 24, 4) and "cdiff_labels" in lr.files
    report = (out / "report.md").read_text()
    assert "reconstruction MSE" in report and "![components](components.png)" in report


def test_run_options_zspy_mask_poisson(tiny_file, tmp_path):
    import hyperspy.api as hs

    out = tmp_path / "z"
    rc = _run(["run", str(tiny_file), "-k", "3", "--max-iter", "10", "--format", "zspy", "--output", str(out),
               "--signal-mask-beam", "--poisson", "--map-resolution", "none", "--no-diffraction-constraint",
               "--bin", "2", "--eager", "--distance-threshold", "gap", "--solver", "mu"])
    assert rc == 0
    f = hs.load(out / "factors.zspy")
    assert f.data.shape == (3, 12, 12)
    assert np.isnan(f.data).any()  # the masked direct beam
    assert not (out / "map_spectra.png").exists()  # map constraint off


def test_run_lazy(tiny_file, tmp_path):
    out = tmp_path / "lazy"
    rc = _run(["run", str(tiny_file), "-k", "3", "--max-iter", "10", "--lazy", "--clusters", "2",
               "--output", str(out)])
    assert rc == 0
    assert (out / "factors.hspy").is_file() and (out / "cluster_gallery.png").is_file()
    assert "(lazy)" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "{missing}"], "No such file"),
        (["run", "{file}", "-k", "0"], "positive integer"),
        (["run", "{file}", "--map-resolution", "fast"], "'auto', 'none'"),
        (["run", "{file}", "--clusters", "2", "--distance-threshold", "0.3"], "not allowed with"),
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
    argv = [a.format(missing=tmp_path / "nope.hspy", file=tiny_file, three_d=three_d) for a in argv]
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
    for name in ("pca_components.png", "primitive_components.png", "constrained_components.png",
                 "map_spectra.png", "dips.png", "dendrogram.png", "cluster_gallery.png"):
        assert (out / name).is_file()
        assert f"({name})" in text
    assert "PCA (SVD)" in text and "ARI" in text
    printed = capsys.readouterr().out
    assert "constrained NMF" in printed
