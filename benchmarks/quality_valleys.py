"""Valleys (downward-convex dips) of the fitted and merged patterns against the truth (issue 10, item 9).

For the package's own simulator (``simulated_precipitates()``) and every multislice (abTEM) case
in ``../shared/data/abtem_dev``, at k = the true count (glass + one per grain) and 2x, the
default call

    s.decomposition(algorithm="constrained_nmf", output_dimension=k, random_state=0)
    s.cluster_diffraction()

is run and every constrained factor (``learning_results.factors``), every merged cluster
pattern (``learning_results.cdiff_merged_factors``: of the clustered components, the refit's
where the clustering refitted, ``cdiff_refit_factors``) and every cluster's mean pattern
(``learning_results.cdiff_mean_patterns``) is compared with its true pattern.

Truth
-----
The true patterns are, on the package's simulator, the true component patterns
(``metadata.Simulation.patterns``: the matrix with its direct beam and halos; each grain's Bragg
spots only) and, on an abTEM case (where no component truth exists), the mean *clean* pattern
(``data``) of the glass positions and of each grain's positions (a grain's mean holds its
column's glass and the direct beam too). A non-negative decomposition is not unique (a grain
component may carry part of the matrix), so:

- a factor's truth is the non-negative least-squares mixture of the true patterns closest to it
  (the factor times its summed loadings, in counts), fitted on the factor's pixels. A factor
  deeper than this mixture has valleys that no non-negative mix of true patterns has. The table
  names the true object the factor's map sits on (the label, 0 the matrix, with the largest mean
  loading over its positions), its share of the mixture's counts and the cosine of factor and
  mixture;
- a merged cluster's truth is the same merge (``merge_aligned`` with the cluster's rotations,
  mirrors and summed-loading weights) of its members' truths; the cluster is named by the true
  phase most of its dominated positions (``cdiff_position_labels``) have, whose Bragg radii
  give the azimuthal rings;
- a cluster's mean pattern (the aligned mean of the model over its positions) is compared with
  the same aligned mean of the true *clean* patterns of those positions (each position rotated
  as its owner, ``_aligned_means``; the package's simulator: the maps times the true patterns),
  in counts of the cluster's positions. The same mean of the *data* (noisy) is measured too and
  named in the table (``data: radial``, at the estimate's deepest radius; ``azim.``, on its
  ring): what a pattern that follows the data shows;
- a factor is also compared with **the clean data's patterns for the same maps**: the
  non-negative least-squares patterns (``scipy.optimize.nnls``, pixel by pixel, positions
  weighted as the fit's Poisson weighting) of the noise-free data (the abTEM ``data`` key
  scaled to the counts of ``data_noisy``; the simulator's maps times patterns) with the
  fitted maps held fixed. At over-complete k several factors model the variation *within* a
  phase (pieces of the glass with maps over the whole scan, one holding the halo's flanks
  where another holds its peak); no non-negative mix of the phases' mean patterns holds
  that variation, so the first truth flags their valleys even where the noise-free data
  have them. A valley of the clean data's patterns is one the data have; a factor deeper
  than the 95th percentile of the same patterns from ``N_IMPLIED`` Poisson acquisitions of
  the clean data (the noise a fit of these maps meets) has one they do not. The same patterns
  of the data as acquired (``data_noisy``) are shown beside: a factor as deep as they are
  follows this acquisition's noise, one deeper was carved by the fit;
- a merged cluster is also compared with **the same merge of the clean data's patterns for
  its members' maps** (the members' loadings: the refit's where the clustering refitted),
  its noise the 95th percentile of the same measure on the merges of the patterns that the
  ``N_IMPLIED`` acquisitions give: the merged diffraction holds each member's share of the
  data, so a grain cluster's merge holds the crystal without the glass under it (which its
  positions' mean holds), and the first truth flags the gaps between its Bragg disks on a
  ring where the glass's halo lies;
- every truth is compared on the estimate's pixels: detector pixels that are NaN in the
  estimate (the direct-beam disk that the fit leaves out, ``direct_beam_mask="auto"``) are left
  out of the truth too.

Measures (all about the direct beam measured by the fit, ``direct_beam_x_px/_y_px``)
-----------------------------------------------------------------------------------------
- **Radial profile** ``P(r)``: the mean over the valid pixels of each 1-px annulus
  ``round(|q - c|) = r``, out to the largest full circle inside the detector.
- **Radial valley depth** ``D(r) = min(Lmax(r), Rmax(r)) - P(r)`` (0 where negative), with
  ``Lmax``/``Rmax`` the highest value of ``P`` at radii ``<= r`` / ``>= r``: how far the profile
  lies below the lower of the two maxima that enclose it (the level that water poured into the
  valley would reach); zero on monotonic stretches and on peaks. Reported **relative to the
  profile's maximum** over the valid radii (``depth``), with the radius of the deepest valley
  (px and in the signal's calibrated units), the truth's depth at that radius and both
  **fractions** ``D / min(Lmax, Rmax)`` (1 = black on a log display, 0 = no valley).
- **Chord depth** ``Dc(r)``: the same below the straight line joining the two maxima (the
  issue's wording). It also counts the downward-convex flank of a rising profile (a profile
  rising like an exponential from the masked disk towards the halo lies below the chord),
  and it jumps when the first valid radius is a hair above or below the next ones, so it is
  reported beside ``D``, not instead of it.
- **Beam-edge level**: ``P(r0) / max P`` at the first valid radius ``r0`` (just outside the
  masked disk), estimate over truth: below 1 the estimate is darker around the direct beam than
  the truth, relative to its own maximum (a "hole around the direct beam" that is not a valley,
  because nothing brighter lies inside it on the valid pixels).
- **Azimuthal valley depth**, on the ring at the amorphous halo radius (the first maximum of the
  matrix's true profile beyond the beam) and at the two strongest Bragg radii of the phase (the
  highest maxima of the crystalline true profile, at least 2 px from the halo ring): the ring
  is sampled bilinearly every pixel of arc (samples touching a NaN pixel left out) and, on the
  periodic profile ``A(phi)``, ``D(phi)`` is the depth below the lower of the highest samples on
  either side (water-filling, as along the radius: the ring cut at its maximum, or each arc
  between masked samples), relative to the ring's maximum. The deepest over the rings is
  reported with its ring radius. (Until session 14 the depth was taken below the chord of the
  *nearest* local maxima, which a noise bump on a valley's floor split: a noisy truth scored
  shallower than a smooth estimate of the same valley.)
- **Dip measure** of the package (:func:`hyperspy_cnmf.constraints.dip_measure` with the
  fit's own azimuthal closing, :meth:`DiffractionDipConstraint.from_beam` at the fit's radius):
  the fraction of the pattern's intensity missing in dips narrower than the closing.

Noise level: each measure on the true pattern scaled to the counts the estimate holds (the
factor times its summed loadings, or the merged counts) plus Poisson noise, 20 draws; the 95th
percentile (``+noise95``). An estimate's valley is "deeper than the truth plus noise" where it
exceeds that value.

    python benchmarks/quality_valleys.py                     # all cases, k = true and 2x
    python benchmarks/quality_valleys.py --cases embedded --k true

The tables (markdown) go to ``benchmarks/results/quality_valleys.md``.
"""

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_dilation, map_coordinates
from scipy.optimize import nnls
from sklearn.metrics import adjusted_rand_score

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "abtem_dev"
N_DRAWS = 20
N_IMPLIED = 30


