"""Measured numbers, figures and a Markdown report of a decomposition run.

Used by the ``hyperspy-cnmf`` command line (``demo`` and ``run``) and the
notebooks. Every figure has calibrated axes (the signal's own axes), axis
labels with units, colour bars and titles; every number is computed from
``learning_results`` and the data, nothing is hard-coded.
"""

import os

import numpy as np

from hyperspy_cnmf._report_kernels import residual_sq_sums
from hyperspy_cnmf.signals._axes import axis_info
from hyperspy_cnmf.signals._calibration import navigation_scales
from hyperspy_cnmf.signals._decomposition import _mask_vector

# --------------------------------------------------------------------------
# Arrays and numbers
# --------------------------------------------------------------------------


def components(signal):
    """Factors and loadings of the last decomposition as image stacks.

    Returns
    -------
    factors : ndarray, shape (k, qy, qx)
        Diffraction patterns.
    loadings : ndarray, shape (k, ny, nx)
        Maps.
    """
    lr = signal.learning_results
    if lr.factors is None:
        raise RuntimeError("the signal has no decomposition yet")
    am = signal.axes_manager
    k = lr.factors.shape[1]
    F = np.asarray(lr.factors, dtype=np.float64).T.reshape(
        (k,) + tuple(am._signal_shape_in_array)
    )
    L = np.asarray(lr.loadings, dtype=np.float64).T.reshape(
        (k,) + tuple(am._navigation_shape_in_array)
    )
    return F, L


def clustered_components(signal):
    """Factors and loadings of the components that the last ``cluster_diffraction`` clustered.

    The refit's components when the clustering refitted (``cdiff_refit_factors``,
    ``cdiff_refit_loadings``), else the decomposition's components it
    clustered (``cdiff_components``).

    Returns
    -------
    factors : ndarray, shape (k, qy, qx)
    loadings : ndarray, shape (k, ny, nx)

    Raises
    ------
    RuntimeError
        Without a clustering of the components.
    """
    lr = signal.learning_results
    if getattr(lr, "cdiff_labels", None) is None:
        raise RuntimeError("the signal has no cluster_diffraction result yet")
    am = signal.axes_manager
    refit_f = getattr(lr, "cdiff_refit_factors", None)
    if refit_f is None:
        F, L = components(signal)
        idx = np.asarray(lr.cdiff_components)
        return F[idx], L[idx]
    k = refit_f.shape[1]
    F = np.asarray(refit_f, dtype=np.float64).T.reshape(
        (k,) + tuple(am._signal_shape_in_array)
    )
    L = np.asarray(lr.cdiff_refit_loadings, dtype=np.float64).T.reshape(
        (k,) + tuple(am._navigation_shape_in_array)
    )
    return F, L


#: Rows of one float64 piece inside a block of the streamed reads: at most
#: this many bytes of float64 copies at a time (the block itself is one chunk).
_PIECE_BYTES = 8 * 2**20


