"""decomposition(algorithm="constrained_nmf") on lazy (dask-backed) signals."""

import json
import threading
import tracemalloc

import dask.array as da
import hyperspy.api as hs
import numpy as np
import pytest

from hyperspy_cnmf.data import simulated_precipitates
from hyperspy_cnmf.nmf import EXACT_REFINEMENT
from hyperspy_cnmf.signals import STEM4D, LazySTEM4D, _decomposition

K = 3
SHAPE = (24, 24, 24, 24)


@pytest.fixture(scope="module")
def small():
    """A small float64 simulated dataset (24 x 24 scan, 24 x 24 detector)."""
    return simulated_precipitates(
        scan_shape=SHAPE[:2],
        detector_shape=SHAPE[2:],
        n_grains=2,
        grain_diameter=3.0,
        random_state=0,
        dtype="float64",
    )


def _lazy(s, chunks):
    lazy = s.as_lazy()
    lazy.data = lazy.data.rechunk(chunks)
    return lazy


def _fit(s, **kw):
    kw.setdefault("random_state", 0)
    kw.setdefault("max_iter", 8)
    kw.setdefault("tol", 0)
    kw.setdefault("print_info", False)
    kw.setdefault(
        "max_exact_iter", None
    )  # as in memory ("auto": 1 exact iteration when lazy)
    with pytest.warns(UserWarning, match="max_iter"):
        return s.decomposition(
            algorithm="constrained_nmf", output_dimension=K, return_info=True, **kw
        )


def _assert_same_results(a, b, rtol=1e-6):
    la, lb = a.learning_results, b.learning_results
    for name in ("factors", "loadings"):
        x, y = getattr(la, name), getattr(lb, name)
        assert isinstance(y, np.ndarray) and x.shape == y.shape
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
        np.testing.assert_allclose(
            np.nan_to_num(y),
            np.nan_to_num(x),
            rtol=rtol,
            atol=rtol * np.nanmax(x),
            err_msg=name,
        )
    np.testing.assert_allclose(lb.cnmf_loss, la.cnmf_loss, rtol=rtol)
    assert lb.decomposition_algorithm == la.decomposition_algorithm == "constrained_nmf"
    pa, pb = json.loads(la.cnmf_parameters), json.loads(lb.cnmf_parameters)
    assert pa.keys() == pb.keys()
    for (
        key,
        value,
    ) in pa.items():  # the beam centre is measured on float32 sums in other orders
        assert pb[key] == (
            pytest.approx(value, rel=rtol, nan_ok=True)
            if isinstance(value, float)
            else value
        ), key


def _masks():
    nav = np.zeros(SHAPE[:2], bool)
    nav[:2, :5] = True
    sig = np.zeros(SHAPE[2:], bool)
    sig[0, :] = True
    return nav, sig


def _custom_init(n_nav, n_sig):
    rng = np.random.default_rng(7)
    return rng.random((n_nav, K)) * 100, rng.random((n_sig, K)) / n_sig


NAV_TILES, SIGNAL_CHUNKED = (5, 7, 24, 24), (8, 24, 12, 12)
CASES = {
    "default-nav-tiles": ({}, NAV_TILES),
    "custom-init-signal-chunked": ({"init": "custom"}, SIGNAL_CHUNKED),
    "masks-signal-chunked": ({"masks": True}, SIGNAL_CHUNKED),
    "poisson-nav-tiles": (
        {"normalize_poissonian_noise": True, "init": "custom"},
        NAV_TILES,
    ),
    "primitive-mu": (
        {"solver": "mu", "map_resolution": None, "diffraction_constraint": False},
        NAV_TILES,
    ),
    "no-sketch-random": ({"sketch": False, "init": "random"}, SIGNAL_CHUNKED),
}


@pytest.mark.parametrize("options, chunks", CASES.values(), ids=CASES.keys())
def test_lazy_decomposition_equals_eager(small, options, chunks):
    kw = dict(options)
    if kw.pop("masks", False):
        nav, sig = _masks()
        kw.update(navigation_mask=nav, signal_mask=sig)
    if kw.get("init") == "custom":
        kw["init"] = _custom_init(24 * 24, 24 * 24)
    eager, lazy = small.deepcopy(), _lazy(small, chunks)
    data = lazy.data
    info_e = _fit(eager, **kw)
    info_l = _fit(lazy, **kw)
    assert isinstance(lazy, LazySTEM4D) and lazy.data is data  # signal untouched
    _assert_same_results(eager, lazy)
    assert info_l["n_passes"] <= info_e["n_passes"]


