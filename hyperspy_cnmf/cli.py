"""Command-line entry point ``hyperspy-cnmf``.

``hyperspy-cnmf demo [--output DIR] [--quick]``
    The main job on the embedded simulated dataset (nanocrystalline
    precipitates in an amorphous matrix, with ground truth): PCA (HyperSpy
    SVD) versus primitive NMF (both constraints off) versus constrained NMF,
    then rotation-invariant clustering of an over-complete constrained run.
    Writes PNG figures and ``report.md`` with the measured numbers.

``hyperspy-cnmf run FILE [options]``
    Constrained NMF and diffraction clustering of a 4D-STEM file
    (``.hspy``, ``.zspy``, ``.mib``, ``.blo``, ``.emd``, fpd HDF5, py4DSTEM
    EMD 1.0, ...). Writes the factors, loadings, learning results, cluster
    signals, figures and ``report.md``.

Errors in the input (missing file, data that are not 4D-STEM, a damaged file,
bad options, an output folder that cannot be written) end with exit status 2
and a one-line message; Ctrl-C ends with one line and exit status 130. Set
``HYPERSPY_CNMF_DEBUG=1`` for the traceback.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

PROG = "hyperspy-cnmf"


class _UsageError(Exception):
    """An input error: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------
# option parsing helpers
# --------------------------------------------------------------------------
def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {text!r}"
        ) from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive number, got {text!r}"
        ) from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _map_resolution(text):
    t = text.strip().lower()
    if t == "auto":
        return "auto"
    if t in ("none", "off"):
        return None
    try:
        return _positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto', 'none' or a probe FWHM in navigation units, got {text!r}"
        ) from None


def _auto_or_float(text):
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return _positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or a positive number, got {text!r}"
        ) from None


def _threshold(text):
    if text.strip().lower() == "gap":
        return "gap"
    try:
        return _positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected 'gap' or a positive pseudo-distance, got {text!r}"
        ) from None


def _check_output(folder):
    """Check, before any data are read, that ``folder`` can be created and written to.

    Nothing is left behind: an existing folder is tested with a temporary file,
    a new one through its nearest existing parent with a temporary folder.
    """
    import tempfile

    out = Path(folder)
    base = out
    while not base.exists() and base.parent != base:
        base = base.parent
    if base.exists() and not base.is_dir():
        what = (
            "is a file"
            if base == out
            else f"cannot be created: {str(base)!r} is a file"
        )
        raise _UsageError(f"output folder {str(folder)!r} {what}, not a folder")
    try:
        if base == out:
            with tempfile.TemporaryFile(dir=out):
                pass
        else:
            os.rmdir(tempfile.mkdtemp(dir=base))
    except OSError as err:
        verb = "written to" if base == out else "created"
        raise _UsageError(
            f"output folder {str(folder)!r} cannot be {verb}: "
            f"{err.strerror or err} ({str(base)!r})"
        ) from None
    return out


#: Modules whose frames in a traceback mean that the data file was being read.
_READER_MODULES = (
    "zarr",
    "numcodecs",
    "h5py",
    "rsciio",
    "hdf5plugin",
    "tifffile",
    "blosc",
    "blosc2",
)


def _reading_error(err):
    """True if ``err`` was raised while the data were read (zarr, numcodecs, h5py, ...), not written."""
    tb, reading = err.__traceback__, False
    while tb is not None:
        code = tb.tb_frame.f_code
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if code.co_name in (
            "file_writer",
            "save",
        ):  # HyperSpy's and RosettaSciIO's writers
            return False
        reading = reading or module.split(".")[0] in _READER_MODULES
        tb = tb.tb_next
    return reading


def _error_message(err, args):
    """The one-line message for ``err``, or None for an unexpected error (traceback)."""
    text = str(err).splitlines()[0] if str(err).strip() else ""
    file = getattr(args, "file", None)
    if file is not None and not isinstance(err, _UsageError) and _reading_error(err):
        return (
            f"cannot read the data of {file!r} (damaged or incomplete file?): "
            f"{type(err).__name__}: {text or 'no message'}"
        )
    if isinstance(
        err,
        (
            _UsageError,
            FileNotFoundError,
            ValueError,
            ImportError,
            NotImplementedError,
            TypeError,
        ),
    ):
        if isinstance(err, FileNotFoundError) and not text:
            return "file not found"
        return text or type(err).__name__
    if isinstance(err, (OSError, RuntimeError)):
        return f"{type(err).__name__}: {text}" if text else type(err).__name__
    return None