def _pieces(n_rows, n_cols):
    step = max(1, _PIECE_BYTES // max(1, 8 * n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _block_sums(block, n_cols, func, sh, local):
    """``func`` summed over float64 pieces of one block of whole patterns.

    ``local`` holds per-position arrays, the block's rows of each. A ``func``
    marked ``whole_block`` gets the block itself, in its own dtype.
    """
    X = np.asarray(block).reshape(-1, n_cols)
    if getattr(func, "whole_block", False):
        return func(X, local, sh)
    total = None
    for piece in _pieces(len(X), n_cols):
        part = func(
            np.asarray(X[piece], dtype=np.float64),
            {key: value[piece] for key, value in local.items()},
            sh,
        )
        total = part if total is None else total + part
    return total


def _add(parts):
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def _stream(signal, func, per_position=None, **shared):
    """One read of the data: ``sum over blocks of func(X, local, shared)``.

    ``X`` is a float64 piece ``(rows, pixels)`` of the unfolded data (whole
    patterns), ``local`` a dict of the rows of ``X`` in each array of
    ``per_position`` (arrays over the navigation positions in C order: each
    block task gets its own rows only), ``shared`` the keyword arguments as
    attributes (sent once to each worker). ``func`` returns a float64 array
    of a fixed shape; the results are added. In memory the data are cut into
    the same pieces; a lazy signal is read chunk by chunk under the active
    dask scheduler (navigation chunks, split when larger than the
    decomposition's block limit), never as a whole.
    """
    per_position = per_position or {}
    am = signal.axes_manager
    n_cols = int(np.prod(am._signal_shape_in_array))
    sh = _Shared(**shared)
    if not signal._lazy:
        n_rows = int(np.prod(am._navigation_shape_in_array))
        return _block_sums(
            np.asarray(signal.data).reshape(n_rows, n_cols),
            n_cols,
            func,
            sh,
            per_position,
        )
    import uuid

    import dask

    from hyperspy_cnmf.chunked import (
        MAX_BLOCK_BYTES,
        _Layout,
        fused_compute,
        tree_reduce,
    )
    from hyperspy_cnmf.chunked import _Shared as _SharedTask  # its sizeof is known

    layout = _Layout(signal.data, 2, MAX_BLOCK_BYTES)
    token = uuid.uuid4().hex
    sh_d = dask.delayed(
        _SharedTask(**shared), name=f"cnmf-report-shared-{token}", traverse=False
    )
    parts = [
        dask.delayed(_block_sums, pure=True)(
            blk,
            n_cols,
            func,
            sh_d,
            {key: value[rows] for key, value in per_position.items()},
            dask_key_name=f"cnmf-report-{token}-{b}",
        )
        for b, (blk, rows) in enumerate(layout.blocks)
    ]
    return fused_compute(
        (tree_reduce(parts, _add, f"cnmf-report-add-{token}"),), parts
    )[0]


class _Shared:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


# block functions: module level, so that they pickle by reference (distributed)
def _column_sums(X, local, sh):
    return X[:, sh.valid].sum(axis=0)


def _model_sq(X, local, sh):
    """Squared residuals of the decomposition model and of the mean-pattern baseline.

    ``X`` is a whole block in its own dtype: one pass of the Numba kernel,
    no float64 copy of the block (other dtypes than integers, float32 and
    float64 are read in float64 pieces).
    """
    out = np.zeros(2)
    W = local.get("W", np.zeros((len(X), 0)))  # the loadings of these rows
    args = (W, sh.Ht, sh.offset, sh.valid, sh.pattern, sh.base_valid, out)
    if X.dtype.kind in "iu" or X.dtype in (np.float32, np.float64):
        residual_sq_sums(X, *args)
        return out
    for piece in _pieces(len(X), X.shape[1]):
        residual_sq_sums(np.asarray(X[piece], np.float64), W[piece], *args[1:])
    return out


_model_sq.whole_block = True


def _model_parts(signal, n_components, signal_mask):
    """``W``, ``Ht`` (valid pixels), the offset and the valid pixels of the model."""
    lr = signal.learning_results
    am = signal.axes_manager
    n_sig = int(np.prod(am._signal_shape_in_array))
    k = lr.factors.shape[1] if n_components is None else int(n_components)
    W = np.nan_to_num(np.asarray(lr.loadings[:, :k], dtype=np.float64))
    H = np.nan_to_num(np.asarray(lr.factors[:, :k], dtype=np.float64))
    valid = ~_mask_vector(signal_mask, n_sig, am._signal_shape_in_array, "signal_mask")
    valid &= ~np.all(np.isnan(np.asarray(lr.factors[:, :k], dtype=np.float64)), axis=1)
    mean = getattr(lr, "mean", None)
    offset = 0.0 if mean is None else np.asarray(mean, dtype=np.float64).ravel()[valid]
    return W, np.ascontiguousarray(H[valid].T), offset, valid


def _baseline_parts(signal, signal_mask, mean_pattern):
    """Valid pixels and the unit-sum mean pattern on them (one read if not given)."""
    am = signal.axes_manager
    n_sig = int(np.prod(am._signal_shape_in_array))
    valid = ~_mask_vector(signal_mask, n_sig, am._signal_shape_in_array, "signal_mask")
    if mean_pattern is None:
        colsum = _stream(signal, _column_sums, valid=valid)
    else:
        colsum = np.asarray(mean_pattern, dtype=np.float64).ravel()
        if colsum.size != n_sig:
            raise ValueError(
                f"mean_pattern has {colsum.size} pixels, the detector {n_sig}"
            )
        colsum = colsum[valid]
    return valid, colsum / max(colsum.sum(), 1e-300)


def reconstruction_mse(signal, n_components=None, signal_mask=None):
    """Mean squared error of the decomposition model, per data entry.

    ``mean((X - loadings @ factors.T)^2)`` over the (unmasked) data, plus the
    ``mean`` of a centred decomposition when there is one. One read of the
    data, block by block in float64 (a lazy signal chunk by chunk, never as a
    whole); :func:`model_mse` gives it together with the baseline of
    :func:`mean_pattern_mse` from the same read.

    Parameters
    ----------
    signal : STEM4D or LazySTEM4D
    n_components : int, optional
        Use only the first components (e.g. PCA truncated to k).
    signal_mask : bool array (qy, qx), optional
        Detector pixels left out (True = excluded), placed by shape as by
        ``decomposition`` (array order, or ``signal_shape`` x first). Pixels
        that the decomposition left out (NaN in every factor, e.g. the
        direct beam of ``direct_beam_mask="auto"``) are always left out.
    """
    return model_mse(signal, n_components=n_components, signal_mask=signal_mask)[0]


def mean_pattern_mse(signal, signal_mask=None, mean_pattern=None):
    """MSE of the rank-1 baseline ``X[p] ~ total(p) * mean pattern``.

    A decomposition with more components should do better than this model,
    which knows only the intensity at each probe position. Computed block by
    block in float64 (a lazy signal chunk by chunk, never as a whole): one
    read for the mean pattern (none if ``mean_pattern`` is given), one for
    the residuals.

    Parameters
    ----------
    signal : STEM4D or LazySTEM4D
    signal_mask : bool array (qy, qx), optional
        Detector pixels left out (True = excluded), e.g.
        ``learning_results.signal_mask`` to compare with
        :func:`reconstruction_mse` on the same pixels; placed by shape as by
        ``decomposition``.
    mean_pattern : array (qy, qx), optional
        The mean (or summed) pattern of all positions, already computed
        (only its shape matters: it is normalised on the unmasked pixels).
    """
    return model_mse(
        signal,
        model=False,
        baseline=True,
        baseline_mask=signal_mask,
        mean_pattern=mean_pattern,
    )[1]


def model_mse(
    signal,
    n_components=None,
    signal_mask=None,
    *,
    model=True,
    baseline=False,
    baseline_mask=None,
    mean_pattern=None,
):
    """:func:`reconstruction_mse` and :func:`mean_pattern_mse` from one read.

    Parameters
    ----------
    signal : STEM4D or LazySTEM4D
    n_components, signal_mask
        Of the decomposition model, see :func:`reconstruction_mse`.
    model, baseline : bool
        Which of the two to compute.
    baseline_mask, mean_pattern
        ``signal_mask`` and ``mean_pattern`` of :func:`mean_pattern_mse`.
        Without ``mean_pattern`` the baseline costs one more read.

    Returns
    -------
    (float or None, float or None)
        The MSE of the model and of the baseline (None where not asked).

    Examples
    --------
    >>> from hyperspy_cnmf import report
    >>> from hyperspy_cnmf.data import simulated_precipitates
    >>> s = simulated_precipitates(scan_shape=(24, 24), n_grains=2)
    >>> s.decomposition(algorithm="constrained_nmf", output_dimension=4,
    ...                 print_info=False, random_state=0)
    >>> mse, base = report.model_mse(s, baseline=True)
    >>> bool(mse < base)
    True
    """
    am = signal.axes_manager
    n_nav = int(np.prod(am._navigation_shape_in_array))
    none = np.zeros(0, dtype=np.int64)
    per_position = {}
    sh = dict(
        Ht=np.zeros((0, 0)),
        offset=np.zeros(0),
        valid=none,
        pattern=np.zeros(0),
        base_valid=none,
    )
    if model:
        W, Ht, offset, valid = _model_parts(signal, n_components, signal_mask)
        per_position["W"] = W
        sh.update(
            Ht=Ht,
            offset=np.broadcast_to(offset, Ht.shape[1:]).astype(np.float64),
            valid=np.flatnonzero(valid),
        )
    if baseline:
        base_valid, pattern = _baseline_parts(signal, baseline_mask, mean_pattern)
        sh.update(base_valid=np.flatnonzero(base_valid), pattern=pattern)
    sums = _stream(signal, _model_sq, per_position, **sh)
    mse = float(sums[0]) / (n_nav * int(valid.sum())) if model else None
    base = float(sums[1]) / (n_nav * int(base_valid.sum())) if baseline else None
    return mse, base


def negative_fraction(stack):
    """Fraction of each pattern's (absolute) intensity that is negative."""
    a = np.nan_to_num(np.asarray(stack, dtype=np.float64)).reshape(len(stack), -1)
    neg = np.clip(-a, 0, None).sum(axis=1)
    tot = np.abs(a).sum(axis=1)
    return neg / np.where(tot > 0, tot, 1.0)


def matched_cosine(estimated, truth):
    """Cosine similarity of each true pattern to its matched estimate.

    Estimated and true patterns are paired one to one by the Hungarian
    assignment maximising the total cosine (sign-free: ``|cos|``, so PCA
    factors of either sign are matched); true patterns left without a
    partner (fewer estimates) get 0.

    Returns
    -------
    ndarray, shape (n_true,)
    """
    from scipy.optimize import linear_sum_assignment

    E = np.nan_to_num(np.asarray(estimated, dtype=np.float64)).reshape(
        len(estimated), -1
    )
    T = np.nan_to_num(np.asarray(truth, dtype=np.float64)).reshape(len(truth), -1)
    En = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-300)
    Tn = T / np.maximum(np.linalg.norm(T, axis=1, keepdims=True), 1e-300)
    C = np.abs(Tn @ En.T)
    rows, cols = linear_sum_assignment(-C)
    out = np.zeros(len(T))
    out[rows] = C[rows, cols]
    return out


