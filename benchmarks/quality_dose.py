"""The main job at other counts: rim growth and the over-complete fit against dose (issue 10).

The benchmark cases hold 1000-3000 counts per position; real scans often hold far more. Two
sweeps, position ARI against the true phase map after the default decomposition
(``random_state=0``):

- the package's simulator with a 1.5-step probe (``probe_fwhm=0.75`` nm, 0.5 nm steps: rims
  grow) at 2000 and 20000 counts per position, seeds 0-2, k = 7;
- the multislice cases of ``../shared/data/abtem_dev`` (and any ``--files``), their noise-free
  ``data`` drawn again as Poisson counts at 1500, 15000 and 100000 per unit intensity, k = the
  true count and 30.

Each decomposition is clustered three ways: without the rim rules (no growth, no release:
:data:`~hyperspy_cnmf.clustering.RIM_MAX_PROBE_FWHM` 0), with the growth's z test alone
(:data:`~hyperspy_cnmf.clustering.RIM_EDGE_FRACTION` 0) and as shipped.

    python benchmarks/quality_dose.py

The table (markdown) goes to ``benchmarks/results/quality_dose.md``.
"""

import argparse
import warnings
from pathlib import Path

import numpy as np
from quality_physics import DATA
from quality_rules import _decompose, _patched
from sklearn.metrics import adjusted_rand_score

HERE = Path(__file__).resolve().parent
WAYS = {
    "no rim rules": ("RIM_MAX_PROBE_FWHM", 0.0),
    "z test alone": ("RIM_EDGE_FRACTION", 0.0),
    "shipped": None,
}


def _labels(s):
    out = {}
    for name, patch in WAYS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if patch is None:
                s.cluster_diffraction()
            else:
                with _patched(*patch):
                    s.cluster_diffraction()
        out[name] = np.asarray(s.learning_results.cdiff_position_labels).copy()
    return out


def simulator(seeds=(0, 1, 2), doses=(2000.0, 20000.0)):
    from hyperspy_cnmf.data import simulated_precipitates

    rows = []
    for dose in doses:
        for seed in seeds:
            s = simulated_precipitates(
                random_state=seed, probe_fwhm=0.75, grain_diameter=6.0, dose=dose
            )
            truth = np.asarray(s.metadata.Simulation.phase_map).ravel()
            _decompose(s, 7, 0)
            aris = {w: adjusted_rand_score(truth, lab) for w, lab in _labels(s).items()}
            rows.append((f"simulator seed {seed}", f"{dose:g}", 7, aris))
            print(rows[-1], flush=True)
    return rows


def multislice(files, doses=(1500.0, 15000.0, 100000.0)):
    from hyperspy_cnmf.data import load_multislice_case

    rows = []
    for path in files:
        s0, truth = load_multislice_case(path, key="data")
        phase_map = truth["phase_map"].ravel()
        for dose in doses:
            for k in (truth["n_grains"] + 1, 30):
                s = s0.deepcopy()
                rng = np.random.default_rng(1)
                s.data = rng.poisson(s0.data.astype(np.float64) * dose).astype(
                    np.float32
                )
                _decompose(s, k, 0)
                aris = {
                    w: adjusted_rand_score(phase_map, lab)
                    for w, lab in _labels(s).items()
                }
                rows.append((Path(path).stem, f"{dose:g}", k, aris))
                print(rows[-1], flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--files", nargs="+", help="multislice case files (default: abtem_dev)"
    )
    p.add_argument("--out", default=str(HERE / "results" / "quality_dose.md"))
    args = p.parse_args(argv)
    files = args.files or sorted(str(f) for f in DATA.glob("*.npz"))
    if not files:
        raise SystemExit(f"no multislice cases: {DATA} not found; pass --files")
    rows = simulator() + multislice(files)
    text = [
        "# The main job against dose (benchmarks/quality_dose.py)",
        "",
        "Command: `python benchmarks/quality_dose.py"
        + (" --files " + " ".join(args.files) if args.files else "")
        + "`",
        "",
        "Position ARI against the true phase map, default decomposition (random_state 0). "
        "Dose: counts per position (simulator) or per unit of the multislice intensity "
        "(Poisson draw of the noise-free `data`, seed 1).",
        "",
        "| case | dose | k | " + " | ".join(WAYS) + " |",
        "|---|---:|---:|" + "---:|" * len(WAYS),
    ]
    for case, dose, k, aris in rows:
        text.append(
            f"| {case} | {dose} | {k} | "
            + " | ".join(f"{aris[w]:.3f}" for w in WAYS)
            + " |"
        )
    sim = [r for r in rows if r[0].startswith("simulator")]
    text.append("")
    for dose in sorted({r[1] for r in sim}, key=float):
        means = {w: np.mean([r[3][w] for r in sim if r[1] == dose]) for w in WAYS}
        text.append(
            f"- simulator at {dose}: mean "
            + ", ".join(f"{w} {m:.3f}" for w, m in means.items())
        )
    Path(args.out).write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
