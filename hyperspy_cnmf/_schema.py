"""One schema for the results stored in HyperSpy's ``learning_results``.

The package stores three records in ``learning_results``, each as plain
attributes with a prefix: the decomposition run (:class:`DecompositionRecord`,
``cnmf_``), the clustering of the components
(:class:`~hyperspy_cnmf.clustering.ComponentClustering`, ``cdiff_``) and the
clustering of the patterns
(:class:`~hyperspy_cnmf.clustering.PatternClustering`, ``cpat_``). Each record
is a dataclass whose fields are declared once, with their documentation, in
the dataclass; a field made with :func:`stored` is written to
``learning_results`` and one made with :func:`transient` is a by-product of the
computation that is not. HyperSpy's ``LearningResults`` (fields declared once,
saved generically) is the model.

:func:`to_stored` and :func:`from_stored` convert a record to and from the
stored representation, arrays and strings only (a dict becomes a JSON string),
so that it survives ``learning_results.save``/``load`` and ``s.save`` /
``hs.load``. :mod:`hyperspy_cnmf.signals._store` copies that representation
to and from ``learning_results``.

This module depends on numpy only (it is imported by the numerical core).
"""

import dataclasses
import json

import numpy as np

__all__ = [
    "DecompositionRecord",
    "from_stored",
    "stored",
    "stored_fields",
    "to_stored",
    "transient",
]

_KINDS = ("array", "float", "int", "bool", "json")
_SCALARS = {"float": float, "int": int, "bool": bool}


def stored(kind="array", dtype=None, columns=False):
    """A dataclass field that is stored in ``learning_results`` (default None).

    Parameters
    ----------
    kind : {"array", "float", "int", "bool", "json"}, default "array"
        Stored as an ndarray, a Python scalar, or (``"json"``, a dict) a JSON
        string.
    dtype : numpy dtype, optional
        For arrays: stored with this dtype (default: as computed).
    columns : bool, default False
        For arrays of shape ``(n, ...)``: stored as ``(prod(...), n)``, one
        column per item, the layout of HyperSpy's ``factors``/``loadings``.

    Returns
    -------
    dataclasses.Field

    Raises
    ------
    ValueError
        For an unknown ``kind``.
    """
    if kind not in _KINDS:
        raise ValueError(f"`kind` must be one of {_KINDS}, got {kind!r}.")
    meta = {"stored": True, "kind": kind, "dtype": dtype, "columns": bool(columns)}
    return dataclasses.field(default=None, metadata=meta)


def transient():
    """A dataclass field that is *not* stored in ``learning_results`` (default None)."""
    return dataclasses.field(default=None, metadata={"stored": False})


def stored_fields(cls):
    """The stored fields of a record class (or instance), in declaration order.

    Examples
    --------
    >>> from hyperspy_cnmf._schema import DecompositionRecord, stored_fields
    >>> [f.name for f in stored_fields(DecompositionRecord)][:3]
    ['loss', 'n_iter', 'n_iter_sketch']
    """
    return [f for f in dataclasses.fields(cls) if f.metadata.get("stored", False)]


def _encode(value, meta):
    kind = meta["kind"]
    if kind == "json":
        return json.dumps(value)
    if kind in _SCALARS:
        return _SCALARS[kind](value)
    arr = (
        np.asarray(value)
        if meta["dtype"] is None
        else np.asarray(value).astype(meta["dtype"])
    )
    if meta["columns"]:
        arr = arr.reshape(arr.shape[0], -1).T.copy()
    return arr


def _decode(value, meta, shape):
    kind = meta["kind"]
    if kind == "json":
        return json.loads(str(value))
    if kind in _SCALARS:
        return _SCALARS[kind](np.asarray(value).item())
    arr = np.asarray(value)
    if meta["columns"]:
        arr = arr.T
        if shape is not None:
            arr = arr.reshape((arr.shape[0],) + tuple(shape))
    return arr


def to_stored(record):
    """The stored representation of a record: ``{field name: array, scalar or str}``.

    Fields that are None are left out.

    Parameters
    ----------
    record : dataclass instance
        A record whose fields are declared with :func:`stored` /
        :func:`transient`.

    Returns
    -------
    dict
        Field name (without prefix) to value; arrays with the declared dtype
        and layout, scalars as Python ``float``/``int``/``bool``, dicts as
        JSON strings.

    Examples
    --------
    >>> from hyperspy_cnmf._schema import DecompositionRecord, to_stored
    >>> rec = DecompositionRecord(loss=[1.0, 0.5], n_iter=2, parameters={"k": 3})
    >>> d = to_stored(rec)
    >>> d["n_iter"], d["parameters"], d["loss"].dtype
    (2, '{"k": 3}', dtype('float64'))
    """
    out = {}
    for f in stored_fields(record):
        value = getattr(record, f.name)
        if value is not None:
            out[f.name] = _encode(value, f.metadata)
    return out


