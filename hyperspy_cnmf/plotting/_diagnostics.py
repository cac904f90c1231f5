"""Diagnostic figures of a decomposition (matplotlib only).

The two artifacts the constraints of Kimoto et al., *Sci. Rep.* 15, 39143
(2025) remove, made visible as in the paper's Fig. 1:

- :func:`plot_map_spectra`: every map next to its Fourier transform (log
  power, zero frequency at the centre, axes in calibrated spatial frequency)
  with the resolution circle ``|f| = 1 / resolution`` dotted; power outside
  the circle is high-frequency noise (primitive NMF, PCA), absent from
  constrained maps. The fraction of power beyond the circle is in each title
  (:func:`hyperspy_cnmf.constraints.map_power_beyond`).
- :func:`plot_dip_measure`: the fraction of each factor's intensity missing
  in downward-convex dips (:func:`hyperspy_cnmf.constraints.dip_measure`) as
  a bar chart, optionally for several runs side by side (primitive vs
  constrained) and with the factors of the largest dips shown, the dips
  outlined.

Both take plain arrays and return the :class:`~matplotlib.figure.Figure`
(never ``plt.show()``); the signal methods in
:mod:`hyperspy_cnmf.signals._diagnostics` unpack ``learning_results``.
"""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.patches import Circle

from hyperspy_cnmf.constraints import (
    DiffractionDipConstraint,
    dip_measure,
    map_power_beyond,
    map_power_spectra,
)
from hyperspy_cnmf.plotting._cluster import (
    MASKED_NOTE,
    _diffraction_norm,
    _extent,
    cluster_colors,
    diffraction_cmap,
    label_axes,
    pixel_axes,
)

__all__ = ["plot_dip_measure", "plot_map_spectra"]


