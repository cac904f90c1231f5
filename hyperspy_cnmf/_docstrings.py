"""Parameter descriptions shared by several docstrings, written once.

HyperSpy's docstring-snippet pattern (``hyperspy/docstrings``), with named
placeholders: a docstring holds a line ``%(name)s``, alone on its line and
indented like the parameter entries around it, and :func:`fill_doc` replaces
that line by the snippet ``name`` of :data:`SNIPPETS`, re-indented, when the
module is imported; ``help()`` and Sphinx read the filled text. Only such
whole lines are replaced: a ``%`` anywhere else in a docstring stays as it is.

A snippet is dedented: the parameter line at column 0, its description
indented by 4 spaces. Write it in words that hold wherever it is inserted:
the array functions of :mod:`hyperspy_cnmf.clustering` (all lengths in px) and
the signal methods (lengths in ``units``). Pure Python: the numerical core
imports this module.
"""

import re

_N_CLUSTERS = """\
n_clusters : int, optional
    Cut the dendrogram into this many clusters (``maxclust`` criterion).
"""

_DISTANCE_THRESHOLD = """\
distance_threshold : float or "gap", optional
    Cut the dendrogram at this pseudo-distance ``1 - CC``: groups merged at a
    height ``<= distance_threshold`` form one cluster. ``"gap"``: in the
    middle of the largest gap between successive merge heights
    (:func:`~hyperspy_cnmf.clustering.largest_gap_threshold`). With neither
    this nor ``n_clusters``:
    :data:`~hyperspy_cnmf.clustering.DEFAULT_DISTANCE_THRESHOLD` (0.3), i.e.
    groups correlating better than CC = 0.7 after the best rotation are
    merged (the cut of the author's dendrogram; on simulated precipitates with
    1-3x over-complete constrained NMF, merges within a phase were <= 0.2 and
    between phases >= 0.37). Check it on the dendrogram
    (:meth:`~hyperspy_cnmf.signals.STEM4D.plot_cluster_dendrogram`).
"""

_METHOD = """\
method : str, default "average"
    :func:`scipy.cluster.hierarchy.linkage` method. ``"average"`` (UPGMA) is
    the default: the pseudo-distance ``1 - max CC`` is not a Euclidean
    distance, so the methods that assume one (``"ward"``, ``"centroid"``,
    ``"median"``; allowed, with a warning) lose their meaning; ``"single"``
    chains different phases through intermediate (mixed, noisy) components;
    ``"complete"`` lets one poor member keep two halves of a phase apart. With
    ``"average"`` a merge height is the mean pseudo-distance between the two
    groups, i.e. one minus their mean best-rotation correlation, which reads
    directly on the dendrogram.
"""

_POLAR_GRID = """\
radial_range : tuple of float, optional
    ``(r_min, r_max)`` of the polar transform. Default ``(0, d)``, ``d`` the
    distance from the centre to the nearest detector edge (the author's
    convention), so that every ring is complete. Larger radii are allowed;
    the parts of the rings outside the detector are NaN.
delta_r : float, default 1.0
    Radial step in detector pixels.
n_theta : int, optional
    Azimuthal samples over 360 degrees. Default ``8 r_max`` (in px), rounded
    up to a fast FFT length
    (:func:`~hyperspy_cnmf.clustering.default_n_theta`): the author's
    convention, finer than one sample per pixel of the outer circumference,
    so no aliasing.
delta_theta : float, optional
    Azimuthal step in degrees, instead of ``n_theta`` (rounded to the nearest
    step dividing 360 degrees).
"""

#: The clustering's polar grid: for a beam off the detector's middle its default radial range
#: reaches the farthest edge.
_POLAR_GRID_CLUSTERING = _POLAR_GRID.replace(
    """    ``(r_min, r_max)`` of the polar transform. Default ``(0, d)``, ``d`` the
    distance from the centre to the nearest detector edge (the author's
    convention), so that every ring is complete. Larger radii are allowed;
    the parts of the rings outside the detector are NaN.
""",
    """    ``(r_min, r_max)`` of the polar transform. Default ``(0, d)``, ``d`` the
    distance from the centre to the nearest detector edge for a beam at the
    detector's middle (the author's convention: every ring complete), to
    the farthest edge for a beam more than 1 px off it along either axis
    (:func:`~hyperspy_cnmf.clustering.clustering_radius`): it keeps the
    rings of its far side. The parts of the rings outside the detector are
    read from their Friedel mates (the azimuth + 180 degrees, where that
    lies on the detector; Friedel's law: a zone-axis pattern is
    centrosymmetric), else NaN and left out of the correlations. To the
    nearest edge, a beam 12 px from two edges of a 36-px detector left 4 of
    5 components no ring outside the beam: one cluster, ARI 0.000 (``python
    benchmarks/quality_physics.py --detector-crop 12``).
""",
)