def adjusted_rand_index(labels_a, labels_b):
    """Adjusted Rand index of two labellings (1: identical partitions, ~0: chance)."""
    a = np.asarray(labels_a).ravel()
    b = np.asarray(labels_b).ravel()
    if a.size != b.size:
        raise ValueError("the two labellings have different sizes")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)

    def comb2(x):
        return x * (x - 1) / 2.0

    index = comb2(table).sum()
    sa, sb = comb2(table.sum(axis=1)).sum(), comb2(table.sum(axis=0)).sum()
    expected = sa * sb / max(comb2(a.size), 1e-300)
    maximum = 0.5 * (sa + sb)
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


def clear_component_phases(loadings, truth_maps, phase_of_component, min_corr=0.9):
    """True phase of the components whose map is clearly one true component's.

    An over-complete NMF also makes pieces (of the matrix, or direct-beam
    components) that are no single true component; they have no true phase
    to compare with. A component is *clear* when its map correlates
    (Pearson) above ``min_corr`` with one true map, and then takes that true
    component's phase.

    Parameters
    ----------
    loadings : array_like, shape (k, n_positions)
        Estimated maps.
    truth_maps : array_like, shape (n_true, ...)
        True maps (``metadata.Simulation.maps``).
    phase_of_component : array_like of int, shape (n_true,)
    min_corr : float, default 0.9

    Returns
    -------
    clear : ndarray of bool, shape (k,)
    phases : ndarray of int, shape (k,)
        Phase of the best-correlated true component (meaningful where clear).
    """
    L = np.nan_to_num(np.asarray(loadings, dtype=np.float64))
    M = np.asarray(truth_maps, dtype=np.float64).reshape(len(truth_maps), -1)
    corr = np.corrcoef(np.vstack([L, M]))[: len(L), len(L) :]
    return corr.max(axis=1) > min_corr, np.asarray(phase_of_component)[
        corr.argmax(axis=1)
    ]