def _stack(data, name):
    arr = np.asarray(getattr(data, "data", data), dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(
            f"`{name}` must have shape (k, ny, nx) or (ny, nx), got {arr.shape}."
        )
    return arr


def _signal_axes_info(signal):
    """``[x, y]`` axis descriptions of a HyperSpy signal's signal axes."""
    out = []
    for axis in signal.axes_manager.signal_axes:
        units = str(axis.units)
        name = str(axis.name)
        out.append(
            {
                "name": "" if name in ("", "<undefined>", "None") else name,
                "units": "px" if units in ("", "<undefined>", "None") else units,
                "scale": float(axis.scale),
                "offset": float(axis.offset),
                "size": int(axis.size),
            }
        )
    return out


def _grid(n_items, per_row, rows_per_item, width, height):
    ncols = max(1, min(per_row, n_items))
    nblocks = int(np.ceil(n_items / ncols))
    fig, axes = plt.subplots(
        rows_per_item * nblocks,
        ncols,
        figsize=(width * ncols, height * nblocks),
        layout="constrained",
        squeeze=False,
    )
    slots = [
        [
            axes[rows_per_item * (i // ncols) + j, i % ncols]
            for j in range(rows_per_item)
        ]
        for i in range(n_items)
    ]
    for i in range(n_items, nblocks * ncols):  # unused slots
        for j in range(rows_per_item):
            fig.delaxes(axes[rows_per_item * (i // ncols) + j, i % ncols])
    return fig, slots


def plot_map_spectra(
    maps,
    resolution,
    scale=None,
    *,
    units=None,
    names=None,
    navigation_axes=None,
    per_row=4,
    cmap="viridis",
    spectrum_cmap="gray",
    circle_color="#ff5a36",
    dynamic_range=1e-6,
    title=None,
    map_label="loading",
):
    """Maps and the Fourier transforms of the maps, resolution circle dotted.

    As the paper's Fig. 1: for every component its map (top) and the log
    power spectrum of the map (below; mean removed, Hann window, zero
    frequency at the centre, axes in spatial frequency) with the dotted
    circle ``|f| = 1 / resolution``. Power outside the circle is detail finer
    than the probe, i.e. noise. The title of each spectrum gives the fraction
    of the (non-constant) power beyond the circle,
    :func:`~hyperspy_cnmf.constraints.map_power_beyond`.

    Parameters
    ----------
    maps : array_like, shape (k, ny, nx) or (ny, nx), or BaseSignal
        The maps (HyperSpy *loadings*). A signal (e.g.
        ``s.get_decomposition_loadings()``) brings its scan calibration.
    resolution : float
        Probe size (FWHM) in the units of ``scale``.
    scale : float or (float, float), optional
        Scan step ``(scale_y, scale_x)`` (array order, as
        :class:`~hyperspy_cnmf.constraints.MapResolutionConstraint`); default
        the signal's calibration, else 1.
    units : str, optional
        Length unit of ``scale`` (default the signal's, else "px"); the
        frequencies are in ``1/<units>``.
    names : list of str, optional
        Panel names (default ``"Component i"``).
    navigation_axes : list of dict, optional
        ``[x, y]`` axis descriptions (``name``, ``units``, ``scale``,
        ``offset``, ``size``) for the map panels; overrides ``scale`` and
        ``units``.
    per_row : int, default 4
        Components per row of panel pairs.
    cmap, spectrum_cmap : str
        Colour maps of the maps and of the spectra.
    circle_color : str
        Colour of the dotted resolution circle.
    dynamic_range : float, default 1e-6
        The spectra span ``[dynamic_range, 1]`` times their maximum (log).
    title : str, optional
    map_label : str, default "loading"
        Quantity and unit of the maps, the label of their colour bars (e.g.
        "counts per position" for constrained NMF, whose patterns sum to 1).
        The spectra's colour bars show the power relative to its maximum.

    Returns
    -------
    matplotlib.figure.Figure
        ``2 k`` axes (map, spectrum per component). ``fig.power_beyond``
        holds the fractions shown in the titles.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.plotting import plot_map_spectra
    >>> maps = np.random.default_rng(0).random((2, 32, 32))
    >>> fig = plot_map_spectra(maps, resolution=1.5, scale=0.5, units="nm")
    >>> len(fig.axes)  # map and spectrum of each, and their colour bars
    8
    """
    M = _stack(maps, "maps")
    k, ny, nx = M.shape
    if navigation_axes is None and hasattr(maps, "axes_manager"):
        navigation_axes = _signal_axes_info(maps)
    if navigation_axes is not None:
        scale = (abs(navigation_axes[1]["scale"]), abs(navigation_axes[0]["scale"]))
        units = units or navigation_axes[0]["units"]
    if scale is None:
        scale = (1.0, 1.0)
    elif np.ndim(scale) == 0:
        scale = (float(scale), float(scale))
    scale = (abs(float(scale[0])), abs(float(scale[1])))
    units = units or "px"
    if navigation_axes is None:
        navigation_axes = pixel_axes((ny, nx))
        for info, s_ in zip(navigation_axes, (scale[1], scale[0])):
            info.update(scale=s_, units=units)
    resolution = float(resolution)
    if not np.isfinite(resolution) or resolution <= 0:
        raise ValueError(f"`resolution` must be a positive length, got {resolution}.")
    names = names or [f"Component {i}" for i in range(k)]
    power, fy, fx = map_power_spectra(M, scale)
    beyond = map_power_beyond(M, resolution, scale)
    f_c = 1.0 / resolution
    dfy, dfx = 1.0 / (ny * scale[0]), 1.0 / (nx * scale[1])
    # fy grows downwards, as y in the maps
    spec_ext = (fx[0] - dfx / 2, fx[-1] + dfx / 2, fy[-1] + dfy / 2, fy[0] - dfy / 2)
    map_ext = _extent(navigation_axes)
    funit = f"1/{units}"
    fig, slots = _grid(k, per_row, 2, 3.8, 6.0)  # room for the colour bars
    for i, (ax_m, ax_f) in enumerate(slots):
        im = ax_m.imshow(M[i], cmap=cmap, extent=map_ext, interpolation="nearest")
        fig.colorbar(im, ax=ax_m, shrink=0.8, label=map_label)
        ax_m.set_title(names[i], fontsize="medium")
        label_axes(ax_m, navigation_axes)
        p = power[i]
        vmax = float(p.max()) if p.max() > 0 else 1.0
        im = ax_f.imshow(
            np.maximum(p / vmax, dynamic_range),
            cmap=spectrum_cmap,
            norm=mcolors.LogNorm(vmin=dynamic_range, vmax=1.0),
            extent=spec_ext,
            interpolation="nearest",
        )
        fig.colorbar(im, ax=ax_f, shrink=0.8, label="power / maximum")
        ax_f.add_patch(
            Circle((0.0, 0.0), f_c, fill=False, ls=":", lw=1.8, color=circle_color)
        )
        ax_f.set_xlim(spec_ext[0], spec_ext[1])
        ax_f.set_ylim(spec_ext[2], spec_ext[3])
        ax_f.set_xlabel(f"f_x ({funit})")
        ax_f.set_ylabel(f"f_y ({funit})")
        ax_f.set_title(
            f"FT of the map\npower beyond 1/d: {100 * beyond[i]:.3g} %",
            fontsize="small",
        )
    fig.suptitle(
        title
        or f"Maps and their Fourier transforms (dotted: |f| = 1/d, d = {resolution:.3g} {units})"
    )
    fig.power_beyond = beyond
    fig.resolution_circle_radius = f_c
    return fig


def _as_runs(factors, labels):
    if isinstance(factors, dict):
        runs = {str(k): _stack(v, "factors") for k, v in factors.items()}
    elif isinstance(factors, (list, tuple)):
        labels = labels or [f"Run {i}" for i in range(len(factors))]
        runs = {str(lab): _stack(v, "factors") for lab, v in zip(labels, factors)}
    else:
        runs = {(labels or ["Factors"])[0]: _stack(factors, "factors")}
    shapes = {v.shape[1:] for v in runs.values()}
    if len(shapes) != 1:
        raise ValueError(
            f"all runs must have the same detector shape, got {sorted(shapes)}."
        )
    return runs


def _largest_dips(img, closed, constraint, mark_depth, n_marks, ext, shape):
    """Centres (calibrated) and radius of the ``n_marks`` largest dips."""
    from scipy import ndimage

    p = np.nan_to_num(img)
    gap = np.where(constraint.valid, closed - p, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = np.where(closed > 0, gap / closed, 0.0)
    floor = 0.05 * float(np.percentile(closed[constraint.valid], 99))
    labels, n = ndimage.label((depth > mark_depth) & (gap > floor))
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    missing = ndimage.sum(gap, labels, index)
    order = np.argsort(-missing)[: int(n_marks)]
    centres = ndimage.center_of_mass(gap, labels, index[order])
    sx = (ext[1] - ext[0]) / shape[1]
    sy = (ext[2] - ext[3]) / shape[0]
    rad = (constraint.radius + 1.0) * abs(sx)
    return [
        ((ext[0] + (cx + 0.5) * sx, ext[3] + (cy + 0.5) * sy), rad)
        for cy, cx in centres
    ]


def plot_dip_measure(
    factors,
    constraint,
    *,
    labels=None,
    n_show=0,
    signal_axes=None,
    mark_depth=0.3,
    n_marks=5,
    norm="log",
    cmap="inferno",
    title=None,
):
    """Per-factor dip measure, as bars, optionally for several runs.

    The dip measure of a pattern is the fraction of its intensity missing in
    downward-convex dips: ``sum(close(p) - p) / sum(p)``
    (:func:`~hyperspy_cnmf.constraints.dip_measure`). Primitive NMF carves
    such holes where another component has a Bragg disk or a halo; the
    constrained NMF has none (only a small floor from noise).

    Parameters
    ----------
    factors : array_like (k, qy, qx), BaseSignal, dict or list
        The factors (diffraction patterns) of one run, or several runs to
        compare: a dict ``{label: factors}`` or a list (with ``labels``).
        Runs may have different numbers of factors.
    constraint : DiffractionDipConstraint or float
        The closing that defines a dip: the run's constraint, or a disk
        radius in px (isotropic closing).
    labels : list of str, optional
        Run names when ``factors`` is a list.
    n_show : int, default 0
        Also show, for every run, the ``n_show`` factors with the largest dip
        measure, their largest dips circled in cyan (as the arrows of the
        paper's Fig. 1c).
    signal_axes : list of dict, optional
        ``[x, y]`` detector axis descriptions (``name``, ``units``,
        ``scale``, ``offset``, ``size``); default from a signal, else px.
    mark_depth : float, default 0.3
        A dip is where the intensity lies more than this fraction below the
        closing, and by more than 5 % of the pattern's bright features (its
        99th percentile); connected dips are ranked by their missing
        intensity.
    n_marks : int, default 5
        Dips circled per factor.
    norm : {"log", "gamma", "linear"}, default "log"
        Colour scale of the factors.
    cmap : str, default "inferno"
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        The bar chart is ``fig.axes[0]``; ``fig.dip_measure`` is a dict
        ``{label: ndarray (k,)}`` of the plotted values.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.plotting import plot_dip_measure
    >>> p = np.ones((2, 21, 21)); p[1, 10, 5] = 0.0  # a hole in factor 1
    >>> fig = plot_dip_measure(p, 1.0)
    >>> [round(float(v), 4) for v in fig.dip_measure["Factors"]]
    [0.0, 0.0023]
    """
    runs = _as_runs(factors, labels)
    if signal_axes is None and hasattr(factors, "axes_manager"):
        signal_axes = _signal_axes_info(factors)
    shape = next(iter(runs.values())).shape[1:]
    if not isinstance(constraint, DiffractionDipConstraint):
        constraint = DiffractionDipConstraint(
            shape, float(constraint), mode="isotropic"
        )
    values = {lab: dip_measure(f, constraint) for lab, f in runs.items()}
    n_runs = len(runs)
    palette = cluster_colors(max(n_runs, 2))
    n_show = int(n_show)
    n_rows = 1 + (n_runs if n_show > 0 else 0)
    ncols = max(1, n_show)
    fig = plt.figure(
        figsize=(max(6.4, 2.6 * ncols), 3.6 + 2.7 * (n_rows - 1)), layout="constrained"
    )
    gs = fig.add_gridspec(n_rows, ncols, height_ratios=[1.3] + [1.0] * (n_rows - 1))
    ax = fig.add_subplot(gs[0, :])
    k_max = max(v.size for v in values.values())
    width = 0.8 / n_runs
    for j, (lab, v) in enumerate(values.items()):
        x = np.arange(v.size) + (j - (n_runs - 1) / 2) * width
        ax.bar(
            x,
            100 * v,
            width=width,
            color=palette[j],
            label=f"{lab} (max {100 * v.max():.2g} %)",
        )
    ax.set_xticks(np.arange(k_max))
    if k_max > 30:
        ax.set_xticks(np.arange(0, k_max, 5))
    ax.set_xlim(-0.6, k_max - 0.4)
    ax.set_xlabel("Component")
    ax.set_ylabel("Intensity missing in dips (%)")
    ax.set_title(
        f"Dip measure: sum(closing − p) / sum(p), {constraint.mode} closing, "
        f"size {constraint.radius:g} px",
        fontsize="medium",
    )
    ax.legend(fontsize="small", loc="best")
    masked = False
    if n_show > 0:
        if signal_axes is None:
            signal_axes = pixel_axes(shape, ("kx", "ky"))
        ext = _extent(signal_axes)
        for r, (lab, f) in enumerate(runs.items(), start=1):
            v = values[lab]
            order = np.argsort(-v, kind="stable")[:n_show]
            closed = constraint.close(
                np.where(constraint.valid, np.nan_to_num(f[order]), 0.0)
            )
            for c, i in enumerate(order):
                a = fig.add_subplot(gs[r, c])
                img = f[i]
                masked |= not np.isfinite(img).all()
                a.imshow(
                    np.where(np.isfinite(img), img, np.nan),
                    cmap=diffraction_cmap(cmap),
                    norm=_diffraction_norm(img, norm),
                    extent=ext,
                    interpolation="nearest",
                )
                for (x, y), rad in _largest_dips(
                    img, closed[c], constraint, mark_depth, n_marks, ext, shape
                ):
                    a.add_patch(Circle((x, y), rad, fill=False, lw=1.2, color="cyan"))
                a.set_title(
                    f"{lab}: component {i}\ndips {100 * v[i]:.2g} %",
                    fontsize="small",
                    color=palette[r - 1],
                )
                label_axes(a, signal_axes, ("kx", "ky"))
    head = title or "Downward-convex dips in the diffraction factors"
    fig.suptitle(head + (f"\n{MASKED_NOTE}" if masked else ""))
    fig.dip_measure = values
    return fig