_SIMILARITY = """\
intensity_transform_function : callable, {"sqrt", "log"} or None, default None
    Applied to the polar intensities before the correlation. ``"sqrt"``:
    square root (the variance-stabilising transform of counts); ``"log"``:
    ``log(1 + x / m)`` with ``m`` each image's mean (scale-free); both clip
    negative values to 0. A compressing transform raises the weight of weak
    features (Bragg spots against a bright halo) but also of the noise and of
    small residues, such as the halo that an NMF leaves in a precipitate
    component. With the direct beam masked and the area weighting, no
    transform (the default) separated the phases of the simulated
    precipitates best, both for NMF components (margin between the
    within-phase and between-phase merges 0.24-0.28 against 0.15-0.19 with
    ``"sqrt"``) and for raw patterns.
normalize : {"pearson", "azimuthal", "cosine"}, default "pearson"
    What is subtracted before the normalised correlation. ``"pearson"``: the
    mean of the whole polar image (Pearson correlation; radial profile and
    anisotropic detail both count, so featureless, amorphous, patterns still
    match each other). ``"azimuthal"``: the mean of each ring (only the
    anisotropic part counts: featureless patterns, e.g. amorphous halos, then
    have no reproducible signal). ``"cosine"``: nothing (non-negative
    patterns always correlate strongly).
radial_weighting : None, "r" or array_like, default "r"
    Weight of each ring. ``"r"`` is the area element ``r dr dphi`` of the
    detector: the polar correlation then equals the Cartesian correlation of
    one pattern with the rotated other, and the oversampled centre does not
    dominate. None weights the polar samples equally.
mirror : bool, default False
    Also correlate with the mirrored pattern (``phi -> -phi``) and keep the
    better of the two (e.g. for enantiomorphic or twin variants, or to merge
    patterns related by a mirror).
"""

_COMPONENT_MAPS = """\
min_structure_fraction : float, default 0.1
    Components with less than this fraction of their intensity inside the
    compared annulus (outside the masked direct beam, within the radial
    range) have no diffraction to compare: an over-complete NMF makes such
    direct-beam-only components from thickness variations. They are drawn in
    the tree, but the cut (``n_clusters``, ``distance_threshold``) is made
    among the other components, so they never take a cluster slot, and each
    then joins the cluster whose map correlates best with its own
    (:func:`~hyperspy_cnmf.clustering.attach_by_map`); they are flagged in
    ``beam_only`` (``cdiff_beam_only`` in ``learning_results``). 0 switches
    this off. With the decomposition's default ``direct_beam_mask="auto"``
    they rarely occur.
min_map_compactness : float, default 0.2
    Components whose map holds less than this share of its intensity in the
    connected region around its peak
    (:func:`~hyperspy_cnmf.clustering.map_compactness`) are a *texture*
    spread over the scan, not an object: the speckle of an amorphous matrix
    that an over-complete NMF fits. They enter the cut as one item (their
    summed diffraction), so they take one cluster slot at most and do not
    pull grains whose spots lie on the halo into clusters of speckle; they
    are flagged in ``texture`` (``cdiff_texture``). The rule needs at least
    two of them and is left off when ``n_clusters`` asks for more items than
    would remain. A number in [0, 1); 0 or None switches it off
    (:data:`~hyperspy_cnmf.clustering.MIN_MAP_COMPACTNESS` gives the
    measurements). Precipitates sharing one orientation (an orientation
    relationship) make one component whose map is dotted over the scan too;
    when most of its intensity lies in object-sized regions (at least
    ``min_cluster_positions`` positions,
    :data:`~hyperspy_cnmf.clustering.MIN_OBJECT_SHARE`) it is kept as an
    object.
dominance_percentiles : tuple of float, default (0, 100)
    Range of each object map for the dominant-cluster labels
    (:func:`~hyperspy_cnmf.clustering.dominant_labels`; the rules are in the
    Notes of :meth:`~hyperspy_cnmf.signals.STEM4D.cluster_diffraction`).
map_smoothing : float, optional
    Gaussian sigma (navigation pixels) applied to the component maps before
    the map objects and the dominant-cluster labelling only (useful for noisy
    maps of an unconstrained NMF); ``merged_maps`` is not smoothed. Smoothing
    widens the objects: raise ``particle_threshold`` with it (0.15 for
    sigma = 1 px on the package's simulator).
particle_threshold : float, default 0.10
    Fraction of its own range at which a particle object claims a probe
    position (:data:`~hyperspy_cnmf.clustering.PARTICLE_THRESHOLD`; step 3 of
    the Notes of :meth:`~hyperspy_cnmf.signals.STEM4D.cluster_diffraction`).
"""

