"""The LiberTEM backend against the dask path on the same file.

Writes the simulated dataset of ``bench_eager.py`` (128 x 128 scan, 64 x 64
detector, float32 Poisson counts: 256 MiB) to an ``.npy`` file and runs the
same constrained NMF (k = 8, calibrated, ``max_iter`` exact iterations) on it:

- ``dask path``: ``hyperspy_cnmf.decomposition`` of a lazy signal over the
  memory-mapped file, chunked as LiberTEM's partitions, dask's threaded
  scheduler with ``--workers`` threads;
- ``LiberTEM <executor>``: ``hyperspy_cnmf.libertem.decomposition`` of
  ``ctx.load("npy", ...)`` with the ``inline`` executor (one thread), the
  ``threads`` executor and the ``dask`` executor (``--workers`` each).

For each: the wall time of one run of LiberTEM's ``NoOpUDF`` (LiberTEM
executors: their own cost per run), of one statistics read (the first read of a fit:
totals, mean pattern, direct beam of every pattern; mean of ``--repeat`` on
fresh operators), the wall time of the whole fit, its reads, the time per
read (fit time / reads, the solver's work between reads included) and the
largest difference of the loadings and factors from the dask path's. The
dask executor's start-up (a local cluster) is reported apart. A warm-up fit
on a tiny file first (imports, Numba cache loading). The file is read from
the page cache after the first read (it fits in memory): this measures the
engines, not the disk.

Example
-------
    nice -n 10 python benchmarks/bench_libertem.py            # 256 MiB file
    nice -n 10 python benchmarks/bench_libertem.py --scan 64 64 --detector 32 32 --max-iter 5
"""

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _data(scan, detector, **kwargs):
    from hyperspy_cnmf.data import simulated_precipitates

    kwargs = dict(dict(n_grains=12, dose=2000, random_state=0), **kwargs)
    s = simulated_precipitates(
        scan_shape=scan, detector_shape=detector, dtype="float32", **kwargs
    )
    am, tem = s.axes_manager, s.metadata.Acquisition_instrument.TEM
    calibration = dict(
        scan_step=am["x"].scale,
        scan_units=am["x"].units,
        detector_step=am["kx"].scale,
        detector_units=am["kx"].units,
        beam_energy=tem.beam_energy,
        convergence_angle=tem.convergence_angle,
    )
    return np.asarray(s.data), calibration


def _dask_signal(path, chunk_rows, like):
    import dask.array as da
    import hyperspy.api as hs

    darr = da.from_array(np.load(path, mmap_mode="r"), chunks=(chunk_rows, -1, -1, -1))
    s = hs.signals.Signal2D(darr).as_lazy()
    s.set_signal_type("4D-STEM")
    for a, b in zip(s.axes_manager._axes, like.axes_manager._axes):
        a.name, a.scale, a.offset, a.units = b.name, b.scale, b.offset, b.units
    s.metadata.add_dictionary(
        {"Acquisition_instrument": like.metadata.Acquisition_instrument.as_dictionary()}
    )
    return s


def _count_reads(*classes):
    """Count every read (``_read`` call) of the operators of ``classes``."""
    counter = {"reads": 0}
    for cls in classes:

        def counted(self, *args, _read=cls._read, **kwargs):
            counter["reads"] += 1
            return _read(self, *args, **kwargs)

        cls._read = counted
    return counter


def _time(fn, repeat=1):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.mean(times)), out


