"""The whole main job out of core, on scans up to larger than memory.

For each size of a curve (GB of uncompressed ``uint16`` counts), writes a
simulated 4D-STEM scan (the ``simulated_precipitates`` model: its maps tiled
over a ``ny x nx`` scan, 128 x 128 detector, Poisson counts of ``dose``
electrons per pattern, mostly zeros; rendered, drawn and written chunk by
chunk as integers, never held in memory) to a compressed ``.zspy`` file,
then runs, each in its own subprocess:

``cli``
    ``hyperspy-cnmf run FILE --lazy -k K --output DIR`` (the console script's
    ``hyperspy_cnmf.cli.main``, with each stage of ``_run`` timed);
``job``
    the Python main job: ``hyperspy_cnmf.io.load(FILE, lazy=True)`` ->
    ``decomposition(algorithm="constrained_nmf")`` -> ``cluster_diffraction``
    -> save the results (cluster signals, ``learning_results``) -> figures
    (components, cluster gallery, dendrogram);

and, at the sizes named by ``--compare-at`` and ``--distributed-at``:

``hs-nmf`` / ``fit``
    HyperSpy's lazy ``decomposition(algorithm="NMF")`` (scikit-learn
    MiniBatchNMF) and our lazy fit alone, with the same MSE for both (mean of
    ``(X - loadings @ factors.T)**2`` over all entries, out of core);
``dist``
    decomposition + ``cluster_diffraction`` under the threaded scheduler and
    on a ``distributed.LocalCluster`` of 1 and 2 process workers (1 thread
    each): time, identical results, per-worker peak memory, tasks and bytes
    moved between processes.

Per stage: wall time, data reads (zarr chunks decoded / chunks in the file =
passes over the file) and peak RSS (``VmHWM``, reset at the start of each
stage through ``/proc/self/clear_refs``); per process: peak RSS from
``/usr/bin/time -v`` where present. Writes ``benchmarks/results/scale.md``
and ``scale.png`` (time and peak memory against size) after every size, and
deletes each data file and output folder when its size is done (``--keep``
keeps them).

Example
-------
    nice -n 10 python benchmarks/bench_scale.py --sizes 0.25      # a few minutes
    nice -n 10 python benchmarks/bench_scale.py --sizes 0.25,1,4,26 --compare-at 4
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DETECTOR = 128
ITEMSIZE = 2  # uint16 counts


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def _render(block_info=None, *, maps, patterns, dose_seed):
    """Poisson counts (uint16) of one chunk: maps (c, y, x) x patterns (c, q, p)."""
    loc = block_info[None]["array-location"]
    (y0, y1), (x0, x1) = loc[0], loc[1]
    m = maps[:, y0:y1, x0:x1]
    c, ny, nx = m.shape
    rng = np.random.default_rng([dose_seed, y0, x0])
    out = np.empty((ny, nx) + patterns.shape[1:], np.uint16)
    flat = patterns.reshape(c, -1)
    for y in range(ny):  # one scan row at a time: the float rates stay small
        mu = (m[:, y].T @ flat).reshape(nx, *patterns.shape[1:])
        out[y] = rng.poisson(mu)
    return out


def scan_shape(gb, nx, chunk_rows):
    """Rows (a multiple of ``chunk_rows``) x ``nx`` giving about ``gb`` GB of uint16."""
    per_row = nx * DETECTOR * DETECTOR * ITEMSIZE
    ny = max(chunk_rows, int(round(gb * 1e9 / per_row / chunk_rows)) * chunk_rows)
    return ny, nx


def make_file(path, ny, nx, chunk_rows, dose, seed=0):
    """Write the scan to ``path`` (.zspy), chunk by chunk; returns its nbytes."""
    import dask.array as da

    from hyperspy_cnmf.data import simulated_precipitates
    from hyperspy_cnmf.signals import LazySTEM4D

    base = 64
    small = simulated_precipitates(
        scan_shape=(base, base),
        detector_shape=(DETECTOR, DETECTOR),
        noise=False,
        dose=dose,
        random_state=seed,
    )
    T = small.metadata.Simulation
    maps = np.asarray(T.maps, dtype=np.float32)
    maps = np.tile(maps, (1, -(-ny // base), -(-nx // base)))[:, :ny, :nx]
    patterns = np.asarray(T.patterns, dtype=np.float32)
    chunks = ((chunk_rows,) * (ny // chunk_rows), (nx,), (DETECTOR,), (DETECTOR,))
    data = da.map_blocks(
        _render,
        chunks=chunks,
        dtype=np.uint16,
        maps=maps,
        patterns=patterns,
        dose_seed=seed,
        meta=np.empty((0, 0, 0, 0), np.uint16),
    )
    axes = [
        ax.get_axis_dictionary()
        for ax in small.axes_manager._get_axes_in_natural_order()
    ]
    for ax, n in zip(axes, (nx, ny, DETECTOR, DETECTOR)):
        ax["size"] = n
        ax.pop("_type", None)
    s = LazySTEM4D(data, axes=axes, metadata=small.metadata.as_dictionary())
    del s.metadata.Simulation
    s.metadata.General.title = f"simulated precipitates {ny}x{nx}"
    s.save(path, chunks=data.chunksize, overwrite=True)
    return data.nbytes


def _disk_bytes(path):
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


# ---------------------------------------------------------------------------
# measuring inside a worker
# ---------------------------------------------------------------------------


class _Reads:
    """Counts zarr chunks decoded in this process (one per chunk read).

    The count lives in ``zarr.core`` (a module, so that process workers of
    ``distributed``, which receive this class by value, share it too).
    """

    @staticmethod
    def install():
        import threading

        import zarr.core

        if hasattr(zarr.core, "_bench_reads"):
            return
        zarr.core._bench_reads = [0, threading.Lock()]
        orig = zarr.core.Array._process_chunk

        def counted(self, *a, **kw):
            state = zarr.core._bench_reads
            with state[1]:
                state[0] += 1
            return orig(self, *a, **kw)

        zarr.core.Array._process_chunk = counted

    @staticmethod
    def count():
        import zarr.core

        return zarr.core._bench_reads[0]


def _peak_rss():
    """VmHWM of this process, bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class Stages:
    """Wall time, chunk reads and peak RSS of named stages of one process."""

    def __init__(self):
        self.rows = []

    def __call__(self, name, fn, *args, **kwargs):
        _reset_peak()
        r0, t0 = _Reads.count(), time.perf_counter()
        out = fn(*args, **kwargs)
        self.rows.append(
            dict(
                stage=name,
                s=time.perf_counter() - t0,
                reads=_Reads.count() - r0,
                peak_mb=_peak_rss() / 2**20,
            )
        )
        return out

    def wrap(self, module, name, label):
        fn = getattr(module, name)
        setattr(module, name, lambda *a, **kw: self(label, fn, *a, **kw))


