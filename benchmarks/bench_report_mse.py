"""The report's residual read (``report.model_mse``) against one read of the decomposition.

On a lazily loaded ``.zspy`` file (e.g. the one ``bench_transfer.py --keep``
or ``bench_scale.py --keep`` wrote), with k non-negative random loadings and
factors of the file's shape (the time does not depend on their values), under
the default threaded scheduler, times:

- ``report.model_mse(s, baseline=True, mean_pattern=...)`` (the model and
  the mean-pattern baseline from one read, as ``hyperspy-cnmf run`` calls it
  with the mean pattern of its first read), and
- one read of the decomposition, ``DaskOperator.left_t`` (``X.T @ W``),

``--repeat`` times each, alternating, and prints one JSON line with the
times, the two MSEs, the reads and the peak RSS (``VmHWM``) of each. Run it
with ``PYTHONPATH`` set to the package version to measure (e.g. a
``git archive`` of an older commit) to compare versions on the same file.

Example
-------
    nice -n 10 python benchmarks/bench_report_mse.py /tmp/cnmf_bench_transfer/scan_32x384.zspy
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _peak_reset():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("file")
    p.add_argument("--k", type=int, default=7)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore")
    from bench_scale import _n_chunks, _Reads

    import hyperspy_cnmf
    import hyperspy_cnmf.io as hio
    from hyperspy_cnmf import report as rp
    from hyperspy_cnmf.chunked import DaskOperator

    _Reads.install()
    s = hio.load(args.file, lazy=True)
    n_chunks = _n_chunks(args.file)
    n_nav = int(np.prod(s.axes_manager._navigation_shape_in_array))
    n_sig = int(np.prod(s.axes_manager._signal_shape_in_array))
    rng = np.random.default_rng(0)
    lr = s.learning_results
    lr.loadings = rng.random((n_nav, args.k))
    lr.factors = rng.random((n_sig, args.k)) * 1e-3
    op = DaskOperator(s.data)
    W = np.asarray(lr.loadings)
    mean = op.mean_pattern(
        np.ones(n_nav, bool)
    )  # as the CLI has it from its first read
    warm = s.inav[:2, :1]  # compile the kernels outside the timings
    warm.learning_results.loadings = rng.random((2, args.k))
    warm.learning_results.factors = lr.factors
    rp.model_mse(warm, baseline=True)
    out = dict(
        package=hyperspy_cnmf.__file__,
        file=str(args.file),
        gb=s.data.nbytes / 1e9,
        n_chunks=n_chunks,
        mse=[],
        read=[],
    )
    for _ in range(args.repeat):
        for name, fn in (
            ("mse", lambda: rp.model_mse(s, baseline=True, mean_pattern=mean)),
            ("read", lambda: op.left_t(W)),
        ):
            _peak_reset()
            r0, t0 = _Reads.count(), time.perf_counter()
            res = fn()
            out[name].append(
                dict(
                    s=time.perf_counter() - t0,
                    reads=(_Reads.count() - r0) / n_chunks,
                    peak_mb=_peak_mb(),
                )
            )
            if name == "mse":
                out["values"] = [float(v) for v in res]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
