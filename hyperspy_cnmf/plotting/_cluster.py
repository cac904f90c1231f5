"""Figures of the rotation-invariant diffraction clustering (matplotlib only).

- :func:`plot_dendrogram`: the dendrogram of the components, pseudo-distance
  ``1 - CC`` on the bottom axis and cross-correlation on the top axis, leaves
  labelled by component and coloured by cluster, the cut as a dashed line.
- :func:`plot_gallery`: per cluster, the rotation-aligned merged diffraction
  (log or gamma scale, calibrated detector axes) above its summed map
  (calibrated scan axes), plus the map of the dominant cluster.

Both take plain arrays (the signal methods in
:mod:`hyperspy_cnmf.signals._cluster` unpack ``learning_results``) and return
the :class:`~matplotlib.figure.Figure`.
"""

import textwrap

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors
from matplotlib import ticker as mticker
from scipy.cluster import hierarchy

__all__ = ["cluster_colors", "diffraction_cmap", "plot_dendrogram", "plot_gallery"]

_GREY = "0.55"
#: Colour of detector pixels without data (NaN: left out of the fit, such as the
#: direct-beam disk of ``direct_beam_mask``): a neutral grey that no diffraction
#: colour map uses, so that "no data" is not read as "no intensity" (dark).
MASKED_COLOR = "0.8"
#: Figure note when some diffraction pixels have no data.
MASKED_NOTE = (
    "grey: no data (detector pixels left out of the fit, e.g. the direct-beam disk)"
)


def diffraction_cmap(cmap):
    """``cmap`` (name or Colormap) with NaN pixels drawn in :data:`MASKED_COLOR`.

    Examples
    --------
    >>> import numpy as np
    >>> from matplotlib import colors
    >>> rgba = diffraction_cmap("inferno")(np.ma.masked_invalid([np.nan]))[0]
    >>> colors.to_hex(rgba)
    '#cccccc'
    """
    return plt.get_cmap(cmap).with_extremes(bad=MASKED_COLOR)


def cluster_colors(n):
    """``n`` distinct colours (hex) for clusters 0..n-1 (tab10, then tab20).

    Examples
    --------
    >>> from hyperspy_cnmf.plotting._cluster import cluster_colors
    >>> cluster_colors(2)
    ['#1f77b4', '#ff7f0e']
    """
    base = list(plt.get_cmap("tab10").colors)
    if n > len(base):
        base += [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i % 2]
    if n > len(base):
        base += [plt.get_cmap("hsv")(i / n) for i in range(n - len(base))]
    return [mcolors.to_hex(c) for c in base[:n]]


def _link_colors(linkage, labels, palette):
    """Colour of every link: its cluster's when all its leaves share one."""
    n = labels.size
    leaf_sets = {i: {int(labels[i])} for i in range(n)}
    out = {}
    for j, (a, b, _, _) in enumerate(np.asarray(linkage)):
        s = leaf_sets[int(a)] | leaf_sets[int(b)]
        leaf_sets[n + j] = s
        out[n + j] = palette[next(iter(s))] if len(s) == 1 else _GREY
    return out