def from_stored(cls, values, shapes=None):
    """Rebuild a record from its stored representation (inverse of :func:`to_stored`).

    Parameters
    ----------
    cls : dataclass type
    values : mapping
        Field name (without prefix) to stored value; missing or None fields
        are None in the record, and so are the transient fields.
    shapes : dict, optional
        For fields stored as columns: field name to the trailing shape of one
        item (e.g. ``{"merged_factors": (qy, qx)}``); without it the item stays
        flat, ``(n, prod(...))``.

    Returns
    -------
    cls instance
        Arrays are views of the stored ones where possible (no copy).

    Examples
    --------
    >>> from hyperspy_cnmf._schema import DecompositionRecord, from_stored
    >>> rec = from_stored(DecompositionRecord, {"n_iter": 4, "parameters": "{}"})
    >>> rec.n_iter, rec.parameters, rec.loss
    (4, {}, None)
    """
    shapes = shapes or {}
    kwargs = {f.name: None for f in dataclasses.fields(cls)}
    for f in stored_fields(cls):
        value = values.get(f.name)
        if value is not None:
            kwargs[f.name] = _decode(value, f.metadata, shapes.get(f.name))
    return cls(**kwargs)


@dataclasses.dataclass
class DecompositionRecord:
    """Record of one ``decomposition(algorithm="constrained_nmf")`` run.

    Stored in ``learning_results`` with the prefix ``cnmf_`` (next to
    HyperSpy's own ``factors``, ``loadings``, ...).

    Attributes
    ----------
    loss : ndarray of float64, shape (n_iter,)
        Loss per iteration (mean squared error; with
        ``normalize_poissonian_noise=True`` the Poisson-weighted one, a reduced
        chi-square, about 1 at the noise level).
    n_iter : int
        Iterations on the full data (exact phase), up to the one kept.
    n_iter_sketch : int
        Iterations on the sketch (0 without a sketch phase), up to the one
        kept: a phase whose loss cycles stops after ``STALL_ITERATIONS``
        without a new minimum and keeps its lowest iterate
        (:mod:`hyperspy_cnmf.nmf`).
    converged : bool
        Whether the last phase stopped by its rule: the relative loss change
        fell below ``tol``, or the loss stalled (above).
    map_resolution : float
        Resolved probe size of the map constraint, calibrated navigation
        units (NaN when the constraint is off).
    diffraction_constraint_size : float
        Resolved radius of the diffraction-dip constraint, detector px (NaN
        when the constraint is off).
    parameters : dict
        Every setting of the run (stored as a JSON string).
    beam_positions : ndarray of float64, shape (n_positions, 2)
        ``(x, y)`` direct-beam centre of every scan position (detector column,
        row; px, navigation order; NaN where masked), measured in the
        statistics read (:func:`~hyperspy_cnmf.nmf._kernels.block_beam_centres`);
        absent for one signal axis. The clustering compares each grain's
        patterns about its own beam (descan; ``cluster_components``'s
        ``beam_positions``).
    row_scale, col_scale : ndarray of float64, shapes (n_positions,), (n_pixels,)
        The weights the fit ran with, ``Xe = diag(row_scale) X diag(col_scale)``
        (Poisson weights, 0 where masked or left out: the direct beam's
        disk). The clustering's refit fits the model ``loadings @ factors.T``
        again with them (``cluster_diffraction(refit="auto")``); absent from
        records written before (then no refit).
    """

    loss: np.ndarray = stored(dtype=np.float64)
    n_iter: int = stored("int")
    n_iter_sketch: int = stored("int")
    converged: bool = stored("bool")
    map_resolution: float = stored("float")
    diffraction_constraint_size: float = stored("float")
    parameters: dict = stored("json")
    beam_positions: np.ndarray = stored(dtype=np.float64)
    row_scale: np.ndarray = stored(dtype=np.float64)
    col_scale: np.ndarray = stored(dtype=np.float64)
