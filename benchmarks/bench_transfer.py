"""What travels between process workers per read: factors and partial sums, or data too.

Writes a simulated uint16 scan (``bench_scale.make_file``, a few hundred MB,
compressed ``.zspy``), starts a ``distributed.LocalCluster`` of process
workers (1 thread each) and runs, on the lazily loaded file:

- the decomposition (``algorithm="constrained_nmf"``, k = 7, defaults), and
- one ``report.model_mse`` read,

twice: with the package's graphs, where every chunk read is fused into the
task that processes the chunk (``chunked.fused_compute``), and with the same
graphs unfused (``--unfused``, ``dask.compute`` of the per-block tasks as
they are built, the graphs before the fusion), each in its own cluster. Per
read it counts, from every worker's ``transfer_incoming_log`` (what a worker
fetched from another worker; results gathered by the client are not in it),
the bytes moved between workers, split by the dask key name of what moved
(``array``/``original-array``/``getitem``: data chunks and the file handle;
``cnmf*``: partial sums, shared factors). Checks that both runs give
identical loadings and factors.

Example
-------
    nice -n 10 python benchmarks/bench_transfer.py            # ~10 min, 0.4 GB
"""

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _clear_logs(dask_worker):
    dask_worker.transfer_incoming_log.clear()
    return dask_worker.state.executed_count


def _moved(dask_worker):
    """Bytes this worker fetched from other workers since the last clear, by key name."""
    from distributed.utils import key_split

    by_name = Counter()
    for entry in dask_worker.transfer_incoming_log:
        for key, nbytes in entry["keys"].items():
            by_name[key_split(key)] += int(nbytes)
    return dict(by_name), dask_worker.state.executed_count


