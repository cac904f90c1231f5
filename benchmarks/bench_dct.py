"""The map (resolution) filter's DCT: our truncated matrix DCT against ``scipy.fft`` (issue 12, item 5).

:class:`hyperspy_cnmf.constraints.MapResolutionConstraint` low-passes every map in the
basis of the orthonormal DCT-II (the Fourier transform of the mirror-extended map).
Two ways of computing the same filter are timed in ONE run:

- ``matrix``: the class's own transform, four matrix products per map that fold the
  even/odd symmetry of the DCT rows and skip the frequencies the filter zeroes
  (:class:`_HalfDCT` below, the class's code before this benchmark);
- ``scipy``: ``scipy.fft.dctn`` / ``idctn`` (``type=2, norm="ortho"``) over the
  stack of maps, multiplied by the same transfer function (the full spectrum).

Each is timed on ``k`` maps at once (what the MU/ALS updates and the start of a fit
call) and on one map (what a HALS column step calls, ``k`` times per iteration), with
BLAS limited to one thread and ``scipy.fft`` on one worker, as a fit runs them
(``signals._decomposition._single_threaded_blas``). Both results are compared (max
absolute difference relative to the maps' maximum). The cutoff is given in scan
pixels: ``--resolution 2`` keeps DCT frequencies up to the axis Nyquist (the filter
cuts the corners of the spectrum), ``4`` keeps half of each axis.

    python benchmarks/bench_dct.py                      # 32..512 scans, k=30
    python benchmarks/bench_dct.py --scan 64 128 --k 30 --repeat 20

The report (markdown) goes to ``benchmarks/results/dct.md`` (``--out``).
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import fft as sp_fft
from threadpoolctl import threadpool_limits

from hyperspy_cnmf.constraints import MapResolutionConstraint

HERE = Path(__file__).resolve().parent


def _dct_matrix(n):
    """Orthonormal DCT-II matrix: ``C @ x`` is the DCT-II of ``x``, ``C.T`` its inverse."""
    k = np.arange(n)[:, None]
    m = np.arange(n)[None, :]
    C = np.sqrt(2.0 / n) * np.cos(np.pi * k * (2 * m + 1) / (2 * n))
    C[0] /= np.sqrt(2.0)
    return C


class _HalfDCT:
    """Truncated orthonormal DCT-II along one axis, by its even/odd symmetry.

    The map filter's transform before this benchmark (``constraints._HalfDCT``, commit
    f468f14), kept here as the baseline.

    Row ``k`` of the DCT-II matrix is symmetric about the middle of the axis
    for even ``k`` and antisymmetric for odd ``k``, so the transform of ``x``
    is the product of the even rows' first halves with ``x + x[::-1]`` and of
    the odd rows' with ``x - x[::-1]``: half the multiplications of the full
    matrix product (measured 2 ms -> 1 ms per 256 x 256 map filter). The
    coefficients come out permuted: the even frequencies ``0, 2, 4, ...``
    first, then the odd ones; :attr:`order` gives the frequency of each.

    Parameters
    ----------
    n : int
        Axis length.
    k : int
        Number of leading frequencies kept (``<= n``).
    """

    def __init__(self, n, k):
        C = _dct_matrix(n)
        self.n, self.h = n, n // 2
        odd_n = n % 2
        ke = np.arange(0, k, 2)
        ko = np.arange(1, k, 2)
        self.order = np.concatenate([ke, ko])
        self.ke = ke.size
        self.ce = np.ascontiguousarray(
            C[ke, : self.h + odd_n]
        )  # even rows, first half (+ middle)
        self.co = np.ascontiguousarray(C[ko, : self.h])  # odd rows, first half
        self.cet = np.ascontiguousarray(self.ce.T)
        self.cot = np.ascontiguousarray(self.co.T)

    def _fold(self, x, axis):
        """``(x + mirror, x - mirror)`` over the first half of ``axis`` (middle kept in the sum)."""
        n, h = self.n, self.h
        if axis == 0:
            top, bot = x[:h], x[n - 1 : n - 1 - h : -1] if h else x[:0]
            u = top + bot
            if n % 2:
                u = np.concatenate([u, x[h : h + 1]], axis=0)
            return u, top - bot
        top, bot = x[:, :h], x[:, n - 1 : n - 1 - h : -1] if h else x[:, :0]
        u = top + bot
        if n % 2:
            u = np.concatenate([u, x[:, h : h + 1]], axis=1)
        return u, top - bot

    def forward(self, x, axis):
        """Kept DCT-II coefficients of ``x`` (2D) along ``axis``, in :attr:`order`."""
        u, w = self._fold(x, axis)
        if axis == 0:
            return np.concatenate([self.ce @ u, self.co @ w], axis=0)
        return np.concatenate([u @ self.cet, w @ self.cot], axis=1)

    def inverse(self, c, axis):
        """The inverse of :meth:`forward` (missing frequencies taken as zero)."""
        n, h, ke = self.n, self.h, self.ke
        if axis == 0:
            a, b = self.cet @ c[:ke], self.cot @ c[ke:]
            out = np.empty((n,) + c.shape[1:])
            out[:h] = a[:h] + b
            out[n - h :] = (a[:h] - b)[::-1]
            if n % 2:
                out[h] = a[h]
            return out
        a, b = c[:, :ke] @ self.ce, c[:, ke:] @ self.co
        out = np.empty(c.shape[:1] + (n,))
        out[:, :h] = a[:, :h] + b
        out[:, n - h :] = (a[:, :h] - b)[:, ::-1]
        if n % 2:
            out[:, h] = a[:, h]
        return out


def best_of(func, repeat):
    func()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


def matrix_filter(c):
    """The truncated matrix DCT of ``c`` (the pre-benchmark ``__call__``), as a function of ``W``."""
    dy, dx, t = c._dy_matrix, c._dx_matrix, c._t_matrix

    def run(W):
        ny, nx = c.nav_shape
        W = np.asarray(W, dtype=np.float64)
        out = np.empty((W.shape[1], ny * nx))
        for j in range(W.shape[1]):
            m = W[:, j].reshape(ny, nx)
            spec = dx.forward(dy.forward(m, 0), 1)
            spec *= t
            out[j] = dy.inverse(dx.inverse(spec, 1), 0).ravel()
        np.maximum(out, 0.0, out=out)
        return out.T.copy()

    return run


def scipy_filter(c):
    """``scipy.fft.dctn``/``idctn`` of the stack, times the same transfer function."""
    ny, nx = c.nav_shape
    transfer = c.transfer

    def run(W):
        W = np.asarray(W, dtype=np.float64)
        maps = W.T.reshape(W.shape[1], ny, nx)
        spec = sp_fft.dctn(maps, type=2, norm="ortho", axes=(1, 2), workers=1)
        spec *= transfer
        out = sp_fft.idctn(spec, type=2, norm="ortho", axes=(1, 2), workers=1)
        np.maximum(out, 0.0, out=out)
        return out.reshape(W.shape[1], ny * nx).T.copy()

    return run


def scipy_truncated_filter(c, ky, kx):
    """``scipy.fft.dct``/``idct`` one axis at a time, keeping only the passed frequencies.

    The forward transforms are sliced to the ``ky x kx`` frequencies the filter passes;
    the inverse ones zero-pad them back (``n=``): scipy's route to the truncation.
    """
    ny, nx = c.nav_shape
    transfer = np.ascontiguousarray(c.transfer[:ky, :kx])
    kw = dict(type=2, norm="ortho", workers=1)

    def run(W):
        W = np.asarray(W, dtype=np.float64)
        maps = W.T.reshape(W.shape[1], ny, nx)
        spec = sp_fft.dct(maps, axis=2, **kw)[:, :, :kx]
        spec = sp_fft.dct(spec, axis=1, **kw)[:, :ky]
        spec *= transfer
        out = sp_fft.idct(spec, n=ny, axis=1, **kw)
        out = sp_fft.idct(out, n=nx, axis=2, **kw)
        np.maximum(out, 0.0, out=out)
        return out.reshape(W.shape[1], ny * nx).T.copy()

    return run


def case(n, k, resolution, repeat, seed=0):
    """Timings (s) and agreement of both filters on ``k`` random maps of ``n x n``."""
    c = MapResolutionConstraint((n, n), resolution=float(resolution))
    # the former matrix transform, on the frequencies the filter passes
    pass_y = np.nonzero(np.any(c.transfer > 0, axis=1))[0]
    pass_x = np.nonzero(np.any(c.transfer > 0, axis=0))[0]
    c._dy_matrix = _HalfDCT(n, int(pass_y[-1]) + 1)
    c._dx_matrix = _HalfDCT(n, int(pass_x[-1]) + 1)
    c._t_matrix = np.ascontiguousarray(
        c.transfer[np.ix_(c._dy_matrix.order, c._dx_matrix.order)]
    )
    rng = np.random.default_rng(seed)
    W = rng.random((n * n, k))
    w1 = np.asfortranarray(W[:, :1])  # a HALS column step: one (strided) column
    ky, kx = int(pass_y[-1]) + 1, int(pass_x[-1]) + 1
    mat, sci = matrix_filter(c), scipy_filter(c)
    sct = scipy_truncated_filter(c, ky, kx)
    a = mat(W)
    diff = max(float(np.abs(a - f(W)).max() / np.abs(a).max()) for f in (sci, sct, c))
    kept = ky * kx / n**2
    return {
        "n": n,
        "k": k,
        "resolution": resolution,
        "kept": kept,
        "matrix_k": best_of(lambda: mat(W), repeat),
        "scipy_k": best_of(lambda: sci(W), repeat),
        "matrix_1": best_of(lambda: mat(w1), max(repeat, 5)),
        "scipy_1": best_of(lambda: sci(w1), max(repeat, 5)),
        "scipyt_k": best_of(lambda: sct(W), repeat),
        "scipyt_1": best_of(lambda: sct(w1), max(repeat, 5)),
        "class_1": best_of(lambda: c(w1), max(repeat, 5)),
        "class_k": best_of(lambda: c(W), repeat),
        "diff": diff,
    }


def fit_case(n, k, repeat, max_iter):
    """A whole in-memory fit (HALS, both constraints) with each filter; seconds and filter share.

    ``simulated_precipitates`` with an ``n x n`` scan (0.5 nm steps, 1.5 nm probe: a
    3 px cutoff, the simulator's default) and a 32 x 32 detector; ``max_iter`` exact
    iterations with ``tol=0`` and ``sketch=False``, so that both runs do the same work.
    The time spent inside the filter is summed by a wrapper.
    """
    import warnings

    from hyperspy_cnmf.data import simulated_precipitates

    s = simulated_precipitates(
        scan_shape=(n, n),
        detector_shape=(32, 32),
        n_grains=max(2, n * n // 400),
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # warm-up: Numba cache loading, imports
        s.deepcopy().decomposition(
            algorithm="constrained_nmf",
            output_dimension=k,
            max_iter=2,
            random_state=0,
            print_info=False,
            show_progressbar=False,
        )
    call_now = MapResolutionConstraint.__call__

    def call_matrix(self, W):
        if not hasattr(self, "_dy_matrix"):
            self._dy_matrix = _HalfDCT(self.nav_shape[0], self._ky)
            self._dx_matrix = _HalfDCT(self.nav_shape[1], self._kx)
            self._t_matrix = np.ascontiguousarray(
                self.transfer[np.ix_(self._dy_matrix.order, self._dx_matrix.order)]
            )
        return matrix_filter(self)(W)

    out = {"matrix": None, "scipy": None}
    # the two variants alternate, so that a change of the machine's load hits both
    for _ in range(repeat):
        for name, call in (("matrix", call_matrix), ("scipy", call_now)):
            spent = [0.0]

            def timed(self, W, call=call, spent=spent):
                t0 = time.perf_counter()
                r = call(self, W)
                spent[0] += time.perf_counter() - t0
                return r

            MapResolutionConstraint.__call__ = timed
            try:
                r = s.deepcopy()
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the iteration cap, by design
                    r.decomposition(
                        algorithm="constrained_nmf",
                        output_dimension=k,
                        max_iter=max_iter,
                        tol=0.0,
                        sketch=False,
                        random_state=0,
                        print_info=False,
                        show_progressbar=False,
                    )
                t = time.perf_counter() - t0
            finally:
                MapResolutionConstraint.__call__ = call_now
            if out[name] is None or t < out[name][0]:
                out[name] = (t, spent[0], r.learning_results.loadings.copy())
    a, b = out["matrix"][2], out["scipy"][2]
    return {
        "n": n,
        "k": k,
        "max_iter": max_iter,
        "matrix": out["matrix"][:2],
        "scipy": out["scipy"][:2],
        "diff": float(np.abs(a - b).max() / np.abs(a).max()),
    }


def fmt_ms(t):
    return f"{t * 1e3:.3g}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scan", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--resolution", type=float, nargs="+", default=[2.0, 4.0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument(
        "--fit-scan",
        type=int,
        nargs="*",
        default=[64, 256],
        help="scan sizes of the whole-fit comparison (none: skip it)",
    )
    p.add_argument("--fit-iter", type=int, default=20)
    p.add_argument("--fit-repeat", type=int, default=3)
    p.add_argument("--out", default=str(HERE / "results" / "dct.md"))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    rows = []
    with threadpool_limits(limits=1, user_api="blas"):
        for res in args.resolution:
            for n in args.scan:
                r = case(n, args.k, res, args.repeat)
                rows.append(r)
                print(
                    f"n={n} res={res}: {args.k} maps matrix {fmt_ms(r['matrix_k'])}, "
                    f"scipy {fmt_ms(r['scipy_k'])}, scipy truncated "
                    f"{fmt_ms(r['scipyt_k'])} ms; one map matrix "
                    f"{fmt_ms(r['matrix_1'])}, scipy {fmt_ms(r['scipy_1'])}, scipy "
                    f"truncated {fmt_ms(r['scipyt_1'])} ms; diff {r['diff']:.1e}",
                    flush=True,
                )
        fits = [
            fit_case(n, args.k, args.fit_repeat, args.fit_iter) for n in args.fit_scan
        ]
    for f in fits:
        print(f"fit n={f['n']}: matrix {f['matrix']}, scipy {f['scipy']}", flush=True)
    cmd = "python benchmarks/bench_dct.py" + (f" {' '.join(argv)}" if argv else "")
    load = os.getloadavg()[0]
    lines = [
        "# Map-filter DCT: truncated matrix DCT vs scipy.fft (benchmarks/bench_dct.py)",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {os.cpu_count()} cores ({platform.machine()}), numpy {np.__version__}, "
        f"scipy {__import__('scipy').__version__}; 1-min load average {load:.1f} at the "
        "end. BLAS one thread, `scipy.fft` one worker (as inside a fit). Best of the "
        "repeats after a warm-up call; times in ms. *matrix*: the truncated matrix DCT "
        "(`_HalfDCT`, the code before); *scipy*: `dctn`/`idctn` of the full spectrum; "
        "*scipy trunc.*: `dct`/`idct` one axis at a time, sliced to the passed "
        "frequencies and zero-padded back. *max diff*: largest difference of the "
        "filtered maps between any two of them (and the class's `__call__`), relative "
        "to the largest value.",
        "",
        "| scan | cutoff (scan px) | coefficients kept | "
        f"{args.k} maps: matrix | scipy | scipy trunc. | "
        "1 map: matrix | scipy | scipy trunc. | "
        f"`MapResolutionConstraint()` now: {args.k} maps / 1 map | max diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']}² | {r['resolution']:g} | {r['kept']:.0%} | "
            f"{fmt_ms(r['matrix_k'])} | {fmt_ms(r['scipy_k'])} | "
            f"{fmt_ms(r['scipyt_k'])} | {fmt_ms(r['matrix_1'])} | "
            f"{fmt_ms(r['scipy_1'])} | {fmt_ms(r['scipyt_1'])} | "
            f"{fmt_ms(r['class_k'])} / {fmt_ms(r['class_1'])} | {r['diff']:.1e} |"
        )
    if fits:
        lines += [
            "",
            f"Whole in-memory fits (`simulated_precipitates`, n x n scan, 32 x 32 detector, "
            f"3 px cutoff, k = {args.k}, HALS, both constraints, `sketch=False`, "
            f"{args.fit_iter} exact iterations with `tol=0`, best of {args.fit_repeat}, the "
            "two filters alternating); "
            "*filter*: the time spent inside the map filter; *max diff*: of the loadings, "
            "relative to the largest.",
            "",
            "| scan | fit, matrix filter (s) | of which filter (s) | fit, scipy filter (s) "
            "| of which filter (s) | max diff |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for f in fits:
            lines.append(
                f"| {f['n']}² | {f['matrix'][0]:.2f} | {f['matrix'][1]:.2f} | "
                f"{f['scipy'][0]:.2f} | {f['scipy'][1]:.2f} | {f['diff']:.1e} |"
            )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
