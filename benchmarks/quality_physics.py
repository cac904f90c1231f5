"""The main job on multislice (abTEM) simulations with full truth (issue 10, item 1).

For every case in ``../shared/data/abtem_dev`` (independent of the package's own simulator:
Zr-Cu-Al glass with B2-CuZr, fcc-Cu and CuZr2 grains, frozen phonons, Poisson counts) and the
embedded default (``simulated_precipitates()``), in memory and lazily, at k = the true number
of distinct patterns (glass + one per grain), 2x that and 30, runs the default call

    s.decomposition(algorithm="constrained_nmf", output_dimension=k)
    s.cluster_diffraction()

and reports the position ARI against the true phase map (``cdiff_position_labels``), the
clusters found against the true phases, the grains found (a grain is found when most of its
positions carry the cluster matched to its phase; clusters are matched to phases by the
Hungarian rule on the contingency table), the ARI between the lazy and the in-memory labels,
the wall time and the data reads: the decomposition's passes, plus the share of one pass that
``cluster_diffraction`` reads for the grains' mean patterns (``grain_pattern_reads``).

    python benchmarks/quality_physics.py                    # all cases, k = true, 2x, 30
    python benchmarks/quality_physics.py --cases 2phase --k true --no-lazy

The table (markdown) goes to ``benchmarks/results/quality_physics.md``.
"""

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "abtem_dev"
DEFAULT_OUT = str(HERE / "results" / "quality_physics.md")


def cases(selection=None, files=None):
    """``(name, loader)`` pairs; a loader returns ``(signal, truth)`` for ``lazy``.

    ``files``: case files (``simulate_abtem_4dstem.py`` output) to run instead of
    ``../shared/data/abtem_dev`` and the embedded default.
    """
    from hyperspy_cnmf.data import load_multislice_case, simulated_precipitates

    def embedded(lazy):
        s = simulated_precipitates(lazy=lazy)
        sim = s.metadata.Simulation
        maps = np.asarray(sim.maps)
        phase = np.asarray(sim.phase_of_component)
        grains = [i for i in range(len(phase)) if phase[i] != 0]
        labels = np.zeros(maps.shape[1:], dtype=int)
        for g, i in enumerate(grains, 1):
            labels[maps[i] >= 0.5 * maps[i].max()] = g
        truth = {
            "phase_map": np.asarray(sim.phase_map),
            "labels": labels,
            "grain_phase": np.r_[0, phase[grains]],
            "n_grains": len(grains),
        }
        truth["n_phases"] = int(np.unique(truth["phase_map"]).size)
        return s, truth

    paths = [Path(f) for f in files] if files else sorted(DATA.glob("*.npz"))
    out = [
        (p.stem, lambda lazy, p=p: load_multislice_case(p, lazy=lazy)) for p in paths
    ]
    if not files:
        out.append(("embedded default", embedded))
    if selection:
        out = [c for c in out if any(sel in c[0] for sel in selection)]
    return out


def _simulation_commands(files):
    """Markdown lines giving the command that made each case file (from its metadata)."""
    if not files:
        return []
    lines = ["Cases made with `../shared/tools/simulate_abtem_4dstem.py`:", ""]
    for f in files:
        md = json.loads(str(np.load(f)["metadata_json"]))
        lines.append(f"- `{md.get('command', Path(f).name)}`")
    return lines + [""]


def grains_found(truth, labels):
    phase_map = truth["phase_map"].ravel()
    clusters = np.unique(labels[labels >= 0])
    phases = np.unique(phase_map)
    table = np.array(
        [[np.sum((labels == c) & (phase_map == p)) for p in phases] for c in clusters]
    )
    rows, cols = linear_sum_assignment(-table)
    cluster_phase = {clusters[r]: phases[c] for r, c in zip(rows, cols)}
    mapped = np.array([cluster_phase.get(c, -1) for c in labels])
    grain_labels = truth["labels"].ravel()
    found = 0
    for g in range(1, truth["n_grains"] + 1):
        inside = grain_labels == g
        if inside.any() and np.mean(mapped[inside] == truth["grain_phase"][g]) > 0.5:
            found += 1
    return found


