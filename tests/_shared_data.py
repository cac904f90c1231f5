"""Test data outside the repository, in ``../shared/data`` or where an environment variable points.

A missing file fails the test on CI (``CI`` set) and skips it elsewhere, naming the path.
The abTEM multislice cases are in ``abtem_dev`` (``$HYPERSPY_CNMF_ABTEM``: their folder), the
real NIST scan in ``nist_merlin_aupd_16x16`` (``$HYPERSPY_CNMF_NIST``: the file).
"""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TWO_PHASE = "zrcual_2phase_40x40_48x48_seed101.npz"
DESCAN = "zrcual_3phase_descan_32x32_40x40_seed202.npz"
THREE_PHASE = "zrcual_3phase_64x64_40x40_seed303.npz"


def required_file(path, what, env_var):
    """``path`` if it is a file; else fail on CI and skip elsewhere, naming it and ``env_var``."""
    path = Path(path)
    if not path.is_file():
        msg = f"{what} not found at {path} (set {env_var})"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def abtem_path(name):
    """An abTEM case; ``$HYPERSPY_CNMF_ABTEM`` names their folder."""
    folder = os.environ.get("HYPERSPY_CNMF_ABTEM") or SHARED_DATA / "abtem_dev"
    return required_file(
        Path(folder) / name, "abTEM test file", "HYPERSPY_CNMF_ABTEM to its folder"
    )


def nist_path():
    """The real NIST scan; ``$HYPERSPY_CNMF_NIST`` names the file."""
    path = (
        os.environ.get("HYPERSPY_CNMF_NIST")
        or SHARED_DATA / "nist_merlin_aupd_16x16/FPD_HDF5.hdf5"
    )
    return required_file(path, "NIST test file", "HYPERSPY_CNMF_NIST")