# --------------------------------------------------------------------------- measures
def radial_profile(p, centre, n_r):
    """Mean of the finite pixels in the 1-px annuli ``round(r)`` = 0 .. n_r - 1 (NaN if none)."""
    qy, qx = p.shape
    yy, xx = np.mgrid[:qy, :qx]
    rb = np.round(np.hypot(yy - centre[1], xx - centre[0])).astype(int).ravel()
    v = p.ravel()
    ok = np.isfinite(v) & (rb < n_r)
    n = np.bincount(rb[ok], minlength=n_r)
    s = np.bincount(rb[ok], v[ok], minlength=n_r)
    return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def valley_depth(P, chord=False):
    """``D(r)`` below the lower of the highest points on either side (``chord``: below the line joining them)."""
    idx = np.flatnonzero(np.isfinite(P))
    D = np.full(P.shape, np.nan)
    v = P[idx]
    for j in range(idx.size):
        a = int(np.argmax(v[: j + 1]))
        b = j + int(np.argmax(v[j:]))
        if b == a:
            D[idx[j]] = 0.0
            continue
        if chord:
            t = (idx[j] - idx[a]) / (idx[b] - idx[a])
            level = v[a] + t * (v[b] - v[a])
        else:
            level = min(v[a], v[b])
        D[idx[j]] = max(0.0, level - v[j])
    return D


def implied_patterns(L, X, pixels, weights):
    """The non-negative patterns that data ``X`` (n, pixels) give for fixed maps ``L`` (n, k).

    Non-negative least squares (``scipy.optimize.nnls``), pixel by pixel, each row
    weighted by ``weights`` (the fit's Poisson weighting of the positions); NaN off
    ``pixels``. Returns (k, pixels).
    """
    A = L * weights[:, None]
    H = np.full((L.shape[1], X.shape[1]), np.nan)
    for p in np.flatnonzero(pixels):
        H[:, p], _ = nnls(A, X[:, p] * weights)
    return H


def relative_valleys(p, centre, n_r):
    """Radial valley depth ``D(r)`` over the profile's maximum (see :func:`valley_depth`)."""
    P = radial_profile(p, centre, n_r)
    return valley_depth(P) / np.nanmax(P)


def ring_samples(p, centre, radius):
    """Bilinear samples every pixel of arc on a circle; NaN where a neighbour pixel is NaN."""
    n = max(8, int(round(2 * np.pi * radius)))
    phi = 2 * np.pi * np.arange(n) / n
    y = centre[1] + radius * np.sin(phi)
    x = centre[0] + radius * np.cos(phi)
    finite = np.isfinite(p)
    vals = map_coordinates(np.where(finite, p, 0.0), [y, x], order=1, mode="nearest")
    ok = map_coordinates(finite.astype(float), [y, x], order=1, mode="nearest") > 0.999
    return np.where(ok, vals, np.nan)


def ring_depth(A):
    """Deepest azimuthal valley of a periodic profile, relative to its maximum (NaN-free part).

    Water-filling, as for the radial profile (:func:`valley_depth`): the depth
    of a sample is how far it lies below the lower of the highest samples on
    either side of it, within its NaN-free arc (the full ring, cut at its
    maximum, when nothing is NaN). Noise bumps on a valley's floor do not
    split it.
    """
    ok = np.isfinite(A)
    if ok.sum() < 8:
        return np.nan
    top = np.nanmax(A)
    if not top > 0:
        return 0.0
    if ok.all():
        start = int(np.argmax(A))
        runs = [np.append(np.roll(A, -start), A[start])]
    else:
        # arcs between masked samples, each read from one masked sample to the next
        start = int(np.flatnonzero(~ok)[0])
        a = np.roll(A, -start)
        cuts = np.flatnonzero(~np.isfinite(a))
        runs = [a[i + 1 : j] for i, j in zip(cuts, np.append(cuts[1:], a.size))]
    best = 0.0
    for r in runs:
        if r.size < 3:
            continue
        best = max(best, float(valley_depth(r).max()))
    return best / top


