"""Copy result records to and from HyperSpy's ``learning_results``.

The records and their stored fields are declared once, in the dataclasses of
the core (:mod:`hyperspy_cnmf._schema`):

- :class:`~hyperspy_cnmf._schema.DecompositionRecord`: prefix ``cnmf_``;
- :class:`~hyperspy_cnmf.clustering.ComponentClustering`: prefix ``cdiff_``;
- :class:`~hyperspy_cnmf.clustering.PatternClustering`: prefix ``cpat_``.

Each stored field ``name`` becomes the attribute ``prefix + name`` of
``learning_results``, an array, a Python scalar or a string (dicts as JSON),
so that it survives ``learning_results.save``/``load`` and ``s.save`` /
``hs.load`` (HyperSpy saves every attribute generically).
"""

import hashlib
import json

import numpy as np
from hyperspy.learn import LearningResults

from hyperspy_cnmf._schema import from_stored, stored_fields, to_stored

__all__ = [
    "STALE_MESSAGE",
    "STEM4DLearningResults",
    "clear_learning_results",
    "constrained_nmf_summary",
    "decomposition_fingerprint",
    "forget_cluster_fields",
    "forget_results_of_decomposition",
    "from_learning_results",
    "loss_label",
    "stale_clustering",
    "stamp_clustering",
    "to_learning_results",
]

#: The clusterings of this package whose HyperSpy ``cluster_*`` fields they wrote.
OWN_CLUSTER_ALGORITHMS = ("cluster_diffraction", "cluster_patterns")
#: HyperSpy's clustering fields (written by ``cluster_analysis``, ``cluster_diffraction`` and
#: ``cluster_patterns``; the last run wins).
HYPERSPY_CLUSTER_FIELDS = (
    "cluster_labels",
    "cluster_centers",
    "cluster_centroids",
    "cluster_centroid_signals",
    "cluster_sum_signals",
    "cluster_distances",
    "cluster_algorithm",
    "number_of_clusters",
    "cluster_membership",
    "cluster_centers_estimated",
)
#: Attribute suffix of the decomposition fingerprint stored next to a clustering (``cdiff_``).
FINGERPRINT = "decomposition_fingerprint"
STALE_MESSAGE = "run cluster_diffraction again"


def to_learning_results(lr, record, prefix):
    """Write the stored fields of ``record`` to ``lr`` as ``prefix + name``.

    Fields that are None in the record are left as they are in ``lr``.

    Parameters
    ----------
    lr : hyperspy.learn.mva.LearningResults
    record : dataclass instance
        E.g. :class:`~hyperspy_cnmf.clustering.ComponentClustering`.
    prefix : str
        E.g. ``"cdiff_"``.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from hyperspy_cnmf._schema import DecompositionRecord
    >>> from hyperspy_cnmf.signals._store import to_learning_results
    >>> lr = SimpleNamespace()
    >>> to_learning_results(lr, DecompositionRecord(n_iter=3, parameters={}), "cnmf_")
    >>> lr.cnmf_n_iter, lr.cnmf_parameters
    (3, '{}')
    """
    for name, value in to_stored(record).items():
        setattr(lr, prefix + name, value)


def from_learning_results(lr, cls, prefix, shapes=None):
    """Read a record of class ``cls`` from the ``prefix + name`` attributes of ``lr``.

    Parameters
    ----------
    lr : hyperspy.learn.mva.LearningResults
    cls : dataclass type
    prefix : str
    shapes : dict, optional
        Field name to the trailing shape of the fields stored as columns
        (e.g. ``{"merged_factors": (qy, qx)}``); see
        :func:`hyperspy_cnmf._schema.from_stored`.

    Returns
    -------
    cls instance or None
        None when none of the stored fields is present (nothing was stored);
        missing fields and the transient ones are None.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from hyperspy_cnmf._schema import DecompositionRecord
    >>> from hyperspy_cnmf.signals._store import from_learning_results
    >>> lr = SimpleNamespace(cnmf_n_iter=3, cnmf_parameters='{"k": 2}')
    >>> rec = from_learning_results(lr, DecompositionRecord, "cnmf_")
    >>> rec.n_iter, rec.parameters
    (3, {'k': 2})
    >>> from_learning_results(SimpleNamespace(), DecompositionRecord, "cnmf_") is None
    True
    """
    values = {f.name: getattr(lr, prefix + f.name, None) for f in stored_fields(cls)}
    if all(v is None for v in values.values()):
        return None
    return from_stored(cls, values, shapes)