def with_detector_gap(s, width):
    """``s`` with a cross of zero lines ``width`` px wide through the detector's middle.

    A pixelated detector's gaps between chips (a Medipix quad's cross), here through the
    direct beam (the multislice cases put it at the detector's middle pixel). The data
    are replaced (in memory: a copy; lazily: a masked dask array), never modified.
    """
    if not width:
        return s
    qy, qx = s.data.shape[-2:]
    keep = np.ones((qy, qx), dtype=np.float32)
    keep[qy // 2 - width // 2 : qy // 2 - width // 2 + width, :] = 0
    keep[:, qx // 2 - width // 2 : qx // 2 - width // 2 + width] = 0
    s.data = s.data * keep
    return s


def with_beam_stop(s, extra, convergence=True):
    """``s`` with a beam stop's shadow over the direct beam (a new array, lazily a dask one).

    A disk ``extra`` px wider than the direct beam's half-maximum radius (found on the
    mean pattern of the data as they are) and an arm 7 px wide from it to the detector's
    right edge are zero in every pattern. ``convergence=False`` also drops the convergence
    semi-angle from the metadata (the Bragg disks' radius then cannot be known).
    """
    if extra is None:
        return s
    from hyperspy_cnmf.signals._calibration import find_beam_disk

    mean = s.data.mean(axis=(0, 1))
    mean = np.asarray(mean.compute() if hasattr(mean, "compute") else mean, dtype=float)
    beam = find_beam_disk(mean)
    qy, qx = mean.shape
    yy, xx = np.mgrid[:qy, :qx]
    shadow = (np.hypot(xx - beam.x, yy - beam.y) <= beam.radius + extra) | (
        (abs(yy - beam.y) <= 3) & (xx >= beam.x)
    )
    s.data = s.data * (~shadow).astype(np.float32)
    if not convergence and s.metadata.has_item(
        "Acquisition_instrument.TEM.convergence_angle"
    ):
        del s.metadata.Acquisition_instrument.TEM.convergence_angle
    return s


def run(
    loader, k, lazy, seed=0, gap=0, offset=0.0, crop=0, stop=None, convergence=True
):
    s, truth = loader(lazy)
    s = with_detector_gap(s, gap)
    s = with_beam_stop(s, stop, convergence)
    if crop:
        s = s.isig[crop:, crop:]  # the direct beam off the detector's middle
    if offset:
        s.data = s.data + np.float32(offset)  # a dark level left in (a new array)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = s.decomposition(
            algorithm="constrained_nmf",
            output_dimension=k,
            random_state=seed,
            print_info=False,
            show_progressbar=False,
            return_info=True,
        )
        t_fit = time.perf_counter() - t0
        s.cluster_diffraction()
    wall = time.perf_counter() - t0
    labels = np.asarray(s.learning_results.cdiff_position_labels).ravel()
    cdiff = json.loads(str(s.learning_results.cdiff_parameters))
    return {
        "refit": cdiff.get("refit_components", 0),
        "ari": adjusted_rand_score(truth["phase_map"].ravel(), labels),
        "clusters": int(len(np.unique(labels[labels >= 0]))),
        "phases": truth["n_phases"],
        "grains": f"{grains_found(truth, labels)}/{truth['n_grains']}",
        "labels": labels,
        "wall": wall,
        "fit": t_fit,
        "passes": "{} + {:.2f}".format(
            info["n_passes"],
            json.loads(str(s.learning_results.cdiff_parameters))["grain_pattern_reads"],
        ),
    }


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cases", nargs="+", help="substrings of case names (default: all)")
    p.add_argument(
        "--files",
        nargs="+",
        help="other case files (simulate_abtem_4dstem.py output) instead of abtem_dev; "
        "the table then goes to results/quality_physics_independent.md unless --out is given",
    )
    p.add_argument(
        "--k", nargs="+", default=["true", "2x", "30"], help="'true', '2x' or integers"
    )
    p.add_argument("--no-lazy", action="store_true", help="in memory only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--detector-gap",
        type=int,
        default=0,
        help="zero a cross of lines this many px wide through the detector's middle (the "
        "direct beam): the gaps between a pixelated detector's chips; the table then goes to "
        "results/quality_physics[_independent]_gap<WIDTH>.md unless --out is given",
    )
    p.add_argument("--out", default=None)
    p.add_argument(
        "--offset",
        type=float,
        default=0.0,
        help="add this dark level to every value (an offset left in the data); the table then "
        "goes to results/quality_physics[_independent]_offset<OFFSET>.md unless --out is given",
    )
    p.add_argument(
        "--detector-crop",
        type=int,
        default=0,
        help="cut this many px off the detector's top and left edges (the direct beam off "
        "its middle); the table then goes to results/quality_physics[_independent]_crop<N>.md unless "
        "--out is given",
    )
    p.add_argument(
        "--beam-stop",
        type=float,
        default=None,
        help="zero a beam stop's shadow: a disk this many px wider than the direct beam and "
        "a 7-px arm to the detector's right edge; the table then goes to "
        "results/quality_physics[_independent]_stop<EXTRA>.md unless --out is given",
    )
    p.add_argument(
        "--no-convergence",
        action="store_true",
        help="drop the convergence semi-angle from the metadata (suffix _noconv)",
    )
    args = p.parse_args(argv)
    if args.out is None:
        name = "quality_physics" + "".join(
            suffix
            for suffix, on in (
                ("_independent", args.files),
                (f"_gap{args.detector_gap}", args.detector_gap),
                (f"_offset{args.offset:g}", args.offset),
                (f"_crop{args.detector_crop}", args.detector_crop),
                (f"_stop{args.beam_stop or 0:g}", args.beam_stop is not None),
                ("_noconv", args.no_convergence),
            )
            if on
        )
        args.out = str(HERE / "results" / f"{name}.md")
    if not DATA.is_dir() and not args.files:
        if args.out == DEFAULT_OUT:
            raise SystemExit(
                f"{DATA} not found: the committed table ({DEFAULT_OUT}) would be "
                "overwritten with the embedded default alone; pass --out FILE."
            )
        print(f"note: {DATA} not found; only the embedded default runs")
    # the run's seed and the detector's imperfections, the same for every run
    perturbed = dict(
        seed=args.seed,
        gap=args.detector_gap,
        offset=args.offset,
        crop=args.detector_crop,
        stop=args.beam_stop,
        convergence=not args.no_convergence,
    )
    rows = []
    for name, loader in cases(args.cases, args.files):
        _, truth = loader(False)
        k_true = truth["n_grains"] + 1
        for kk in args.k:
            k = {"true": k_true, "2x": 2 * k_true}.get(kk) or int(kk)
            eager = run(loader, k, False, **perturbed)
            lazy = None if args.no_lazy else run(loader, k, True, **perturbed)
            row = {
                "case": name,
                "k": k,
                "eager": eager,
                "lazy": lazy,
                "agree": None
                if lazy is None
                else adjusted_rand_score(eager["labels"], lazy["labels"]),
            }
            rows.append(row)
            print(
                f"{name} k={k}: ARI {eager['ari']:.3f}, {eager['clusters']}/{eager['phases']} clusters, "
                f"grains {eager['grains']}, {eager['wall']:.1f} s"
                + (
                    ""
                    if lazy is None
                    else f"; lazy ARI {lazy['ari']:.3f}, {lazy['clusters']} clusters, "
                    f"{lazy['passes']} reads, lazy-vs-eager ARI {row['agree']:.3f}"
                ),
                flush=True,
            )
    lines = [
        "# The main job on multislice simulations (benchmarks/quality_physics.py)",
        "",
        f"Command: `python benchmarks/quality_physics.py{' --cases ' + ' '.join(args.cases) if args.cases else ''}"
        f"{' --files ' + ' '.join(args.files) if args.files else ''}"
        f" --k {' '.join(args.k)}{' --no-lazy' if args.no_lazy else ''} --seed {args.seed}"
        f"{f' --detector-gap {args.detector_gap}' if args.detector_gap else ''}"
        f"{f' --offset {args.offset:g}' if args.offset else ''}"
        f"{f' --detector-crop {args.detector_crop}' if args.detector_crop else ''}"
        f"{f' --beam-stop {args.beam_stop:g}' if args.beam_stop is not None else ''}"
        f"{' --no-convergence' if args.no_convergence else ''}`",
        "",
        *(
            [
                f"Detector gap: a cross of zero lines {args.detector_gap} px wide through the "
                "detector's middle (the direct beam) in every pattern.",
                "",
            ]
            if args.detector_gap
            else []
        ),
        *(
            [
                f"Beam stop: a disk {args.beam_stop:g} px wider than the direct beam and a 7-px "
                "arm to the detector's right edge read zero in every pattern"
                + (
                    "; the convergence semi-angle dropped from the metadata."
                    if args.no_convergence
                    else "."
                ),
                "",
            ]
            if args.beam_stop is not None
            else []
        ),
        *(
            [
                f"Offset: {args.offset:g} added to every value (a dark level left in the data).",
                "",
            ]
            if args.offset
            else []
        ),
        *(
            [
                f"Detector crop: {args.detector_crop} px cut off the detector's top and left "
                "edges (the direct beam off its middle).",
                "",
            ]
            if args.detector_crop
            else []
        ),
        *_simulation_commands(args.files),
        'Default call: `decomposition(algorithm="constrained_nmf", output_dimension=k, random_state=seed)` then '
        "`cluster_diffraction()`. ARI: position labels against the true phase map. k true = glass + one per grain. "
        "Reads: the decomposition's passes + the share of one pass read for the grains' mean patterns. "
        "Refit: the components the clustering fitted to the decomposition's model (`refit_components`, "
        "0: none: k below twice the grains it counted + 1, or the refit dropped, `refit_note`).",
        "",
        "| case | k | ARI | clusters / true phases | grains found | refit | wall (s) | reads "
        "| lazy ARI | lazy clusters | lazy reads | lazy wall (s) | lazy vs eager labels (ARI) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        e, z = r["eager"], r["lazy"]
        lazy_cols = (
            "– | – | – | – | –"
            if z is None
            else f"{z['ari']:.3f} | {z['clusters']} | {z['passes']} | {z['wall']:.1f} | {r['agree']:.3f}"
        )
        lines.append(
            f"| {r['case']} | {r['k']} | {e['ari']:.3f} | {e['clusters']} / {e['phases']} | {e['grains']} "
            f"| {e['refit']} | {e['wall']:.1f} | {e['passes']} | {lazy_cols} |"
        )
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
