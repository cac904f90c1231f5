"""The README's promises, each on a lazily loaded file (issue 11, done-when).

- user data are never modified;
- a lazy file is never loaded whole;
- Ctrl-C leaves the signal (and its previous results) untouched.
"""

import hashlib
import tracemalloc
from pathlib import Path

import hyperspy.api as hs
import numpy as np
import pytest

from hyperspy_cnmf.data import simulated_precipitates
from hyperspy_cnmf.signals import _decomposition

CHUNKS = (4, 48, 24, 24)  # 0.9 MiB of float64 per chunk, 12 chunks


def _digest(folder):
    h = hashlib.sha256()
    for f in sorted(Path(folder).rglob("*")):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    s = simulated_precipitates(
        scan_shape=(48, 48),
        detector_shape=(24, 24),
        n_grains=2,
        grain_diameter=3.0,
        random_state=1,
        dtype="float64",
    )
    path = tmp_path_factory.mktemp("promises") / "scan.zspy"
    s.save(path, chunks=CHUNKS)
    return path, s.data.nbytes


def _main_job(s, **kw):
    s.decomposition(
        algorithm="constrained_nmf",
        output_dimension=4,
        random_state=0,
        max_iter=5,
        print_info=False,
        show_progressbar=False,
        **kw,
    )
    s.cluster_diffraction()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lazy_file_never_loaded_whole_and_never_modified(scan_file):
    path, nbytes = scan_file
    before = _digest(path)
    _main_job(hs.load(path, lazy=True))  # compile and warm up outside the measurement
    s = hs.load(path, lazy=True)
    assert type(s).__name__ == "LazySTEM4D"
    tracemalloc.start()
    try:
        _main_job(s)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a few chunks in flight (2 threads, the zarr decompression buffers), never the whole file:
    # measured 3.2 MiB for 10.1 MiB of data in 0.9 MiB chunks
    chunk = np.prod(CHUNKS) * 8
    assert peak < min(4 * chunk + 2**20, 0.5 * nbytes), (
        f"peak {peak / 2**20:.1f} MiB for {nbytes / 2**20:.1f} MiB of data in {chunk / 2**20:.1f} MiB chunks"
    )
    assert s.learning_results.cdiff_position_labels.shape == (48 * 48,)
    assert _digest(path) == before  # the file is untouched


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_ctrl_c_on_a_lazy_file_leaves_signal_and_results_untouched(
    scan_file, monkeypatch
):
    path, _ = scan_file
    s = hs.load(path, lazy=True)
    _main_job(s)
    data, factors = s.data, s.learning_results.factors.copy()
    labels = np.asarray(s.learning_results.cdiff_position_labels).copy()

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    # Ctrl-C in the middle of the fit of a second decomposition
    monkeypatch.setattr(_decomposition, "constrained_nmf", interrupt)
    with pytest.raises(KeyboardInterrupt):
        s.decomposition(
            algorithm="constrained_nmf", output_dimension=6, print_info=False
        )
    assert s.data is data and type(s).__name__ == "LazySTEM4D"
    np.testing.assert_array_equal(s.learning_results.factors, factors)
    np.testing.assert_array_equal(s.learning_results.cdiff_position_labels, labels)
