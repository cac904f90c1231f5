"""Every step of the main job streams: a lazy file is never loaded whole.

The data of a lazily loaded ``.zspy`` file are wrapped in an array-like that
refuses to hand out more than one chunk per read, and more than one chunk
alive at a time (under the synchronous scheduler, one task at a time). The
Python main job (decomposition, clustering, results, report numbers, figures)
and ``hyperspy-cnmf run --lazy`` must run through it.
"""

import threading
import weakref

import dask
import dask.array as da
import numpy as np
import pytest

import hyperspy_cnmf.io as hio
from hyperspy_cnmf import report as rp
from hyperspy_cnmf.cli import main
from hyperspy_cnmf.data import simulated_precipitates
from hyperspy_cnmf.io import _load
from hyperspy_cnmf.signals._decomposition import _mask_vector

CHUNKS = (4, 32, 24, 24)  # 4 scan rows per chunk: 8 chunks


class _OneChunkAtATime:
    """Array-like over a dask array: fails if more than one chunk is materialised at once.

    Every read must ask for at most one chunk, and the arrays it returned
    (and their views) must be released before the next chunk is read:
    reading the whole array, or holding two chunks, raises ``MemoryError``.
    """

    def __init__(self, darray, limit=1):
        self.darray = darray
        self.shape, self.dtype, self.ndim = darray.shape, darray.dtype, darray.ndim
        self.chunk_size = int(np.prod([max(c) for c in darray.chunks]))
        self.limit = limit
        self.live = self.peak = self.reads = 0
        self._lock = threading.Lock()

    def _release(self):
        with self._lock:
            self.live -= 1

    def __getitem__(self, key):
        arr = np.array(self.darray[key].compute(scheduler="synchronous"))
        if arr.size == 0:
            return arr
        if arr.size > self.chunk_size:
            raise MemoryError(f"a read of {arr.shape}: more than one chunk {CHUNKS}")
        with self._lock:
            if self.live + 1 > self.limit:
                raise MemoryError(
                    f"{self.live + 1} chunks materialised at once (limit {self.limit})"
                )
            self.live += 1
            self.peak = max(self.peak, self.live)
            self.reads += 1
        weakref.finalize(arr, self._release)
        return arr


def _guard(s):
    """Wrap the data of a lazy signal; return the guard."""
    guard = _OneChunkAtATime(s.data)
    s.data = da.from_array(
        guard,
        chunks=s.data.chunks,
        meta=np.empty((0,) * s.data.ndim, s.data.dtype),
    )
    return guard


@pytest.fixture(scope="module")
def zspy(tmp_path_factory):
    s = simulated_precipitates(
        scan_shape=(32, 32),
        detector_shape=(24, 24),
        n_grains=3,
        grain_diameter=5.0,
        random_state=2,
    )
    s.data = np.round(s.data).astype(np.uint16)  # counts, stored as integers
    s = s.as_lazy()
    s.data = s.data.rechunk(CHUNKS)
    path = tmp_path_factory.mktemp("streaming") / "scan.zspy"
    s.save(path)
    return path


@pytest.fixture
def one_task_at_a_time():
    with dask.config.set(scheduler="synchronous"):
        yield


