"""LiberTEM backend: the same fit as the dask path, read by LiberTEM's readers and executors.

Runs in the main environment (``libertem`` is in the ``tests`` extra): never
skipped.
"""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import dask.array as da
import hyperspy.api as hs
import numpy as np
import pytest
import scipy.sparse
import threadpoolctl
from libertem.api import Context

import hyperspy_cnmf
from hyperspy_cnmf.chunked import DaskOperator, tree_reduce
from hyperspy_cnmf.chunked_libertem import LiberTEMOperator, _OrderedTree
from hyperspy_cnmf.data import simulated_precipitates
from hyperspy_cnmf.libertem import decomposition, signal_from_dataset
from hyperspy_cnmf.nmf import constrained_nmf
from hyperspy_cnmf.signals._store import decomposition_settings

SCAN, DET = (24, 20), (24, 24)
#: 4 partitions of 6 scan rows each (LiberTEM splits 480 positions evenly), the
#: chunks of the reference dask arrays
N_PARTITIONS, ROWS_PER_PARTITION = 4, 6
FIT = dict(random_state=0, max_iter=40, tol=1e-6, print_info=False, return_info=True)


@pytest.fixture(scope="module")
def sim():
    return simulated_precipitates(
        scan_shape=SCAN, detector_shape=DET, n_grains=3, grain_diameter=4.0
    )


@pytest.fixture(scope="module")
def calibration(sim):
    """The simulation's calibration as the front end's arguments."""
    am, tem = sim.axes_manager, sim.metadata.Acquisition_instrument.TEM
    return dict(
        scan_step=am["x"].scale,
        scan_units=am["x"].units,
        detector_step=am["kx"].scale,
        detector_units=am["kx"].units,
        beam_energy=tem.beam_energy,
        convergence_angle=tem.convergence_angle,
    )


@pytest.fixture(scope="module")
def files(sim, tmp_path_factory):
    """The simulated counts as ``.npy`` (float32), raw (uint16) and raw_csr (sparse) files."""
    root = tmp_path_factory.mktemp("libertem")
    data = np.asarray(sim.data)
    assert np.array_equal(data, np.round(data)) and data.max() < 2**16
    npy, raw = root / "sim.npy", root / "sim.raw"
    np.save(npy, data)
    counts = data.astype(np.uint16)
    counts.tofile(raw)
    # LiberTEM's sparse format (event-based detectors): CSR arrays and a TOML sidecar
    csr = scipy.sparse.csr_matrix(counts.reshape(np.prod(SCAN), np.prod(DET)))
    assert 0 < csr.nnz < counts.size  # zeros left out
    for name, values in (
        ("indptr", csr.indptr),
        ("indices", csr.indices),
        ("data", csr.data),
    ):
        values.tofile(root / f"{name}.raw")
    toml = root / "sim.toml"
    toml.write_text(
        "[params]\n"
        'filetype = "raw_csr"\n'
        f"nav_shape = {list(SCAN)}\n"
        f"sig_shape = {list(DET)}\n"
        "[raw_csr]\n"
        + "".join(
            f'{name}_file = "{name}.raw"\n{name}_dtype = "{values.dtype.str}"\n'
            for name, values in (
                ("indptr", csr.indptr),
                ("indices", csr.indices),
                ("data", csr.data),
            )
        )
    )
    return {"npy": npy, "raw": raw, "raw_csr": toml}


@pytest.fixture(scope="module")
def inline():
    ctx = Context.make_with("inline")
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def dask_ctx():
    """LiberTEM's dask executor: 2 worker processes."""
    ctx = Context.make_with("dask", cpus=2)
    yield ctx
    ctx.close()


def _load(ctx, files, fmt):
    if fmt in ("npy", "raw_csr"):
        return ctx.load(fmt, path=str(files[fmt]), num_partitions=N_PARTITIONS)
    return ctx.load(
        "raw",
        path=str(files["raw"]),
        nav_shape=SCAN,
        sig_shape=DET,
        dtype="uint16",
        num_partitions=N_PARTITIONS,
    )


def _array(files, fmt):
    """The same file read without LiberTEM, as a memory map."""
    if fmt == "npy":
        return np.load(files["npy"], mmap_mode="r")
    # the raw file holds the counts of the raw_csr files
    return np.memmap(files["raw"], dtype=np.uint16, mode="r", shape=SCAN + DET)