def clear_learning_results(lr, prefix):
    """Remove every ``prefix + name`` attribute of ``lr`` (one record's stored fields).

    All attributes with the prefix go, the declared fields of the record and
    any other (e.g. one an older version stored), so that no field of an
    older run can remain beside a newer one.

    Parameters
    ----------
    lr : hyperspy.learn.mva.LearningResults
    prefix : str
        ``"cnmf_"``, ``"cdiff_"`` or ``"cpat_"``.

    Returns
    -------
    list of str
        The names removed.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from hyperspy_cnmf.signals._store import clear_learning_results
    >>> lr = SimpleNamespace(cdiff_labels=[0, 1], cdiff_threshold=0.3, factors=None)
    >>> clear_learning_results(lr, "cdiff_")
    ['cdiff_labels', 'cdiff_threshold']
    >>> sorted(vars(lr))
    ['factors']
    """
    names = [name for name in list(vars(lr)) if name.startswith(prefix)]
    for name in names:
        delattr(lr, name)
    return names


def _array_digest(h, a):
    if a is None:
        h.update(b"None")
        return
    if hasattr(
        a, "compute"
    ):  # e.g. read lazily by hs.load(lazy=True): the values, as in memory
        a = a.compute()
    a = np.ascontiguousarray(np.asarray(a, dtype="<f8"))
    h.update(str(a.shape).encode())
    h.update(a.tobytes())


def decomposition_fingerprint(lr):
    """A digest of the decomposition in ``lr`` (``factors`` and ``loadings``, values and shapes).

    Stored next to a clustering of the components (``cdiff_decomposition_fingerprint``)
    so that a clustering is recognised as stale when the decomposition it was
    made from has changed by any route (a new ``decomposition``, a
    ``learning_results.load``, ``crop_decomposition_dimension``, ...). It
    survives ``learning_results.save``/``load`` and ``s.save``/``hs.load``,
    which keep the arrays exactly.
    """
    h = hashlib.blake2b(digest_size=16)
    _array_digest(h, getattr(lr, "factors", None))
    _array_digest(h, getattr(lr, "loadings", None))
    return h.hexdigest()


def stamp_clustering(lr, prefix="cdiff_"):
    """Record which decomposition a clustering of the components was made from."""
    setattr(lr, prefix + FINGERPRINT, decomposition_fingerprint(lr))


def stale_clustering(lr, prefix, algorithm):
    """Why the clustering stored under ``prefix`` no longer matches ``lr``, or None.

    - HyperSpy's own ``cluster_analysis`` has replaced the ``cluster_*``
      fields the clustering wrote (through a route that did not clear it);
    - for ``cdiff_``: the decomposition changed since the clustering
      (:func:`decomposition_fingerprint`). A clustering stored by an older
      version, without the fingerprint, is trusted.
    """
    current = getattr(lr, "cluster_algorithm", None)
    if getattr(lr, "cluster_labels", None) is not None and not (
        isinstance(current, str) and current in OWN_CLUSTER_ALGORITHMS
    ):
        return (
            f"HyperSpy's cluster_analysis (algorithm {current!r}) has replaced the clustering results "
            f"of {algorithm} in learning_results; run {algorithm} again"
        )
    stored = getattr(lr, prefix + FINGERPRINT, None)
    if (
        prefix == "cdiff_"
        and stored is not None
        and str(stored) != decomposition_fingerprint(lr)
    ):
        return (
            f"the clustering results belong to an older decomposition; {STALE_MESSAGE} (the "
            f"factors or loadings changed after {algorithm})"
        )
    return None


