"""Where the abTEM multislice cases are: ``../shared/data/abtem_dev`` or ``$HYPERSPY_CNMF_ABTEM``.

A missing file fails the test on CI (``CI`` set) and skips it elsewhere, naming the path.
"""

import os
from pathlib import Path

import pytest

TWO_PHASE = "zrcual_2phase_40x40_48x48_seed101.npz"
DESCAN = "zrcual_3phase_descan_32x32_40x40_seed202.npz"
THREE_PHASE = "zrcual_3phase_64x64_40x40_seed303.npz"


def abtem_path(name):
    env = os.environ.get("HYPERSPY_CNMF_ABTEM")
    folder = (
        Path(env)
        if env
        else Path(__file__).resolve().parents[2] / "shared/data/abtem_dev"
    )
    path = folder / name
    if not path.is_file():
        msg = f"abTEM test file not found at {path} (set HYPERSPY_CNMF_ABTEM to its folder)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path