def measures(p, centre, n_r, rings, dip):
    """The valley measures of one pattern (qy, qx), NaN where masked."""
    P = radial_profile(p, centre, n_r)
    D = valley_depth(P)
    Dc = valley_depth(P, chord=True)
    top = np.nanmax(P)
    r0 = int(np.flatnonzero(np.isfinite(P))[0])
    az = [ring_depth(ring_samples(p, centre, r)) for r in rings]
    return {
        "P": P,
        "D": D / top,
        "level": (P + D) / top,
        "Dc": Dc / top,
        "edge": P[r0] / top,
        "r0": r0,
        "ring": np.array(az),
        "dip": float(dip(p)),
    }


def compare(est, truth, centre, n_r, rings, dip, rng):
    """Measures of an estimate, of its truth on the same pixels, and of truth + Poisson noise."""
    truth = np.where(np.isfinite(est), truth, np.nan)
    m_e = measures(est, centre, n_r, rings, dip)
    m_t = measures(truth, centre, n_r, rings, dip)
    counts = float(np.nansum(est))
    unit = np.clip(truth, 0, None) / np.nansum(np.clip(truth, 0, None))
    noisy = {"D": [], "Dc": [], "ring": [], "dip": [], "edge": []}
    for _ in range(N_DRAWS):
        x = rng.poisson(np.nan_to_num(unit) * counts).astype(float)
        x[~np.isfinite(truth)] = np.nan
        m = measures(x, centre, n_r, rings, dip)
        noisy["D"].append(np.nanmax(m["D"]))
        noisy["Dc"].append(np.nanmax(m["Dc"]))
        noisy["ring"].append(m["ring"])
        noisy["dip"].append(m["dip"])
        noisy["edge"].append(m["edge"])
    i = int(np.nanargmax(m_e["D"]))
    frac = lambda m: m["D"][i] / m["level"][i] if m["level"][i] > 0 else 0.0  # noqa: E731
    ic = int(np.nanargmax(m_e["Dc"]))
    j = int(np.nanargmax(m_e["ring"] - np.nanpercentile(noisy["ring"], 95, axis=0)))
    return {
        "r": i,
        "depth": m_e["D"][i],
        "frac": frac(m_e),
        "truth_at_r": m_t["D"][i],
        "truth_frac_at_r": frac(m_t),
        "truth_max": float(np.nanmax(m_t["D"])),
        "truth_r": int(np.nanargmax(m_t["D"])),
        "noise95": float(np.percentile(noisy["D"], 95)),
        "rc": ic,
        "chord": m_e["Dc"][ic],
        "chord_truth_at_r": m_t["Dc"][ic],
        "chord_truth_max": float(np.nanmax(m_t["Dc"])),
        "chord_noise95": float(np.percentile(noisy["Dc"], 95)),
        "edge": m_e["edge"] / m_t["edge"] if m_t["edge"] > 0 else np.inf,
        "edge_truth": m_t["edge"],
        # 5th percentile of the same ratio for truth + noise (below it: darker than noise)
        "edge_noise05": float(np.percentile(noisy["edge"], 5)) / m_t["edge"]
        if m_t["edge"] > 0
        else np.nan,
        "r0": m_e["r0"],
        "ring_r": rings[j],
        "ring": m_e["ring"][j],
        "ring_truth": m_t["ring"][j],
        "ring_noise95": float(np.nanpercentile(np.array(noisy["ring"])[:, j], 95)),
        "dip": m_e["dip"],
        "dip_truth": m_t["dip"],
        "dip_noise95": float(np.percentile(noisy["dip"], 95)),
        "P_est": m_e["P"],
        "P_truth": m_t["P"],
    }


# --------------------------------------------------------------------------- cases
def embedded():
    from hyperspy_cnmf.data import simulated_precipitates

    s = simulated_precipitates()
    sim = s.metadata.Simulation
    phase = np.asarray(sim.phase_of_component)
    refs = np.asarray(sim.reference_patterns)
    maps = np.asarray(sim.maps)
    return (
        s,
        {
            "labels": np.asarray(
                sim.grain_map
            ),  # component index of the dominant grain, 0 matrix
            "n_labels": phase.size,
            "label_phase": phase,
            "phase_map": np.asarray(sim.phase_map),
            "library": np.asarray(sim.patterns),  # the true component patterns
            "phase_truth": np.concatenate([np.asarray(sim.patterns)[:1], refs]),
            "halo_px": float(sim.halo_radii_inv_nm[0] / sim.reciprocal_scale_inv_nm),
            # all grains' Bragg spots, in counts: where the matrix halo could be carved
            "spots": np.tensordot(
                np.asarray(sim.maps)[1:].sum(axis=(1, 2)),
                np.asarray(sim.patterns)[1:],
                1,
            ),
            "kind": "the true component patterns (matrix with beam and halos; each grain's Bragg spots)",
            # the clean pattern of every position (the maps times the patterns)
            "clean": np.tensordot(
                maps.reshape(len(maps), -1).T, np.asarray(sim.patterns), 1
            ),
        },
    )