def run(args, fused):
    """Decomposition + one ``model_mse`` read on a fresh cluster; what moved per read."""
    import dask
    from bench_scale import _n_chunks, _Reads
    from distributed import Client, LocalCluster

    import hyperspy_cnmf.io as hio
    from hyperspy_cnmf import chunked
    from hyperspy_cnmf import report as rp

    fused_compute = chunked.fused_compute
    n_chunks = _n_chunks(args.file)
    steps, passes = [], []

    def compute(outputs, tasks):  # every read of the package is one such call
        client.run(_clear_logs)
        t0 = time.perf_counter()
        if fused:
            out = fused_compute(outputs, tasks)
        else:  # the graphs as built, before the fusion of reads and kernels
            out = dask.compute(*outputs)
        by_name = Counter()
        for names, _ in client.run(_moved).values():
            by_name.update(names)
        passes.append(
            dict(step=steps[-1]["step"], s=time.perf_counter() - t0, moved=by_name)
        )
        return out

    def record(label, fn):
        steps.append(dict(step=label))
        r0 = sum(client.run(_Reads.count).values())
        t0 = time.perf_counter()
        out = fn()
        steps[-1].update(
            s=time.perf_counter() - t0,
            passes=(sum(client.run(_Reads.count).values()) - r0) / n_chunks,
        )
        return out

    with (
        LocalCluster(
            n_workers=args.n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            memory_limit=f"{args.worker_mem_gb}GB",
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(_Reads.install)
        chunked.fused_compute = compute
        s = hio.load(args.file, lazy=True)
        blocks = len(chunked.DaskOperator(s.data)._layout.blocks)
        record(
            "decomposition",
            lambda: s.decomposition(
                algorithm="constrained_nmf",
                output_dimension=args.k,
                random_state=0,
                print_info=False,
                show_progressbar=False,
            ),
        )
        lr = s.learning_results
        mse = record("model_mse", lambda: rp.model_mse(s)[0])
        loadings, factors = np.asarray(lr.loadings), np.asarray(lr.factors)
    return dict(
        fused=fused,
        n_workers=args.n_workers,
        data_bytes=int(s.data.nbytes),
        chunk_bytes=int(s.data.nbytes // n_chunks),
        n_chunks=n_chunks,
        blocks=blocks,
        factor_bytes=int(factors.shape[0] * args.k * 8),
        steps=steps,
        passes=[dict(p, moved=dict(p["moved"])) for p in passes],
        mse=float(mse),
        loadings=loadings,
        factors=factors,
    )


def _data_bytes(moved):
    """Bytes of data chunks (and the file handle): every key not made by the package."""
    return sum(v for k, v in moved.items() if not k.startswith("cnmf"))


def report(results, args, identical):
    f0 = results[0]
    lines = [
        "## What travels between process workers per read (benchmarks/bench_transfer.py)",
        "",
        f"Command: `{args.command}`",
        "",
        f"File: {f0['data_bytes'] / 1e9:.2f} GB of uint16 counts ({args.ny} x {args.nx} "
        f"positions x 128 x 128, {f0['n_chunks']} chunks of {f0['chunk_bytes'] / 1e6:.1f} "
        f"MB, compressed `.zspy`), k = {args.k}: the factors are "
        f"{f0['factor_bytes'] / 1e6:.2f} MB (pixels x k float64). A "
        f"`distributed.LocalCluster` of {args.n_workers} process workers, 1 thread each, "
        f"on {os.cpu_count()} cores shared with other jobs (load average "
        f"{os.getloadavg()[0]:.1f} at the end), a fresh cluster for each graph. Bytes "
        "between workers: the sum over the workers' `transfer_incoming_log` (what a "
        "worker fetched from another worker; what the client gathers is not in it), "
        "cleared before each read, by dask key name: `cnmf*` are the shared factors "
        "and the per-block partial sums; the others are data chunks (`array-*`, or "
        "`getitem-*`/`rechunk-*` of the array) and the open file (`original-array-*`, "
        "a few kB).",
        "",
        "| graph | step | reads | MB between workers per read (mean / max) "
        "| of which not `cnmf*` (data), all reads (MB) | by key name, all reads (MB) "
        "| wall (s) |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for res in results:
        label = "read + kernel fused (now)" if res["fused"] else "unfused (before)"
        for step in res["steps"]:
            per = [p["moved"] for p in res["passes"] if p["step"] == step["step"]]
            moved = Counter()
            for m in per:
                moved.update(m)
            tot = [sum(m.values()) / 1e6 for m in per]
            names = ", ".join(f"`{k}` {v / 1e6:.2f}" for k, v in sorted(moved.items()))
            lines.append(
                f"| {label} | {step['step']} | {len(per)} "
                f"| {np.mean(tot) if tot else 0:.2f} / {max(tot, default=0):.2f} "
                f"| {_data_bytes(moved) / 1e6:.2f} | {names or '-'} | {step['s']:.1f} |"
            )
    lines += [
        "",
        f"Per read (one `dask.compute` of {f0['blocks']} block tasks and their merge "
        f"tree), the partial sums `X_b.T @ L_b` are {f0['factor_bytes'] / 1e6:.2f} MB per "
        f"block ({f0['blocks']} x {f0['factor_bytes'] / 1e6:.2f} MB = "
        f"{f0['blocks'] * f0['factor_bytes'] / 1e6:.1f} MB in all, some merged where they "
        "were made); a data chunk is "
        f"{f0['chunk_bytes'] / 1e6:.1f} MB. Loadings and factors identical (fused "
        f"against unfused): {identical}. Reads of the file: "
        + "; ".join(
            f"{'fused' if r['fused'] else 'unfused'} "
            + ", ".join(f"{s['step']} {s['passes']:.1f}" for s in r["steps"])
            for r in results
        )
        + ".",
        "",
    ]
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--ny", type=int, default=32)
    p.add_argument("--nx", type=int, default=384)
    p.add_argument("--chunk-rows", type=int, default=2)
    p.add_argument("--k", type=int, default=7)
    p.add_argument("--n-workers", type=int, default=2)
    p.add_argument("--worker-mem-gb", type=float, default=3.0)
    p.add_argument("--workdir", default="/tmp/cnmf_bench_transfer")
    p.add_argument("--keep", action="store_true", help="keep (and reuse) the file")
    p.add_argument("--out", help="append the Markdown section to this file")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the report from the results a --keep run left in --workdir",
    )
    p.add_argument("--run", choices=["fused", "unfused"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.command = "python benchmarks/bench_transfer.py " + " ".join(
        a for a in (sys.argv[1:] if argv is None else argv) if a != "--report-only"
    )
    import shutil
    import subprocess
    import warnings

    warnings.simplefilter("ignore")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    args.file = work / f"scan_{args.ny}x{args.nx}.zspy"
    if args.run:  # one cluster run in this process: results to a file
        res = run(args, args.run == "fused")
        np.savez(
            work / f"{args.run}.npz",
            loadings=res.pop("loadings"),
            factors=res.pop("factors"),
        )
        (work / f"{args.run}.json").write_text(json.dumps(res))
        return 0
    try:
        if not args.file.exists():
            from bench_scale import make_file

            make_file(args.file, args.ny, args.nx, args.chunk_rows, 2000.0)
        results = []
        for mode in ("unfused", "fused"):  # each in a fresh process and cluster
            if not args.report_only:
                cmd = [sys.executable, __file__, *(argv or sys.argv[1:]), "--run", mode]
                subprocess.run(cmd, check=True)
            results.append(json.loads((work / f"{mode}.json").read_text()))
        a, b = (np.load(work / f"{m}.npz") for m in ("unfused", "fused"))
        identical = (
            "yes"
            if all(
                np.array_equal(a[k], b[k], equal_nan=True)
                for k in ("loadings", "factors")
            )
            else "NO"
        )
        text = "\n".join(report(results, args, identical))
        print(text)
        if args.out:
            with open(args.out, "a") as f:
                f.write("\n" + text)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