def plot_dendrogram(
    linkage,
    labels,
    leaf_names=None,
    threshold=None,
    ax=None,
    orientation="right",
    leaf_title="Component",
    title=None,
    max_leaves=80,
):
    """Dendrogram of a rotation-invariant diffraction clustering.

    Parameters
    ----------
    linkage : array_like, shape (n - 1, 4)
        Linkage matrix (heights are pseudo-distances ``1 - CC``).
    labels : array_like of int, shape (n,)
        Cluster of each leaf (colours).
    leaf_names : list of str, optional
        Leaf labels; default the leaf indices.
    threshold : float, optional
        Cut height, drawn as a dashed line.
    ax : matplotlib.axes.Axes, optional
        Default: a new figure.
    orientation : {"right", "top"}, default "right"
        ``"right"``: leaves on the left, pseudo-distance growing to the right
        (the layout of the author's figure); ``"top"``: leaves at the bottom.
    leaf_title : str, default "Component"
        Name of the leaves (axis label).
    title : str, optional
    max_leaves : int, default 80
        Beyond this many leaves the tree is truncated to ``max_leaves``
        clusters (``truncate_mode="lastp"``).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.cluster.hierarchy import linkage
    >>> from hyperspy_cnmf.plotting._cluster import plot_dendrogram
    >>> Z = linkage([0.1, 0.8, 0.9], method="average")
    >>> fig = plot_dendrogram(Z, [0, 0, 1], threshold=0.3)
    """
    Z = np.asarray(linkage, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.size
    n_c = int(labels.max()) + 1
    palette = cluster_colors(n_c)
    if leaf_names is None:
        leaf_names = [str(i) for i in range(n)]
    if orientation not in ("right", "top"):
        raise ValueError("`orientation` must be 'right' or 'top'.")
    if ax is None:
        size = (6.4, max(3.0, 0.22 * min(n, max_leaves) + 1.6))
        if orientation == "top":
            size = (max(5.0, 0.3 * min(n, max_leaves) + 2.0), 4.2)
        fig, ax = plt.subplots(figsize=size, layout="constrained")
    else:
        fig = ax.figure
    link_colors = _link_colors(Z, labels, palette)
    kw = {}
    if n > max_leaves:
        kw = {"truncate_mode": "lastp", "p": max_leaves}
    dn = hierarchy.dendrogram(
        Z,
        ax=ax,
        orientation=orientation,
        labels=list(leaf_names),
        link_color_func=lambda k: link_colors.get(k, _GREY),
        above_threshold_color=_GREY,
        **kw,
    )
    # leaf label colours
    tick_labels = (
        ax.get_yticklabels() if orientation == "right" else ax.get_xticklabels()
    )
    name_to_cluster = {str(nm): int(lab) for nm, lab in zip(leaf_names, labels)}
    for t in tick_labels:
        c = name_to_cluster.get(t.get_text())
        if c is not None:
            t.set_color(palette[c])
            t.set_fontweight("bold")
    hmax = max(float(Z[:, 2].max()), threshold or 0.0)
    lim = (0.0, min(2.0, 1.08 * hmax + 0.02))
    dist_label = "Pseudo-distance of diffractions, 1 − CC"
    cc_label = "Cross-correlation of diffractions, CC"

    def to_cc(d):
        return 1.0 - np.asarray(d)

    if orientation == "right":
        ax.set_xlim(lim)
        ax.set_xlabel(dist_label)
        ax.set_ylabel(leaf_title)
        sec = ax.secondary_xaxis("top", functions=(to_cc, to_cc))
        sec.set_xlabel(cc_label)
        if threshold is not None:
            ax.axvline(threshold, color="k", ls="--", lw=1)
    else:
        ax.set_ylim(lim)
        ax.set_ylabel(dist_label)
        ax.set_xlabel(leaf_title)
        sec = ax.secondary_yaxis("right", functions=(to_cc, to_cc))
        sec.set_ylabel(cc_label)
        if threshold is not None:
            ax.axhline(threshold, color="k", ls="--", lw=1)
    handles = [
        plt.Line2D([], [], color=palette[c], lw=3, label=f"Cluster {c}")
        for c in range(n_c)
    ]
    if threshold is not None:
        handles.append(
            plt.Line2D(
                [], [], color="k", ls="--", lw=1, label=f"Cut at {threshold:.2f}"
            )
        )
    ax.legend(handles=handles, loc="best", fontsize="small", framealpha=0.9)
    ax.set_title(
        textwrap.fill(
            title or "Hierarchical clustering of diffractions (rotation-invariant)", 60
        ),
        fontsize="medium",
    )
    fig._dendrogram = dn  # for inspection in tests
    return fig


def _extent(axes_info):
    """imshow extent (left, right, bottom, top) for axes (x, y) with origin upper."""
    ax_x, ax_y = axes_info
    x0 = ax_x["offset"] - 0.5 * ax_x["scale"]
    x1 = ax_x["offset"] + (ax_x["size"] - 0.5) * ax_x["scale"]
    y0 = ax_y["offset"] - 0.5 * ax_y["scale"]
    y1 = ax_y["offset"] + (ax_y["size"] - 0.5) * ax_y["scale"]
    return (x0, x1, y1, y0)


def _axis_label(info, default):
    name = info.get("name") or default
    return f"{name} ({info['units']})"


def pixel_axes(shape, names=("x", "y")):
    """Uncalibrated axis descriptions ``[x, y]`` for an image of ``shape`` (ny, nx)."""
    return [
        {"name": name, "units": "px", "scale": 1.0, "offset": 0.0, "size": int(size)}
        for name, size in zip(names, (shape[1], shape[0]))
    ]


def label_axes(ax, axes_info, defaults=("x", "y")):
    """Calibrated axis labels ``name (units)`` of an image panel."""
    ax.set_xlabel(_axis_label(axes_info[0], defaults[0]))
    ax.set_ylabel(_axis_label(axes_info[1], defaults[1]))


def _diffraction_norm(img, norm, gamma=0.3, dynamic_range=1e-3):
    finite = img[np.isfinite(img)]
    vmax = float(np.percentile(finite, 99.9)) if finite.size else 1.0
    if not vmax > 0:
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    if norm == "log":
        pos = finite[finite > 0]
        vmin = max(
            float(np.percentile(pos, 5)) if pos.size else 0.0, vmax * dynamic_range
        )
        return mcolors.LogNorm(vmin=vmin, vmax=vmax, clip=True)
    if norm == "gamma":
        return mcolors.PowerNorm(gamma=gamma, vmin=0.0, vmax=vmax, clip=True)
    if norm == "linear":
        return mcolors.Normalize(vmin=0.0, vmax=vmax, clip=True)
    raise ValueError("`norm` must be 'log', 'gamma' or 'linear'.")


def plot_gallery(
    merged_factors,
    merged_maps,
    members=None,
    position_labels=None,
    signal_axes=None,
    navigation_axes=None,
    clusters=None,
    norm="log",
    cmap="inferno",
    map_cmap="viridis",
    per_row=4,
    title=None,
    pattern_label="counts (sum over scan)",
    member_label="components",
):
    """Gallery of merged diffractions and summed maps, one column per cluster.

    Parameters
    ----------
    merged_factors : array_like, shape (n_clusters, qy, qx)
        Rotation-aligned merged diffraction of each cluster.
    merged_maps : array_like, shape (n_clusters, ny, nx)
        Summed map of each cluster (2D navigation).
    members : list of list of int, optional
        Component indices of each cluster (shown in the titles).
    member_label : str, default "components"
        What ``members`` number (``"refit components"`` after the clustering's refit).
    position_labels : array_like of int, shape (ny, nx), optional
        Dominant cluster per position (-1: none); shown first, in the cluster
        colours.
    signal_axes, navigation_axes : list of dict, optional
        ``[x, y]`` axis descriptions with ``name``, ``units``, ``scale``,
        ``offset`` and ``size``; default pixels.
    clusters : list of int, optional
        Clusters to show (default all).
    norm : {"log", "gamma", "linear"}, default "log"
        Colour scale of the diffractions; each panel spans its own range
        (99.9th percentile down to 1e-3 of it for ``"log"``). Pixels without
        data (NaN, such as the direct-beam disk left out of the fit) are drawn
        in a neutral grey (:data:`MASKED_COLOR`), not as dark, and the title
        says so.
    cmap, map_cmap : str
        Colour maps of the diffractions and of the maps.
    per_row : int, default 4
        Clusters per row of panels.
    title : str, optional
    pattern_label : str, default "counts (sum over scan)"
        Label of the diffractions' colour bars (their units).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.plotting._cluster import plot_gallery
    >>> rng = np.random.default_rng(0)
    >>> fig = plot_gallery(rng.random((2, 16, 16)), rng.random((2, 8, 8)))
    """
    F = np.asarray(merged_factors, dtype=np.float64)
    M = np.asarray(merged_maps, dtype=np.float64)
    n_c = F.shape[0]
    if M.ndim != 3:
        raise ValueError("`merged_maps` must have shape (n_clusters, ny, nx).")
    palette = cluster_colors(n_c)
    show = list(range(n_c)) if clusters is None else [int(c) for c in clusters]
    if signal_axes is None:
        signal_axes = pixel_axes(F.shape[1:], ("kx", "ky"))
    if navigation_axes is None:
        navigation_axes = pixel_axes(M.shape[1:], ("x", "y"))
    sig_ext = _extent(signal_axes)
    nav_ext = _extent(navigation_axes)
    has_overview = position_labels is not None
    n_panels = len(show) + (1 if has_overview else 0)
    ncols = max(1, min(per_row, n_panels))
    nrows_block = int(np.ceil(n_panels / ncols))
    fig, axes = plt.subplots(
        2 * nrows_block,
        ncols,
        figsize=(3.1 * ncols, 5.6 * nrows_block),
        layout="constrained",
        squeeze=False,
    )
    slots = [(2 * (i // ncols), i % ncols) for i in range(n_panels)]
    for r, c in [
        (2 * (i // ncols), i % ncols) for i in range(n_panels, nrows_block * ncols)
    ]:
        axes[r, c].set_axis_off()
        axes[r + 1, c].set_axis_off()
    i0 = 0
    if has_overview:
        r, c = slots[0]
        lab = np.asarray(position_labels)
        cmap_l = mcolors.ListedColormap(["0.85"] + palette)
        axes[r, c].imshow(
            lab + 1,
            cmap=cmap_l,
            vmin=-0.5,
            vmax=n_c + 0.5,
            extent=nav_ext,
            interpolation="nearest",
        )
        axes[r, c].set_title("Dominant cluster", fontsize="medium")
        label_axes(axes[r, c], navigation_axes)
        leg = axes[r + 1, c]
        leg.set_axis_off()
        counts = np.bincount(lab[lab >= 0].ravel(), minlength=n_c)
        handles = [
            plt.Rectangle(
                (0, 0),
                1,
                1,
                color=palette[k],
                label=f"Cluster {k}: {100 * counts[k] / lab.size:.0f} %",
            )
            for k in range(n_c)
        ]
        leg.legend(
            handles=handles,
            loc="upper left",
            fontsize="small",
            title="Share of positions",
            frameon=False,
        )
        i0 = 1
    for j, k in enumerate(show):
        r, c = slots[i0 + j]
        ax_d, ax_m = axes[r, c], axes[r + 1, c]
        img = F[k]
        im = ax_d.imshow(
            np.where(np.isfinite(img), img, np.nan),
            cmap=diffraction_cmap(cmap),
            norm=_diffraction_norm(img, norm),
            extent=sig_ext,
            interpolation="nearest",
        )
        head = f"Cluster {k}"
        if members is not None:
            mem = members[k]
            txt = ", ".join(str(m) for m in mem[:8]) + (", …" if len(mem) > 8 else "")
            head += f"\n{member_label} {txt}"
        ax_d.set_title(head, color=palette[k], fontsize="medium", fontweight="bold")
        label_axes(ax_d, signal_axes, ("kx", "ky"))
        cb = fig.colorbar(im, ax=ax_d, shrink=0.8, pad=0.02)
        cb.set_label(pattern_label, fontsize="small")
        if isinstance(im.norm, mcolors.LogNorm):
            # a bar of two decades or less: ticks at 1, 2, 5 x 10^n, no crowd
            # of labelled minor ticks (a mean pattern spans few decades)
            if np.log10(im.norm.vmax / im.norm.vmin) <= 2:
                cb.ax.yaxis.set_major_locator(mticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            cb.ax.yaxis.set_minor_formatter(mticker.NullFormatter())
        if isinstance(im.norm, mcolors.PowerNorm):
            # ticks evenly spaced along the (non-linear) colour bar
            ticks = im.norm.vmax * np.linspace(0, 1, 5) ** (1 / im.norm.gamma)
            cb.set_ticks([float(f"{t:.2g}") for t in ticks])
        for spine in ax_d.spines.values():
            spine.set_edgecolor(palette[k])
            spine.set_linewidth(2)
        im2 = ax_m.imshow(M[k], cmap=map_cmap, extent=nav_ext, interpolation="nearest")
        ax_m.set_title("Summed map", fontsize="small")
        label_axes(ax_m, navigation_axes)
        cb2 = fig.colorbar(im2, ax=ax_m, shrink=0.8, pad=0.02)
        cb2.set_label("counts per position", fontsize="small")
    head = title or "Merged diffraction (rotation-aligned) and map per cluster"
    if show and not np.isfinite(F[show]).all():
        head += f"\n{MASKED_NOTE}"
    fig.suptitle(head)
    return fig
