"""The clustering's over-complete rules and the exact refinement, measured over seeds (issue 10).

For every case of ``quality_physics.py`` (the abTEM multislice cases in ``../shared/data/abtem_dev``
and the embedded default), k = the true count, 2x and 30, and each ``random_state``, runs the
default decomposition once and then ``cluster_diffraction`` with each rule variant. The variants
measure the rules of one clustering of the decomposition's own components, so they run with
``refit=False`` (until session 25 that was the default call); ``refit`` is the default call
since, which counts the grains in such a clustering, fits one component per grain, one for the
matrix and a spare to the decomposition's model and clusters those (``cluster_diffraction``'s
``refit``):

- ``default``: every rule as shipped, ``refit=False``;
- ``refit``: the default call (``refit="auto"``);
- ``grain_patterns=False``: grains not classed again by their own mean patterns in the data
  (nor their rims grown);
- ``no rim growth``: no matrix position next to a grain claimed where its pattern shows the
  grain's disks (``_rim_growth`` bypassed; until session 21 ``RIM_Z`` infinite, which also
  released every position of a placed region);
- ``no core release``: under a probe broader than 2 steps, no position below a tenth of its
  grain's core sent back (:data:`CORE_RELEASE_FRACTION` 0); ``no grain core``: each region
  measured against its own upper decile, not its grain's (``grain_of`` dropped);
- ``no far-null fallback``: the far null only 4 steps from every region
  (:data:`FAR_NULL_MIN_GAP` 4: where the regions leave no such positions, no region is
  tested); ``no crystal floor``: the size-scaled crystal level without its floor
  (:data:`CRYSTAL_FLOOR_Z` 0);
- ``no mixed regions``: regions mostly of glass about a grain not asked for a rim's evidence
  per position (``_mixed_regions`` bypassed);
- ``no disk contrast``: a phase of its own not asked for disks that stand out of their rings
  (:data:`MIN_DISK_CONTRAST` 0); ``no lattice closure``: nor for disks that close as a lattice
  (``_lattice_closure`` gives 1 for every region); ``no strong-phase distance``: a strong small region in a
  cluster with another phase's crystal joins it up to twice the cut
  (:data:`STRONG_PHASE_DISTANCE` infinite); ``no disk containment``: a large region whose disks
  lie on a touching grain's is grouped by the cut only, and touching pieces of one grain in
  two phases stay apart (:data:`CONTAINED_DISKS` infinite); ``no one-grain merge``: only the
  latter (:data:`GRAIN_PIECE_POSITIONS` infinite); ``no contact test``: a small region that
  shows no crystal still joins the phase it touches (:data:`CONTACT_Z` -infinity);
- ``no orientation groups``: grain regions parted by single components, not by groups of one
  orientation (``_orientation_groups`` bypassed);
- ``max_enclosure=None`` and other values of it (pieces of a grain joined: :data:`MAX_ENCLOSURE`);
- ``no unmixing``: the positions' model not re-fitted with the texture group as one pattern
  (``_unmixed_contributions`` bypassed; the cut and every other rule unchanged);
- ``no Bragg-disk split``: clusters not parted by their components' Bragg-disk geometry
  (``_split_by_bragg_disks`` bypassed), and the split with other map overlaps
  (:data:`MAX_SPLIT_OVERLAP`);
- ``no same-crystal join``: touching particle clusters of one crystal not joined
  (``_same_crystal`` bypassed);
- ``no map rises``: no grain found where the matrix's map, or a particle component's, rises
  well above its level (``_map_rises`` bypassed); ``no particle rises``: the matrix's only
  (:data:`~hyperspy_cnmf.clustering.PARTICLE_RISE` infinite);
- ``particle_threshold`` other than the default (:data:`PARTICLE_THRESHOLD`).

It reports the mean and minimum position ARI against the true phase map and the number of runs
with the true number of clusters, per k. With ``--exact`` it runs instead the main job with
``max_exact_iter`` None (to ``tol``), 9, 8 and 6 (:data:`~hyperspy_cnmf.nmf.EXACT_REFINEMENT`),
one decomposition per cap, each with the default clustering of its own components
(``refit=False``).

    python benchmarks/quality_rules.py                  # seeds 0-2, rule variants
    python benchmarks/quality_rules.py --exact          # seeds 0-2, the exact-refinement sweep
    python benchmarks/quality_rules.py --variants default "no lattice closure"   # some rows only
    python benchmarks/quality_rules.py --variants default refit --out results/quality_refit.md

The tables (markdown) go to ``benchmarks/results/quality_rules.md`` and
``benchmarks/results/quality_exact.md`` (``..._independent.md`` with ``--files``).
"""