def _setup_matplotlib():
    import matplotlib

    matplotlib.use("agg")


# --------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------
# Both NMF comparison runs fit every detector pixel (direct_beam_mask=False), as PCA does, so
# that the MSE and the matched cosines against the true patterns (beam included) compare like
# with like.
_DEMO_NMF_RUNS = (
    # the paper's primitive NMF: plain least squares, no constraint
    (
        "primitive NMF",
        dict(
            map_resolution=None,
            diffraction_constraint=False,
            separate_components=False,
            normalize_poissonian_noise=False,
            direct_beam_mask=False,
        ),
    ),
    # counting data: Poisson weighting (the default; see the README's guide)
    (
        "constrained NMF",
        dict(normalize_poissonian_noise=True, direct_beam_mask=False),
    ),
)

_DEMO_HEADER = [
    "method",
    "MSE",
    "max negative fraction",
    "max dip",
    "max map power beyond 1/probe",
    "mean matched cosine",
    "min matched cosine",
    "time (s)",
]

_DEMO_CLUSTER_HEADER = [
    "components",
    "clusters",
    "true phases (incl. matrix)",
    "threshold 1-CC",
    "clear components",
    "ARI clear components vs phase",
    "ARI positions vs phase map",
    "time (s)",
]

_DEMO_MEASURES_NOTE = (
    "MSE: mean squared reconstruction error per data entry (counts²). Negative fraction: share of a "
    "pattern's absolute intensity that is negative (PCA's non-physical intensities). Dip: fraction of "
    "a pattern's intensity missing in downward-convex holes (azimuthal closing, radius 2 px). Map power "
    "beyond 1/probe: share of a map's power at spatial frequencies finer than the probe (noise). "
    "Matched cosine: similarity of each true pattern to its Hungarian-matched estimate."
)

_DEMO_CLUSTER_NOTE = (
    "ARI: adjusted Rand index (1 = identical to the truth). Components: cluster vs true phase of the "
    "*clear* components, those whose map correlates > 0.9 with one true component's map (the others "
    "are pieces of the matrix or direct-beam components, with no single true phase). Positions: "
    "dominant cluster vs the true phase map."
)


def _demo(args):
    """The ``demo`` sub-command: simulate, compare, measure, cluster, report."""
    _setup_matplotlib()
    t_start = time.perf_counter()
    out = _check_output(args.output)
    out.mkdir(parents=True, exist_ok=True)
    s, max_iter = _demo_data(args)
    k = int(s.metadata.Simulation.n_components)
    k_cluster = args.components or 2 * k  # deliberately over-complete, as in the paper
    runs = _demo_decompositions(s, k, max_iter)
    measured = _demo_measures(s, runs, out)
    clustered = _demo_clustering(s, k_cluster, max_iter, out)
    _demo_report(args, s, out, measured, clustered)
    print(f"\nwrote {out / 'report.md'} ({time.perf_counter() - t_start:.1f} s)")
    return 0


def _demo_data(args):
    """The simulated dataset (reduced with ``--quick``) and the iteration limit; prints it."""
    from hyperspy_cnmf.data import simulated_precipitates

    if args.quick:
        import warnings

        from hyperspy_cnmf.nmf import ConvergenceWarning

        warnings.simplefilter("ignore", ConvergenceWarning)
        s = simulated_precipitates(
            scan_shape=(24, 24),
            detector_shape=(32, 32),
            n_grains=3,
            grain_diameter=4.0,
            random_state=args.seed,
        )
        max_iter = 30
    else:
        s = simulated_precipitates(random_state=args.seed)
        max_iter = 200
    T = s.metadata.Simulation
    k = int(T.n_components)
    print(
        f"Simulated 4D-STEM: {s} with {k} true components "
        f"({T.phase_names.split(',')[0]} matrix + {k - 1} grains of {len(set(T.phase_of_component)) - 1} phases)"
    )
    return s, max_iter


