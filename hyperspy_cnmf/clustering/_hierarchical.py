"""Hierarchical clustering on the rotation-invariant pseudo-distance.

Also: choice of a reference member per cluster, rotation-aligned merging of
the members, the attachment of direct-beam-only components, and the
"dominant cluster" labelling of navigation positions from the component maps.
"""

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.cluster import hierarchy
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import squareform

from hyperspy_cnmf._docstrings import fill_doc
from hyperspy_cnmf._schema import stored, transient
from hyperspy_cnmf.clustering._polar import (
    _as_stack,
    _check_centre,
    beam_search_mask,
    estimate_direct_beam_radius,
    find_direct_beam,
    polar_transform,
    rotate_patterns,
)
from hyperspy_cnmf.clustering._similarity import rotational_similarity

__all__ = [
    "DEFAULT_DISTANCE_THRESHOLD",
    "LINKAGE_METHODS",
    "PatternClustering",
    "align_to_references",
    "attach_by_map",
    "cluster_patterns",
    "cluster_references",
    "dominant_labels",
    "hierarchical_clustering",
    "largest_gap_threshold",
    "map_objects",
    "merge_aligned",
    "order_clusters",
    "polar_similarity",
]

LINKAGE_METHODS = (
    "average",
    "complete",
    "single",
    "weighted",
    "ward",
    "centroid",
    "median",
)
_EUCLIDEAN_ONLY = ("ward", "centroid", "median")

#: Default cut of the dendrogram (pseudo-distance ``1 - CC``) when neither
#: ``n_clusters`` nor ``distance_threshold`` is given: groups whose members
#: correlate on average better than CC = 0.7 after the best rotation are
#: merged. It matches the cut visible in the method author's dendrogram
#: (about 0.3) and, on simulated precipitates with 1-3x over-complete
#: constrained NMF, separates the phases (merges within a phase <= 0.2,
#: between phases >= 0.37) with the default similarity settings.
DEFAULT_DISTANCE_THRESHOLD = 0.3


def _in_order_of_first(raw):
    """Relabel ``0 .. c - 1`` in order of first appearance (deterministic)."""
    first = {}
    for lab in raw:
        first.setdefault(int(lab), len(first))
    return np.array([first[int(lab)] for lab in raw], dtype=np.int64)


