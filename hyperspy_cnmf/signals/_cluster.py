"""Rotation-invariant diffraction clustering: the 4D-STEM signal methods.

Plain functions taking the signal as first argument; they are attached to
:class:`~hyperspy_cnmf.signals.STEM4D` (and inherited by the lazy class) as
methods. They check their arguments, convert calibrated geometry to pixels,
call the numerical core :mod:`hyperspy_cnmf.clustering` and store the results
in ``learning_results`` (arrays and strings only, so that they survive
``learning_results.save``/``load`` and ``s.save`` / ``hs.load``).

The stored fields are declared once, with their shapes, dtypes and units, in
the result dataclasses of the core: :class:`~hyperspy_cnmf.clustering.ComponentClustering`
(:func:`cluster_diffraction`, prefix ``cdiff_``, e.g. ``cdiff_labels``,
``cdiff_position_labels``) and :class:`~hyperspy_cnmf.clustering.PatternClustering`
(:func:`cluster_patterns`, prefix ``cpat_``); :mod:`hyperspy_cnmf.signals._store`
copies them to and from ``learning_results``. Both methods also fill
HyperSpy's own ``cluster_*`` fields (the last run wins); see
:func:`cluster_diffraction`, Notes.
"""

import warnings

import numpy as np
from hyperspy.signal import BaseSignal
from hyperspy.signals import Signal1D, Signal2D

from hyperspy_cnmf import clustering as core
from hyperspy_cnmf._beam import Beam
from hyperspy_cnmf._docstrings import fill_doc
from hyperspy_cnmf._schema import from_stored, to_stored
from hyperspy_cnmf._warnings import warn
from hyperspy_cnmf.clustering._components import response_block_rows
from hyperspy_cnmf.signals._axes import axis_info, calibrated_origin_px
from hyperspy_cnmf.signals._calibration import navigation_scales
from hyperspy_cnmf.signals._decomposition import (
    _NONE,
    _check_params,
    _direct_beam_disk,
    _real,
    model_refit,
)
from hyperspy_cnmf.signals._store import (
    clear_learning_results,
    decomposition_settings,
    from_learning_results,
    stale_clustering,
    stamp_clustering,
    to_learning_results,
)

_UNITS = ("calibrated", "px")
#: learning_results prefix and result class of each clustering ``source``
_SOURCES = {
    "components": ("cdiff_", core.ComponentClustering),
    "patterns": ("cpat_", core.PatternClustering),
}


# --------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------
def _check_4dstem_signal_axes(signal):
    am = signal.axes_manager
    if am.signal_dimension != 2:
        raise ValueError(
            f"A signal dimension of 2 (qx, qy) is required, got {am.signal_dimension}."
        )
    for ax in am.signal_axes:
        if not getattr(ax, "is_uniform", True):
            raise ValueError("Non-uniform signal axes are not supported.")


def _signal_geometry(signal):
    """``(shape (qy, qx), scale (sx, sy), offset (ox, oy), units)``."""
    ax_x, ax_y = signal.axes_manager.signal_axes
    shape = (ax_y.size, ax_x.size)
    scale = (float(ax_x.scale), float(ax_y.scale))
    offset = (float(ax_x.offset), float(ax_y.offset))
    return shape, scale, offset, str(ax_x.units)


def _check_units(units):
    if units not in _UNITS:
        raise ValueError(f"`units` must be one of {_UNITS}, got {units!r}.")


def _length_to_px(signal, value, units):
    if value is None or isinstance(value, str):
        return value
    if units == "px":
        return float(value)
    _, (sx, sy), _, _ = _signal_geometry(signal)
    if not np.isclose(abs(sx), abs(sy), rtol=1e-3):
        warn(
            "The two signal axes have different scales; radii are converted "
            "with the scale of the first (x) axis.",
            UserWarning,
        )
    return float(value) / abs(sx)


def _calibrated_origin_px(signal):
    """Pixel position of the calibrated origin, or None if not strictly inside."""
    (ny, nx), _, _, _ = _signal_geometry(signal)
    cx, cy = calibrated_origin_px(signal)
    if 1.0 <= cx <= nx - 2.0 and 1.0 <= cy <= ny - 2.0:
        return cx, cy
    return None


#: Largest distance (px) between the calibrated origin and the direct beam measured on the
#: data that is taken as agreement (issue 11, item 3: 1 px off already changed the clusters).
CENTRE_TOLERANCE_PX = 0.5


def _measured_beam_px(signal):
    """The :class:`~hyperspy_cnmf._beam.Beam` measured by the last constrained NMF, or None."""
    return Beam.from_record(decomposition_settings(signal.learning_results) or {})


def _measured_disk_radius(signal):
    """Radius (px) of the direct-beam disk the last constrained NMF measured, or None.

    The Bragg disks have the direct beam's radius (the probe's convergence
    semi-angle), so it sets the matched filter of
    :func:`~hyperspy_cnmf.clustering.bragg_disk_image`; None (no record, or
    no disk found) switches the Bragg-disk split off.
    """
    beam = _measured_beam_px(signal)
    if beam is None or not np.isfinite(beam.radius) or beam.radius <= 0:
        return None
    return float(beam.radius)


def _disk_radius_px(signal, value, units):
    """``cluster_diffraction``'s ``disk_radius`` in px: "auto" measured, None off.

    Warns when "auto" finds no measured radius (the Bragg-disk rules are then
    off) and when a given radius is more than twice or less than half the
    measured one (a value in the wrong ``units``).
    """
    measured = _measured_disk_radius(signal)
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(
                f"`disk_radius` must be 'auto', None or a positive number, got {value!r}."
            )
        if measured is None:
            warn(
                "No direct-beam radius was measured by the decomposition (it was not "
                "algorithm='constrained_nmf', or found no beam disk: a beam stop hid it "
                "and the metadata give no convergence semi-angle): the Bragg-disk split "
                "and join are off. Pass disk_radius=<Bragg disk radius> to use them.",
                UserWarning,
            )
        return measured
    if value is None:
        return None
    try:
        ok = not isinstance(value, bool) and np.isfinite(value) and value > 0
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(
            f"`disk_radius` must be 'auto', None or a positive number, got {value!r}."
        )
    px = _length_to_px(signal, float(value), units)
    if measured is not None and not 0.5 <= px / measured <= 2.0:
        warn(
            f"disk_radius = {value!r} ({units}) is {px:.3g} px, against a direct-beam "
            f"radius of {measured:.3g} px measured on the data: check `units` "
            "('calibrated' by default, 'px' for pixels).",
            UserWarning,
        )
    return px


def _min_cluster_positions(signal, value):
    """Positions a cluster must dominate: ``"auto"`` is pi r^2 / 2, r the map resolution in scan steps.

    A point-like particle imaged by a probe of FWHM r (the finest detail the
    constrained maps hold) dominates a disc of radius 0.91 r at the default
    ``particle_threshold`` (a Gaussian blob above 0.10 of its peak), about
    2.6 r^2 positions; a cluster dominating less than about half that
    (pi r^2 / 2)
    is no resolved object. On a scan narrower than that disc (a line scan, a
    strip) the count shrinks by the share of the disc's width (1.76 r) the
    scan holds, so that a line scan's grains are not dissolved for want of
    rows. 0 (off) when the last decomposition recorded no map resolution or
    the scan is not calibrated in lengths.
    """
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(
                f"`min_cluster_positions` must be 'auto', None or an integer >= 0, got {value!r}."
            )
        recorded = _recorded_map_resolution(signal)
        if recorded is None:
            return 0
        res, _, sy, sx = recorded
        ny, nx = (tuple(signal.axes_manager._navigation_shape_in_array) + (1, 1))[:2]
        width = 1.76 * res  # the disc a point-like particle dominates, across
        fits = min(1.0, ny * abs(sy) / width) * min(1.0, nx * abs(sx) / width)
        return int(np.ceil(fits * np.pi * res**2 / (2 * abs(sy * sx))))
    if value is None:
        return 0
    if isinstance(value, bool) or not float(value).is_integer() or value < 0:
        raise ValueError(
            f"`min_cluster_positions` must be 'auto', None or an integer >= 0, got {value!r}."
        )
    return int(value)


def _recorded_map_resolution(signal):
    """``(fwhm, method, step_y, step_x)`` of the last decomposition's map constraint, or None.

    The probe FWHM (``map_resolution``, in the navigation units) and how it
    was found, with the scan steps in those units (pint-converted). None
    when the map constraint was off (NaN) or not recorded, or when the scan
    is not calibrated in lengths.
    """
    params = decomposition_settings(signal.learning_results) or {}
    res = params.get("map_resolution")
    if (
        isinstance(res, bool)
        or not isinstance(res, (int, float))
        or not np.isfinite(res)
        or res <= 0
    ):
        return None
    try:
        sy, sx, _ = navigation_scales(signal)
    except (ValueError, IndexError):
        return None
    return res, str(params.get("map_resolution_method", "")), sy, sx


def _probe_fwhm_steps(signal):
    """The probe FWHM of the last decomposition in scan steps (the finer step), or None.

    None when the map constraint was off, when its size is the 2-step
    fallback of uncalibrated data (no measurement), or when the scan is not
    calibrated in lengths. A ``map_resolution`` given by hand counts as the
    probe size.
    """
    recorded = _recorded_map_resolution(signal)
    if recorded is None or recorded[1].startswith("fallback"):
        return None
    res, _, sy, sx = recorded
    step = min(abs(sy), abs(sx))
    return float(res / step) if step > 0 else None