import argparse
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from quality_physics import cases
from sklearn.metrics import adjusted_rand_score

from hyperspy_cnmf.clustering import _components

HERE = Path(__file__).resolve().parent
_RELEASE = _components._rim_release
VARIANTS = {
    "default": {},
    "refit": {"refit": "auto"},
    "grain_patterns=False": {"grain_patterns": False},
    "no rim growth": (
        "_rim_growth",
        lambda *a: (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)),
    ),
    "no core release": ("CORE_RELEASE_FRACTION", 0.0),
    "no grain core": (
        "_rim_release",
        lambda *a, grain_of=None, **kw: _RELEASE(*a, **kw),
    ),
    "no far-null fallback": ("FAR_NULL_MIN_GAP", 4),
    "no crystal floor": ("CRYSTAL_FLOOR_Z", 0.0),
    "no mixed regions": (
        "_mixed_regions",
        lambda at, which, role, response, n: np.zeros(n, dtype=bool),
    ),
    "no disk contrast": ("MIN_DISK_CONTRAST", 0.0),
    "no lattice closure": (
        "_lattice_closure",
        lambda patterns, *a: np.ones(len(patterns)),
    ),
    "no strong-phase distance": ("STRONG_PHASE_DISTANCE", float("inf")),
    "no disk containment": ("CONTAINED_DISKS", float("inf")),
    "no one-grain merge": ("GRAIN_PIECE_POSITIONS", float("inf")),
    "no contact test": ("CONTACT_Z", float("-inf")),
    "no orientation groups": (
        "_orientation_groups",
        lambda disks: np.arange(disks.shape[0]),
    ),
    "max_enclosure=None": {"max_enclosure": None},
    "max_enclosure=0.4": {"max_enclosure": 0.4},
    "max_enclosure=0.5": {"max_enclosure": 0.5},
    "no unmixing": (
        "_unmixed_contributions",
        lambda factors, loadings, contrib, *a: contrib,
    ),
    "no Bragg-disk split": ("_split_by_bragg_disks", lambda labels, *a: (labels, 0)),
    "no same-crystal join": ("_same_crystal", lambda *a: None),
    "no map rises": (
        "_map_rises",
        lambda contrib, labels, pos, *a: (
            np.full(pos.size, -1, dtype=np.int64),
            np.zeros(0, dtype=np.int64),
        ),
    ),
    "no particle rises": ("PARTICLE_RISE", float("inf")),
    "particle_threshold=0.12": {"particle_threshold": 0.12},
    "particle_threshold=0.09": {"particle_threshold": 0.09},
    "MAX_SPLIT_OVERLAP=0.1": ("MAX_SPLIT_OVERLAP", 0.1),
    "MAX_SPLIT_OVERLAP=0.3": ("MAX_SPLIT_OVERLAP", 0.3),
}


@contextmanager
def _patched(name, value):
    """``_components.<name>`` replaced by ``value`` for the block."""
    keep = getattr(_components, name)
    setattr(_components, name, value)
    try:
        yield
    finally:
        setattr(_components, name, keep)


def _k(truth, which):
    true = truth["n_grains"] + 1
    return {"true": true, "2x": 2 * true}.get(which) or int(which)


def _score(s, truth):
    labels = np.asarray(s.learning_results.cdiff_position_labels).ravel()
    n = len(np.unique(labels[labels >= 0]))
    return adjusted_rand_score(truth["phase_map"].ravel(), labels), n == truth[
        "n_phases"
    ]