def multislice(path):
    from hyperspy_cnmf.data import load_multislice_case

    s, truth = load_multislice_case(path)
    with np.load(path) as z:
        clean = np.asarray(z["data"], dtype=np.float64)
    labels = truth["labels"]
    phase_map = truth["phase_map"]
    n_l = truth["n_grains"] + 1
    label_truth = np.array([clean[labels == g].mean(axis=0) for g in range(n_l)])
    phases = np.unique(phase_map)
    phase_truth = np.zeros((phases.max() + 1,) + clean.shape[2:])
    for p in phases:
        phase_truth[p] = clean[phase_map == p].mean(axis=0)
    return s, {
        "labels": labels,
        "n_labels": n_l,
        "label_phase": truth["grain_phase"],
        "phase_map": phase_map,
        "library": label_truth,
        "phase_truth": phase_truth,
        "halo_px": None,
        "spots": None,
        "kind": "the mean clean pattern of the glass positions and of each grain's positions",
        "clean": clean.reshape((-1,) + clean.shape[2:]),
    }


def cases(selection=None):
    out = [(p.stem, lambda p=p: multislice(p)) for p in sorted(DATA.glob("*.npz"))] + [
        ("embedded default", embedded)
    ]
    if selection:
        out = [c for c in out if any(sel in c[0] for sel in selection)]
    return out


def bragg_rings(P_cryst, halo, n=2, min_gap=2.0):
    """Radii of the ``n`` highest local maxima of a profile, ``min_gap`` px from the halo ring."""
    P = np.nan_to_num(P_cryst)
    peaks = [
        i
        for i in range(2, P.size - 1)
        if P[i] >= P[i - 1] and P[i] >= P[i + 1] and abs(i - halo) >= min_gap
    ]
    peaks.sort(key=lambda i: -P[i])
    return sorted(peaks[:n])