def nav_scale(signal):
    """Scan steps ``(row, column)`` = ``(y, x)``, both in the x axis's unit (pint-converted).

    See :func:`hyperspy_cnmf.signals._calibration.navigation_scales`.
    """
    return navigation_scales(signal)[:2]


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


def _extent(ax_x, ax_y):
    x0 = ax_x["offset"] - 0.5 * ax_x["scale"]
    y0 = ax_y["offset"] - 0.5 * ax_y["scale"]
    return [
        x0,
        x0 + ax_x["size"] * ax_x["scale"],
        y0 + ax_y["size"] * ax_y["scale"],
        y0,
    ]


def _label(info):
    name = info["name"] or ""
    return f"{name} ({info['units']})" if info["units"] else name


def plot_components(
    signal, title, dips=None, power=None, diverging=None, max_components=None
):
    """Grid of the decomposition: diffraction patterns (top) over maps (bottom).

    Patterns are shown on a square-root scale (``sign(x) sqrt|x|`` with a
    diverging colour map centred on 0 when there are negative values, as for
    PCA), maps with their own colour bar; axes are calibrated. Pattern pixels
    without data (NaN: left out of the fit, such as the direct-beam disk) are
    drawn grey, not as zero intensity, and the title says so.

    Parameters
    ----------
    signal : STEM4D or LazySTEM4D
        With a decomposition.
    title : str
    dips, power : array_like, optional
        Per-component dip measure and map power beyond the resolution
        circle, shown in the panel titles.
    diverging : bool, optional
        Force (or forbid) the diverging display; default when any value is
        negative.
    max_components : int, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    from hyperspy_cnmf.plotting._cluster import MASKED_NOTE, diffraction_cmap

    F, L = components(signal)
    k = F.shape[0] if max_components is None else min(F.shape[0], int(max_components))
    sx, sy = (axis_info(a) for a in signal.axes_manager.signal_axes)
    nx_, ny_ = (axis_info(a) for a in signal.axes_manager.navigation_axes)
    fig, axes = plt.subplots(
        2, k, figsize=(2.6 * k + 0.6, 5.6), layout="constrained", squeeze=False
    )
    masked = False
    for j in range(k):
        # pixels without data (NaN: left out of the fit, e.g. the direct-beam
        # disk) stay NaN and are drawn grey, not as zero intensity (dark)
        finite = np.isfinite(F[j])
        masked |= not finite.all()
        f, m = np.where(finite, F[j], 0.0), np.nan_to_num(L[j])
        neg = (
            diverging
            if diverging is not None
            else bool((f < -1e-3 * np.abs(f).max()).any())
        )
        if neg:
            v = np.sign(f) * np.sqrt(np.abs(f))
            lim = float(np.percentile(np.abs(v[finite]), 99.9)) if finite.any() else 0
            im = axes[0, j].imshow(
                np.where(finite, v, np.nan),
                cmap=diffraction_cmap("RdBu_r"),
                vmin=-(lim or 1.0),
                vmax=lim or 1.0,
                extent=_extent(sx, sy),
            )
            cb_label = "sign·sqrt(intensity)"
        else:
            v = np.sqrt(np.clip(f, 0, None))
            top = float(np.percentile(v[finite], 99.9)) if finite.any() else 0
            im = axes[0, j].imshow(
                np.where(finite, v, np.nan),
                cmap=diffraction_cmap("inferno"),
                vmin=0,
                vmax=top or None,
                extent=_extent(sx, sy),
            )
            cb_label = "sqrt(intensity)"
        fig.colorbar(
            im, ax=axes[0, j], shrink=0.8, label=cb_label if j == k - 1 else None
        )
        t = f"#{j}"
        if neg:
            t += f"  neg {negative_fraction(f[None])[0]:.0%}"
        if dips is not None:
            t += f"  dip {dips[j]:.3f}"
        axes[0, j].set_title(t, fontsize=9)
        mneg = bool((m < -1e-3 * np.abs(m).max()).any())
        if mneg:
            lim = float(np.abs(m).max()) or 1.0
            im = axes[1, j].imshow(
                m, cmap="RdBu_r", vmin=-lim, vmax=lim, extent=_extent(nx_, ny_)
            )
        else:
            im = axes[1, j].imshow(m, cmap="viridis", extent=_extent(nx_, ny_))
        fig.colorbar(
            im, ax=axes[1, j], shrink=0.8, label="counts" if j == k - 1 else None
        )
        axes[1, j].set_title(
            f"map #{j}" + ("" if power is None else f"  HF {power[j]:.2f}"), fontsize=9
        )
        axes[0, j].set_xlabel(_label(sx), fontsize=8)
        axes[1, j].set_xlabel(_label(nx_), fontsize=8)
        if j == 0:
            axes[0, j].set_ylabel(_label(sy), fontsize=8)
            axes[1, j].set_ylabel(_label(ny_), fontsize=8)
        for a in axes[:, j]:
            a.tick_params(labelsize=7)
    fig.suptitle(title + (f"\n{MASKED_NOTE}" if masked else ""))
    return fig


def plot_map_spectra(
    maps_by_method, scale, resolution, units="nm", max_components=None
):
    """Power spectra of the maps with the resolution circle ``|f| = 1/resolution``.

    One row per method, one column per component: ``log10`` of the
    Hann-windowed power spectrum (:func:`~hyperspy_cnmf.constraints.map_power_spectra`)
    with the circle drawn dashed; power outside it is finer than the probe
    and can only be noise.

    Parameters
    ----------
    maps_by_method : dict of str to ndarray (k, ny, nx)
    scale : tuple of float
        Scan steps ``(y, x)``.
    resolution : float
        Probe FWHM in the same units.
    units : str
        Length unit of ``scale``.
    """
    import matplotlib.pyplot as plt

    from hyperspy_cnmf.constraints import map_power_beyond, map_power_spectra

    names = list(maps_by_method)
    k = max(len(m) for m in maps_by_method.values())
    if max_components is not None:
        k = min(k, int(max_components))
    fig, axes = plt.subplots(
        len(names),
        k,
        figsize=(2.4 * k + 0.8, 2.5 * len(names) + 0.6),
        layout="constrained",
        squeeze=False,
    )
    fc = 1.0 / float(resolution)
    for i, name in enumerate(names):
        maps = np.asarray(maps_by_method[name])
        power, fy, fx = map_power_spectra(maps, scale)
        beyond = map_power_beyond(maps, resolution, scale)
        ext = [
            fx[0] - 0.5 * (fx[1] - fx[0]),
            fx[-1] + 0.5 * (fx[1] - fx[0]),
            fy[-1] + 0.5 * (fy[1] - fy[0]),
            fy[0] - 0.5 * (fy[1] - fy[0]),
        ]
        for j in range(k):
            a = axes[i, j]
            if j >= len(maps):
                a.set_axis_off()
                continue
            p = np.log10(power[j] / max(power[j].max(), 1e-300) + 1e-8)
            im = a.imshow(p, cmap="magma", vmin=-6, vmax=0, extent=ext)
            a.add_patch(
                plt.Circle((0, 0), fc, fill=False, ls="--", lw=1.0, color="cyan")
            )
            a.set_title(f"{name} #{j}\nbeyond circle {beyond[j]:.1%}", fontsize=8)
            a.tick_params(labelsize=7)
            if i == len(names) - 1:
                a.set_xlabel(f"f_x (1/{units})", fontsize=8)
            if j == 0:
                a.set_ylabel(f"f_y (1/{units})", fontsize=8)
        fig.colorbar(im, ax=axes[i, :], shrink=0.8, label="log10 power (rel.)")
    fig.suptitle(
        f"Map power spectra; dashed circle |f| = 1/probe FWHM = 1/({resolution:.3g} {units})"
    )
    return fig


def plot_dips(dips_by_method):
    """Bar chart of the dip measure of every component, per method."""
    import matplotlib.pyplot as plt

    names = list(dips_by_method)
    k = max(len(d) for d in dips_by_method.values())
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * k + 2), 3.4), layout="constrained")
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        d = np.asarray(dips_by_method[name])
        ax.bar(
            np.arange(len(d)) + (i - (len(names) - 1) / 2) * width, d, width, label=name
        )
    ax.set_xlabel("component")
    ax.set_ylabel("dip measure (missing intensity fraction)")
    ax.set_xticks(np.arange(k))
    ax.set_title("Downward-convex dips in the diffraction patterns")
    ax.legend()
    return fig


def plot_loss(losses, poisson=False):
    """Loss per iteration, one line per run, each kind of loss on its own axis.

    Parameters
    ----------
    losses : dict
        Run name to its ``learning_results.cnmf_loss``.
    poisson : bool or dict, default False
        Whether a run was Poisson-weighted (``normalize_poissonian_noise``;
        one value for all runs or one per name). Its loss is then a reduced
        chi-square (dimensionless, about 1 at the noise level), else the mean
        squared error in squared data units. The two kinds are never drawn on
        one axis: the chi-square gets its own (right-hand) axis.
    """
    import matplotlib.pyplot as plt

    from hyperspy_cnmf.signals._store import loss_label

    kinds = {
        name: bool(poisson.get(name, False) if isinstance(poisson, dict) else poisson)
        for name in losses
    }
    fig, ax = plt.subplots(figsize=(5.6, 3.4), layout="constrained")
    used = sorted(
        set(kinds[n] for n, loss in losses.items() if loss is not None and len(loss))
    )
    axes = {used[0] if used else False: ax}
    if len(used) == 2:
        axes = {False: ax, True: ax.twinx()}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = []
    for i, (name, loss) in enumerate(losses.items()):
        if loss is not None and len(loss):
            a = axes[kinds[name]]
            (line,) = a.plot(
                np.arange(1, len(loss) + 1),
                loss,
                color=colours[i % len(colours)],
                ls="--" if kinds[name] and len(used) == 2 else "-",
                label=f"{name} ({'χ²/dof' if kinds[name] else 'MSE'})",
            )
            handles.append(line)
    for kind, a in axes.items():
        a.set_ylabel(loss_label(kind) if kind else f"{loss_label(False)} (data units²)")
        a.set_yscale("log")
    ax.set_xlabel("iteration (sketch, then exact)")
    ax.set_title("Convergence")
    if handles:
        ax.legend(handles=handles, fontsize="small")
    return fig


def save_figure(fig, path, dpi=100):
    """Save and close a figure; return the path."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------


def _fmt(v):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if not np.isfinite(v):
        return "–"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.3e}"
    return f"{v:.4g}"


def markdown_table(header, rows):
    """A Markdown table from a header and rows of values (numbers formatted)."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(v) for v in r) + " |")
    return "\n".join(lines)


def write_report(path, title, sections):
    """Write a Markdown report.

    Parameters
    ----------
    path : path-like
        The ``.md`` file; figure paths are written relative to its folder.
    title : str
    sections : list of (heading, body)
        ``body`` is Markdown text, or a list of items: strings (paragraphs)
        and figure paths (``pathlib.Path``, embedded as images).
    """
    from pathlib import Path

    path = Path(path)
    out = [f"# {title}", ""]
    for heading, body in sections:
        out += [f"## {heading}", ""]
        items = body if isinstance(body, list) else [body]
        for item in items:
            if isinstance(item, Path):
                rel = os.path.relpath(item, path.parent)
                out += [f"![{item.stem}]({rel})", ""]
            else:
                out += [str(item), ""]
    path.write_text("\n".join(out), encoding="utf-8")
    return path
