"""Rotation-invariant clustering of decomposition components (plain arrays).

:func:`cluster_components` is the numerical part of
:meth:`~hyperspy_cnmf.signals.STEM4D.cluster_diffraction`: the components
of an (over-complete) NMF, factors ``(k, qy, qx)`` and loadings
``(k, n_positions)``, are grouped by the rotation-invariant similarity of
their diffraction, and every probe position is labelled with its dominant
cluster. It runs as a sequence of small named stages, each its own function:

1. :func:`_resolve_beam`: centre and direct-beam radius (px);
2. :func:`_similarity` and :func:`_cut`: pairwise rotation-maximised
   correlation of the polar factors and the hierarchical cut of ``1 - CC``;
3. :func:`_beam_only` and :func:`_attach_beam_only`: components without
   diffraction beyond the direct beam join the cluster with the most similar
   map; :func:`_texture`: components whose maps are a texture over the scan
   (an amorphous matrix's speckle) enter the cut as one item;
4. :func:`_cluster_maps` and :func:`_dominance`: summed maps in data units,
   the objects (pieces of one grain joined) and the dominant cluster of each
   position;
5. :func:`_order`: clusters numbered by decreasing dominated area;
6. :func:`_align`: a reference per cluster and the rotation of every member
   onto it;
7. :func:`~hyperspy_cnmf.clustering.merge_aligned`: merged diffraction;
   :func:`mean_patterns`: the aligned mean model pattern of each cluster's
   positions;
8. :func:`_centroids`: the HyperSpy centroid signals.

Everything is in detector pixels and data units; the calibrated geometry is
converted by the signal method. numpy/scipy (and the Numba kernels) only.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from hyperspy_cnmf._docstrings import fill_doc
from hyperspy_cnmf._schema import stored, transient
from hyperspy_cnmf.clustering._hierarchical import (
    _median_and_noise,
    _similarity_parameters,
    align_to_references,
    attach_by_map,
    cluster_references,
    dominant_labels,
    hierarchical_clustering,
    map_objects,
    merge_aligned,
    order_clusters,
    polar_similarity,
)
from hyperspy_cnmf.clustering._polar import (
    _check_centre,
    beam_search_mask,
    clustering_radius,
    estimate_direct_beam_radius,
    find_direct_beam,
    polar_transform,
    rotate_patterns,
)
from hyperspy_cnmf.clustering._similarity import prepare_polar, rotational_similarity
from hyperspy_cnmf.nmf._kernels import hals_rows

__all__ = ["ComponentClustering", "cluster_components"]

#: :func:`cluster_components` arguments passed on as the polar grid and as the
#: similarity options (the keyword arguments of :func:`polar_similarity`).
_GRID_KEYS = ("radial_range", "delta_r", "n_theta", "delta_theta")
_SIMILARITY_KEYS = (
    "intensity_transform_function",
    "normalize",
    "radial_weighting",
    "mirror",
)
_NO_SKIP = np.zeros(0, dtype=bool)  # hals_rows: no row skipped


@dataclass
class ComponentClustering:
    """Result of :func:`cluster_components`.

    The stored fields are written to ``learning_results`` with the prefix
    ``cdiff_`` by :meth:`~hyperspy_cnmf.signals.STEM4D.cluster_diffraction`
    (see :mod:`hyperspy_cnmf._schema`); ``k`` clustered components, ``c``
    clusters, ``n_positions`` probe positions, ``n_r`` radii.

    Attributes
    ----------
    components : ndarray of int64, shape (k,)
        Index of each clustered component (in the caller's numbering, e.g.
        the columns of HyperSpy's ``factors``).
    labels : ndarray of int64, shape (k,)
        Cluster of each component, clusters numbered by decreasing number of
        dominated positions (then total intensity).
    linkage : ndarray of float64, shape (k - 1, 4)
        SciPy linkage matrix of the tree (before the beam-only attachment).
    pseudo_distance : ndarray of float64, shape (k, k)
        ``1 - max CC`` over the rotation.
    pairwise_rotation : ndarray of float64, shape (k, k)
        Degrees: the best rotation of component ``j`` onto component ``i``.
    pairwise_mirrored : ndarray of bool, shape (k, k)
        Whether that best match mirrors ``j`` (``phi -> -phi``).
    rotation : ndarray of float64, shape (k,)
        Degrees, from +kx towards +ky: rotation of each component onto its
        cluster reference (0 for the reference and beam-only components).
    mirrored : ndarray of bool, shape (k,)
    references : ndarray of int64, shape (c,)
        Reference component of each cluster (an index into the *clustered*
        components, never a beam-only one unless the cluster has nothing
        else).
    merged_factors : ndarray of float64, shape (c, qy, qx)
        Rotation-aligned merged diffraction, data units (counts of the
        cluster summed over the scan): the members' factors, the crystal's
        share of the patterns alone (the paper's merge). Stored as
        ``(qy * qx, c)``.
    mean_patterns : ndarray of float64, shape (c, qy, qx)
        Rotation-aligned mean of the model's pattern over each cluster's
        positions (all components, :func:`mean_patterns`), data units per
        position: what the positions of the phase show, less the noise, the
        matrix under a grain and the direct beam's tail included, with no
        valley carved by the separation of the components. Stored as
        ``(qy * qx, c)``.
    merged_maps : ndarray of float64, shape (c, n_positions)
        Summed maps, data units (counts per probe position; NaN where every
        loading is NaN). When texture components were grouped (over-complete
        k), each cluster's share of the positions' model re-fitted with the
        textures as one pattern (:func:`_unmixed_contributions`), in the same
        units. Stored as ``(n_positions, c)``.
    normalised_maps : ndarray of float64, shape (c, n_positions)
        Dominance score of each cluster (the largest of its objects'; see
        :func:`cluster_components`, Notes). Stored as ``(n_positions, c)``.
    objects : ndarray of int64, shape (k,)
        Object of each component (pieces of one grain or of the matrix
        joined), see :func:`~hyperspy_cnmf.clustering.map_objects`.
    beam_only : ndarray of bool, shape (k,)
        Direct-beam-only components (attached to a cluster by their maps).
    texture : ndarray of bool, shape (k,)
        Components whose map is a texture spread over the scan, not an
        object (see :func:`map_compactness`), that entered the cut as one
        item (at least two, and enough other items left for ``n_clusters``).
    position_labels : ndarray of int64, shape (n_positions,)
        Dominant cluster of each probe position (-1: none, e.g. masked).
    map_artefact : ndarray of int64, shape (k,)
        Components whose map is no feature of the sample (see
        :func:`map_artefacts`): 0 none, 1 the map's half-maximum region is a
        single probe position (a noise spike fitted by an over-complete
        NMF), 2 it lies on the outer row or column of the scan only (scan
        start-up or flyback).
    threshold : float
        Pseudo-distance of the cut.
    centre : ndarray of float64, shape (2,)
        ``(x, y)`` centre of the polar grid, px.
    radii : ndarray of float64, shape (n_r,)
        Radii of the polar grid, px.
    parameters : dict
        Every parameter of the call, geometry in px (stored as JSON).
    refit_factors : ndarray of float64, shape (k, qy, qx), or None
        With a refit (``cluster_components(refit=...)``): the patterns of
        the refit's components, which are then the clustered ones (``k`` is
        theirs, ``components`` numbers them from 0); None without one.
    refit_loadings : ndarray of float64, shape (k, n_positions), or None
        Their maps (stored as ``(n_positions, k)``, as HyperSpy's loadings).
    similarity : ndarray of float64, shape (k, k)
        Not stored. ``max CC`` over the rotation.
    n_theta : int
        Not stored. Azimuthal samples of the polar grid.
    centroids : ndarray of float64, shape (c, qy, qx)
        Not stored (HyperSpy's ``cluster_centroid_signals``): the reference
        factor scaled by its mean loading over the dominated positions.
    distances : ndarray of float64, shape (c, n_positions)
        Not stored (HyperSpy's ``cluster_distances``): ``1 - score`` clipped
        to [0, 1], NaN at masked positions.
    """

    components: np.ndarray = stored(dtype=np.int64)
    labels: np.ndarray = stored(dtype=np.int64)
    linkage: np.ndarray = stored()
    pseudo_distance: np.ndarray = stored()
    pairwise_rotation: np.ndarray = stored()
    pairwise_mirrored: np.ndarray = stored()
    rotation: np.ndarray = stored()
    mirrored: np.ndarray = stored(dtype=bool)
    references: np.ndarray = stored(dtype=np.int64)
    merged_factors: np.ndarray = stored(columns=True)
    mean_patterns: np.ndarray = stored(columns=True)
    merged_maps: np.ndarray = stored(columns=True)
    normalised_maps: np.ndarray = stored(columns=True)
    objects: np.ndarray = stored(dtype=np.int64)
    beam_only: np.ndarray = stored(dtype=bool)
    texture: np.ndarray = stored(dtype=bool)
    position_labels: np.ndarray = stored(dtype=np.int64)
    map_artefact: np.ndarray = stored(dtype=np.int64)
    threshold: float = stored("float")
    centre: np.ndarray = stored(dtype=np.float64)
    radii: np.ndarray = stored()
    parameters: dict = stored("json")
    refit_factors: np.ndarray = stored(columns=True)
    refit_loadings: np.ndarray = stored(columns=True)
    similarity: np.ndarray = transient()
    n_theta: int = transient()
    centroids: np.ndarray = transient()
    distances: np.ndarray = transient()


#: Fraction of its own range (from its median over the scan to its peak) at
#: which a particle object claims a position. A thin precipitate's Bragg
#: intensity grows as its projected thickness squared (kinematic scattering;
#: a sphere: ``1 - (r/R)^2``, zero at the rim), blurred by the probe, so the
#: probe centres inside the particle reach down to a small fraction of its
#: peak. Position ARI against the geometric phase map (probe centre inside the
#: projected disk) at k = true count, random_state 0-1, measured with
#: ``cluster_diffraction(particle_threshold=t)`` after the default
#: decomposition on the multislice cases of ``benchmarks/quality_physics.py``
#: (2-phase, 3-phase descan, 3-phase), with the noise floor below:
#: 0.75-0.83 / 0.78-0.79 / 0.79 at 0.2, 0.78-0.86 / 0.83 / 0.83 at 0.15,
#: 0.81-0.89 / 0.85-0.87 / 0.86 at 0.12, 0.81-0.89 / 0.88 / 0.87-0.88 at 0.1;
#: the package's own (kinematic) simulator, seeds 0-3 at k = 7: 0.82-0.89 at
#: 0.2, 0.95-0.97 at 0.15, 0.92-0.97 at 0.12, 0.87-0.92 at 0.1. The former
#: half-maximum rule gave 0.76 / 0.70 / 0.71 on the multislice cases. 0.12
#: was kept for the own simulator until k = 30 and independent multislice
#: cases judged too. ``python benchmarks/quality_rules.py`` (random_state
#: 0-2, the three multislice cases and the embedded default, 12 runs per k),
#: mean / min ARI at k = 30: 0.873 / 0.778 at 0.12, 0.881 / 0.802 at 0.10,
#: 0.880 / 0.811 at 0.09 (true count 9, 10, 10 of 12); the descan case at
#: k = 30 (random_state 0) 0.839 -> 0.888, the embedded default at k = 7
#: 0.959 -> 0.915 (``quality_physics.py``).
PARTICLE_THRESHOLD = 0.10

#: Standard deviations of its own map noise (robust, from the scan) that a
#: particle object must also stand above its median to claim a position
#: (:func:`~hyperspy_cnmf.clustering.dominant_labels` ``noise_floor``): a
#: low ``PARTICLE_THRESHOLD`` then follows the thin rims of clean maps without
#: letting a noisy map's fluctuations claim positions.
NOISE_FLOOR = 3.0


#: Share of the positions bordering a particle cluster's own that one larger
#: particle cluster may hold before the cluster is taken for a piece of that
#: cluster's grain and joined to it (:func:`_join_enclosed`; with
#: ``n_clusters`` None). At over-complete k an NMF splits one grain's
#: reflections between components (its core and rim, patches of it) that the
#: diffraction similarity keeps apart; their positions interleave, and some
#: member of each still diffracts like one of the other (pseudo-distance
#: 0.24-0.49 on the multislice cases, against 0.76-0.91 for grains of two
#: phases in contact in a reviewer's cases: a piece must be within twice the
#: cut's distance). Grains of two phases also share less of their borders:
#: disks 2-8 scan steps across, touching, 0.07-0.12; overlapping by 1 step
#: in projection 0.19-0.29, by 2 steps 0.27-0.46. Main job on the multislice cases
#: and the embedded default (``python benchmarks/quality_rules.py``: the
#: default decomposition, random_state 0-2, 12 runs per k), mean
#: position ARI and runs with the true number of phases, k = 30: 0.874 and
#: 2 / 12 without the rule, 0.873 and 9 / 12 at 0.3, 0.873 and 5 / 12 at 0.4,
#: 0.873 and 2 / 12 at 0.5; at 2x the true count 9-10 / 12 for all; k = true
#: unchanged (0.878, 9 / 12).
MAX_ENCLOSURE = 0.3

#: Largest cosine overlap of the summed maps of two groups of one cluster
#: that :func:`_split_by_bragg_disks` still parts (see there). Groups of
#: a cluster that differ in their Bragg-disk geometry but share positions are
#: pieces of one grain whose reflections the NMF split between components;
#: grains of two phases lie apart. Main job on the multislice cases and the
#: embedded default (``python benchmarks/quality_rules.py``, random_state
#: 0-2, 12 runs per k), runs with the true number of phases at k = true /
#: 2x / 30: 9 / 8 / 10 of 12 without the split, 12 / 10 / 10 with it, the
#: same for 0.1, 0.2 and 0.3 (mean ARI 0.878 / 0.889 / 0.881 in all three).
MAX_SPLIT_OVERLAP = 0.2

#: Bragg-disk pseudo-distance (:func:`bragg_disk_image`, then the
#: rotation-invariant correlation) beyond which groups of one cluster are
#: parted (:func:`_split_by_bragg_disks`). Measured on the components of the
#: main job: B2-CuZr [001] against CuZr2 [100] 0.46-0.51, rotated grains of
#: one phase up to 0.31 (fcc-Cu [110] with 5.6 px disks, an independent
#: multislice case with a 3.5 mrad probe); with 0.3 that fcc pair was parted
#: (5 clusters for 4 phases), with 0.45 a B2 / CuZr2 pair of another case
#: stayed merged (a sweep of ``cluster_components`` on the decompositions of
#: ``quality_rules.py``, particle threshold 0.12: the true count in 12 / 10 /
#: 9 of 12 runs at k = true / 2x / 30 at 0.4, 12 / 9 / 9 at 0.3).
SPLIT_DISTANCE = 0.4

#: Cosine between the summed map of a group parted by the Bragg-disk split
#: and the matrix cluster's above which the group is glass and joins the
#: matrix (:func:`_split_by_bragg_disks`). Measured: glass components that
#: the cut had merged with a phase whose ring lies on the halo (the own
#: simulator with a 0.36 nm probe at k = 30, a reviewer's case) 0.79-0.96;
#: parted grain groups 0.14-0.56 (the multislice cases and that case).
MATRIX_OVERLAP = 0.7

#: Bragg disks kept by :func:`bragg_disk_image`: matched-filter maxima above
#: this fraction of the strongest (outside the direct beam).
MIN_DISK_FRACTION = 0.15


# --------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------
def _ring_excess(img, centre, disk_radius, beam_radius=None):
    """A pattern's excess over its rings' medians, and its matched-filter response.

    ``img`` (qy, qx) float64 without NaN; ``centre`` (x, y) px. The median
    of every 1-px ring about ``centre`` (the amorphous halo and any
    isotropic background) is subtracted and the positive excess kept (zero
    within ``beam_radius`` px when given), then correlated with a unit-sum
    disk of ``disk_radius`` px (:func:`scipy.signal.fftconvolve`). Returns
    ``(rr, excess, response)``, each (qy, qx): every pixel's distance to the
    centre, the excess and the response.
    """
    from scipy.signal import fftconvolve

    ny, nx = img.shape
    yy, xx = np.mgrid[:ny, :nx]
    rr = np.hypot(xx - centre[0], yy - centre[1])
    ring = np.round(rr).astype(np.int64)
    median = np.asarray(ndimage.median(img, ring, np.arange(ring.max() + 1)))
    excess = np.clip(img - median[ring], 0.0, None)
    if beam_radius is not None:
        excess[rr <= beam_radius] = 0.0
    n = int(np.ceil(disk_radius))
    ky, kx = np.mgrid[-n : n + 1, -n : n + 1]
    disk = (np.hypot(ky, kx) <= disk_radius).astype(np.float64)
    return rr, excess, fftconvolve(excess, disk / disk.sum(), mode="same")


def bragg_disk_image(
    pattern,
    centre,
    disk_radius,
    beam_radius=0.0,
    min_fraction=MIN_DISK_FRACTION,
    sigma=0.8,
):
    """The Bragg-disk geometry of a pattern: one narrow spot at each disk centre.

    The median of every 1-px ring about ``centre`` (the amorphous halo and
    any isotropic background) is subtracted, the positive excess is
    correlated with a disk of ``disk_radius`` (the matched filter of
    py4DSTEM's and pyxem's disk detection, here by
    :func:`scipy.signal.fftconvolve`), and every local maximum (window
    ``2 disk_radius + 1``, :func:`scipy.ndimage.maximum_filter`) beyond
    ``beam_radius`` that reaches ``min_fraction`` of the strongest is kept.
    Each kept disk is drawn as a Gaussian of ``sigma`` px at its centroid,
    weighted by the square root of its filter response. Two phases whose
    disks lie on the same rings a fraction of a disk apart in azimuth
    (B2-CuZr [001] and CuZr2 [100]: 16 degrees at 10 px, with 3 px disks)
    are 0.19-0.28 apart as patterns (pseudo-distance, below the cut's 0.3)
    but 0.31-0.53 as disk images, while rotated grains of one phase stay
    within 0.19 in both (true grain patterns of the multislice cases,
    ``python benchmarks/quality_disk_geometry.py``).

    Parameters
    ----------
    pattern : array_like, shape (qy, qx)
        Non-negative intensities; NaN (masked) counts as 0.
    centre : tuple of float
        Direct beam ``(x, y)`` in px.
    disk_radius : float
        Radius of the Bragg disks (the direct beam's), px. Too small a
        radius finds several maxima on one flat disk.
    beam_radius : float, default 0
        Disks centred within this radius (px) are left out.
    min_fraction : float, default 0.15
    sigma : float, default 0.8
        Width (px) of the drawn spots.

    Returns
    -------
    ndarray of float64, shape (qy, qx)
        Zero where no disk was found.

    Raises
    ------
    ValueError
        If ``pattern`` is not 2-D, ``disk_radius`` is not a number in
        (0, pattern size] or ``centre`` is not a finite pair inside the
        pattern.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import bragg_disk_image
    >>> yy, xx = np.mgrid[:41, :41]
    >>> p = (np.hypot(xx - 30, yy - 20) <= 3).astype(float)
    >>> img = bragg_disk_image(p, (20, 20), 3.0)
    >>> np.unravel_index(np.argmax(img), img.shape)
    (np.int64(20), np.int64(30))
    """
    img = np.nan_to_num(np.asarray(pattern, dtype=np.float64))
    if img.ndim != 2:
        raise ValueError(f"`pattern` must be 2-D (qy, qx), got shape {img.shape}.")
    ny, nx = img.shape
    if isinstance(disk_radius, (bool, str)) or not (
        np.isfinite(disk_radius) and 0 < disk_radius <= max(ny, nx)
    ):
        raise ValueError(
            f"`disk_radius` must be a number of px in (0, {max(ny, nx)}] (the "
            f"pattern's size), got {disk_radius!r}."
        )
    centre = _check_centre(centre, img.shape)
    found = _disk_peaks(img, centre, disk_radius, beam_radius, min_fraction)
    return _draw_disks(found, disk_radius, sigma)


def _draw_disks(found, disk_radius, sigma=0.8):
    """The disk image of :func:`bragg_disk_image` from a pattern's disks.

    ``found``: :func:`_disk_peaks` of the pattern. Each disk is drawn as a
    Gaussian of ``sigma`` px at the centroid of the excess within
    ``disk_radius`` px of its peak, weighted by the square root of its
    filter response. float64 (qy, qx).
    """
    _, excess, response, peak = found
    ny, nx = excess.shape
    yy, xx = np.mgrid[:ny, :nx]
    out = np.zeros_like(excess)
    reach = int(np.ceil(max(disk_radius, 4.0 * sigma))) + 1
    for y, x in zip(*np.nonzero(peak)):
        # centroid of the excess within the disk, then the spot, on a local window
        win = np.s_[
            max(y - reach, 0) : y + reach + 1, max(x - reach, 0) : x + reach + 1
        ]
        wy, wx = yy[win], xx[win]
        w = excess[win] * (np.hypot(wx - x, wy - y) <= disk_radius)
        total = w.sum()
        if total <= 0:
            continue
        cy, cx = (w * wy).sum() / total, (w * wx).sum() / total
        out[win] += np.sqrt(response[y, x]) * np.exp(
            -((wx - cx) ** 2 + (wy - cy) ** 2) / (2.0 * sigma**2)
        )
    return out


def _disk_peaks(img, centre, disk_radius, beam_radius, min_fraction=MIN_DISK_FRACTION):
    """The Bragg disks of a pattern: the local maxima of its matched-filter response.

    :func:`_ring_excess` of ``img`` (qy, qx, float64 without NaN) about
    ``centre`` (x, y) px, then every local maximum of the response (window
    ``2 disk_radius + 1``) beyond ``beam_radius`` px that reaches
    ``min_fraction`` of the strongest. Returns ``(rr, excess, response,
    peak)``, each (qy, qx); ``peak`` is bool.
    """
    rr, excess, response = _ring_excess(img, centre, disk_radius, beam_radius)
    size = 2 * int(round(disk_radius)) + 1
    peak = (
        (response == ndimage.maximum_filter(response, size=size))
        & (rr > beam_radius)
        & (response > min_fraction * response.max())
    )
    return rr, excess, response, peak


#: Weighted share of a region's disk pairs whose sum or difference lands on
#: one of its disks (:func:`_lattice_closure`) below which the disks are no
#: lattice: a patch of glass whose speckle an over-complete fit selected,
#: not a crystal, unless its own positions stand far above the glass
#: (:data:`STRONG_CRYSTAL_Z`; :func:`_faint`). A crystal's disks are the
#: points of its reciprocal lattice (the zone's, or a systematic row's), and
#: ``g_i +- g_j`` of two of them is a third where the pattern shows it; the
#: glass's speckle lies at random azimuths on its halo. Measured on the data's
#: mean patterns of every grain region of 6 positions or more of the cached
#: fits of 26 multislice cases (23 re-made independent ones, w3-w5, and the
#: three of ``../shared/data/abtem_dev``; k = true and 30, random_state 0-5;
#: ``/work/notes/s23/survey3.py`` with ``MARGIN=0 TOLF=1``): regions at least
#: 80 % glass median 0.10-0.13, 90th percentile 0.39-0.48; those at most 30 %
#: glass median 1.0, 5th percentile 0.75; the seven glass regions, not faint
#: otherwise, that lent a group a phase's evidence at most 0.06. Disks that
#: cannot be judged (NaN) count as no lattice: among those regions below
#: :data:`STRONG_CRYSTAL_Z` none at most half glass was NaN.
LATTICE_CLOSURE = 0.25


def _fill_disk_peaks(found, which, patterns, centres, disk_radius, beam_radii):
    """Fill ``found[i]`` with :func:`_disk_peaks` of ``patterns[i]`` (NaN as 0)
    about ``centres[i]`` beyond ``beam_radii[i]``, for each ``i`` of ``which``
    not found yet: each region's disks are found once, for the lattice test
    and the disk images both. Returns ``found`` (a list)."""
    for i in which:
        if found[i] is None:
            found[i] = _disk_peaks(
                np.nan_to_num(np.asarray(patterns[i], dtype=np.float64)),
                np.asarray(centres[i], dtype=np.float64),
                disk_radius,
                beam_radii[i],
            )
    return found


def _lattice_closure(patterns, centres, disk_radius, beam_radii, found=None):
    """How well each pattern's Bragg disks close as a lattice, float64 (n,).

    The disks (:func:`_disk_peaks`) of pattern ``i`` (``patterns`` (n, qy,
    qx), NaN as 0) about ``centres[i]`` ((n, 2), x, y px) beyond
    ``beam_radii[i]`` (px) are the vectors ``g`` from the centre, each
    weighted by its filter response ``w``. For every two disks ``i, j``,
    ``g_i + g_j`` and ``g_i - g_j`` are judged where they land on the
    detector beyond the beam's disk and the disk radius: they close where a
    disk lies within ``max(1.5, disk_radius)`` px (a disk at the detector's
    edge peaks up to a radius inward). Returns the closed
    share of the judged sums and differences, weighted by ``sqrt(w_i w_j)``;
    NaN where none is judged (fewer than two disks, or every sum and
    difference off the detector or in the beam). ``found``: the patterns'
    :func:`_disk_peaks` where the caller has some (a list, None where not;
    :func:`_fill_disk_peaks`). See :data:`LATTICE_CLOSURE`.
    """
    n = patterns.shape[0]
    found = _fill_disk_peaks(
        [None] * n if found is None else found,
        range(n),
        patterns,
        centres,
        disk_radius,
        beam_radii,
    )
    out = np.full(n, np.nan)
    tol = max(1.5, disk_radius)
    shape = np.asarray(patterns.shape[-2:][::-1], dtype=np.float64) - 1.0  # x, y
    for i in range(n):
        centre = np.asarray(centres[i], dtype=np.float64)
        _, _, response, peak = found[i]
        y, x = np.nonzero(peak)
        m = x.size
        if m < 2:
            continue
        g = np.c_[x, y] - centre
        w = response[y, x]
        # the nearest disk of every sum and difference from a k-d tree, the pairs taken a
        # block of first disks at a time: memory O(m) per block, not O(m**3) (a noisy
        # 256 x 256 factor with thousands of maxima asked for 27 GiB)
        tree = cKDTree(g)
        closed = total = 0.0
        step = max(1, _CLOSURE_PAIRS // m)
        for a0 in range(0, m - 1, step):
            a, b = np.nonzero(
                np.arange(m)[None, :] > np.arange(a0, min(a0 + step, m))[:, None]
            )
            a = a + a0
            cand = np.concatenate([g[a] + g[b], g[a] - g[b]])
            weight = np.tile(np.sqrt(w[a] * w[b]), 2)
            where = cand + centre
            judged = (np.hypot(*cand.T) > beam_radii[i] + disk_radius) & np.all(
                (where >= 0) & (where <= shape), axis=1
            )
            if not judged.any():
                continue
            nearest, _ = tree.query(cand[judged])
            closed += float(np.sum(weight[judged] * (nearest <= tol)))
            total += float(np.sum(weight[judged]))
        if total > 0:
            out[i] = closed / total
    return out


#: Disk pairs of one pattern that :func:`_lattice_closure` judges at once (bounds its memory).
_CLOSURE_PAIRS = 1 << 20


def _bragg_groups(members, disk_distance, maps, threshold):
    """Groups of ``members`` that :func:`_split_by_bragg_disks` parts: ``(n, group per member)``.

    Average-linkage cut of the members' Bragg-disk pseudo-distance at
    ``threshold``; sub-groups whose summed maps (rows of ``maps``) overlap
    (cosine ``>= MAX_SPLIT_OVERLAP``) are one group. Groups are numbered
    from 0, in the order of their first member.
    """
    if members.size < 2:
        return 1, np.zeros(members.size, dtype=np.int64)
    d = disk_distance[np.ix_(members, members)]
    sub, _, _ = hierarchical_clustering(
        0.5 * (d + d.T), method="average", distance_threshold=threshold
    )
    if sub.max() < 1:
        return 1, np.zeros(members.size, dtype=np.int64)
    group_maps = np.array(
        [maps[members[sub == g]].sum(0) for g in range(sub.max() + 1)]
    )
    norm = np.linalg.norm(group_maps, axis=1)
    unit = group_maps / np.where(norm > 0, norm, 1.0)[:, None]
    # sub-groups joined by overlapping maps stay one group (connected
    # components); both are numbered in the order of their first member
    n_groups, part = _connected_groups(unit @ unit.T >= MAX_SPLIT_OVERLAP)
    return n_groups, part[sub]


def _split_by_bragg_disks(
    labels, regular, disk_distance, contrib, threshold, matrix=None
):
    """Clusters parted where their components' Bragg disks differ and their maps lie apart.

    Within every cluster of the cut, the regular components (not beam-only,
    not texture) are cut again (average linkage, at ``threshold``:
    :data:`SPLIT_DISTANCE`) on ``disk_distance``, the pseudo-distance of their
    :func:`bragg_disk_image` (:func:`_bragg_groups`). Groups whose summed
    maps overlap (cosine ``>= MAX_SPLIT_OVERLAP``) stay together: pieces of
    one grain holding different subsets of its reflections (over-complete k).
    The rest become clusters of their own: grains of two phases with near
    rings, which the pattern correlation merges (issue 10, item 5). A parted
    group whose map is the matrix's (cosine ``>= MATRIX_OVERLAP`` with the
    summed map of cluster ``matrix``, the extended one; None: none) joins
    the matrix instead: glass components that the cut had put beside a phase
    whose ring lies on the halo (a second matrix cluster otherwise). Returns
    the labels (numbered again) and the number of groups parted.
    """
    labels = labels.copy()
    maps = np.nan_to_num(contrib)
    background = None
    if matrix is not None:
        background = maps[labels == matrix].sum(0)
        norm = np.linalg.norm(background)
        background = background / norm if norm > 0 else None
    nxt = int(labels.max()) + 1
    parted = 0
    for c in np.unique(labels):
        members = np.flatnonzero((labels == c) & regular)
        n_groups, group = _bragg_groups(members, disk_distance, maps, threshold)
        if n_groups < 2:
            continue
        for g in range(n_groups):
            m = maps[members[group == g]].sum(0)
            norm = np.linalg.norm(m)
            glass = (
                background is not None
                and norm > 0
                and float(m @ background) / norm >= MATRIX_OVERLAP
            )
            if glass:
                labels[members[group == g]] = matrix
            elif g > 0:
                labels[members[group == g]] = nxt
                nxt += 1
        parted += n_groups - 1
    # a cluster whose every group joined the matrix is gone: number them again
    return np.unique(labels, return_inverse=True)[1].astype(np.int64), parted


def _connected_groups(adjacent):
    """Number and labels (0 first, in order of first item) of the connected groups."""
    from scipy.sparse.csgraph import connected_components

    n, part = connected_components(adjacent, directed=False)
    _, first = np.unique(part, return_index=True)
    order = np.argsort(np.argsort(first))
    return n, order[part]


def _check_inputs(factors, loadings, components, nav_shape):
    """Float64 factors (k, qy, qx), loadings (k, n), indices (k,), nav shape."""
    factors = np.asarray(factors, dtype=np.float64)
    loadings = np.asarray(loadings, dtype=np.float64)
    if factors.ndim != 3:
        raise ValueError(f"`factors` must have shape (k, qy, qx), got {factors.shape}.")
    k = factors.shape[0]
    if loadings.ndim != 2 or loadings.shape[0] != k:
        raise ValueError(
            f"`loadings` must have shape ({k}, n_positions), got {loadings.shape}."
        )
    if k < 2:
        raise ValueError(f"At least 2 components are needed to cluster, got {k}.")
    nav_shape = (loadings.shape[1],) if nav_shape is None else tuple(nav_shape)
    if int(np.prod(nav_shape)) != loadings.shape[1]:
        raise ValueError(
            f"`nav_shape` {nav_shape} does not match {loadings.shape[1]} positions."
        )
    components = np.arange(k) if components is None else np.asarray(components)
    if components.shape != (k,):
        raise ValueError(f"`components` must have {k} indices.")
    if np.nanmin(factors) < -1e-3 * max(np.nanmax(np.abs(factors)), 1e-300):
        warnings.warn(
            "The factors have negative values: the clustering is meant for "
            "non-negative (NMF) components; negatives are clipped to 0 by the "
            "'sqrt'/'log' transforms.",
            UserWarning,
            stacklevel=3,
        )
    return factors, loadings, components, nav_shape


def _resolve_beam(factors, loading_sum, centre, direct_beam_radius, signal_mask=None):
    """Centre ``(x, y)`` and direct-beam radius in px (found on the weighted sum)."""
    reference = np.nansum(factors * loading_sum[:, None, None], axis=0)
    reference[np.all(np.isnan(factors), axis=0)] = np.nan
    if centre is None:
        with np.errstate(invalid="ignore"):
            centre = find_direct_beam(reference, mask=beam_search_mask(signal_mask))
    else:
        centre = _check_centre(centre, factors.shape[1:])
    if isinstance(direct_beam_radius, str):
        if direct_beam_radius != "auto":
            raise ValueError("`direct_beam_radius` must be a number, 'auto' or None.")
        direct_beam_radius = estimate_direct_beam_radius(reference, centre)
    elif direct_beam_radius is not None:
        direct_beam_radius = float(direct_beam_radius)
    return centre, direct_beam_radius


def _annulus(shape, centre, radii, beam_radius):
    """Detector pixels (qy, qx) of the compared annulus: outside the direct beam, within the radii."""
    yy, xx = np.indices(shape, dtype=np.float64)
    r = np.hypot(xx - centre[0], yy - centre[1])
    inner = max(float(radii[0]), float(beam_radius or 0.0))
    return (r >= inner) & (r <= float(radii[-1]))


def _beam_only(factors, annulus, min_fraction):
    """Components with < ``min_fraction`` of their intensity in the compared annulus."""
    if not min_fraction:
        return np.zeros(factors.shape[0], dtype=bool)
    total = np.nansum(np.abs(factors), axis=(1, 2))
    inside = np.nansum(np.abs(factors[:, annulus]), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, 0.0) < float(min_fraction)


def _attach_beam_only(labels, beam_only, contrib, n_clusters):
    """Dissolve clusters made only of beam-only components (join by map)."""
    if not beam_only.any():
        return labels
    n_tree = int(labels.max()) + 1
    labels = attach_by_map(labels, beam_only, contrib)
    if n_clusters is not None and labels.max() + 1 < n_tree:
        warnings.warn(
            f"{n_tree - labels.max() - 1} cluster(s) made only of "
            "direct-beam components were joined to the clusters with the "
            "most similar maps, leaving fewer than `n_clusters`; pass "
            "min_structure_fraction=0 to keep them.",
            UserWarning,
            stacklevel=3,
        )
    return labels


#: Codes of :attr:`ComponentClustering.map_artefact`.
MAP_ARTEFACTS = {0: "none", 1: "single position", 2: "scan edge"}


def map_artefacts(maps, nav_shape):
    """Flag component maps that are a single probe position or the scan edge only.

    The half-maximum region of each map (positions above half its maximum)
    is inspected: one position only is a noise spike that an over-complete
    NMF fits with a component of its own; a region on the outer row or
    column of the scan only is a scan artefact (start-up, flyback). Neither
    is a feature of the sample.

    Parameters
    ----------
    maps : array_like, shape (k, n_positions)
        Component maps (NaN: masked positions), positions in C order of
        ``nav_shape``.
    nav_shape : tuple of int
        Navigation shape in array order.

    Returns
    -------
    ndarray of int64, shape (k,)
        0 none, 1 single position, 2 scan edge (:data:`MAP_ARTEFACTS`).

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import map_artefacts
    >>> maps = np.zeros((3, 6, 6))
    >>> maps[0, 2:5, 2:5] = 1  # a grain
    >>> maps[1, 3, 1] = 1      # one position
    >>> maps[2, 0, :] = 1      # the first scan row
    >>> map_artefacts(maps.reshape(3, -1), (6, 6)).tolist()
    [0, 1, 2]
    """
    m = np.asarray(maps, dtype=np.float64)
    out = np.zeros(m.shape[0], dtype=np.int64)
    edge = np.ones(tuple(nav_shape), dtype=bool)
    if len(nav_shape) == 2 and min(nav_shape) > 2:
        edge[1:-1, 1:-1] = False
    edge = edge.ravel()
    with np.errstate(invalid="ignore"):
        peak = np.nanmax(np.where(np.isfinite(m), m, -np.inf), axis=1)
        for i, (row, top) in enumerate(zip(m, peak)):
            if not np.isfinite(top) or top <= 0:
                continue
            region = row >= 0.5 * top
            if np.count_nonzero(region) <= 1:
                out[i] = 1
            elif (
                len(nav_shape) == 2
                and min(nav_shape) > 2
                and not np.any(region & ~edge)
            ):
                out[i] = 2
    return out


#: Share of a component map's intensity that the connected region around its
#: peak must hold for the map to be an *object* (a grain, a piece of one, a
#: region of the matrix) rather than a *texture* spread over the scan
#: (:func:`map_compactness`). An over-complete NMF of an amorphous matrix
#: spends components on its speckle (pairs of spots on the halo, maps that
#: dot the whole scan at the probe's resolution); compared by diffraction
#: alone they form clusters of their own and take grains with spots on the
#: halo with them. Position ARI on the multislice cases of
#: ``benchmarks/quality_physics.py`` (2-phase, 3-phase descan, 3-phase),
#: random_state 0 and 1, with the map noise floor of 2 sigma: at k = 30
#: 0.44-0.49 / 0.41-0.54 / 0.38-0.67 without the rule, 0.71-0.84 /
#: 0.76 / 0.86 at 0.2 (0.66-0.64 / 0.77 / 0.86 at 0.15, 0.61-0.75 /
#: 0.73-0.76 / 0.82 at 0.25); at 2 x the true count 0.47 / 0.77-0.85 /
#: 0.51-0.69 without, 0.77-0.89 / 0.81 / 0.87-0.89 at 0.2; at the true
#: count unchanged (0.81-0.89 / 0.85-0.87 / 0.86). Without the noise floor,
#: grain maps with noise fell below the bar (3-phase, k = true: 0.86 ->
#: 0.80).
MIN_MAP_COMPACTNESS = 0.2


def map_compactness(maps, nav_shape, level=0.2, noise_floor=2.0):
    """Share of each map's intensity held by the connected region around its peak.

    A map is taken above its median over the scan (the level away from a
    small object) plus ``noise_floor`` standard deviations of its noise (the
    median absolute deviation over the scan times 1.4826; F. R. Hampel,
    *J. Am. Stat. Assoc.* 69, 383 (1974)), so that the noise of a weak
    grain's map does not count as spread intensity. Its *peak region* is the
    connected set of positions (8-connectivity in 2D) around its maximum
    where that excess exceeds ``level`` of its maximum. A grain, a piece of
    one or a region of the matrix holds most of its intensity there (about
    1); a texture spread over the scan (the speckle of an amorphous matrix)
    holds a small share, the size of one speckle among many.

    Parameters
    ----------
    maps : array_like, shape (k, n_positions)
        Component maps (NaN: masked positions, counted as the median),
        positions in C order of ``nav_shape``.
    nav_shape : tuple of int
        Navigation shape in array order.
    level : float, default 0.2
        Fraction of the map's maximum (above its median) that bounds the
        peak region.
    noise_floor : float, default 2.0
        Standard deviations of the map's noise left out with the median.

    Returns
    -------
    ndarray of float64, shape (k,)
        Between 0 and 1; 1 for a map that is flat (nothing above its median).

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import map_compactness
    >>> grain = np.zeros((20, 20)); grain[5:9, 5:9] = 1
    >>> speckle = np.zeros((20, 20)); speckle[::4, ::4] = 1
    >>> map_compactness(np.stack([grain, speckle]).reshape(2, -1), (20, 20)).round(2).tolist()
    [1.0, 0.04]
    """
    m = np.asarray(maps, dtype=np.float64)
    out = np.ones(m.shape[0])
    for i, row in enumerate(m):
        found = _excess_regions(row, nav_shape, level, noise_floor)
        if found is not None:
            excess, regions, _ = found
            peak = regions.flat[np.argmax(excess)]
            out[i] = excess[regions == peak].sum() / excess.sum()
    return out


def _excess_regions(row, nav_shape, level, noise_floor):
    """A map's excess over its median plus ``noise_floor`` sigma and its connected regions.

    Returns ``(excess, regions, n)`` (regions where the excess passes
    ``level`` of its maximum, labelled 1..n with 8-connectivity in 2D), or
    None for a map with no finite value or no excess.
    """
    if not np.isfinite(row).any():
        return None
    median, sigma = _median_and_noise(row)
    excess = np.clip(row - median - noise_floor * sigma, 0.0, None)
    excess = np.nan_to_num(excess).reshape(nav_shape)
    top = excess.max()
    if top <= 0:
        return None
    structure = np.ones((3,) * len(nav_shape), dtype=bool)
    regions, n = ndimage.label(excess >= level * top, structure=structure)
    return excess, regions, n


def _object_share(maps, nav_shape, min_positions, level=0.2, noise_floor=2.0):
    """Share of each map's excess held by regions of at least ``min_positions`` positions.

    The excess and its regions are those of :func:`map_compactness` (above
    the median plus ``noise_floor`` sigma, connected where the excess passes
    ``level`` of its maximum). A speckle map's regions are probe-sized
    (``min_positions``: the fewest positions a resolved object dominates);
    several grains in one orientation make a dotted map too, but of
    object-sized regions. Returns zeros when ``min_positions`` is 0.
    """
    m = np.asarray(maps, dtype=np.float64)
    out = np.zeros(m.shape[0])
    if not min_positions:
        return out
    for i, row in enumerate(m):
        found = _excess_regions(row, nav_shape, level, noise_floor)
        if found is None:
            continue
        excess, regions, n = found
        index = np.arange(1, n + 1)
        sizes = ndimage.sum(np.ones_like(excess), regions, index)
        held = ndimage.sum(excess, regions, index)
        out[i] = held[sizes >= min_positions].sum() / excess.sum()
    return out


#: Share of a low-compactness map's excess that object-sized regions (at
#: least ``min_cluster_positions`` positions) must hold for the map to be
#: several objects in one orientation rather than a texture
#: (:func:`_texture`). The 278 texture components of the multislice cases and
#: the embedded default (k = true, 2x, 30, random_state 0-2, the factors of
#: ``benchmarks/quality_rules.py``) held 0-0.52 there (speckle, smooth pieces of
#: the glass); seven precipitates in one orientation (a reviewer's simulated
#: case, k = 12 and 30) 0.87-0.88: 2 clusters for 3 phases (ARI 0.40 / 0.37)
#: when taken for texture, 3 (0.76 / 0.77) now. The multislice results are
#: unchanged.
MIN_OBJECT_SHARE = 0.75


def _texture(contrib, nav_shape, beam_only, min_compactness, min_object_positions=0):
    """Components (k,) whose maps are textures, not objects (beam-only excluded).

    A map with little of its intensity around its peak
    (:func:`map_compactness` below ``min_compactness``) is a texture unless
    most of it lies in object-sized regions (:func:`_object_share` of
    ``min_object_positions``, at least :data:`MIN_OBJECT_SHARE`): precipitates
    sharing one orientation.
    """
    if not min_compactness:
        return np.zeros(contrib.shape[0], dtype=bool)
    spread = map_compactness(contrib, nav_shape) < float(min_compactness)
    if spread.any() and min_object_positions:
        objects = np.zeros_like(spread)
        objects[spread] = (
            _object_share(contrib[spread], nav_shape, min_object_positions)
            >= MIN_OBJECT_SHARE
        )
        spread &= ~objects
    return spread & ~beam_only


def _texture_distance(polar, radii, loading_sum, texture, similarity_kwargs):
    """Pseudo-distance (k,) of every component to the texture group's summed diffraction.

    The polar transform is linear, so the group's polar image is the
    loading-weighted sum of its members' (``polar``, the factors' own), compared
    with every component by one row of
    :func:`~hyperspy_cnmf.clustering.rotational_similarity`.
    """
    if texture.sum() < 2:
        return None
    members = polar[texture] * loading_sum[texture, None, None]
    group = np.nansum(members, axis=0)
    group[np.all(np.isnan(members), axis=0)] = np.nan
    sim = rotational_similarity(group[None], polar, radii=radii, **similarity_kwargs)
    return sim.pseudo_distance[0]


def _unmixed_contributions(
    factors, loadings, contrib, labels, beam_only, texture, annulus
):
    """Maps (k, n_positions) of the model re-expressed in the components, textures as one pattern.

    At over-complete k an NMF spreads a grain's reflections over the
    components of the amorphous matrix's speckle (texture components hold
    0.1-0.3 of a small grain's counts on the multislice cases) and gives
    grain components a share of the speckle, so summed component maps miss
    the grain's rim and spill onto the matrix. Here the model pattern of
    every position, ``sum_i loadings[i, p] * factors[i]`` on the compared
    annulus (the direct beam left out: it carries the thickness, not the
    phase), is fitted again by non-negative least squares with the texture
    components' summed pattern (loading-weighted, as :func:`_texture_distance`
    compares it) as *one* pattern beside every other structured component
    (spectral unmixing with fixed endmembers: the NMF's own map update,
    :func:`~hyperspy_cnmf.nmf._kernels.hals_rows`). The speckle group can then
    only explain what all the speckle shares, and the reflections a few
    speckle components took from a grain return to the grain's components.
    Worked on the Gram matrices (``t x t`` and ``t x n_positions``, t
    patterns), never on the positions x pixels model.

    Returns the maps in data units (counts per position, like ``contrib``):
    each cluster's fitted share of every position (a coefficient times the
    pattern's total counts) split among its members in proportion to their
    own maps, so that components of one cluster keep their shapes (two
    members with one pattern, such as tiles of the matrix, cannot be told
    apart by the fit). Beam-only components and patterns with nothing on the
    annulus keep ``contrib``.
    """
    k = factors.shape[0]
    pix = np.nan_to_num(factors.reshape(k, -1)[:, annulus])
    on_annulus = pix.sum(axis=1)
    total = np.nansum(factors, axis=(1, 2))
    fit = ~beam_only & (on_annulus > 1e-12 * max(on_annulus.max(), 1e-300))
    singles = np.flatnonzero(fit & ~texture)
    group = np.flatnonzero(fit & texture)
    if singles.size + min(group.size, 1) == 0:
        return contrib
    load = np.nan_to_num(loadings)
    weight = np.nansum(loadings, axis=1)
    patterns = [pix[singles] / on_annulus[singles, None]]
    to_counts = [(total / on_annulus)[singles]]  # counts on the annulus -> all counts
    if group.size:
        g = (weight[group, None] * pix[group]).sum(axis=0)
        patterns.append(g[None] / g.sum())
        to_counts.append([np.sum(weight[group] * total[group]) / g.sum()])
    T = np.vstack(patterns)
    # the model on the annulus, X_p = sum_i load[i, p] pix[i]: R = X T^T from the small products
    R = np.ascontiguousarray(((pix @ T.T).T @ load).T)
    G = T @ T.T
    C = np.clip(np.linalg.lstsq(G, R.T, rcond=None)[0].T, 0.0, None)
    hals_rows(C, R, G, _NO_SKIP, 500, 1e-6)
    C *= np.concatenate(to_counts)
    fitted = np.zeros(k, dtype=bool)
    fitted[singles] = fitted[group] = True
    owner = np.r_[labels[singles], labels[group[:1]]]
    out = contrib.copy()
    for c in np.unique(labels[fitted]):
        members = np.flatnonzero(fitted & (labels == c))
        share = np.clip(np.nan_to_num(contrib[members]), 0.0, None)
        norm = share.sum(axis=0)
        share = np.where(
            norm > 0, share / np.where(norm > 0, norm, 1.0), 1.0 / members.size
        )
        out[members] = C[:, owner == c].sum(axis=1) * share
    out[:, np.all(np.isnan(loadings), axis=0)] = np.nan
    return out


def _cut(
    dist,
    beam_only,
    texture,
    texture_dist,
    contrib,
    method,
    n_clusters,
    distance_threshold,
):
    """Labels (k,), linkage of all components, the cut height and whether textures were grouped.

    The tree of all components is kept for display, but the cut is made among
    the structured components only, so that beam-only components never take a
    cluster slot (nor move the ``"gap"`` cut); each then joins the cluster
    whose map correlates best with its own
    (:func:`~hyperspy_cnmf.clustering.attach_by_map`). Texture components
    enter the cut as one item, their summed diffraction (``texture_dist``:
    its pseudo-distance to every component), so the speckle of an amorphous
    matrix neither takes cluster slots nor pulls grains apart. The rule is
    off when no other component is left or fewer items than ``n_clusters``
    would remain.
    """
    cut = dict(
        method=method, n_clusters=n_clusters, distance_threshold=distance_threshold
    )
    labels, Z, threshold = hierarchical_clustering(dist, **cut)
    regular = ~beam_only & ~texture
    group = texture_dist is not None and regular.any()
    n_items = np.count_nonzero(regular) + (1 if group else 0)
    if group and n_clusters is not None and n_items < n_clusters:
        group = False
    if not group:
        regular = ~beam_only
        n_items = np.count_nonzero(regular)
    if (not beam_only.any() and not group) or n_items < 2:
        labels = _attach_beam_only(labels, beam_only, contrib, n_clusters)
        return labels, Z, threshold, False
    idx = np.flatnonzero(regular)
    sub_dist = dist[np.ix_(idx, idx)]
    if group:
        col = texture_dist[idx]
        sub_dist = np.block(
            [[sub_dist, col[:, None]], [col[None, :], np.zeros((1, 1))]]
        )
    sub, _, threshold = hierarchical_clustering(sub_dist, **cut)
    labels = np.empty(dist.shape[0], dtype=np.int64)
    labels[idx] = sub[: idx.size]
    if group:
        labels[texture] = sub[-1]
    labels[beam_only] = sub.max() + 1 + np.arange(np.count_nonzero(beam_only))
    return attach_by_map(labels, beam_only, contrib), Z, threshold, group


def _cluster_maps(contrib, labels, masked):
    """Summed map of each cluster (c, n_positions), NaN at masked positions."""
    n_c = int(labels.max()) + 1
    maps = np.stack([contrib[labels == c].sum(axis=0) for c in range(n_c)])
    maps[:, masked] = np.nan
    return maps


def _smooth_maps(maps, nav_shape, sigma):
    """Gaussian smoothing (navigation px) of each map; NaN stays NaN."""
    if not sigma:
        return maps
    nan = np.isnan(maps)
    out = np.stack(
        [
            ndimage.gaussian_filter(
                np.nan_to_num(m).reshape(nav_shape), float(sigma)
            ).ravel()
            for m in maps
        ]
    )
    out[nan] = np.nan
    return out


def _extended_clusters(maps, labels, masked, percentiles):
    """Clusters above half their range on most of the scan (e.g. the matrix).

    When none is (the speckled map of an amorphous matrix split into many
    components is noisy, so its range is set by its peaks), the cluster with
    the largest median over the scan, relative to its range (1st to 99th
    percentile), is the extended one: the matrix is present at every
    position, a particle cluster's median is its background. Measured on the
    multislice cases of ``benchmarks/quality_physics.py``, where no cluster
    passed the first rule and the matrix then competed with the particles
    everywhere. The largest *total* counts, the first fallback, failed at
    k = 30 when a grain cluster had gathered components holding much of the
    matrix's speckle: it outweighed the matrix and took 904 of 1024 positions
    (3-phase descan case, random_state 0, exact phase to ``tol``: ARI 0.44,
    0.84 with the median). The plain median, the second, failed where a grain
    cluster's components carried a background as high as the speckled
    matrix's (an independent case with a 3.5 mrad probe, k = true: the fcc
    cluster took 1405 of 1420 glass positions, ARI 0.55; 0.86 with the
    relative median, random_state 0-2: 0.86 / 0.83 / 0.87).
    """
    cl_maps = _cluster_maps(maps, labels, masked)
    _, cl_norm = dominant_labels(cl_maps, percentiles=percentiles)
    with np.errstate(invalid="ignore"):
        extended = np.sum(cl_norm >= 0.5, axis=1) > 0.5 * np.count_nonzero(~masked)
    if not extended.any() and cl_maps.shape[0] > 1:
        lo, med, hi = np.nanpercentile(cl_maps, [1.0, 50.0, 99.0], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(hi > lo, (med - lo) / (hi - lo), 0.0)
        extended[np.argmax(np.nan_to_num(rel))] = True
    return extended


def _hysteresis(score, particle, nav_shape, high=0.5):
    """Particle claims kept only in regions that reach ``high`` of the object's range.

    Hysteresis thresholding (J. Canny, 1986): a particle object's claim (its
    score, nonzero where it reaches the low threshold) is kept on the
    connected regions of the scan (8-connectivity) that also reach ``high``
    somewhere, so map noise that crosses the low threshold away from the
    grain claims nothing. Returns the labels (argmax, -1 where all NaN) and
    the scores.
    """
    score = score.copy()
    structure = np.ones((3,) * len(nav_shape), dtype=bool)
    for o in np.flatnonzero(particle):
        s = np.nan_to_num(score[o]).reshape(nav_shape)
        regions, n = ndimage.label(s > 0, structure=structure)
        if n:
            keep = np.r_[
                False, ndimage.maximum(s, regions, np.arange(1, n + 1)) >= high
            ]
            score[o] = np.where(
                keep[regions].ravel() | np.isnan(score[o]), score[o], 0.0
            )
    filled = np.where(np.isnan(score), -np.inf, score)
    labels = np.argmax(filled, axis=0).astype(np.int64)
    labels[np.all(np.isnan(score), axis=0)] = -1
    return labels, score


def _dominance(contrib, labels, nav_shape, percentiles, smoothing, threshold):
    """Objects (k,), dominant cluster per position and per-cluster scores."""
    masked = np.all(np.isnan(contrib), axis=0)
    m = _smooth_maps(contrib, nav_shape, smoothing)
    objects = map_objects(m, labels, nav_shape)
    n_o, n_c = int(objects.max()) + 1, int(labels.max()) + 1
    obj_cluster = np.array([labels[objects == o][0] for o in range(n_o)])
    obj_maps = np.stack([m[objects == o].sum(axis=0) for o in range(n_o)])
    obj_maps[:, masked] = np.nan
    extended = _extended_clusters(m, labels, masked, percentiles)
    obj_labels, obj_score = dominant_labels(
        obj_maps,
        percentiles=percentiles,
        extended=extended[obj_cluster],
        threshold=threshold,
        particle_baseline="median",
        noise_floor=NOISE_FLOOR,
    )
    if extended.any() and not extended.all():
        obj_labels, obj_score = _hysteresis(
            obj_score, ~extended[obj_cluster], nav_shape
        )
    pos_labels = np.where(obj_labels >= 0, obj_cluster[np.maximum(obj_labels, 0)], -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        norm_maps = np.stack(
            [np.nanmax(obj_score[obj_cluster == c], axis=0) for c in range(n_c)]
        )
    return objects, pos_labels, norm_maps


def _order(labels, maps, norm_maps, pos_labels):
    """Renumber clusters: most dominated positions first, then total intensity."""
    n_c = maps.shape[0]
    counts = np.bincount(pos_labels[pos_labels >= 0], minlength=n_c)
    key = counts + np.nansum(maps, axis=1) / (np.nansum(maps) + 1e-300)
    labels, order = order_clusters(labels, key)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(n_c)
    pos_labels = np.where(pos_labels >= 0, inverse[np.maximum(pos_labels, 0)], -1)
    return labels, maps[order], norm_maps[order], pos_labels


def _align(sim, labels, beam_only, weights):
    """References (c,), rotation (k,) and mirror (k,) of each member onto its own.

    A beam-only component is never a reference (unless its cluster has
    nothing else) and is merged unrotated.
    """
    similarity = np.where(beam_only[:, None], -1e3, sim.similarity)
    refs = cluster_references(similarity, labels, weights=weights)
    rot, mir = align_to_references(sim, labels, refs)
    return refs, np.where(beam_only, 0.0, rot), mir & ~beam_only


def _centroids(factors, loadings, refs, pos_labels):
    """Reference factor x its mean loading over the dominated positions (c, qy, qx)."""
    out = np.empty((refs.size,) + factors.shape[1:])
    for c, ref in enumerate(refs):
        dominated = pos_labels == c
        scale = np.nanmean(loadings[ref, dominated]) if dominated.any() else 0.0
        out[c] = factors[ref] * scale
    return out


def _cluster_positions(
    contrib, labels, loadings, nav_shape, percentiles, smoothing, threshold, pos=None
):
    """Cluster maps, map objects and dominant cluster of every position, clusters renumbered.

    ``pos``: the cluster of every position, when given (not the dominant one;
    :func:`_regroup_by_grain_patterns`). Returns these
    :class:`ComponentClustering` fields as a dict.
    """
    maps = _cluster_maps(contrib, labels, np.all(np.isnan(loadings), axis=0))
    objects, pos_labels, norm_maps = _dominance(
        contrib, labels, nav_shape, percentiles, smoothing, threshold
    )
    if pos is not None:
        pos_labels = pos
    labels, maps, norm_maps, pos_labels = _order(labels, maps, norm_maps, pos_labels)
    with np.errstate(invalid="ignore"):
        distances = 1.0 - np.clip(norm_maps, 0.0, 1.0)
    return dict(
        labels=labels,
        merged_maps=maps,
        normalised_maps=norm_maps,
        objects=objects,
        position_labels=pos_labels,
        map_artefact=map_artefacts(loadings, nav_shape),
        distances=distances,
    )


def _border(grid, c):
    """The ring of positions next to cluster ``c``'s in ``grid`` (8-connectivity in 2D), bool."""
    own = grid == c
    structure = np.ones((3,) * grid.ndim, dtype=bool)
    return ndimage.binary_dilation(own, structure=structure) & ~own


def _enclosure(pos_labels, nav_shape, background):
    """The larger particle cluster holding most of each cluster's border, and its share.

    The border of a cluster is the ring of positions next to its own
    (8-connectivity in 2D) that it does not hold. Returns, per cluster, the
    particle cluster (not one of the ``background`` clusters, the extended
    ones) that holds most of it among those dominating more positions (a
    piece is smaller than its grain), -1 if none, and the share of the
    border it holds (0 for a background cluster or one with no border).
    """
    n_c = background.size
    pos = pos_labels.reshape(nav_shape)
    counts = np.bincount(pos[pos >= 0], minlength=n_c)
    encloser = np.full(n_c, -1, dtype=np.int64)
    share = np.zeros(n_c)
    for c in np.flatnonzero(~background):
        ring = _border(pos, c)
        held = np.bincount(pos[ring & (pos >= 0)], minlength=n_c)
        held[background | (counts <= counts[c])] = 0
        if held.max() > 0:
            encloser[c] = int(np.argmax(held))
            share[c] = held.max() / np.count_nonzero(ring)
    return encloser, share


def _same_crystal_neighbour(labels, pos, nav_shape, background, same_crystal):
    """``(piece, into)``: the smallest particle cluster touching one of the same crystal, or None.

    Two particle clusters whose positions touch (8-connectivity in 2D) and
    whose components share the same Bragg-disk geometry *without rotation*
    are pieces of one crystal: the same lattice in the same orientation.
    ``same_crystal`` is ``(same (k, k) bool, weight (k,))``: the pairs, and
    the components' counts. Most of each cluster's counts (over half) must
    lie in components with a partner of the same crystal in the other, so
    that a cluster mixing several grains does not absorb each grain's clean
    cluster through one stray member. The piece joins the neighbour of that
    kind dominating the most positions.
    """
    same, weight = same_crystal
    counts = np.bincount(pos[pos >= 0], minlength=background.size)

    def one_crystal(a, b):
        ia, ib = np.flatnonzero(labels == a), np.flatnonzero(labels == b)
        pair = same[np.ix_(ia, ib)]
        wa, wb = weight[ia], weight[ib]
        return (
            wa[pair.any(axis=1)].sum() > 0.5 * wa.sum()
            and wb[pair.any(axis=0)].sum() > 0.5 * wb.sum()
        )

    grid = pos.reshape(nav_shape)
    for c in np.argsort(counts, kind="stable"):
        if background[c] or counts[c] == 0:
            continue
        ring = _border(grid, c)
        touching = [
            b
            for b in np.unique(grid[ring & (grid >= 0)])
            if not background[b] and one_crystal(c, b)
        ]
        if touching:
            return int(c), int(max(touching, key=lambda b: counts[b]))
    return None


def _same_crystal(disk_polar, radii, similarity_kwargs, regular):
    """Pairs of regular components with one Bragg-disk geometry at zero rotation, (k, k) bool.

    The correlation of the polar Bragg-disk images (:func:`bragg_disk_image`)
    without the rotation search (same lattice *and* orientation: one crystal)
    within :data:`SPLIT_DISTANCE` of 1, so that a join of such pieces never
    undoes a split (which needs more than that distance at the best
    rotation).
    """
    prep = {
        key: similarity_kwargs[key]
        for key in ("intensity_transform_function", "normalize", "radial_weighting")
    }
    a, ok = prepare_polar(disk_polar, radii=radii, **prep)
    same = 1.0 - np.einsum("irt,jrt->ij", a, a) <= SPLIT_DISTANCE
    same &= (ok & regular)[:, None] & (ok & regular)[None, :]
    return same


def _join_enclosed(
    labels, pos_labels, nav_shape, background, max_enclosure, near, same_crystal=None
):
    """Component labels with every cluster enclosed by a larger particle cluster joined to it.

    A cluster more than ``max_enclosure`` of whose border (:func:`_enclosure`)
    one larger particle cluster holds is a piece of that cluster's grain (its
    core, rim or a patch of it, whose other reflections went to other
    components) when some member of each still diffract alike
    (``near[i, j]``, the pair's pseudo-distance within twice the cut's): its
    components join the enclosing cluster, its positions count as that
    cluster's for the next piece; the smallest first. Grains of another phase
    that touch or overlap it stay apart however much border they share.
    When no cluster is enclosed, touching particle clusters of the same
    crystal join (``same_crystal``: pairs and weights, see
    :func:`_same_crystal_neighbour`; None: not used): the patches a low-dose
    grain falls into at over-complete k.
    Returns the labels (not renumbered) and the number of clusters joined.
    """
    labels = labels.copy()
    pos = pos_labels.copy()
    joined = 0
    while True:
        encloser, share = _enclosure(pos, nav_shape, background)
        # a joined cluster holds no position, so it has no border and share 0
        enclosed = share > max_enclosure
        for c in np.flatnonzero(enclosed):
            enclosed[c] = near[np.ix_(labels == c, labels == encloser[c])].any()
        if enclosed.any():
            counts = np.bincount(pos[pos >= 0], minlength=share.size)
            piece = int(np.argmin(np.where(enclosed, counts, np.inf)))
            into = encloser[piece]
        elif same_crystal is not None:
            pair = _same_crystal_neighbour(
                labels, pos, nav_shape, background, same_crystal
            )
            if pair is None:
                return labels, joined
            piece, into = pair
        else:
            return labels, joined
        labels[labels == piece] = into
        pos[pos == piece] = into
        joined += 1


def _positions_of_resolved_clusters(
    contrib, labels, loadings, nav_shape, rules, min_positions, pieces=None
):
    """:func:`_cluster_positions`, clusters that resolve no object of their own dissolved.

    A cluster that dominates fewer probe positions than a probe-sized spot
    holds no phase the scan resolves (in an over-complete NMF: a few
    positions' noise or a fragment of a grain's reflections): it is
    dissolved, its components join the clusters whose maps correlate best
    with theirs (:func:`~hyperspy_cnmf.clustering.attach_by_map`), and the
    positions are labelled again; the smallest first, until none is left.
    Then the pieces of one grain are joined (:func:`_join_enclosed`; ``pieces``
    its ``(max_enclosure, near)``, None: off). Returns the fields and the
    numbers of clusters dissolved and joined.
    """
    fields = _cluster_positions(contrib, labels, loadings, nav_shape, *rules)
    dissolved = 0
    while min_positions:
        labels, pos = fields["labels"], fields["position_labels"]
        counts = np.bincount(pos[pos >= 0], minlength=int(labels.max()) + 1)
        small = counts < min_positions
        if not small.any() or small.all():
            break
        weakest = int(np.argmin(np.where(small, counts, np.inf)))
        labels = attach_by_map(labels, labels == weakest, contrib)
        fields = _cluster_positions(contrib, labels, loadings, nav_shape, *rules)
        dissolved += 1
    joined = 0
    if pieces is not None and fields["labels"].max() > 0:
        masked = np.all(np.isnan(loadings), axis=0)
        m = _smooth_maps(contrib, nav_shape, rules[1])
        extended = _extended_clusters(m, fields["labels"], masked, rules[0])
        labels, joined = _join_enclosed(
            fields["labels"], fields["position_labels"], nav_shape, extended, *pieces
        )
        if joined:
            labels = np.unique(labels, return_inverse=True)[1]
            fields = _cluster_positions(contrib, labels, loadings, nav_shape, *rules)
    return fields, dissolved, joined


#: Probe positions a grain's region needs for its mean pattern to tell its
#: phase (:func:`_regroup_by_grain_patterns`). Disk-image pseudo-distance of
#: the regions' mean noisy patterns on the multislice cases (the three of
#: ``benchmarks/quality_physics.py`` and three independent ones, k = true and
#: 30, random_state 0-1): regions of >= 20 positions, same phase at most
#: 0.13, different phases at least 0.38; >= 10 positions: 0.26 and 0.32;
#: >= 6 positions: 0.32 and 0.22.
MIN_GRAIN_POSITIONS = 20

#: Average-linkage cut (disk-image pseudo-distance) of the grains' mean
#: patterns, midway between the measurements of :data:`MIN_GRAIN_POSITIONS`.
GRAIN_DISTANCE = 0.25


def _grain_regions(pos_labels, nav_shape, background):
    """Connected regions (8-connectivity) of every particle cluster's positions.

    Returns the region of each position (-1: a ``background`` cluster's or
    unlabelled) and the cluster of each region.
    """
    grid = pos_labels.reshape(nav_shape)
    structure = np.ones((3,) * len(nav_shape), dtype=bool)
    region = np.full(pos_labels.size, -1, dtype=np.int64)
    owner = []
    for c in np.flatnonzero(~background):
        lab, n = ndimage.label(grid == c, structure=structure)
        lab = lab.ravel()
        region[lab > 0] = lab[lab > 0] - 1 + len(owner)
        owner += [int(c)] * n
    return region, np.asarray(owner, dtype=np.int64)


#: Cosine distance of two components' Bragg-disk images, unrotated
#: (:func:`bragg_disk_image`), within which they hold one orientation
#: (:func:`_orientation_groups`; average linkage).
ORIENTATION_DISTANCE = 0.5


def _orientation_groups(disks):
    """Groups of components whose disks lie at the same places, int64 (k,).

    At k = 30 a grain's diffraction is spread over several components, each
    of whose maps holds a piece of it; they share its disks where they lie,
    unrotated. The components' Bragg-disk images (``disks``, (k, qy, qx):
    :func:`bragg_disk_image` of each factor about the scan's centre, as
    :func:`cluster_components` draws them for its Bragg-disk split) are
    compared by their cosine, and the average-linkage tree is cut at
    :data:`ORIENTATION_DISTANCE`: grains of one phase in other orientations,
    whose disks lie elsewhere, fall in other groups
    (:func:`_split_regions_by_component`). A factor without disks is a group
    of its own.

    Examples
    --------
    >>> yy, xx = np.mgrid[:41, :41]
    >>> def spots(angle):
    ...     a = np.deg2rad(angle + np.arange(0, 360, 90))
    ...     x, y = 20 + 12 * np.cos(a), 20 + 12 * np.sin(a)
    ...     return sum(np.hypot(xx - u, yy - v) <= 2 for u, v in zip(x, y)) * 1.0
    >>> f = [spots(0), 0.5 * spots(0), spots(30)]
    >>> disks = np.stack([bragg_disk_image(p, (20.0, 20.0), 2.0, 4.0) for p in f])
    >>> _orientation_groups(disks).tolist()
    [0, 0, 1]
    """
    k = disks.shape[0]
    if k < 2:
        return np.zeros(k, dtype=np.int64)
    images = disks.reshape(k, -1)
    norm = np.linalg.norm(images, axis=1)
    outer = np.outer(norm, norm)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(outer > 0, (images @ images.T) / outer, 0.0)
    distance = 1.0 - np.clip(cosine, 0.0, 1.0)
    np.fill_diagonal(distance, 0.0)
    labels, _, _ = hierarchical_clustering(
        distance, method="average", distance_threshold=ORIENTATION_DISTANCE
    )
    return np.asarray(labels, dtype=np.int64)


def _split_regions_by_component(
    region, owner, contrib, labels, nav_shape, orientation=None
):
    """Regions parted where two of their cluster's components each dominate a grain.

    Touching grains of one phase in different orientations are one region of
    their cluster's positions, and the mean pattern of that region holds both
    orientations' disks: it lies beyond the grains' cut from the single
    grains of the phase, and the phase splits in two (the package's
    simulator, ``simulated_precipitates(random_state=3)``, two touching
    hexagonal grains: 4 clusters of 3 at k = 7, 14 and 21 in
    ``benchmarks/quality_clustering.py``, 3 of 3 with the split; the
    multislice sweep of ``benchmarks/quality_physics.py``'s cases unchanged).
    Within a region, each position goes to the cluster's component with the
    largest contribution there, or, with ``orientation`` (int, (k,):
    :func:`_orientation_groups`), to the group of the cluster's components
    of one orientation whose summed contribution is largest (at k = 30 a
    grain's pieces spread over several components, none of which dominates
    a large piece: two B2 grains in other orientations, bridged by glass,
    made one region whose mean pattern held both, and the phase parted in
    two; an independent case with a 2.2-step probe, random_state 2). The
    connected pieces (8-connectivity) of
    :data:`MIN_GRAIN_POSITIONS` or more positions become regions, and every
    smaller piece joins the large piece it shares most border with, directly
    or through other small pieces (so every part stays connected). A region
    with fewer than two large pieces stays whole.

    Parameters
    ----------
    region : ndarray of int64, shape (n,)
        Region of every position, -1 for none (:func:`_grain_regions`).
    owner : ndarray of int64, shape (n_regions,)
        Cluster of every region.
    contrib : ndarray, shape (k, n)
        Contribution of every component at every position.
    labels : ndarray of int, shape (k,)
        Cluster of every component.
    nav_shape : tuple of int
    orientation : ndarray of int, shape (k,), optional
        Orientation group of every component.

    Returns
    -------
    region, owner
        As the inputs, renumbered (a region's pieces are consecutive).
    """
    new_region = np.full_like(region, -1)
    new_owner = []
    for r in range(owner.size):
        at = np.flatnonzero(region == r)
        members = np.flatnonzero(labels == owner[r])
        big = np.zeros(0, np.int64)
        if members.size > 1:
            top = np.full(region.size, -1, np.int64)
            group = members if orientation is None else orientation[members]
            kinds, which = np.unique(group, return_inverse=True)
            share = np.zeros((kinds.size, at.size))
            np.add.at(share, which, np.nan_to_num(contrib[np.ix_(members, at)]))
            # one representative component per group names the piece
            first = members[np.unique(which, return_index=True)[1]]
            top[at] = first[np.argmax(share, axis=0)]
            # the connected pieces each of the cluster's components dominates
            piece, _ = _grain_regions(top, nav_shape, labels != owner[r])
            sizes = np.bincount(piece[at])
            big = np.flatnonzero(sizes >= MIN_GRAIN_POSITIONS)
        if big.size < 2:
            new_region[at] = len(new_owner)
            new_owner.append(owner[r])
            continue
        contacts = _region_contacts(piece, nav_shape, sizes.size)
        target = np.full(sizes.size, -1, np.int64)
        target[big] = np.arange(big.size)
        small = list(np.flatnonzero(target < 0))
        while small:  # through touching pieces: the region is connected
            left = len(small)
            for p in list(small):
                mates = np.flatnonzero((target >= 0) & (contacts[p] > 0))
                if mates.size:  # the large piece whose pieces share most border
                    border = np.bincount(
                        target[mates], weights=contacts[p, mates], minlength=big.size
                    )
                    target[p] = np.argmax(border)
                    small.remove(p)
            if len(small) == left:  # not connected after all: the largest piece
                target[small] = np.argmax(sizes[big])
                break
        new_region[at] = len(new_owner) + target[piece[at]]
        new_owner += [int(owner[r])] * big.size
    return new_region, np.asarray(new_owner, dtype=np.int64)


#: Rise of a cluster's summed map above its median over the scan, as a share
#: of that median, from which a region of matrix positions is a grain that
#: the cluster's components carry but no cluster dominates there
#: (:func:`_map_rises`). Inside a grain the glass is thinner, so the glass's
#: own map can only dip there; a matrix component that also fits a grain's
#: pattern (too few components, or one that tiles the glass around the
#: grain) raises the matrix's map several times above its level. Measured
#: (scratch scripts) on the three multislice cases of
#: ``benchmarks/quality_physics.py``, the embedded default and three
#: independent multislice cases (k = true and 30, random_state 0-6, 98
#: fits, and 2x at random_state 0-2, 21 fits): the matrix's regions above
#: both this rise and :data:`MATRIX_RISE_Z` lay inside true grains in every
#: fit where any appeared (peaks 3.5-8.6 times the median): the 3-phase
#: 64 x 64 case at k = 9 (0.886-0.890 -> 0.905-0.920) and the 3.5 mrad
#: independent case at k = 5, random_state 1, whose CuZr2 and B2 grains
#: were matrix (2 of 4 phases, ARI 0.476 -> 0.838, 4 of 4); no fit lower.
MATRIX_RISE = 0.5

#: Robust z (the map's median and 1.4826 MAD over the scan) that a region of
#: :data:`MATRIX_RISE` must also pass: the matrix map's speckle and counting
#: noise (MAD 0.3-0.45 of the median on the multislice cases).
MATRIX_RISE_Z = 5.0

#: Fewest positions of a region of the matrix's rise (connected,
#: 8-connectivity): a single position is a noise spike.
MATRIX_RISE_POSITIONS = 3

#: Share of a particle component's range (median to maximum of its map) that
#: its rise must also reach (:func:`_map_rises`): a second grain of the
#: phase that the component carries weakly beside its main one, below the
#: dominance threshold (:data:`PARTICLE_THRESHOLD`) of its range. The
#: 2-phase case at k = true, random_state 1-5, whose second CuZr2 grain
#: stood at 0.11 (mean) to 0.21 (peak) of its component's range: 0.817-0.821
#: (3 of 4 grains) -> 0.889-0.894 (4 of 4). Over the 98 + 21 fits of
#: :data:`MATRIX_RISE` no fit at 2x or k = 30 changed. With the rises'
#: requests shared with the other regions (an earlier form), 0 instead of
#: 0.1 took the 3.5 mrad case at k = 5, random_state 1, from 0.838 to 0.787.
PARTICLE_RISE = 0.1

#: Fewest positions of a region of a particle component's rise. Such a region
#: is placed by its mean pattern only (the grains' cut or nothing, as a
#: ``weak`` region of :func:`_grain_groups`), whose distances tell phases
#: apart from about 6 positions (:data:`MIN_GRAIN_POSITIONS`). In the
#: earlier form of :data:`PARTICLE_RISE`, at 3 regions of 3-4 glass positions
#: joined a grain of the 3.5 mrad case (k = 5, random_state 2: 0.882 ->
#: 0.868).
PARTICLE_RISE_POSITIONS = 6


def _map_rises(contrib, labels, pos, matrix, nav_shape):
    """Regions of matrix positions where a cluster's map rises well above its level.

    The matrix cluster's summed map (``contrib`` of its members: the tiles of
    the glass) and every particle component's own map (one component that
    holds two grains; summed with its cluster's other members its rise
    would drown in their noise: the 2-phase case at k = true, random_state
    5, 0.820 -> 0.891) are compared with their median over the scan (the
    matrix's level; a component's background). The matrix's positions
    (``pos == matrix``) above both ``(1 + MATRIX_RISE)`` times it and
    :data:`MATRIX_RISE_Z` robust standard deviations, in connected regions
    of at least :data:`MATRIX_RISE_POSITIONS` (the matrix's map) or, for a
    particle component, above :data:`PARTICLE_RISE` of its range too, not
    next to any particle cluster's position (a rim is :func:`_rim_growth`'s)
    and in regions of at least :data:`PARTICLE_RISE_POSITIONS`, are
    candidate grains, classed by their own patterns like the particle
    clusters' regions (:func:`_regroup_by_grain_patterns`); the matrix's
    first, a position in one region only. A candidate whose patterns fail
    the crystal test (:func:`_crystal_evidence`: at high counts particle
    components carry patches of the glass's speckle, whose maps rise as
    over a grain; the 3-phase descan case at 100000 counts, k = 30: 0.849
    without rises, 0.785 with such patches classed) is dropped, and the
    other regions' requests do not depend on the candidates.

    Returns
    -------
    region : ndarray of int64, shape (n_positions,)
        Region of every position, -1 outside, numbered from 0.
    owner : ndarray of int64, shape (n_regions,)
        The cluster whose map (or member's map) rises in each region.
    """
    out = np.full(pos.size, -1, dtype=np.int64)
    owner = []
    structure = np.ones((3,) * len(nav_shape), dtype=bool)
    particles = (pos >= 0) & (pos != matrix)
    near = ndimage.binary_dilation(particles.reshape(nav_shape), structure).ravel()
    taken = pos != matrix
    # the matrix's summed map (its tiles), then every particle component's own
    maps = [(matrix, labels == matrix)] + [
        (int(labels[j]), [j]) for j in np.flatnonzero(labels != matrix)
    ]
    for c, which in maps:
        members = contrib[which]
        level = np.nansum(members, axis=0)
        level[np.all(np.isnan(members), axis=0)] = np.nan
        med, sigma = _median_and_noise(level)
        if not (np.isfinite(med) and med > 0):
            continue
        bar = max(med * (1.0 + MATRIX_RISE), med + MATRIX_RISE_Z * sigma)
        fewest = MATRIX_RISE_POSITIONS
        allowed = ~taken
        if c != matrix:
            bar = max(bar, med + PARTICLE_RISE * (np.nanmax(level) - med))
            fewest = PARTICLE_RISE_POSITIONS
            allowed &= ~near
        with np.errstate(invalid="ignore"):
            high = (level > bar) & allowed
        lab, n = ndimage.label(high.reshape(nav_shape), structure=structure)
        lab = lab.ravel()
        sizes = np.bincount(lab, minlength=n + 1)
        for r in np.flatnonzero(sizes[1:] >= fewest) + 1:
            out[lab == r] = len(owner)
            taken |= lab == r
            owner.append(c)
    return out, np.asarray(owner, dtype=np.int64)


def _grain_groups(
    distance,
    sizes,
    owner,
    touching,
    empty=None,
    weak=None,
    strong=None,
    faint=None,
    contained=None,
    blank=None,
):
    """Group of every grain region by its mean pattern's Bragg-disk geometry.

    The regions of at least :data:`MIN_GRAIN_POSITIONS` positions are cut
    (average linkage of ``distance`` at :data:`GRAIN_DISTANCE`); one that
    shows a crystal and whose disks lie on a larger touching crystal's
    (``contained``, (n, n), :func:`_disk_containment`, at least
    :data:`CONTAINED_DISKS`) joins that crystal's group whatever the cut (a
    piece of its grain: glass and the grain's rim); a group
    none of whose regions shows a crystal's disks is no evidence of a phase.
    A smaller region joins, in this order: the group of a crystal nearest on
    average if within the cut; the group of the crystal's large region it
    shares most border with (``touching``: border positions shared, regions
    x regions; the rim or a patch of that grain) unless its pattern is
    clearly another (beyond twice the cut); a group of its own with the
    small regions of its pattern left over in other clusters (the same cut,
    and touching pieces within it: the pieces of one phase that several
    components share) if they hold :data:`MIN_GRAIN_POSITIONS` positions in
    all; the group of its cluster's large crystal regions, unless its pattern
    is clearly another there too (beyond twice the cut: then the matrix; dots
    of glass that a grain's component map picks up far from the grain, a few
    positions each; six multislice cases, k = true / 2x / 30, random_state
    0-9: fits below ARI 0.85 at k = 2x 3 -> 1, 2-phase case at k = 30,
    random_state 1: 0.832 -> 0.877). A small region whose mean pattern shows
    no Bragg disk (``empty``) skips all but the last: nothing in it tells its
    phase. A region whose patterns show disks no stronger than the glass's
    speckle (``weak``, :func:`_crystal_evidence`) is placed
    by its pattern only (the cut and the nearest group) and otherwise joins
    the matrix. The remaining small regions form one group per cluster,
    marked False in the second return value (no evidence of a phase of
    their own) when those that show disks hold fewer than
    :data:`MIN_GRAIN_POSITIONS` positions in all, or are unlike one another
    (mean pairwise distance beyond twice the cut) with none holding three
    quarters of them: scattered speckle of the glass, not pieces of one
    phase nor one particle. At high counts the glass's speckle forms
    patches that the NMF fits with components of their own (2-phase case
    re-drawn at 15000 counts per unit intensity, k = 30: 13 such regions);
    ``weak`` keeps them out of the phases. Small regions that show a crystal
    far above the glass (``strong``, :data:`STRONG_CRYSTAL_Z`) and hold
    :data:`STRONG_CRYSTAL_POSITIONS` positions in their cluster are
    evidence of a phase as well when their pattern is clearly none of the
    crystals' (beyond twice the cut from each): a grain whose component
    holds only its core. The cluster's other regions join that phase where
    their patterns lie within twice the cut of the core's, else the matrix
    (dots of glass the component picked up). In a cluster that holds no
    crystal and makes no phase, a strong region (of any size) within twice
    the cut of a crystal's group joins the nearest one (a small grain of a
    found phase that the matrix's components carry: the 4-grain descan case
    at k = 5, an 8-position rise at 0.25 from its phase, went to the glass).
    In a cluster that holds a crystal, its strong regions of
    :data:`STRONG_CRYSTAL_POSITIONS` or more beyond
    :data:`STRONG_PHASE_DISTANCE` from every phase found make a phase of
    their own, with the cluster's regions within the cut of them (a grain
    whose component the cut put with another phase's).
    A phase of its own (a group of the large regions' cut, of pieces in
    several clusters, or of a cluster's left-over regions) needs a region
    that is not ``faint`` (:func:`_crystal_evidence` with
    ``speckle_only=False``: disks below :data:`CRYSTAL_Z` even where
    counting noise, not the glass's speckle, spreads the null); faint
    regions still join found phases by the rules above. Multislice cases
    re-drawn at 1500, 15000 and 100000 counts, k = true and 30, random_state
    0-2 (126 fits): true phase count at k = 30 56 -> 59 of 63, no other
    count changed (the B2 / CuZr2 descan case at 1500, random_state 0: a
    20-position glass patch was a phase, 0.825 -> 0.908). Last, phases
    that hold touching pieces of one grain (disks on each other's,
    ``contained``) are made one (:func:`_one_grain_one_phase`; ``distance``
    keeps two phases apart), and a small region that shows
    no crystal at all (``blank``: faint, its upper quartile below
    :data:`CONTACT_Z`) whose mean pattern lies beyond the cut from its
    phase's large regions goes to the matrix: it joined by contact alone.
    """
    empty = np.zeros(sizes.size, bool) if empty is None else np.asarray(empty)
    weak = np.zeros(sizes.size, bool) if weak is None else np.asarray(weak) & ~empty
    strong = (
        np.zeros(sizes.size, bool)
        if strong is None
        else np.asarray(strong) & ~empty & ~weak
    )
    faint = np.zeros(sizes.size, bool) if faint is None else np.asarray(faint)
    reliable = np.flatnonzero(sizes >= MIN_GRAIN_POSITIONS)
    group = np.full(sizes.size, -1, dtype=np.int64)
    if reliable.size > 1:
        sub, _, _ = hierarchical_clustering(
            distance[np.ix_(reliable, reliable)],
            method="average",
            distance_threshold=GRAIN_DISTANCE,
        )
        group[reliable] = sub
    else:
        group[reliable] = 0
    shows = ~empty & ~weak & ~faint  # regions that show a crystal's disks
    if contained is not None and reliable.size > 1:
        # a large region whose disks lie on a touching larger crystal's is a
        # piece of that grain (glass and the grain's rim), whatever the cut
        for a in reliable[np.argsort(sizes[reliable], kind="stable")]:
            on = reliable[
                (touching[a, reliable] > 0)
                & (sizes[reliable] > sizes[a])
                & shows[reliable]
                & (np.nan_to_num(contained[a, reliable]) >= CONTAINED_DISKS)
                & (group[reliable] != group[a])
            ]
            if shows[a] and on.size:
                group[a] = group[on[np.argmax(contained[a, on])]]
        group[reliable] = np.unique(group[reliable], return_inverse=True)[1]
    n_groups = int(group.max()) + 1

    def mean_distance(regions, g):
        """Mean distance of each of ``regions`` to the large regions of group ``g``."""
        return distance[np.ix_(regions, reliable[group[reliable] == g])].mean(axis=1)

    def alike(regions):
        """Whether ``regions`` are pieces of one pattern (or one holds 3/4 of them)."""
        pairs = distance[np.ix_(regions, regions)][np.triu_indices(regions.size, 1)]
        return bool(
            pairs.size == 0
            or pairs.mean() <= 2 * GRAIN_DISTANCE
            or sizes[regions].max() >= 0.75 * sizes[regions].sum()
        )

    # a group of large regions none of which shows a crystal's disks is none
    evidence = [
        bool(shows[reliable[group[reliable] == g]].any()) for g in range(n_groups)
    ]

    def nearest_crystal(r):
        """The crystal group (of the large regions' cut) nearest region ``r`` on
        average and that mean distance (-1 and inf without one)."""
        mean = np.array(
            [
                mean_distance([r], g)[0] if evidence[g] else np.inf
                for g in range(n_groups)
            ]
        )
        if not np.isfinite(mean).any():
            return -1, np.inf
        g = int(np.argmin(mean))
        return g, mean[g]

    small = np.flatnonzero((group < 0) & ~empty)
    for r in small:
        g, d = nearest_crystal(r)
        if d <= GRAIN_DISTANCE:
            group[r] = g
    small = small[(group[small] < 0) & ~weak[small]]
    # the large regions of a crystal (a group with evidence)
    crystal = reliable[np.asarray(evidence, dtype=bool)[group[reliable]]]
    for r in small:
        border = touching[r, crystal]
        if border.size and border.max() > 0:
            g = group[crystal[np.argmax(border)]]
            if mean_distance([r], g)[0] <= 2 * GRAIN_DISTANCE:
                group[r] = g
    # pieces of one pattern in several clusters
    left = small[group[small] < 0]
    if left.size > 1:
        sub, _, _ = hierarchical_clustering(
            distance[np.ix_(left, left)],
            method="average",
            distance_threshold=GRAIN_DISTANCE,
        )
        # touching pieces within the cut are one grain
        near = (touching[np.ix_(left, left)] > 0) & (
            distance[np.ix_(left, left)] <= GRAIN_DISTANCE
        )
        member = np.eye(sub.max() + 1)[sub]  # piece x sub-group
        same = member.T @ near @ member + np.eye(member.shape[1]) > 0
        sub = _connected_groups(same | same.T)[1][sub]
        for g in np.unique(sub):
            members = left[sub == g]
            if (
                members.size > 1
                and sizes[members].sum() >= MIN_GRAIN_POSITIONS
                and not faint[members].all()
            ):
                group[members] = len(evidence)
                evidence.append(True)
    for c in np.unique(owner[(group < 0) & ~weak]):
        held = crystal[owner[crystal] == c]
        left = (owner == c) & (group < 0) & ~weak
        if held.size:
            g = int(np.argmax(np.bincount(group[held], weights=sizes[held])))
            # a crystal far above the glass whose pattern is none of the phases
            # found (a grain whose component the cut put with another phase's):
            # a phase of its own, with the cluster's regions near it
            shown = np.flatnonzero(left & ~empty)
            core = shown[
                strong[shown]
                & ~faint[shown]
                & (sizes[shown] >= STRONG_CRYSTAL_POSITIONS)
            ]
            core = core[
                [
                    all(
                        mean_distance([r], h)[0] > STRONG_PHASE_DISTANCE
                        for h in range(n_groups)
                        if evidence[h]
                    )
                    for r in core
                ]
            ]
            if core.size:
                _, part = _connected_groups(
                    distance[np.ix_(core, core)] <= STRONG_PHASE_DISTANCE
                )
                for m in np.unique(part):
                    members = core[part == m]
                    near = shown[
                        distance[np.ix_(shown, members)].mean(axis=1) <= GRAIN_DISTANCE
                    ]
                    members = np.union1d(members, near[group[near] < 0])
                    group[members] = len(evidence)
                    evidence.append(True)
                    left[members] = False
            # not a region whose disks are clearly another pattern's (as at a border)
            far = np.flatnonzero(left & ~empty)
            left[far[mean_distance(far, g) > 2 * GRAIN_DISTANCE]] = False
        else:
            g = len(evidence)
            shown = np.flatnonzero(left & ~empty)
            phase = (
                sizes[shown].sum() >= MIN_GRAIN_POSITIONS
                and alike(shown)
                and not faint[shown].all()
            )
            core = shown[strong[shown]]
            if not phase and sizes[core].sum() >= STRONG_CRYSTAL_POSITIONS:
                # a crystal's core far above the glass, unlike every crystal
                # found: a phase of its regions and those near them (other
                # dots of the cluster stay the glass's)
                near = shown[
                    distance[np.ix_(shown, core)].mean(axis=1) <= 2 * GRAIN_DISTANCE
                ]
                phase = alike(core) and all(
                    mean_distance(core, h).min() > 2 * GRAIN_DISTANCE
                    for h in range(n_groups)
                    if evidence[h]
                )
                if phase:
                    left[np.setdiff1d(shown, near)] = False
            if not phase:
                # a crystal far above the glass, in a cluster that holds no
                # crystal, within twice the cut of a crystal's group: that
                # crystal's phase, not the glass's
                for r in shown[strong[shown]]:
                    h, d = nearest_crystal(r)
                    if d <= 2 * GRAIN_DISTANCE:
                        group[r] = h
                        left[r] = False
            evidence.append(phase)
        group[left] = g
    evidence = np.asarray(evidence)
    if contained is not None:
        group, evidence = _one_grain_one_phase(
            group, evidence, shows, sizes, touching, contained, distance
        )
    if blank is not None:
        # a small region that shows no crystal, in a phase by contact only
        # (beyond the cut from the phase's large regions): the matrix's
        drop = [
            r
            for r in np.flatnonzero(np.asarray(blank) & (sizes < MIN_GRAIN_POSITIONS))
            if group[r] >= 0
            and evidence[group[r]]
            and (group[reliable] == group[r]).any()
            and mean_distance([r], group[r])[0] > GRAIN_DISTANCE
        ]
        group[drop] = -1
    if (group < 0).any():  # weak regions placed by nothing: the matrix
        group[group < 0] = evidence.size
        evidence = np.append(evidence, False)
    return group, evidence


#: Fewest positions of each of two touching regions whose disks lie on each
#: other's (:data:`CONTAINED_DISKS`) for :func:`_one_grain_one_phase` to
#: make their phases one (the size of the regions of the survey there).
GRAIN_PIECE_POSITIONS = 6


def _one_grain_one_phase(group, evidence, shows, sizes, touching, contained, distance):
    """Phases (groups with ``evidence``) that hold pieces of one grain, made one.

    Two touching regions (``touching``, (n, n) border positions) of
    :data:`GRAIN_PIECE_POSITIONS` or more each that show a crystal
    (``shows``, bool (n,)) and whose disks lie on each other's
    (``contained``, (n, n), :func:`_disk_containment`, the larger of the two
    directions at least :data:`CONTAINED_DISKS`) are pieces of one grain:
    their groups, both evidence of a phase, become the one of more
    positions, the most contained pair first, unless both groups hold large
    regions (:data:`MIN_GRAIN_POSITIONS`) whose patterns lie further apart on
    average than :data:`STRONG_PHASE_DISTANCE` (``distance``, (n, n)): two
    phases, one of which holds a misplaced piece (a B2 grain's 10-position
    piece in the CuZr2 phase, 0.20 from its grain, the phases' large regions
    0.38 apart: an independent case re-drawn at 100000 counts, k = 30,
    random_state 2). Over-complete fits cut a small
    grain into pieces none of which reaches :data:`MIN_GRAIN_POSITIONS`, so
    the cut compares them with another grain of the phase, in another
    orientation, or with a piece of glass and the grain's rim; they then
    make two phases of one grain (two re-made independent multislice cases
    at k = 30, 5 clusters for 4 phases). Over the touching pairs of the
    survey of :data:`CONTAINED_DISKS` that both show a crystal (at most 70 %
    glass each): pieces of one grain 5th percentile 0.93, grains of
    different phases at most 0.50 (7 pairs). Returns ``group`` (int64 (n,),
    groups numbered from 0 in their order, -1 kept; renumbered only where
    groups were made one) and ``evidence`` (bool, one per group).
    """
    group, evidence = group.copy(), np.asarray(evidence, dtype=bool).copy()
    both = np.fmax(contained, contained.T)
    piece = shows & (sizes >= GRAIN_PIECE_POSITIONS)
    merged = False
    while True:
        ok = piece & (group >= 0)
        ok[ok] = evidence[group[ok]]
        pair = (
            ok[:, None]
            & ok[None, :]
            & (touching > 0)
            & (group[:, None] != group[None, :])
            & (np.nan_to_num(both) >= CONTAINED_DISKS)
        )
        for a, b in zip(*np.nonzero(pair)):
            large_a, large_b = (
                np.flatnonzero((group == group[r]) & (sizes >= MIN_GRAIN_POSITIONS))
                for r in (a, b)
            )
            if large_a.size and large_b.size:
                apart = distance[np.ix_(large_a, large_b)].mean()
                pair[a, b] = apart <= STRONG_PHASE_DISTANCE
        if not pair.any():
            break
        a, b = np.unravel_index(np.argmax(np.where(pair, both, -1.0)), pair.shape)
        ga, gb = group[a], group[b]
        if sizes[group == ga].sum() < sizes[group == gb].sum():
            ga, gb = gb, ga
        group[group == gb] = ga
        evidence[gb], merged = False, True
    if not merged:
        return group, evidence
    used = np.unique(group[group >= 0])
    number = np.full(evidence.size, -1, dtype=np.int64)
    number[used] = np.arange(used.size)
    return np.where(group >= 0, number[group], -1), evidence[used]


def _region_contacts(region, nav_shape, n):
    """Border positions each pair of regions shares (8-connectivity), (n, n)."""
    grid = region.reshape(nav_shape)
    out = np.zeros((n, n))
    for r in range(n):
        ring = _border(grid, r)
        out[r] = np.bincount(grid[ring & (grid >= 0)], minlength=n)
    return out


def _same_partition(a, b):
    """Whether two labellings of the positions (-1: none) make the same classes."""
    pairs = np.unique(np.stack([a, b]), axis=1)
    return pairs.shape[1] == np.unique(a).size == np.unique(b).size


def _members_by_positions(
    contrib, pos_labels, n_clusters, labels, texture=None, matrix=None
):
    """Cluster of every component: where most of its map's excess lies.

    The excess is the map over its median plus :data:`NOISE_FLOOR` robust
    standard deviations (:func:`_median_and_noise`): where the component
    stands out, its object. Over the median alone, the noise of a grain
    component's floor summed over the whole matrix outweighed its grain (on
    the 2-phase multislice case at k = 5 two of the four grains' components
    went to the matrix's cluster, whose merged pattern then showed their
    Bragg disks). Components whose maps are a texture (``texture``, bool
    (k,)) join the ``matrix`` cluster: the glass's speckle, even where one
    of them also carries a small grain. Every cluster keeps at least one
    member: an empty one takes the component with the largest share of its
    excess there, from a cluster with other members. Returns None when that
    is impossible.
    """
    median, noise = _median_and_noise(contrib)
    excess = np.nan_to_num(contrib - (median + NOISE_FLOOR * noise)[:, None])
    excess = np.clip(excess, 0.0, None)
    score = np.stack(
        [excess[:, pos_labels == c].sum(axis=1) for c in range(n_clusters)], axis=1
    )
    new = np.where(score.max(axis=1) > 0, np.argmax(score, axis=1), -1)
    if texture is not None and matrix is not None:
        new[texture] = matrix
    # a component with no excess anywhere (flat map) stays with its old mates
    for j in np.flatnonzero(new < 0):
        mates = (labels == labels[j]) & (new >= 0)
        new[j] = np.bincount(new[mates]).argmax() if mates.any() else 0
    share = score / np.maximum(score.sum(axis=1, keepdims=True), 1e-300)
    for c in range(n_clusters):
        if (new == c).any():
            continue
        movable = np.bincount(new, minlength=n_clusters)[new] > 1
        if not movable.any():
            return None
        new[int(np.argmax(np.where(movable, share[:, c], -1.0)))] = c
    return new


#: One-sided robust z-score (median and MAD of the local null) at which a
#: matrix position next to a grain is claimed by it (:func:`_rim_growth`): the
#: thin rim of a sphere, where a fixed fraction of the map's range
#: (:data:`PARTICLE_THRESHOLD`) misses the weak disks its patterns still
#: show. Measured with ``cluster_diffraction()`` after the default
#: decomposition on the three multislice cases of
#: ``benchmarks/quality_physics.py`` and three independent ones (k = true,
#: 2x and 30, random_state 0-2, 54 runs), mean / min position ARI: 0.880 /
#: 0.764 without rim growth, 0.889 / 0.804 with it (up to +0.06 on the 3.5
#: mrad probe case at k = 30), 0.890 / 0.817 at z 3.0, 0.890 / 0.804 with
#: the release of :data:`GRAIN_RELEASE_Z` (shipped); with an earlier
#: filter and k = true and 30 only (24 runs) the shell (4, 6) gave 0.002 and
#: (3, 8) 0 less than (4, 10). Scratch scripts;
#: ``python benchmarks/quality_rules.py`` compares it over 3 seeds (variant
#: ``no rim growth``).
RIM_Z = 3.5

#: Chessboard distances (positions) of a grain's null shell: matrix
#: positions at least the first and at most the second away from the grain
#: and at least the first from every other grain, whose filter responses give
#: the null distribution of :func:`_rim_growth` (the local matrix, its
#: speckle and thickness, rather than a Poisson model: detectors do not count
#: exactly, and many files are not in counts).
RIM_NULL_SHELL = (4, 10)

#: Largest probe FWHM, in scan steps, at which rims grow (:func:`_rim_growth`).
#: With a broader probe a position one step outside a grain holds a large
#: share of the grain's signal, as much as its own thin rim, so neither test
#: tells inside from outside. Measured: the multislice cases (probe FWHM 1.2
#: and 1.7 steps, 1000-3000 counts per position) gain 0.011 mean ARI (see
#: :data:`RIM_Z`); the package's simulator (3 steps, seeds 0-3, k = 7 and 14)
#: loses 0.01-0.11 with z alone, 0.005-0.015 with the response at least half
#: or 0.73 of the grain's edge. The release (:func:`_rim_release`) holds
#: under any probe: it tests a grain's own positions, and with a probe of
#: 2.3-2.4 steps at 8000-12000 counts (two multislice cases, k = 30) the
#: over-complete pieces' maps take the glass one step outside the grains,
#: whose response stays at 0.25 of the interior's or less (the grains'
#: own edge positions mostly 0.14-1.0); releasing there gives k = 30 mean
#: ARI 0.677 -> 0.704 and 0.748 -> 0.817 over random_state 0-2, the
#: embedded default (3-step probe, k = 7 and 30, random_state 0-2) +0.000
#: to +0.004 per fit, the other native fits of
#: ``benchmarks/results/quality_physics*.md`` unchanged (their probes are narrower: the release held there already),
#: and the package's simulator at 20000 counts (3 steps, k = 7 and 30,
#: seeds 0-2) 0.892 / 0.872 -> 0.892 / 0.877 (measured at commit 22608c0).
RIM_MAX_PROBE_FWHM = 2.0

#: Share of the way from the local matrix to the grain's own edge positions
#: that a ring position's response must reach (:func:`_rim_growth`): at high
#: counts the tail of a probe centred outside a grain is significant too.
#: Measured on the package's simulator with a 1.5-step probe (seeds 0-2, k =
#: 7): at 20000 counts per position mean ARI 0.910 without rim growth, 0.868
#: with z alone, 0.930 at 0.25; at 2000 counts 0.796 / 0.800 / 0.800
#: (``python benchmarks/quality_dose.py``, which also re-noises the multislice
#: cases at 15000 and 100000). On the 54 multislice runs of :data:`RIM_Z`
#: 0.889 at 0 and 0.25, 0.887 at 0.4.
RIM_EDGE_FRACTION = 0.25

#: Robust z (against the same null as :data:`RIM_Z`) below which a grain's
#: own position goes back to the matrix (:func:`_rim_release`): its pattern
#: shows none of the grain's disks. Measured (scratch scripts) on the 54
#: multislice runs of :data:`RIM_Z`: mean ARI 0.889 without, 0.890 at 1
#: (0.885 at 2); on three multislice cases re-noised at 15000 and 100000
#: counts per unit intensity at k = 30 (``benchmarks/quality_dose.py``):
#: 0.551 / 0.870 / 0.914 and 0.798 / 0.690 / 0.862 without, 0.578 / 0.895 /
#: 0.932 and 0.802 / 0.730 / 0.883 at 1; at k = true unchanged.
GRAIN_RELEASE_Z = 1.0

#: Share of a grain's interior response (over the null's median) below which
#: an edge position goes back to the matrix (:func:`_rim_release`), where the
#: interior stands :data:`RELEASE_INTERIOR_Z` robust z above the null. At
#: high counts a position one step outside a grain answers its filter far
#: above the noise (the 3-phase B2 / fcc case with 2 px of descan at 20000
#: counts, k = 30: the glass edge of a grain's region at 0.10 of the
#: interior or less, z up to 5; the grain's own edge positions 0.12-1.4).
#: Measured (scratch sweeps; labels of the 126 re-drawn fits of
#: ``benchmarks/quality_dose.py`` and 147 native fits of the eighteen
#: multislice cases of ``benchmarks/results/quality_physics*.md`` and the
#: embedded default, random_state 0-2): at k = 30 over the re-drawn
#: fits mean ARI 0.875 -> 0.881 and 16 -> 13 fits below 0.85; native fits
#: 0.903 / 0.895 -> 0.903 / 0.897 (k = true and 2x / k = 30), four of them
#: changed by more than 0.005. 0.15 gave 0.879 and 0.900 / 0.893; 0.1 without the
#: interior's z condition 0.883 and 0.902 / 0.896, with the small grains at
#: 1500 counts (interiors 8-22 z) losing up to 0.027.
RELEASE_FRACTION = 0.1

#: Robust z of a grain's interior above its null from which
#: :data:`RELEASE_FRACTION` applies: the share is then measured to about
#: 0.04 (the interiors of the multislice grains at their native 1500-3000
#: counts stand 8-22 z above the null; at 15000-20000 counts 20-53).
RELEASE_INTERIOR_Z = 25.0

#: Fewest interior positions whose median :data:`RELEASE_FRACTION` takes.
RELEASE_MIN_INSIDE = 3

#: Share of a grain region's upper decile (its own positions' excess over
#: the null, the grain's core) below which any of its positions goes back to
#: the matrix under a probe broader than :data:`RIM_MAX_PROBE_FWHM` steps
#: (:func:`_rim_release`), where that decile stands :data:`CORE_RELEASE_Z`
#: robust z above the null. With such a probe a position one or two steps
#: outside a grain holds a tenth of its core's disks or more through the
#: probe's tail, and the over-complete pieces' maps take it with the grain;
#: the grains' own positions, thin rims included, mostly stay above (a
#: scratch tally on a 2.3-step case, k = true: glass 0.0-0.2 of the core,
#: the grains' positions 0.1-1.5; ``/work/notes/s21/kt.py``). The core is
#: the strongest region's of the grain (:func:`_rim_release`). Measured on
#: the 66 native fits of ``benchmarks/results/quality_physics*.md`` and four
#: independent cases with probes of 2.2-2.4 steps at 6000-20000 counts
#: (random_state 0-2, k = true and 30; the mixed regions, orientation
#: groups and contrast of this release in place): the broad-probe fits at k = 30
#: 0.801 / 0.862 / 0.875 / 0.914 -> 0.840 / 0.894 / 0.883 / 0.960 (four
#: cases' means), the embedded default (3-step probe) +0.016 to +0.020 per
#: fit, the narrow-probe fits unchanged; 0.15 gave up to 0.045 at k = true.
#: Against the grain's core (26 multislice cases made on one machine, the
#: three of ``../shared/data/abtem_dev``; k = 30 at random_state 0-5, k =
#: true at 0-2): mean ARI 0.8921 / 0.8981 / 0.8985 at k = 30 and 0.9183 /
#: 0.9184 / 0.9134 at k = true for 0.07 / 0.1 / 0.15.
CORE_RELEASE_FRACTION = 0.1

#: Distance outside a grain's edge, in scan steps, whose share of the grain's
#: signal sets the core release's fraction under a probe broader than about
#: 3 steps (:func:`_core_release_fraction`): the share a Gaussian probe of the
#: measured FWHM centred that far outside a straight edge still holds,
#: ``Phi(-CORE_RELEASE_STEPS / sigma)``, where it exceeds
#: :data:`CORE_RELEASE_FRACTION` (from a FWHM of 2.76 steps on). Under a
#: probe of 3.5-4.8 steps a position one step outside a grain holds a
#: quarter to a third of its edge's disks, far above a tenth of its core,
#: and the grains were labelled a step wide all round (multislice cases at
#: 1.4, 1.2 and 1.0 mrad, 2.6-2.7 A steps, k = true and 30, random_state
#: 0-2: mean ARI 0.86 / 0.82 / 0.77 at k = true, 0.81 / 0.76 / 0.75 at k =
#: 30 with the fixed tenth; 0.92 / 0.92 / 0.95 and 0.91 / 0.90 / 0.94 with
#: this rule; scratch sweep ``/work/notes/s22/sweep.py``, logs CM0 / CM2 /
#: CM3). 1.75 steps gave 0.87 / 0.87 / 0.93 and 0.84 / 0.87 / 0.91. At 3.0
#: steps (0.12) the embedded default rose 0.010 per k (k = 7, 14, 30) and
#: the 1.6 mrad multislice case moved -0.016 to +0.005 (k = true, 2x, 30);
#: no other of the 42 cases has a probe above 2.7 steps.
CORE_RELEASE_STEPS = 1.5


def _core_release_fraction(probe_fwhm):
    """The share of a grain's core below which its positions go back to the matrix.

    Under a probe broader than :data:`RIM_MAX_PROBE_FWHM` scan steps
    (:func:`_rim_release`): :data:`CORE_RELEASE_FRACTION`, or the share of a
    straight grain edge's signal that a Gaussian probe of FWHM
    ``probe_fwhm`` centred :data:`CORE_RELEASE_STEPS` steps outside it holds,
    ``Phi(-CORE_RELEASE_STEPS * 2.3548 / probe_fwhm)`` (``Phi`` the standard
    normal distribution), whichever is larger. 0.0 (no core release) for a
    narrower probe or ``probe_fwhm`` None.

    Parameters
    ----------
    probe_fwhm : float or None
        Probe FWHM in scan steps (:func:`~hyperspy_cnmf.constraints.probe_fwhm_from_convergence`
        over the scan step).

    Returns
    -------
    float

    Examples
    --------
    >>> [round(_core_release_fraction(w), 3) for w in (1.7, 2.4, 3.0, 4.0)]
    [0.0, 0.1, 0.12, 0.189]
    """
    if probe_fwhm is None or not probe_fwhm > RIM_MAX_PROBE_FWHM:
        return 0.0
    sigma = float(probe_fwhm) / 2.3548  # FWHM of a Gaussian over its sigma
    edge = 0.5 * math.erfc(CORE_RELEASE_STEPS / sigma / math.sqrt(2.0))
    return max(CORE_RELEASE_FRACTION, edge)


#: Robust z of a grain region's upper decile from which
#: :data:`CORE_RELEASE_FRACTION` applies (10: 0.001-0.007 better than 25 on
#: the same fits).
CORE_RELEASE_Z = 10.0

#: Share of a grain region's upper decile of robust z below which the
#: median of its own positions' z marks a region mostly of glass around a
#: grain (:func:`_mixed_regions`): a component of the matrix's speckle that
#: also took a small grain makes one region of both, whose crystal test
#: passes on the grain and whose label would carry the glass. Measured (the
#: fits of :data:`CORE_RELEASE_FRACTION`): a case with a 2.3-step probe at
#: 8000 counts, k = 30, random_state 2, 0.655 -> 0.811 (a region of 95
#: glass positions and 12 of a small B2 grain, median z 2.5 against a decile
#: near 12); native fits at k = 30 0.8968 -> 0.8976, k < 30 unchanged;
#: 0.45 changed k = true fits by up to -0.025.
MIXED_FRACTION = 0.33

#: Fewest null positions a grain needs for its rim to grow.
RIM_MIN_NULL = 20


def _bragg_filters(patterns, centres, disk_radius, beam_radius, valid=None):
    """Matched filter of each pattern's Bragg disks, (n, qy * qx) float32.

    The pattern's excess over the median of every 1-px ring about its
    centre (its Bragg disks; the amorphous halo and any isotropic background
    gone) correlated with a disk of ``disk_radius`` (the matched filter of
    :func:`bragg_disk_image`, without its peak picking: a continuous function
    of the pattern, so that the lazy and in-memory fits, which differ in the
    last digits, give the same responses; the peak-picked disk image flipped
    a rim position of the 3.5 mrad case at k = 30), zero within 2 px beyond
    the direct beam's edge (the beam's rim moves with any centring error),
    unit sum, then the mean of every ring subtracted: a position's response
    is its excess in those disks over its own ring means. A pattern without
    excess gives a zero filter.

    ``centres``: ``(x, y)`` px, one pair for all patterns, one per pattern
    (n, 2) or several candidates per pattern (n, m, 2); of the candidates,
    the one about which the pattern's excess (beyond the beam's edge) is
    least, the pattern's most isotropic centre, is taken (under descan a
    pattern's halo is centred on its own beam, and about another centre it
    leaves a crescent of excess that the filter would take for disks).
    The zone zeroed about the beam reaches as far beyond its edge as the
    centre taken lies from the first candidate (the scan's mean beam, about
    which the fit left the beam's disk out: its edge would otherwise leave a
    crescent of excess; :func:`_beam_radii`). ``valid`` (bool, (qy, qx),
    optional): the pixels the fit used; the filter is zero elsewhere (the
    direct beam's disk that the fit left out, widened by the beam's measured
    movement: a beam that wanders with the scan changes no response) and its
    ring means are taken over them.
    """
    n_pat, ny, nx = patterns.shape
    centres = np.asarray(centres, dtype=np.float64)
    if centres.ndim < 3:
        centres = np.broadcast_to(centres, (n_pat, 2))[:, None, :]
    valid = (
        np.ones(ny * nx, dtype=bool)
        if valid is None
        else np.asarray(valid, dtype=bool).ravel()
    )
    out = np.zeros((n_pat, ny * nx), dtype=np.float32)
    for i, p in enumerate(patterns):
        img = np.nan_to_num(np.asarray(p, dtype=np.float64))
        best = None
        for centre in _distinct(centres[i]):
            rr, excess, response = _ring_excess(img, centre, disk_radius)
            # the beam's disk as the fit left it out, about the first candidate
            # (the scan's centre): reaching farther from a centre off it
            near_beam = (
                rr <= _beam_radii(centre[None], centres[i][0], beam_radius)[0] + 2.0
                if beam_radius
                else np.zeros_like(rr, bool)
            )
            total = excess[~near_beam].sum()
            if best is None or total < best[0]:
                best = (total, centre, rr, response, near_beam)
        _, centre, rr, response, near_beam = best
        ring = np.round(rr).astype(np.int64).ravel()
        ring_size = np.bincount(ring, weights=valid.astype(np.float64))
        f = np.clip(response, 0.0, None)
        f[near_beam] = 0.0
        f = np.where(valid, f.ravel(), 0.0)
        if f.sum() <= 0:
            continue
        f /= f.sum()
        f -= (np.bincount(ring, weights=f) / np.maximum(ring_size, 1))[ring]
        out[i] = np.where(valid, f, 0.0)
    return out


def _distinct(centres, tol=0.05):
    """The candidate centres (m, 2) without those within ``tol`` px of an earlier one."""
    keep = []
    for c in centres:
        if all(np.max(np.abs(c - k)) >= tol for k in keep):
            keep.append(c)
    return keep


def _beam_deviations(beam_positions):
    """Every position's beam less the scan's mean beam, and which are known.

    ``beam_positions`` (n, 2) ``(x, y)`` px, NaN where unknown. Returns
    ``(offset, ok)``: float64 (n, 2), 0 where unknown, and bool (n,); None
    when no position's beam is known (or ``beam_positions`` is None).
    """
    if beam_positions is None:
        return None
    beam = np.asarray(beam_positions, dtype=np.float64)
    ok = np.all(np.isfinite(beam), axis=1)
    if not ok.any():
        return None
    return np.where(ok[:, None], beam - beam[ok].mean(axis=0), 0.0), ok


def _beam_offsets(region, n_regions, beam_positions):
    """Each region's mean direct-beam offset from the scan's mean, (n, 2) float64 px.

    ``beam_positions`` (n_positions, 2) ``(x, y)`` px, NaN where unknown
    (None: no offsets). A region whose positions hold no finite centre gets
    0. Under descan the beam, and the whole pattern with it, moves with the
    probe: a grain's patterns (and the filter of its disks) are centred on
    its own beam, not on the scan's (:func:`_regroup_by_grain_patterns`).
    """
    out = np.zeros((n_regions, 2))
    known = _beam_deviations(beam_positions)
    if known is None:
        return out
    offset, ok = known
    use = ok & (region >= 0)
    n = np.bincount(region[use], minlength=n_regions).astype(np.float64)
    for j in (0, 1):
        total = np.bincount(region[use], weights=offset[use, j], minlength=n_regions)
        out[:, j] = np.where(n > 0, total / np.maximum(n, 1), 0.0)
    return out


def _model_offsets(weights, loadings, factor_sum, beam_positions):
    """The direct-beam offset of each region's model pattern, (n, 2) float64 px.

    A component's pattern is the mean of the patterns its map holds, so under
    descan its beam lies at the mean of their beams, weighted by its
    contribution ``loadings[i] * factor_sum[i]`` (:func:`_beam_offsets`'s
    offsets from the scan's mean). A region's model pattern, ``weights @
    factors`` (``weights`` (n, k): its mean loadings), sits at the mean of its
    components' offsets weighted by their counts in it. None: zeros.
    """
    known = _beam_deviations(beam_positions)
    if known is None:
        return np.zeros((weights.shape[0], 2))
    offset, ok = known
    contrib = np.clip(np.nan_to_num(loadings), 0.0, None) * ok[None, :]
    total = contrib.sum(axis=1)
    comp = (contrib @ offset) / np.maximum(total, 1e-300)[:, None]  # (k, 2)
    counts = np.clip(np.nan_to_num(weights), 0.0, None) * np.abs(factor_sum)[None, :]
    counts = counts * (total > 0)[None, :]
    norm = counts.sum(axis=1)
    return np.where(
        norm[:, None] > 0, (counts @ comp) / np.maximum(norm, 1e-300)[:, None], 0.0
    )


def _beam_radii(centres, reference, beam_radius):
    """The direct beam's radius about each centre, widened by its distance from ``reference``.

    The fit left the beam's disk out about ``reference`` (the scan's mean
    beam; the regions' patterns are 0 there); about a centre ``d`` px away
    that zero disk reaches ``d`` px farther on one side, and its edge would
    read as an excess (a disk) to :func:`bragg_disk_image`. float64, (n,).
    """
    d = np.hypot(*(np.asarray(centres, float) - np.asarray(reference, float)).T)
    return (beam_radius or 0.0) + np.where(beam_radius, d, 0.0)


def _disk_similarity(disks, centres, beam_radius, grid, kwargs, reference):
    """Pairwise similarity of disk images, each polar-transformed about its own centre.

    ``disks`` (n, qy, qx); ``centres`` (n, 2) ``(x, y)`` px, each image's
    direct beam. Every image is sampled on the polar grid that ``grid``
    gives about ``reference`` (the scan's mean beam: the same radii and
    azimuths; samples that fall off the detector are NaN and do not count),
    about its own centre: under descan a region's patterns sit on its own
    beam, and sampling them there costs no interpolation beyond the polar
    transform's own (shifting the patterns first blurred some by up to half
    a pixel and moved two pieces of one grain 0.24 -> 0.27 apart). With one
    centre for all this is :func:`polar_similarity`'s result. Returns the
    :class:`~hyperspy_cnmf.clustering.SimilarityResult`.
    """
    centres = np.asarray(centres, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if np.all(centres == reference[None, :]):
        return polar_similarity(
            disks, reference, direct_beam_radius=beam_radius, **grid, **kwargs
        )[2]
    _, radii, theta = polar_transform(
        disks[:1], centre=reference, direct_beam_radius=beam_radius, **grid
    )
    fixed = dict(
        grid,
        radial_range=(float(radii[0]), float(radii[-1])),
        n_theta=int(theta.size),
        delta_theta=None,
    )
    polar = np.concatenate(
        [
            polar_transform(d[None], centre=c, direct_beam_radius=beam_radius, **fixed)[
                0
            ]
            for d, c in zip(disks, centres)
        ]
    )
    return rotational_similarity(polar, radii=radii, **kwargs)


RING, NULL, EDGE, INSIDE, FAR = 0, 1, 2, 3, 4  # roles of the requested positions

#: Weighted share of a grain region's disks that lie on the disks of a touching
#: region (:func:`_disk_containment`, unrotated, each about its own beam) from
#: which the region is a piece of that region's grain (:func:`_grain_groups`):
#: a region of glass and a grain's rim holds part of the grain's disks and
#: some of the glass's speckle; its mean pattern may lie beyond the cut from the
#: grain's (0.35 at k = 30 on an independent case with 1.2 px of descan: a phase
#: of its own). Over the touching pairs of regions of 6 positions or more of the
#: cached fits of 32 multislice cases (k = true and 30, random_state 0-5; the
#: touched region at least 20 positions and at most 30 % glass;
#: ``/work/notes/s23/survey5.py``): pieces of one grain median 0.94, 25th
#: percentile 0.72; grains of different phases at most 0.57.
CONTAINED_DISKS = 0.8


def _disk_peaks_of_image(img):
    """Spot centres ((m, 2), x, y px) and heights of a disk image (:func:`bragg_disk_image`)."""
    peak = (img == ndimage.maximum_filter(img, size=3)) & (img > 0.05 * img.max())
    y, x = np.nonzero(peak)
    return np.c_[x, y].astype(np.float64), img[y, x]


def _disk_containment(disks, centres, disk_radius, touching):
    """Share of each region's disks that lie on a touching region's, float64 (n, n).

    ``disks`` (n, qy, qx): disk images (:func:`bragg_disk_image`), each
    about ``centres[i]`` ((n, 2), x, y px). Entry ``(a, b)``: the heights of
    ``a``'s spots within ``max(1.5, disk_radius)`` px of one of ``b``'s
    (both relative to their own centres, unrotated: pieces of one grain
    share its orientation) over all of ``a``'s heights; computed where
    ``touching[a, b] > 0``, NaN elsewhere and where either image is empty.
    See :data:`CONTAINED_DISKS`.
    """
    n = disks.shape[0]
    out = np.full((n, n), np.nan)
    tol = max(1.5, disk_radius)
    spots = [None] * n
    for a, b in zip(*np.nonzero(touching > 0)):
        if a == b:
            continue
        for r in (a, b):
            if spots[r] is None and disks[r].max() > 0:
                g, w = _disk_peaks_of_image(disks[r])
                spots[r] = (g - np.asarray(centres[r], dtype=np.float64), w)
        if spots[a] is None or spots[b] is None:
            continue
        (ga, wa), (gb, _) = spots[a], spots[b]
        near = np.min(
            np.hypot(*(ga[:, None, :] - gb[None, :, :]).transpose(2, 0, 1)), axis=1
        )
        out[a, b] = wa[near <= tol].sum() / wa.sum()
    return out


#: Matrix positions far from every grain (:data:`RIM_NULL_SHELL`'s inner
#: distance) that answer every grain's filter: the null of
#: :func:`_crystal_evidence` for a grain without a null shell of its own.
FAR_NULL_POSITIONS = 64

#: Fewest scan steps from every region at which matrix positions still make
#: the far null (:func:`_rim_requests`) where fewer than :data:`RIM_MIN_NULL`
#: lie :data:`RIM_NULL_SHELL`'s inner distance away: at k = 30 under descan
#: the glass's components cut the matrix into many regions, none had a null,
#: no region was tested, and every patch of glass made a phase (an
#: independent case with 1.5 px of descan, B2 and CuZr2, random_state 1:
#: 19 matrix positions 4 steps from every region, 8 clusters for 3 phases,
#: ARI 0.26; with the positions 2 steps away, 3 clusters, 0.83). Never next
#: to a region (1): its rim.
FAR_NULL_MIN_GAP = 2


def _rim_requests(region, claimable, nav_shape):
    """The positions whose filter responses the rim growth needs.

    For every region: its ring (the ``claimable`` positions next to it and
    the positions of other regions next to it, 8-connectivity: those of a
    region that ends in the matrix can join it too), its null shell
    (:data:`RIM_NULL_SHELL`), its edge (its
    own positions next to another), its other own positions and up to
    :data:`FAR_NULL_POSITIONS` claimable positions far from every region
    (:data:`RIM_NULL_SHELL`'s inner distance; where fewer than
    :data:`RIM_MIN_NULL` lie that far, the farthest there are, down to
    :data:`FAR_NULL_MIN_GAP`), evenly spread over the scan rows (first
    navigation axis) within :data:`RIM_NULL_SHELL`'s outer distance of a
    region. Returns ``at``
    (flat positions), ``which`` (their region) and ``role`` (``RING``, ``NULL``, ``EDGE``, ``INSIDE``
    or ``FAR``), int64 / int64 / int8 arrays of one length, each position
    once per region and role; a region with nothing next to it (neither a
    claimable position nor another region's) has no ring and no null shell,
    and one next to other regions only has both (its null shell the matrix
    beyond them).
    """
    grid = region.reshape(nav_shape)
    claim = claimable.reshape(nav_shape)
    near, far = RIM_NULL_SHELL
    d_any = ndimage.distance_transform_cdt(grid < 0, metric="chessboard")
    flat = np.arange(region.size).reshape(nav_shape)
    # far from every region, in the scan rows the grains' requests read anyway
    rows = np.any((grid >= 0).reshape(grid.shape[0], -1), axis=1)
    rows = ndimage.binary_dilation(rows, iterations=far) if rows.any() else rows
    rows = rows.reshape((-1,) + (1,) * (grid.ndim - 1))
    # where the regions leave fewer than a null's worth that far (the matrix
    # cut into many regions), the farthest there are, down to FAR_NULL_MIN_GAP
    for gap in range(near, min(FAR_NULL_MIN_GAP, near) - 1, -1):
        pool = np.flatnonzero((claim & (d_any >= gap) & rows).ravel())
        if pool.size >= RIM_MIN_NULL:
            break
    if pool.size > FAR_NULL_POSITIONS:
        pool = pool[np.linspace(0, pool.size - 1, FAR_NULL_POSITIONS).astype(np.int64)]
    at, which, role = [], [], []
    for r, box in enumerate(ndimage.find_objects(grid + 1)):
        if box is None:
            continue
        box = tuple(
            slice(max(b.start - far, 0), min(b.stop + far, size))
            for b, size in zip(box, nav_shape)
        )
        own = grid[box] == r
        d_own = ndimage.distance_transform_cdt(~own, metric="chessboard")
        ring = (d_own == 1) & (claim[box] | ((grid[box] >= 0) & ~own))
        edge = own & (ndimage.distance_transform_cdt(own, metric="chessboard") == 1)
        parts = [(edge, EDGE), (own & ~edge, INSIDE)]
        if ring.any():
            parts += [
                (ring, RING),
                ((d_own <= far) & (d_any[box] >= near) & claim[box], NULL),
            ]
        for sel, kind in parts:
            idx = flat[box][sel]
            at.append(idx)
            which.append(np.full(idx.size, r, dtype=np.int64))
            role.append(np.full(idx.size, kind, dtype=np.int8))
        at.append(pool)
        which.append(np.full(pool.size, r, dtype=np.int64))
        role.append(np.full(pool.size, FAR, dtype=np.int8))
    if not at:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8)
    return np.concatenate(at), np.concatenate(which), np.concatenate(role)


def _nulls(which, role, response, n_regions, kind=NULL):
    """``(region, median, 1.4826 MAD)`` of every region's null responses.

    Only for regions with at least :data:`RIM_MIN_NULL` null positions (of
    role ``kind``) and a spread (MAD > 0).
    """
    # one sort by region, not a scan of every request per region (several
    # callers ask, and k = 30 at scale makes thousands of regions)
    sel = role == kind
    order = np.argsort(which[sel], kind="stable")
    bounds = np.searchsorted(which[sel][order], np.arange(n_regions + 1))
    grouped = response[sel][order]
    for r in range(n_regions):
        ref = grouped[bounds[r] : bounds[r + 1]]
        if ref.size < RIM_MIN_NULL:
            continue
        med = np.median(ref)
        mad = 1.4826 * np.median(np.abs(ref - med))
        if mad > 0:
            yield r, med, mad


#: Upper-quartile robust z of a grain's own responses (its positions'
#: response to its Bragg-disk filter against the local matrix, as in
#: :func:`_rim_growth`) that a crystal's disks reach where the glass's
#: speckle, not counting noise, spreads the matrix's responses
#: (:func:`_crystal_evidence`), for a region of :data:`MIN_GRAIN_POSITIONS`
#: positions or fewer; ``CRYSTAL_Z * sqrt(20 / n)`` for ``n`` > 20, not below
#: :data:`CRYSTAL_FLOOR_Z`. Measured
#: on the multislice cases re-drawn at 15000 and 100000 counts, k = 30:
#: patches of glass reach 4-6 at 20-40 positions and up to 8 below 10,
#: regions of a crystal 8-45; grains weakened to 30 % of their crystal
#: (a reviewer's test, 55 positions) 6.9-7.8, kept by the size scaling.
CRYSTAL_Z = 8.0

#: The lowest the size-scaled level of :data:`CRYSTAL_Z` goes (reached at 36
#: positions): a patch of glass that an over-complete fit selects keeps its
#: speckle steadier over it than ``1 / sqrt(n)``. An 82-position glass region
#: (10 positions on a grain's rim) stood 4.5 z above its null, passed the
#: scaled level (3.95) and made a phase of its own (a re-made independent
#: case, five grains of three phases with 1.2 px of descan, k = 30,
#: random_state 2: 6 clusters for 4 phases, ARI 0.75; 5 and 0.83 with the
#: floor); so did a 55-position patch at 5.5 (session 21). Over the regions
#: of 36 positions or more of 156 fits (23 re-made multislice cases and the
#: three of ``../shared/data/abtem_dev``, k = true and 30, random_state 0-2;
#: ``/work/notes/s22/survey.py``): those at least 80 % glass at most 4.8,
#: those at most 30 % glass at least 9.4, mixed ones at least 7.7; a grain
#: weakened to 30 % of its crystal (55 positions) 6.9-7.8.
CRYSTAL_FLOOR_Z = 6.0

#: Upper quartile of robust z (:func:`_crystal_scores`) below which a faint
#: small region shows no crystal at all: whose mean pattern lies beyond the
#: cut from the large regions of the phase it joined (it joined by touching
#: the grain, or as its cluster's leftover) goes to the matrix instead
#: (:func:`_grain_groups`); its positions can still join the grain one by one
#: (:func:`_rim_growth`). A patch of glass beside a grain (the 2-phase case
#: of ``../shared/data/abtem_dev`` at k = 30, random_state 3: 14 glass
#: positions at 3.7 z, 0.48 from the grain's regions) took the grain's
#: phase. Over the 432 fits of k = true and 30, random_state 0-5, of the 33
#: multislice cases made on this project's machines and the three of
#: ``abtem_dev`` (cached decompositions, ``/work/notes/s22/sweep.py``) it
#: moves seven regions of 4-14 positions in four fits, 57-100 % glass (k =
#: 30: 0.833 -> 0.892 on that case, +0.010 to +0.058 on the three others; no
#: fit lower, nor at k = 2x, random_state 0-2); the same rule without the
#: level moved grains' pieces at 7-18 z too (as many fits lower as higher).
CONTACT_Z = 6.0

#: Variance of the matrix's responses over their counting (Poisson) variance
#: from which the glass's speckle dominates (:func:`_crystal_evidence`).
SPECKLE_RATIO = 2.0


#: Upper-quartile robust z of a region's own responses (as in
#: :func:`_crystal_evidence`, counting noise only: not where the glass's
#: speckle dominates) from which a small region is a crystal's core
#: (:func:`_grain_groups`). Measured over the eight multislice cases (three of
#: ``../shared/data/abtem_dev``, five independent), k = 30, random_state
#: 0-2, at their native counts and re-drawn at 1500 and 15000 per unit
#: intensity: glass regions reach 9.5 (12.4 where half the region lies on a
#: grain), the 12-13 position CuZr2 cores of the 3.0 mrad case at 1500
#: counts 16.8-17.4.
STRONG_CRYSTAL_Z = 12.0

#: Disk-image pseudo-distance (:func:`_grain_groups`) beyond which a strong
#: crystal region of :data:`STRONG_CRYSTAL_POSITIONS` positions or more, in a
#: cluster that holds another phase's crystal, is none of the phases found
#: and makes one of its own (it joined the cluster's phase up to twice
#: :data:`GRAIN_DISTANCE`). A fresh independent case (five grains of 9-11 A
#: radius, three phases, 3.0 mrad, 2000 counts) at k = true: the cut put the
#: CuZr2 grain's component with the two B2 grains', and its 11-position
#: region, 0.46 from the B2 grain's, joined them (3 of 4 phases, ARI 0.81
#: in three of six fits). Over the strong regions of 10-19 positions of the
#: cached fits of 32 multislice cases (k = true and 30, random_state 0-5,
#: regions at least 70 % one phase; ``/work/notes/s23/survey4.py``): to the
#: large regions of their own phase at most 0.29, to another phase's at
#: least 0.40.
STRONG_PHASE_DISTANCE = 0.35

#: Positions a cluster's strong crystal regions need to make a phase of
#: their own (:func:`_grain_groups`): from 10 positions the pseudo-distance
#: of two regions of one phase stays within 0.26 (:data:`MIN_GRAIN_POSITIONS`),
#: well inside the twice-the-cut a new phase must keep from every other.
STRONG_CRYSTAL_POSITIONS = 10


def _own_z(at, which, role, response, n_regions):
    """Every region's own positions and their robust z against its null.

    Yields ``(region, z, mad)`` for the regions with own positions (EDGE
    and INSIDE) and a null: the matrix near the grain (NULL) where it has
    one, else the matrix far from every grain (FAR).
    """
    for r, mine, med, mad in _own_nulls(which, role, response, n_regions):
        if mine.size:
            yield r, (response[mine] - med) / mad, mad


#: Contrast of a grain region's disks in its mean pattern
#: (:func:`_disk_contrast`) that a region of :data:`MIN_GRAIN_POSITIONS`
#: positions whose upper quartile stays below :data:`CRYSTAL_Z` (unscaled)
#: needs to be evidence of a phase of its own (else ``faint``,
#: :func:`_grain_groups`); ``MIN_DISK_CONTRAST * sqrt(20 / n)`` for ``n`` >
#: 20 (the speckle of a patch of glass averages down over it, a crystal's
#: disks do not). A 55-position patch of glass whose speckle, steady over it,
#: stood 5.5 z above its null at 6000 counts passed the size-scaled
#: :func:`_crystal_level` (4.8) and made a phase of its own (an independent
#: case with a 2.2-step probe, k = 30, random_state 2: 6 clusters for 4
#: phases); its contrast was 0.95. Measured (``/work/notes/s21/phasestat.py``)
#: over the regions of the 66 native fits of
#: ``benchmarks/results/quality_physics*.md``, eight further multislice cases
#: and the three of ``../shared/data/abtem_dev`` re-drawn at 1500 and 100000
#: counts (k = true and 30, random_state 0-2): regions of 20 positions or
#: more that are at least 90 % glass all below the level (``contrast *
#: sqrt(n / 20)`` at most 2.11) and below 5.7 in upper-quartile z; those at
#: most 30 % glass none below it (at least 2.92). The package's simulator
#: draws grains of lower contrast (0.7-1.7, as many synthetic scenes of the
#: tests), far above the noise (upper quartile z 11-34): the z condition
#: keeps them.
MIN_DISK_CONTRAST = 2.3


def _disk_contrast(at, which, role, response, filters, patterns):
    """The contrast of each region's Bragg disks in its mean pattern, float64 (n,).

    ``(f . p - m) / (f- . p)``: the mean pattern ``p``'s response to the
    region's filter ``f`` (:func:`_bragg_filters`: the disks' excess over
    their rings' means, unit weight on the disks) less its null's median
    ``m`` (:func:`_own_nulls`; 0 without a null), over the pattern under
    the filter's negative part ``f-`` (the rings' means, of the same total
    weight): about the disks' mean intensity over their rings' mean, less
    one. A speckled patch of glass gives 0.2-3 (its speckle averaging down
    with its size), crystals 2.4-36 (:data:`MIN_DISK_CONTRAST`); the ratio
    holds at any dose. NaN where the filter is zero.
    """
    n = patterns.shape[0]
    med = np.zeros(n)
    for r, _, m, _ in _own_nulls(which, role, response, n):
        med[r] = m
    f = filters.astype(np.float64)
    p = np.clip(np.nan_to_num(patterns.reshape(n, -1)), 0.0, None)
    base = np.einsum("ij,ij->i", np.clip(-f, 0.0, None), p)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(base > 0, (np.einsum("ij,ij->i", f, p) - med) / base, np.nan)


def _contrast_level(count):
    """The disk contrast a region of ``count`` positions must reach (:data:`MIN_DISK_CONTRAST`)."""
    return MIN_DISK_CONTRAST * np.sqrt(
        MIN_GRAIN_POSITIONS / np.maximum(count, MIN_GRAIN_POSITIONS)
    )


def _crystal_level(count):
    """The robust z a region of ``count`` positions must reach (:func:`_crystal_evidence`)."""
    # a patch's self-selected speckle fades as 1 / sqrt(its size), down to a floor
    return np.maximum(
        CRYSTAL_Z
        * np.sqrt(MIN_GRAIN_POSITIONS / np.maximum(count, MIN_GRAIN_POSITIONS)),
        CRYSTAL_FLOOR_Z,
    )


def _crystal_scores(at, which, role, response, filters, patterns):
    """Each grain region's crystal score against its null (:func:`_crystal_evidence`).

    Returns the upper quartile of the robust z of its own positions'
    responses (float64, NaN without a null or own positions), whether its
    null's spread is the glass's speckle (bool) and its count of own
    positions (int64), each of shape ``(n_regions,)``.
    """
    n = patterns.shape[0]
    q75 = np.full(n, np.nan)
    speckle = np.zeros(n, dtype=bool)
    count = np.zeros(n, dtype=np.int64)
    for r, z, mad in _own_z(at, which, role, response, n):
        f = filters[r].astype(np.float64)
        counting = (f * f) @ np.clip(patterns[r].ravel(), 0.0, None)
        speckle[r] = mad * mad > SPECKLE_RATIO * counting
        q75[r] = np.percentile(z, 75)
        count[r] = z.size
    return q75, speckle, count


def _on_crystal_borders(at, which, role, region, nav_shape, crystal, unlike):
    """Own positions touching a larger crystal unlike the region (bool, like ``at``).

    A region's own positions (EDGE and INSIDE) with, among their neighbours
    (the 3 x 3 block of a 2-D scan, 3^d in ``d`` navigation dimensions), a
    position of a larger region of ``crystal``
    (bool, (n,): regions whose own test found a crystal) whose pattern is
    ``unlike`` the region's (bool, (n, n)): their disks may be that
    crystal's rim or the tail of its probe rather than the region's own.
    The pieces of one grain that several components share are alike and
    lend each other nothing.
    """
    out = np.zeros(at.size, dtype=bool)
    grid = region.reshape(nav_shape)
    sizes = np.bincount(region[region >= 0], minlength=crystal.size)
    footprint = np.ones((3,) * grid.ndim, dtype=bool)
    own = (role == EDGE) | (role == INSIDE)
    for r in np.unique(which[own]):
        lenders = np.flatnonzero(crystal & (sizes > sizes[r]) & unlike[r])
        others = np.isin(grid, lenders)
        if not others.any():
            continue
        near = ndimage.binary_dilation(others, structure=footprint).ravel()
        mine = own & (which == r)
        out[mine] = near[at[mine]]
    return out


def _borrowed_evidence(
    at, which, role, response, region, nav_shape, tested, count, unlike
):
    """Regions whose crystal evidence lies on a larger, unlike crystal's border.

    The upper quartile of :func:`_crystal_scores` is taken again (robust z
    of :func:`_own_z`) without the own positions that touch
    a larger region of ``tested`` (bool, (n,): regions whose test found a
    crystal) whose pattern is ``unlike`` theirs (bool, (n, n);
    :func:`_on_crystal_borders`): a patch of glass beside a grain that holds
    a few of the grain's rim positions passes on them (the B2 / fcc case
    with 2 px of descan at 20000 counts, k = 30: an 11-position patch with 3
    of the fcc grain's positions, q75 18.6, made a phase). ``count``: the
    own positions each region's test counted (:func:`_crystal_scores`).
    Returns two bool arrays of shape (n,): the regions whose test fails
    without those positions, or that have none left (their evidence is
    borrowed: no phase of their own, ``faint``), and those whose upper
    quartile without them stays below :data:`STRONG_CRYSTAL_Z` (not
    ``strong``). Regions without such positions keep their results.
    """
    n = count.size
    border = _on_crystal_borders(at, which, role, region, nav_shape, tested, unlike)
    if not border.any():
        return np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    q75 = np.full(n, np.nan)
    own = np.zeros(n, dtype=np.int64)
    rest = ~border
    for r, z, _ in _own_z(at[rest], which[rest], role[rest], response[rest], n):
        q75[r], own[r] = np.percentile(z, 75), z.size
    lost = (count > 0) & (own == 0)  # all its positions on borders
    with np.errstate(invalid="ignore"):
        return lost | (q75 < _crystal_level(own)), lost | (q75 < STRONG_CRYSTAL_Z)


def _crystal_evidence(
    at, which, role, response, filters, patterns, scores=None, speckle_only=True
):
    """Whether each grain region's own patterns show a crystal's disks (bool, (n,)).

    At high counts the glass's speckle is significant and the NMF spends
    components on patches of it, which :func:`_grain_regions` returns as
    grains whose mean patterns show "disks". The counting variance assumes
    data in counts, as the decomposition's default Poisson weighting does:
    data scaled down by a large factor leave the test off (speckle patches
    count as grains), scaled up it is on at any dose (a crystal whose disks
    stay below :data:`CRYSTAL_Z` then joins a phase by its pattern only). A
    region's disks are a crystal's unless the spread of its null's
    responses (:func:`_nulls`, ``1.4826 MAD``) is speckle's, its square
    beyond :data:`SPECKLE_RATIO` times the counting variance of the response (``sum(filter**2 *
    mean pattern)``, Poisson), and the upper quartile of its own positions'
    responses (EDGE and INSIDE) stays below :data:`CRYSTAL_Z` of that
    spread above the null's median (times ``sqrt(20 / n)`` for a region of
    ``n`` > 20 positions, not below :data:`CRYSTAL_FLOOR_Z`: the speckle a
    component selects in a patch averages down over it, a crystal's disks do
    not). Regions without a
    null are not tested (True). ``scores``: :func:`_crystal_scores` of the
    same arguments, when the caller has them already. With
    ``speckle_only=False`` the upper quartile must reach the level whatever
    the null's spread (counting noise too): a patch of glass that an
    over-complete fit selects from its counting noise reaches z 5 at 20
    positions (the 2-phase B2 / CuZr2 descan case re-drawn at 1500 counts,
    k = 30), the grains' regions of that fit 15-24; :func:`_grain_groups`
    asks it of a phase of its own (``faint``).
    """
    if scores is None:
        scores = _crystal_scores(at, which, role, response, filters, patterns)
    q75, speckle, count = scores
    level = _crystal_level(count)
    if not speckle_only:
        return np.isnan(q75) | (q75 >= level)
    return ~speckle | (q75 >= level)


def _faint(at, which, role, response, filters, patterns, scores, closure=None):
    """Regions that are no evidence of a phase of their own, bool (n,).

    Those whose disks stay within the counting noise
    (:func:`_crystal_evidence` with ``speckle_only=False``), those whose
    upper quartile of robust z stays below :data:`CRYSTAL_Z` while their
    disks' contrast (:func:`_disk_contrast`) stays below
    :func:`_contrast_level` (a patch of glass whose speckle is steady over
    it passes the size-scaled z level), and those whose disks close as a
    lattice less than :data:`LATTICE_CLOSURE` (``closure``, float (n,),
    :func:`_lattice_closure`), or cannot be judged as one (NaN: fewer than
    two disks, or a lone Friedel pair whose difference falls off the
    detector), while their upper quartile stays below
    :data:`STRONG_CRYSTAL_Z` (a patch of glass whose speckle stands 8-10 z
    above its null with a contrast of 2.2-2.9 over 20-35 positions, as the
    weakest crystals: four re-made independent cases at k = 30 made a phase
    of such a patch; a glass whose own mean pattern holds a Friedel pair on
    its halo shows that pair in every patch, and two such patches made a
    phase in a 300 kV case at 15000 counts). Regions without a null are not
    tested. ``scores``: :func:`_crystal_scores` of the same arguments.
    """
    q75, _, count = scores
    faint = ~_crystal_evidence(
        at, which, role, response, filters, patterns, scores, speckle_only=False
    )
    with np.errstate(invalid="ignore"):
        low = (q75 < CRYSTAL_Z) & (
            _disk_contrast(at, which, role, response, filters, patterns)
            < _contrast_level(count)
        )
        if closure is not None:  # not judged (NaN): no lattice shown either
            low |= (q75 < STRONG_CRYSTAL_Z) & ~(closure >= LATTICE_CLOSURE)
    return faint | low


def _rim_release(
    at, which, role, response, n_regions, placed=None, core_fraction=0.0, grain_of=None
):
    """A grain's own positions whose patterns do not show its disks (int64 array).

    The mirror of :func:`_rim_growth`: a position of the grain whose
    response to the grain's filter stays below :data:`GRAIN_RELEASE_Z`
    robust standard deviations above the null's median carries none of the
    grain's diffraction; it goes back to the matrix (the glass that a
    component's broad map took with the grain, measured at high counts).
    So does an edge position whose excess over the null stays below
    :data:`RELEASE_FRACTION` of the grain's interior (the median of its
    INSIDE positions), where that interior stands
    :data:`RELEASE_INTERIOR_Z` robust standard deviations or more above the
    null and holds :data:`RELEASE_MIN_INSIDE` positions or more: the tail of
    a probe centred outside the grain, significant at high counts, as
    :data:`RIM_EDGE_FRACTION` keeps it from the rim growth. With
    ``core_fraction`` (:func:`_core_release_fraction`: nonzero under a probe
    broader than :data:`RIM_MAX_PROBE_FWHM` steps) any own position whose
    excess stays below that share of its grain's core goes back too: such a
    probe's tail carries the grain's disks a step or two into the glass. The
    core is the largest upper decile of excess among the regions of the
    grain (``grain_of``, int (n_regions,): the grain of each region, touching
    regions of one phase; None: each region
    its own) whose decile stands :data:`CORE_RELEASE_Z` robust standard
    deviations above its null: at k = 30 one grain's positions part among
    several components, and a region mostly of the glass about the grain,
    measured against its own decile (the tails themselves), kept them all
    (a 2.3-step probe at 50000 counts, random_state 2: 20 glass positions
    1-3 steps from a CuZr2 grain, ARI 0.833; 0.941 against its grain's
    core).

    ``placed`` (bool, ``(n_regions,)``, optional): regions without a crystal
    of their own (``weak``, :func:`_crystal_evidence`) or mostly of glass
    (:func:`_mixed_regions`) that carry a phase's label. Each of their
    positions needs the evidence a
    matrix position needs to join a grain: it stays where its response
    stands :data:`RIM_Z` robust standard deviations above the null, else it
    goes back to the matrix (a component that took a few of a grain's
    positions with glass beside it, at k = 30 and high counts).

    A region without a null shell of its own (other regions all around it,
    frequent at k = 30) is measured against its :data:`FAR` null, the
    matrix positions far from every grain, as :func:`_crystal_evidence`
    does: with a probe of 2.3 steps at 8000 counts, k = 30, a CuZr2 grain's
    region that held 38 glass positions had none and released nothing
    (mean ARI over random_state 0-2 0.704 -> 0.741; the simulator's default
    case with 2 px of descan at 20000 counts 0.827 -> 0.844; the 66 native
    fits of ``benchmarks/results/quality_physics*.md`` unchanged).
    """
    out = []
    nulls = list(_own_nulls(which, role, response, n_regions))
    top = np.full(n_regions, -np.inf)
    for r, mine, med, mad in nulls:
        if mine.size:
            core = np.percentile(response[mine] - med, 90)
            if core >= CORE_RELEASE_Z * mad:
                top[r] = core
    if grain_of is not None:
        best = np.full(int(grain_of.max()) + 1, -np.inf)
        np.maximum.at(best, grain_of, top)
        top = np.where(np.isfinite(top), best[grain_of], top)
    for r, mine, med, mad in nulls:
        if not mine.size:
            continue
        excess = response[mine] - med
        keep_z = RIM_Z if placed is not None and placed[r] else GRAIN_RELEASE_Z
        release = excess / mad < keep_z
        inside = mine[role[mine] == INSIDE]
        if inside.size >= RELEASE_MIN_INSIDE:
            step = np.median(response[inside]) - med
            if step >= RELEASE_INTERIOR_Z * mad:
                release |= (role[mine] == EDGE) & (excess < RELEASE_FRACTION * step)
        if core_fraction and np.isfinite(top[r]):
            release |= excess < core_fraction * top[r]
        out.append(at[mine][release])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _own_nulls(which, role, response, n_regions):
    """Every region's own positions and the null they are measured against.

    Yields ``(region, mine, median, mad)``: ``mine`` (int64, ascending) the
    indices of the region's EDGE and INSIDE requests, and its null's median
    and 1.4826 MAD, for the regions with a null: their shell (:data:`NULL`)
    where they have one, else the matrix far from every grain (:data:`FAR`).
    """
    # the requests grouped by region with one sort, as in _nulls (five callers)
    own = np.flatnonzero((role == EDGE) | (role == INSIDE))
    own = own[np.argsort(which[own], kind="stable")]
    bounds = np.searchsorted(which[own], np.arange(n_regions + 1))
    shell = list(_nulls(which, role, response, n_regions))
    have = {r for r, _, _ in shell}
    far = [
        n
        for n in _nulls(which, role, response, n_regions, kind=FAR)
        if n[0] not in have
    ]
    for r, med, mad in shell + far:
        yield r, own[bounds[r] : bounds[r + 1]], med, mad


def _mixed_regions(at, which, role, response, n_regions):
    """Regions mostly of glass about a grain, bool (n_regions,).

    A region whose own positions' median robust z (:func:`_own_z`) stays
    below :data:`MIXED_FRACTION` of their upper decile: a grain's core is a
    small part of it. Regions without a null are False.

    Examples
    --------
    >>> from hyperspy_cnmf.clustering._components import EDGE, FAR, INSIDE
    >>> null = np.tile([-1.0, 0.0, 1.0], 10)  # 30 far-null responses, MAD 1
    >>> own = np.r_[np.full(10, 20.0), np.full(30, 2.0)]  # a core and glass
    >>> at = np.arange(70)
    >>> which = np.zeros(70, dtype=np.int64)
    >>> role = np.r_[np.full(30, FAR), np.full(40, INSIDE)]
    >>> _mixed_regions(at, which, role, np.r_[null, own], 1).tolist()
    [True]
    >>> _mixed_regions(at, which, role, np.r_[null, np.full(40, 20.0)], 1).tolist()
    [False]
    """
    out = np.zeros(n_regions, dtype=bool)
    for r, z, _ in _own_z(at, which, role, response, n_regions):
        out[r] = np.median(z) < MIXED_FRACTION * np.percentile(z, 90)
    return out


def _standing_claims(claimed, by, region_label, new_pos, n_extended):
    """Which rim-growth claims stand (bool, like ``claimed``).

    A claim stands where the claiming region stayed a grain
    (``region_label[by] >= n_extended``: labels below are the extended
    clusters, the matrix among them) and the claimed position lies in an
    extended cluster after the grouping and the release (``new_pos <
    n_extended``): the matrix's rim, a position a grain released, or one of
    a region that went to the matrix whole. A position of a region that
    stayed a grain is never taken by its neighbour's growth.

    Examples
    --------
    >>> labels = np.array([0, 2, 3])  # region 0 went to the matrix (0)
    >>> new_pos = np.array([0, 0, 2, 3])  # positions 2 and 3: grains
    >>> claimed, by = np.arange(4), np.array([1, 1, 2, 0])
    >>> _standing_claims(claimed, by, labels, new_pos, 2)
    array([ True,  True, False, False])
    """
    return (region_label[by] >= n_extended) & (new_pos[claimed] < n_extended)


def _rim_growth(at, which, role, response, n_regions):
    """Ring positions claimed by a grain: ``(positions, region)`` int64 arrays.

    A ring position's response ``s`` to its grain's Bragg-disk filter is
    scored against the grain's null shell, ``z = (s - m) / (1.4826 MAD)``
    (the robust z of F. R. Hampel, *J. Am. Stat. Assoc.* 69, 383 (1974); ``m``
    the null's median), and placed between the null and the grain's own edge
    positions, ``f = (s - m) / (median(edge) - m)``. It is claimed where
    ``z >= RIM_Z`` (its disks are there, above the matrix's fluctuation) and
    ``f >= RIM_EDGE_FRACTION`` (as strong as a grain's rim, not only the tail
    of a probe centred outside it, which high counts make significant too),
    by the grain with the largest z. Grains with fewer than
    :data:`RIM_MIN_NULL` null positions, a flat null or an edge no stronger
    than the null claim nothing.
    """
    z = np.full(at.size, -np.inf)
    for r, med, mad in _nulls(which, role, response, n_regions):
        mine = which == r
        edge = response[mine & (role == EDGE)]
        step = np.median(edge) - med if edge.size else 0.0
        if step > 0:
            ring = mine & (role == RING)
            excess = response[ring] - med
            z[ring] = np.where(
                excess >= RIM_EDGE_FRACTION * step, excess / mad, -np.inf
            )
    ok = np.flatnonzero(z >= RIM_Z)
    if not ok.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ok = ok[np.lexsort((-z[ok], at[ok]))]  # by position, best z first
    first = np.r_[True, np.diff(at[ok]) > 0]
    return at[ok][first], which[ok][first]


#: What :func:`_regroup_by_grain_patterns` counts, recorded in ``parameters``.
_GRAIN_COUNTS = (
    "grain_regions",
    "grain_rim_positions",
    "grain_released_positions",
    "grain_weak_regions",
    "grain_rise_regions",
)


def _halves(region, nav_shape):
    """Every region parted in two like the squares of a chessboard: region ``r``
    becomes ``2 r`` (even ``y + x``; even index on a line scan) and ``2 r + 1``
    (odd), -1 stays -1."""
    index = np.unravel_index(np.arange(region.size), nav_shape)
    parity = (sum(index) if len(nav_shape) > 1 else index[0]) % 2
    return np.where(region >= 0, 2 * region + parity, -1)


def _self_distances(
    halves, counts, centres, disk_radius, beam_radius, grid, kwargs, reference
):
    """Noise of every large region's mean pattern, from its two halves (float64, (n,)).

    ``halves``: the mean patterns of the regions' halves (:func:`_halves`),
    ``(2 n, qy, qx)``; ``counts``: their positions, ``(2 n,)``; ``centres``
    (n, 2): each region's direct beam (:func:`_disk_similarity`, on the
    polar grid about ``reference``). Returns the
    disk-image pseudo-distance ``d`` of the two halves times ``n_1 n_2 /
    (n_1 + n_2)^2`` (``d / 4`` for equal halves): to first order the noise
    energy of the region's mean over twice its signal energy (see
    :func:`_noise_corrected`; a half of ``n_i`` positions holds ``N / n_i``
    times the noise energy of the mean of all ``N``). A region with an empty
    half (a single position, or a diagonal line) or a half without disks gets
    0: no measure of its noise, no correction; so does a region of fewer
    than :data:`MIN_GRAIN_POSITIONS` positions, whose distances
    :func:`_noise_corrected` leaves as they are. Only the two halves of each
    large region are compared, pair by pair: memory and time grow with the
    number of regions, not with its square (a 26 GB scan of ~2000 grains
    compared 4000 half patterns all with all).
    """
    n = halves.shape[0] // 2
    n1, n2 = counts[0::2].astype(np.float64), counts[1::2].astype(np.float64)
    out = np.zeros(n)
    radii = _beam_radii(centres, reference, beam_radius)
    use = np.flatnonzero((n1 > 0) & (n2 > 0) & (n1 + n2 >= MIN_GRAIN_POSITIONS))
    for r in use:
        disks = np.stack(
            [
                bragg_disk_image(halves[i], centres[r], disk_radius, radii[r])
                for i in (2 * r, 2 * r + 1)
            ]
        )
        if not np.all(np.any(disks.reshape(2, -1) > 0, axis=1)):
            continue  # a half without disks: no measure of the noise
        sim = _disk_similarity(
            disks, np.stack([centres[r]] * 2), beam_radius, grid, kwargs, reference
        )
        d = 0.5 * (sim.pseudo_distance[0, 1] + sim.pseudo_distance[1, 0])
        out[r] = d * n1[r] * n2[r] / (n1[r] + n2[r]) ** 2
    return out


def _noise_corrected(distance, noise, sizes):
    """Pseudo-distances of the large regions less their mean patterns' noise.

    The pseudo-distance of two noisy means of one pattern grows with their
    noise: to first order (``1 -`` a normalised correlation) by ``(e_a +
    e_b) / 2 s`` for noise energies ``e`` and signal energy ``s``; ``noise``
    (:func:`_self_distances`) is each region's ``e / 2 s``, measured on its
    two halves. The sum of the two regions' is taken off the distance of
    every two regions of :data:`MIN_GRAIN_POSITIONS` or more positions
    (smaller regions keep theirs: the rules of :func:`_grain_groups` for
    them were measured on the raw distances), clipped at 0. A thin grain at
    2000 counts (22 positions, its halves 0.38 apart) lay 0.34 from the
    44-position grain of its phase, beyond :data:`GRAIN_DISTANCE`, and made
    a phase of its own (0.24 after the correction).
    """
    big = sizes >= MIN_GRAIN_POSITIONS
    both = noise[:, None] + noise[None, :]
    out = np.clip(distance - both * (big[:, None] & big[None, :]), 0.0, None)
    np.fill_diagonal(out, 0.0)
    return out


def _regroup_by_grain_patterns(
    fields,
    contrib,
    loadings,
    factors,
    nav_shape,
    region_patterns,
    geometry,
    rules,
    probe_fwhm=None,
    texture=None,
    beam_positions=None,
    *,
    factor_disks,
):
    """Positions of every grain classed by its own mean pattern in the data.

    The component clusters give the grains' positions; the phase of each
    grain (a connected region of one particle cluster's positions) is then
    told by the Bragg-disk geometry (:func:`bragg_disk_image`) of the mean
    of its patterns in the data, which ``region_patterns`` returns: an NMF
    component that took grains of two phases (too few components, or two
    near patterns) parts them, and pieces of one phase in several clusters
    meet. Where no region holds :data:`MIN_GRAIN_POSITIONS` positions, too
    few for a pattern to tell a phase, the clusters stay as they are, but
    the regions that show no crystal (:func:`_faint`) join the matrix (a
    scan of glass alone at k = 30 made clusters of its speckle patches). A
    region whose cluster's components (grouped by orientation,
    :func:`_orientation_groups`) each dominate a large piece is parted first
    (:func:`_split_regions_by_component`); the read returns the
    means of each region's two halves (:func:`_halves`), whose distance
    measures the noise of its mean (:func:`_noise_corrected`). Regions of
    the matrix's positions where its own summed map rises well above its
    level (a grain the matrix's components carry, which no
    particle cluster dominates), or a particle component's well above its
    background away from every grain (:func:`_map_rises`), are grains to
    class too (with requests of their own; dropped when their patterns fail
    the crystal test); the latter are placed by their patterns only. See
    :func:`_grain_groups`; groups without evidence join the
    matrix (the largest extended cluster); a region whose own patterns show
    its disks no more than the glass's speckle would
    (:func:`_crystal_evidence`) is no evidence of a phase, and one whose
    disks stay within the counting noise (``faint``) none of a phase of its
    own; nor is one whose disks pass the test only with its positions next
    to a larger crystal unlike it (:func:`_on_crystal_borders`: that
    crystal's rim, which a patch of glass took; the test is repeated
    without them), nor, below :data:`STRONG_CRYSTAL_Z`, one whose disks
    close as no lattice (:func:`_lattice_closure`: the glass's speckle). A
    large region whose disks lie on a touching larger crystal's joins its
    group (:func:`_disk_containment`). The regions' mean patterns are
    compared on the pixels the fit used: where the factors are NaN (the
    direct beam's disk that the fit left out, widened by the beam's measured
    movement) they are set to 0, so that a beam that wanders with the scan
    (descan) is no disk (the B2 / fcc case with 2 px of descan at 20000
    counts, k = 30: glass regions 0.00-0.01 apart by the beam's offset made
    a phase). In the same
    read, the positions next to each grain (the matrix's and other regions')
    answer its Bragg-disk filter (:func:`_bragg_filters` of the grain's model
    mean pattern, known before the read), and those in the matrix after the
    grouping that show its disks detectably above the local matrix join it
    (:func:`_rim_growth`): a matrix rim, or the grain's positions in a region
    that went to the matrix whole (at k = 30 and high counts, a component
    that took a piece of the grain with glass beside it makes a region whose
    own crystal test fails; :func:`_standing_claims`), while its own
    positions that show none go back to the matrix (:func:`_rim_release`;
    those of a region that shows no crystal of its own, or is mostly glass
    about a grain (:func:`_mixed_regions`), yet carries a phase's label need
    a rim's evidence each; under a probe broader than
    :data:`RIM_MAX_PROBE_FWHM` those below a tenth of the region's core go
    back too); a phase of its own needs a region that is not
    :func:`_faint`; rims grow only when
    ``probe_fwhm`` (scan steps) is at most :data:`RIM_MAX_PROBE_FWHM`. Each
    region's filter and mean pattern are taken about its own direct beam
    when ``beam_positions`` are given (:func:`_beam_offsets`,
    :func:`_model_offsets`, :func:`_disk_similarity`; descan). Components go
    to the cluster where most of their map's excess lies, textures
    (``texture``, bool (k,)) to the matrix (:func:`_members_by_positions`).
    ``factor_disks`` (k, qy, qx): the factors' Bragg-disk images about the
    scan's centre (:func:`cluster_components` draws them for its Bragg-disk
    split), grouped by orientation (:func:`_orientation_groups`).
    Returns the fields (unchanged when the partition of the positions is)
    and the counts of :data:`_GRAIN_COUNTS` (dict): grain regions whose
    patterns were compared, rim positions claimed, grain positions released
    to the matrix (:func:`_rim_release`), regions whose disks were the
    glass's speckle (:func:`_crystal_evidence`) and the maps' rises found
    (:func:`_map_rises`, those dropped by the crystal test included).
    """
    cpx, radius, dbr, grid, similarity_kwargs, pattern_shape = geometry
    percentiles, smoothing, _ = rules
    labels, pos = fields["labels"], fields["position_labels"]
    masked = np.all(np.isnan(loadings), axis=0)
    extended = _extended_clusters(
        _smooth_maps(contrib, nav_shape, smoothing), labels, masked, percentiles
    )
    none = dict.fromkeys(_GRAIN_COUNTS, 0)
    if not extended.any() or extended.all():
        return fields, none
    region, owner = _grain_regions(pos, nav_shape, extended)
    region, owner = _split_regions_by_component(
        region,
        owner,
        contrib,
        labels,
        nav_shape,
        _orientation_groups(factor_disks),
    )
    ext = np.flatnonzero(extended)
    counts = np.bincount(pos[pos >= 0], minlength=extended.size)
    matrix = int(np.argmax(counts[ext]))
    claimable = np.isin(pos, ext)
    at, which, role = _rim_requests(region, claimable, nav_shape)
    # grains that a cluster's components carry where none dominates: regions
    # of their own, with requests of their own (the others' stay as they were)
    rises, rise_owner = _map_rises(contrib, labels, pos, int(ext[matrix]), nav_shape)
    n_rises = rise_owner.size
    if n_rises:
        more = _rim_requests(rises, claimable & (region < 0), nav_shape)
        at, role = np.r_[at, more[0]], np.r_[role, more[2]]
        which = np.r_[which, more[1] + owner.size]
        region[rises >= 0] = rises[rises >= 0] + owner.size
    rise = np.r_[np.zeros(owner.size, bool), np.ones(n_rises, bool)]
    owner = np.r_[owner, rise_owner]
    if not owner.size:
        return fields, none
    offsets = _beam_offsets(region, owner.size, beam_positions)
    grow = probe_fwhm is not None and probe_fwhm <= RIM_MAX_PROBE_FWHM
    # the filter of each grain, from its model mean pattern (known before
    # the read); every grain has requests (its own positions at least)
    weights = np.stack(
        [np.nanmean(loadings[:, region == r], axis=1) for r in range(owner.size)]
    )
    model = np.nan_to_num(weights) @ np.nan_to_num(
        factors.reshape(factors.shape[0], -1)
    )
    # about the model's own beam: of the scan's, the region's in the data and
    # its components' (descan), the one about which the model is most isotropic
    model_offsets = _model_offsets(
        weights,
        loadings,
        np.nansum(factors.reshape(factors.shape[0], -1), axis=1),
        beam_positions,
    )
    filters = _bragg_filters(
        model.reshape((owner.size,) + pattern_shape),
        np.asarray(cpx, dtype=np.float64)
        + np.stack([np.zeros_like(offsets), offsets, model_offsets], axis=1),
        radius,
        dbr or 0.0,
        ~np.all(np.isnan(factors.reshape((-1,) + pattern_shape)), axis=0),
    )
    split = _halves(region, nav_shape)
    out = region_patterns(split, filters, at, which)
    halves, response = (np.asarray(a, dtype=np.float64) for a in out)
    n_split = int(split.max()) + 1
    if halves.shape != (n_split,) + pattern_shape or response.shape != at.shape:
        raise ValueError(
            f"`region_patterns` returned shapes {halves.shape} and {response.shape}, "
            f"expected {(n_split,) + pattern_shape} (one mean pattern per region) "
            f"and {at.shape} (one response per requested position)."
        )
    del model  # the filters hold what the read needed of it
    half_counts = np.bincount(split[split >= 0], minlength=2 * owner.size)
    if n_split < 2 * owner.size:  # the last region's odd half is empty
        halves = np.concatenate(
            [halves, np.zeros((2 * owner.size - n_split,) + pattern_shape)]
        )
    halves[half_counts == 0] = 0.0  # whatever the callable gave for no position
    # compared on the pixels the fit used: not where it left the direct beam
    # out (its disk with the margin of the beam's measured movement, descan)
    halves[:, np.all(np.isnan(factors.reshape((-1,) + pattern_shape)), axis=0)] = 0.0
    # the regions' means, weighted by their halves' positions
    c0, c1 = (
        half_counts[i::2].reshape((-1,) + (1,) * len(pattern_shape)) for i in (0, 1)
    )
    patterns = (halves[0::2] * c0 + halves[1::2] * c1) / np.maximum(c0 + c1, 1)
    scores = _crystal_scores(at, which, role, response, filters, patterns)
    weak = ~_crystal_evidence(at, which, role, response, filters, patterns, scores)
    q75, speckle, _ = scores
    strong = ~speckle & (q75 >= STRONG_CRYSTAL_Z)
    # every region's patterns about its own beam (descan)
    centres = np.asarray(cpx, dtype=np.float64) + offsets
    beams = _beam_radii(centres, cpx, dbr)
    # the lattice test asks only the regions below the strong level; each
    # region's disks are found once, for it and for the disk images below
    ask = np.flatnonzero(q75 < STRONG_CRYSTAL_Z)  # NaN: no null, not tested
    found = _fill_disk_peaks([None] * owner.size, ask, patterns, centres, radius, beams)
    closure = np.full(owner.size, np.nan)
    closure[ask] = _lattice_closure(
        patterns[ask], centres[ask], radius, beams[ask], [found[i] for i in ask]
    )
    faint = _faint(at, which, role, response, filters, patterns, scores, closure)
    tested, count = ~faint & ~np.isnan(q75), scores[2]
    if (rise & weak).any():
        # a rise whose patterns show the glass's speckle, not a crystal: none
        # (at high counts particle components carry patches of speckle)
        keep = ~(rise & weak)
        new_index = np.cumsum(keep) - 1
        region = np.where(region >= 0, np.where(keep, new_index, -1)[region], -1)
        mine = keep[which]
        at, role, response = at[mine], role[mine], response[mine]
        which = new_index[which[mine]]
        owner, patterns, offsets = owner[keep], patterns[keep], offsets[keep]
        centres, beams = centres[keep], beams[keep]
        found = [f for f, k in zip(found, keep) if k]
        weak, rise, strong, faint = weak[keep], rise[keep], strong[keep], faint[keep]
        q75 = q75[keep]
        tested, count = tested[keep], count[keep]
        halves, half_counts = (
            halves[np.repeat(keep, 2)],
            half_counts[np.repeat(keep, 2)],
        )
        if not owner.size:
            return fields, dict(none, grain_rise_regions=n_rises)
    sizes = np.bincount(region[region >= 0], minlength=owner.size)
    # new numbering: the extended clusters, then the groups with evidence
    new_pos = np.full_like(pos, -1)
    for i, c in enumerate(ext):
        new_pos[pos == c] = i
    n_weak = 0
    # border positions each pair of regions shares: the grouping's contacts
    # and the grains (touching regions of one label) of the release below
    touching = _region_contacts(region, nav_shape, owner.size)
    if (sizes >= MIN_GRAIN_POSITIONS).any():
        n_weak = int(weak.sum())
        _fill_disk_peaks(found, range(owner.size), patterns, centres, radius, beams)
        disks = np.stack([_draw_disks(f, radius) for f in found])
        sim = _disk_similarity(disks, centres, dbr, grid, similarity_kwargs, cpx)
        distance = 0.5 * (sim.pseudo_distance + sim.pseudo_distance.T)
        distance = _noise_corrected(
            distance,
            _self_distances(
                halves,
                half_counts,
                centres,
                radius,
                dbr,
                grid,
                similarity_kwargs,
                cpx,
            ),
            sizes,
        )
        empty = ~np.any(disks.reshape(owner.size, -1) > 0, axis=1)
        # a particle component's rise is placed by its pattern only
        by_pattern = rise & (owner != ext[matrix])
        # a phase of its own is shown away from the borders of larger crystals
        # unlike it (where a patch of glass holds their rims)
        borrowed, not_strong = _borrowed_evidence(
            at,
            which,
            role,
            response,
            region,
            nav_shape,
            tested,
            count,
            distance > GRAIN_DISTANCE,
        )
        faint, strong = faint | borrowed, strong & ~not_strong
        group, evidence = _grain_groups(
            distance,
            sizes,
            owner,
            touching,
            empty,
            weak | by_pattern,
            strong,
            faint,
            _disk_containment(disks, centres, radius, touching),
            faint & (q75 < CONTACT_Z),  # NaN (no null): not tested, kept
        )
        target = np.where(evidence, np.cumsum(evidence) - 1 + ext.size, matrix)
        region_label = target[group]
    else:  # no grain large enough to tell a phase: the clusters as they are,
        # less the regions whose patterns show no crystal (a glass-only scan at
        # k = 30: its speckle patches of 4-12 positions were clusters of their own)
        _, region_label = np.unique(owner, return_inverse=True)
        region_label = region_label + ext.size
        region_label[rise | faint] = matrix  # nothing tells their phase
    inside = region >= 0
    new_pos[inside] = region_label[region[inside]]
    # the release under any probe (it tests a grain's own positions against
    # its interior); the growth only under a probe of a few steps
    placed = (weak | _mixed_regions(at, which, role, response, owner.size)) & (
        region_label >= ext.size
    )
    # the grains: touching regions of one label (the broad probe's core release
    # measures each against the strongest of its grain's regions)
    same = (touching > 0) & (region_label[:, None] == region_label[None, :])
    grain_of = _connected_groups(same | same.T | np.eye(owner.size, dtype=bool))[1]
    released = _rim_release(
        at,
        which,
        role,
        response,
        owner.size,
        placed,
        core_fraction=_core_release_fraction(probe_fwhm),
        grain_of=grain_of,
    )
    claimed = by = np.zeros(0, np.int64)
    if grow:
        claimed, by = _rim_growth(at, which, role, response, owner.size)
    new_pos[released] = matrix
    claimed_ok = _standing_claims(claimed, by, region_label, new_pos, ext.size)
    new_pos[claimed[claimed_ok]] = region_label[by[claimed_ok]]
    grown = int(claimed_ok.sum())
    counts = dict(
        zip(
            _GRAIN_COUNTS,
            (int(owner.size), grown, int(released.size), n_weak, n_rises),
        )
    )
    if _same_partition(pos, new_pos):
        return fields, counts
    n_new = int(new_pos.max()) + 1
    new_labels = _members_by_positions(contrib, new_pos, n_new, labels, texture, matrix)
    if new_labels is None:  # nothing changed: no rim grown, none released
        return fields, dict(counts, grain_rim_positions=0, grain_released_positions=0)
    fields = _cluster_positions(
        contrib, new_labels, loadings, nav_shape, *rules, pos=new_pos
    )
    return fields, counts


def _aligned_merge(
    factors, cpx, sim, labels, beam_only, factor_sum, loading_sum, texture=None
):
    """Pairwise similarity, references, alignment and merged factor of every cluster.

    Components whose maps are a texture (``texture``, bool (k,):
    :func:`_texture`, the amorphous matrix's speckle) are merged unrotated,
    as beam-only ones: an amorphous pattern has no orientation to align,
    and the NMF splits the glass's halo into components whose anisotropies
    complement each other where they lie (lobes along one axis in one, along
    the other in the next); rotated onto one reference, their lobes add up
    to an azimuthal modulation of the merged halo that the data do not have
    (issue 10, item 9). Returns these :class:`ComponentClustering` fields as
    a dict.
    """
    refs, rot, mir = _align(sim, labels, beam_only, np.abs(factor_sum * loading_sum))
    if texture is not None:
        rot = np.where(texture, 0.0, rot)
        mir = mir & ~texture
    return dict(
        pseudo_distance=sim.pseudo_distance,
        similarity=sim.similarity,
        pairwise_rotation=sim.rotation,
        pairwise_mirrored=sim.mirrored,
        references=refs,
        rotation=rot,
        mirrored=mir,
        merged_factors=merge_aligned(
            factors, cpx, labels, rot, mir, weights=loading_sum
        ),
    )


def _position_owners(factor_sum, loadings, labels, position_labels, aligned):
    """The member of its cluster that dominates each position (-1: none, or no cluster).

    Among the components of the position's cluster with ``aligned`` True,
    the one with the largest contribution ``loadings[i, p] * factor_sum[i]``
    (-1 where none contributes). int64, shape ``(n_positions,)``.
    """
    contrib = np.nan_to_num(loadings) * factor_sum[:, None]
    owner = np.full(position_labels.size, -1, dtype=np.int64)
    for c in np.unique(position_labels[position_labels >= 0]):
        on = np.flatnonzero(position_labels == c)
        cand = np.flatnonzero((labels == c) & aligned)
        if cand.size:
            best = cand[np.argmax(contrib[np.ix_(cand, on)], axis=0)]
            owner[on] = np.where(contrib[best, on] > 0, best, -1)
    return owner


def mean_patterns(
    factors,
    loadings,
    labels,
    position_labels,
    centre,
    rotation,
    mirrored=None,
    aligned=None,
):
    """Rotation-aligned mean of the model's pattern over each cluster's positions.

    The model of position ``p`` is ``sum_i loadings[i, p] * factors[i]`` over
    *all* components (the matrix under a grain, the direct beam's tail and
    the floors of other components included): where the model fits the data,
    its mean over a cluster's positions is the mean pattern those positions
    hold, less the noise, and so has no valley that the separation of the
    components carves into one factor and fills with another (issue 10,
    item 9). Each position's model is transformed as the cluster aligns the
    member that dominates it there: the member (among ``aligned``) with the
    largest contribution ``loadings[i, p] * sum(factors[i])``, so that the
    rotated grains of one phase add up in the reference's orientation; a
    position where no such member contributes keeps its orientation. A
    detector pixel that the rotations bring in from outside the detector
    (or from a masked pixel) for some positions is the mean of the others;
    one that every rotation brings in from outside the detector (a corner),
    the positions' unrotated mean; a masked pixel rotated onto one that no
    other position has stays NaN (:func:`_aligned_means`).

    Parameters
    ----------
    factors : array_like, shape (k, qy, qx)
        Patterns of the components, data units per unit loading; NaN on
        masked detector pixels.
    loadings : array_like, shape (k, n_positions)
        Maps of the components (NaN at masked positions).
    labels : array_like of int, shape (k,)
        Cluster of each component.
    position_labels : array_like of int, shape (n_positions,)
        Cluster of each position (-1: none; left out).
    centre : tuple of float
        ``(x, y)`` of the rotation centre (the direct beam), px.
    rotation : array_like of float, shape (k,)
        Degrees: rotation of each component onto its cluster's reference
        (:func:`~hyperspy_cnmf.clustering.rotate_patterns` convention).
    mirrored : array_like of bool, shape (k,), optional
        Whether that alignment mirrors the component; default none.
    aligned : array_like of bool, shape (k,), optional
        Members whose orientation a position can take (default all):
        :func:`cluster_components` leaves out the beam-only components, so
        that the direct beam does not dominate a grain's positions (its
        texture components, the matrix's speckle, have rotation 0: the
        positions they dominate keep their orientation).

    Returns
    -------
    ndarray of float64, shape (c, qy, qx)
        ``c = labels.max() + 1``; data units per position (the mean over the
        cluster's positions, counts per position for counting data), at the
        model's level (the dip constraint lifts the factors' counting noise:
        1.05-1.28 times the data's counts on the benchmark cases,
        :mod:`hyperspy_cnmf.constraints`). NaN
        on the pixels that are NaN in some factor or that a rotation brings
        in from them alone, and everywhere for a cluster without positions.

    Raises
    ------
    ValueError
        If the shapes disagree.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import mean_patterns, rotate_patterns
    >>> f = np.zeros((3, 21, 21)); f[0, 10, 16] = 1.0; f[2] = 0.1   # a spot; a flat glass
    >>> f[1] = rotate_patterns(f[0], (10, 10), 90)                   # the spot rotated by 90
    >>> w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])           # two grains on the glass
    >>> m = mean_patterns(f, w, [0, 0, 1], [0, 0], (10, 10), [0.0, -90.0, 0.0])
    >>> float(m[0, 10, 16]), float(m[0, 10, 10])                     # aligned spot on the glass
    (1.1, 0.1)
    """
    F = np.asarray(factors, dtype=np.float64)
    W = np.asarray(loadings, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    pos = np.asarray(position_labels, dtype=np.int64).ravel()
    k = F.shape[0]
    rotation = np.asarray(rotation, dtype=np.float64)
    mirrored = (
        np.zeros(k, dtype=bool) if mirrored is None else np.asarray(mirrored, bool)
    )
    aligned = np.ones(k, dtype=bool) if aligned is None else np.asarray(aligned, bool)
    if F.ndim != 3 or W.shape != (k, pos.size) or labels.shape != (k,):
        raise ValueError(
            f"Shapes disagree: factors {F.shape}, loadings {W.shape}, labels "
            f"{labels.shape}, position_labels {pos.shape}."
        )
    if rotation.shape != (k,) or mirrored.shape != (k,) or aligned.shape != (k,):
        raise ValueError(
            "`rotation`, `mirrored` and `aligned` need one value per component."
        )
    n_c = int(labels.max()) + 1
    missing = np.any(np.isnan(F), axis=0)
    flat = np.nan_to_num(F).reshape(k, -1)
    W = np.nan_to_num(W)
    owner = _position_owners(flat.sum(axis=1), W, labels, pos, aligned)

    def model_mean(sel):
        out = (W[:, sel].mean(axis=1) @ flat).reshape(F.shape[1:])
        out[missing] = np.nan
        return out

    out = _aligned_means(
        model_mean, owner, pos, (n_c,) + F.shape[1:], centre, rotation, mirrored
    )
    out[:, missing] = np.nan
    return out


def _aligned_means(
    group_mean, owner, position_labels, shape, centre, rotation, mirrored
):
    """Mean over each cluster's positions of ``group_mean``, each group aligned as its owner.

    ``group_mean(sel)`` returns the mean pattern ``(qy, qx)`` of the flat
    positions ``sel``; the positions of a cluster are grouped by ``owner``
    (:func:`_position_owners`) and each group's mean is rotated (mirrored)
    as its owner (-1: not at all), weighted by its positions. A pixel that
    some rotations bring in from outside the detector or from a missing
    (NaN) pixel is the mean of the other groups; one that every rotation
    brings in from outside the detector (a corner), the positions'
    unrotated mean; one that no group has otherwise stays NaN (a rotated
    detector mask is not filled with another orientation's counts).
    Float64, ``shape`` ``(n_c, qy, qx)``; NaN for a cluster without positions.
    (Also used by ``benchmarks/quality_valleys.py`` on the true patterns.)
    """
    out = np.full(shape, np.nan)
    means, sizes, member, which = [], [], [], []
    for c in range(shape[0]):
        on = np.flatnonzero(position_labels == c)
        for j in np.unique(owner[on]):
            sel = on[owner[on] == j]
            means.append(np.asarray(group_mean(sel), dtype=np.float64))
            sizes.append(sel.size)
            member.append(j)
            which.append(c)
    if not means:
        return out
    member, which, sizes = np.asarray(member), np.asarray(which), np.asarray(sizes)
    stack = np.stack(means)
    rot = np.where(member >= 0, rotation[member], 0.0)
    mir = np.where(member >= 0, mirrored[member], False)
    aligned_sum = merge_aligned(stack, centre, which, rot, mir, weights=sizes)
    plain_sum = merge_aligned(stack, centre, which, np.zeros(rot.size), weights=sizes)
    # where each group's rotation samples outside the detector
    outside = np.isnan(
        rotate_patterns(np.ones((rot.size,) + stack.shape[1:]), centre, rot, mir)
    )
    for c in np.unique(which):
        corner = np.all(outside[which == c], axis=0)
        total = np.where(corner, plain_sum[c], aligned_sum[c])
        total = np.where(np.isfinite(aligned_sum[c]), aligned_sum[c], total)
        out[c] = total / sizes[which == c].sum()
    return out


def _component_parameters(
    args, components, cpx, radii, n_theta, dbr, similarity_kwargs, threshold
):
    """The ``parameters`` record of a :class:`ComponentClustering` (``args``: the call's arguments)."""
    return {
        "n_clusters": args["n_clusters"],
        "distance_threshold": args["distance_threshold"],
        "method": args["method"],
        "components": np.asarray(components).tolist(),
        **_similarity_parameters(
            cpx, radii, args["delta_r"], n_theta, dbr, **similarity_kwargs
        ),
        "min_structure_fraction": float(args["min_structure_fraction"]),
        "min_map_compactness": float(args["min_map_compactness"] or 0.0),
        "min_cluster_positions": int(args["min_cluster_positions"] or 0),
        "max_enclosure": None
        if args["max_enclosure"] is None
        else float(args["max_enclosure"]),
        "disk_radius_px": None
        if args["disk_radius"] is None
        else float(args["disk_radius"]),
        "dominance_percentiles": [float(p) for p in args["dominance_percentiles"]],
        "map_smoothing": args["map_smoothing"],
        "particle_threshold": float(args["particle_threshold"]),
        "probe_fwhm_steps": None
        if args["probe_fwhm"] is None
        else float(args["probe_fwhm"]),
        "threshold": float(threshold),
        "refit_grains": None,  # set by a refit (_refitted)
        "refit_components": 0,
    }


# --------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------
#: Positions a connected region of a particle cluster's position labels needs
#: to count as a grain for the refit (:func:`grain_count`): half of
#: :data:`MIN_GRAIN_POSITIONS`. Over the 228 fits at k = 30 of the scratch
#: sweep (38 multislice cases, random_state 0-5, session 25;
#: ``/work/notes/s25/gest.py``), the count from the over-complete clustering's
#: labels (with the data's grain patterns) was the true number of grains in
#: 219, too many in 9 and never too few (at 4 positions: 209 right); with the
#: model's patterns, as the refit counts, the same count in 33 of 36 fits
#: compared (``refit4.py``).
REFIT_GRAIN_POSITIONS = 10
#: Components of the refit beyond one per counted grain and one for the
#: matrix: a spare for what the count missed (a grain below
#: :data:`REFIT_GRAIN_POSITIONS`, the matrix's thickness or texture). The
#: same 228 fits, mean position ARI / fits below 0.85 / fits with the true
#: number of phases: 0.899 / 17 / 223 without a refit, 0.916 / 8 / 228 with
#: no spare, 0.919 / 3 / 228 with one (``/work/notes/s25/refit3.py``, the
#: count from the data's patterns); as shipped (the model's patterns, the
#: spare dropped where it splits the matrix, no refit where it labels fewer phases than
#: two or leaves too much unexplained) 0.919 / 3 / 228 (``/work/notes/s22/sweep.py``);
#: two spares at random_state 0-2: 0.919 against 0.919 with one. The spare helps the descan cases most (the
#: matrix's pattern moves with the beam).
REFIT_SPARE = 1
#: The refit runs where the decomposition holds at least this many times one component per
#: counted grain and one for the matrix: an over-complete fit (the paper's k = 30, or twice
#: the true count), not one near the true count, whose grains a short count would lose.
REFIT_OVER_COMPLETE = 2
#: Largest share of the over-complete model's (Poisson-weighted) sum of squares that a refit
#: may leave unexplained. One component per grain and one for the matrix hold all but the
#: speckle and the noise that the over-complete fit took: 0.03-0.23 over 114 fits of the
#: scratch sweep (38 multislice cases, k = 30, random_state 0-2; 0.22-0.23 on the one at
#: 1000 counts per position with descan). Where the count missed grains, far more is left: a
#: polycrystalline film (6 grains of 2 phases tiling a 32 x 32 scan, no amorphous matrix; the
#: count takes the largest phase for the matrix and finds 1-2 grains) 0.33-0.50 at k = 12-20,
#: where the refit gave 1-2 clusters at ARI 0.00 against 0.84-0.97 unrefitted.
REFIT_MAX_UNEXPLAINED = 0.3


def grain_count(position_labels, nav_shape):
    """Grains in a clustering's position labels: the connected regions of its particle clusters.

    The regions (8-connected in 2D) of at least :data:`REFIT_GRAIN_POSITIONS`
    positions of every cluster but the matrix, the cluster that holds the
    most positions.

    Parameters
    ----------
    position_labels : ndarray of int, shape (n_positions,)
        Cluster of every position (-1: none), navigation order.
    nav_shape : tuple of int
        Navigation shape, array order.

    Returns
    -------
    int

    Examples
    --------
    >>> lab = np.zeros((12, 12), int); lab[1:5, 1:5] = 1; lab[7:11, 7:11] = 2; lab[0, 11] = 1
    >>> grain_count(lab.ravel(), (12, 12))
    2
    """
    return _grains_in(_counted_regions(position_labels, nav_shape))


def _grains_in(counted):
    """The number of grains of :func:`_counted_regions`' result (0 for None)."""
    return 0 if counted is None else int(counted[2].sum())


def _counted_regions(position_labels, nav_shape):
    """The regions :func:`grain_count` counts: ``(region, owner, big)``, or None.

    ``region`` (n_positions,): the connected region of every particle
    cluster's position (-1: the matrix's, the cluster with the most
    positions, or unlabelled); ``owner``: each region's cluster; ``big``:
    the regions of at least :data:`REFIT_GRAIN_POSITIONS` positions. None
    where the labels hold fewer than two clusters.
    """
    labels = np.asarray(position_labels).ravel()
    counts = np.bincount(labels[labels >= 0])
    if counts.size < 2:
        return None
    matrix = np.arange(counts.size) == np.argmax(counts)
    region, owner = _grain_regions(labels, tuple(nav_shape), matrix)
    sizes = np.bincount(region[region >= 0], minlength=owner.size)
    return region, owner, sizes >= REFIT_GRAIN_POSITIONS


#: Bytes of float64 patterns whose filter responses a ``region_patterns`` reader forms at a
#: time (:func:`_model_region_patterns`, the signal layer's data reader): 256 patterns before
#: session 25 (1.2 MiB on a 24 x 24 detector, 32 MiB on 128 x 128).
RESPONSE_BLOCK_BYTES = 2**19


def response_block_rows(n_pixels):
    """Patterns of ``n_pixels`` each per block of :data:`RESPONSE_BLOCK_BYTES` (at least 16)."""
    return max(16, RESPONSE_BLOCK_BYTES // (8 * int(n_pixels)))


def _region_means(F, L, region):
    """The model's mean pattern over every region, float64 (n_regions, n_pixels).

    ``F`` (k, n_pixels) and ``L`` (k, n_positions) without NaN; ``region``
    (n_positions,) numbers the regions from 0 (-1: none).
    """
    n = int(region.max()) + 1
    inside = region >= 0
    sums = np.zeros((n, F.shape[0]))
    np.add.at(sums, region[inside], L[:, inside].T)
    counts = np.bincount(region[inside], minlength=n)
    return (sums / np.maximum(counts, 1)[:, None]) @ F


def _model_region_patterns(factors, loadings):
    """``region_patterns`` (:func:`cluster_components`) of the model ``loadings.T @ factors``: no read.

    Masked pixels and positions (NaN) count as 0.
    """
    k = factors.shape[0]
    F = np.nan_to_num(factors.reshape(k, -1))
    L = np.nan_to_num(loadings)

    def means(region, filters, at, which):
        mean = _region_means(F, L, region)
        response = np.empty(at.size)
        rows = response_block_rows(F.shape[1])
        for i in range(0, at.size, rows):
            part = slice(i, i + rows)
            response[part] = np.einsum(
                "ij,ij->i", L[:, at[part]].T @ F, filters[which[part]]
            )
        return mean.reshape((-1,) + factors.shape[1:]), response

    means.read_fraction = 0.0
    return means


def _phases(res):
    """Clusters that label positions in a clustering result."""
    labels = np.asarray(res.position_labels)
    return int(np.unique(labels[labels >= 0]).size)


def _confirmed_grains(counted, factors, loadings, centre, disk_radius, beam_radius):
    """The count's credible grains: position index arrays (:func:`_refitted`).

    ``counted``: the count's regions (:func:`_counted_regions`, None: none).
    A grain (a region of :func:`grain_count`) is credible where its cluster
    holds another and the model's mean pattern over it closes as a lattice
    (:func:`_lattice_closure` at least :data:`LATTICE_CLOSURE`): a crystal of
    a phase found twice, not a patch of glass (two glass patches of the
    1.6 mrad multislice case made one cluster of the count; their disks
    close at 0.00, a 7 A B2 grain's at 0.71).
    """
    if counted is None or disk_radius is None:
        return []
    region, owner, big = counted
    if not big.any():
        return []
    per_cluster = np.bincount(owner[big], minlength=owner.max() + 1)
    twice = np.flatnonzero(big & (per_cluster[owner] >= 2))
    if not twice.size:
        return []
    k = np.asarray(factors).shape[0]
    F = np.nan_to_num(np.asarray(factors, dtype=np.float64).reshape(k, -1))
    L = np.nan_to_num(np.asarray(loadings, dtype=np.float64))
    patterns = _region_means(F, L, region)[twice].reshape(
        (twice.size,) + np.asarray(factors).shape[1:]
    )
    closure = _lattice_closure(
        patterns,
        np.tile(np.asarray(centre, dtype=np.float64), (twice.size, 1)),
        float(disk_radius),
        np.full(twice.size, float(beam_radius or 0.0)),
    )
    return [
        np.flatnonzero(region == r)
        for r, c in zip(twice, closure)
        if c >= LATTICE_CLOSURE
    ]


def _lost_grains(grains, position_labels):
    """How many of ``grains`` (position index arrays) a clustering gives mostly to its matrix."""
    labels = np.asarray(position_labels).ravel()
    counts = np.bincount(labels[labels >= 0])
    if counts.size < 1:
        return len(grains)
    matrix = int(np.argmax(counts))
    return int(
        sum(np.mean((labels[g] == matrix) | (labels[g] < 0)) > 0.5 for g in grains)
    )


def _refitted(call, refit):
    """:func:`cluster_components` with a refit: count the grains, refit, cluster the refit.

    The count comes from a clustering of the components themselves whose
    grain patterns are the model's (:func:`_model_region_patterns`: no
    read). The refit has one component per grain, one for the matrix and
    :data:`REFIT_SPARE` more; where the spare splits the matrix (its
    clustering, with the model's patterns, labels more phases than the
    count's), the refit goes without it, and where that one's labels fewer
    than two phases while the count's labelled two or more, or a refit
    leaves more than :data:`REFIT_MAX_UNEXPLAINED` of the model unexplained
    (grains the count missed: no matrix of the kind it assumes), there is
    no refit (``refit_note`` in the parameters says why). Nor is a refit kept
    whose clustering gives the matrix a grain the count found credible
    (:func:`_confirmed_grains`): a least-squares refit can spend its
    components on the glass's variance and lose a weak grain that the
    over-complete fit had given a component of its own (a 7 A B2 grain at
    20000 e-, k = 30: 0.866-0.874 refitted, 0.859-0.917 without the refit). The clustering that is returned reads the data
    once, as without a refit. Only what the next step needs of each
    clustering is kept (the lazy main job's memory).
    """
    counting = cluster_components(
        **dict(
            call,
            region_patterns=_model_region_patterns(call["factors"], call["loadings"]),
        )
    )
    nav_shape = call["nav_shape"] or (counting.position_labels.size,)
    regions = _counted_regions(counting.position_labels, nav_shape)
    grains = _grains_in(regions)  # grain_count's, from regions kept for the refit
    counted_phases = _phases(counting)
    k = counting.components.size
    fixed = dict(
        call,
        centre=tuple(float(v) for v in counting.centre),
        direct_beam_radius=counting.parameters["direct_beam_radius_px"],
    )
    del counting
    # Only an over-complete fit (REFIT_OVER_COMPLETE): near the true count, a count that
    # falls short drops components the user asked for (two touching grains of one phase
    # are one region: the package's simulator at random_state 3, k = 7 = the true count,
    # position ARI 0.880 -> 0.714 refitted to 6; thin crystals of the 2-phase multislice
    # case at 100000 counts, k = 5, 2 of 4 grains counted: 0.610 -> 0.329 refitted to 4).
    if grains < 1 or k < REFIT_OVER_COMPLETE * (grains + 1):
        res = cluster_components(**fixed)
        res.parameters.update(
            refit_grains=grains,
            refit_components=0,
            refit_note="no grain counted"
            if grains < 1
            else f"not over-complete: {k} < {REFIT_OVER_COMPLETE} x ({grains} grains + 1)",
        )
        return res
    # The spare first. A refit is kept only where its clustering (with the model's
    # patterns, no read) labels no more phases than the count's (the spare can split
    # the matrix: the embedded default at k = 30, 4 clusters for 3, ARI 0.554) and no
    # fewer than two where the count had two: a scan without an amorphous matrix (a
    # polycrystalline film) is no "grains in a matrix", and the count, which takes the
    # largest cluster for the matrix, misses that phase's grains (6 grains of 2 phases
    # tiling a 32 x 32 scan: 1 grain counted, one cluster, ARI 0.000 against 0.705-0.968
    # unrefitted at k = 8-20).
    # grains a refit must keep (a weak grain of a phase found twice, a lattice)
    confirmed = _confirmed_grains(
        regions,
        call["factors"],
        call["loadings"],
        fixed["centre"],
        call["disk_radius"],
        fixed["direct_beam_radius"],
    )
    del regions
    kept, phases, note = None, None, ""
    for n_refit in dict.fromkeys((grains + 1 + REFIT_SPARE, grains + 1)):
        candidate = refit(n_refit)
        unexplained = getattr(refit, "info", {}).get("unexplained", 0.0)
        if unexplained > REFIT_MAX_UNEXPLAINED:
            note = (
                f"{n_refit} components leave {unexplained:.2f} of the model unexplained "
                f"(more than REFIT_MAX_UNEXPLAINED, {REFIT_MAX_UNEXPLAINED}): grains not counted"
            )
            break  # fewer components leave more
        trial = cluster_components(
            **dict(
                fixed,
                factors=candidate[0],
                loadings=candidate[1],
                components=None,
                region_patterns=_model_region_patterns(*candidate),
            )
        )
        phases = _phases(trial)
        lost = _lost_grains(confirmed, trial.position_labels)
        del trial
        if lost:
            note = (
                f"the refit's clustering gave {lost} grain(s) of a phase the count "
                "found twice, whose disks close as a lattice, to the matrix"
            )
            continue
        if min(2, counted_phases) <= phases <= counted_phases:
            kept = (n_refit, *candidate)
            break
        note = f"the refit's clustering labelled {phases} phases, the count's {counted_phases}"
    if kept is None:
        res = cluster_components(**fixed)
        res.parameters.update(refit_grains=grains, refit_components=0, refit_note=note)
        return res
    n_refit, factors, loadings = kept
    del candidate, kept
    refitted = dict(fixed, factors=factors, loadings=loadings, components=None)
    res = cluster_components(**refitted)
    res.refit_factors = np.asarray(factors, dtype=np.float64)
    res.refit_loadings = np.asarray(loadings, dtype=np.float64)
    res.parameters.update(
        refit_grains=grains,
        refit_components=n_refit,
        refit_from_components=np.asarray(
            range(k) if fixed["components"] is None else fixed["components"]
        ).tolist(),
        **{f"refit_{key}": value for key, value in getattr(refit, "info", {}).items()},
    )
    return res


@fill_doc
def cluster_components(
    factors,
    loadings,
    centre=None,
    *,
    nav_shape=None,
    components=None,
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
    min_structure_fraction=0.1,
    min_map_compactness=MIN_MAP_COMPACTNESS,
    min_cluster_positions=0,
    max_enclosure=MAX_ENCLOSURE,
    disk_radius=None,
    dominance_percentiles=(0.0, 100.0),
    map_smoothing=None,
    particle_threshold=PARTICLE_THRESHOLD,
    signal_mask=None,
    region_patterns=None,
    probe_fwhm=None,
    beam_positions=None,
    refit=None,
):
    """Group decomposition components by rotation-invariant diffraction similarity.

    The clustering of Kimoto et al., *Sci. Rep.* 15, 39143 (2025) on plain
    arrays, all in px and data units: polar transform of the factors, the
    pairwise correlation maximised over the rotation, a hierarchical cut of
    ``1 - CC``, direct-beam-only components attached by their maps, the
    dominant cluster of every position, and the rotation-aligned merged
    diffraction of each cluster. The user-facing method is
    :meth:`~hyperspy_cnmf.signals.STEM4D.cluster_diffraction` (whose Notes
    give the units, rotation convention and dominance rules in full).

    Parameters
    ----------
    factors : array_like, shape (k, qy, qx)
        Diffraction pattern of each component (non-negative expected; NaN:
        masked detector pixels).
    loadings : array_like, shape (k, n_positions)
        Map of each component, positions in C order of ``nav_shape`` (NaN:
        masked positions). Component ``i`` contributes
        ``loadings[i, p] * factors[i]`` to the data.
    centre : Beam or tuple of float, optional
        ``(x, y)`` of the direct beam, px. Default: found with
        :func:`~hyperspy_cnmf.clustering.find_direct_beam` on the
        loading-weighted sum of the factors.
    nav_shape : tuple of int, optional
        Navigation (scan) shape in array order, for the adjacency of the
        map objects and ``map_smoothing``; default one dimension.
    components : array_like of int, shape (k,), optional
        Index of each component in the caller's numbering (recorded only);
        default ``0 .. k-1``.
    %(cluster_cut)s
    %(polar_grid_clustering)s
    direct_beam_radius : float, "auto" or None, default "auto"
        Rings inside this radius (px) are left out of the correlation;
        ``"auto"``: :func:`~hyperspy_cnmf.clustering.estimate_direct_beam_radius`
        of the loading-weighted sum of the factors.
    %(similarity)s
    %(component_maps)s
    min_cluster_positions : int, default 0
        With ``n_clusters`` None: clusters dominating fewer positions are
        dissolved, their components joining the clusters whose maps
        correlate best with theirs (the smallest first; the signal method's
        ``"auto"`` sets it from the probe size); 0 switches it off.
    max_enclosure : float in (0, 1] or None, default 0.3
        With ``n_clusters`` None: a particle cluster whose border one larger
        particle cluster holds beyond this share, and with a member whose
        pseudo-distance to one of that cluster's is within twice the cut's,
        joins it (a piece of its grain, :data:`MAX_ENCLOSURE`); recorded as
        ``joined_clusters`` in ``parameters``. With ``disk_radius``, touching
        particle clusters of one crystal also join (:func:`_join_enclosed`).
        None switches both off.
    disk_radius : float or None, default None
        Radius (px) of the Bragg disks (the direct beam's). With ``n_clusters``
        None, each cluster of the cut is parted where its components' Bragg-disk
        geometry differs beyond :data:`SPLIT_DISTANCE`
        (:func:`bragg_disk_image`) and their maps lie apart
        (:data:`MAX_SPLIT_OVERLAP`): phases with near rings that the pattern
        correlation merges. Recorded as ``split_clusters`` in ``parameters``.
        None switches it off. :meth:`~hyperspy_cnmf.signals.STEM4D.cluster_diffraction`
        passes the direct-beam radius its decomposition measured.
    signal_mask : ndarray of bool, shape (qy, qx), optional
        The decomposition's masked detector pixels (True): left out of the
        search for the direct beam when ``centre`` is None (except a masked
        region that could hold the beam,
        :func:`hyperspy_cnmf._beam.beam_search_pixels`).
    region_patterns : callable, optional
        With ``n_clusters`` None and ``disk_radius``: one read of the data,
        ``region_patterns(region, filters, at, which)``. It takes the grain
        region of every position (ndarray of int64, shape
        ``(n_positions,)``, -1 outside any region, regions numbered from 0
        to ``n_regions - 1``; each grain region ``g`` is passed as its two
        halves ``2 g`` and ``2 g + 1``, :func:`_halves`, and a number that
        holds no position gets any mean: it is not used), filters (float32,
        ``(n_filters, qy * qx)``, one per grain region ``g``) and flat
        positions ``at`` with the filter of each, ``which`` (int64, ``(m,)``
        both; ``which`` numbers the grains, not the halves), and returns the
        mean data pattern of each region,
        shape ``(n_regions, qy, qx)``, and the response of every requested
        position, ``pattern(at[i]).ravel() @ filters[which[i]]``, shape
        ``(m,)``. Each grain is then classed by its own pattern, tested as a
        crystal against the glass's speckle, its rim grown where its
        patterns show the grain's disks and its positions that show none
        given back to the matrix (:func:`_regroup_by_grain_patterns`).
        Regions of matrix positions where the matrix's own map rises well
        above its level (a grain that the matrix's components carry,
        :func:`_map_rises`; and where a particle component's map rises
        well above its background away from every grain: a second grain it
        carries weakly) are classed the same way. Recorded as
        ``grain_regions``, ``grain_weak_regions``, ``grain_rim_positions``,
        ``grain_released_positions`` and ``grain_rise_regions`` in
        ``parameters`` (0: not used). None: off.
    probe_fwhm : float, optional
        The probe's FWHM in scan steps (navigation pixels). Rims grow only
        when it is known and at most :data:`RIM_MAX_PROBE_FWHM`; None: they
        do not (the release of a grain's own positions does not depend on
        it). Recorded as ``probe_fwhm_steps``.
    beam_positions : array_like of float, shape (n_positions, 2), optional
        ``(x, y)`` direct-beam centre of every position, px (NaN where
        unknown), as the decomposition measures it (``cnmf_beam_positions``).
        With ``region_patterns``, each grain's mean patterns are compared
        about the region's own mean beam (their disk images and polar
        transforms, :func:`_disk_similarity`), and its filter is taken about
        whichever of the scan's mean beam, the region's and its model
        components' (:func:`_model_offsets`) leaves its model pattern most
        isotropic: under descan the whole pattern moves with the beam, and
        about one fixed centre a patch of glass whose beam sits off centre
        shows its halo as an excess on one side, a Bragg disk to the filter,
        while rotated grains of one phase compare at shifted radii (issue 10:
        two B2 grains and one CuZr2 grain with 1.5 px of descan left
        uncorrected, k = 30, random_state 0-2: 3 / 5 / 4 clusters for 3
        phases about one centre, 3 / 3 / 3 with the beam positions). None: every region about ``centre``.
    refit : callable, optional
        With ``n_clusters`` None, ``region_patterns`` and ``disk_radius``:
        ``refit(n) -> (factors, loadings)``, ``n`` new components (shapes as
        the inputs', data units) fitted to the model of these (the signal
        layer's :func:`~hyperspy_cnmf.signals._decomposition.model_refit`).
        The components are first clustered with the model's own patterns
        (no read), the grains counted in the labels (:func:`grain_count`);
        where ``k`` is at least :data:`REFIT_OVER_COMPLETE` times the grains
        + 1, ``refit(grains + 1 + REFIT_SPARE)`` (``grains + 1`` where the
        spare's clustering labels more phases than the count's or gives the
        matrix a grain of a phase the count found twice whose disks close as
        a lattice; none where that one's does so too, labels fewer than two
        phases while the count's labelled two or more, or where
        ``refit.info["unexplained"]``, if given, exceeds
        :data:`REFIT_MAX_UNEXPLAINED`) is clustered instead, with ``region_patterns``: the result's
        components are the refit's (``refit_factors``, ``refit_loadings``).
        Recorded as ``refit_grains``, ``refit_components`` (0: none) and,
        without a refit, ``refit_note`` (why) in ``parameters``. None: the
        components as given.

    Returns
    -------
    ComponentClustering

    Raises
    ------
    ValueError
        For inconsistent shapes, fewer than 2 components, a centre outside
        the pattern, inconsistent clustering arguments, or ``region_patterns``
        or ``beam_positions`` of the wrong shape.

    Warns
    -----
    UserWarning
        For negative factors, or when beam-only clusters were dissolved below
        ``n_clusters``.

    Notes
    -----
    Positions are labelled by their *dominant* cluster: the components of a
    cluster are grouped into objects (:func:`~hyperspy_cnmf.clustering.map_objects`),
    each object map is rescaled to its own range, clusters above half their
    range on most of the scan are *extended* (the matrix), and
    :func:`~hyperspy_cnmf.clustering.dominant_labels` lets particles claim
    the positions where they reach ``particle_threshold`` of their range and
    the extended objects the rest.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import cluster_components, rotate_patterns
    >>> yy, xx = np.mgrid[:49, :49] - 24.0
    >>> def ring(r, n):
    ...     a = np.deg2rad(np.arange(n) * 360.0 / n)
    ...     return sum(np.exp(-((xx - r * np.cos(t)) ** 2 + (yy - r * np.sin(t)) ** 2) / 4)
    ...                for t in a)
    >>> a, b = ring(10, 6), ring(18, 4)
    >>> f = np.nan_to_num(rotate_patterns(np.stack([a, a, b, b]), (24, 24), [0, 20, 0, 35]))
    >>> maps = np.zeros((4, 8, 8)); maps[:2, :, :4] = 1; maps[2:, :, 4:] = 1
    >>> res = cluster_components(f, maps.reshape(4, -1), (24, 24), nav_shape=(8, 8),
    ...                          direct_beam_radius=None)
    >>> res.labels.tolist(), res.merged_factors.shape
    ([0, 0, 1, 1], (2, 49, 49))
    """
    args = dict(locals())  # the call's arguments, for the record
    if (
        refit is not None
        and n_clusters is None
        and region_patterns is not None
        and disk_radius is not None
    ):
        return _refitted(dict(args, refit=None), refit)
    if disk_radius is not None and (
        isinstance(disk_radius, (bool, str))
        or not (np.isfinite(float(disk_radius)) and float(disk_radius) > 0)
    ):
        raise ValueError(
            f"`disk_radius` must be a positive number of px or None (off), got {disk_radius!r}."
        )
    if max_enclosure is not None and not 0 < float(max_enclosure) <= 1:
        raise ValueError(
            f"`max_enclosure` must be in (0, 1] or None (off), got {max_enclosure!r}."
        )
    if probe_fwhm is not None and (
        isinstance(probe_fwhm, (bool, str))
        or not (np.isfinite(float(probe_fwhm)) and float(probe_fwhm) > 0)
    ):
        raise ValueError(
            f"`probe_fwhm` must be a positive number of scan steps or None, got {probe_fwhm!r}."
        )
    factors, loadings, components, nav_shape = _check_inputs(
        factors, loadings, components, nav_shape
    )
    if beam_positions is not None:
        beam_positions = np.asarray(beam_positions, dtype=np.float64)
        if beam_positions.shape != (loadings.shape[1], 2):
            raise ValueError(
                f"`beam_positions` must have shape (n_positions, 2) = "
                f"{(loadings.shape[1], 2)}, got {beam_positions.shape}."
            )
    if disk_radius is not None and float(disk_radius) > max(factors.shape[1:]):
        raise ValueError(
            f"`disk_radius` ({float(disk_radius):g} px) exceeds the patterns "
            f"({factors.shape[1]} x {factors.shape[2]} px)."
        )
    grid = {key: args[key] for key in _GRID_KEYS}
    similarity_kwargs = {key: args[key] for key in _SIMILARITY_KEYS}
    factor_sum = np.nansum(factors, axis=(1, 2))
    loading_sum = np.nansum(loadings, axis=1)
    cpx, dbr = _resolve_beam(
        factors, loading_sum, centre, direct_beam_radius, signal_mask
    )
    # a beam off the detector's middle: the rings to the farthest edge, their parts off the
    # detector read from their Friedel mates (it keeps its far side's rings)
    if grid["radial_range"] is None:
        grid["radial_range"] = (0.0, clustering_radius(cpx, factors.shape[1:]))
    grid["friedel"] = True
    polar, radii, sim = polar_similarity(
        factors, cpx, direct_beam_radius=dbr, **grid, **similarity_kwargs
    )
    contrib = loadings * factor_sum[:, None]  # data units: counts per position
    annulus = _annulus(factors.shape[1:], cpx, radii, dbr)
    beam_only = _beam_only(factors, annulus, min_structure_fraction)
    texture = _texture(
        contrib, nav_shape, beam_only, min_map_compactness, min_cluster_positions
    )
    labels, Z, threshold, grouped = _cut(
        sim.pseudo_distance,
        beam_only,
        texture,
        _texture_distance(polar, radii, loading_sum, texture, similarity_kwargs),
        contrib,
        method,
        n_clusters,
        distance_threshold,
    )
    split, same_crystal = 0, None
    if n_clusters is None and disk_radius is not None:
        disks = np.stack(
            [bragg_disk_image(f, cpx, float(disk_radius), dbr or 0.0) for f in factors]
        )
        disk_polar, _, disk_sim = polar_similarity(
            disks, cpx, direct_beam_radius=dbr, **grid, **similarity_kwargs
        )
        regular = ~beam_only & ~(texture & grouped)
        # the matrix (extended) cluster is amorphous: its speckle is no disk geometry
        extended = _extended_clusters(
            _smooth_maps(contrib, nav_shape, map_smoothing),
            labels,
            np.all(np.isnan(loadings), axis=0),
            dominance_percentiles,
        )
        cl_counts = np.bincount(
            labels, weights=np.nansum(contrib, axis=1), minlength=extended.size
        )
        matrix = (
            int(np.argmax(np.where(extended, cl_counts, -np.inf)))
            if extended.any()
            else None
        )
        labels, split = _split_by_bragg_disks(
            labels,
            regular & ~extended[labels],
            disk_sim.pseudo_distance,
            contrib,
            SPLIT_DISTANCE,
            matrix,
        )
        pairs = _same_crystal(disk_polar, radii, similarity_kwargs, regular)
        if pairs is not None:
            weight = np.where(regular, np.abs(factor_sum * loading_sum), 0.0)
            same_crystal = (pairs, weight)

    if grouped:
        contrib = _unmixed_contributions(
            factors, loadings, contrib, labels, beam_only, texture, annulus.ravel()
        )
    fields, dissolved, joined = _positions_of_resolved_clusters(
        contrib,
        labels,
        loadings,
        nav_shape,
        (dominance_percentiles, map_smoothing, particle_threshold),
        min_cluster_positions if n_clusters is None else 0,
        None
        if n_clusters is not None or max_enclosure is None
        else (
            float(max_enclosure),
            sim.pseudo_distance <= 2.0 * threshold,
            same_crystal,
        ),
    )
    grain = dict.fromkeys(_GRAIN_COUNTS, 0)  # 0: not used
    if region_patterns is not None and n_clusters is None and disk_radius is not None:
        fields, grain = _regroup_by_grain_patterns(
            fields,
            contrib,
            loadings,
            factors,
            nav_shape,
            region_patterns,
            (cpx, float(disk_radius), dbr, grid, similarity_kwargs, factors.shape[1:]),
            (dominance_percentiles, map_smoothing, particle_threshold),
            None if probe_fwhm is None else float(probe_fwhm),
            texture,
            beam_positions,
            factor_disks=disks,
        )
    fields.update(
        _aligned_merge(
            factors,
            cpx,
            sim,
            fields["labels"],
            beam_only,
            factor_sum,
            loading_sum,
            texture,
        )
    )
    fields["mean_patterns"] = mean_patterns(
        factors,
        loadings,
        fields["labels"],
        fields["position_labels"],
        cpx,
        fields["rotation"],
        fields["mirrored"],
        aligned=~beam_only,
    )
    parameters = _component_parameters(
        args, components, cpx, radii, polar.shape[-1], dbr, similarity_kwargs, threshold
    )
    parameters["dissolved_clusters"] = dissolved
    parameters["joined_clusters"] = joined
    parameters["split_clusters"] = split
    parameters.update(grain)
    # share of one read pass the reader reports (its ``read_fraction``), if any
    parameters["grain_pattern_reads"] = round(
        float(getattr(region_patterns, "read_fraction", 0.0)), 3
    )
    return ComponentClustering(
        **fields,
        components=components,
        linkage=Z,
        beam_only=beam_only,
        texture=texture & grouped,
        threshold=float(threshold),
        centre=np.array(cpx, dtype=np.float64),
        radii=radii,
        parameters=parameters,
        n_theta=int(polar.shape[-1]),
        centroids=_centroids(
            factors, loadings, fields["references"], fields["position_labels"]
        ),
    )