_UNITS = """\
units : {"calibrated", "px"}, default "calibrated"
    Units of ``centre``, ``radial_range`` and ``direct_beam_radius``.
"""

_CLUSTERING_SOURCE = """\
source : {"components", "patterns"}, default "components"
    The results of :meth:`~hyperspy_cnmf.signals.STEM4D.cluster_diffraction`
    or of :meth:`~hyperspy_cnmf.signals.STEM4D.cluster_patterns`.
"""

_DECOMPOSED_SIGNAL = """\
self : STEM4D or LazySTEM4D
    A signal with a decomposition (any algorithm).
"""

_COMPONENT_SUBSET = """\
components : int or list of int, optional
    The first ``components`` components, or these indices; default all.
"""

_MAP_RESOLUTION = """\
resolution : float, optional
    Probe size (FWHM) in the navigation axes' units. Default: the
    ``map_resolution`` of a constrained NMF run
    (``learning_results.cnmf_map_resolution``), else (map constraint off, or
    another algorithm) estimated as ``decomposition(map_resolution="auto")``
    does (:func:`~hyperspy_cnmf.signals._calibration.estimate_probe_fwhm`).
"""

#: The snippets by placeholder name.
SNIPPETS = {
    # the hierarchical cut (clustering.hierarchical_clustering and its callers)
    "n_clusters": _N_CLUSTERS,
    "distance_threshold": _DISTANCE_THRESHOLD,
    "method": _METHOD,
    "cluster_cut": _N_CLUSTERS + _DISTANCE_THRESHOLD + _METHOD,
    # the polar grid and the rotation-invariant similarity
    "polar_grid": _POLAR_GRID,
    "polar_grid_clustering": _POLAR_GRID_CLUSTERING,
    "similarity": _SIMILARITY,
    # the map objects and dominant labels of a component clustering
    "component_maps": _COMPONENT_MAPS,
    # signal methods only
    "units": _UNITS,
    "clustering_source": _CLUSTERING_SOURCE,
    "decomposed_signal": _DECOMPOSED_SIGNAL,
    "component_subset": _COMPONENT_SUBSET,
    "map_resolution": _MAP_RESOLUTION,
}

_PLACEHOLDER = re.compile(r"^([ \t]*)%\((\w+)\)s[ \t]*$", re.MULTILINE)


def fill_docstring(doc, snippets=None):
    """``doc`` with every placeholder line ``%(name)s`` replaced by its snippet.

    Parameters
    ----------
    doc : str
        A docstring.
    snippets : dict, optional
        Snippets by name; default :data:`SNIPPETS`.

    Returns
    -------
    str

    Raises
    ------
    KeyError
        For a placeholder without a snippet (at import, not when read).

    Examples
    --------
    >>> doc = '''Sum.
    ...
    ...     Parameters
    ...     ----------
    ...     %(units)s'''
    >>> print(fill_docstring(doc))
    Sum.
    <BLANKLINE>
        Parameters
        ----------
        units : {"calibrated", "px"}, default "calibrated"
            Units of ``centre``, ``radial_range`` and ``direct_beam_radius``.
    """
    snippets = SNIPPETS if snippets is None else snippets

    def insert(match):
        indent, name = match.groups()
        if name not in snippets:
            raise KeyError(f"No docstring snippet {name!r}; known: {sorted(snippets)}")
        lines = snippets[name].rstrip("\n").split("\n")
        return "\n".join(indent + line if line.strip() else "" for line in lines)

    return _PLACEHOLDER.sub(insert, doc)


def fill_doc(obj):
    """Decorator: fill the placeholders of ``obj.__doc__`` (see :func:`fill_docstring`).

    Docstrings stripped by ``python -OO`` (None) are left alone.
    """
    if obj.__doc__:
        obj.__doc__ = fill_docstring(obj.__doc__)
    return obj