def test_the_guard_refuses_the_whole_array(zspy, one_task_at_a_time):
    s = hio.load(zspy, lazy=True)
    assert s.data.chunks == tuple((c,) * (n // c) for c, n in zip(CHUNKS, s.data.shape))
    _guard(s)
    with pytest.raises(MemoryError):
        s.data.compute()
    s = hio.load(zspy, lazy=True)
    guard = _guard(s)
    assert float(s.data.sum().compute()) > 0  # a reduction streams
    assert guard.reads == 8 and guard.peak == 1


def test_the_python_main_job_streams(zspy, one_task_at_a_time, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = hio.load(zspy, lazy=True)
    assert s._lazy
    guard = _guard(s)
    s.decomposition(
        algorithm="constrained_nmf",
        output_dimension=5,
        max_iter=20,
        print_info=False,
        random_state=0,
    )
    s.cluster_diffraction(n_clusters=3)
    res = s.get_cluster_diffraction_results()
    for key, signal in res.items():
        signal.save(tmp_path / f"{key}.zspy")
    s.learning_results.save(str(tmp_path / "learning_results.npz"))
    mse, baseline = rp.model_mse(
        s, baseline=True, baseline_mask=s.learning_results.signal_mask
    )
    assert 0 < mse < baseline
    assert rp.reconstruction_mse(s) == pytest.approx(mse, rel=1e-12)
    fig = s.plot_cluster_gallery()
    plt.close(fig)
    fig = s.plot_cluster_dendrogram()
    plt.close(fig)
    assert guard.reads > 8 and guard.peak == 1


def test_cli_run_lazy_streams(zspy, one_task_at_a_time, tmp_path, monkeypatch):
    real_load = hio.load
    guards = []

    def guarded_load(*args, **kwargs):
        s = real_load(*args, **kwargs)
        assert s._lazy
        guards.append(_guard(s))
        return s

    monkeypatch.setattr(hio, "load", guarded_load)
    out = tmp_path / "run"
    rc = main(
        [
            "run",
            str(zspy),
            "--lazy",
            "--components",
            "4",
            "--max-iter",
            "10",
            "--signal-mask-beam",
            "auto",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    assert (out / "report.md").exists() and (out / "cluster_gallery.png").exists()
    (guard,) = guards
    assert guard.reads > 8 and guard.peak == 1


def _naive(X, W, H, mask):
    """The in-memory formulas, whole array at once (the reference)."""
    valid = ~np.all(np.isnan(H), axis=1)
    mse = np.mean((X[:, valid] - np.nan_to_num(W) @ np.nan_to_num(H[valid]).T) ** 2)
    Xb = X[:, ~mask]
    base = np.mean((Xb - Xb.sum(1, keepdims=True) * Xb.sum(0) / Xb.sum()) ** 2)
    return mse, base


@pytest.mark.parametrize("chunks", [CHUNKS, (5, 7, 12, 24)])
def test_streamed_numbers_equal_the_in_memory_ones(zspy, chunks, monkeypatch):
    s = hio.load(zspy, lazy=False)
    s.decomposition(
        algorithm="constrained_nmf",
        output_dimension=4,
        max_iter=10,
        print_info=False,
        random_state=0,
    )
    lr = s.learning_results
    X = np.asarray(s.data, dtype=np.float64).reshape(32 * 32, -1)
    mask = _mask_vector(lr.signal_mask, X.shape[1], (24, 24), "signal_mask")
    ref_mse, ref_base = _naive(X, lr.loadings, lr.factors, mask)
    lazy = s.as_lazy()
    lazy.data = lazy.data.rechunk(chunks)  # signal chunks too: merged per block
    lazy.learning_results = lr
    monkeypatch.setattr(rp, "_PIECE_BYTES", 8 * 24 * 24 * 3)  # pieces of 3 rows
    mean = X.mean(axis=0).reshape(24, 24)
    for sig in (s, lazy):
        assert rp.reconstruction_mse(sig) == pytest.approx(ref_mse, rel=1e-12)
        assert rp.mean_pattern_mse(sig, lr.signal_mask) == pytest.approx(
            ref_base, rel=1e-12
        )
        both = rp.model_mse(
            sig, baseline=True, baseline_mask=lr.signal_mask, mean_pattern=mean
        )
        assert both == pytest.approx((ref_mse, ref_base), rel=1e-12)


def test_the_lazy_choice_uses_the_uncompressed_size(tmp_path, monkeypatch):
    import hyperspy.api as hs

    s = hs.signals.Signal2D(np.zeros((16, 16, 24, 24), dtype=np.uint16))
    path = tmp_path / "zeros.zspy"
    s.save(path)  # compresses to a few kB; 295 kB uncompressed
    disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert disk < 50_000
    monkeypatch.setattr(_load, "LAZY_THRESHOLD_BYTES", 100_000)
    assert hio.load(path)._lazy
    monkeypatch.setattr(_load, "LAZY_THRESHOLD_BYTES", 400_000)
    assert not hio.load(path)._lazy


def test_cluster_patterns_reads_each_chunk_once_per_pass(
    zspy, one_task_at_a_time, monkeypatch
):
    from hyperspy_cnmf.signals import _cluster

    # pieces of 32 patterns, smaller than a chunk (128): a chunk is still read once
    monkeypatch.setattr(_cluster._iter_nav_blocks, "__defaults__", (32,))
    s = hio.load(zspy, lazy=True)
    guard = _guard(s)
    s.cluster_patterns(step=4, n_clusters=3)
    # one read of the subsampled patterns, one to label every position
    assert guard.reads == 2 * 8 and guard.peak == 1
    labels = s.learning_results.cpat_position_labels
    eager = hio.load(zspy, lazy=False)
    eager.cluster_patterns(step=4, n_clusters=3)
    np.testing.assert_array_equal(labels, eager.learning_results.cpat_position_labels)


def _main_job(path):
    s = hio.load(path, lazy=True)
    s.decomposition(
        algorithm="constrained_nmf",
        output_dimension=4,
        max_iter=10,
        print_info=False,
        random_state=0,
    )
    s.cluster_diffraction(n_clusters=3)
    lr = s.learning_results
    return lr.loadings, lr.factors, lr.cdiff_labels, lr.cdiff_merged_factors


def test_the_main_job_on_process_workers_equals_the_threaded_one(zspy):
    from distributed import Client, LocalCluster

    with dask.config.set(scheduler="threads"):
        threaded = _main_job(zspy)
    with (
        LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        on_workers = _main_job(zspy)
        ran = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert min(ran.values()) > 0  # both processes did part of the work
    for a, b in zip(threaded, on_workers):
        np.testing.assert_array_equal(a, b)


def _kept_results(scheduler):
    """A scheduler plugin recording the key and size of every task result held by a worker."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class KeptResults(SchedulerPlugin):
        def __init__(self):
            self.kept = {}

        def transition(self, key, start, finish, *args, **kwargs):
            if finish == "memory":
                self.kept[key] = scheduler.tasks[key].nbytes

    return KeptResults()


def _ours(key):
    """A key of the package's tasks (factors, partial sums) or the open file."""
    name = key[0] if isinstance(key, tuple) else key
    return str(name).startswith(("cnmf-", "original-array-"))


def _fetched_from_workers(dask_worker):
    return [
        (key, nbytes)
        for entry in dask_worker.transfer_incoming_log
        for key, nbytes in entry["keys"].items()
    ]


def test_only_factors_travel_between_process_workers(zspy):
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        plugin = _kept_results(cluster.scheduler)
        cluster.scheduler.add_plugin(plugin, name="cnmf-kept-results")
        s = hio.load(zspy, lazy=True)
        info = s.decomposition(
            algorithm="constrained_nmf",
            output_dimension=4,
            max_iter=10,
            print_info=False,
            return_info=True,
            random_state=0,
        )
        rp.model_mse(s)
        fetched = client.run(_fetched_from_workers)
    # every chunk is read inside the task that processes it: no chunk is ever
    # a result of its own that a worker holds, and none is fetched by another
    assert plugin.kept and all(_ours(key) for key in plugin.kept)
    moved = [item for items in fetched.values() for item in items]
    assert all(_ours(key) for key, _ in moved)
    # what travels per read: the partial sums of the size of the factors, at most
    # two per block (the key names above show that no chunk does; on this toy scan
    # a chunk is only 8 factors in size, 147 kB)
    reads = info["n_passes"] + 1
    factors = 24 * 24 * 4 * 8  # pixels x k, float64
    n_blocks = 32 // CHUNKS[0]
    per_read = sum(nbytes for _, nbytes in moved) / reads
    assert per_read < 2 * n_blocks * factors, (per_read, factors)
