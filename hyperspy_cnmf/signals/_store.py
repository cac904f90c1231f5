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

from hyperspy_cnmf._schema import from_stored, stored_fields, to_stored

__all__ = ["from_learning_results", "to_learning_results"]


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
