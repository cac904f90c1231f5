"""Out-of-core constrained NMF: reads, peak memory, and HyperSpy's lazy NMFs.

Writes a simulated 4D-STEM ``.zspy`` file (Poisson counts of the
``simulated_precipitates`` model, its maps tiled over a larger scan; built
and written chunk by chunk, never held in memory) and measures, each method
in its own subprocess so that the peak RSS is per method:

(a) pass-equivalents: the wall time of a lazy fit divided by the wall time of
    one plain ``darray.sum().compute()`` over the same file (the better of two
    passes in a warm process), and the accuracy of the few-read lazy fit
    (``lazy``: sketch + ``--max-exact-iter`` exact iterations; 1, the lazy
    default of ``max_exact_iter="auto"``) and of the lazy fit whose exact
    phase runs to ``tol`` (``lazy-conv``) against the fully converged
    in-memory fit (relative loss difference, matched cosine of factors and
    loadings);
(b) peak memory: peak RSS of the lazy fit versus file size and a memory cap
    (the file should be at least twice the cap);
(c) eager vs lazy constrained NMF vs HyperSpy's lazy ``algorithm="NMF"``
    (scikit-learn MiniBatchNMF) and ``algorithm="ORNMF"``: wall time, peak
    RSS, final loss (the same MSE for all: mean over all entries of
    ``(X - loadings @ factors.T)**2``, computed out-of-core afterwards).

Example
-------
    python benchmarks/bench_lazy.py                      # 2.1 GB file, 1 GB cap
    python benchmarks/bench_lazy.py --scan 128 --detector 64 --cap-mb 128
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
METHODS = ("sum", "lazy", "lazy-conv", "eager", "hs-nmf", "hs-ornmf")


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def _render(block_info=None, *, maps, patterns, dose_seed):
    loc = block_info[None]["array-location"]
    (y0, y1), (x0, x1) = loc[0], loc[1]
    mu = np.einsum("cyx,cqp->yxqp", maps[:, y0:y1, x0:x1], patterns)
    rng = np.random.default_rng([dose_seed, y0, x0])
    return rng.poisson(mu).astype(np.float32)


def make_file(path, scan, detector, chunk_rows, seed=0):
    """Write the benchmark dataset to ``path`` (.zspy), chunk by chunk."""
    import dask.array as da

    from hyperspy_cnmf.data import simulated_precipitates
    from hyperspy_cnmf.signals import LazySTEM4D

    base = min(scan, 64)
    small = simulated_precipitates(
        scan_shape=(base, base),
        detector_shape=(detector, detector),
        noise=False,
        random_state=seed,
    )
    T = small.metadata.Simulation
    reps = -(-scan // base)
    maps = np.tile(np.asarray(T.maps), (1, reps, reps))[:, :scan, :scan]
    patterns = np.asarray(T.patterns)
    chunks = (
        (chunk_rows,) * (scan // chunk_rows)
        + ((scan % chunk_rows,) if scan % chunk_rows else ()),
        (scan,),
        (detector,),
        (detector,),
    )
    data = da.map_blocks(
        _render,
        chunks=chunks,
        dtype=np.float32,
        maps=maps,
        patterns=patterns,
        dose_seed=seed,
        meta=np.empty((0, 0, 0, 0), np.float32),
    )
    axes = [
        ax.get_axis_dictionary()
        for ax in small.axes_manager._get_axes_in_natural_order()
    ]
    for ax, n in zip(axes, (scan, scan, detector, detector)):
        ax["size"] = n
        ax.pop("_type", None)
    s = LazySTEM4D(data, axes=axes, metadata=small.metadata.as_dictionary())
    del s.metadata.Simulation
    s.save(path, chunks=data.chunksize, overwrite=True)
    return data.nbytes


# ---------------------------------------------------------------------------
# one method, in a subprocess
# ---------------------------------------------------------------------------


def worker(args):
    import warnings

    import hyperspy.api as hs

    warnings.simplefilter("ignore")
    import_rss = _rss()
    out = {"method": args.worker, "load_before": os.getloadavg()[0]}
    lazy = args.worker != "eager"
    t0 = time.perf_counter()
    s = hs.load(args.file, lazy=lazy)
    out["load_s"] = time.perf_counter() - t0
    kw = dict(output_dimension=args.k, print_info=False)
    t0 = time.perf_counter()
    if args.worker == "sum":
        s.data.sum().compute()
        t1 = time.perf_counter()
        s.data.sum().compute()
        out["fit_s"] = min(t1 - t0, time.perf_counter() - t1)
    elif args.worker in ("lazy", "lazy-conv", "eager"):
        extra = json.loads(args.cnmf)
        info = s.decomposition(
            algorithm="constrained_nmf",
            random_state=0,
            return_info=True,
            show_progressbar=False,
            **kw,
            **extra,
        )
        out["fit_s"] = time.perf_counter() - t0
        out.update(
            n_passes=info["n_passes"],
            n_iter=info["n_iter"],
            n_iter_sketch=info["n_iter_sketch"],
            solver_loss=info["final_loss"],
        )
    elif args.worker == "hs-nmf":
        s.decomposition(
            algorithm="NMF", **kw
        )  # HyperSpy prints "Learn"/"Project" bars to stderr
        out["fit_s"] = time.perf_counter() - t0
    elif args.worker == "hs-ornmf":
        s.decomposition(algorithm="ORNMF", **kw)
        out["fit_s"] = time.perf_counter() - t0
    out["load_after"] = os.getloadavg()[0]
    out["import_rss_mb"] = import_rss / 2**20
    out["peak_rss_mb"] = _peak_rss() / 2**20
    if args.worker != "sum":
        lr = s.learning_results
        np.savez(
            Path(args.workdir) / f"{args.worker}.npz",
            loadings=np.asarray(lr.loadings),
            factors=np.asarray(lr.factors),
        )
    print("RESULT " + json.dumps(out))


def _peak_rss():
    """This process's peak RSS (VmHWM: unlike ``ru_maxrss`` it is reset by exec,
    so the parent's memory at fork does not count)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss():
    import psutil

    return psutil.Process().memory_info().rss