def _decompose(s, k, seed, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.decomposition(
            algorithm="constrained_nmf",
            output_dimension=k,
            random_state=seed,
            print_info=False,
            show_progressbar=False,
            **kw,
        )


def rules(seeds, ks, files=None, variants=None):
    variants = {v: VARIANTS[v] for v in (variants or VARIANTS)}
    out = {(v, k): [] for v in variants for k in ks}
    for name, loader in cases(files=files):
        for which in ks:
            for seed in seeds:
                s, truth = loader(False)
                _decompose(s, _k(truth, which), seed)
                for v, kw in variants.items():
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        if isinstance(kw, tuple):
                            with _patched(*kw):
                                s.cluster_diffraction(refit=False)
                        else:
                            s.cluster_diffraction(**{"refit": False, **kw})
                    out[v, which].append(_score(s, truth))
                print(name[:24], which, seed, flush=True)
    return out


def exact(seeds, ks, caps=(None, 9, 8, 6), files=None):
    out = {(c, k): [] for c in caps for k in ks}
    for name, loader in cases(files=files):
        for which in ks:
            for seed in seeds:
                for cap in caps:
                    s, truth = loader(False)
                    _decompose(s, _k(truth, which), seed, max_exact_iter=cap)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        s.cluster_diffraction(
                            refit=False
                        )  # as measured before the refit
                    out[cap, which].append(_score(s, truth))
                print(name[:24], which, seed, "exact", flush=True)
    return out


def _table(title, results, keys, ks):
    lines = [
        f"## {title}",
        "",
        "| variant | "
        + " | ".join(f"k = {k}: mean / min ARI, true count" for k in ks)
        + " |",
        "|---|" + "---:|" * len(ks),
    ]
    for key in keys:
        cells = []
        for k in ks:
            runs = results[key, k]
            ari = np.array([a for a, _ in runs])
            hits = sum(h for _, h in runs)
            cells.append(f"{ari.mean():.3f} / {ari.min():.3f}, {hits}/{len(runs)}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--k", nargs="+", default=["true", "2x", "30"])
    p.add_argument(
        "--exact",
        action="store_true",
        help="the exact-refinement sweep instead of the rule variants",
    )
    p.add_argument(
        "--files",
        nargs="+",
        help="case files (simulate_abtem_4dstem.py output) instead of the default cases; "
        "the table then goes to results/quality_*_independent.md unless --out is given",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        metavar="VARIANT",
        help="only these rule variants (default: all; quote names with spaces)",
    )
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.out is None:
        name = "quality_exact" if args.exact else "quality_rules"
        name += "_independent.md" if args.files else ".md"
        args.out = str(HERE / "results" / name)
    seeds = " ".join(map(str, args.seeds))
    text = [
        "# Over-complete rules and the exact refinement (benchmarks/quality_rules.py)",
        "",
        f"Command: `python benchmarks/quality_rules.py --seeds {seeds} --k {' '.join(args.k)}"
        + (" --files " + " ".join(args.files) if args.files else "")
        + (
            " --variants " + " ".join(f'"{v}"' for v in args.variants)
            if args.variants and not args.exact
            else ""
        )
        + (" --exact`" if args.exact else "`"),
        "",
        "Cases: the abTEM multislice cases and the embedded default of `quality_physics.py` (or the given "
        "files); per k one run per "
        "case and seed. ARI: position labels against the true phase map; true count: runs whose number of "
        "clusters equals the true number of phases. Every variant but `refit` runs with `refit=False` "
        "(the rules of one clustering of the decomposition's own components); `refit` is the default "
        'call (`refit="auto"`: the grains counted, one component per grain, one for the matrix and '
        "a spare fitted to the decomposition's model and clustered).",
        "",
    ]
    if args.exact:
        caps = (None, 9, 8, 6)
        ex = exact(args.seeds, args.k, caps, args.files)
        text += _table(
            "max_exact_iter (default clustering, refit=False)", ex, caps, args.k
        )
    else:
        res = rules(args.seeds, args.k, args.files, args.variants)
        text += _table(
            "Clustering rules (one default decomposition per run)",
            res,
            args.variants or VARIANTS,
            args.k,
        )
    Path(args.out).write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