def run(args):
    import dask
    from libertem.api import Context
    from libertem.udf.base import NoOpUDF

    import hyperspy_cnmf
    from hyperspy_cnmf.chunked import DaskOperator
    from hyperspy_cnmf.chunked_libertem import LiberTEMOperator
    from hyperspy_cnmf.libertem import decomposition, signal_from_dataset

    fit = dict(
        random_state=0,
        max_iter=args.max_iter,
        tol=1e-12,  # a fixed number of iterations: every engine does the same reads
        print_info=False,
        return_info=True,
        show_progressbar=False,
    )
    counter = _count_reads(DaskOperator, LiberTEMOperator)
    tmp = Path(tempfile.mkdtemp(dir=args.tmp))
    try:
        tiny, tiny_cal = _data((16, 16), (24, 24), n_grains=2, grain_diameter=3.0)
        np.save(tmp / "tiny.npy", tiny)
        t = time.perf_counter()
        data, cal = _data(tuple(args.scan), tuple(args.detector))
        simulate_s = time.perf_counter() - t
        path = tmp / "bench.npy"
        np.save(path, data)
        size_mib = path.stat().st_size / 2**20
        del data
        chunk_rows = args.scan[0] // args.partitions
        rows = []
        ref = None

        def record(name, stats_s, fit_s, reads, lr, startup=None, noop_s=None):
            nonlocal ref
            if ref is None:
                ref = lr
            diff = max(
                float(np.nanmax(np.abs(lr.loadings - ref.loadings))),
                float(np.nanmax(np.abs(lr.factors - ref.factors))),
            )
            rows.append(
                (name, startup, noop_s, stats_s, fit_s, reads, fit_s / reads, diff)
            )
            print(rows[-1], flush=True)

        with dask.config.set(scheduler="threads", num_workers=args.workers):
            # the dask path, with the axes and metadata the LiberTEM front end sets
            ctx = Context.make_with("inline")
            ds = ctx.load("npy", path=str(path), num_partitions=args.partitions)
            like = signal_from_dataset(ds, **cal)
            warm = _dask_signal(
                tmp / "tiny.npy",
                8,
                signal_from_dataset(
                    ctx.load("npy", path=str(tmp / "tiny.npy")), **tiny_cal
                ),
            )
            hyperspy_cnmf.decomposition(warm, 3, **fit)  # warm-up
            s = _dask_signal(path, chunk_rows, like)
            stats_s, _ = _time(
                lambda: DaskOperator(s.data, signal_ndim=2).stats(), args.repeat
            )
            counter["reads"] = 0
            fit_s, info = _time(lambda: hyperspy_cnmf.decomposition(s, args.k, **fit))
            record(
                "dask path (threaded scheduler)",
                stats_s,
                fit_s,
                counter["reads"],
                s.learning_results,
            )

            for executor in ("inline", "threads", "dask"):
                t = time.perf_counter()
                if executor != "inline":
                    ctx = Context.make_with(executor, cpus=args.workers)
                startup = time.perf_counter() - t if executor == "dask" else None
                ds = ctx.load("npy", path=str(path), num_partitions=args.partitions)
                tiny_ds = ctx.load("npy", path=str(tmp / "tiny.npy"))
                # warm-up (the workers' imports and Numba caches too)
                decomposition(ctx, tiny_ds, 3, **tiny_cal, **fit)
                stats_s, _ = _time(
                    lambda: LiberTEMOperator(ds, ctx=ctx).stats(), args.repeat
                )
                # the executor's cost per run: a UDF that computes nothing (memory-mapped
                # partitions are not even touched)
                noop_s, _ = _time(
                    lambda: ctx.run_udf(dataset=ds, udf=NoOpUDF()), args.repeat
                )
                counter["reads"] = 0
                fit_s, (sl, info) = _time(
                    lambda: decomposition(ctx, ds, args.k, **cal, **fit)
                )
                record(
                    f"LiberTEM {executor} executor",
                    stats_s,
                    fit_s,
                    counter["reads"],
                    sl.learning_results,
                    startup,
                    noop_s,
                )
                ctx.close()
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return rows, size_mib, simulate_s


def write(rows, size_mib, simulate_s, args):
    cmd = "nice -n 10 python benchmarks/bench_libertem.py " + " ".join(args.argv_text)
    lines = [
        "# LiberTEM backend against the dask path (issue 12, item 4)",
        "",
        f"Command: `{cmd.strip()}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, shared with other jobs "
        f"(load average at the end {os.getloadavg()[0]:.1f}); Python {platform.python_version()}.",
        f"Data: `simulated_precipitates` {args.scan[0]} x {args.scan[1]} scan, "
        f"{args.detector[0]} x {args.detector[1]} detector, float32 `.npy` file of "
        f"{size_mib:.0f} MiB (simulated in {simulate_s:.0f} s), {args.partitions} "
        f"partitions/chunks of {args.scan[0] // args.partitions} scan rows; k = {args.k}, "
        f"{args.max_iter} exact iterations (tol = 1e-12), calibrated (map resolution from "
        f"the convergence angle); {args.workers} threads or worker processes.",
        "",
        "| engine | start-up (s) | empty UDF run (s) | one statistics read (s) | fit (s) | reads | s per read | max abs diff from the dask path |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, startup, noop_s, stats_s, fit_s, reads, per, diff in rows:
        su = "-" if startup is None else f"{startup:.1f}"
        noop = "-" if noop_s is None else f"{noop_s:.2f}"
        lines.append(
            f"| {name} | {su} | {noop} | {stats_s:.2f} | {fit_s:.1f} | {reads} | {per:.2f} | {diff:.3g} |"
        )
    lines += [
        "",
        "The statistics read and the empty UDF run (LiberTEM's `NoOpUDF`: the "
        "executor's own cost per run; the memory-mapped partitions are not touched) "
        "are the "
        f"means of {args.repeat}, the former on fresh operators; the fit time "
        "includes the solver's work between reads. A difference of 0 means bit-identical loadings and factors "
        "(the partitions are the dask chunks and the partial sums are merged in the "
        "same tree).",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv=None):
    import sys

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scan", type=int, nargs=2, default=(128, 128))
    p.add_argument("--detector", type=int, nargs=2, default=(64, 64))
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--max-iter", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--tmp", default=None, help="folder of the temporary files")
    p.add_argument("--out", type=Path, default=HERE / "results" / "libertem.md")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    args.argv_text = argv
    rows, size_mib, simulate_s = run(args)
    write(rows, size_mib, simulate_s, args)


if __name__ == "__main__":
    main()