def _dask_path_signal(files, fmt, like):
    """The dask path's lazy signal of the same file, chunked as LiberTEM's partitions."""
    darr = da.from_array(_array(files, fmt), chunks=(ROWS_PER_PARTITION, -1, -1, -1))
    s = hs.signals.Signal2D(darr).as_lazy()
    s.set_signal_type("4D-STEM")
    for a, b in zip(s.axes_manager._axes, like.axes_manager._axes):
        a.name, a.scale, a.offset, a.units = b.name, b.scale, b.offset, b.units
    s.metadata.add_dictionary(
        {"Acquisition_instrument": like.metadata.Acquisition_instrument.as_dictionary()}
    )
    return s


def _count_reads(ctx, monkeypatch):
    calls = []
    run = ctx.run_udf

    def counted(*args, **kwargs):
        calls.append(kwargs.get("udf"))
        return run(*args, **kwargs)

    monkeypatch.setattr(ctx, "run_udf", counted)
    return calls


def test_partitions_are_the_reference_chunks(inline, files):
    ds = _load(inline, files, "npy")
    op = LiberTEMOperator(ds, ctx=inline)
    rows = ROWS_PER_PARTITION * SCAN[1]
    assert [b for _, b in op._layout.blocks] == [
        slice(i * rows, (i + 1) * rows) for i in range(N_PARTITIONS)
    ]
    assert op.shape == (np.prod(SCAN), np.prod(DET)) and op.dtype == np.float32


@pytest.mark.parametrize("n", [1, 2, 4, 5, 16, 17, 23])
def test_ordered_tree_is_tree_reduce_in_any_order(n):
    """The merge of partitions arriving in any order groups the sums as chunked.tree_reduce."""
    rng = np.random.default_rng(n)
    parts = [{"P": rng.random((3, 5)), "minimum": rng.random()} for _ in range(n)]
    (expected,) = dask.compute(tree_reduce(parts, _merge_for_test, "t"))
    for order in (range(n), rng.permutation(n)):
        tree = _OrderedTree(n)
        for i in order:
            tree.locals[int(i)] = i
            tree.add(int(i), parts[int(i)])
        locals_, merged = tree.result()
        assert locals_ == list(range(n))
        assert np.array_equal(merged["P"], expected["P"])  # the same sums, bit for bit
        assert merged["minimum"] == expected["minimum"]
    tree = _OrderedTree(n)
    with pytest.raises(RuntimeError, match="incomplete"):
        tree.result()


def _merge_for_test(parts):
    from hyperspy_cnmf.chunked import _merge

    return _merge(parts)


@pytest.fixture(scope="module")
def threads():
    """LiberTEM's threaded executor (2 threads)."""
    ctx = Context.make_with("threads", cpus=2)
    yield ctx
    ctx.close()


@pytest.mark.parametrize(
    "executor", ["inline", "threads", "dask", "pipelined", "delayed"]
)
def test_operator_equals_dask_operator(executor, request, files):
    """Every read of a fit: the LiberTEM UDF gives the dask path's numbers bit for bit."""
    if executor in ("pipelined", "delayed"):
        ctx = Context.make_with(
            executor, **({"cpus": 2} if executor == "pipelined" else {})
        )
        request.addfinalizer(ctx.close)
    else:
        ctx = request.getfixturevalue({"dask": "dask_ctx"}.get(executor, executor))
    op = LiberTEMOperator(_load(ctx, files, "raw"), ctx=ctx)
    darr = da.from_array(
        _array(files, "raw").reshape(-1, *DET),
        chunks=(ROWS_PER_PARTITION * SCAN[1], -1, -1),
    )
    ref = DaskOperator(darr, signal_ndim=2)
    results = []
    for o in (op, ref):
        o.expect_right_gram(np.ones((op.shape[1], 6)))
        results.append(constrained_nmf(o, 4, random_state=0, max_iter=60, tol=1e-4))
    got, want = results
    assert np.array_equal(got.W, want.W) and np.array_equal(got.Ht, want.Ht)
    assert np.array_equal(got.loss, want.loss)
    assert op.n_passes == ref.n_passes > 10 and got.n_passes == want.n_passes
    assert op.stats() == ref.stats()
    assert np.array_equal(op.beam_positions(), ref.beam_positions(), equal_nan=True)


