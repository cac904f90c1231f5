"""Pattern against Bragg-disk similarity of the true grain patterns (issue 10, item 5).

For every multislice case in ``../shared/data/abtem_dev`` (and any ``.npz`` of the same format
given with ``--files``), the true pattern of every grain is the mean noisy pattern of its core
positions (column fraction above half its maximum) minus the glass's mean pattern times the
glass's share of those columns (the descan-free scan where the file has one). For every pair of
grains it reports the rotation-invariant pseudo-distance (``1 - CC`` maximised over the rotation,
:func:`hyperspy_cnmf.clustering.polar_similarity`, the cut's measure) of

- the patterns, as the cut compares the components, and
- their Bragg-disk images (:func:`hyperspy_cnmf.clustering.bragg_disk_image`, disk radius = the
  convergence semi-angle in px, the direct beam left out to twice that plus 1 px), as the split
  compares them,

grouped into pairs of one phase, B2-CuZr [001] with CuZr2 [100] (the pair with disks on one
ring), and other pairs of two phases.

    python benchmarks/quality_disk_geometry.py
    python benchmarks/quality_disk_geometry.py --files /path/to/case.npz

The table (markdown) goes to ``benchmarks/results/quality_disk_geometry.md``.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from hyperspy_cnmf.clustering import bragg_disk_image, polar_similarity

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "abtem_dev"
PHASES = {0: "glass", 1: "B2-CuZr", 2: "fcc-Cu", 3: "CuZr2"}


def true_patterns(path):
    """``(patterns (g, qy, qx), phase per grain, centre (x, y) px, disk radius px)``."""
    z = np.load(path)
    md = json.loads(str(z["metadata_json"]))
    key = "data_noisy_nodescan" if "data_noisy_nodescan" in z.files else "data_noisy"
    data = z[key].reshape(z["labels"].size, *z[key].shape[2:]).astype(np.float64)
    grain_labels = z["labels"].ravel()
    phase = z["grain_phase"]
    fraction = z["grain_fraction"].reshape(phase.size, -1)
    glass = data[grain_labels == 0].mean(axis=0)
    patterns = []
    for g in range(1, phase.size):
        core = fraction[g] > 0.5 * fraction[g].max()
        share = 1.0 - fraction[g][core].mean()
        patterns.append(np.clip(data[core].mean(axis=0) - share * glass, 0.0, None))
    centre = tuple(float(c) for c in md["direct_beam_px"][::-1])
    radius = md["semiangle_mrad"] / md["detector_mrad_per_px"]
    return np.stack(patterns), phase[1:], centre, radius


def pair_distances(path):
    patterns, phase, centre, radius = true_patterns(path)
    beam = 2.0 * radius + 1.0
    disks = np.stack([bragg_disk_image(p, centre, radius, beam) for p in patterns])
    d_pattern = polar_similarity(patterns, centre, direct_beam_radius=beam)[2]
    d_disk = polar_similarity(disks, centre, direct_beam_radius=beam)[2]
    out = {"one phase": [], "B2-CuZr / CuZr2": [], "other phases": []}
    for i in range(phase.size):
        for j in range(i + 1, phase.size):
            if phase[i] == phase[j]:
                kind = "one phase"
            elif {int(phase[i]), int(phase[j])} == {1, 3}:
                kind = "B2-CuZr / CuZr2"
            else:
                kind = "other phases"
            out[kind].append(
                (d_pattern.pseudo_distance[i, j], d_disk.pseudo_distance[i, j])
            )
    return out, radius


def _span(values):
    if not values:
        return "–"
    return f"{min(values):.2f}–{max(values):.2f}"


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--files", nargs="+", help="case files (default: abtem_dev/*.npz)")
    p.add_argument("--out", default=str(HERE / "results" / "quality_disk_geometry.md"))
    args = p.parse_args(argv)
    files = [Path(f) for f in args.files] if args.files else sorted(DATA.glob("*.npz"))
    rows = []
    for f in files:
        pairs, radius = pair_distances(f)
        cells = []
        for kind in ("one phase", "B2-CuZr / CuZr2", "other phases"):
            v = pairs[kind]
            cells.append(
                f"{_span([a for a, _ in v])} / {_span([b for _, b in v])} ({len(v)})"
            )
        rows.append(f"| {f.stem} | {radius:.2f} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    cmd = "python benchmarks/quality_disk_geometry.py" + (
        " --files " + " ".join(args.files) if args.files else ""
    )
    text = [
        "# Pattern against Bragg-disk similarity of the true grain patterns "
        "(benchmarks/quality_disk_geometry.py)",
        "",
        f"Command: `{cmd}`",
        "",
        "True pattern of a grain: the mean noisy pattern of its core positions minus the glass's "
        "share. Each cell: the range of the rotation-invariant pseudo-distance (1 - CC) between "
        "the patterns / between their Bragg-disk images, (number of grain pairs). The cut merges "
        "below 0.3 (patterns); the split parts above 0.4 (disk images, "
        "`hyperspy_cnmf.clustering.SPLIT_DISTANCE`).",
        "",
        "| case | disk radius (px) | one phase | B2-CuZr / CuZr2 | other phases |",
        "|---|---:|---|---|---|",
        *rows,
        "",
    ]
    Path(args.out).write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