def test_the_default_call_gives_the_same_result_lazily_and_again(small):
    """No random_state given: the sketch's seed is fixed (0), so two calls, in memory
    and lazily in tiles, agree (a fresh seed per call made them differ)."""
    runs = []
    for s in (small.deepcopy(), small.deepcopy(), _lazy(small, (5, 7, 24, 24))):
        s.decomposition(
            algorithm="constrained_nmf", output_dimension=K, print_info=False
        )
        runs.append(s)
    _assert_same_results(runs[0], runs[1], rtol=1e-12)
    _assert_same_results(runs[0], runs[2])
    assert json.loads(runs[2].learning_results.cnmf_parameters)["random_state"] == 0


def test_noise_free_data_beyond_their_rank_give_the_same_labels_lazily():
    """Noise-free simulated data (3 grains in a glass matrix) at k = 8 and 12,
    in memory and lazily in 8 x 8 tiles, through the clustering.

    The range finder's basis has directions beyond the data's rank; their product with
    the data (rounding error) was read again in float32 and differed between splits:
    label ARI 0.993 (k = 8) and 0.422 (k = 12) between lazy and in memory, factors 0.18
    and 0.93 of their maximum apart. Those directions are now dropped (``_orth_range``).
    """
    s = simulated_precipitates(
        scan_shape=(32, 32), n_grains=3, noise=False, random_state=0
    )
    for k in (8, 12):
        runs = [s.deepcopy(), _lazy(s, (8, 8, 48, 48))]
        for r in runs:
            r.decomposition(
                algorithm="constrained_nmf", output_dimension=k, print_info=False
            )
            r.cluster_diffraction()
        a, b = (np.asarray(r.learning_results.cdiff_position_labels) for r in runs)
        assert np.array_equal(a, b)
        _assert_same_results(*runs)


def test_first_range_product_shares_the_statistics_read(small):
    # n_power_iter (2) reads for the range finder, whose first product came
    # with the statistics read, plus 1 for the exact iteration (Xe @ Ht and
    # Xe.T @ W in one read); no read for the final loss after the component
    # separation (plain least squares on every pixel: the direct-beam mask, like
    # the Poisson scales, is known only after the statistics read)
    info = _fit(
        _lazy(small, NAV_TILES),
        max_exact_iter=1,
        normalize_poissonian_noise=False,
        direct_beam_mask=False,
    )
    assert info["n_passes"] == 2 + 1
    # Poisson weighting (the default): the scales come from the first read, so the
    # range finder reads n_power_iter + 1 times
    info = _fit(_lazy(small, NAV_TILES), max_exact_iter=1)
    assert info["n_passes"] == 3 + 1


def test_auto_exact_iterations_lazy_and_eager(small):
    """``max_exact_iter="auto"``: the same fixed refinement lazily and in memory, so lazy = in
    memory, within 12 reads of the data out of core (issue 10, item 7)."""
    kw = dict(
        algorithm="constrained_nmf",
        output_dimension=K,
        random_state=0,
        max_iter=300,
        print_info=False,
        return_info=True,
    )
    lazy, eager = _lazy(small, NAV_TILES), small.deepcopy()
    info_l = lazy.decomposition(**kw)
    info_e = eager.decomposition(**kw)
    assert info_l["max_exact_iter"] == info_e["max_exact_iter"] == EXACT_REFINEMENT
    assert info_l["n_iter"] == info_e["n_iter"] > 1
    assert info_l["n_passes"] <= 12
    F_l, F_e = (
        np.nan_to_num(lazy.learning_results.factors),
        np.nan_to_num(eager.learning_results.factors),
    )
    ok = np.linalg.norm(F_e, axis=0) > 0
    cos = (
        (F_l * F_e).sum(0)[ok]
        / np.linalg.norm(F_l, axis=0)[ok]
        / np.linalg.norm(F_e, axis=0)[ok]
    )
    assert cos.min() > 0.999
    # None: the exact phase runs to ``tol`` (more reads), lazily as in memory
    info_n = lazy.decomposition(**dict(kw, max_exact_iter=None, tol=1e-4))
    assert info_n["max_exact_iter"] is None and info_n["converged"]
    with pytest.raises(ValueError, match="max_exact_iter"):
        lazy.decomposition(
            algorithm="constrained_nmf", output_dimension=K, max_exact_iter="few"
        )


def test_lazy_masks_and_integer_counts(small):
    counts = STEM4D(np.round(small.data).astype(np.uint16))
    nav, sig = _masks()
    kw = dict(
        navigation_mask=hs.signals.BaseSignal(nav).T.as_lazy(),
        signal_mask=hs.signals.Signal2D(sig).as_lazy(),
        map_resolution=2.0,
    )
    eager, lazy = counts.deepcopy(), _lazy(counts, (6, 12, 24, 24))
    _fit(eager, **kw)
    _fit(lazy, **kw)
    assert lazy.data.dtype == np.uint16
    _assert_same_results(eager, lazy, rtol=1e-4)  # float32 sums in other orders