def test_an_incomplete_run_is_repeated_once_then_raises(inline, files, monkeypatch):
    """A UDF run that comes back without every partition: one warned repeat, then an error."""
    op = LiberTEMOperator(_load(inline, files, "raw"), ctx=inline)
    want = op.stats()
    run_udf, empty = inline.run_udf, {"runs": 0}

    def flaky(**kw):
        if empty["runs"] < empty["n"]:
            empty["runs"] += 1  # a run that lost every partition
            return {"blocks": type("B", (), {"data": np.zeros(1, dtype=object)})()}
        return run_udf(**kw)

    monkeypatch.setattr(inline, "run_udf", flaky)
    for n in (1, 2):
        empty.update(runs=0, n=n)
        op = LiberTEMOperator(_load(inline, files, "raw"), ctx=inline)
        if n == 1:
            with pytest.warns(RuntimeWarning, match="0 of 4 partitions"):
                assert op.stats() == want
            assert (op.n_passes, op.n_repeated_reads) == (1, 1)
        else:
            with (
                pytest.warns(RuntimeWarning),
                pytest.raises(RuntimeError, match="twice"),
            ):
                op.stats()


def test_reads_give_openblas_back_to_the_driver(inline, files):
    """After a read the fit's single-threaded BLAS (``threadpool_limits(1)``) takes effect.

    threadpoolctl (>= 3.8) lets only the thread that first set OpenBLAS's
    process-wide pool set it again; the worker threads of LiberTEM's threaded
    executor take that control in every run and restore stale limits, which
    left the solver's products between reads on 2 OpenBLAS threads (see
    ``chunked_libertem._keeping_thread_limits``: slower, and no longer
    bit-identical to the dask path). Here a live worker thread holds the
    control, as theirs do.
    """
    blas = [
        lib
        for lib in threadpoolctl.ThreadpoolController().lib_controllers
        if lib.internal_api == "openblas"
    ]
    assert blas  # NumPy's and SciPy's wheels bring OpenBLAS
    with ThreadPoolExecutor(1) as worker:
        worker.submit(lambda: [lib.set_num_threads(2) for lib in blas]).result()
        op = LiberTEMOperator(_load(inline, files, "npy"), ctx=inline)
        op.stats()  # the first read of a fit, before its BLAS limit
        with threadpoolctl.threadpool_limits(1):
            assert [lib.get_num_threads() for lib in blas] == [1] * len(blas)
            op.right(np.ones((op.shape[1], 2)))
            assert [lib.get_num_threads() for lib in blas] == [1] * len(blas)


def _assert_same_learning_results(a, b):
    lra, lrb = a.learning_results, b.learning_results
    fields = sorted(set(vars(lra)) | set(vars(lrb)))
    for name in fields:
        va, vb = getattr(lra, name, None), getattr(lrb, name, None)
        if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
            assert np.array_equal(va, vb, equal_nan=True), name
        elif isinstance(va, float) and np.isnan(va):
            assert np.isnan(vb), name
        else:
            assert va == vb, name


@pytest.mark.parametrize(
    "fmt, executor",
    [("npy", "inline"), ("raw", "inline"), ("raw_csr", "inline"), ("npy", "dask")],
)
def test_front_end_stores_the_dask_paths_results(
    fmt, executor, request, files, calibration, monkeypatch
):
    """LiberTEM's readers and executors: the learning_results of hyperspy_cnmf.decomposition."""
    ctx = request.getfixturevalue({"dask": "dask_ctx"}.get(executor, executor))
    ds = _load(ctx, files, fmt)
    reads = _count_reads(ctx, monkeypatch)
    s, info = decomposition(ctx, ds, 4, signal_mask=_beam_stop(), **calibration, **FIT)
    ref = _dask_path_signal(files, fmt, like=s)
    ref_reads = []
    dask_read = DaskOperator._read

    def counted(self, *args, **kwargs):
        ref_reads.append(args[0].__name__)
        return dask_read(self, *args, **kwargs)

    monkeypatch.setattr(DaskOperator, "_read", counted)
    ref_info = hyperspy_cnmf.decomposition(ref, 4, signal_mask=_beam_stop(), **FIT)

    assert type(s).__name__ == "LazySTEM4D"
    assert s.learning_results.decomposition_algorithm == "constrained_nmf"
    assert s.learning_results.factors.shape == (np.prod(DET), 4)
    _assert_same_learning_results(s, ref)
    # the same reads: the statistics read, then the solver's passes
    assert len(reads) == len(ref_reads) == info["n_passes"] + 1 > 10
    assert info["n_passes"] == ref_info["n_passes"]
    assert [u.params.func.__name__ for u in reads] == ref_reads
    assert np.array_equal(
        info["beam_positions"], ref_info["beam_positions"], equal_nan=True
    )
    # the probe size from the calibration arguments (map_resolution="auto")
    params = decomposition_settings(s.learning_results)
    assert params["map_resolution_method"].startswith("convergence_angle")
    np.testing.assert_allclose(
        params["map_resolution"], 1.5, rtol=1e-6
    )  # the simulation's probe
    # HyperSpy's own methods work on the result
    model, ref_model = s.get_decomposition_model(), ref.get_decomposition_model()
    assert np.array_equal(
        np.asarray(model.data[:2]), np.asarray(ref_model.data[:2]), equal_nan=True
    )
    # the clustering of the components works on the result (no read of the data)
    res = hyperspy_cnmf.cluster_diffraction(s)
    ref_res = hyperspy_cnmf.cluster_diffraction(ref)
    assert np.array_equal(res["labels"], ref_res["labels"])
    assert len(reads) == len(ref_reads)