def _check_distance(distance):
    d = np.asarray(distance, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError("`distance` must be a square (n, n) matrix.")
    if d.shape[0] < 2:
        raise ValueError(
            f"At least 2 items are needed for clustering, got {d.shape[0]}."
        )
    if not np.all(np.isfinite(d)):
        raise ValueError("`distance` must be finite.")
    if not np.allclose(d, d.T, atol=1e-10):
        raise ValueError("`distance` must be symmetric.")
    d = 0.5 * (d + d.T)
    np.fill_diagonal(d, 0.0)
    return np.clip(d, 0.0, None)


def largest_gap_threshold(linkage):
    """Cut height in the middle of the largest gap between merge heights.

    The merge heights ``h_1 <= ... <= h_{n-1}`` are sorted and the tree is
    cut half-way across the largest difference ``h_{i+1} - h_i``: the most
    clearly separated level of the hierarchy, independent of the scale of the
    distance. At least two clusters result, and never singletons only (with
    two items, the cut is at half the single merge).

    Parameters
    ----------
    linkage : ndarray, shape (n - 1, 4)

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import largest_gap_threshold
    >>> Z = np.array([[0, 1, 0.05, 2], [2, 3, 0.1, 2], [4, 5, 0.7, 4]])
    >>> round(largest_gap_threshold(Z), 3)
    0.4
    """
    h = np.sort(np.asarray(linkage)[:, 2])
    if h.size < 2:
        h = np.concatenate([[0.0], h])
    i = int(np.argmax(np.diff(h)))
    return float(0.5 * (h[i] + h[i + 1]))


def _cut_height(linkage, n_clusters):
    """A height at which the tree has ``n_clusters`` clusters (for display)."""
    h = np.sort(np.asarray(linkage)[:, 2])
    n = h.size + 1
    if n_clusters >= n:
        return float(0.5 * h[0])
    if n_clusters <= 1:
        return float(h[-1] + 0.05 * max(h[-1], 1e-3))
    return float(0.5 * (h[n - n_clusters - 1] + h[n - n_clusters]))


@fill_doc
def hierarchical_clustering(
    distance, method="average", n_clusters=None, distance_threshold=None
):
    """Agglomerative clustering of a precomputed pseudo-distance matrix.

    Parameters
    ----------
    distance : array_like, shape (n, n)
        Symmetric pseudo-distance (``1 - similarity``), zero diagonal.
    %(method)s
    %(n_clusters)s
    %(distance_threshold)s

    Returns
    -------
    labels : ndarray of int, shape (n,)
        Cluster index of each item, ``0 .. n_clusters - 1`` (in the order of
        the first member; see :func:`order_clusters` to reorder).
    linkage : ndarray, shape (n - 1, 4)
        The scipy linkage matrix.
    threshold : float
        The pseudo-distance at which the tree was cut (for ``n_clusters``, a
        height between the last kept and the first refused merge).

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import hierarchical_clustering
    >>> d = np.array([[0, .1, .8], [.1, 0, .9], [.8, .9, 0]])
    >>> labels, Z, t = hierarchical_clustering(d, distance_threshold=0.3)
    >>> labels.tolist(), Z.shape, t
    ([0, 0, 1], (2, 4), 0.3)
    """
    d = _check_distance(distance)
    n = d.shape[0]
    if method not in LINKAGE_METHODS:
        raise ValueError(f"`method` must be one of {LINKAGE_METHODS}, got {method!r}.")
    if method in _EUCLIDEAN_ONLY:
        warnings.warn(
            f"linkage method {method!r} assumes Euclidean distances; the "
            "pseudo-distance 1 - CC is not one. 'average' is recommended.",
            UserWarning,
            stacklevel=2,
        )
    if n_clusters is not None and distance_threshold is not None:
        raise ValueError("Give `n_clusters` or `distance_threshold`, not both.")
    Z = hierarchy.linkage(squareform(d, checks=False), method=method)
    if n_clusters is not None:
        if int(n_clusters) != n_clusters or not 1 <= n_clusters <= n:
            raise ValueError(
                f"`n_clusters` must be an integer in [1, {n}], got {n_clusters}."
            )
        raw = hierarchy.fcluster(Z, int(n_clusters), criterion="maxclust")
        t = _cut_height(Z, int(n_clusters))
    else:
        if distance_threshold is None:
            t = DEFAULT_DISTANCE_THRESHOLD
        elif isinstance(distance_threshold, str):
            if distance_threshold != "gap":
                raise ValueError(
                    "`distance_threshold` must be a number, 'gap' or None, "
                    f"got {distance_threshold!r}."
                )
            t = largest_gap_threshold(Z)
        else:
            t = float(distance_threshold)
            if not np.isfinite(t) or t < 0:
                raise ValueError(f"`distance_threshold` must be >= 0, got {t}.")
        raw = hierarchy.fcluster(Z, t, criterion="distance")
    # relabel in order of first appearance (deterministic, independent of scipy)
    return _in_order_of_first(raw), Z, t


def order_clusters(labels, key):
    """Renumber clusters by decreasing ``key`` (ties by first member).

    Parameters
    ----------
    labels : array_like of int, shape (n,)
        Cluster index per item, ``0 .. c - 1``.
    key : array_like, shape (c,)
        Sorting key per cluster (e.g. size); the largest becomes cluster 0.

    Returns
    -------
    new_labels : ndarray of int, shape (n,)
    order : ndarray of int, shape (c,)
        ``order[new] = old``.

    Examples
    --------
    >>> from hyperspy_cnmf.clustering import order_clusters
    >>> new, order = order_clusters([0, 1, 1, 2], key=[1, 2, 1])
    >>> new.tolist(), order.tolist()
    ([1, 0, 0, 2], [1, 0, 2])
    """
    labels = np.asarray(labels, dtype=np.int64)
    key = np.asarray(key, dtype=np.float64)
    order = np.lexsort((np.arange(key.size), -key))
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return inverse[labels], order


def cluster_references(similarity, labels, weights=None):
    """Reference (medoid) member of each cluster.

    The reference is the member with the largest weighted sum of similarities
    to the other members of its cluster (weights: e.g. the members'
    intensities), i.e. the most typical one; every member is then aligned on
    it.

    Parameters
    ----------
    similarity : array_like, shape (n, n)
    labels : array_like of int, shape (n,)
    weights : array_like, shape (n,), optional
        Default: equal weights.

    Returns
    -------
    ndarray of int, shape (n_clusters,)
        Index of the reference item of each cluster.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import cluster_references
    >>> s = np.array([[1, .9, .5], [.9, 1, .8], [.5, .8, 1]])
    >>> cluster_references(s, [0, 0, 0]).tolist()
    [1]
    """
    s = np.asarray(similarity, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    w = (
        np.ones(labels.size)
        if weights is None
        else np.asarray(weights, dtype=np.float64)
    )
    refs = []
    for c in range(labels.max() + 1):
        idx = np.flatnonzero(labels == c)
        score = (s[np.ix_(idx, idx)] * w[idx][None, :]).sum(axis=1)
        refs.append(idx[np.argmax(score)])
    return np.asarray(refs, dtype=np.int64)


def merge_aligned(patterns, centre, labels, rotation, mirrored=None, weights=None):
    """Rotation-aligned weighted sum of the patterns of each cluster.

    Parameters
    ----------
    patterns : array_like, shape (n, qy, qx)
        NaN marks missing pixels.
    centre : tuple of float
        ``(x, y)`` in px, the rotation centre.
    labels : array_like of int, shape (n,)
    rotation : array_like, shape (n,)
        Degrees; member ``i`` is transformed by
        :func:`~hyperspy_cnmf.clustering.rotate_patterns` with
        ``rotation[i]`` (and ``mirrored[i]``) before summation.
    mirrored : array_like of bool, shape (n,), optional
    weights : array_like, shape (n,), optional
        Weight of each member; default 1.

    Returns
    -------
    ndarray, shape (n_clusters, qy, qx)
        ``sum_i w_i T_i(p_i)``. A pixel missing (NaN) in some members is
        estimated from the others (their sum rescaled by the missing weight);
        NaN where it is missing in all.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import merge_aligned
    >>> p = np.zeros((2, 9, 9)); p[0, 4, 7] = 1; p[1, 7, 4] = 1
    >>> m = merge_aligned(p, (4, 4), [0, 0], rotation=[0, -90])
    >>> float(m[0, 4, 7])
    2.0
    """
    stack, _ = _as_stack(patterns)
    labels = np.asarray(labels, dtype=np.int64)
    n = stack.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    aligned = rotate_patterns(stack, centre, rotation, mirrored)
    out = np.empty((labels.max() + 1,) + stack.shape[1:])
    for c in range(out.shape[0]):
        idx = labels == c
        a = aligned[idx]
        wc = w[idx][:, None, None]
        valid = np.isfinite(a)
        num = np.where(valid, a, 0.0) * wc
        wsum = np.abs(wc).sum()
        wvalid = (valid * np.abs(wc)).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[c] = np.where(wvalid > 0, num.sum(axis=0) * wsum / wvalid, np.nan)
    return out


def attach_by_map(labels, detached, maps):
    """Move the members of clusters made only of ``detached`` items by their maps.

    Components whose diffraction holds (almost) nothing outside the masked
    direct beam (NMF makes them from thickness-driven variations of the beam
    intensity) have no pattern to compare: their pseudo-distance to every
    other component is large, so they would form clusters of their own that
    stand for no phase. Such a cluster is dissolved and each of its members
    joins the cluster (with at least one regular member) whose summed map
    correlates best (Pearson, over the positions where all maps are finite)
    with the member's map. Clusters holding a regular member keep their
    detached members. Nothing changes when every item is detached.

    Parameters
    ----------
    labels : array_like of int, shape (n,)
    detached : array_like of bool, shape (n,)
    maps : array_like, shape (n, n_positions)
        The items' maps (e.g. loadings in data units).

    Returns
    -------
    ndarray of int, shape (n,)
        Labels, clusters renumbered ``0 .. c - 1`` in order of first member.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import attach_by_map
    >>> maps = np.array([[1., 1, 1, 2], [0., 0, 5, 0], [1.1, 1, 0.9, 2.2]])
    >>> attach_by_map([0, 1, 2], [False, False, True], maps).tolist()
    [0, 1, 0]
    """
    labels = np.asarray(labels, dtype=np.int64).copy()
    detached = np.asarray(detached, dtype=bool)
    m = np.asarray(maps, dtype=np.float64)
    if labels.shape != detached.shape or m.shape[0] != labels.size:
        raise ValueError(
            "`labels`, `detached` and `maps` must describe the same items."
        )
    regular = np.unique(labels[~detached])
    if regular.size == 0:
        return labels
    finite = np.all(np.isfinite(m), axis=0)
    m = m[:, finite]
    cluster_maps = np.stack([m[labels == c].sum(axis=0) for c in regular])

    def _standard(x):
        x = x - x.mean(axis=-1, keepdims=True)
        norm = np.linalg.norm(x, axis=-1, keepdims=True)
        return x / np.where(norm > 0, norm, 1.0)

    corr = _standard(m) @ _standard(cluster_maps).T  # (n, n_regular)
    for c in np.unique(labels):
        members = labels == c
        if np.all(detached[members]):
            labels[members] = regular[np.argmax(corr[members], axis=1)]
    return _in_order_of_first(labels)


def map_objects(maps, labels, nav_shape=None, threshold=0.5, max_overlap=0.3):
    """Group the components of each cluster whose maps tile one object.

    An over-complete NMF may split one grain into pieces (each holding part
    of the grain, e.g. the two halves of a bent grain with slightly rotated
    patterns) or the matrix into regions; within one cluster these pieces
    must be joined before their maps are compared with those of other
    objects, while distinct grains of one phase must stay apart (each is
    judged against its own peak, so a weak grain is not lost next to a
    strong one). A component's *region* is where its map exceeds
    ``threshold`` of its range (``(M - min) / (max - min)``, the half-maximum
    area by default). Two components of the same cluster are joined when
    their regions touch (adjacent or overlapping positions) while overlapping
    by at most ``max_overlap`` of the smaller region: tiles of one object lie
    side by side; a component whose region lies inside another's is a
    modulation of that object (e.g. a weak thickness variation on top of the
    matrix), not a piece of it, and is kept apart like a separate grain.
    Objects are the connected groups of joined components.

    Parameters
    ----------
    maps : array_like, shape (n, n_positions)
        Component maps (NaN: masked positions), positions in C order of
        ``nav_shape``.
    labels : array_like of int, shape (n,)
        Cluster of each component.
    nav_shape : tuple of int, optional
        Navigation shape for the adjacency; default: one dimension.
    threshold : float, default 0.5
    max_overlap : float, default 0.3

    Returns
    -------
    ndarray of int, shape (n,)
        Object of each component, ``0 .. n_objects - 1`` in order of first
        member.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import map_objects
    >>> x = np.arange(12.)
    >>> left = np.exp(-((x - 2) / 1.5) ** 2)     # left half of grain A
    >>> right = np.exp(-((x - 5) / 1.5) ** 2)    # its right half
    >>> other = np.exp(-((x - 10) / 1.5) ** 2)   # grain B, same phase
    >>> map_objects(np.stack([left, right, other]), [0, 0, 0]).tolist()
    [0, 0, 1]
    """
    m = np.asarray(maps, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if m.ndim != 2 or m.shape[0] != labels.size:
        raise ValueError("`maps` must have shape (n_components, n_positions).")
    shape = (m.shape[1],) if nav_shape is None else tuple(int(n) for n in nav_shape)
    if int(np.prod(shape)) != m.shape[1]:
        raise ValueError(f"`nav_shape` {shape} does not match {m.shape[1]} positions.")
    n = labels.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanmin(m, axis=1, keepdims=True)
        span = np.nanmax(m, axis=1, keepdims=True) - lo
        with np.errstate(invalid="ignore", divide="ignore"):
            region = np.nan_to_num((m - lo) / span, nan=-1.0) >= threshold
    region &= np.isfinite(span) & (span > 0)
    near = np.stack(
        [
            ndimage.binary_dilation(r.reshape(shape)).ravel() if r.any() else r
            for r in region
        ]
    )
    size = region.sum(axis=1)
    joined = np.eye(n, dtype=bool)
    for a in range(n):
        for b in range(a + 1, n):
            if labels[a] != labels[b] or not (size[a] and size[b]):
                continue
            if not np.any(near[a] & region[b]):
                continue
            shared = np.count_nonzero(region[a] & region[b]) / min(size[a], size[b])
            joined[a, b] = joined[b, a] = shared <= max_overlap
    _, raw = connected_components(joined, directed=False)
    return _in_order_of_first(raw)


def _median_and_noise(maps):
    """Median and robust noise of each map (rows of ``maps``), NaN left out.

    The noise is the median absolute deviation times 1.4826, the standard
    deviation of Gaussian noise (F. R. Hampel, *J. Am. Stat. Assoc.* 69, 383
    (1974)); a map that is mostly one level keeps its few outliers (a grain)
    out of it.
    """
    med = np.nanmedian(maps, axis=-1)
    return med, 1.4826 * np.nanmedian(np.abs(maps - med[..., None]), axis=-1)


def dominant_labels(
    maps,
    percentiles=(0.0, 100.0),
    extended=None,
    threshold=0.5,
    particle_baseline=None,
    noise_floor=0.0,
):
    """Label each navigation position with the map that dominates it.

    The maps are those of clusters or of objects (:func:`map_objects`), in
    data units. A matrix (e.g. amorphous) map is strong everywhere, also
    inside the precipitates (at ~70 % of its full strength when a
    precipitate replaces 30 % of the thickness), so a plain argmax of the
    maps would give it every position. Each map is therefore first rescaled
    to its own range,

    ``n_c = (M_c - lo_c) / (hi_c - lo_c)``,

    with ``lo_c`` and ``hi_c`` the ``percentiles`` of ``M_c`` over the
    positions (``hi_c`` is raised to at least ``lo_c + (max M_c - lo_c) / 2``
    for maps covering less than ``100 - percentiles[1]`` % of the scan), and
    each position gets the map with the largest ``n_c``: the one that is
    closest to its full local strength relative to its own contrast. When
    the maps sum to a constant (a precipitate displaces the matrix) the
    boundary between a precipitate and the matrix falls where the
    precipitate map is at half its maximum, the usual outline of a particle.
    Positions where every map is NaN are unlabelled (-1).

    That balance needs the matrix map to dip in proportion to the
    precipitates, which an NMF does not guarantee (its grain components often
    carry part of the amorphous halo, so the matrix map dips deeper and
    varies more, and the grains spread). With ``extended`` marking the
    background maps (e.g. the matrix cluster, see
    :func:`cluster_diffraction <hyperspy_cnmf.signals._cluster.cluster_diffraction>`),
    the outline is set by the particles alone: a particle (non-extended) map
    claims the positions where it reaches ``threshold`` of its range, the
    largest such map wins, and the rest goes to the background map with the
    largest ``n_c``. As scores: a particle scores ``n_c`` where
    ``n_c >= threshold`` and 0 elsewhere, a background ``threshold * n_c``.

    Parameters
    ----------
    maps : array_like, shape (n_maps, n_positions)
    percentiles : tuple of float, default (0.0, 100.0)
        Minimum and maximum, in percent. The full range suits the smooth
        maps of the constrained NMF (a precipitate object covers a few % of
        the scan, so any upper percentile below 100 lies under its peak and
        widens it); for noisy maps smooth them first or use e.g. (1, 99).
    extended : array_like of bool, shape (n_maps,), optional
        Background maps; ignored unless there are both kinds.
    threshold : float, default 0.5
        Fraction of its range at which a particle map claims a position.
    particle_baseline : {None, "median"}, default None
        With ``extended``: ``"median"`` rescales each particle map from its
        median over the scan (the level away from the particle, which covers
        a small part of the scan) instead of its low percentile, so that map
        noise below that level does not lift the background towards
        ``threshold``.
    noise_floor : float, default 0.0
        With ``extended``: a particle map claims a position only where it
        also stands ``noise_floor`` standard deviations of its own noise
        above its baseline, the noise estimated robustly from the scan as
        ``1.4826 * median(|M_c - median(M_c)|)`` (the median absolute
        deviation; F. R. Hampel, *J. Am. Stat. Assoc.* 69, 383 (1974)). Its
        threshold is then ``max(threshold, noise_floor * sigma_c / span_c)``,
        so a low ``threshold`` follows a grain's thin rim on a clean map
        without letting the noise of a weak map claim positions.

    Returns
    -------
    labels : ndarray of int, shape (n_positions,)
        Index of the dominant map, -1 for unlabelled positions.
    score : ndarray, shape (n_maps, n_positions)
        The rescaled maps ``n_c`` (the scores above with ``extended``; NaN
        where the map is NaN); each label is the largest score.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import dominant_labels
    >>> matrix = np.array([10., 10, 8, 7])     # strong everywhere
    >>> grain = np.array([0., 0, 2, 3])        # only in the precipitate
    >>> dominant_labels(np.stack([matrix, grain]))[0].tolist()
    [0, 0, 1, 1]
    >>> dominant_labels(np.stack([matrix, grain]), extended=[True, False])[0].tolist()
    [0, 0, 1, 1]
    """
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError("`maps` must have shape (n_maps, n_positions).")
    p_lo, p_hi = (float(p) for p in percentiles)
    if not 0 <= p_lo < p_hi <= 100:
        raise ValueError("`percentiles` must satisfy 0 <= low < high <= 100.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanpercentile(m, p_lo, axis=1)
        if particle_baseline == "median" and extended is not None:
            particle = ~np.asarray(extended, dtype=bool)
            lo[particle] = np.nanmedian(m[particle], axis=1)
        elif particle_baseline is not None:
            raise ValueError("`particle_baseline` must be None or 'median'.")
        hi = np.nanpercentile(m, p_hi, axis=1)
        hi = np.fmax(hi, lo + 0.5 * (np.nanmax(m, axis=1) - lo))
    span = hi - lo
    ok = np.isfinite(span) & (span > 0)
    norm = np.full_like(m, np.nan)
    norm[ok] = (m[ok] - lo[ok, None]) / span[ok, None]
    # flat maps: only where nothing else is defined
    norm[~ok] = np.where(np.isfinite(m[~ok]), -np.inf, np.nan)
    if extended is not None:
        ext = np.asarray(extended, dtype=bool)
        if ext.shape != (m.shape[0],):
            raise ValueError("`extended` must have one entry per map.")
        if ext.any() and not ext.all():
            finite = np.isfinite(norm)
            t = np.full(m.shape[0], float(threshold))
            if noise_floor:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    _, sigma = _median_and_noise(m)
                    floor = np.where(ok, noise_floor * sigma / np.where(ok, span, 1), 0)
                t = np.fmax(t, floor)
            particle = np.where(norm >= t[:, None], norm, 0.0)
            score = np.where(ext[:, None], threshold * norm, particle)
            norm = np.where(finite, score, norm)
    filled = np.where(np.isnan(norm), -np.inf, norm)
    labels = np.argmax(filled, axis=0).astype(np.int64)
    labels[np.all(np.isnan(norm), axis=0)] = -1
    norm[np.isinf(norm)] = np.nan
    return labels, norm


@dataclass
class PatternClustering:
    """Result of :func:`cluster_patterns`.

    The stored fields are written to ``learning_results`` with the prefix
    ``cpat_`` by :meth:`~hyperspy_cnmf.signals.STEM4D.cluster_patterns` (see
    :mod:`hyperspy_cnmf._schema`); ``n`` clustered patterns, ``c`` clusters,
    ``N`` labelled patterns (``all_patterns``), ``n_r`` radii.

    Attributes
    ----------
    positions : ndarray of int64, shape (n,)
        Index of each clustered pattern among ``all_patterns`` (e.g. the flat
        navigation index); None if not given.
    position_labels : ndarray of int64, shape (N,)
        Cluster of every pattern of ``all_patterns`` (the clustered ones keep
        their hierarchical label); None without ``all_patterns``.
    step : ndarray of int64, shape (n_axes,)
        Subsampling step that selected the patterns (recorded only); None if
        not given.
    labels : ndarray of int64, shape (n,)
        Cluster of each pattern, clusters numbered by decreasing size.
    linkage : ndarray of float64, shape (n - 1, 4)
        SciPy linkage matrix.
    pseudo_distance : ndarray of float64, shape (n, n)
        ``1 - max CC`` over the rotation.
    rotation : ndarray of float64, shape (n,)
        Degrees: rotation of each pattern onto its cluster reference.
    mirrored : ndarray of bool, shape (n,)
    references : ndarray of int64, shape (c,)
        Reference (medoid) pattern of each cluster, an index into the
        clustered patterns.
    merged_factors : ndarray of float64, shape (c, qy, qx)
        Rotation-aligned *mean* pattern of each cluster (also available as
        ``merged``). Stored as ``(qy * qx, c)``.
    threshold : float
        Pseudo-distance at which the tree was cut.
    centre : tuple of float
        ``(x, y)`` in px (stored as a float64 array).
    radii : ndarray of float64, shape (n_r,)
        Radii of the polar grid, px.
    parameters : dict
        Every parameter of the call, geometry in px (stored as JSON).
    similarity : ndarray of float64, shape (n, n)
        Not stored. ``max CC`` over the rotation.
    n_theta : int
        Not stored. Azimuthal samples of the polar grid.
    centroids : ndarray of float64, shape (c, qy, qx)
        Not stored (HyperSpy's ``cluster_centroid_signals``): the reference
        pattern of each cluster.
    distances : ndarray of float64, shape (c, N)
        Not stored (HyperSpy's ``cluster_distances``): ``1 - max CC`` of every
        pattern of ``all_patterns`` with each cluster's mean pattern, clipped
        to [0, 2]; None without ``all_patterns``.
    """

    positions: np.ndarray = stored(dtype=np.int64)
    position_labels: np.ndarray = stored(dtype=np.int64)
    step: np.ndarray = stored(dtype=np.int64)
    labels: np.ndarray = stored(dtype=np.int64)
    linkage: np.ndarray = stored()
    pseudo_distance: np.ndarray = stored()
    rotation: np.ndarray = stored()
    mirrored: np.ndarray = stored(dtype=bool)
    references: np.ndarray = stored(dtype=np.int64)
    merged_factors: np.ndarray = stored(columns=True)
    threshold: float = stored("float")
    centre: tuple = stored(dtype=np.float64)
    radii: np.ndarray = stored()
    parameters: dict = stored("json")
    similarity: np.ndarray = transient()
    n_theta: int = transient()
    centroids: np.ndarray = transient()
    distances: np.ndarray = transient()

    @property
    def merged(self):
        """Alias of :attr:`merged_factors` (the aligned mean patterns)."""
        return self.merged_factors


def align_to_references(sim_result, labels, references):
    """Rotation (deg) and mirror of each member onto its cluster reference."""
    ref_of = np.asarray(references)[np.asarray(labels)]
    idx = np.arange(ref_of.size)
    return sim_result.rotation[ref_of, idx], sim_result.mirrored[ref_of, idx]


def polar_similarity(
    patterns,
    centre,
    radial_range=None,
    delta_r=1.0,
    n_theta=None,
    delta_theta=None,
    direct_beam_radius=None,
    intensity_transform_function=None,
    normalize="pearson",
    radial_weighting="r",
    mirror=False,
    friedel=False,
):
    """Polar transform of a stack of patterns and their pairwise similarity.

    :func:`~hyperspy_cnmf.clustering.polar_transform` followed by
    :func:`~hyperspy_cnmf.clustering.rotational_similarity` of the polar
    images with themselves (the first two steps of :func:`cluster_patterns`).
    ``friedel``: see :func:`~hyperspy_cnmf.clustering.polar_transform`.

    Returns
    -------
    polar : ndarray, shape (n, n_r, n_theta)
    radii : ndarray, shape (n_r,)
    sim : SimilarityResult
    """
    polar, radii, _ = polar_transform(
        patterns,
        centre=centre,
        radial_range=radial_range,
        delta_r=delta_r,
        n_theta=n_theta,
        delta_theta=delta_theta,
        direct_beam_radius=direct_beam_radius,
        friedel=friedel,
    )
    sim = rotational_similarity(
        polar,
        radii=radii,
        intensity_transform_function=intensity_transform_function,
        normalize=normalize,
        radial_weighting=radial_weighting,
        mirror=mirror,
    )
    return polar, radii, sim


def _transform_name(f):
    if f is None or isinstance(f, str):
        return f
    return getattr(f, "__name__", repr(f))


def _similarity_parameters(
    centre,
    radii,
    delta_r,
    n_theta,
    direct_beam_radius,
    intensity_transform_function,
    normalize,
    radial_weighting,
    mirror,
):
    """JSON-ready polar-geometry (px) and similarity parameters of a clustering."""
    dbr = direct_beam_radius
    return {
        "centre_px": [float(centre[0]), float(centre[1])],
        "radial_range_px": [float(radii[0]), float(radii[-1])],
        "delta_r_px": float(delta_r),
        "n_theta": int(n_theta),
        "direct_beam_radius_px": None if dbr is None else float(dbr),
        "intensity_transform_function": _transform_name(intensity_transform_function),
        "normalize": normalize,
        "radial_weighting": (
            radial_weighting
            if radial_weighting is None or isinstance(radial_weighting, str)
            else "array"
        ),
        "mirror": bool(mirror),
    }


def _pattern_parameters(
    n_clusters,
    distance_threshold,
    method,
    step,
    polar_kwargs,
    similarity_kwargs,
    threshold,
):
    """The ``parameters`` record of a :class:`PatternClustering`."""
    pk = polar_kwargs
    return {
        "n_clusters": n_clusters,
        "distance_threshold": distance_threshold,
        "method": method,
        "step": None if step is None else [int(s) for s in step],
        **_similarity_parameters(
            pk["centre"],
            pk["radial_range"],
            pk["delta_r"],
            pk["n_theta"],
            pk["direct_beam_radius"],
            **similarity_kwargs,
        ),
        "threshold": float(threshold),
    }


def _check_stack(patterns):
    """The patterns as a stack ``(n, qy, qx)`` of at least 2."""
    stack, lead = _as_stack(patterns)
    if len(lead) != 1:
        raise ValueError("`patterns` must have shape (n, qy, qx).")
    if stack.shape[0] < 2:
        raise ValueError(f"At least 2 patterns are needed, got {stack.shape[0]}.")
    return stack


def _cut_and_merge(stack, centre, sim, method, n_clusters, distance_threshold):
    """Hierarchical cut (largest cluster first), references and aligned cluster means.

    Returns these :class:`PatternClustering` fields as a dict.
    """
    labels, Z, threshold = hierarchical_clustering(
        sim.pseudo_distance,
        method=method,
        n_clusters=n_clusters,
        distance_threshold=distance_threshold,
    )
    labels, _ = order_clusters(labels, np.bincount(labels))
    refs = cluster_references(sim.similarity, labels)
    rot, mir = align_to_references(sim, labels, refs)
    merged = merge_aligned(stack, centre, labels, rot, mir)
    merged /= np.bincount(labels)[:, None, None]
    return dict(
        labels=labels,
        linkage=Z,
        threshold=threshold,
        pseudo_distance=sim.pseudo_distance,
        similarity=sim.similarity,
        rotation=rot,
        mirrored=mir,
        references=refs,
        merged_factors=merged,
        centroids=stack[refs],
    )


def _resolve_pattern_beam(stack, centre, direct_beam_radius, signal_mask=None):
    """Centre ``(x, y)`` and direct-beam radius in px (found on the mean pattern)."""
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(stack, axis=0)
    if centre is None:
        with np.errstate(invalid="ignore"):
            centre = find_direct_beam(mean, mask=beam_search_mask(signal_mask))
    else:
        centre = _check_centre(centre, stack.shape[1:])
    if isinstance(direct_beam_radius, str):
        if direct_beam_radius != "auto":
            raise ValueError("`direct_beam_radius` must be a number, 'auto' or None.")
        direct_beam_radius = estimate_direct_beam_radius(mean, centre)
    elif direct_beam_radius is not None:
        direct_beam_radius = float(direct_beam_radius)
    return centre, direct_beam_radius


def _label_all(
    all_patterns, positions, labels, merged, polar_kwargs, similarity_kwargs
):
    """Label every pattern with the cluster whose aligned mean it matches best.

    ``all_patterns`` is an iterable of blocks ``(m_i, qy, qx)``; the patterns
    at ``positions`` keep their hierarchical ``labels``. Returns the labels
    (N,) and ``1 - max CC`` (c, N) clipped to [0, 2], or (None, None)
    without ``all_patterns``.
    """
    if all_patterns is None:
        return None, None
    ref_polar, _, _ = polar_transform(merged, **polar_kwargs)
    distances = []
    for block in all_patterns:
        pol, _, _ = polar_transform(block, **polar_kwargs)
        s_ = rotational_similarity(pol, polar_other=ref_polar, **similarity_kwargs)
        distances.append(1.0 - s_.similarity.T)
    distances = np.concatenate(distances, axis=1)
    pos_labels = np.argmin(distances, axis=0)
    if positions is not None:
        pos_labels[np.asarray(positions)] = labels
    return pos_labels, np.clip(distances, 0.0, 2.0)


@fill_doc
def cluster_patterns(
    patterns,
    centre=None,
    n_clusters=None,
    distance_threshold=None,
    method="average",
    radial_range=None,
    delta_r=1.0,
    n_theta=None,
    delta_theta=None,
    direct_beam_radius="auto",
    intensity_transform_function=None,
    normalize="pearson",
    radial_weighting="r",
    mirror=False,
    *,
    positions=None,
    all_patterns=None,
    step=None,
    signal_mask=None,
):
    """Rotation-invariant hierarchical clustering of a stack of patterns.

    The whole pipeline for plain arrays: polar transform, pairwise
    rotation-maximised normalised cross-correlation, pseudo-distance
    ``1 - CC``, hierarchical clustering, alignment of every member on its
    cluster reference and aligned mean per cluster; optionally, every pattern
    of a larger set (e.g. all probe positions, read block by block) is
    labelled with the cluster whose aligned mean it correlates best with.

    Parameters
    ----------
    patterns : array_like, shape (n, qy, qx)
        At least 2 patterns.
    centre : tuple of float, optional
        ``(x, y)`` in px; default: direct beam of the mean pattern.
    %(cluster_cut)s
    %(polar_grid)s
    direct_beam_radius : float, "auto" or None, default "auto"
        Rings inside this radius (px) are left out of the correlation;
        ``"auto"``: :func:`~hyperspy_cnmf.clustering.estimate_direct_beam_radius`
        of the mean pattern.
    %(similarity)s
    positions : array_like of int, shape (n,), optional
        Index of each of ``patterns`` among ``all_patterns``: these keep their
        hierarchical label in ``position_labels``.
    all_patterns : iterable of array_like, optional
        Blocks ``(m_i, qy, qx)`` of every pattern to label, in order (e.g. a
        generator reading a lazy dataset), filling ``position_labels`` and
        ``distances``.
    step : sequence of int, optional
        Subsampling step that selected ``patterns`` (recorded only).
    signal_mask : ndarray of bool, shape (qy, qx), optional
        Masked detector pixels (True), e.g. a decomposition's: left out of
        the search for the direct beam when ``centre`` is None (except a
        masked region that could hold the beam,
        :func:`hyperspy_cnmf._beam.beam_search_pixels`).

    Returns
    -------
    PatternClustering

    Raises
    ------
    ValueError
        For a stack that is not (n, qy, qx), fewer than 2 patterns, a centre
        outside the pattern or inconsistent clustering arguments.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import cluster_patterns, rotate_patterns
    >>> yy, xx = np.mgrid[:65, :65] - 32.0
    >>> def ring(r, n):
    ...     a = np.deg2rad(np.arange(n) * 360.0 / n)
    ...     return sum(np.exp(-((xx - r * np.cos(t)) ** 2 + (yy - r * np.sin(t)) ** 2) / 4)
    ...                for t in a)
    >>> a, b = ring(12, 6), ring(22, 4)
    >>> stack = rotate_patterns(np.stack([a, a, b, b]), (32, 32), [0, 25, 0, 40])
    >>> res = cluster_patterns(np.nan_to_num(stack), centre=(32, 32))
    >>> res.labels.tolist()
    [0, 0, 1, 1]
    """
    stack = _check_stack(patterns)
    centre, dbr = _resolve_pattern_beam(stack, centre, direct_beam_radius, signal_mask)
    similarity_kwargs = dict(
        intensity_transform_function=intensity_transform_function,
        normalize=normalize,
        radial_weighting=radial_weighting,
        mirror=mirror,
    )
    polar, radii, sim = polar_similarity(
        stack,
        centre=centre,
        radial_range=radial_range,
        delta_r=delta_r,
        n_theta=n_theta,
        delta_theta=delta_theta,
        direct_beam_radius=dbr,
        **similarity_kwargs,
    )
    fields = _cut_and_merge(stack, centre, sim, method, n_clusters, distance_threshold)
    polar_kwargs = dict(  # the grid actually used, for the other patterns
        centre=centre,
        radial_range=(radii[0], radii[-1]),
        delta_r=delta_r,
        n_theta=polar.shape[-1],
        direct_beam_radius=dbr,
    )
    pos_labels, distances = _label_all(
        all_patterns,
        positions,
        fields["labels"],
        fields["merged_factors"],
        polar_kwargs,
        dict(radii=radii, **similarity_kwargs),
    )
    return PatternClustering(
        **fields,
        positions=None if positions is None else np.asarray(positions),
        position_labels=pos_labels,
        step=None if step is None else np.asarray(step),
        centre=tuple(float(c) for c in centre),
        radii=radii,
        n_theta=polar.shape[-1],
        parameters=_pattern_parameters(
            n_clusters,
            distance_threshold,
            method,
            step,
            polar_kwargs,
            similarity_kwargs,
            fields["threshold"],
        ),
        distances=distances,
    )