def _n_chunks(file):
    import zarr

    g = zarr.open(str(file), mode="r")["Experiments"]
    for key in g.group_keys():
        if "data" in g[key]:
            return int(g[key]["data"].nchunks)
    raise ValueError(f"no data array in {file}")


def worker(args):
    import warnings

    warnings.simplefilter("ignore")
    _Reads.install()
    st = Stages()
    out = {
        "worker": args.worker,
        "load_before": os.getloadavg()[0],
        "cnmf": args.cnmf,
    }
    t0 = time.perf_counter()
    if args.worker == "make":
        ny, nx = (int(v) for v in args.shape.split("x"))
        out["nbytes"] = st(
            "write file", make_file, args.file, ny, nx, args.chunk_rows, args.dose
        )
        out["disk_bytes"] = _disk_bytes(args.file)
    elif args.worker == "cli":
        from hyperspy_cnmf import cli

        for name, label in [
            ("_run_load", "open (lazy)"),
            ("_run_overview", "overview read + beam mask"),
            ("_run_decomposition", "decomposition"),
            ("_run_measures", "measures"),
            ("_run_figures", "figures"),
            ("_run_clustering", "clustering + cluster results"),
            ("_run_rows", "report numbers"),
            ("_run_report", "report"),
        ]:
            st.wrap(cli, name, label)
        rc = cli.main(
            ["run", str(args.file), "--lazy", "-k", str(args.k)]
            + ["--output", str(args.outdir)]
        )
        out["rc"] = rc
    elif args.worker == "job":
        _job(args, st, out)
    elif args.worker in ("fit", "hs-nmf"):
        _fit(args, st, out)
    elif args.worker == "dist":
        _dist(args, st, out)
    out["total_s"] = time.perf_counter() - t0
    out["stages"] = st.rows
    out["peak_mb"] = max([r["peak_mb"] for r in st.rows] + [_peak_rss() / 2**20])
    out["reads"] = _Reads.count()
    out["load_after"] = os.getloadavg()[0]
    print("RESULT " + json.dumps(out))