def _demo_decompositions(s, k, max_iter):
    """The compared runs, PCA (SVD), primitive and constrained NMF: {name: (signal, seconds)}."""
    runs = {}
    # PCA: HyperSpy's own SVD, truncated to k components
    t0 = time.perf_counter()
    pca = s.deepcopy()
    pca.decomposition(algorithm="SVD", output_dimension=k, print_info=False)
    pca.learning_results.crop_decomposition_dimension(k)
    runs["PCA (SVD)"] = (pca, time.perf_counter() - t0)
    for name, kw in _DEMO_NMF_RUNS:
        print(f"{name} ...")
        t0 = time.perf_counter()
        r = s.deepcopy()
        r.decomposition(
            algorithm="constrained_nmf",
            output_dimension=k,
            random_state=0,
            max_iter=max_iter,
            print_info=False,
            show_progressbar=True,
            **kw,
        )
        runs[name] = (r, time.perf_counter() - t0)
    return runs


def _demo_measures(s, runs, out):
    """Measured numbers and figures of the compared runs: table rows and figure paths."""
    import numpy as np

    from hyperspy_cnmf import report as rp
    from hyperspy_cnmf._beam import Beam
    from hyperspy_cnmf.constraints import (
        DiffractionDipConstraint,
        dip_measure,
        map_power_beyond,
    )

    T = s.metadata.Simulation
    scale = rp.nav_scale(s)
    probe = float(T.probe_fwhm_nm)
    sig_shape = s.axes_manager._signal_shape_in_array
    # the simulation's truth is in array order (row, column): its beam, x first
    dip_c = DiffractionDipConstraint(
        sig_shape, radius=2, centre=Beam(x=T.centre_px[1], y=T.centre_px[0])
    )
    rows, figs, maps, dips_all, losses, poisson = [], [], {}, {}, {}, {}
    print("measuring and plotting the three decompositions ...")
    for name, (r, dt) in runs.items():
        F, L = rp.components(r)
        is_nmf = name != "PCA (SVD)"
        dips = dip_measure(np.clip(F, 0, None), dip_c) if is_nmf else None
        power = map_power_beyond(L, probe, scale)
        cos = rp.matched_cosine(F, T.patterns)
        rows.append(
            [
                name,
                rp.reconstruction_mse(r),
                float(rp.negative_fraction(F).max()),
                None if dips is None else float(dips.max()),
                float(power.max()),
                float(cos.mean()),
                float(cos.min()),
                dt,
            ]
        )
        maps[name] = L
        if is_nmf:
            dips_all[name] = dips
            losses[name] = r.learning_results.cnmf_loss
            poisson[name] = bool(r.learning_results.poissonian_noise_normalized)
        fig = rp.plot_components(
            r,
            f"{name}: diffraction patterns (top) and maps (bottom)",
            dips=dips,
            power=power,
        )
        stem = name.split()[0].lower()
        figs.append(rp.save_figure(fig, out / f"{stem}_components.png"))
        print(f"  wrote {figs[-1]}")
    spectra = rp.save_figure(
        rp.plot_map_spectra(maps, scale, probe, units="nm"), out / "map_spectra.png"
    )
    dipfig = rp.save_figure(rp.plot_dips(dips_all), out / "dips.png")
    lossfig = rp.save_figure(rp.plot_loss(losses, poisson), out / "loss.png")
    return {"rows": rows, "figs": figs, "spectra": spectra, "dips": [dipfig, lossfig]}


def _demo_clustering(s, k_cluster, max_iter, out):
    """Over-complete constrained run and its clustering (the paper's workflow), against the truth."""
    import numpy as np

    from hyperspy_cnmf import report as rp

    T = s.metadata.Simulation
    print(f"constrained NMF with {k_cluster} components for the clustering ...")
    t0 = time.perf_counter()
    c = s.deepcopy()
    c.decomposition(
        algorithm="constrained_nmf",
        output_dimension=k_cluster,
        random_state=0,
        max_iter=max_iter,
        print_info=False,
        show_progressbar=True,
    )  # the defaults: Poisson-weighted, beam left out
    print("rotation-invariant clustering of the components (cluster_diffraction) ...")
    res = c.cluster_diffraction()
    dt_cluster = time.perf_counter() - t0
    lr = c.learning_results
    _, Lc = rp.clustered_components(c)  # the refit's when the clustering refitted
    clear, comp_phase = rp.clear_component_phases(
        Lc.reshape(len(Lc), -1),
        T.maps,
        T.phase_of_component,
    )
    ari_comp = rp.adjusted_rand_index(
        np.asarray(lr.cdiff_labels)[clear], comp_phase[clear]
    )
    ari_pos = rp.adjusted_rand_index(
        np.asarray(lr.cdiff_position_labels), np.asarray(T.phase_map)
    )
    n_clusters = int(np.max(lr.cdiff_labels)) + 1
    n_phases = len(set(np.asarray(T.phase_of_component).tolist()))
    dend = rp.save_figure(c.plot_cluster_dendrogram(), out / "dendrogram.png")
    gallery = rp.save_figure(c.plot_cluster_gallery(), out / "cluster_gallery.png")
    res["merged_factors"].save(out / "cluster_merged_diffraction.hspy", overwrite=True)
    res["mean_patterns"].save(out / "cluster_mean_patterns.hspy", overwrite=True)
    row = [
        _clustered_components_text(lr, k_cluster),
        n_clusters,
        n_phases,
        float(lr.cdiff_threshold),
        int(clear.sum()),
        ari_comp,
        ari_pos,
        dt_cluster,
    ]
    return {"row": row, "figs": [dend, gallery]}