def forget_results_of_decomposition(lr, constrained):
    """After a new decomposition: drop what depended on the old one.

    The clustering of the components (``cdiff_*``, and HyperSpy's
    ``cluster_*`` fields when ``cluster_diffraction`` wrote them) always; the
    record of a constrained NMF run (``cnmf_*``) unless the new run is one.
    The clustering of the patterns (``cpat_*``) does not depend on the
    decomposition and stays.
    """
    clear_learning_results(lr, "cdiff_")
    if not constrained:
        clear_learning_results(lr, "cnmf_")
    if getattr(lr, "cluster_algorithm", None) == "cluster_diffraction":
        forget_cluster_fields(lr)


def forget_cluster_fields(lr):
    """Set HyperSpy's ``cluster_*`` fields to None (as before any clustering)."""
    for name in HYPERSPY_CLUSTER_FIELDS:
        if name in vars(lr) or hasattr(type(lr), name):
            setattr(lr, name, None)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class STEM4DLearningResults(LearningResults):
    """HyperSpy's ``LearningResults`` whose :meth:`summary` also lists this package's runs.

    Used by the 4D-STEM signals for ``learning_results`` (a subclass, no
    change to HyperSpy): the summary that ``print(s.learning_results)``,
    ``learning_results.summary()`` and ``learning_results.load`` give adds
    the settings, constraints and convergence of a constrained NMF run
    (``cnmf_*``) and the settings of ``cluster_diffraction`` /
    ``cluster_patterns`` (``cdiff_*``, ``cpat_*``). Saved and loaded exactly
    like HyperSpy's (no stored attribute is added).
    """

    def summary(self):
        """Summarize the decomposition, constraint, convergence and clustering settings.

        Returns
        -------
        str
        """
        text = super().summary()
        extra = constrained_nmf_summary(self)
        return text + ("\n\n" + extra if extra else "")


def _json(value):
    if value is None:
        return None
    if isinstance(value, dict):
        return value
    try:
        return json.loads(str(value))
    except ValueError:
        return None


def decomposition_settings(lr):
    """The settings of the last constrained NMF (``cnmf_parameters`` as a dict), or None.

    None when the last decomposition was another algorithm or left no readable
    record: the one reader of that record for the summary, the diagnostics and
    the clustering's centre.
    """
    if getattr(lr, "decomposition_algorithm", None) != "constrained_nmf":
        return None
    return _json(getattr(lr, "cnmf_parameters", None))


def constrained_nmf_summary(lr):
    """The constrained-NMF and clustering part of :meth:`STEM4DLearningResults.summary` ('' if none)."""
    blocks = []
    params = decomposition_settings(lr)
    if params is not None:
        blocks.append(_cnmf_parameters_block(params))
        blocks.append(_convergence_block(lr, params))
    for prefix, name in (
        ("cdiff_", "cluster_diffraction"),
        ("cpat_", "cluster_patterns"),
    ):
        block = _clustering_block(lr, prefix, name)
        if block is not None:
            blocks.append(block)
    return "\n\n".join(blocks)


_CNMF_SUMMARY_KEYS = (
    "solver",
    "init",
    "max_iter",
    "tol",
    "random_state",
    "sketch",
    "n_init",
    "max_exact_iter",
    "separate_components",
    "map_support",
)