def _our_decomposition(s, args, st, out):
    """The constrained NMF of a job (timed as the stage "decomposition"); its reads into ``out``."""
    info = st(
        "decomposition",
        s.decomposition,
        algorithm="constrained_nmf",
        output_dimension=args.k,
        random_state=0,
        print_info=False,
        return_info=True,
        show_progressbar=False,
        **json.loads(args.cnmf),
    )
    out["n_passes"] = info["n_passes"]


def _job(args, st, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import hyperspy_cnmf.io as hio
    from hyperspy_cnmf import report as rp

    res_dir = Path(args.outdir)
    res_dir.mkdir(parents=True, exist_ok=True)
    s = st("open (lazy)", hio.load, args.file, lazy=True)
    _our_decomposition(s, args, st, out)
    st("cluster_diffraction", s.cluster_diffraction)

    def save():
        res = s.get_cluster_diffraction_results()
        for key, sig in res.items():
            sig.save(res_dir / f"cluster_{key}.zspy", overwrite=True)
        s.learning_results.save(str(res_dir / "learning_results.npz"), overwrite=True)

    st("save results", save)

    def figures():
        figs = [
            rp.plot_components(s, "components", max_components=args.k),
            s.plot_cluster_gallery(),
            s.plot_cluster_dendrogram(),
        ]
        for i, fig in enumerate(figs):
            fig = fig if hasattr(fig, "savefig") else fig.figure
            fig.savefig(res_dir / f"figure_{i}.png", dpi=80)
            plt.close(fig)

    st("figures", figures)


def _fit(args, st, out):
    """Our lazy fit or HyperSpy's lazy MiniBatchNMF, then the same MSE."""
    import hyperspy_cnmf.io as hio
    from hyperspy_cnmf import report as rp

    s = st("open (lazy)", hio.load, args.file, lazy=True)
    if args.worker == "fit":
        _our_decomposition(s, args, st, out)
    else:  # HyperSpy's lazy NMF: MiniBatchNMF partial_fit over the chunks
        s.change_dtype("float32")  # HyperSpy refuses integers; lazy, per chunk
        st(
            "decomposition",
            s.decomposition,
            algorithm="NMF",
            output_dimension=args.k,
            print_info=False,
        )
    out["mse"] = st("MSE (1 read)", rp.reconstruction_mse, s)


def _dist(args, st, out):
    """Decomposition + cluster_diffraction: threaded, or on a LocalCluster."""
    import dask

    import hyperspy_cnmf.io as hio

    client = None
    if args.n_workers:
        from distributed import Client, LocalCluster

        cluster = st(
            "start cluster",
            LocalCluster,
            n_workers=args.n_workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=f"{args.worker_mem_gb}GB",
        )
        client = Client(cluster)
        client.run(_Reads.install)
        client.run(_reset_peak)
    else:
        dask.config.set(scheduler="threads")
    s = st("open (lazy)", hio.load, args.file, lazy=True)
    _our_decomposition(s, args, st, out)
    st("cluster_diffraction", s.cluster_diffraction, n_clusters=4)
    lr = s.learning_results
    np.savez(
        Path(args.outdir) / f"dist_{args.n_workers}.npz",
        loadings=np.asarray(lr.loadings),
        factors=np.asarray(lr.factors),
        labels=np.asarray(lr.cdiff_labels),
    )
    if client is not None:
        w = client.run(lambda: (_peak_rss(), _Reads.count()))
        out["worker_peak_mb"] = [v[0] / 2**20 for v in w.values()]
        out["worker_reads"] = sum(v[1] for v in w.values())
        moved = client.run(
            lambda dask_worker: (
                dask_worker.transfer_outgoing_bytes_total,
                dask_worker.state.executed_count,
            )
        )
        out["worker_to_worker_bytes"] = sum(v[0] for v in moved.values())
        out["tasks_executed"] = sum(v[1] for v in moved.values())
        out["pass"] = _one_pass(client, s, lr)
        client.close()
        cluster.close()


def _one_pass(client, s, lr):
    """One more read (``X.T @ loadings``) on the cluster: what it runs and moves."""
    import dask

    from hyperspy_cnmf.chunked import DaskOperator

    def counters(dask_worker):
        return (
            dask_worker.transfer_outgoing_bytes_total,
            dask_worker.state.executed_count,
        )

    op = DaskOperator(s.data)
    L = np.nan_to_num(np.asarray(lr.loadings, dtype=np.float64))
    before = client.run(counters)
    t0 = time.perf_counter()
    R = op.left_t(L)
    wall = time.perf_counter() - t0
    after = client.run(counters)
    blocks = len(op._layout.blocks)
    return dict(
        s=wall,
        blocks=blocks,
        chunks=int(np.prod(s.data.numblocks)),
        tasks=sum(after[w][1] - before[w][1] for w in after),
        worker_to_worker_bytes=sum(after[w][0] - before[w][0] for w in after),
        loadings_bytes=L.nbytes,  # sent with the graph: the loading rows of each block
        result_bytes=R.nbytes,  # the (pixels, k) partial sums, merged on the workers
        partial_bytes=blocks * R.nbytes,
        data_bytes=s.data.nbytes,
        dask_config=dask.config.get("scheduler", None),
    )


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------


def run_worker(args, name, file, extra=()):
    """One worker in a subprocess: its RESULT dict, with /usr/bin/time's max RSS."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--file",
        str(file),
        "--k",
        str(args.k),
        "--outdir",
        str(args.workdir / f"out_{name}"),
        "--chunk-rows",
        str(args.chunk_rows),
        "--dose",
        str(args.dose),
        "--cnmf",
        args.cnmf,
        *extra,
    ]
    timer = Path("/usr/bin/time")
    if timer.exists():
        cmd = [str(timer), "-v"] + cmd
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        print(tail, flush=True)
        return {"worker": name, "error": tail.splitlines()[-1] if tail else "?"}
    res = json.loads(lines[-1][7:])
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if m:  # lowered by the stage resets of VmHWM: the larger of the two counts
        res["time_v_max_rss_mb"] = int(m.group(1)) / 1024
        res["peak_mb"] = max(res["peak_mb"], res["time_v_max_rss_mb"])
    res["wall_s"] = wall
    print(json.dumps(res), flush=True)
    return res


def _fmt(v, nd=1):
    return "" if v is None else f"{v:.{nd}f}"


def write_report(results, args, path):
    lines = [
        "# The whole main job out of core (benchmarks/bench_scale.py)",
        "",
        f"Command: `{args.command}`",
        "",
        f"Machine: {os.cpu_count()} cores shared with other jobs (load average in the "
        "tables), 24 GiB RAM, default dask scheduler (threads). Data: "
        f"`simulated_precipitates` maps tiled over the scan, {DETECTOR} x {DETECTOR} "
        f"detector, Poisson counts of {args.dose:g} electrons per pattern stored as "
        f"uint16 in a compressed `.zspy` (chunks of {args.chunk_rows} scan rows); "
        f"k = {args.k}. Reads = zarr chunks decoded / chunks in the file "
        "(passes over the file). Peak RSS = `VmHWM` of the process "
        "(per stage: reset at the stage's start); `/usr/bin/time -v` max RSS beside it.",
        "",
        "## The curve",
        "",
        "| scan | uncompressed (GB) | on disk (GB) | write (s) "
        "| `hyperspy-cnmf run --lazy` (s) | reads | peak RSS (MB) "
        "| Python main job (s) | reads | s per read (decomposition) | peak RSS (MB) "
        "| job's decomposition arguments | load avg | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in results:
        cli, job, mk = r.get("cli", {}), r.get("job", {}), r.get("make", {})
        nch = r["n_chunks"] or 1
        per_read = _per_read(job, nch)
        lines.append(
            f"| {r['shape']} | {r['gb']:.2f} | {r['disk_gb']:.2f} | {_fmt(mk.get('total_s'))} "
            f"| {_fmt(cli.get('total_s'))} | {_fmt(cli['reads'] / nch if 'reads' in cli else None)} "
            f"| {_fmt(cli.get('peak_mb'), 0)} "
            f"| {_fmt(job.get('total_s'))} | {_fmt(job['reads'] / nch if 'reads' in job else None)} "
            f"| {_fmt(per_read)} | {_fmt(job.get('peak_mb'), 0)} "
            f"| `{job.get('cnmf', '{}')}` "
            f"| {_fmt(job.get('load_before'), 1)} - {_fmt(cli.get('load_after'), 1)} "
            f"| {r.get('note', '')} |"
        )
    for r in results:
        lines += ["", f"## {r['shape']} ({r['gb']:.2f} GB): stages", ""]
        for name in ("cli", "job", "fit", "hs-nmf"):
            w = r.get(name)
            if not w:
                continue
            if "error" in w:
                lines += [f"- `{name}` failed: {w['error']}", ""]
                continue
            lines += [
                f"`{name}`: total {w['total_s']:.1f} s, {w['reads'] / r['n_chunks']:.1f} "
                f"reads, peak RSS {w['peak_mb']:.0f} MB"
                + (f", MSE {w['mse']:.6g}" if "mse" in w else "")
                + (
                    f", decomposition data reads {w['n_passes']}"
                    if "n_passes" in w
                    else ""
                )
                + ".",
                "",
                "| stage | wall (s) | reads | peak RSS (MB) |",
                "|---|---:|---:|---:|",
            ]
            for row in w["stages"]:
                lines.append(
                    f"| {row['stage']} | {row['s']:.1f} | {row['reads'] / r['n_chunks']:.2f} "
                    f"| {row['peak_mb']:.0f} |"
                )
            lines.append("")
        if r.get("graph"):
            lines += _graph_lines(r["graph"], r["shape"])
        if r.get("fit") or r.get("hs-nmf"):
            lines += _compare_lines(r)
        if r.get("dist"):
            lines += _dist_lines(r)
    Path(path).write_text("\n".join(lines) + "\n")
    _plot(results, Path(path).with_suffix(".png"))


def _compare_lines(r):
    lines = [
        "Side by side, lazy, same file, one run (each in its own process):",
        "",
        "| method | decomposition (s) | reads of the file | peak RSS (MB) | MSE |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in (
        ("fit", "constrained NMF (defaults)"),
        ("hs-nmf", 'HyperSpy `decomposition(algorithm="NMF")` (MiniBatchNMF)'),
    ):
        w = r.get(name)
        if not w or "error" in w:
            lines.append(f"| {label} | failed: {(w or {}).get('error', 'not run')} |")
            continue
        st = {row["stage"]: row for row in w["stages"]}
        dec = st["decomposition"]
        lines.append(
            f"| {label} | {dec['s']:.1f} | {dec['reads'] / r['n_chunks']:.1f} "
            f"| {dec['peak_mb']:.0f} | {w['mse']:.6g} |"
        )
    return lines + [
        "",
        "MSE: mean over all entries of `(X - loadings @ factors.T)**2` "
        "(`report.reconstruction_mse`, one more read, not in the decomposition's "
        "columns).",
        "",
    ]


def _dist_lines(r):
    lines = [
        "",
        "| scheduler | decomposition (s) | cluster_diffraction (s) | reads | "
        "peak RSS driver (MB) | peak RSS per worker (MB) | tasks run | "
        "bytes sent by the workers | identical to threaded |",
        "|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for w in r["dist"]:
        if "error" in w:
            lines.append(f"| {w.get('label')} | failed: {w['error']} |")
            continue
        st = {row["stage"]: row for row in w["stages"]}
        reads = w["reads"] + w.get("worker_reads", 0)
        lines.append(
            f"| {w['label']} | {st['decomposition']['s']:.1f} "
            f"| {st['cluster_diffraction']['s']:.1f} | {reads / r['n_chunks']:.1f} "
            f"| {w['peak_mb']:.0f} "
            f"| {', '.join(f'{v:.0f}' for v in w.get('worker_peak_mb', []))} "
            f"| {w.get('tasks_executed', '')} | {w.get('worker_to_worker_bytes', '')} "
            f"| {w.get('identical', '')} |"
        )
    for w in r["dist"]:
        p = w.get("pass")
        if not p:
            continue
        lines += [
            "",
            f"One more read (`X.T @ loadings`) on the {w['label']}: {p['s']:.1f} s, "
            f"{p['chunks']} chunks in {p['blocks']} blocks, {p['tasks']} tasks run, "
            f"{p['worker_to_worker_bytes'] / 1e6:.2f} MB sent by the workers (to each other "
            "and to the client) "
            f"(the per-block partial sums `X_b.T @ L_b`: {p['blocks']} x "
            f"{p['result_bytes'] / 1e6:.2f} MB = {p['partial_bytes'] / 1e6:.2f} MB); "
            f"loadings sent with the graph {p['loadings_bytes'] / 1e6:.2f} MB; the data "
            f"({p['data_bytes'] / 1e9:.2f} GB) are read where the task runs.",
        ]
    return lines + [""]


def _per_read(w, n_chunks):
    dec = {row["stage"]: row for row in w.get("stages", [])}.get("decomposition")
    return dec["s"] / (dec["reads"] / n_chunks) if dec and dec["reads"] else None


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if any("total_s" in r.get(k, {}) for k in ("cli", "job"))]
    if not ok:
        return
    xmax = max(max(r["gb"] for r in ok), 26) * 1.05
    ram = 24 * 2**30 / 1e9
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14, 4))
    for key, label in (("cli", "hyperspy-cnmf run --lazy"), ("job", "Python main job")):
        pts = [r for r in ok if "total_s" in r.get(key, {})]
        gb = [r["gb"] for r in pts]
        a1.plot(gb, [r[key]["total_s"] for r in pts], "o-", label=label)
        per = [(r, r["gb"], _per_read(r[key], r["n_chunks"])) for r in pts]
        per = [p for p in per if p[2]]
        a2.plot([p[1] for p in per], [p[2] for p in per], "o-", label=label)
        a3.plot(gb, [r[key]["peak_mb"] for r in pts], "o-", label=label)
        for r, x, y in per:
            if r.get("note"):  # e.g. a run under other jobs' load: open marker
                a1.plot(x, r[key]["total_s"], "o", mfc="w", color="k")
                a2.plot(x, y, "o", mfc="w", color="k")
                if key == "job":
                    a2.annotate(r["note"], (x, y), fontsize=7, ha="right", va="top")
    a3.axhline(2048, color="k", ls=":", label="goal 2 GB")
    for ax in (a1, a2, a3):
        ax.axvline(ram, color="r", ls="--", label="RAM (24 GiB)")
        ax.set(xlabel="uncompressed data (GB)", xlim=(0, xmax), ylim=(0, None))
        ax.legend(fontsize=8)
    a1.set(ylabel="wall time (s)", title="whole job (reads differ, machine shared)")
    a2.set(ylabel="s per read of the file", title="decomposition: time per read")
    a3.set(ylabel="peak RSS (MB)", title="peak memory")
    fig.suptitle(
        f"Out of core: {', '.join(r['shape'] for r in ok)} positions x 128 x 128 uint16"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _same(a, b):
    return all(
        np.array_equal(a[key], b[key], equal_nan=True)  # NaN: masked pixels
        for key in ("loadings", "factors", "labels")
    )


def run_size(gb, args, results):
    ny, nx = scan_shape(gb, args.nx, args.chunk_rows)
    file = args.workdir / f"scan_{ny}x{nx}.zspy"
    r = {"shape": f"{ny} x {nx}", "gb": ny * nx * DETECTOR**2 * ITEMSIZE / 1e9}
    results.append(r)
    if not (args.keep and file.exists()):
        r["make"] = run_worker(args, "make", file, ["--shape", f"{ny}x{nx}"])
    r["disk_gb"] = _disk_bytes(file) / 1e9
    r["n_chunks"] = _n_chunks(file)
    r["graph"] = graph_counts(file, args.k)
    write_report(results, args, args.out)
    for name in [j for j in args.jobs.split(",") if j]:
        r[name] = run_worker(args, name, file)
        shutil.rmtree(args.workdir / f"out_{name}", ignore_errors=True)
        write_report(results, args, args.out)
    if any(abs(gb - v) < 1e-9 for v in args.compare_at):
        for name in ("fit", "hs-nmf"):
            r[name] = run_worker(args, name, file)
            write_report(results, args, args.out)
    if any(abs(gb - v) < 1e-9 for v in args.distributed_at):
        (args.workdir / "out_dist").mkdir(exist_ok=True)
        r["dist"] = []
        for n in (0, 1, 2):
            w = run_worker(
                args,
                "dist",
                file,
                ["--n-workers", str(n), "--worker-mem-gb", str(args.worker_mem_gb)],
            )
            w["label"] = (
                "threads (2)" if n == 0 else f"LocalCluster, {n} process worker(s)"
            )
            if "error" not in w:
                ref = np.load(args.workdir / "out_dist" / "dist_0.npz")
                got = np.load(args.workdir / "out_dist" / f"dist_{n}.npz")
                w["identical"] = "yes" if _same(ref, got) else "NO"
            r["dist"].append(w)
            write_report(results, args, args.out)
        shutil.rmtree(args.workdir / "out_dist", ignore_errors=True)
    if not args.keep:
        shutil.rmtree(file, ignore_errors=True)


def graph_counts(file, k):
    """Tasks and bytes of one read of the operator, from its task graph (no data read).

    Returns a dict: chunks, blocks, tasks of an ``X.T @ L`` and of an
    ``X @ H`` read (the graph handed to the scheduler, less the final
    gathering task) and the bytes that travel: the factors / loadings sent
    with the graph, the per-block partial sums merged on the workers, the
    results gathered by the client.
    """
    import dask

    import hyperspy_cnmf.io as hio
    from hyperspy_cnmf import chunked

    s = hio.load(file, lazy=True)
    op = chunked.DaskOperator(s.data)
    n_rows, n_cols = op.shape
    blocks = len(op._layout.blocks)
    tasks = []

    def capture(*collections, **kwargs):
        tasks.append(len(dict(dask.delayed(list(collections)).__dask_graph__())) - 1)
        raise StopIteration

    orig = dask.compute
    dask.compute = capture
    try:
        for product in (
            lambda: op.left_t(np.ones((n_rows, k))),
            lambda: op.right(np.ones((n_cols, k))),
        ):
            try:
                product()
            except StopIteration:
                pass
    finally:
        dask.compute = orig
    return dict(
        data_bytes=s.data.nbytes,
        chunks=int(s.data.npartitions),
        blocks=blocks,
        tasks_left_t=tasks[0],
        tasks_right=tasks[1],
        split_every=chunked.SPLIT_EVERY,
        factor_bytes=n_cols * k * 8,
        loading_bytes=n_rows * k * 8,
        partial_bytes=blocks * n_cols * k * 8,
    )


def _graph_lines(g, shape):
    mb = 1e6
    return [
        "",
        f"Task graph of one read of the {shape} file ({g['data_bytes'] / 1e9:.2f} GB, "
        f"{g['chunks']} chunks, {g['blocks']} blocks; nothing read): `X.T @ L` "
        f"{g['tasks_left_t']} tasks, `X @ H` {g['tasks_right']} tasks (one task per "
        "block, its chunk read fused with its kernel; the open file and the shared "
        f"factors; a merge tree of {g['split_every']} parts per merge). What travels per "
        f"read: the factors ({g['factor_bytes'] / mb:.2f} MB, to each worker) or the "
        f"loading rows of each block ({g['loading_bytes'] / mb:.1f} MB in all) with the "
        f"graph; back, the per-block partial sums `X_b.T @ L_b` ({g['blocks']} x "
        f"{g['factor_bytes'] / mb:.2f} MB = {g['partial_bytes'] / mb:.0f} MB, "
        f"{100 * g['partial_bytes'] / g['data_bytes']:.2f} % of the data; merged on "
        f"the workers) or the loading rows ({g['loading_bytes'] / mb:.1f} MB, "
        f"{100 * g['loading_bytes'] / g['data_bytes']:.2f} %).",
        "",
    ]


def report_from_logs(args):
    """The report of the runs whose stdout are in ``args.report_from``."""
    results, by_file, files, pending = [], {}, {}, None
    for log in args.report_from.split(","):
        for line in Path(log).read_text().splitlines():
            if line.startswith("$ "):
                words = line.split()
                opt = {words[i]: words[i + 1] for i in range(len(words) - 1)}
                pending = (opt["--worker"], opt["--file"], opt.get("--n-workers"))
            elif line.startswith("{") and pending:
                name, file, n = pending
                pending = None
                ny, nx = (int(v) for v in re.search(r"(\d+)x(\d+)", file).groups())
                key = f"{ny}x{nx}"  # the same scan (same seed) in several runs: one row
                files[key] = file
                if key not in by_file:
                    by_file[key] = {
                        "shape": f"{ny} x {nx}",
                        "gb": ny * nx * DETECTOR**2 * ITEMSIZE / 1e9,
                        "n_chunks": ny // args.chunk_rows,
                        "disk_gb": float("nan"),
                    }
                    results.append(by_file[key])
                r, res = by_file[key], json.loads(line)
                if name == "dist":
                    res["label"] = (
                        "threads (2)"
                        if n == "0"
                        else f"LocalCluster, {n} process worker(s)"
                    )
                    res["identical"] = (args.identical or {}).get(f"{key}:{n}", "")
                    r.setdefault("dist", []).append(res)
                else:
                    r[name] = res
                if "disk_bytes" in res:
                    r["disk_gb"] = res["disk_bytes"] / 1e9
    for r in results:
        note = (args.note or {}).get(r["shape"].replace(" ", ""))
        if note:
            r["note"] = note
    for gb_shape, disk in (args.disk or {}).items():
        for r in results:
            if r["shape"].replace(" ", "") == gb_shape:
                r["disk_gb"] = disk
    results.sort(key=lambda r: r["gb"])
    for key, r in by_file.items():
        if Path(files[key]).exists():
            r["graph"] = graph_counts(files[key], args.k)
    write_report(results, args, args.out)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="0.25,1,4,16,26", help="GB of uint16 data")
    p.add_argument("--nx", type=int, default=768, help="scan columns")
    p.add_argument("--chunk-rows", type=int, default=4, help="scan rows per chunk")
    p.add_argument("--dose", type=float, default=2000.0, help="electrons per pattern")
    p.add_argument("--k", type=int, default=7, help="number of components")
    p.add_argument(
        "--cnmf",
        default="{}",
        help="JSON of extra decomposition arguments of the Python job (and of 'fit', "
        "'dist'), e.g. '{\"max_exact_iter\": 1}' (the few-read fit)",
    )
    p.add_argument(
        "--jobs",
        default="job,cli",
        help="the main jobs run at every size: 'job' (Python), 'cli', both, or ''",
    )
    p.add_argument("--compare-at", default="", help="sizes with HyperSpy's NMF too")
    p.add_argument("--distributed-at", default="", help="sizes with LocalCluster runs")
    p.add_argument("--worker-mem-gb", type=float, default=4.0)
    p.add_argument("--workdir", default="/tmp/cnmf_bench_scale")
    p.add_argument("--out", default=str(HERE / "results" / "scale.md"))
    p.add_argument("--keep", action="store_true", help="keep (and reuse) the files")
    p.add_argument(
        "--report-from",
        help="rebuild the report from the logs (stdout) of earlier runs, comma-separated",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--outdir", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    p.add_argument("--n-workers", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument(
        "--disk",
        type=json.loads,
        help='on-disk GB of files whose make log lacks it: {"40x768": 0.05}',
    )
    p.add_argument(
        "--note",
        type=json.loads,
        help="with --report-from: a note on the runs of a scan, shown in the curve's "
        'table and marked in the plot, e.g. {"1312x768": "loaded machine, load 3-4"}',
    )
    p.add_argument(
        "--identical",
        type=json.loads,
        help="with --report-from: the 'identical to threaded' column of the runs' "
        'own reports, e.g. {"8x768:1": "yes"}',
    )
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    args.command = "python benchmarks/bench_scale.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    if args.report_from:
        return report_from_logs(args)
    args.command = "python benchmarks/bench_scale.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    args.workdir = Path(args.workdir)
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.compare_at = [float(v) for v in args.compare_at.split(",") if v]
    args.distributed_at = [float(v) for v in args.distributed_at.split(",") if v]
    results = []
    try:
        for gb in (float(v) for v in args.sizes.split(",")):
            run_size(gb, args, results)
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