def _demo_report(args, s, out, measured, clustered):
    """Print the two tables and write ``report.md``."""
    from hyperspy_cnmf import report as rp

    T = s.metadata.Simulation
    k = int(T.n_components)
    table = rp.markdown_table(_DEMO_HEADER, measured["rows"])
    cl_table = rp.markdown_table(_DEMO_CLUSTER_HEADER, [clustered["row"]])
    print("\n" + table + "\n\n" + cl_table)
    data = (
        f"`{s}`: {k} true components ({T.phase_names}), probe FWHM {float(T.probe_fwhm_nm)} nm, "
        f"scan step {T.scan_step_nm} nm, dose {T.dose:g} counts/position, seed {args.seed}."
        + (" Quick (reduced) run." if args.quick else "")
    )
    rp.write_report(
        out / "report.md",
        "hyperspy-cnmf demo: PCA vs primitive NMF vs constrained NMF",
        [
            ("Data", data),
            ("Measured numbers", [table, _DEMO_MEASURES_NOTE]),
            ("Decompositions", measured["figs"]),
            ("Map Fourier spectra and the resolution circle", [measured["spectra"]]),
            ("Dips and convergence", measured["dips"]),
            (
                "Rotation-invariant clustering",
                [cl_table, _DEMO_CLUSTER_NOTE, *clustered["figs"]],
            ),
        ],
    )


# --------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------
def _beam_mask(mean_pattern, radius):
    """Direct-beam disk mask (True = excluded) and the masked disk of the mean pattern.

    The disk is a :class:`~hyperspy_cnmf._beam.Beam` ``(x, y, radius)`` px:
    the beam's centre and the mask's radius.
    """
    import numpy as np

    from hyperspy_cnmf.signals._calibration import find_beam_disk

    beam = find_beam_disk(mean_pattern)
    disk = beam._replace(
        radius=np.ceil(beam.radius) + 1.0 if radius == "auto" else float(radius)
    )
    qy, qx = mean_pattern.shape
    yy, xx = np.mgrid[:qy, :qx]
    mask = (yy - disk.y) ** 2 + (xx - disk.x) ** 2 <= disk.radius**2
    return mask, disk


def _overview_data(s):
    """The mean pattern and the total intensity image, from one read of the data.

    Both are reductions (small results); a lazy signal computes them together,
    so that the chunks are read once, never the whole array at a time.
    """
    am = s.axes_manager
    mean = s.mean(axis=am.navigation_axes)
    total = s.sum(axis=am.signal_axes)
    if not s._lazy:
        return mean.data, total.data
    import dask

    return dask.compute(mean.data, total.data)