def run_method(method, args, cnmf=None, cap_mb=None):
    """Run one method in a subprocess; its own ru_maxrss and a psutil sampler."""
    import psutil

    cmd = [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--file",
        str(args.file),
        "--k",
        str(args.k),
        "--workdir",
        str(args.workdir),
        "--cnmf",
        json.dumps(cnmf or {}),
    ]
    if cap_mb:  # a hard address-space cap as well, where the shell allows it
        cmd = [
            "bash",
            "-c",
            f"ulimit -v {int(cap_mb * 1024 * 4)} && exec " + " ".join(map(_quote, cmd)),
        ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ps = psutil.Process(proc.pid)
    sampled = 0
    while proc.poll() is None:
        try:
            sampled = max(
                sampled,
                sum(p.memory_info().rss for p in [ps] + ps.children(recursive=True)),
            )
        except psutil.Error:
            pass
        if time.perf_counter() - t0 > args.timeout:
            proc.kill()
            _, stderr = proc.communicate()
            return {
                "method": method,
                "error": f"timeout after {args.timeout:.0f} s" + _progress(stderr),
                "sampled_rss_mb": sampled / 2**20,
                "load_after": os.getloadavg()[0],
            }
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {
            "method": method,
            "error": (stderr.strip().splitlines() or ["?"])[-1][:200],
        }
    res = json.loads(lines[-1][7:])
    res["sampled_rss_mb"] = sampled / 2**20
    return res


def _progress(stderr):
    """The last progress-bar state printed before a timeout (HyperSpy's lazy "Learn" bar)."""
    import re

    bars = re.findall(
        r"(\w+):\s*\d+%\|[^|\n]*\|\s*(\d+)/(\d+)", stderr.replace("\r", "\n")
    )
    return (
        f" (progress bar '{bars[-1][0]}' at {bars[-1][1]}/{bars[-1][2]} chunks)"
        if bars
        else ""
    )


def _quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------


def mse(file, loadings, factors):
    """Mean over all entries of (X - loadings @ factors.T)^2, out of core (2 reads)."""
    import hyperspy.api as hs

    from hyperspy_cnmf.chunked import DaskOperator

    op = DaskOperator(hs.load(file, lazy=True).data)
    L, F = np.nan_to_num(loadings), np.nan_to_num(factors)
    sq = op.stats()["sq_norm"]
    cross = np.vdot(op.left_t(L), F)
    value = sq - 2 * cross + np.vdot(L.T @ L, F.T @ F)
    return value / (op.shape[0] * op.shape[1])


def matched_cosines(A, B):
    """Cosines of the columns of A and B after the best one-to-one matching."""
    from scipy.optimize import linear_sum_assignment

    A = np.nan_to_num(A) / np.linalg.norm(np.nan_to_num(A), axis=0)
    B = np.nan_to_num(B) / np.linalg.norm(np.nan_to_num(B), axis=0)
    C = A.T @ B
    r, c = linear_sum_assignment(-C)
    return C[r, c], c


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--scan", type=int, default=256, help="scan side (positions), default 256"
    )
    p.add_argument(
        "--detector",
        type=int,
        default=90,
        help="detector side (pixels), default 90 (2.1 GB)",
    )
    p.add_argument(
        "--chunk-rows", type=int, default=16, help="scan rows per chunk of the file"
    )
    p.add_argument("--k", type=int, default=7, help="number of components")
    p.add_argument(
        "--cap-mb", type=float, default=1024, help="memory cap (MB) for part (b)"
    )
    p.add_argument(
        "--max-exact-iter",
        type=int,
        default=1,
        help="exact iterations of the few-read lazy fit",
    )
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated subset of {METHODS}",
    )
    p.add_argument("--workdir", default="/tmp/cnmf_bench_lazy")
    p.add_argument("--timeout", type=float, default=900, help="seconds per method")
    p.add_argument("--out", default=str(HERE / "results" / "lazy.md"))
    p.add_argument("--keep", action="store_true", help="reuse an existing data file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--cnmf", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    import platform

    import psutil

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    args.file = workdir / f"bench_{args.scan}x{args.detector}.zspy"
    t0 = time.perf_counter()
    if not (args.keep and args.file.exists()):
        nbytes = make_file(args.file, args.scan, args.detector, args.chunk_rows)
    else:
        nbytes = 4 * args.scan**2 * args.detector**2
    write_s = time.perf_counter() - t0
    disk = sum(f.stat().st_size for f in args.file.rglob("*") if f.is_file())
    print(
        f"data: {nbytes / 1e9:.2f} GB in memory terms, {disk / 1e9:.2f} GB on disk, written in {write_s:.0f} s",
        flush=True,
    )

    methods = args.methods.split(",")
    few = {"max_exact_iter": args.max_exact_iter}
    results = {}
    for m in methods:
        # "lazy-conv": exact iterations to tol (the lazy default "auto" is 1)
        cnmf = (
            few if m == "lazy" else {"max_exact_iter": None} if m == "lazy-conv" else {}
        )
        load = os.getloadavg()[0]
        res = run_method(m, args, cnmf=cnmf)
        res.setdefault("load_before", load)
        results[m] = res
        print(json.dumps(res), flush=True)
    if "lazy" in methods and "error" not in results["lazy"]:
        capped = run_method("lazy", args, cnmf=few, cap_mb=args.cap_mb)
        results["lazy-capped"] = capped
        print(json.dumps(capped), flush=True)

    for m, res in results.items():
        npz = workdir / f"{m}.npz"
        if "error" not in res and m != "sum" and npz.exists():
            with np.load(npz) as z:
                res["mse"] = mse(args.file, z["loadings"], z["factors"])

    lines = _report(
        args,
        nbytes,
        disk,
        results,
        workdir,
        platform.processor() or platform.machine(),
        psutil.cpu_count(),
        psutil.virtual_memory().total,
    )
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


def _report(args, nbytes, disk, results, workdir, cpu, ncpu, ram):
    cmd = "python benchmarks/bench_lazy.py " + " ".join(sys.argv[1:])
    L = [
        "# Out-of-core constrained NMF (benchmarks/bench_lazy.py)",
        "",
        f"Command: `{cmd.strip()}`",
        "",
        f"Machine: {ncpu} cores ({cpu}), {ram / 2**30:.0f} GiB RAM; default dask scheduler (threads). "
        f"Data: simulated precipitates, scan {args.scan} x {args.scan}, detector {args.detector} x "
        f"{args.detector}, float32 Poisson counts, {nbytes / 1e9:.2f} GB ({disk / 1e9:.2f} GB compressed "
        f".zspy), chunks of {args.chunk_rows} scan rows; k = {args.k}. Every method ran in its own "
        "subprocess (peak RSS = the larger of its own `VmHWM` and a 20 ms psutil sampling); the MSE is the same for all: mean over all entries "
        "of (X - loadings @ factors.T)^2, computed out of core afterwards.",
        "",
    ]
    base = results.get("sum", {}).get("fit_s")
    L += [
        "| method | fit wall time (s) | pass-equivalents | data reads | peak RSS (MB) | RSS after imports (MB) "
        "| MSE | load avg before / after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {
        "sum": "one `darray.sum()` pass",
        "lazy": f"constrained NMF, lazy (sketch + {args.max_exact_iter} exact it.)",
        "lazy-conv": "constrained NMF, lazy (exact phase to tol, `max_exact_iter=None`)",
        "lazy-capped": f"same, under `ulimit -v` {4 * args.cap_mb:.0f} MB",
        "eager": "constrained NMF, eager (defaults, converged)",
        "hs-nmf": "HyperSpy lazy NMF (MiniBatchNMF)",
        "hs-ornmf": "HyperSpy lazy ORNMF",
    }
    loads = lambda r: (  # noqa: E731
        f"{r.get('load_before', float('nan')):.2f} / {r.get('load_after', float('nan')):.2f}"
    )
    for m, r in results.items():
        if "error" in r:
            rss = (
                f"{r['sampled_rss_mb']:.0f} (sampled until killed)"
                if r.get("sampled_rss_mb")
                else ""
            )
            L.append(
                f"| {names.get(m, m)} | failed: {r['error']} | | | {rss} | | | {loads(r)} |"
            )
            continue
        r["peak_rss_mb"] = max(r["peak_rss_mb"], r.get("sampled_rss_mb", 0))
        pe = f"{r['fit_s'] / base:.1f}" if base else ""
        L.append(
            f"| {names.get(m, m)} | {r['fit_s']:.1f} | {pe} | {r.get('n_passes', '')} | "
            f"{r['peak_rss_mb']:.0f} | {r['import_rss_mb']:.0f} | {r.get('mse', float('nan')):#.5g} | {loads(r)} |"
        )
    L.append("")
    L.append(
        "Data reads: the reads of the fit itself (`n_passes`); the first read of the statistics (input "
        "checks, mean pattern) comes on top, shared with the range finder's first product."
    )
    L.append("")
    eager = results.get("eager", {})
    for m, what in (
        ("lazy", "few-read lazy fit"),
        ("lazy-conv", "lazy fit run to tol"),
    ):
        lazy = results.get(m, {})
        if "mse" in lazy and "mse" in eager:
            with (
                np.load(workdir / f"{m}.npz") as a,
                np.load(workdir / "eager.npz") as b,
            ):
                cf, order = matched_cosines(b["factors"], a["factors"])
                cl = np.array(
                    [
                        np.dot(
                            *(
                                np.nan_to_num(v) / np.linalg.norm(np.nan_to_num(v))
                                for v in (b["loadings"][:, i], a["loadings"][:, j])
                            )
                        )
                        for i, j in enumerate(order)
                    ]
                )
            L += [
                f"Accuracy of the {what} against the converged eager fit on the same file: "
                f"relative MSE difference {(lazy['mse'] - eager['mse']) / eager['mse']:+.2e}; matched factor "
                f"cosines min {cf.min():.4f} / mean {cf.mean():.4f}; matched loading cosines min {cl.min():.4f} / "
                f"mean {cl.mean():.4f}.",
                "",
            ]
    lazy = results.get("lazy", {})
    if "lazy" in results and "peak_rss_mb" in lazy:
        L += [
            f"Peak memory of the lazy fit: {lazy['peak_rss_mb']:.0f} MB RSS "
            f"({lazy['peak_rss_mb'] - lazy['import_rss_mb']:.0f} MB above the interpreter with its imports) "
            f"for {nbytes / 1e6:.0f} MB of data, i.e. {lazy['peak_rss_mb'] * 2**20 / nbytes:.2f}x "
            f"the data size; memory cap {args.cap_mb:.0f} MB (file / cap = {nbytes / 1e6 / args.cap_mb:.1f}).",
            "",
        ]
    return L


if __name__ == "__main__":
    main()
