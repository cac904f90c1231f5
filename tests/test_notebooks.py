"""Execute the notebooks in ``notebooks/`` (stored without outputs) with ``jupyter nbconvert``.

Each notebook is copied into a temporary folder and executed there by the command a user
runs, ``jupyter nbconvert --to notebook --execute``, so that its files (``.zspy``) never land
in the repository. The multislice notebook reads ``../shared/data/abtem_dev`` through
``$HYPERSPY_CNMF_ABTEM`` (see ``tests/_shared_data.py``: a missing file fails on CI and
skips elsewhere); the pyxem notebook needs pyxem, which the ``tests`` extra installs (its
absence fails on CI and skips elsewhere).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _shared_data import TWO_PHASE, abtem_path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


def _require_pyxem():
    if importlib.util.find_spec("pyxem") is None:
        msg = "pyxem is not installed (the tests extra installs it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def test_the_notebooks_are_there():
    assert {
        "01_quickstart.ipynb",
        "05_multislice_abtem.ipynb",
        "06_pyxem_signal.ipynb",
    } <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, tmp_path, monkeypatch):
    source = NOTEBOOKS / name
    nb = json.loads(source.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") for c in code), "store notebooks without outputs"
    text = "\n".join("".join(c["source"]) for c in code)
    # figures render inline in Jupyter: no backend forced in the notebooks, and the kernel
    # gets Jupyter's default (inline) rather than a caller's MPLBACKEND (CI: agg), so that
    # the figures are checked to come out as a user sees them
    assert "matplotlib.use" not in text
    monkeypatch.delenv("MPLBACKEND", raising=False)
    if "load_multislice_case" in text:
        monkeypatch.setenv("HYPERSPY_CNMF_ABTEM", str(abtem_path(TWO_PHASE).parent))
    if "import pyxem" in text:
        _require_pyxem()
    shutil.copy(source, tmp_path / name)
    # "python3" is ipykernel's native kernel: the interpreter running the tests
    run = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute"]
        + ["--inplace", "--ExecutePreprocessor.timeout=300", name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    executed = json.loads((tmp_path / name).read_text())
    outputs = [
        o for c in executed["cells"] if c["cell_type"] == "code" for o in c["outputs"]
    ]
    assert not [o for o in outputs if o["output_type"] == "error"]
    # every notebook shows at least one figure
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure rendered"
    assert not list(NOTEBOOKS.glob("*.zspy")), (
        "notebooks must not write into the repository"
    )