def _plot_overview(s, mean_pattern, img, path):
    import matplotlib.pyplot as plt
    import numpy as np

    from hyperspy_cnmf import report as rp

    sx, sy = (rp.axis_info(a) for a in s.axes_manager.signal_axes)
    nx_, ny_ = (rp.axis_info(a) for a in s.axes_manager.navigation_axes)
    fig, ax = plt.subplots(1, 2, figsize=(9.5, 4.2), layout="constrained")
    p = np.nan_to_num(np.asarray(mean_pattern, dtype=float))
    pos = p[p > 0]
    from matplotlib.colors import LogNorm

    norm = LogNorm(
        vmin=max(float(np.percentile(pos, 5)) if pos.size else 1e-3, p.max() * 1e-4),
        vmax=p.max() or 1,
    )
    im = ax[0].imshow(
        np.clip(p, norm.vmin, None),
        norm=norm,
        cmap="inferno",
        extent=rp._extent(sx, sy),
    )
    fig.colorbar(im, ax=ax[0], label="mean counts / pixel")
    ax[0].set_title("Mean diffraction pattern (log)")
    ax[0].set_xlabel(rp._label(sx))
    ax[0].set_ylabel(rp._label(sy))
    im = ax[1].imshow(img, cmap="gray", extent=rp._extent(nx_, ny_))
    fig.colorbar(im, ax=ax[1], label="counts")
    ax[1].set_title("Total intensity per probe position")
    ax[1].set_xlabel(rp._label(nx_))
    ax[1].set_ylabel(rp._label(ny_))
    fig.suptitle(str(s.metadata.General.title))
    return rp.save_figure(fig, path)


def _run(args):
    """The ``run`` sub-command: load, decompose, measure, cluster, write the results and report."""
    _setup_matplotlib()
    t_start = time.perf_counter()
    out = _check_output(args.output)  # before the data are read
    s = _run_load(args)
    out.mkdir(parents=True, exist_ok=True)
    mean_pattern, signal_mask, beam, figs = _run_overview(s, args, out)
    info, dt_nmf = _run_decomposition(s, args, signal_mask)
    m = _run_measures(s, mean_pattern, signal_mask, beam)
    figs += _run_figures(s, args.components, m, out)
    fmt = args.format
    written = list(
        s.export_decomposition_results(
            folder=out, factor_format=fmt, loading_format=fmt
        )
    )
    cluster_rows = _run_clustering(s, args, beam, out, written, figs)
    # after the clustering, so that the cdiff_* results are included
    s.learning_results.save(str(out / "learning_results.npz"), overwrite=True)
    written.append(out / "learning_results.npz")
    rows = _run_rows(s, args, info, m, dt_nmf)
    _run_report(s, args, out, rows, cluster_rows, figs, written)
    print(_quantity_table(rows))
    print(
        f"\nwrote {len(written)} result files, {len(figs)} figures and {out / 'report.md'} "
        f"({time.perf_counter() - t_start:.1f} s)"
    )
    return 0


def _run_load(args):
    """The data file, read lazily or not, with ``--components`` checked against its shape."""
    import numpy as np

    from hyperspy_cnmf.io import load

    lazy = {"lazy": True, "eager": False}.get(args.mode)
    s = load(args.file, lazy=lazy, bin_signal=args.bin)
    am = s.axes_manager
    n_pos = int(np.prod(am._navigation_shape_in_array))
    n_pix = int(np.prod(am._signal_shape_in_array))
    k = args.components
    if k > min(n_pos, n_pix):
        raise _UsageError(
            f"--components {k} is larger than min(probe positions, detector pixels) = "
            f"{min(n_pos, n_pix)}"
        )
    print(f"Loaded {s} ({'lazy' if s._lazy else 'in memory'}, dtype {s.data.dtype})")
    return s


def _run_overview(s, args, out):
    """One read for the mean pattern and total image: beam mask, overview figure."""
    signal_mask, beam = None, None
    mean_pattern, total_image = _overview_data(s)  # one read
    if args.signal_mask_beam is not None:
        signal_mask, beam = _beam_mask(mean_pattern, args.signal_mask_beam)
        print(
            f"Masking the direct beam: centre (x, y) = ({beam.x:.1f}, {beam.y:.1f}) px, "
            f"radius {beam.radius:g} px ({int(signal_mask.sum())} pixels)"
        )
    figs = [_plot_overview(s, mean_pattern, total_image, out / "overview.png")]
    return mean_pattern, signal_mask, beam, figs


def _run_decomposition(s, args, signal_mask):
    """The constrained NMF with the command's options: its info dict and its time (s)."""
    t0 = time.perf_counter()
    info = s.decomposition(
        algorithm="constrained_nmf",
        output_dimension=args.components,
        solver=args.solver,
        max_iter=args.max_iter,
        map_resolution=args.map_resolution,
        diffraction_constraint=not args.no_diffraction_constraint,
        diffraction_constraint_size=args.dip_size,
        signal_mask=signal_mask,
        normalize_poissonian_noise=args.poisson,
        random_state=args.seed,
        print_info=True,
        return_info=True,
        show_progressbar=True,
    )
    return info, time.perf_counter() - t0