def analyse(name, make, k_spec, seed=0, fit_kwargs=None):
    from hyperspy_cnmf._beam import Beam
    from hyperspy_cnmf.clustering import merge_aligned
    from hyperspy_cnmf.clustering._components import _aligned_means, _position_owners
    from hyperspy_cnmf.constraints import DiffractionDipConstraint, dip_measure
    from hyperspy_cnmf.report import clustered_components

    s, tr = make()
    k = {"true": tr["n_labels"], "2x": 2 * tr["n_labels"]}.get(k_spec) or int(k_spec)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.decomposition(
            algorithm="constrained_nmf",
            output_dimension=k,
            random_state=seed,
            print_info=False,
            show_progressbar=False,
            **(fit_kwargs or {}),
        )
        s.cluster_diffraction()
    wall = time.perf_counter() - t0
    lr = s.learning_results
    par = lr.cnmf_parameters
    par = json.loads(par) if isinstance(par, str) else dict(par)
    qy, qx = s.axes_manager._signal_shape_in_array
    centre = (float(par["direct_beam_x_px"]), float(par["direct_beam_y_px"]))
    beam_r = float(par["direct_beam_radius_px"])
    dip_r = float(par.get("diffraction_constraint_size") or np.nan)
    if not np.isfinite(dip_r):  # constraint off: measure with the default closing
        dip_r = max(1.0, float(np.round(beam_r)))
    n_r = int(min(centre[0], centre[1], qx - 1 - centre[0], qy - 1 - centre[1]))
    scale = s.axes_manager.signal_axes[0].scale
    units = s.axes_manager.signal_axes[0].units
    F = np.asarray(lr.factors, dtype=np.float64).T.reshape(k, qy, qx)
    L = np.asarray(lr.loadings, dtype=np.float64).T
    valid = np.all(np.isfinite(F), axis=0)
    dip_c = DiffractionDipConstraint.from_beam(
        Beam(x=centre[0], y=centre[1], radius=beam_r), (qy, qx), dip_r, valid=valid
    )

    def dip(p):
        return dip_measure(np.clip(np.nan_to_num(p), 0, None), dip_c)[0]

    # rings: the halo (first maximum of the matrix truth beyond the beam) and Bragg radii
    P_glass = radial_profile(tr["phase_truth"][0], centre, n_r)
    if tr["halo_px"] is None:  # the first maximum beyond the beam's fall-off
        r_lo = int(np.ceil(beam_r)) + 2
        d = np.diff(P_glass)
        cand = [i for i in range(r_lo, n_r - 1) if d[i - 1] > 0 and d[i] <= 0]
        halo = cand[0] if cand else r_lo + int(np.nanargmax(P_glass[r_lo:]))
    else:
        halo = int(round(tr["halo_px"]))

    def rings_of(phase):
        if phase == 0:
            return [halo]
        cryst = radial_profile(tr["phase_truth"][phase], centre, n_r)
        if tr["halo_px"] is None:  # abTEM: the phase's excess over the glass
            cryst = cryst - P_glass
        return [halo] + bragg_rings(cryst, halo)

    rng = np.random.default_rng(0)
    lib = np.asarray(tr["library"], dtype=np.float64)
    lib_sum = lib.reshape(len(lib), -1).sum(axis=1)
    lsum = L.sum(axis=1)
    labels = tr["labels"].ravel()
    rows, mixes = [], np.full(F.shape, np.nan)
    for i in range(k):
        est = F[i] * lsum[i]
        ok = np.isfinite(est)
        coef, _ = nnls(lib[:, ok].T, est[ok])
        mix = np.where(ok, np.tensordot(coef, lib, axes=1), np.nan)
        mixes[i] = mix / lsum[i]
        # the true object the factor's map sits on (largest mean loading over its positions)
        g = int(
            np.argmax(
                [
                    L[i, labels == j].mean() if np.any(labels == j) else -np.inf
                    for j in range(len(lib))
                ]
            )
        )
        ph = int(tr["label_phase"][g])
        cos = float(
            est[ok] @ mix[ok] / np.linalg.norm(est[ok]) / np.linalg.norm(mix[ok])
        )
        c = compare(est, mix, centre, n_r, rings_of(ph), dip, rng)
        share = coef * lib_sum / max(np.sum(coef * lib_sum), 1e-300)
        c.update(
            what=f"factor {i}",
            match=f"{share[g]:.2f} label {g} (phase {ph}), cos {cos:.3f}",
        )
        rows.append(c)
    # each factor against the clean data's patterns for the same maps (what the
    # factor would be without noise), with the noise of N_IMPLIED acquisitions
    data = np.asarray(s.data, dtype=np.float64).reshape((-1, qy, qx))
    Xd = data.reshape(len(data), -1)
    Xc = tr["clean"].reshape(len(data), -1)
    dose = Xd[:, valid.ravel()].sum() / Xc[:, valid.ravel()].sum()
    Xc = (
        Xc * dose
    )  # clean counts (the simulator's clean patterns are in counts already)
    wts = 1.0 / np.sqrt(np.maximum(Xd.sum(axis=1), 1e-300))
    Lk = np.nan_to_num(L.T)  # (n, k)
    Hc = implied_patterns(Lk, Xc, valid.ravel(), wts).reshape(k, qy, qx)
    Ha = implied_patterns(Lk, Xd, valid.ravel(), wts).reshape(
        k, qy, qx
    )  # this acquisition's
    noisy = np.zeros((N_IMPLIED, k))
    rng_i = np.random.default_rng(1)
    draws = []  # the Poisson acquisitions of the clean data (for the merged patterns too)
    for d in range(N_IMPLIED):
        draws.append(rng_i.poisson(Xc).astype(float))
        Hn = implied_patterns(Lk, draws[-1], valid.ravel(), wts)
        noisy[d] = [
            np.nanmax(relative_valleys(h, centre, n_r)) for h in Hn.reshape(k, qy, qx)
        ]
    for i in range(k):
        De = relative_valleys(F[i], centre, n_r)
        Dc = relative_valleys(Hc[i], centre, n_r)
        Da = relative_valleys(Ha[i], centre, n_r)
        r = int(np.nanargmax(De))
        rows[i].update(
            implied_depth=float(De[r]),
            implied_r=r,
            implied_at_r=float(Dc[r]),
            implied_data_at_r=float(Da[r]),
            implied_max=float(np.nanmax(Dc)),
            implied_r_max=int(np.nanargmax(Dc)),
            implied_noise95=float(np.percentile(noisy[:, i], 95)),
            implied_cos=float(
                np.nansum(F[i] * Hc[i])
                / np.sqrt(np.nansum(F[i] ** 2) * np.nansum(Hc[i] ** 2))
            ),
        )
    M = np.asarray(lr.cdiff_merged_factors, dtype=np.float64).T.reshape(-1, qy, qx)
    # the clustered components: the refit's when the clustering refitted (then
    # cdiff_components numbers them), else the decomposition's that it clustered
    comp = np.asarray(lr.cdiff_components)
    if getattr(lr, "cdiff_refit_factors", None) is not None:
        Fc, Lc = clustered_components(s)
        Lc = Lc.reshape(len(Lc), -1)
        mixc = np.full(Fc.shape, np.nan)
        for i in range(len(Fc)):
            est = Fc[i] * Lc[i].sum()
            ok = np.isfinite(est)
            coef, _ = nnls(lib[:, ok].T, est[ok])
            mixc[i] = (
                np.where(ok, np.tensordot(coef, lib, axes=1), np.nan) / Lc[i].sum()
            )
    else:
        Fc, Lc, mixc = F[comp], L[comp], mixes[comp]
    kc = len(Fc)
    merge_args = (
        np.asarray(lr.cdiff_centre, dtype=float),
        np.asarray(lr.cdiff_labels),
        np.asarray(lr.cdiff_rotation, dtype=float),
        np.asarray(lr.cdiff_mirrored, dtype=bool),
    )
    M_check = merge_aligned(Fc, *merge_args, weights=Lc.sum(axis=1))
    M_truth = merge_aligned(mixc, *merge_args, weights=Lc.sum(axis=1))
    # the same merge of the clean data's patterns for the clustered components' maps,
    # and of those of the N_IMPLIED acquisitions (the noise those maps meet)
    Lck = np.nan_to_num(Lc.T)

    def merged_implied(X):
        H = implied_patterns(Lck, X, valid.ravel(), wts).reshape(kc, qy, qx)
        return merge_aligned(H, *merge_args, weights=Lc.sum(axis=1))

    M_implied = merged_implied(Xc)
    M_implied_noisy = [merged_implied(x) for x in draws]
    rebuild = float(np.nanmax(np.abs(M_check - M)) / np.nanmax(np.abs(M)))
    pos = np.asarray(lr.cdiff_position_labels).ravel()
    pm = tr["phase_map"].ravel()
    ari = adjusted_rand_score(pm, pos)
    yy, xx = np.mgrid[:qy, :qx]
    disk = np.hypot(yy - centre[1], xx - centre[0]) <= beam_r
    glass_beam = tr["phase_truth"][0][disk].sum()
    beam_ratio = {
        int(p): float(tr["phase_truth"][p][disk].sum() / glass_beam)
        for p in np.unique(pm)
        if p > 0
        and tr["halo_px"] is None  # abTEM: position means (the simulator: spots only)
    }
    spot_corr = {}
    glass_clusters = []
    for cl in range(M.shape[0]):
        on = pos == cl
        ph = int(np.bincount(pm[on]).argmax()) if on.any() else 0
        if ph == 0 and on.any():
            glass_clusters.append(cl)
        c = compare(M[cl], M_truth[cl], centre, n_r, rings_of(ph), dip, rng)
        if ph == 0 and tr["spots"] is not None:
            a = ring_samples(M[cl], centre, halo)
            b = ring_samples(tr["spots"], centre, halo)
            ok = np.isfinite(a) & np.isfinite(b)
            spot_corr[cl] = float(np.corrcoef(a[ok], b[ok])[0, 1])
        n_m = int(np.sum(merge_args[1] == cl))
        rings = rings_of(ph)
        m_e = measures(M[cl], centre, n_r, rings, dip)
        m_i = measures(
            np.where(np.isfinite(M[cl]), M_implied[cl], np.nan), centre, n_r, rings, dip
        )
        m_n = [
            measures(
                np.where(np.isfinite(M[cl]), x[cl], np.nan), centre, n_r, rings, dip
            )
            for x in M_implied_noisy
        ]
        ri = int(np.nanargmax(m_e["D"]))
        ring_n95 = np.nanpercentile([m["ring"] for m in m_n], 95, axis=0)
        j = int(np.nanargmax(m_e["ring"] - ring_n95))
        c.update(
            what=f"cluster {cl} ({n_m} comp.)",
            match=f"phase {ph} (positions)",
            cluster=True,
            phase=ph,
            imp_r=ri,
            imp_depth=float(m_e["D"][ri]),
            imp_at_r=float(m_i["D"][ri]),
            imp_noise95=float(np.percentile([np.nanmax(m["D"]) for m in m_n], 95)),
            imp_ring_r=rings[j],
            imp_ring=float(m_e["ring"][j]),
            imp_ring_at=float(m_i["ring"][j]),
            imp_ring_noise95=float(ring_n95[j]),
        )
        rows.append(c)
    # the aligned mean model pattern of each cluster's positions (cdiff_mean_patterns)
    # against the same aligned mean of the true (clean) patterns of those positions,
    # and of the data (noisy: what a pattern that follows the data shows)
    MP = np.asarray(lr.cdiff_mean_patterns, dtype=np.float64).T.reshape(-1, qy, qx)
    owner = _position_owners(
        np.nansum(Fc, axis=(1, 2)),
        Lc,
        merge_args[1],
        pos,
        ~np.asarray(lr.cdiff_beam_only, dtype=bool),
    )
    align = (owner, pos, MP.shape, merge_args[0], merge_args[2], merge_args[3])
    # on the fit's pixels only, as the model (a rotation must not bring in the masked disk)
    MP_truth = _aligned_means(
        lambda sel: np.where(valid, tr["clean"][sel].mean(axis=0), np.nan), *align
    )
    MP_data = _aligned_means(
        lambda sel: np.where(valid, data[sel].mean(axis=0), np.nan), *align
    )
    for cl in range(MP.shape[0]):
        on = pos == cl
        if not on.any():
            continue
        ph = int(np.bincount(pm[on]).argmax())
        n = int(on.sum())
        c = compare(MP[cl] * n, MP_truth[cl], centre, n_r, rings_of(ph), dip, rng)
        m_d = measures(
            np.where(np.isfinite(MP[cl]), MP_data[cl] * n, np.nan),
            centre,
            n_r,
            rings_of(ph),
            dip,
        )
        ring_i = rings_of(ph).index(c["ring_r"])
        c.update(
            what=f"mean {cl} ({n} pos.)",
            match=f"phase {ph}; data: radial {m_d['D'][c['r']]:.3f}, "
            f"azim. {m_d['ring'][ring_i]:.2f}, beam-edge {m_d['edge'] / c['edge_truth']:.2f}",
            mean=True,
            phase=ph,
        )
        rows.append(c)
    # the model's counts on the glass far from every grain (>= 5 steps, Chebyshev)
    # that components outside the glass's cluster carry: their maps' floors
    far = ~binary_dilation(tr["labels"] > 0, iterations=4, structure=np.ones((3, 3)))
    counts = np.nan_to_num(Lc[:, far.ravel()]).sum(axis=1) * np.nansum(
        Fc.reshape(kc, -1), axis=1
    )
    glass_comp = np.flatnonzero(np.isin(merge_args[1], glass_clusters))
    others = np.setdiff1d(np.arange(kc), glass_comp)
    far_share = float(counts[others].sum() / max(counts.sum(), 1e-300))
    # the model's level: its counts over the data's on the fitted pixels (all positions)
    level = float(
        (np.nansum(L, axis=1) @ np.nan_to_num(F.reshape(k, -1))[:, valid.ravel()]).sum()
        / data.reshape(len(data), -1)[:, valid.ravel()].sum()
    )
    return {
        "case": name,
        "k": k,
        "rows": rows,
        "far_share": far_share,
        "level": level,
        "far_positions": int(far.sum()),
        "halo": halo,
        "beam_r": beam_r,
        "mask_r": float(par.get("direct_beam_mask_radius_px") or 0.0),
        "dip_r": dip_r,
        "scale": scale,
        "units": units,
        "wall": wall,
        "kind": tr["kind"],
        "rebuild": rebuild,
        "ari": ari,
        "beam_ratio": beam_ratio,
        "spot_corr": spot_corr,
    }


