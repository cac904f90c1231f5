"""Rotation-invariant clustering of diffraction patterns (numerical core).

The clustering step of Kimoto et al., *Sci. Rep.* 15, 39143 (2025): patterns
(NMF factors, or the patterns of probe positions) are transformed to polar
coordinates about the direct beam, compared by their normalised
cross-correlation along the azimuth maximised over the rotation
(pseudo-distance ``1 - CC``), and grouped by hierarchical clustering; the
members of each cluster are rotated onto a reference and summed.

Two pipelines on plain arrays: :func:`cluster_components` (decomposition
components: factors and loadings, with the beam-only attachment, the map
objects and the dominant cluster of every probe position) and
:func:`cluster_patterns` (a stack of patterns). Their results,
:class:`ComponentClustering` and :class:`PatternClustering`, declare the
fields that the signal methods store in ``learning_results``
(:mod:`hyperspy_cnmf._schema`).

This sub-package works on plain NumPy arrays (``(..., qy, qx)``) and depends on
numpy, numba and scipy only. The HyperSpy methods live in
:mod:`hyperspy_cnmf.signals`.
"""

from hyperspy_cnmf.clustering._components import (
    CONTACT_Z,
    CONTAINED_DISKS,
    CRYSTAL_FLOOR_Z,
    CRYSTAL_Z,
    FAR_NULL_MIN_GAP,
    FAR_NULL_POSITIONS,
    GRAIN_DISTANCE,
    GRAIN_PIECE_POSITIONS,
    GRAIN_RELEASE_Z,
    LATTICE_CLOSURE,
    MAP_ARTEFACTS,
    MATRIX_OVERLAP,
    MATRIX_RISE,
    MATRIX_RISE_POSITIONS,
    MATRIX_RISE_Z,
    MAX_ENCLOSURE,
    MAX_SPLIT_OVERLAP,
    MIN_DISK_FRACTION,
    MIN_GRAIN_POSITIONS,
    MIN_MAP_COMPACTNESS,
    MIN_OBJECT_SHARE,
    NOISE_FLOOR,
    PARTICLE_RISE,
    PARTICLE_RISE_POSITIONS,
    PARTICLE_THRESHOLD,
    RIM_EDGE_FRACTION,
    RIM_MAX_PROBE_FWHM,
    RIM_NULL_SHELL,
    RIM_Z,
    SPECKLE_RATIO,
    SPLIT_DISTANCE,
    STRONG_CRYSTAL_POSITIONS,
    STRONG_CRYSTAL_Z,
    STRONG_PHASE_DISTANCE,
    ComponentClustering,
    bragg_disk_image,
    cluster_components,
    map_artefacts,
    map_compactness,
    mean_patterns,
)
from hyperspy_cnmf.clustering._hierarchical import (
    DEFAULT_DISTANCE_THRESHOLD,
    LINKAGE_METHODS,
    PatternClustering,
    align_to_references,
    attach_by_map,
    cluster_patterns,
    cluster_references,
    dominant_labels,
    hierarchical_clustering,
    largest_gap_threshold,
    map_objects,
    merge_aligned,
    order_clusters,
    polar_similarity,
)
from hyperspy_cnmf.clustering._polar import (
    default_n_theta,
    estimate_direct_beam_radius,
    find_direct_beam,
    polar_transform,
    radial_profile,
    rotate_patterns,
)
from hyperspy_cnmf.clustering._similarity import (
    SimilarityResult,
    prepare_polar,
    rotational_similarity,
)

__all__ = [
    "CONTACT_Z",
    "CONTAINED_DISKS",
    "CRYSTAL_FLOOR_Z",
    "CRYSTAL_Z",
    "FAR_NULL_MIN_GAP",
    "FAR_NULL_POSITIONS",
    "GRAIN_DISTANCE",
    "GRAIN_PIECE_POSITIONS",
    "GRAIN_RELEASE_Z",
    "LATTICE_CLOSURE",
    "MAP_ARTEFACTS",
    "MAX_ENCLOSURE",
    "MATRIX_OVERLAP",
    "MATRIX_RISE",
    "MATRIX_RISE_POSITIONS",
    "MATRIX_RISE_Z",
    "MAX_SPLIT_OVERLAP",
    "MIN_DISK_FRACTION",
    "MIN_GRAIN_POSITIONS",
    "MIN_MAP_COMPACTNESS",
    "MIN_OBJECT_SHARE",
    "NOISE_FLOOR",
    "PARTICLE_RISE",
    "PARTICLE_RISE_POSITIONS",
    "PARTICLE_THRESHOLD",
    "RIM_EDGE_FRACTION",
    "RIM_MAX_PROBE_FWHM",
    "RIM_NULL_SHELL",
    "RIM_Z",
    "SPECKLE_RATIO",
    "SPLIT_DISTANCE",
    "STRONG_CRYSTAL_POSITIONS",
    "STRONG_CRYSTAL_Z",
    "STRONG_PHASE_DISTANCE",
    "map_artefacts",
    "map_compactness",
    "mean_patterns",
    "DEFAULT_DISTANCE_THRESHOLD",
    "LINKAGE_METHODS",
    "ComponentClustering",
    "PatternClustering",
    "SimilarityResult",
    "align_to_references",
    "attach_by_map",
    "bragg_disk_image",
    "cluster_components",
    "cluster_patterns",
    "cluster_references",
    "default_n_theta",
    "estimate_direct_beam_radius",
    "dominant_labels",
    "find_direct_beam",
    "hierarchical_clustering",
    "largest_gap_threshold",
    "map_objects",
    "merge_aligned",
    "order_clusters",
    "polar_similarity",
    "polar_transform",
    "prepare_polar",
    "radial_profile",
    "rotate_patterns",
    "rotational_similarity",
]