def _run_measures(s, mean_pattern, signal_mask, beam):
    """Residuals (model and mean-pattern baseline), dip measures and map power of the run."""
    import numpy as np

    from hyperspy_cnmf import report as rp
    from hyperspy_cnmf.constraints import (
        DiffractionDipConstraint,
        dip_measure,
        map_power_beyond,
    )
    from hyperspy_cnmf.signals._calibration import find_beam_disk

    am = s.axes_manager
    lr = s.learning_results
    F, L = rp.components(s)
    # the model's and the baseline's residuals: one read (the mean pattern is known)
    mse, baseline = rp.model_mse(
        s,
        signal_mask=signal_mask,
        baseline=True,
        baseline_mask=lr.signal_mask,
        mean_pattern=mean_pattern,
    )
    dip_r = float(lr.cnmf_diffraction_constraint_size)
    valid = None if signal_mask is None else ~signal_mask
    dip_c = DiffractionDipConstraint.from_beam(
        find_beam_disk(mean_pattern) if beam is None else beam,
        am._signal_shape_in_array,
        dip_r if np.isfinite(dip_r) else "auto",
        valid=valid,  # constraint off: the decomposition's default
    )
    dips = dip_measure(np.clip(np.nan_to_num(F), 0, None), dip_c)
    resolution = float(lr.cnmf_map_resolution)
    power = None
    scale = rp.nav_scale(s)
    nav_units = rp.axis_info(am.navigation_axes[0])["units"]
    if np.isfinite(resolution):
        power = map_power_beyond(L, resolution, scale)
    return dict(
        F=F,
        L=L,
        mse=mse,
        baseline=baseline,
        dips=dips,
        resolution=resolution,
        power=power,
        scale=scale,
        nav_units=nav_units,
    )


def _run_figures(s, k, m, out):
    """Components, map spectra (map constraint on), dips and loss figures: their paths."""
    from hyperspy_cnmf import report as rp

    lr = s.learning_results
    show = min(k, 12)
    figs = [
        rp.save_figure(
            rp.plot_components(
                s,
                f"Constrained NMF of {s.metadata.General.title}: patterns (top), maps (bottom)",
                dips=m["dips"],
                power=m["power"],
                max_components=show,
            ),
            out / "components.png",
        )
    ]
    if m["power"] is not None:
        figs.append(
            rp.save_figure(
                rp.plot_map_spectra(
                    {"constrained NMF": m["L"]},
                    m["scale"],
                    m["resolution"],
                    units=m["nav_units"],
                    max_components=show,
                ),
                out / "map_spectra.png",
            )
        )
    figs.append(
        rp.save_figure(rp.plot_dips({"constrained NMF": m["dips"]}), out / "dips.png")
    )
    figs.append(
        rp.save_figure(
            rp.plot_loss(
                {"constrained NMF": lr.cnmf_loss}, bool(lr.poissonian_noise_normalized)
            ),
            out / "loss.png",
        )
    )
    return figs


def _run_clustering(s, args, beam, out, written, figs):
    """Cluster the components (k >= 2): signals into ``written``, figures into ``figs``; table rows."""
    import numpy as np

    from hyperspy_cnmf import report as rp

    k = args.components
    if k < 2:
        print("Only one component: no clustering.")
        return []
    t0 = time.perf_counter()
    kw = {}
    if args.clusters is not None:
        kw["n_clusters"] = min(args.clusters, k)
    elif args.distance_threshold is not None:
        kw["distance_threshold"] = args.distance_threshold
    if beam is not None:
        kw.update(centre=beam.xy, units="px", direct_beam_radius=beam.radius)
    if args.no_refit:
        kw["refit"] = False
    res = s.cluster_diffraction(**kw)
    dt_cl = time.perf_counter() - t0
    for key, stem in (
        ("merged_factors", "cluster_merged_diffraction"),
        ("mean_patterns", "cluster_mean_patterns"),
        ("merged_maps", "cluster_maps"),
        ("position_labels", "cluster_position_labels"),
        ("labels", "cluster_labels"),
        ("refit_factors", "cluster_refit_factors"),
        ("refit_loadings", "cluster_refit_loadings"),
    ):
        path = out / f"{stem}.{args.format}"
        if key in res:
            res[key].save(path, overwrite=True)
            written.append(path)
        elif path.is_file():  # an earlier run's (e.g. its refit), not this one's
            path.unlink()
    figs.append(rp.save_figure(s.plot_cluster_dendrogram(), out / "dendrogram.png"))
    figs.append(rp.save_figure(s.plot_cluster_gallery(), out / "cluster_gallery.png"))
    lr = s.learning_results
    n_c = int(np.max(lr.cdiff_labels)) + 1
    return [[_clustered_components_text(lr, k), n_c, float(lr.cdiff_threshold), dt_cl]]