def _beam_stop():
    mask = np.zeros(DET, bool)
    mask[0, :3] = True
    return mask


def test_signal_from_dataset_calibration_and_data(inline, files, sim):
    s = signal_from_dataset(
        _load(inline, files, "raw"),
        scan_step=(0.5, 0.25),
        scan_units="Å",
        detector_step=2.0,
        detector_units="mrad",
        beam_energy=300,
    )
    am = s.axes_manager
    axes = am.navigation_axes + am.signal_axes
    assert [(a.name, a.size, a.scale, a.units) for a in axes] == [
        ("x", 20, 0.25, "Å"),
        ("y", 24, 0.5, "Å"),
        ("kx", 24, 2.0, "mrad"),
        ("ky", 24, 2.0, "mrad"),
    ]
    assert s.metadata.Acquisition_instrument.TEM.beam_energy == 300
    assert "convergence_angle" not in s.metadata.Acquisition_instrument.TEM
    assert s.data.dtype == np.uint16 and s._lazy
    assert np.array_equal(s.data[3:5].compute(), np.asarray(sim.data)[3:5])
    bare = signal_from_dataset(_load(inline, files, "npy"))
    assert {a.units for a in bare.axes_manager._axes} == {"px"}


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(dataset="3d"), ValueError, "2 navigation .* and 2 signal"),
        (dict(dataset=np.zeros((4, 4, 4, 4))), TypeError, "LiberTEM dataset"),
        (dict(ctx="ctx"), TypeError, "LiberTEM Context"),
        (dict(scan_step=-1.0), ValueError, "scan_step must be a positive"),
        (dict(detector_step=(1.0, 2.0, 3.0)), ValueError, "detector_step"),
        (dict(scan_step=1.0, scan_units="cheese"), ValueError, "unit 'cheese'"),
        (dict(scan_step=1.0, scan_units="1/nm"), ValueError, "scan_units must be"),
        (dict(detector_step=1.0, detector_units="nm"), ValueError, "detector_units"),
        (dict(beam_energy=0), ValueError, "beam_energy"),
        (dict(map_filter="box"), ValueError, "map_filter"),
        (dict(output_dimension=0), ValueError, "output_dimension"),
        (dict(navigation_mask=np.zeros((3, 3), bool)), ValueError, "navigation_mask"),
    ],
)
def test_bad_input_one_clear_error_before_any_read(
    change, error, match, inline, files, tmp_path, monkeypatch
):
    ds = _load(inline, files, "npy")
    if isinstance(change.get("dataset"), str):
        flat = tmp_path / "flat.npy"
        np.save(flat, np.zeros((30, 8, 8), np.float32))
        change = dict(change, dataset=inline.load("npy", path=str(flat)))
    args = dict(ctx=inline, dataset=ds, output_dimension=4, print_info=False)
    args.update(change)
    reads = _count_reads(inline, monkeypatch)
    with pytest.raises(error, match=match):
        decomposition(**args)
    assert reads == []


def test_package_imports_without_libertem():
    """LiberTEM is imported by hyperspy_cnmf.libertem and chunked_libertem only."""
    code = (
        "import sys; import hyperspy_cnmf, hyperspy_cnmf.api, hyperspy_cnmf.chunked; "
        "from hyperspy_cnmf.data import simulated_precipitates; "
        "assert not any(m == 'libertem' or m.startswith('libertem.') for m in sys.modules), "
        "sorted(m for m in sys.modules if 'libertem' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_readme_example_runs_as_written(tmp_path):
    """The README's "LiberTEM users" example, as a script (its own dask executor)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## LiberTEM users", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "example.py"
    script.write_text(code)
    env = dict(os.environ, MPLBACKEND="agg")
    subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, check=True, timeout=300
    )
    assert (tmp_path / "scan.npy").exists()
