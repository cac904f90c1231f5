"""HyperSpy registration: yaml, signal types, lazy class, load, wheel contents."""

import subprocess
import sys
import zipfile
from pathlib import Path

import hyperspy.api as hs
import numpy as np
import pytest
import yaml

import hyperspy_cnmf
from hyperspy_cnmf.signals import STEM4D, LazySTEM4D

ROOT = Path(__file__).resolve().parents[1]


def test_single_source_of_truth_yaml():
    pkg = Path(hyperspy_cnmf.__file__).parent / "hyperspy_extension.yaml"
    spec = yaml.safe_load(pkg.read_text())
    assert set(spec["signals"]) == {
        "STEM4D",
        "LazySTEM4D",
        "ComplexSTEM4D",
        "LazyComplexSTEM4D",
    }
    assert spec["signals"]["LazySTEM4D"]["lazy"] is True
    assert spec["signals"]["LazyComplexSTEM4D"]["lazy"] is True
    assert spec["signals"]["ComplexSTEM4D"]["dtype"] == "complex"
    root = ROOT / "hyperspy_extension.yaml"
    assert root.is_symlink() and root.resolve() == pkg.resolve()


@pytest.mark.parametrize("name", ["4D-STEM", "4DSTEM", "4D_STEM"])
def test_set_signal_type(name):
    s = hs.signals.Signal2D(np.random.default_rng(0).random((3, 4, 5, 6)))
    s.set_signal_type(name)
    assert isinstance(s, STEM4D)
    assert [a.name for a in s.axes_manager.navigation_axes] == ["x", "y"]
    assert [a.name for a in s.axes_manager.signal_axes] == ["kx", "ky"]
    lazy = s.as_lazy()
    assert isinstance(lazy, LazySTEM4D)
    assert type(lazy).__mro__[1] is STEM4D
    s.set_signal_type("")
    assert not isinstance(s, STEM4D)


def test_not_pyxem_names():
    spec = yaml.safe_load(
        (Path(hyperspy_cnmf.__file__).parent / "hyperspy_extension.yaml").read_text()
    )
    for entry in spec["signals"].values():
        assert entry["signal_type"] not in (
            "diffraction",
            "electron_diffraction",
            "polar_diffraction",
        )


def test_load_restores_class(tmp_path):
    s = STEM4D(np.ones((2, 3, 4, 5), dtype=np.float32))
    s.save(tmp_path / "a.hspy")
    assert isinstance(hs.load(tmp_path / "a.hspy"), STEM4D)
    assert isinstance(hs.load(tmp_path / "a.hspy", lazy=True), LazySTEM4D)


def test_version():
    assert hyperspy_cnmf.__version__ and hyperspy_cnmf.__version__ != "0+unknown"


def test_wheel_contains_the_yaml(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("hyperspy_cnmf-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "hyperspy_cnmf/hyperspy_extension.yaml" in names
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        text = z.read(entry).decode()
    assert "[hyperspy.extensions]" in text and "hyperspy_cnmf = hyperspy_cnmf" in text


@pytest.mark.parametrize("lazy", [False, True])
def test_complex_4dstem_data_get_a_clear_error(lazy):
    """Complex data (e.g. an exit wave): one TypeError naming the fix, before any read."""
    from hyperspy_cnmf.signals import ComplexSTEM4D, LazyComplexSTEM4D

    s = hs.signals.Signal2D(np.ones((3, 4, 5, 6), dtype=complex))
    s.set_signal_type("4D-STEM")
    if lazy:
        s = s.as_lazy()
    assert isinstance(s, LazyComplexSTEM4D if lazy else ComplexSTEM4D)
    with pytest.raises(TypeError, match="complex.*amplitude"):
        s.decomposition(algorithm="constrained_nmf", output_dimension=2)
    intensity = s.amplitude**2
    intensity.set_signal_type("4D-STEM")
    assert isinstance(intensity, LazySTEM4D if lazy else STEM4D)