def _clustered_components_text(lr, k):
    """``k``, or ``"k (refit n)"`` when the clustering refitted ``n`` components (``refit="auto"``)."""
    n = json.loads(str(lr.cdiff_parameters)).get("refit_components", 0)
    return f"{k} (refit {n})" if n else k


def _run_rows(s, args, info, m, dt_nmf):
    """The report's measured numbers: [quantity, value] rows."""
    import numpy as np

    from hyperspy_cnmf.signals._store import loss_label

    lr = s.learning_results
    resolution, nav_units, power = m["resolution"], m["nav_units"], m["power"]
    return [
        [
            "data",
            f"{tuple(s.data.shape)} {s.data.dtype}" + (" (lazy)" if s._lazy else ""),
        ],
        ["components k", args.components],
        ["solver", args.solver],
        [
            "iterations (sketch + supports + exact)",
            f"{info['n_iter_sketch']} + {info.get('n_iter_support', 0)} + {info['n_iter']}",
        ],
        [
            "converged",
            "sketch to tol; exact refinement of "
            f"{info['n_iter']} iterations (max_exact_iter={info['max_exact_iter']})"
            if info.get("sketch_converged") and not info["converged"]
            else info["converged"],
        ],
        [
            f"final loss ({loss_label(info['normalize_poissonian_noise'])})",
            info["final_loss"],
        ],
        ["reconstruction MSE (counts²)", m["mse"]],
        ["mean-pattern model MSE (baseline)", m["baseline"]],
        [
            "map resolution",
            f"{resolution:.4g} {nav_units} ({info['map_resolution_method']})"
            if np.isfinite(resolution)
            else "off",
        ],
        [
            "max map power beyond 1/resolution",
            None if power is None else float(power.max()),
        ],
        ["dip constraint radius (px)", float(lr.cnmf_diffraction_constraint_size)],
        ["max dip measure", float(m["dips"].max())],
        [
            "min factor / min loading",
            f"{np.nanmin(m['F']):.3g} / {np.nanmin(m['L']):.3g}",
        ],
        ["decomposition time (s)", dt_nmf],
    ]


def _run_report(s, args, out, rows, cluster_rows, figs, written):
    """Write ``report.md``: input, measured numbers, clustering, figures and files."""
    from hyperspy_cnmf import report as rp

    options = {k_: v for k_, v in vars(args).items() if k_ != "func"}
    sections = [
        (
            "Input",
            f"`{args.file}` → `{s}`. Options: `{json.dumps(options, default=str)}`",
        ),
        ("Measured numbers", _quantity_table(rows)),
    ]
    if cluster_rows:
        sections.append(
            (
                "Clustering",
                rp.markdown_table(
                    ["components", "clusters", "threshold 1-CC", "time (s)"],
                    cluster_rows,
                ),
            )
        )
    sections.append(("Figures", figs))
    sections.append(("Files", "\n".join(f"- `{Path(p).name}`" for p in written)))
    rp.write_report(
        out / "report.md", f"hyperspy-cnmf run: {Path(args.file).name}", sections
    )