#: The allowed values of :func:`cluster_diffraction`'s fractions, checked by
#: :func:`~hyperspy_cnmf.signals._decomposition._check_params` as the
#: decomposition's arguments are.
_FRACTION_CONSTRAINTS = {
    "particle_threshold": [_real(0, 1, low_open=True, high_open=True)],
    "min_map_compactness": [_NONE, _real(0, 1, high_open=True)],
    "max_enclosure": [_NONE, _real(0, 1, low_open=True)],
}


def _check_factor_structure(factors, mask):
    """Refuse components whose patterns are all flat (constant or zero): nothing to compare.

    Such factors come from constant data (every pixel alike); they have no
    direct beam to centre the polar transform on and no ring to compare, which
    would otherwise surface as a ``radial_range`` error of the polar transform.
    """
    valid = np.ones(factors.shape[1:], bool) if mask is None else ~mask
    f = factors[:, valid]
    f = np.where(np.isfinite(f), f, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN components
        span = np.nanmax(f, axis=1) - np.nanmin(f, axis=1)
        size = np.nanmax(np.abs(f), axis=1)
    flat = ~(span > 1e-9 * size)
    if flat.all():
        raise ValueError(
            f"the data carry no variation: the {factors.shape[0]} components' diffraction "
            "patterns are all flat (constant or zero over the detector), so there is no direct "
            "beam to centre on and no structure to compare. The decomposed data are constant; "
            "check that the right data were loaded and decomposed"
        )


def _signal_mask(signal):
    """The decomposition's ``signal_mask`` (qy, qx), True = excluded, or None.

    Passed to the clustering's direct-beam search
    (:func:`hyperspy_cnmf._beam.beam_search_pixels`) when it must find the beam.
    """
    mask = getattr(signal.learning_results, "signal_mask", None)
    if mask is None:
        return None
    return np.asarray(mask, dtype=bool).reshape(_signal_geometry(signal)[0])


def _warn_origin_off_detector(signal, beam):
    """Warn when the calibrated origin lies outside the detector: it is not used as the centre."""
    (ny, nx), _, _, _ = _signal_geometry(signal)
    cx, cy = calibrated_origin_px(signal)
    # within a pixel of the detector: the first pixel of uncalibrated axes (offset 0),
    # shifted by binning (the NIST scan binned 4 x 4: -0.375 px); no calibration to report
    if np.isfinite(cx) and np.isfinite(cy) and -1 <= cx <= nx and -1 <= cy <= ny:
        return
    instead = (
        "the direct beam is found on the data instead"
        if beam is None
        else f"the direct beam measured on the data ({beam.x:.2f}, {beam.y:.2f}) px is used instead"
    )
    warn(
        f"The calibrated origin of the signal axes (where both read 0; pyxem's "
        f"s.calibration.center) is at ({cx:.6g}, {cy:.6g}) px, outside the detector (x in "
        f"[0, {nx - 1}], y in [0, {ny - 1}] px); it is not used as the centre: {instead}. Set the "
        "signal axes' offsets so that (0, 0) is on the beam (pyxem: s.calibration.center = "
        "None, or the beam's pixel), or pass `centre` explicitly.",
        UserWarning,
    )


def _default_centre_px(signal):
    """The direct beam measured on the data, checked against the calibrated origin.

    One centre for the decomposition and the clustering: the beam that the
    constrained NMF measured on the mean pattern (recorded in
    ``cnmf_parameters``). A calibrated origin inside the detector that lies
    more than :data:`CENTRE_TOLERANCE_PX` from it is reported and not used;
    so is a calibrated origin off the detector (e.g. pyxem's
    ``s.calibration.center`` set far outside the signal axes: a unit or
    sign mistake). Without such a record: the calibrated origin, else None
    (the beam is found on the data: the factors or the mean pattern).
    """
    origin = _calibrated_origin_px(signal)
    beam = _measured_beam_px(signal)
    _warn_origin_off_detector(signal, beam)
    if beam is None:
        return origin
    beam = beam.xy
    if origin is not None:
        off = float(np.hypot(origin[0] - beam[0], origin[1] - beam[1]))
        if off > CENTRE_TOLERANCE_PX:
            warn(
                f"The calibrated origin of the signal axes ({origin[0]:.2f}, {origin[1]:.2f}) px is "
                f"{off:.2f} px from the direct beam measured on the data ({beam[0]:.2f}, "
                f"{beam[1]:.2f}) px; the measured beam is used. Set the signal axes' offsets so that "
                "(0, 0) is on the beam, or pass `centre` explicitly.",
                UserWarning,
            )
    return beam


def _geometry_to_px(signal, centre, units, radial_range, direct_beam_radius):
    """Centre ``(x, y)``, radial range and beam radius converted to px.

    The centre is the explicit one, else the calibrated origin when it lies
    inside the detector, else None (found by the core); a ``"auto"`` beam
    radius is passed on (estimated by the core).
    """
    _check_units(units)
    if centre is None:
        cpx = _default_centre_px(signal)
    else:
        try:
            x, y = (float(v) for v in centre)
        except (TypeError, ValueError):
            raise ValueError(
                f"`centre` must be a pair (x, y), got {centre!r}."
            ) from None
        if units == "calibrated":
            _, (sx, sy), (ox, oy), _ = _signal_geometry(signal)
            x, y = (x - ox) / sx, (y - oy) / sy
        cpx = (x, y)
    rr = None
    if radial_range is not None:
        try:
            r0, r1 = radial_range
        except (TypeError, ValueError):
            raise ValueError("`radial_range` must be a pair (r_min, r_max).") from None
        rr = (_length_to_px(signal, r0, units), _length_to_px(signal, r1, units))
    return cpx, rr, _length_to_px(signal, direct_beam_radius, units)


def _resolve_geometry(
    signal, centre, units, radial_range, direct_beam_radius, reference_pattern
):
    """As :func:`_geometry_to_px`, with the centre and beam radius resolved.

    A centre found here is found on ``reference_pattern`` outside the
    decomposition's ``signal_mask`` (:func:`_signal_mask`).
    """
    cpx, rr, dbr = _geometry_to_px(
        signal, centre, units, radial_range, direct_beam_radius
    )
    shape = _signal_geometry(signal)[0]
    if cpx is None:
        with np.errstate(invalid="ignore"):
            cpx = core.find_direct_beam(
                reference_pattern,
                mask=core._polar.beam_search_mask(_signal_mask(signal)),
            )
    elif centre is not None:
        cpx = core._polar._check_centre(cpx, shape)
    if isinstance(dbr, str):
        if dbr != "auto":
            raise ValueError("`direct_beam_radius` must be a number, 'auto' or None.")
        dbr = core.estimate_direct_beam_radius(reference_pattern, cpx)
    return cpx, rr, dbr


# --------------------------------------------------------------------------
# Signal builders
# --------------------------------------------------------------------------
def _pattern_stack_signal(signal, data, axis_name, title):
    """(n, qy, qx) array -> a 4D-STEM-typed signal, calibrated like ``signal``."""
    axes = [{"size": data.shape[0], "name": axis_name, "navigate": True}]
    for d in signal.axes_manager._get_signal_axes_dicts():
        d = dict(d)
        d["navigate"] = False
        axes.append(d)
    out = Signal2D(np.asarray(data), axes=axes)
    out.set_signal_type(signal.metadata.Signal.signal_type)
    out.metadata.General.title = title
    return out


def _nav_stack_signal(signal, data, axis_name, title):
    """(n,) + navigation-shape array -> a signal over the navigation axes."""
    nav = [dict(d) for d in signal.axes_manager._get_navigation_axes_dicts()]
    for d in nav:
        d["navigate"] = False
    axes = [{"size": data.shape[0], "name": axis_name, "navigate": True}] + nav
    cls = {1: Signal1D, 2: Signal2D}.get(len(nav), BaseSignal)
    out = cls(np.asarray(data), axes=axes)
    out.metadata.General.title = title
    return out


def _vector_signal(values, axis_name, title, units=None):
    axis = {"size": len(values), "name": axis_name, "navigate": False}
    out = Signal1D(np.asarray(values), axes=[axis])
    out.metadata.General.title = title
    if units is not None:
        out.metadata.set_item("Signal.quantity", units)
    return out


def _matrix_signal(matrix, axis_name, title):
    axes = [
        {"size": matrix.shape[0], "name": axis_name, "navigate": False},
        {"size": matrix.shape[1], "name": axis_name, "navigate": False},
    ]
    out = Signal2D(np.asarray(matrix), axes=axes)
    out.metadata.General.title = title
    return out


# --------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------
def _source(source):
    """``learning_results`` prefix and result class of a clustering ``source``."""
    if source not in _SOURCES:
        raise ValueError("`source` must be 'components' or 'patterns'.")
    return _SOURCES[source]


def _read_clustering(signal, source):
    """The stored clustering of ``source`` (merged factors as (c, qy, qx)), or None."""
    prefix, cls = _source(source)
    qyqx = _signal_geometry(signal)[0]
    shapes = {"merged_factors": qyqx, "mean_patterns": qyqx, "refit_factors": qyqx}
    res = from_learning_results(signal.learning_results, cls, prefix, shapes=shapes)
    return None if res is None or res.labels is None else res


def _polar_kwargs(cpx, radii, delta_r, n_theta, dbr):
    """Polar-transform arguments that reproduce a polar grid."""
    return dict(
        centre=cpx,
        radial_range=(radii[0], radii[-1]),
        delta_r=delta_r,
        n_theta=n_theta,
        direct_beam_radius=dbr,
    )


def _fill_hyperspy_cluster_fields(
    lr, labels_pos, sum_signals, centroid_signals, distances, algorithm
):
    """Write HyperSpy's ``cluster_*`` fields (shapes as in cluster_analysis)."""
    n_c = sum_signals.shape[0]
    lab = np.zeros((n_c, labels_pos.size), dtype=bool)
    for c in range(n_c):
        lab[c] = labels_pos == c
    lr.cluster_labels = lab
    lr.number_of_clusters = int(n_c)
    lr.cluster_algorithm = algorithm
    lr.cluster_sum_signals = np.asarray(sum_signals, dtype=np.float64)
    lr.cluster_centroid_signals = np.asarray(centroid_signals, dtype=np.float64)
    lr.cluster_distances = np.asarray(distances, dtype=np.float64)
    members = lab.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        lr.cluster_centers = np.where(members > 0, sum_signals / members, np.nan)
    lr.cluster_centroids = None


def _warn_map_artefacts(res):
    """One warning naming the components whose map is a single position or the scan edge."""
    flagged = {
        code: res.components[res.map_artefact == code].tolist()
        for code in (1, 2)
        if np.any(res.map_artefact == code)
    }
    if flagged:
        what = "; ".join(
            f"{core.MAP_ARTEFACTS[c]}: components {v}" for c, v in flagged.items()
        )
        warn(
            f"Component maps that are no feature of the sample ({what}): noise spikes or scan "
            "artefacts fitted by too many components. Their clusters are not phases; consider a "
            "smaller output_dimension. Flagged in learning_results.cdiff_map_artefact.",
            UserWarning,
        )


def _select_components(lr, components):
    factors = lr.factors
    if factors is None or lr.loadings is None:
        raise RuntimeError(
            "No decomposition found: run `decomposition` first (e.g. "
            "`s.decomposition(algorithm='constrained_nmf', output_dimension=30)`)."
        )
    n_total = factors.shape[1]
    if components is None:
        n = lr.output_dimension or lr.number_significant_components or n_total
        idx = np.arange(min(int(n), n_total))
    elif np.ndim(components) == 0:
        idx = np.arange(min(int(components), n_total))
    else:
        idx = np.asarray(components, dtype=np.int64).ravel()
        if idx.size and (idx.min() < -n_total or idx.max() >= n_total):
            raise ValueError(f"`components` must be indices in [0, {n_total}).")
        idx = np.unique(idx % n_total)
    if idx.size < 2:
        raise ValueError(
            f"At least 2 components are needed to cluster, got {idx.size}; "
            "run the decomposition with more components (the method uses "
            "deliberately many, e.g. 30)."
        )
    return idx


# --------------------------------------------------------------------------
# Public methods
# --------------------------------------------------------------------------
@fill_doc
def cluster_diffraction(
    self,
    n_clusters=None,
    distance_threshold=None,
    method="average",
    components=None,
    centre=None,
    units="calibrated",
    radial_range=None,
    delta_r=1.0,
    n_theta=None,
    delta_theta=None,
    direct_beam_radius="auto",
    intensity_transform_function=None,
    normalize="pearson",
    radial_weighting="r",
    mirror=False,
    min_structure_fraction=0.1,
    dominance_percentiles=(0.0, 100.0),
    map_smoothing=None,
    particle_threshold=core.PARTICLE_THRESHOLD,
    min_map_compactness=core.MIN_MAP_COMPACTNESS,
    min_cluster_positions="auto",
    max_enclosure=core.MAX_ENCLOSURE,
    disk_radius="auto",
    grain_patterns=True,
    refit="auto",
):
    """Group the decomposition components by rotation-invariant diffraction similarity.

    The clustering of Kimoto et al., *Sci. Rep.* 15, 39143 (2025). Every
    component's diffraction pattern (a column of ``learning_results.factors``)
    is transformed to polar coordinates about the direct beam; each pair is
    compared by its normalised cross-correlation along the azimuth,
    maximised over the rotation (so rotated grains of one phase match), the
    pseudo-distance ``1 - max CC`` is clustered hierarchically, and the
    members of each cluster are rotated onto the cluster's reference
    component and summed. Run the decomposition with deliberately many
    components (the paper uses 30): the clustering merges the split and
    rotated ones into phases.

    Works from ``learning_results`` (small arrays), plus one read of the
    scan bands that hold grain positions for ``grain_patterns``; lazy and
    in-memory signals give the same result.

    Parameters
    ----------
    self : STEM4D or LazySTEM4D
        A signal with a decomposition (non-negative factors expected, e.g.
        ``decomposition(algorithm="constrained_nmf", output_dimension=30)``).
    %(cluster_cut)s
    components : int or list of int, optional
        The first ``components`` components, or these indices. Default: all
        ``output_dimension`` (or ``number_significant_components``)
        components.
    centre : tuple of float, optional
        Direct-beam position ``(x, y)`` in ``units``. Default: the beam that
        the constrained NMF measured on the mean pattern (the decomposition's
        centre; a calibrated origin more than 0.5 px away from it is reported
        with a ``UserWarning`` and not used); after another decomposition
        algorithm, the calibrated origin ``(0, 0)`` of the signal axes when it
        lies inside the detector (at least 1 px from the border), otherwise
        the direct beam found in the intensity-weighted sum of the factors
        (:func:`~hyperspy_cnmf.clustering.find_direct_beam`). A centre outside
        the pattern raises ``ValueError``.
    %(units)s
    %(polar_grid_clustering)s
    direct_beam_radius : float, "auto" or None, default "auto"
        Rings inside this radius are left out of the correlation. The direct
        beam carries no structural information but is by far the brightest
        feature; ``"auto"`` masks the disk found on the radial profile of the
        weighted sum of the factors plus 1 px
        (:func:`~hyperspy_cnmf.clustering.estimate_direct_beam_radius`).
    %(similarity)s
    %(component_maps)s
    min_cluster_positions : "auto", int or None, default "auto"
        With ``n_clusters`` None: a cluster that dominates fewer probe
        positions is dissolved, its components joining the clusters whose
        maps correlate best with theirs, and the positions are labelled
        again (the smallest first; nothing is dissolved when every cluster
        is that small). ``"auto"``: ``pi r^2 / 2`` with ``r`` the
        decomposition's map resolution (the probe's FWHM) in scan steps,
        half the region a point-like particle blurred by the probe dominates
        at the default ``particle_threshold``; 0 when the decomposition
        recorded none. In the paper's over-complete workflow such clusters
        are a few positions' noise or a fragment of one grain's reflections.
        Measured on the multislice cases of ``benchmarks/quality_physics.py``
        at k = 30 (``"auto"`` is 5 positions there): 18 -> 7 clusters and
        ARI 0.755 -> 0.796 on the descan case, 8 -> 5 and 0.835 -> 0.810 on
        the 2-phase case. None or 0 switches it off.
    max_enclosure : float in (0, 1] or None, default 0.3
        With ``n_clusters`` None: a particle cluster more than this share of
        whose border (the positions next to its own) one larger particle
        cluster holds is a piece of that cluster's grain (its core, rim or a
        patch of it, whose other reflections an over-complete NMF gave to
        other components) and joins it, provided some member of each still
        diffract alike (pseudo-distance within twice the cut's; pieces of one
        grain reached 0.24-0.49 on the multislice cases, grains of different
        phases in contact 0.76-0.91); the positions are labelled again.
        Grains of different phases that touch share a small part of their
        borders (0.07-0.12 for disks 2-8 scan steps across, 0.19-0.29 when
        they overlap by 1 step in projection). The number joined is recorded
        as ``joined_clusters`` in ``cdiff_parameters``
        (:data:`~hyperspy_cnmf.clustering.MAX_ENCLOSURE` gives the
        measurements). None switches it off.

    disk_radius : "auto", float or None, default "auto"
        Radius of the Bragg disks (the direct beam's; in ``units``). With
        ``n_clusters`` None, a particle cluster is parted where its
        components' Bragg-disk geometry differs beyond a pseudo-distance of
        0.4 (:data:`~hyperspy_cnmf.clustering.SPLIT_DISTANCE`) while their
        maps lie apart: grains of two phases with disks on the same rings,
        e.g. B2-CuZr [001] and CuZr2 [100], which the pattern correlation
        merges (:func:`~hyperspy_cnmf.clustering.bragg_disk_image`); the
        matrix (extended) cluster is never parted, and a parted group whose
        map is the matrix's joins it (:data:`~hyperspy_cnmf.clustering.MATRIX_OVERLAP`).
        And where the pieces rule is on (``max_enclosure`` not None), particle
        clusters that touch and whose counts lie mostly in components with one
        Bragg-disk geometry *without* rotation (one crystal: the same lattice
        in the same orientation) join: the patches a low-dose grain falls
        into at over-complete k (counted in ``joined_clusters``). ``"auto"``:
        the direct-beam radius the decomposition measured (both rules off,
        with a warning, when it recorded none); None switches both rules off;
        a value more than twice or less than half the measured radius warns
        (a value in the wrong ``units``). Recorded as ``disk_radius_px``, the
        number of groups parted as ``split_clusters``, in ``cdiff_parameters``.
    grain_patterns : bool, default True
        With ``n_clusters`` None and a disk radius: once the positions are
        labelled, the phase of every grain (a connected region of one
        particle cluster's positions) is told again from the mean of its own
        patterns in the data, by their Bragg-disk geometry
        (:func:`~hyperspy_cnmf.clustering.bragg_disk_image`, rotation-invariant
        pseudo-distance, average-linkage cut at 0.25 over the regions of at
        least 20 positions; smaller regions join the nearest group, the grain
        they touch, the small regions of their pattern in other clusters when
        those hold 20 positions, or their cluster's). Regions of matrix
        positions where the matrix's own summed map rises above 1.5 times
        its median and :data:`~hyperspy_cnmf.clustering.MATRIX_RISE_Z`
        robust z (a grain that the matrix's components carry: the glass's
        map can only dip inside a grain), and where a particle component's
        map rises above :data:`~hyperspy_cnmf.clustering.PARTICLE_RISE` of
        its range away from every grain (a second grain it carries weakly;
        placed by its pattern only), are classed the same way
        (``grain_rise_regions``). Where the matrix's
        responses to a grain's disk filter spread beyond counting noise (the
        glass's speckle at high counts,
        :data:`~hyperspy_cnmf.clustering.SPECKLE_RATIO`), a region is a
        crystal only if the upper quartile of its own positions' responses
        stands :data:`~hyperspy_cnmf.clustering.CRYSTAL_Z` robust z above
        the matrix's (less for regions beyond 20 positions, as
        ``sqrt(20 / n)``): patches of speckle that over-complete components
        took make no phase. Where counting noise dominates, a cluster's
        small regions make a phase of their own when those whose responses'
        upper quartile stands
        :data:`~hyperspy_cnmf.clustering.STRONG_CRYSTAL_Z` robust z above the
        matrix's hold
        :data:`~hyperspy_cnmf.clustering.STRONG_CRYSTAL_POSITIONS` positions
        and their pattern is clearly none of the large grains' groups (twice
        the cut away): a grain whose component holds only its core.
        An NMF component that took grains of
        two phases (too few components, or two near patterns) no longer puts
        them in one cluster, and pieces of one phase spread over several
        clusters meet; components then belong to the cluster where most of
        their map lies (for a component that held grains of two phases, the
        merged maps follow the components, the position labels follow the
        grains: the labels are the phase map). Measured on multislice cases:
        :data:`~hyperspy_cnmf.clustering.MIN_GRAIN_POSITIONS`. In the same
        read, the matrix positions next to each grain join it where their
        patterns show its Bragg disks detectably above the matrix around it
        (robust z of the grain's disk filter against the matrix 4-10
        positions away at least :data:`~hyperspy_cnmf.clustering.RIM_Z`) and
        at least :data:`~hyperspy_cnmf.clustering.RIM_EDGE_FRACTION` as
        strongly as the grain's own edge: the thin rims of spherical grains.
        Their number is recorded as ``grain_rim_positions``; the grain's own
        positions whose patterns stay below
        :data:`~hyperspy_cnmf.clustering.GRAIN_RELEASE_Z` of that measure go
        back to the matrix (``grain_released_positions``). Rims grow only
        when the decomposition's probe FWHM (from the calibration,
        ``map_resolution``) is at most
        :data:`~hyperspy_cnmf.clustering.RIM_MAX_PROBE_FWHM` scan steps: a
        broader probe shows a grain's disks one step outside it as strongly.
        Each grain's patterns are taken about its own direct beam
        (``cnmf_beam_positions``, measured by the decomposition): descan
        left uncorrected moves the whole pattern. Costs one read of the scan
        bands that hold grain positions and their matrix surroundings up to
        ``RIM_NULL_SHELL[1]`` = 10 positions away; a lazy signal is read band
        by band. The number of regions compared is recorded as
        ``grain_regions``, the share of the scan read as
        ``grain_pattern_reads``, in ``cdiff_parameters``. False: the labels
        of the component clusters as they are.
    refit : "auto", True or False, default "auto"
        With ``n_clusters`` None, ``grain_patterns`` and a disk radius, after
        a ``decomposition(algorithm="constrained_nmf")``: the over-complete
        fit (the paper's k = 30) finds the grains, a fit with one component
        per grain gives them their maps. The components are clustered once
        with the model's own patterns (no read) and the grains counted in
        its position labels (:func:`~hyperspy_cnmf.clustering.grain_count`:
        connected regions of at least
        :data:`~hyperspy_cnmf.clustering.REFIT_GRAIN_POSITIONS` positions of
        every cluster but the matrix, taken to be the cluster with the most
        positions). Where at least one grain is counted and the clustered
        components are over-complete (at least
        :data:`~hyperspy_cnmf.clustering.REFIT_OVER_COMPLETE` times one
        per grain and one for the matrix), that many plus
        :data:`~hyperspy_cnmf.clustering.REFIT_SPARE` spare are fitted to
        their model ``loadings @ factors.T`` with the decomposition's
        weights, constraints and settings (no read of the data:
        :class:`~hyperspy_cnmf.nmf.FactoredOperator`; up to its ``max_iter``
        iterations), without the spare where it splits the matrix into two
        phases, and those are clustered as above, reading the data once. A
        refit that leaves more than
        :data:`~hyperspy_cnmf.clustering.REFIT_MAX_UNEXPLAINED` of the model
        unexplained, or whose clustering (with the model's patterns) labels
        fewer than two phases where the count's labelled two or more, is
        dropped: a scan with no amorphous matrix (a polycrystalline film)
        has no matrix for the count to leave out, it misses grains, and the
        clustering of the decomposition's own components is kept.
        Over-complete components split the matrix's speckle into patches and
        share the grains' rims with it; in the refit neither has a component
        of its own. The result's
        components are then the refit's (``labels``, ``rotation``, the
        dendrogram; ``cdiff_refit_factors`` and ``cdiff_refit_loadings``
        hold them); the decomposition in ``learning_results`` is left as it
        is. Recorded as ``refit`` (the argument), ``refit_grains``,
        ``refit_components`` (0: none), ``refit_n_iter``, ``refit_converged``
        and, where "auto" did not refit, ``refit_note`` (why) in
        ``cdiff_parameters``. Measured: see
        :data:`~hyperspy_cnmf.clustering.REFIT_SPARE`. False: the paper's
        clustering of the decomposition's own components.

    Returns
    -------
    dict
        HyperSpy signals: ``"labels"`` (cluster of each component),
        ``"rotation"`` (deg, of each component onto its cluster reference),
        ``"pseudo_distance"`` (k x k), ``"linkage"``, ``"merged_factors"``
        (rotation-aligned merged diffraction per cluster, a signal of the
        input's type with calibrated detector axes: ``ElectronDiffraction2D``
        for pyxem's, with its beam energy and mask: the members' factors, the
        crystal's share alone), ``"mean_patterns"`` (the rotation-aligned mean
        of the model's pattern over each cluster's positions, counts per
        position, the same signal type: what the phase's positions show, the
        matrix under a grain and the direct beam's tail included, without the
        valleys that the separation of the components carves into single
        factors; what :meth:`plot_cluster_gallery` shows),
        ``"merged_maps"`` (summed map per cluster) and ``"position_labels"``
        (dominant cluster at each probe position, -1 where unlabelled); with
        a refit, ``"refit_factors"`` and ``"refit_loadings"`` (the clustered
        components, which ``"labels"`` and ``"rotation"`` then number). The
        same as :meth:`get_cluster_diffraction_results`. HyperSpy's
        ``learning_results.cluster_sum_signals`` holds the mean patterns
        times each cluster's positions (the sum of its positions' aligned
        model patterns: the rotations move counts, corners that they bring
        in from outside the detector are the unrotated mean's),
        ``cluster_centers`` the mean patterns.

    Raises
    ------
    RuntimeError
        If there is no decomposition yet.
    ValueError
        For fewer than 2 components, a centre outside the pattern or
        inconsistent arguments.

    See Also
    --------
    plot_cluster_dendrogram, plot_cluster_gallery, cluster_patterns,
    polar_transform

    Notes
    -----
    *Units.* Component ``i`` contributes ``loading_i(p) * factor_i(q)`` to
    the data. The merged diffraction of a cluster is
    ``sum_i T_i(factor_i) * sum_p loading_i(p)`` (``T_i``: rotation onto the
    reference) and its map ``sum_i loading_i(p) * sum_q factor_i(q)``: the
    counts of the cluster summed over the scan, respectively over the
    detector. Both are independent of how the decomposition splits the scale
    between factors and loadings.

    *Rotation.* Angles are measured from the +kx axis towards +ky
    (clockwise on screen with ky pointing down, the HyperSpy display);
    ``cdiff_rotation[i]`` is the angle by which component ``i`` is turned
    (after the mirror ``phi -> -phi`` if ``cdiff_mirrored[i]``) to match its
    cluster reference. pyxem's azimuth runs the other way (from +kx towards
    -ky, in rad): in its convention the rotation is ``-cdiff_rotation``.

    *HyperSpy cluster fields.* So that :meth:`plot_cluster_results`,
    :meth:`get_cluster_labels` and :meth:`get_cluster_signals` work, the
    navigation positions are labelled with their *dominant* cluster. A plain
    argmax of the maps (data units) would give every position to the matrix,
    which is strong everywhere, also inside precipitates. Instead:

    0. when texture components were grouped (over-complete k), the model
       pattern of every position (on the compared annulus) is fitted again
       by non-negative least squares with the texture group's summed pattern
       as one pattern beside every other component, and each cluster's
       fitted share of the position is split among its members as their
       maps were: the reflections a few speckle components took from a grain
       return to the grain's cluster (at k = 30 on the multislice cases and
       the embedded default, random_state 0-2, mean position ARI 0.854
       without this step and 0.873 with it:
       ``python benchmarks/quality_rules.py``);
    1. the components of each cluster are grouped into *objects*, the pieces
       of one grain (or of the matrix) whose half-maximum regions lie side by
       side (:func:`~hyperspy_cnmf.clustering.map_objects`), and each object
       map is rescaled to its own range, ``n = (M - min) / (max - min)``;
    2. clusters whose summed map is above half its range on most of the scan
       are *extended* (the matrix); when none is (the speckled map of an
       amorphous matrix split into many components), the cluster with the
       largest median over the scan relative to its range is (the matrix is
       present everywhere);
       the others are particles;
    3. a particle object, rescaled from its median over the scan to its
       peak, claims the positions where it reaches ``particle_threshold``
       (0.10) and also stands 3 standard deviations of its own map noise
       above its median (the noise estimated from the scan's median absolute
       deviation): a thin precipitate's Bragg intensity grows as its
       projected thickness squared (kinematic scattering; zero at the rim of
       a sphere), blurred by the probe, so the probe centres inside the
       particle reach down to about a tenth of its peak. Only connected
       regions that also reach half the peak are kept (hysteresis), so map
       noise away from the grain claims nothing. The largest ``n`` wins where
       particles overlap, and every other position goes to the extended
       object with the largest ``n``
       (:func:`~hyperspy_cnmf.clustering.dominant_labels` with ``extended``);
    4. with ``n_clusters`` None, clusters dominating fewer than
       ``min_cluster_positions`` are dissolved, and a particle cluster whose
       border is held beyond ``max_enclosure`` by one larger particle cluster
       with a similar member joins it (a piece of its grain); the positions
       are labelled again.

    Rescaling per object judges every grain against its own peak (with one
    range per cluster the tails of all the grains of a phase add up), and
    letting the particles set the outline makes it independent of how deep
    the matrix map dips, which the NMF does not fix (grain components often
    carry part of the amorphous halo). Against the geometric phase map (the
    probe centre inside a grain's projected disk), at k = the true count, the
    position ARI is 0.894 / 0.859 / 0.862 on the three multislice cases of
    ``benchmarks/quality_physics.py`` (random_state 0) with these rules,
    against 0.76 / 0.70 / 0.71 with the former half-maximum rule, and 0.959
    on the package's own simulator; see
    :data:`~hyperspy_cnmf.clustering.PARTICLE_THRESHOLD`. These hold for
    precipitates well inside a matrix that covers most of the scan; grains
    near the probe's size are labelled less well, and a grain covering more
    than about half of the scan is taken for the matrix.
    Then, with clusters numbered by decreasing number of dominated positions:

    - ``cluster_labels`` (c, nav_size) bool: the dominant-cluster
      membership; masked positions belong to no cluster;
    - ``cluster_sum_signals`` (c, sig_size): the sum of the model's
      patterns over the dominated positions, each rotated as the cluster
      aligns the member that dominates it (``mean_patterns`` times their
      number), so ``get_cluster_signals("mean")`` is ``mean_patterns``
      (before issue 10's item 9: the merged diffraction, the cluster's
      factors' counts summed over the whole scan);
    - ``cluster_centroid_signals`` (c, sig_size): the reference component's
      factor scaled by its mean loading over the dominated positions;
    - ``cluster_distances`` (c, nav_size): ``1 - score`` clipped to
      [0, 1], the score being the rescaled map of step 3 (a particle: ``n``
      where ``n >= 0.5``, else 0; the matrix: ``n / 2``), the largest over
      the cluster's objects; the smallest is the label (HyperSpy: distance
      to the centroid);
    - ``cluster_centers``: the mean signals, ``number_of_clusters``,
      ``cluster_algorithm = "cluster_diffraction"``.

    Examples
    --------
    >>> from hyperspy_cnmf.data import simulated_precipitates
    >>> s = simulated_precipitates(scan_shape=(32, 32), n_grains=3)
    >>> s.decomposition(algorithm="constrained_nmf", output_dimension=8,
    ...                 print_info=False, random_state=0)
    >>> res = s.cluster_diffraction()
    >>> sorted(res)
    ['labels', 'linkage', 'mean_patterns', 'merged_factors', 'merged_maps', 'position_labels', 'pseudo_distance', 'refit_factors', 'refit_loadings', 'rotation']
    >>> res["labels"].data.shape, s.learning_results.number_of_clusters  # 3 grains: refit to 5
    ((5,), 3)
    >>> res["merged_factors"].plot()
    >>> fig = s.plot_cluster_dendrogram()
    >>> s.plot_cluster_results()
    """
    _check_4dstem_signal_axes(self)
    lr = self.learning_results
    min_positions = _min_cluster_positions(self, min_cluster_positions)
    _check_params(
        dict(
            particle_threshold=particle_threshold,
            min_map_compactness=min_map_compactness,
            max_enclosure=max_enclosure,
        ),
        _FRACTION_CONSTRAINTS,
    )
    idx = _select_components(lr, components)
    (qy, qx), _, _, _ = _signal_geometry(self)
    k = idx.size
    factors = np.asarray(lr.factors[:, idx], dtype=np.float64).T.reshape(k, qy, qx)
    _check_factor_structure(factors, _signal_mask(self))
    loadings = np.asarray(lr.loadings[:, idx], dtype=np.float64).T
    cpx, rr, dbr = _geometry_to_px(
        self, centre, units, radial_range, direct_beam_radius
    )
    region_patterns = (
        _region_mean_patterns(self, _excluded_defects(self, factors))
        if grain_patterns
        else None
    )
    if refit is True:
        refit = "auto"
    if refit not in ("auto", False):
        raise ValueError(f"`refit` must be 'auto' (or True) or False, got {refit!r}.")
    refitter = model_refit(self, idx) if refit == "auto" else None
    res = core.cluster_components(
        factors,
        loadings,
        cpx,
        nav_shape=tuple(self.axes_manager._navigation_shape_in_array),
        components=idx,
        n_clusters=n_clusters,
        distance_threshold=distance_threshold,
        method=method,
        radial_range=rr,
        delta_r=delta_r,
        n_theta=n_theta,
        delta_theta=delta_theta,
        direct_beam_radius=dbr,
        intensity_transform_function=intensity_transform_function,
        normalize=normalize,
        radial_weighting=radial_weighting,
        mirror=mirror,
        min_structure_fraction=min_structure_fraction,
        min_map_compactness=min_map_compactness,
        min_cluster_positions=min_positions,
        max_enclosure=max_enclosure,
        dominance_percentiles=dominance_percentiles,
        map_smoothing=map_smoothing,
        particle_threshold=particle_threshold,
        disk_radius=_disk_radius_px(self, disk_radius, units),
        signal_mask=_signal_mask(self),
        region_patterns=region_patterns,
        probe_fwhm=_probe_fwhm_steps(self),
        beam_positions=getattr(lr, "cnmf_beam_positions", None),
        refit=refitter,
    )
    res.parameters["refit"] = refit
    if refit == "auto" and refitter is None:
        res.parameters["refit_note"] = (
            "the decomposition recorded no weights (not constrained_nmf, or an older record): "
            "run it again to refit"
        )
    elif (
        refit == "auto"
        and "refit_note" not in res.parameters
        and not res.parameters.get("refit_components")
    ):
        res.parameters["refit_note"] = (
            "needs n_clusters=None, grain_patterns and a disk radius"
        )
    _warn_map_artefacts(res)
    clear_learning_results(lr, "cdiff_")  # no field of an older clustering stays
    to_learning_results(lr, res, "cdiff_")
    stamp_clustering(
        lr, "cdiff_"
    )  # the decomposition it was made from (checked by the getters)
    n_c = res.references.size
    counts = np.bincount(res.position_labels[res.position_labels >= 0], minlength=n_c)
    _fill_hyperspy_cluster_fields(
        lr,
        res.position_labels,
        res.mean_patterns.reshape(n_c, -1) * counts[:n_c, None],
        res.centroids.reshape(n_c, -1),
        res.distances,
        "cluster_diffraction",
    )
    return get_cluster_diffraction_results(self)


@fill_doc
def get_cluster_diffraction_results(self, source="components"):
    """Return the results of the last diffraction clustering as signals.

    Rebuilt from ``learning_results`` (so also after ``learning_results.load``
    or ``hs.load`` of a saved signal).

    Parameters
    ----------
    self : STEM4D or LazySTEM4D
    %(clustering_source)s

    Returns
    -------
    dict
        Signals ``"labels"``, ``"rotation"``, ``"pseudo_distance"``,
        ``"linkage"``, ``"merged_factors"``, ``"position_labels"`` and, for
        components, ``"mean_patterns"`` (absent for a clustering stored by
        a version before them) and ``"merged_maps"``; see
        :meth:`cluster_diffraction`.

    Raises
    ------
    RuntimeError
        If no such clustering was run, or it is stale: the decomposition
        changed after :meth:`cluster_diffraction` (a new decomposition
        removes it; another route, e.g. ``learning_results.load``, is
        detected by a fingerprint of the factors and loadings), or HyperSpy's
        ``cluster_analysis`` replaced the ``cluster_*`` fields since.

    Examples
    --------
    >>> from hyperspy_cnmf.data import simulated_precipitates
    >>> s = simulated_precipitates(scan_shape=(32, 32), n_grains=3)
    >>> s.decomposition(algorithm="constrained_nmf", output_dimension=8,
    ...                 print_info=False, random_state=0)
    >>> _ = s.cluster_diffraction()
    >>> res = s.get_cluster_diffraction_results()
    >>> res["merged_factors"]  # doctest: +ELLIPSIS
    <STEM4D, title: Merged diffraction of clusters of ..., dimensions: (3|48, 48)>
    """
    res = _read_clustering(self, source)
    if res is None:
        raise RuntimeError(
            "No diffraction clustering found: run "
            + (
                "`cluster_diffraction`"
                if source == "components"
                else "`cluster_patterns`"
            )
            + " first."
        )
    _check_current(self, source)
    return _results_signals(self, res, source)


def _check_current(signal, source):
    """Refuse a stored clustering that no longer matches ``learning_results`` (see ``_store.stale_clustering``)."""
    prefix, _ = _source(source)
    stale = stale_clustering(
        signal.learning_results,
        prefix,
        "cluster_diffraction" if source == "components" else "cluster_patterns",
    )
    if stale:
        raise RuntimeError(stale)


def _results_signals(signal, res, source):
    """Signals from a clustering result (merged factors as (c, qy, qx))."""
    refitted = getattr(res, "refit_factors", None) is not None
    item = "Component index" if source == "components" else "Pattern index"
    what = "component" if source == "components" else "pattern"
    if refitted:
        item, what = "Refit component index", "refit component"
    merged = np.asarray(res.merged_factors)
    n_c = merged.shape[0]
    title = signal.metadata.General.title
    out = {
        "labels": _vector_signal(res.labels, item, f"Cluster of each {what}"),
        "rotation": _vector_signal(
            res.rotation,
            item,
            "Rotation onto the cluster reference",
            "Rotation (deg)",
        ),
        "pseudo_distance": _matrix_signal(
            res.pseudo_distance, item, "Pseudo-distance 1 - CC"
        ),
        "linkage": BaseSignal(np.asarray(res.linkage)),
        "merged_factors": _pattern_stack_signal(
            signal,
            merged,
            "Cluster index",
            ("Merged diffraction" if source == "components" else "Mean pattern")
            + f" of clusters of {title}",
        ),
    }
    out["merged_factors"].metadata.set_item(
        "Signal.quantity",
        "Intensity summed over the scan (data units)"
        if source == "components"
        else "Intensity per probe position (data units)",
    )
    out["linkage"].metadata.General.title = "Linkage matrix"
    nav_shape = tuple(signal.axes_manager._navigation_shape_in_array)
    if getattr(res, "mean_patterns", None) is not None:
        out["mean_patterns"] = _pattern_stack_signal(
            signal,
            np.asarray(res.mean_patterns),
            "Cluster index",
            f"Mean pattern of the positions of clusters of {title}",
        )
        out["mean_patterns"].metadata.set_item(
            "Signal.quantity", "Intensity per probe position (data units)"
        )
    if source == "components":
        maps = np.asarray(res.merged_maps).reshape((n_c,) + nav_shape)
        out["merged_maps"] = _nav_stack_signal(
            signal, maps, "Cluster index", f"Summed maps of clusters of {title}"
        )
    if res.position_labels is not None:
        pos = np.asarray(res.position_labels).reshape(nav_shape)
        sig = signal._get_navigation_signal(pos)
        sig.metadata.General.title = f"Dominant cluster of {title}"
        out["position_labels"] = sig
    if refitted:
        refit = np.asarray(res.refit_factors)
        out["refit_factors"] = _pattern_stack_signal(
            signal, refit, item, f"Refit components' diffraction of {title}"
        )
        out["refit_loadings"] = _nav_stack_signal(
            signal,
            np.asarray(res.refit_loadings).reshape((refit.shape[0],) + nav_shape),
            item,
            f"Refit components' maps of {title}",
        )
    return out


def _nav_step_slices(signal, step):
    nd = signal.axes_manager.navigation_dimension
    if np.ndim(step) == 0:
        steps = (int(step),) * nd
    else:
        steps = tuple(int(s) for s in step)
        if len(steps) != nd:
            raise ValueError(
                f"`step` must be an int or {nd} ints (navigation axes order)."
            )
    if any(s < 1 for s in steps):
        raise ValueError("`step` must be >= 1.")
    # HyperSpy axis order (x, y) -> array order (y, x)
    return tuple(slice(None, None, s) for s in steps[::-1]), steps


def _compute(a):
    return np.asarray(a.compute() if hasattr(a, "compute") else a)


def _bands(data):
    """``(start, stop)`` rows of each band of the first navigation axis (array order).

    A band is one chunk of that axis of a dask array (every chunk of the
    other navigation axes with it), or all of an in-memory array.
    """
    bounds = np.cumsum(
        (0,) + (data.chunks[0] if hasattr(data, "chunks") else (data.shape[0],))
    )
    return zip(bounds[:-1].tolist(), bounds[1:].tolist())


def _iter_nav_blocks(signal, rows=256):
    """Yield the patterns (m, qy, qx), float64, of the flattened navigation in order.

    One pass over the data: a lazy signal is read one band at a time, a band
    being the chunks of one chunk of the first navigation axis (array order),
    so that every chunk is read once; the band, in its stored dtype, is cut
    into pieces of ``rows`` patterns that are converted to float64 one at a
    time. The band is the memory bound: one chunk where the chunks span the
    other navigation axes, as in the files this package writes.
    """
    data = signal.data
    qy, qx = data.shape[-2:]
    if data.ndim == 2:  # no navigation axis: one pattern
        yield _compute(data).astype(np.float64)[None]
        return
    for y0, y1 in _bands(data):
        band = _compute(data[y0:y1]).reshape(-1, qy, qx)
        for i0 in range(0, band.shape[0], rows):
            yield band[i0 : i0 + rows].astype(np.float64)
        del band


def _excluded_defects(signal, factors):
    """The pixels the decomposition left out (flat bool), but for its direct-beam disk.

    The masked and hot pixels hold no data to compare grains by; the direct
    beam's disk does (the Bragg-disk images leave it out by its radius), and
    zeroing it would change the rings' medians next to it.
    """
    out = np.all(np.isnan(factors), axis=0).ravel()
    beam = _measured_beam_px(signal)
    params = decomposition_settings(signal.learning_results) or {}
    radius = params.get("direct_beam_mask_radius_px") or 0.0
    if beam is not None and radius > 0:
        out &= ~_direct_beam_disk(radius, beam, factors.shape[1:])
    return out


def _finite_float64(rows):
    """``np.nan_to_num(rows.astype(np.float64))`` of fancy-indexed rows (a copy already).

    Integer data hold no NaN, and finite float data need no replacement: the
    full ``nan_to_num`` (three scans and a copy) only runs where a value is
    not finite. It took half of ``cluster_diffraction``'s read of a 1 GB
    scan (6.1 of 12.2 s, cProfile, session 19).
    """
    x = np.asarray(rows, dtype=np.float64)
    if rows.dtype.kind in "fc" and not np.isfinite(x).all():
        x = np.nan_to_num(x, copy=False)
    return x


def _region_mean_patterns(signal, excluded=None):
    """``region_patterns`` for :func:`~hyperspy_cnmf.clustering.cluster_components`.

    The returned function takes the region of every position (flat,
    navigation order; -1: none; regions numbered from 0), filters
    ``(n_filters, qy * qx)`` and the flat positions ``at`` with the filter
    of each, ``which``; it returns the mean pattern of each region, (n, qy,
    qx) float64, and every requested response ``pattern(at[i]) @
    filters[which[i]]`` (float64, ``(m,)``), from one read of the bands of
    the scan that hold a region's or a requested position (a lazy signal
    band by band, as :func:`_iter_nav_blocks`; the others are not read).
    The function's ``read_fraction`` attribute is then the share of the
    scan's patterns read (0 before it is called). The ``excluded`` pixels
    (flat, bool: those the decomposition left out, e.g. a hot pixel in
    ``signal_mask``) count as 0: a hot pixel would otherwise be the
    brightest "disk" of every grain's mean.
    """
    keep = None if excluded is None or not np.any(excluded) else ~np.asarray(excluded)

    def means(region, filters, at, which):
        (qy, qx), _, _, _ = _signal_geometry(signal)
        if keep is not None:
            # the excluded pixels count as 0: zeroed in the filters and in the sums, not
            # in a copy of every band (the data are never modified)
            filters = filters * keep
        n = int(region.max()) + 1
        sums = np.zeros((n, qy * qx))
        response = np.zeros(at.size)
        data = signal.data
        if data.ndim == 2:
            data = data[None]
        per_row = int(np.prod(data.shape[1:-2], dtype=np.int64))
        read = 0
        for y0, y1 in _bands(data):
            lo, hi = y0 * per_row, y1 * per_row
            r = region[lo:hi]
            asked = np.flatnonzero((at >= lo) & (at < hi))
            if not ((r >= 0).any() or asked.size):
                continue
            read += y1 - y0
            band = _compute(data[y0:y1]).reshape(-1, qy * qx)
            at_r = np.flatnonzero(r >= 0)
            if at_r.size:
                at_r = at_r[np.argsort(r[at_r], kind="stable")]
                first = np.flatnonzero(np.r_[True, np.diff(r[at_r]) > 0])
                sums[r[at_r[first]]] += np.add.reduceat(
                    _finite_float64(band[at_r]), first, axis=0
                )
            rows = response_block_rows(qy * qx)
            for i0 in range(0, asked.size, rows):
                part = asked[i0 : i0 + rows]
                x = _finite_float64(band[at[part] - lo])
                response[part] = np.einsum("ij,ij->i", x, filters[which[part]])
            del band
        means.read_fraction = read / data.shape[0]
        counts = np.bincount(region[region >= 0], minlength=n)
        sums /= np.maximum(counts, 1)[:, None]  # in place: regions x pixels once
        if keep is not None:
            sums *= keep
        return sums.reshape(n, qy, qx), response

    means.read_fraction = 0.0
    return means


def _own_patterns(signal, step, max_patterns):
    """Every ``step``-th pattern of the scan: (stack (n, qy, qx), flat indices, steps)."""
    (qy, qx), _, _, _ = _signal_geometry(signal)
    slices, steps = _nav_step_slices(signal, step)
    nav_shape = tuple(signal.axes_manager._navigation_shape_in_array)
    positions = np.arange(int(np.prod(nav_shape))).reshape(nav_shape)[slices].ravel()
    n = positions.size
    if n > max_patterns:
        raise ValueError(
            f"{n} patterns to cluster (> max_patterns={max_patterns}); "
            "increase `step` (or `max_patterns`)."
        )
    data = signal.data
    if not hasattr(data, "chunks") or data.ndim == 2:
        stack = _compute(data[slices + (Ellipsis,)])
    else:  # band by band (see _iter_nav_blocks), copied: no chunk stays alive
        s0, parts = slices[0].step, []
        for y0, y1 in _bands(data):
            first = -(-y0 // s0) * s0  # the first kept row of the band
            if first < y1:
                band = data[(slice(first, y1, s0),) + slices[1:] + (Ellipsis,)]
                parts.append(np.array(_compute(band), dtype=np.float64))
        stack = np.concatenate(parts)
    return np.asarray(stack, dtype=np.float64).reshape(-1, qy, qx), positions, steps


def _given_patterns(signal, patterns, max_patterns):
    """A user stack (array or signal) with this detector shape, (n, qy, qx) float64."""
    (qy, qx), _, _, _ = _signal_geometry(signal)
    if isinstance(patterns, BaseSignal):
        if patterns.axes_manager.signal_shape != signal.axes_manager.signal_shape:
            raise ValueError("`patterns` must have the signal shape of this signal.")
        arr = _compute(patterns.data)
    else:
        arr = _compute(patterns)
    if arr.shape[-2:] != (qy, qx):
        raise ValueError(
            f"`patterns` must have the detector shape {(qy, qx)}, got {arr.shape[-2:]}."
        )
    stack = arr.reshape(-1, qy, qx)
    if stack.shape[0] > max_patterns:
        raise ValueError(
            f"{stack.shape[0]} patterns to cluster (> max_patterns={max_patterns})."
        )
    return np.asarray(stack, dtype=np.float64)


@fill_doc
def cluster_patterns(
    self,
    patterns=None,
    step=1,
    n_clusters=None,
    distance_threshold=None,
    method="average",
    centre=None,
    units="calibrated",
    radial_range=None,
    delta_r=1.0,
    n_theta=None,
    delta_theta=None,
    direct_beam_radius="auto",
    intensity_transform_function=None,
    normalize="pearson",
    radial_weighting="r",
    mirror=False,
    max_patterns=4096,
):
    """Rotation-invariant clustering of the patterns of the probe positions.

    The similarity and hierarchical clustering of
    :meth:`cluster_diffraction`, applied to diffraction patterns instead of
    decomposition components: the patterns of this signal's navigation
    positions (every ``step``-th position along each navigation axis), or
    any stack of patterns passed as ``patterns``. The number of pairs grows as
    the square of the number of patterns; keep it to a few thousand
    (``max_patterns``) by subsampling with ``step``. Raw patterns share the
    matrix (halo, direct beam), so the pseudo-distances between phases are
    smaller than between NMF components (0.1-0.2 on the simulated
    precipitates): give ``n_clusters`` or choose the cut on
    :meth:`plot_cluster_dendrogram` ``(source="patterns")``.

    Parameters
    ----------
    self : STEM4D or LazySTEM4D
    patterns : array_like or BaseSignal, optional
        A stack ``(..., qy, qx)`` of patterns with this signal's detector
        shape (and calibration), or a signal with the same signal shape.
        When given, the results are returned only (not stored).
    step : int or tuple of int, default 1
        Subsampling of the navigation axes (HyperSpy axis order, ``x`` first)
        when ``patterns`` is None.
    %(cluster_cut)s
    centre, direct_beam_radius
        See :meth:`cluster_diffraction`; the automatic centre and direct-beam
        radius use the mean of the clustered patterns.
    %(units)s
    %(polar_grid)s
    %(similarity)s
    max_patterns : int, default 4096
        Refuse to cluster more patterns than this (memory and time grow as
        its square).

    Returns
    -------
    dict
        Signals ``"labels"`` (cluster of each clustered pattern, numbered by
        decreasing size), ``"rotation"`` (deg, onto the cluster reference),
        ``"pseudo_distance"``, ``"linkage"``, ``"merged_factors"``
        (rotation-aligned *mean* pattern per cluster) and, for this signal's
        own patterns, ``"position_labels"`` (every navigation position).

    Notes
    -----
    For this signal's own patterns the results are stored with the prefix
    ``cpat_`` in ``learning_results`` and HyperSpy's ``cluster_*`` fields are
    filled for *every* navigation position: the clustered positions keep
    their hierarchical label; with ``step > 1`` the other positions get the
    cluster whose aligned mean pattern they correlate best with (after the
    best rotation). ``cluster_distances`` is ``1 - max CC`` of each position
    with each cluster's mean pattern, ``cluster_sum_signals`` the aligned
    sum of the member patterns, ``cluster_centroid_signals`` the reference
    (medoid) pattern.

    Examples
    --------
    >>> from hyperspy_cnmf.data import simulated_precipitates
    >>> s = simulated_precipitates(scan_shape=(24, 24), n_grains=2)
    >>> res = s.cluster_patterns(step=2, n_clusters=3)
    >>> s.get_cluster_labels(merged=True).plot()
    """
    _check_4dstem_signal_axes(self)
    (qy, qx), _, _, _ = _signal_geometry(self)
    own = patterns is None
    if own:
        stack, positions, steps = _own_patterns(self, step, max_patterns)
    else:
        stack, positions, steps = (
            _given_patterns(self, patterns, max_patterns),
            None,
            None,
        )
    n = stack.shape[0]
    if n < 2:
        raise ValueError(f"At least 2 patterns are needed to cluster, got {n}.")
    cpx, rr, dbr = _geometry_to_px(
        self, centre, units, radial_range, direct_beam_radius
    )
    res = core.cluster_patterns(
        stack,
        centre=cpx,
        n_clusters=n_clusters,
        distance_threshold=distance_threshold,
        method=method,
        radial_range=rr,
        delta_r=delta_r,
        n_theta=n_theta,
        delta_theta=delta_theta,
        direct_beam_radius=dbr,
        intensity_transform_function=intensity_transform_function,
        normalize=normalize,
        radial_weighting=radial_weighting,
        mirror=mirror,
        positions=positions,
        all_patterns=_iter_nav_blocks(self) if own else None,
        step=steps,
        signal_mask=_signal_mask(self),
    )
    if not own:  # returned only: as it would read back from learning_results
        shapes = {"merged_factors": (qy, qx)}
        stored = from_stored(core.PatternClustering, to_stored(res), shapes)
        return _results_signals(self, stored, source="patterns")
    lr = self.learning_results
    clear_learning_results(lr, "cpat_")  # no field of an older clustering stays
    to_learning_results(lr, res, "cpat_")
    n_c = res.references.size
    counts = np.bincount(res.labels, minlength=n_c)[:, None]
    _fill_hyperspy_cluster_fields(
        lr,
        res.position_labels,
        res.merged_factors.reshape(n_c, -1) * counts,
        res.centroids.reshape(n_c, -1),
        res.distances,
        "cluster_patterns",
    )
    return get_cluster_diffraction_results(self, source="patterns")


@fill_doc
def polar_transform(
    self,
    centre=None,
    units="calibrated",
    radial_range=None,
    delta_r=1.0,
    n_theta=None,
    delta_theta=None,
    direct_beam_radius=None,
):
    """Return the diffraction patterns in polar coordinates ``(r, phi)``.

    Bilinear resampling about the direct beam, NaN-aware (missing pixels
    stay missing), computed with a Numba kernel; lazy signals give a lazy
    result (chunk by chunk).

    Parameters
    ----------
    self : STEM4D or LazySTEM4D
    centre : tuple of float, optional
        ``(x, y)`` in ``units``. Default: the calibrated origin if it lies
        inside the detector, else the direct beam of the mean pattern.
    %(units)s
    %(polar_grid)s
    direct_beam_radius : float, "auto" or None, default None
        Rings inside this radius are set to NaN.

    Returns
    -------
    Signal2D or pyxem.signals.PolarDiffraction2D
        Same navigation axes; signal axes ``phi`` (deg over [0, 360), from
        +kx towards +ky, clockwise on screen; the last array axis) and ``r``
        (calibrated units of the detector). Axis values are the sampled
        angles and radii.

        For a pyxem signal, ``hyperspy_cnmf.polar_transform`` returns pyxem's
        ``PolarDiffraction2D`` (lazy for a lazy signal) in pyxem's azimuth
        convention, so that its methods (``get_orientation`` template
        matching, ...) apply: signal axes ``Radians`` (rad over [-pi, pi),
        from +kx towards -ky, as pyxem's ``get_azimuthal_integral2d``: the
        samples above reversed and rolled, not interpolated) and ``Radius``,
        the input's metadata. pyxem's own integration labels each bin by
        its lower edge, half a step before the bin's centre; here a value is
        the sampled angle itself.

    Examples
    --------
    >>> from hyperspy_cnmf.data import simulated_precipitates
    >>> s = simulated_precipitates(
    ...     scan_shape=(16, 16), n_grains=1, n_phases=1, grain_diameter=3.0
    ... )
    >>> p = s.polar_transform()
    >>> p.axes_manager.signal_shape
    (192, 24)
    """
    _check_4dstem_signal_axes(self)
    (qy, qx), (sx, _), _, sig_units = _signal_geometry(self)
    need_ref = (centre is None and _calibrated_origin_px(self) is None) or (
        direct_beam_radius == "auto"
    )
    reference = None
    if need_ref:
        reference = (
            _compute(self.mean(axis=self.axes_manager.navigation_axes).data)
            if (self.axes_manager.navigation_dimension)
            else _compute(self.data)
        )
        reference = np.asarray(reference, dtype=np.float64)
    cpx, rr, dbr = _resolve_geometry(
        self, centre, units, radial_range, direct_beam_radius, reference
    )
    # geometry of the grid (cheap call on one pattern)
    probe = np.zeros((1, qy, qx))
    p0, radii, theta = core.polar_transform(
        probe,
        centre=cpx,
        radial_range=rr,
        delta_r=delta_r,
        n_theta=n_theta,
        delta_theta=delta_theta,
    )
    n_r, n_t = p0.shape[-2:]
    kw = _polar_kwargs(cpx, radii, delta_r, n_t, dbr)
    data = self.data
    if hasattr(data, "map_blocks") and not isinstance(data, np.ndarray):
        import dask.array as da

        data = data.rechunk({data.ndim - 2: -1, data.ndim - 1: -1})
        out = da.map_blocks(
            lambda b: core.polar_transform(b, **kw)[0],
            data,
            dtype=np.float64,
            chunks=data.chunks[:-2] + ((n_r,), (n_t,)),
        )
    else:
        out = core.polar_transform(data, **kw)[0]
    axes = [dict(d) for d in self.axes_manager._get_navigation_axes_dicts()]
    r_units = sig_units if sig_units not in ("", "<undefined>", "None") else "px"
    axes.append(
        {
            "name": "r",
            "size": n_r,
            "scale": float(delta_r * abs(sx)),
            "offset": float(radii[0] * abs(sx)),
            "units": r_units,
            "navigate": False,
        }
    )
    axes.append(
        {
            "name": "phi",
            "size": n_t,
            "scale": float(360.0 / n_t),
            "offset": 0.0,
            "units": "deg",
            "navigate": False,
        }
    )
    result = Signal2D(out, axes=axes)
    if not isinstance(out, np.ndarray):
        result = result.as_lazy()
        result.data = out
    result.metadata.General.title = f"Polar transform of {self.metadata.General.title}"
    result.metadata.set_item("Signal.polar_centre_px", [float(cpx[0]), float(cpx[1])])
    return result


@fill_doc
def plot_cluster_dendrogram(self, source="components", ax=None, **kwargs):
    """Plot the dendrogram of the last diffraction clustering.

    Leaves are the clustered components (the refit's when the clustering
    refitted, ``cluster_diffraction(refit="auto")``; or patterns), coloured
    by cluster (the colours of :meth:`plot_cluster_gallery`); the bottom axis is the
    pseudo-distance ``1 - CC``, the top axis the cross-correlation, and the
    dashed line marks the cut.

    Parameters
    ----------
    self : STEM4D or LazySTEM4D
    %(clustering_source)s
    ax : matplotlib.axes.Axes, optional
    **kwargs
        Passed to :func:`hyperspy_cnmf.plotting._cluster.plot_dendrogram`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from hyperspy_cnmf.data import simulated_precipitates
    >>> s = simulated_precipitates(scan_shape=(32, 32), n_grains=3)
    >>> s.decomposition(algorithm="constrained_nmf", output_dimension=8,
    ...                 print_info=False, random_state=0)
    >>> _ = s.cluster_diffraction()
    >>> fig = s.plot_cluster_dendrogram()
    """
    from hyperspy_cnmf.plotting import _cluster as plotting

    res = _read_clustering(self, source)
    if res is None or res.linkage is None:
        raise RuntimeError("Run `cluster_diffraction` (or `cluster_patterns`) first.")
    _check_current(self, source)
    if source == "components" and res.refit_factors is not None:
        # the refit's components (cdiff_refit_factors), not the decomposition's
        leaf_names = [str(int(i)) for i in res.components]
        leaf_title = f"Refit component (of {len(res.parameters.get('refit_from_components', []))})"
    elif source == "components":
        leaf_names = [str(int(i)) for i in res.components]
        leaf_title = "Component"
    else:
        leaf_names = [str(int(i)) for i in res.positions]
        leaf_title = "Position"
    return plotting.plot_dendrogram(
        res.linkage,
        res.labels,
        leaf_names=leaf_names,
        threshold=res.threshold,
        ax=ax,
        leaf_title=leaf_title,
        title=f"Diffraction clustering: {self.metadata.General.title}",
        **kwargs,
    )


def plot_cluster_gallery(
    self, clusters=None, norm="log", cmap="inferno", patterns="mean", **kwargs
):
    """Plot the diffraction and the summed map of every cluster.

    One column per cluster: its rotation-aligned diffraction (top,
    calibrated detector axes, logarithmic or gamma colour scale) and its
    summed map (bottom, calibrated scan axes); a first column shows the
    dominant cluster of every probe position in the cluster colours.

    Parameters
    ----------
    self : STEM4D or LazySTEM4D
    clusters : list of int, optional
        Clusters to show; default all.
    patterns : {"mean", "merged"}, default "mean"
        The diffraction shown: ``"mean"`` the aligned mean pattern of the
        cluster's positions (``learning_results.cdiff_mean_patterns``, the
        model there, counts per position: what the phase's positions show,
        the matrix under a grain included); ``"merged"`` the paper's merged
        diffraction (``cdiff_merged_factors``, the aligned sum of the
        members' factors: the crystal's share alone, which can show the
        matrix's halo and the direct beam's tail carved out by the
        separation of the components, issue 10 item 9).
    norm : {"log", "gamma", "linear"}, default "log"
        Colour scale of the diffraction (``"gamma"``: power 0.3).
    cmap : str, default "inferno"
        Colour map of the diffraction.
    **kwargs
        Passed to :func:`hyperspy_cnmf.plotting._cluster.plot_gallery`.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        For another ``patterns``.
    RuntimeError
        Without a current :meth:`cluster_diffraction`, or for
        ``patterns="mean"`` on a clustering stored before its mean patterns
        existed (run it again).

    Examples
    --------
    >>> from hyperspy_cnmf.data import simulated_precipitates
    >>> s = simulated_precipitates(scan_shape=(32, 32), n_grains=3)
    >>> s.decomposition(algorithm="constrained_nmf", output_dimension=8,
    ...                 print_info=False, random_state=0)
    >>> _ = s.cluster_diffraction()
    >>> fig = s.plot_cluster_gallery()
    """
    from hyperspy_cnmf.plotting import _cluster as plotting

    if patterns not in ("mean", "merged"):
        raise ValueError(f"`patterns` must be 'mean' or 'merged', got {patterns!r}.")
    stored = _read_clustering(self, "components")
    if stored is None:
        raise RuntimeError("Run `cluster_diffraction` first.")
    _check_current(self, "components")
    if patterns == "mean" and stored.mean_patterns is None:
        raise RuntimeError(
            "This clustering has no mean patterns (stored by an older version): run "
            "`cluster_diffraction` again, or pass patterns='merged'."
        )
    res = _results_signals(self, stored, "components")
    labels, comps = stored.labels, stored.components
    n_c = int(labels.max()) + 1
    members = [comps[labels == c].tolist() for c in range(n_c)]
    pos = res.get("position_labels")
    sig_axes = self.axes_manager.signal_axes
    nav_axes = self.axes_manager.navigation_axes
    if patterns == "mean":
        shown, label = res["mean_patterns"].data, "counts per position (mean)"
        what = "aligned mean pattern of the positions of each cluster"
    else:
        shown, label = res["merged_factors"].data, "counts (sum over scan)"
        what = "merged diffraction (aligned sum of the factors)"
    kwargs.setdefault("title", f"Clusters of {self.metadata.General.title}\n{what}")
    kwargs.setdefault("pattern_label", label)
    return plotting.plot_gallery(
        shown,
        res["merged_maps"].data,
        members=members,
        position_labels=None if pos is None else pos.data,
        signal_axes=[axis_info(a) for a in sig_axes],
        navigation_axes=[axis_info(a) for a in nav_axes],
        clusters=clusters,
        norm=norm,
        cmap=cmap,
        member_label="components"
        if stored.refit_factors is None
        else "refit components",
        **kwargs,
    )
