"""Clustering quality against the ground truth (issue 4, item 6), over datasets.

For each simulated dataset (``simulated_precipitates(random_state=seed)``: an
amorphous matrix and 6 grains of 2 phases, 7 true components) and each number
of components ``k``, runs the paper's workflow,

    s.decomposition(algorithm="constrained_nmf", output_dimension=k,
                    random_state=0)   # Poisson-weighted, direct beam left out (defaults)
    s.cluster_diffraction()

and reports:

- the number of clusters (3 true: matrix + 2 phases);
- the components the clustering refitted (``refit_components``, 0: none; the clustered
  components are then the refit's);
- the adjusted Rand index (ARI) of the *clear* clustered components (those whose map
  correlates > 0.9 with one true component's map; the others are pieces of
  the matrix or direct-beam components, with no single true phase) against
  their true phase;
- the ARI of the position labels (``cdiff_position_labels``) against the true
  phase map (``metadata.Simulation.phase_map``: the phase of the grain whose
  projected disk holds the probe centre, else the matrix);
- the direct-beam-only components found and the number of map objects.

    python benchmarks/quality_clustering.py                      # seeds 0-5, k = 7, 14, 21
    python benchmarks/quality_clustering.py --seeds 0 1 --k 14

The report (markdown) goes to ``benchmarks/results/clustering_quality.md``.
"""

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

HERE = Path(__file__).resolve().parent


def evaluate(seed, k):
    from hyperspy_cnmf.data import simulated_precipitates
    from hyperspy_cnmf.report import clear_component_phases, clustered_components

    s = simulated_precipitates(random_state=seed)
    truth = s.metadata.Simulation
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.decomposition(
            algorithm="constrained_nmf",
            output_dimension=k,
            random_state=0,
            print_info=False,
            show_progressbar=False,
            normalize_poissonian_noise=True,
        )
        s.cluster_diffraction()
    dt = time.perf_counter() - t0
    lr = s.learning_results
    _, maps = clustered_components(s)  # the refit's when the clustering refitted
    clear, phase = clear_component_phases(
        maps.reshape(len(maps), -1), truth.maps, truth.phase_of_component
    )
    labels = np.asarray(lr.cdiff_labels)
    return {
        "seed": seed,
        "k": k,
        "refit": json.loads(str(lr.cdiff_parameters))["refit_components"],
        "clusters": int(labels.max()) + 1,
        "clear": int(clear.sum()),
        "ari_components": adjusted_rand_score(phase[clear], labels[clear]),
        "ari_positions": adjusted_rand_score(
            np.asarray(truth.phase_map).ravel(), np.asarray(lr.cdiff_position_labels)
        ),
        "beam_only": np.flatnonzero(lr.cdiff_beam_only).tolist(),
        "objects": int(np.max(lr.cdiff_objects)) + 1,
        "time": dt,
    }


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--k", type=int, nargs="+", default=[7, 14, 21])
    p.add_argument("--out", default=str(HERE / "results" / "clustering_quality.md"))
    args = p.parse_args(argv)
    rows = []
    for k in args.k:
        for seed in args.seeds:
            r = evaluate(seed, k)
            rows.append(r)
            print(r, flush=True)
    lines = [
        "# Clustering quality on simulated precipitates (benchmarks/quality_clustering.py)",
        "",
        f"Command: `python benchmarks/quality_clustering.py --seeds {' '.join(map(str, args.seeds))} "
        f"--k {' '.join(map(str, args.k))}`",
        "",
        "7 true components (matrix + 6 grains), 3 true phases. Defaults of `decomposition"
        '(algorithm="constrained_nmf", normalize_poissonian_noise=True, random_state=0)` and '
        "`cluster_diffraction()`. Refit: the components the clustering fitted to the "
        "decomposition's model and clustered (0: none, the decomposition's own).",
        "",
        "| seed | k | refit | clusters | clear components | ARI clear components | ARI positions "
        "| direct-beam-only components | map objects | time (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['k']} | {r['refit']} | {r['clusters']} | {r['clear']} "
            f"| {r['ari_components']:.3f} "
            f"| {r['ari_positions']:.3f} | {r['beam_only'] or '–'} | {r['objects']} | {r['time']:.1f} |"
        )
    lines.append("")
    for k in args.k:
        sel = [r for r in rows if r["k"] == k]
        pos = [r["ari_positions"] for r in sel]
        comp = [r["ari_components"] for r in sel]
        lines.append(
            f"- k = {k}: position ARI {min(pos):.3f}-{max(pos):.3f} (mean {np.mean(pos):.3f}), "
            f"clear-component ARI {min(comp):.3f}-{max(comp):.3f}, "
            f"{sum(r['clusters'] == 3 for r in sel)}/{len(sel)} runs with 3 clusters."
        )
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