def _quantity_table(rows):
    """The measured numbers as a markdown table."""
    from hyperspy_cnmf import report as rp

    return rp.markdown_table(["quantity", "value"], rows)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def _parser():
    """The command's parser: one sub-parser per sub-command."""
    parser = _Parser(
        prog=PROG,
        description="Constrained NMF and rotation-invariant diffraction clustering "
        "for 4D-STEM (Kimoto et al., Sci. Rep. 15, 39143, 2025).",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = sub.add_parser(
        "demo",
        help="PCA vs primitive vs constrained NMF on the embedded simulated dataset",
    )
    _demo_arguments(demo)

    run = sub.add_parser("run", help="constrained NMF and clustering of a 4D-STEM file")
    _run_arguments(run)
    _run_cluster_output_arguments(run)
    return parser


def _demo_arguments(demo):
    """Options of ``demo``."""
    demo.add_argument(
        "--output", default="cnmf_demo", help="output folder (default: cnmf_demo)"
    )
    demo.add_argument(
        "--seed", type=int, default=0, help="seed of the simulated dataset (default 0)"
    )
    demo.add_argument(
        "--quick", action="store_true", help="small dataset and few iterations (tests)"
    )
    demo.add_argument(
        "-k",
        "--components",
        type=_positive_int,
        default=None,
        help="components of the clustered run (default: twice the true number)",
    )


def _run_arguments(run):
    """Input and decomposition options of ``run`` (the file to ``--poisson``)."""
    run.add_argument(
        "file",
        help="4D-STEM file: .hspy, .zspy, .mib, .blo, .emd, fpd .hdf5, py4DSTEM .h5, ...",
    )
    run.add_argument(
        "-k",
        "--components",
        type=_positive_int,
        default=8,
        help="number of components (default 8)",
    )
    run.add_argument(
        "--solver",
        choices=("hals", "mu", "als"),
        default="hals",
        help="update rule (default hals)",
    )
    run.add_argument(
        "--max-iter",
        type=_positive_int,
        default=200,
        help="maximum iterations (default 200)",
    )
    run.add_argument(
        "--map-resolution",
        type=_map_resolution,
        default="auto",
        help="probe FWHM in navigation units, 'auto' (default) or 'none' (map constraint off)",
    )
    run.add_argument(
        "--no-diffraction-constraint",
        action="store_true",
        help="switch the dip constraint off",
    )
    run.add_argument(
        "--dip-size",
        type=_auto_or_float,
        default="auto",
        help="radius (detector px) of the dip constraint disk, or 'auto' (default)",
    )
    run.add_argument(
        "--signal-mask-beam",
        nargs="?",
        const="auto",
        default=None,
        type=_auto_or_float,
        metavar="RADIUS",
        help="exclude the direct beam (radius in px, default: disk radius + 1)",
    )
    run.add_argument(
        "--bin",
        type=_positive_int,
        default=1,
        help="sum BIN x BIN detector pixels (default 1)",
    )
    run.add_argument(
        "--poisson",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Poisson (Keenan-Kotula) noise normalisation, recommended for counting data "
        "(default: on; --no-poisson for plain least squares)",
    )


def _run_cluster_output_arguments(run):
    """Clustering, output, seed and lazy/eager options of ``run``."""
    grp = run.add_mutually_exclusive_group()
    grp.add_argument(
        "--clusters",
        type=_positive_int,
        default=None,
        help="cut the dendrogram into N clusters",
    )
    grp.add_argument(
        "--distance-threshold",
        type=_threshold,
        default=None,
        help="cut the dendrogram at this pseudo-distance 1-CC, or 'gap' (default 0.3)",
    )
    run.add_argument(
        "--no-refit",
        action="store_true",
        help="cluster the decomposition's own components (the paper's clustering), without "
        "refitting one component per grain found to their model (cluster_diffraction(refit=False))",
    )
    run.add_argument(
        "--output", default="cnmf_run", help="output folder (default: cnmf_run)"
    )
    run.add_argument(
        "--format",
        choices=("hspy", "zspy"),
        default="hspy",
        help="format of the result signals",
    )
    run.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed of the initialisation (default 0)",
    )
    mode = run.add_mutually_exclusive_group()
    mode.add_argument(
        "--lazy",
        dest="mode",
        action="store_const",
        const="lazy",
        help="keep the data on disk (default: lazily above 2 GiB)",
    )
    mode.add_argument(
        "--eager",
        dest="mode",
        action="store_const",
        const="eager",
        help="load the data into memory",
    )


def main(argv=None):
    """Run the ``hyperspy-cnmf`` command; return the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 2 for input, file and output-folder errors (one-line
        message on stderr), 130 after Ctrl-C (one line).
    """
    parser = _parser()
    args = None
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        if args.command == "demo":
            return _demo(args)
        return _run(args)
    except KeyboardInterrupt:
        if os.environ.get("HYPERSPY_CNMF_DEBUG"):
            raise
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        msg = (
            None if os.environ.get("HYPERSPY_CNMF_DEBUG") else _error_message(err, args)
        )
        if msg is None:
            raise
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