def test_nan_in_masked_entries_of_lazy_data(small):
    s = small.deepcopy()
    nav, sig = _masks()
    s.data[nav] = np.nan
    s.data[..., sig] = np.inf
    lazy = _lazy(s, (6, 24, 24, 24))
    _fit(lazy, navigation_mask=nav, signal_mask=sig)
    fitted = ~np.asarray(
        lazy.learning_results.signal_mask
    ).ravel()  # user mask + direct beam
    assert not fitted[sig.ravel()].any()
    assert np.all(np.isfinite(lazy.learning_results.factors[fitted]))
    s.data[5, 5, 5, 5] = np.nan  # outside the masks: refused
    with pytest.raises(ValueError, match="NaN"):
        _lazy(s, (6, 24, 24, 24)).decomposition(
            algorithm="constrained_nmf",
            output_dimension=K,
            navigation_mask=nav,
            signal_mask=sig,
        )


class _Source:
    """An array-like that records every read (and can fail on request)."""

    def __init__(self, array, fail_after=None):
        self.array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.sizes = []
        self.fail_after = fail_after
        self._lock = threading.Lock()

    def __getitem__(self, key):
        with self._lock:
            self.sizes.append(self.array[key].size)
            if self.fail_after is not None and len(self.sizes) > self.fail_after:
                raise RuntimeError("disk went away")
        return self.array[key]


def test_the_whole_array_is_never_materialised():
    """Fails if any step holds (a copy of) the whole dataset in memory."""
    s = simulated_precipitates(
        scan_shape=(48, 48),
        detector_shape=(24, 24),
        n_grains=2,
        grain_diameter=3.0,
        random_state=1,
        dtype="float64",
    )
    chunk = (8, 48, 24, 24)
    _fit(_lazy(s, chunk), max_iter=2)  # compile and warm up outside the measurement
    source = _Source(s.data)
    lazy = s.as_lazy()
    lazy.data = da.from_array(source, chunks=chunk, asarray=False)
    tracemalloc.start()
    try:
        _fit(lazy, max_iter=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert max(source.sizes) <= np.prod(chunk)
    assert peak < 0.3 * s.data.nbytes, (
        f"peak {peak / 2**20:.1f} MiB for {s.data.nbytes / 2**20:.1f} MiB of data"
    )
    assert isinstance(lazy.learning_results.factors, np.ndarray)


@pytest.mark.parametrize("ext", ["zspy", "hspy"])
def test_lazy_load_from_file(small, tmp_path, ext):
    path = tmp_path / f"data.{ext}"
    small.save(path, chunks=(6, 24, 24, 24))
    lazy = hs.load(path, lazy=True)
    assert isinstance(lazy, LazySTEM4D)
    eager = small.deepcopy()
    _fit(eager)
    _fit(lazy)
    _assert_same_results(eager, lazy)
    del lazy


def test_distributed_client_gives_the_same_result(small):
    import distributed  # the tests extra installs it

    eager = small.deepcopy()
    _fit(eager, max_iter=5)
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        lazy = _lazy(small, (6, 24, 24, 24))
        _fit(lazy, max_iter=5)
    _assert_same_results(eager, lazy)


def test_interruption_leaves_the_signal_and_results_untouched(small, monkeypatch):
    lazy = _lazy(small, (6, 24, 24, 24))
    data = lazy.data

    def interrupt(phase, iteration, loss):
        if phase == "exact" and iteration == 0:  # mid-fit: the sketch phase is done
            raise KeyboardInterrupt

    monkeypatch.setattr(
        _decomposition, "_progress_callback", lambda *args: (interrupt, lambda: None)
    )
    with pytest.raises(KeyboardInterrupt):
        lazy.decomposition(
            algorithm="constrained_nmf", output_dimension=K, print_info=False
        )
    lr = lazy.learning_results
    assert (
        lr.factors is None
        and lr.loadings is None
        and lr.decomposition_algorithm is None
    )
    assert lazy.data is data and isinstance(lazy, LazySTEM4D)
    np.testing.assert_array_equal(lazy.data.compute(), small.data)


def test_failing_read_mid_fit_keeps_earlier_results(small):
    lazy = _lazy(small, (6, 24, 24, 24))
    _fit(lazy, max_iter=3)
    before = lazy.learning_results.factors.copy()
    source = _Source(
        small.data, fail_after=4 * 3
    )  # fails in the 4th read (the exact phase)
    lazy.data = da.from_array(source, chunks=(6, 24, 24, 24), asarray=False)
    with pytest.raises(RuntimeError, match="disk went away"):
        lazy.decomposition(
            algorithm="constrained_nmf", output_dimension=K + 1, print_info=False
        )
    lr = lazy.learning_results
    np.testing.assert_array_equal(lr.factors, before)
    assert lr.output_dimension == K