def _cnmf_parameters_block(params):
    """The summary's constrained-NMF parameters: settings, map and diffraction constraints, beam."""
    primitive = not np.isfinite(
        params.get("map_resolution", np.nan)
    ) and not params.get("diffraction_constraint", False)
    head = "Primitive NMF (no constraint)" if primitive else "Constrained NMF"
    lines = [f"{head} parameters", "-" * (len(head) + 11)]
    for key in _CNMF_SUMMARY_KEYS:
        if key in params:
            lines.append(f"{key}={_fmt(params[key])}")
    res = params.get("map_resolution", np.nan)
    lines.append(
        "map constraint: off"
        if not np.isfinite(res)
        else f"map constraint: resolution={_fmt(res)} ({params.get('map_resolution_method')}), "
        f"filter={params.get('map_filter')}"
    )
    lines.append(
        f"diffraction constraint: {params.get('diffraction_constraint_mode')} closing, "
        f"size={_fmt(params.get('diffraction_constraint_size'))} px, "
        f"strength={_fmt(params.get('diffraction_constraint_strength'))}"
        if params.get("diffraction_constraint")
        else "diffraction constraint: off"
    )
    if params.get("direct_beam_mask_radius_px"):
        lines.append(
            f"direct beam left out: radius={_fmt(params['direct_beam_mask_radius_px'])} px about "
            f"(x, y)=({_fmt(params.get('direct_beam_x_px'))}, {_fmt(params.get('direct_beam_y_px'))}) px"
        )
    return "\n".join(lines)


def support_iterations_text(params):
    """``"N with the maps' supports [j, ...] + "`` of a run's parameters, or "" without them."""
    n = params.get("n_iter_support")
    return f"{n} with the maps' supports {params.get('confined_maps')} + " if n else ""


def _convergence_block(lr, params):
    """The summary's convergence block: iterations, converged, final loss."""
    loss = getattr(lr, "cnmf_loss", None)
    conv = ["Convergence", "-----------"]
    conv.append(
        f"iterations={_fmt(getattr(lr, 'cnmf_n_iter_sketch', None))} on the sketch + "
        f"{support_iterations_text(params)}{_fmt(getattr(lr, 'cnmf_n_iter', None))} exact"
    )
    conv.append(f"converged={getattr(lr, 'cnmf_converged', None)}")
    if loss is not None and np.size(loss):
        conv.append(
            f"final {loss_label(params.get('normalize_poissonian_noise'))}="
            f"{float(np.asarray(loss).ravel()[-1]):.6g}"
        )
    return "\n".join(conv)


def _clustering_block(lr, prefix, name):
    """The summary's block of one clustering (``prefix`` ``cdiff_`` or ``cpat_``), None if not run."""
    cparams = _json(getattr(lr, prefix + "parameters", None))
    labels = getattr(lr, prefix + "labels", None)
    if labels is None:
        return None
    lines = [f"Clustering parameters ({name})", "-" * (len(name) + 24)]
    what = "components" if prefix == "cdiff_" else "patterns"
    refit = (cparams or {}).get("refit_components", 0)
    if refit:
        what = (
            f"refit components (fitted to the model of the decomposition's "
            f"{len(cparams.get('refit_from_components', []))} components; "
            "cluster_diffraction(refit=False) clusters those)"
        )
    lines.append(
        f"number_of_clusters={int(np.max(labels)) + 1} of {np.size(labels)} {what}"
    )
    threshold = getattr(lr, prefix + "threshold", None)
    if threshold is not None:
        lines.append(f"threshold (1 - CC)={_fmt(float(threshold))}")
    texture = getattr(lr, prefix + "texture", None)
    if texture is not None and np.any(texture):
        lines.append(
            f"texture components={int(np.sum(texture))} "
            "(maps spread over the scan, clustered as one item)"
        )
    for key, value in (cparams or {}).items():
        if isinstance(value, (list, tuple)) and len(value) > 6:
            continue
        lines.append(f"{key}={_fmt(value)}")
    stale = stale_clustering(lr, prefix, name)
    if stale:
        lines.append(f"STALE: {stale}")
    return "\n".join(lines)


def loss_label(poisson):
    """Name of the loss of a constrained NMF run: what ``cnmf_loss`` measures.

    ``normalize_poissonian_noise=True`` (the default): the Poisson-weighted
    mean squared residual, a reduced chi-square (about 1 at the noise level);
    else the mean squared error in data units squared.
    """
    return "reduced chi-square (Poisson-weighted)" if poisson else "mean squared error"