# --------------------------------------------------------------------------- report
HEADER = (
    "| pattern | truth | deepest radial valley r px (units) | depth est / truth at r (fraction) "
    "| truth deepest (r) / +noise95 | chord depth r: est / truth at r, truth deepest / +noise95 "
    "| beam-edge level est/truth (r0) "
    "| deepest azimuthal excess ring r | azim. est / truth / +noise95 | dip est / truth / +noise95 |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def fmt_row(c, scale, units):
    return (
        f"| {c['what']} | {c['match']} | {c['r']} ({c['r'] * scale:.3g} {units}) "
        f"| {c['depth']:.3f} / {c['truth_at_r']:.3f} ({c['frac']:.2f} / {c['truth_frac_at_r']:.2f}) "
        f"| {c['truth_max']:.3f} ({c['truth_r']}) / {c['noise95']:.3f} "
        f"| {c['rc']}: {c['chord']:.3f} / {c['chord_truth_at_r']:.3f}, {c['chord_truth_max']:.3f} / {c['chord_noise95']:.3f} "
        f"| {c['edge']:.2f} ({c['r0']}) "
        f"| {c['ring_r']} | {c['ring']:.2f} / {c['ring_truth']:.2f} / {c['ring_noise95']:.2f} "
        f"| {c['dip']:.4f} / {c['dip_truth']:.4f} / {c['dip_noise95']:.4f} |"
    )


def summary_row(res):
    """One line per run: how many patterns are deeper than truth + noise, and the worst."""

    def worst(rows, key, noise):
        excess = [c[key] - c[noise] for c in rows]
        if not rows:
            return "–"
        c = rows[int(np.argmax(excess))]
        n = sum(e > 0 for e in excess)
        where = f" r {c['r']}" if key == "depth" else f" ring {c['ring_r']}"
        truth = c["truth_at_r"] if key == "depth" else c["ring_truth"]
        return (
            f"{n}/{len(rows)}; {c['what'].split(' (')[0]}: {c[key]:.3f} / {truth:.3f} / "
            f"{c[noise]:.3f}{where}"
        )

    factors = [c for c in res["rows"] if not c.get("cluster") and not c.get("mean")]

    def implied(rows):
        excess = [c["implied_depth"] - c["implied_noise95"] for c in rows]
        c = rows[int(np.argmax(excess))]
        return (
            f"{sum(e > 0 for e in excess)}/{len(rows)}; {c['what']}: {c['implied_depth']:.3f} / "
            f"{c['implied_data_at_r']:.3f} / {c['implied_at_r']:.3f} / {c['implied_noise95']:.3f} "
            f"r {c['implied_r']}"
        )

    def against_members_data(rows):
        """The two cells of the merged grain clusters against their members' data."""
        if not rows:
            return "–", "–"
        out = []
        for key, at, noise, where in (
            ("imp_depth", "imp_at_r", "imp_noise95", "imp_r"),
            ("imp_ring", "imp_ring_at", "imp_ring_noise95", "imp_ring_r"),
        ):
            excess = [c[key] - c[noise] for c in rows]
            c = rows[int(np.argmax(excess))]
            word = "r" if where == "imp_r" else "ring"
            out.append(
                f"{sum(e > 0 for e in excess)}/{len(rows)}; {c['what'].split(' (')[0]}: "
                f"{c[key]:.3f} / {c[at]:.3f} / {c[noise]:.3f} {word} {c[where]}"
            )
        return tuple(out)

    grains = [c for c in res["rows"] if c.get("cluster") and c["phase"] != 0]
    matrix = [c for c in res["rows"] if c.get("cluster") and c["phase"] == 0]
    means = [c for c in res["rows"] if c.get("mean")]
    edge = min((c["edge"] for c in grains), default=np.nan)
    grain_means = [c for c in means if c["phase"] != 0]
    low = min(grain_means, key=lambda c: c["edge"] - c["edge_noise05"], default=None)
    mean_edge = (
        "–"
        if low is None
        else f"{sum(c['edge'] < c['edge_noise05'] for c in grain_means)}/{len(grain_means)}; "
        f"{low['edge']:.2f} / {low['edge_noise05']:.2f}"
    )
    return (
        f"| {res['case']} | {res['k']} | {worst(factors, 'depth', 'noise95')} "
        f"| {implied(factors)} "
        f"| {worst(grains, 'depth', 'noise95')} | {worst(matrix, 'depth', 'noise95')} "
        f"| {worst(grains, 'ring', 'ring_noise95')} | {worst(matrix, 'ring', 'ring_noise95')} "
        f"| {edge:.2f} | {res['far_share']:.2f} "
        f"| {worst(means, 'depth', 'noise95')} | {worst(means, 'ring', 'ring_noise95')} "
        f"| {mean_edge} | {res['level']:.3f} "
        f"| {' | '.join(against_members_data(grains))} |"
    )


SUMMARY_HEADER = (
    "| case | k | factors: radial | factors: radial, against the clean data's patterns for their maps "
    "| merged grain clusters: radial | merged matrix cluster: radial "
    "| grain clusters: azimuthal | matrix cluster: azimuthal | grain clusters: beam-edge level (min) "
    "| far glass: others' share | mean patterns: radial | mean patterns: azimuthal "
    "| mean patterns of grains: beam-edge level | model / data counts "
    "| merged grain clusters against the clean data's patterns for their members' maps: radial "
    "| the same: azimuthal |\n"
    "|---|---:|---|---|---|---|---|---|---:|---:|---|---|---|---:|---|---|"
)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cases", nargs="+", help="substrings of case names (default: all)")
    p.add_argument(
        "--k", nargs="+", default=["true", "2x"], help="'true', '2x' or integers"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fit",
        default="{}",
        help="extra decomposition arguments as JSON, e.g. '{\"direct_beam_mask\": false}'",
    )
    p.add_argument("--out", default=str(HERE / "results" / "quality_valleys.md"))
    p.add_argument(
        "--profiles", action="store_true", help="also print the radial profiles"
    )
    args = p.parse_args(argv)
    if not DATA.is_dir():
        print(f"note: {DATA} not found; only the embedded default runs")
    cmd = (
        "python benchmarks/quality_valleys.py"
        + (f" --cases {' '.join(args.cases)}" if args.cases else "")
        + f" --k {' '.join(args.k)} --seed {args.seed}"
        + (f" --fit '{args.fit}'" if json.loads(args.fit) else "")
    )
    lines = [
        "# Valleys of the fitted and merged patterns against the truth (benchmarks/quality_valleys.py)",
        "",
        f"Command: `{cmd}`",
        "",
        'Default call: `decomposition(algorithm="constrained_nmf", output_dimension=k, random_state=seed'
        + "".join(f", {a}={v!r}" for a, v in json.loads(args.fit).items())
        + ")` then `cluster_diffraction()`. Measures: see the script's docstring. Radial depths are relative to "
        "the profile's maximum over the valid radii (fraction: relative to the level of the lower enclosing "
        "maximum, 1 = black on a log display; chord depth: below the line joining the two maxima); azimuthal depths relative to the ring's maximum; +noise95: 95th percentile of the same "
        f"measure on the truth scaled to the estimate's counts plus Poisson noise ({N_DRAWS} draws). "
        "Beam-edge level: profile at the first radius outside the masked disk over the profile maximum, "
        "estimate / truth. The azimuthal column shows the ring where the estimate exceeds truth+noise95 most.",
        "",
    ]
    summary = []
    for name, make in cases(args.cases):
        for kk in args.k:
            res = analyse(name, make, kk, args.seed, json.loads(args.fit))
            lines += [
                f"## {res['case']}, k = {res['k']}",
                "",
                f"Truth: {res['kind']}. Direct beam radius {res['beam_r']:.2f} px, masked disk "
                f"{res['mask_r']:.2f} px; halo ring {res['halo']} px; dip closing {res['dip_r']:.0f} px; "
                f"fit + clustering {res['wall']:.1f} s. Merged patterns rebuilt from the factors to "
                f"{res['rebuild']:.1e} (max relative difference). Position ARI {res['ari']:.3f}. "
                f"On the glass >= 5 steps (Chebyshev) from every grain ({res['far_positions']} positions), "
                f"components outside the glass's cluster carry {res['far_share']:.2f} of the "
                "model's counts (their maps' floors). "
                + (
                    "Direct-beam disk of the true mean pattern of each phase over the glass's: "
                    + ", ".join(
                        f"phase {p} {v:.3f}" for p, v in res["beam_ratio"].items()
                    )
                    + "."
                    if res["beam_ratio"]
                    else ""
                )
                + "".join(
                    f" Halo ring of matrix cluster {c} against all grains' Bragg spots on it: "
                    f"correlation {v:.2f}."
                    for c, v in res["spot_corr"].items()
                ),
                "",
                HEADER,
            ]
            lines += [fmt_row(c, res["scale"], res["units"]) for c in res["rows"]]
            facs = [c for c in res["rows"] if "implied_depth" in c]
            lines += [
                "",
                "Factors against the clean data's patterns for the same maps (see the docstring):",
                "",
                "| factor | est. deepest radial valley (r px) | the data's patterns at r "
                "| clean data's patterns: at r / deepest (r) "
                f"/ +noise95 ({N_IMPLIED} acquisitions) | cosine est. / clean |",
                "|---|---|---:|---|---:|",
            ] + [
                f"| {c['what']} | {c['implied_depth']:.3f} ({c['implied_r']}) | "
                f"{c['implied_data_at_r']:.3f} | {c['implied_at_r']:.3f} / {c['implied_max']:.3f} ({c['implied_r_max']}) / "
                f"{c['implied_noise95']:.3f} | {c['implied_cos']:.3f} |"
                for c in facs
            ]
            summary.append(summary_row(res))
            lines.append("")
            print("\n".join(lines[-len(res["rows"]) - len(facs) - 12 :]), flush=True)
            if args.profiles:
                with np.printoptions(precision=3, suppress=True, linewidth=200):
                    for c in res["rows"]:
                        top_e, top_t = np.nanmax(c["P_est"]), np.nanmax(c["P_truth"])
                        print(c["what"], "est  ", c["P_est"] / top_e)
                        print(c["what"], "truth", c["P_truth"] / top_t)
    head = [
        "## Summary",
        "",
        "Each cell: patterns deeper than truth + noise95 / patterns; the worst (largest excess "
        "over truth + noise95): estimate / truth at the same radius (ring) / truth + noise95. "
        "Radial: valley depth relative to the profile maximum; azimuthal: relative to the ring "
        "maximum. Beam-edge level: estimate / truth of profile(first radius outside the masked "
        "disk) / profile maximum (below 1: darker around the direct beam than the truth). "
        "Far glass: the share of the model's counts on the glass >= 5 steps (Chebyshev) from every grain "
        "that components outside the glass's cluster carry (0 in the truth). "
        "Mean patterns (`cdiff_mean_patterns`, the aligned mean of the model over each cluster's "
        "positions) against the aligned mean of the clean patterns of the same positions; their "
        "beam-edge cell: grain clusters below the 5th percentile of truth + noise / clusters; the "
        "lowest against that percentile (estimate / noise05). The rows name the same measures "
        "on the data's (noisy) aligned mean. Model / data counts: the model's counts "
        "(loadings times factors) over the data's on the fitted detector pixels, all positions. "
        "Factors against the clean data's patterns for their maps: factors deeper than the 95th "
        "percentile of the same patterns from Poisson acquisitions of the clean data / factors; the "
        "worst: estimate / the (noisy) data's patterns for the same maps / the clean data's, at the "
        "same radius / +noise95. "
        "Merged grain clusters against the clean data's patterns for their members' maps: the "
        "same merge (rotations, mirrors, summed-loading weights) of those patterns; the noise: "
        "the 95th percentile of the same measure on the merge of the patterns that each Poisson "
        "acquisition of the clean data gives; the worst: estimate / that merge / +noise95.",
        "",
        SUMMARY_HEADER,
        *summary,
        "",
    ]
    lines = lines[:6] + head + lines[6:]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
