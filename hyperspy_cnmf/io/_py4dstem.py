"""Bridge between py4DSTEM ``DataCube`` objects and HyperSpy 4D-STEM signals.

py4DSTEM is an optional dependency (``pip install "py4dstem>=0.14.18,<0.15"``;
py4DSTEM 0.14 pins ``numpy<2``, so it usually lives in its own environment).
It is imported only inside the functions that need it, never when this module
is imported, and :func:`from_py4dstem` / :func:`as_signal` do not import it at
all: an object can only be a ``DataCube`` if py4DSTEM is already imported.
:func:`load_py4dstem` reads the EMD 1.0 files of py4DSTEM 0.14 with h5py alone
(eagerly or lazily, also with numpy 2); only :func:`to_py4dstem` and legacy
(py4DSTEM <= 0.13) files need py4DSTEM.

Axis order
----------
A py4DSTEM ``DataCube`` stores its array as ``(Rx, Ry, Qx, Qy)``. HyperSpy keeps
the array order and lists the axes of each space in reverse ("natural", x first)
order, so the same array seen as a HyperSpy signal has:

=====================  ==========  ===============  ==============
HyperSpy axis          array dim   py4DSTEM axis    HyperSpy name
=====================  ==========  ===============  ==============
navigation ``x``       1           ``Ry``           ``"x"``
navigation ``y``       0           ``Rx``           ``"y"``
signal ``x``           3           ``Qy``           ``"kx"``
signal ``y``           2           ``Qx``           ``"ky"``
=====================  ==========  ===============  ==============

``dc.data[rx, ry, qx, qy] == s.data[rx, ry, qx, qy]``, i.e.
``s.inav[ry, rx].isig[qy, qx]`` is the pixel ``dc.data[rx, ry, qx, qy]``.

Calibrations
------------
- ``R_pixel_size`` is the scale of both navigation axes, ``Q_pixel_size`` the
  scale of both signal axes (py4DSTEM has one pixel size per space, so
  :func:`to_py4dstem` refuses axes of a space with different scales or units).
- Units are translated with the tables below; a py4DSTEM unit not in the table
  is kept as it is.

  ============================  =================  ==========================
  py4DSTEM                      HyperSpy           also accepted from HyperSpy
  ============================  =================  ==========================
  Q ``"A^-1"``                  ``"1/Å"``          ``"1/A"``, ``"Å^-1"``,
                                                   ``"1/nm"`` and ``"nm^-1"``
                                                   (scale x 0.1)
  Q ``"mrad"``                  ``"mrad"``         ``"rad"`` (scale x 1000)
  Q ``"pixels"``                ``"px"``           ``"pixel"``, ``"pixels"``,
                                                   undefined
  R ``"A"``                     ``"Å"``            ``"A"``, ``"angstrom"``
  R ``"nm"``                    ``"nm"``
  R ``"um"``                    ``"µm"``           ``"um"``
  R ``"pixels"``                ``"px"``           ``"pixel"``, ``"pixels"``,
                                                   undefined
  ============================  =================  ==========================

  Any other navigation unit is passed to py4DSTEM unchanged; any other signal
  unit raises ``ValueError`` (py4DSTEM only knows ``A^-1``, ``mrad`` and
  ``pixels`` in Q).
- The origin of diffraction space (``qx0``, ``qy0``, in detector pixels):
  its mean ``get_origin_mean()`` becomes the offsets of the signal axes,
  ``offset(ky) = -qx0_mean * Q_pixel_size`` and
  ``offset(kx) = -qy0_mean * Q_pixel_size``, so that the calibrated
  coordinate of the origin pixel is 0. Per-position origins (``qx0``/``qy0``
  arrays of shape ``(Rx, Ry)``, the navigation shape of the array) are kept in
  ``metadata.Signal.py4DSTEM.origin_qx0`` / ``origin_qy0``, and the exact means
  in ``origin_qx0_mean`` / ``origin_qy0_mean``. On the way back the signal
  offsets rule: the stored values are used when they agree with the offsets,
  the per-position arrays are shifted to the offsets' mean otherwise.
- Every other calibration item holding a number, string, boolean, array or
  a tuple/list of numbers (``QR_flip``, ``QR_rotation_degrees``, ellipse ``a``,
  ``b``, ``theta``, ``probe_semiangle``...) is copied to
  ``metadata.Signal.py4DSTEM.calibration`` (tuples and lists as arrays) and
  written back by :func:`to_py4dstem`; other values (``None``, objects) are
  dropped. Private items (starting with ``_``) are never copied.
- The ``DataCube`` name is the signal title and the other way round.

Not carried over: navigation offsets (py4DSTEM has no real-space origin;
:func:`to_py4dstem` warns when they are not zero), HyperSpy axis names and the
rest of the HyperSpy metadata.
"""

import numbers
import os
import sys
import unicodedata
import warnings

import numpy as np

from hyperspy_cnmf._warnings import warn

__all__ = ["from_py4dstem", "to_py4dstem", "load_py4dstem", "as_signal"]

#: The PyPI name is ``py4DSTEM`` (pip normalises it to ``py4dstem``); the range is
#: this package's ``[py4dstem]`` extra. hyperspy_cnmf itself is not on PyPI.
INSTALL_HINT = 'pip install "py4dstem>=0.14.18,<0.15"'

_METADATA_NODE = "Signal.py4DSTEM"

# py4DSTEM unit -> HyperSpy unit
_Q_UNITS_TO_HS = {"A^-1": "1/Å", "mrad": "mrad", "pixels": "px"}
_R_UNITS_TO_HS = {"A": "Å", "nm": "nm", "um": "µm", "pixels": "px"}

# HyperSpy unit (normalised with _norm_unit) -> (py4DSTEM unit, scale factor)
_PIXELS = ("pixels", 1.0)
_Q_UNITS_TO_P4 = {
    "1/Å": ("A^-1", 1.0),
    "1/A": ("A^-1", 1.0),
    "Å^-1": ("A^-1", 1.0),
    "A^-1": ("A^-1", 1.0),
    "1/angstrom": ("A^-1", 1.0),
    "1/nm": ("A^-1", 0.1),
    "nm^-1": ("A^-1", 0.1),
    "mrad": ("mrad", 1.0),
    "rad": ("mrad", 1000.0),
    "px": _PIXELS,
    "pixel": _PIXELS,
    "pixels": _PIXELS,
}
_R_UNITS_TO_P4 = {
    "Å": ("A", 1.0),
    "A": ("A", 1.0),
    "angstrom": ("A", 1.0),
    "nm": ("nm", 1.0),
    "µm": ("um", 1.0),
    "um": ("um", 1.0),
    "px": _PIXELS,
    "pixel": _PIXELS,
    "pixels": _PIXELS,
}

# Calibration items represented by the axes (or by the origin metadata).
_MAPPED_KEYS = frozenset(
    {
        "Q_pixel_size",
        "R_pixel_size",
        "Q_pixel_units",
        "R_pixel_units",
        "qx0",
        "qy0",
        "qx0_mean",
        "qy0_mean",
        "qx0_shift",
        "qy0_shift",
    }
)


# ----------------------------------------------------------------------------
# small helpers (no py4DSTEM, no HyperSpy needed)
# ----------------------------------------------------------------------------


def _import_py4dstem(what="This feature"):
    """Import py4DSTEM or raise an ImportError with the install hint."""
    try:
        import py4DSTEM
    except ImportError as err:
        raise ImportError(
            f"{what} needs py4DSTEM (0.14.x), which is not installed or "
            f"cannot be imported ({err}). Install it with: {INSTALL_HINT} (or, in a "
            'source checkout of hyperspy_cnmf: pip install -e ".[py4dstem]"); '
            "py4DSTEM 0.14 needs numpy<2: use a separate environment."
        ) from err
    return py4DSTEM


def _is_datacube(obj):
    """True if ``obj`` is a py4DSTEM DataCube, without importing py4DSTEM."""
    py4dstem = sys.modules.get("py4DSTEM")
    if py4dstem is None:
        # py4DSTEM was never imported: obj cannot be one of its instances.
        return False
    datacube_cls = getattr(py4dstem, "DataCube", None)
    return datacube_cls is not None and isinstance(obj, datacube_cls)


def _is_hyperspy_signal(obj):
    """True if ``obj`` is a HyperSpy signal, without importing anything."""
    hs_signal = sys.modules.get("hyperspy.signal")
    return hs_signal is not None and isinstance(obj, hs_signal.BaseSignal)


def _is_undefined(units):
    return units is None or str(units).strip() in ("", "<undefined>", "Undefined")


def _norm_unit(units):
    """Normalise a unit string for table look-ups (NFKC, no spaces)."""
    return unicodedata.normalize("NFKC", str(units)).replace(" ", "")


_Q_UNITS_TO_P4 = {_norm_unit(k): v for k, v in _Q_UNITS_TO_P4.items()}
_R_UNITS_TO_P4 = {_norm_unit(k): v for k, v in _R_UNITS_TO_P4.items()}


def _units_to_hyperspy(units, space):
    """HyperSpy unit of a py4DSTEM ``space`` ("Q" or "R") unit.

    Units that are not in the table are returned unchanged.
    """
    table = _Q_UNITS_TO_HS if space == "Q" else _R_UNITS_TO_HS
    if units is None:
        return "px"
    return table.get(units, units)


def _units_to_py4dstem(units, space):
    """``(py4DSTEM unit, scale factor)`` of a HyperSpy unit in ``space``.

    The py4DSTEM pixel size is the HyperSpy scale times the factor. Raises
    ValueError for a signal (Q) unit py4DSTEM does not know.
    """
    if _is_undefined(units):
        return _PIXELS
    key = _norm_unit(units)
    if space == "Q":
        try:
            return _Q_UNITS_TO_P4[key]
        except KeyError:
            raise ValueError(
                f"Signal (diffraction) axis unit {units!r} has no py4DSTEM "
                "equivalent: py4DSTEM Q units are 'A^-1', 'mrad' or 'pixels'; "
                "use one of " + ", ".join(repr(u) for u in _Q_UNITS_TO_P4) + "."
            ) from None
    return _R_UNITS_TO_P4.get(key, (str(units), 1.0))


def _metadata_value(value):
    """A calibration value as stored in HyperSpy metadata, or None to drop it."""
    if isinstance(value, (str, bool, np.bool_)):
        return value
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (numbers.Number, np.number)):
        return value
    if isinstance(value, (tuple, list)):
        if len(value) and all(
            isinstance(v, (numbers.Number, np.number, np.bool_)) for v in value
        ):
            return np.asarray(value)
        return None
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = _metadata_value(v)
            if v is not None and isinstance(k, str) and k.isidentifier():
                out[k] = v
        return out or None
    return None


def _calibration_value(value):
    """A metadata value as written back into a py4DSTEM Calibration."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _calibration_value(v) for k, v in value.items()}
    return value


def _same(a, b):
    return bool(np.isclose(a, b, rtol=1e-9, atol=1e-12))


def _calibration_items(calibration):
    """The stored items of a py4DSTEM Calibration as a plain dict.

    ``calibration`` is a py4DSTEM ``Calibration`` (its items are what its
    getters return) or already a dict of them, e.g. as read from a file by
    :func:`_read_emd_calibration`.
    """
    if isinstance(calibration, dict):
        return calibration
    keys = calibration.keys  # a property in emdfile's Metadata
    keys = keys() if callable(keys) else keys
    return {key: calibration[key] for key in list(keys)}


def _calibration_params(calibration):
    """Plain dict of the calibration items of a py4DSTEM Calibration.

    ``calibration``: a py4DSTEM ``Calibration``, a dict of its items (the same
    mapping, without py4DSTEM) or None (uncalibrated).
    """
    params = {
        "Q_pixel_size": 1,
        "R_pixel_size": 1,
        "Q_pixel_units": "pixels",
        "R_pixel_units": "pixels",
    }
    if calibration is None:
        return params
    items = _calibration_items(calibration)
    for key in ("Q_pixel_size", "R_pixel_size", "Q_pixel_units", "R_pixel_units"):
        params[key] = items.get(key)
    # as Calibration.get_origin(): both or neither
    qx0, qy0 = items.get("qx0"), items.get("qy0")
    if qx0 is not None and qy0 is not None:
        params["qx0"], params["qy0"] = qx0, qy0
    # as Calibration.get_origin_mean(): always a pair, possibly of None
    params["qx0_mean"], params["qy0_mean"] = (
        items.get("qx0_mean"),
        items.get("qy0_mean"),
    )
    for key, value in items.items():
        if key in _MAPPED_KEYS or key.startswith("_"):
            continue
        params[key] = value
    return params


# ----------------------------------------------------------------------------
# EMD 1.0 files with h5py only (the layout of emdfile, which py4DSTEM 0.14 writes)
# ----------------------------------------------------------------------------

#: The items a new py4DSTEM ``Calibration`` starts with; a file's items update
#: them (``Calibration.from_h5``).
_CALIBRATION_DEFAULTS = {
    "Q_pixel_size": 1,
    "R_pixel_size": 1,
    "Q_pixel_units": "pixels",
    "R_pixel_units": "pixels",
    "QR_flip": False,
}


def _decode_attr(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _scalar(value):
    return value.item() if isinstance(value, (np.ndarray, np.generic)) else value


def _read_emd_item(obj):
    """One emdfile Metadata item (dataset or group with a ``type`` attribute).

    Mirrors ``emdfile.Metadata._read_item`` (emdfile 0.0.16): the value as
    py4DSTEM holds it after ``py4DSTEM.read``.
    """
    kind = _decode_attr(obj.attrs.get("type"))
    if kind == "dict":
        return _read_emd_metadata(obj)
    if kind == "None":
        return None
    if kind == "string":
        value = _scalar(obj[()])
        value = _decode_attr(value)
        return None if value == "_None" else value
    if kind in ("number", "bool"):
        return _scalar(obj[()])
    if kind == "array":
        return np.array(obj)
    if kind in ("tuple", "list"):
        values = obj[...]
        return tuple(values) if kind == "tuple" else list(values)
    if kind in (
        "tuple_of_arrays",
        "list_of_arrays",
        "tuple_of_tuples",
        "tuple_of_strings",
        "list_of_strings",
    ):
        out = []
        for i in range(int(obj.attrs["length"])):
            x = obj[str(i)][...]
            if kind.endswith("_of_arrays"):
                x = np.array(x)
            elif kind.endswith("_of_strings"):
                x = _decode_attr(x.item())
            else:  # tuple_of_tuples
                x = x.item() if x.ndim == 0 else tuple(x)
            out.append(x)
        return out if kind.startswith("list") else tuple(out)
    raise ValueError(f"unrecognized EMD metadata item type {kind!r} at {obj.name!r}")


def _read_emd_metadata(group):
    """An emdfile Metadata group (or ``dict`` item) as a dict, with h5py only."""
    return {key: _read_emd_item(obj) for key, obj in group.items()}


def _read_emd_calibration(f, path):
    """The Calibration items of the tree holding the node ``path`` (dict), or None.

    py4DSTEM 0.14 keeps one calibration per tree, in
    ``<root>/metadatabundle/calibration``.
    """
    root = path.strip("/").split("/")[0]
    group = f.get(f"{root}/metadatabundle/calibration")
    if group is None:
        return None
    items = dict(_CALIBRATION_DEFAULTS)
    items.update(_read_emd_metadata(group))
    return items


# ----------------------------------------------------------------------------
# parts <-> HyperSpy signal (no py4DSTEM needed)
# ----------------------------------------------------------------------------


_DEFAULT_CHUNKS = ("auto", "auto", -1, -1)  # whole patterns in every chunk


class _ArrayView:
    """The minimal array interface over an in-memory array, without ``copy``.

    :func:`dask.array.from_array` copies NumPy arrays (and anything with a
    ``copy`` method) before wrapping them; through this view it slices the
    original array when a chunk is computed, so a lazy signal made from a
    DataCube shares its memory.
    """

    def __init__(self, array):
        self._array = array
        self.shape = array.shape
        self.ndim = array.ndim
        self.dtype = array.dtype

    def __getitem__(self, key):
        return self._array[key]


def _signal_from_parts(data, params, name="datacube", lazy=False, chunks=None):
    """Build a STEM4D/LazySTEM4D from an (Rx, Ry, Qx, Qy) array and calibration."""
    if getattr(data, "ndim", None) != 4:
        raise ValueError(
            "A py4DSTEM DataCube must be 4D (Rx, Ry, Qx, Qy); got data of "
            f"shape {getattr(data, 'shape', None)}."
        )
    q_size = params.get("Q_pixel_size")
    r_size = params.get("R_pixel_size")
    q_size = 1.0 if q_size is None else q_size
    r_size = 1.0 if r_size is None else r_size
    q_units = _units_to_hyperspy(params.get("Q_pixel_units"), "Q")
    r_units = _units_to_hyperspy(params.get("R_pixel_units"), "R")
    qx0_mean = params.get("qx0_mean")
    qy0_mean = params.get("qy0_mean")
    offset_qx = 0.0 if qx0_mean is None else -float(qx0_mean) * q_size
    offset_qy = 0.0 if qy0_mean is None else -float(qy0_mean) * q_size

    def axis(size, name, scale, offset, units, navigate):
        return dict(
            size=size,
            name=name,
            scale=scale,
            offset=offset,
            units=units,
            navigate=navigate,
        )

    nrx, nry, nqx, nqy = data.shape
    axes = [
        axis(nrx, "y", r_size, 0.0, r_units, True),  # Rx
        axis(nry, "x", r_size, 0.0, r_units, True),  # Ry
        axis(nqx, "ky", q_size, offset_qx, q_units, False),  # Qx
        axis(nqy, "kx", q_size, offset_qy, q_units, False),  # Qy
    ]

    p4 = {}
    for key in ("qx0", "qy0"):
        value = params.get(key)
        if value is not None:
            p4["origin_" + key] = np.asarray(value) if np.ndim(value) else value
    for key in ("qx0_mean", "qy0_mean"):
        value = params.get(key)
        if value is not None:
            p4["origin_" + key] = value
    calib = {}
    for key, value in params.items():
        if key in _MAPPED_KEYS or key.startswith("_") or not key.isidentifier():
            continue
        value = _metadata_value(value)
        if value is not None:
            calib[key] = value
    if calib:
        p4["calibration"] = calib
    metadata = {"General": {"title": str(name) if name else ""}}
    if p4:
        metadata["Signal"] = {"py4DSTEM": p4}

    if lazy:
        import dask.array as da

        from hyperspy_cnmf.signals import LazySTEM4D

        if not isinstance(data, da.Array):
            chunks = _DEFAULT_CHUNKS if chunks is None else chunks
            if isinstance(data, np.ndarray):
                # dask.array.from_array copies NumPy input: wrap it so that
                # chunks are sliced out of the DataCube's array at compute time.
                data = da.from_array(
                    _ArrayView(data),
                    chunks=chunks,
                    name=False,
                    meta=np.empty((0,) * data.ndim, dtype=data.dtype),
                )
            else:  # e.g. an h5py Dataset: read chunk by chunk
                data = da.from_array(data, chunks=chunks, lock=True)
        if data.dtype.byteorder == ">":
            data = data.astype(data.dtype.newbyteorder("="))
        return LazySTEM4D(data, axes=axes, metadata=metadata)

    from hyperspy_cnmf.signals import STEM4D

    if not isinstance(data, np.ndarray):
        data = np.asarray(data)  # e.g. an h5py Dataset
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("="))
    return STEM4D(data, axes=axes, metadata=metadata)


def _datacube_axes(signal):
    """The axes ``(Rx, Ry, Qx, Qy)`` of a 2+2 dimensional signal with uniform axes."""
    if not _is_hyperspy_signal(signal):
        raise TypeError(
            f"Expected a HyperSpy signal, got {type(signal).__module__}."
            f"{type(signal).__qualname__}."
        )
    am = signal.axes_manager
    if am.navigation_dimension != 2 or am.signal_dimension != 2:
        raise ValueError(
            "py4DSTEM DataCubes are 4D: the signal needs 2 navigation and 2 signal "
            f"dimensions, got {am.navigation_dimension} navigation and "
            f"{am.signal_dimension} signal dimension(s) "
            f"(shape {am.navigation_shape}|{am.signal_shape})."
        )
    # array order: (Rx, Ry, Qx, Qy) = (nav y, nav x, sig y, sig x)
    axes = (*am.navigation_axes[::-1], *am.signal_axes[::-1])
    for ax in axes:
        if not getattr(ax, "is_uniform", False):
            raise ValueError(
                f"Axis {ax.name!r} is not uniform: py4DSTEM needs uniform axes."
            )
    return axes


def _pixel_size(ax_a, ax_b, which, label):
    """The single py4DSTEM ``(size, units)`` of two axes of one space ("R" or "Q")."""
    unit_a, factor_a = _units_to_py4dstem(ax_a.units, which)
    unit_b, factor_b = _units_to_py4dstem(ax_b.units, which)
    size_a = ax_a.scale * factor_a
    size_b = ax_b.scale * factor_b
    if unit_a != unit_b or not _same(size_a, size_b):
        raise ValueError(
            f"py4DSTEM has a single {which} pixel size: the {label} axes "
            f"differ ({ax_a.name}: {ax_a.scale} {ax_a.units}, "
            f"{ax_b.name}: {ax_b.scale} {ax_b.units})."
        )
    return size_a, unit_a


def _origin_params(stored, ax_qx, ax_qy, nav_shape):
    """The origin calibration items: the offsets rule, the stored metadata refines them."""
    params = {}
    for key, ax in (("qx0", ax_qx), ("qy0", ax_qy)):
        mean = -ax.offset / ax.scale
        stored_mean = stored.get(f"origin_{key}_mean")
        if stored_mean is not None and _same(stored_mean, mean):
            mean = _calibration_value(stored_mean)
        value = stored.get(f"origin_{key}")
        if value is not None and np.ndim(value) and np.shape(value) != nav_shape:
            warn(
                f"metadata.{_METADATA_NODE}.origin_{key} has shape "
                f"{np.shape(value)}, not the navigation shape {nav_shape} "
                "(the signal was probably cropped): only the mean origin is "
                "kept.",
                UserWarning,
            )
            value = None
        if value is not None:
            value = np.asarray(value) if np.ndim(value) else value
            if not _same(np.mean(value), mean):
                value = value - np.mean(value) + mean
            params[key] = _calibration_value(value)
            params[key + "_mean"] = np.mean(value)
        elif ax.offset != 0 or stored_mean is not None:
            params[key + "_mean"] = mean
    return params


def _parts_from_signal(signal):
    """``(data, name, params)`` of a 2+2 dimensional HyperSpy signal.

    ``params`` is a plain dict of py4DSTEM calibration items. Raises
    TypeError/ValueError for signals py4DSTEM cannot represent.
    """
    ax_rx, ax_ry, ax_qx, ax_qy = _datacube_axes(signal)
    r_size, r_units = _pixel_size(ax_rx, ax_ry, "R", "navigation")
    q_size, q_units = _pixel_size(ax_qx, ax_qy, "Q", "signal")

    if ax_rx.offset != 0 or ax_ry.offset != 0:
        warn(
            "py4DSTEM has no real-space origin: the navigation axis offsets "
            f"({ax_ry.offset}, {ax_rx.offset}) are not carried over.",
            UserWarning,
        )

    params = {
        "Q_pixel_size": q_size,
        "R_pixel_size": r_size,
        "Q_pixel_units": q_units,
        "R_pixel_units": r_units,
    }

    md = signal.metadata
    stored = {}
    if md.has_item(_METADATA_NODE):
        stored = md.get_item(_METADATA_NODE).as_dictionary()
    extras = stored.get("calibration") or {}
    for key, value in extras.items():
        if key in _MAPPED_KEYS or key.startswith("_"):
            continue
        params[key] = _calibration_value(value)
    params.update(_origin_params(stored, ax_qx, ax_qy, (ax_rx.size, ax_ry.size)))

    name = signal.metadata.get_item("General.title", "")
    return signal.data, (str(name) if name else "datacube"), params


# ----------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------


def from_py4dstem(datacube, lazy=False, chunks=None):
    """Convert a py4DSTEM ``DataCube`` to a HyperSpy 4D-STEM signal.

    The array is not copied: an eager signal shares memory with the
    DataCube, a lazy one wraps it with :func:`dask.array.from_array`.
    The axes, units and origin are mapped as described in
    :mod:`hyperspy_cnmf.io._py4dstem` (``dc.data[rx, ry, qx, qy]`` is
    ``s.data[rx, ry, qx, qy]``; navigation ``x`` is ``Ry``, signal ``kx`` is
    ``Qy``).

    Parameters
    ----------
    datacube : py4DSTEM.DataCube
        The 4D-STEM data cube, ``(Rx, Ry, Qx, Qy)``.
    lazy : bool, default False
        Return a :class:`~hyperspy_cnmf.signals.LazySTEM4D` backed by a dask
        array wrapping ``datacube.data`` (no copy) instead of a
        :class:`~hyperspy_cnmf.signals.STEM4D`.
    chunks : tuple or str, optional
        Dask chunks when ``lazy=True``; default ``("auto", "auto", -1, -1)``
        (whole diffraction patterns in every chunk).

    Returns
    -------
    STEM4D or LazySTEM4D
        ``signal_type="4D-STEM"``, titled with the DataCube name; per-position
        origins and other calibration items under
        ``metadata.Signal.py4DSTEM``.

    Raises
    ------
    TypeError
        If ``datacube`` is not a py4DSTEM DataCube.
    ValueError
        If its data is not 4D.

    Examples
    --------
    The lines that need py4DSTEM (an optional dependency) are not run by the
    doctests; ``tests/test_py4dstem.py`` tests these conversions in its own
    environment.

    >>> import numpy as np
    >>> import py4DSTEM  # doctest: +SKIP
    >>> from hyperspy_cnmf.io import from_py4dstem
    >>> dc = py4DSTEM.DataCube(np.random.rand(4, 5, 16, 16))  # doctest: +SKIP
    >>> dc.calibration.set_Q_pixel_size(0.02)  # doctest: +SKIP
    >>> dc.calibration.set_Q_pixel_units("A^-1")  # doctest: +SKIP
    >>> s = from_py4dstem(dc)  # doctest: +SKIP
    >>> s  # doctest: +SKIP
    <STEM4D, title: datacube, dimensions: (5, 4|16, 16)>
    >>> s.axes_manager.signal_axes[0].units  # doctest: +SKIP
    '1/Å'
    """
    if not _is_datacube(datacube):
        raise TypeError(
            "from_py4dstem expects a py4DSTEM DataCube, got "
            f"{type(datacube).__module__}.{type(datacube).__qualname__}."
        )
    with warnings.catch_warnings():
        # DataCube.calibration warns and returns None when it has no root.
        warnings.simplefilter("ignore")
        calibration = datacube.calibration
    params = _calibration_params(calibration)
    return _signal_from_parts(
        datacube.data,
        params,
        name=getattr(datacube, "name", "datacube"),
        lazy=lazy,
        chunks=chunks,
    )


def to_py4dstem(signal):
    """Convert a 2+2 dimensional HyperSpy signal to a py4DSTEM ``DataCube``.

    The inverse of :func:`from_py4dstem`: navigation ``(x, y)`` becomes
    ``(Ry, Rx)`` and signal ``(kx, ky)`` becomes ``(Qy, Qx)`` (the array is
    not transposed), the axis scales become the R and Q pixel sizes (units
    translated, e.g. ``"1/nm"`` to ``"A^-1"`` with the scale divided by 10),
    the signal offsets the origin (``qx0 = -offset(ky) / scale``,
    ``qy0 = -offset(kx) / scale``, refined by the per-position arrays in
    ``metadata.Signal.py4DSTEM``), and the title the DataCube name. An
    in-memory signal shares its array with the DataCube; a lazy signal is
    computed.

    Parameters
    ----------
    signal : hyperspy.signals.BaseSignal
        A signal with 2 navigation and 2 signal dimensions, uniform axes, and
        the same scale and units on both axes of each space.

    Returns
    -------
    py4DSTEM.DataCube

    Raises
    ------
    TypeError
        If ``signal`` is not a HyperSpy signal.
    ValueError
        If it is not 2+2 dimensional, has non-uniform axes, different scales
        or units within a space, or signal units unknown to py4DSTEM.
    ImportError
        If py4DSTEM is not installed (``pip install "py4dstem>=0.14.18,<0.15"``).

    Examples
    --------
    >>> import numpy as np
    >>> import hyperspy.api as hs
    >>> from hyperspy_cnmf.io import to_py4dstem
    >>> s = hs.signals.Signal2D(np.random.rand(4, 5, 16, 16))
    >>> s.set_signal_type("4D-STEM")
    >>> for ax in s.axes_manager.signal_axes:
    ...     ax.scale, ax.units, ax.offset = 0.02, "1/Å", -0.16

    Not run by the doctests (py4DSTEM is an optional dependency):

    >>> dc = to_py4dstem(s)  # doctest: +SKIP
    >>> dc.calibration.get_Q_pixel_size(), dc.calibration.get_Q_pixel_units()  # doctest: +SKIP
    (0.02, 'A^-1')
    >>> dc.calibration.get_origin_mean()  # doctest: +SKIP
    (8.0, 8.0)
    """
    data, name, params = _parts_from_signal(signal)
    py4dstem = _import_py4dstem()
    if signal._lazy:
        data = data.compute()
    datacube = py4dstem.DataCube(data=data, name=name)
    cal = datacube.calibration
    cal.set_Q_pixel_size(params.pop("Q_pixel_size"))
    cal.set_R_pixel_size(params.pop("R_pixel_size"))
    cal.set_Q_pixel_units(params.pop("Q_pixel_units"))
    cal.set_R_pixel_units(params.pop("R_pixel_units"))
    qx0 = params.pop("qx0", None)
    qy0 = params.pop("qy0", None)
    qx0_mean = params.pop("qx0_mean", None)
    qy0_mean = params.pop("qy0_mean", None)
    if qx0 is not None:
        cal.set_qx0(qx0)
    elif qx0_mean is not None:
        cal.set_qx0_mean(qx0_mean)
    if qy0 is not None:
        cal.set_qy0(qy0)
    elif qy0_mean is not None:
        cal.set_qy0_mean(qy0_mean)
    for key, value in params.items():
        cal[key] = value
    datacube.calibrate()
    return datacube


def _find_datacubes(filename):
    """``(is_emd1, [paths of DataCube groups], [(path, class) of data nodes])``."""
    import h5py

    cubes, others = [], []
    with h5py.File(filename, "r") as f:
        is_emd1 = f.attrs.get("emd_group_type") in ("file", b"file")
        if not is_emd1:
            return False, cubes, others

        def visit(path, obj):
            if not isinstance(obj, h5py.Group):
                return
            gtype = obj.attrs.get("emd_group_type")
            if isinstance(gtype, bytes):
                gtype = gtype.decode()
            if gtype in (None, "root", "metadatabundle", "metadata", "file"):
                return
            pclass = obj.attrs.get("python_class", "")
            if isinstance(pclass, bytes):
                pclass = pclass.decode()
            if pclass == "DataCube":
                cubes.append(path)
            else:
                others.append((path, pclass or gtype))

        f.visititems(visit)
    return True, cubes, others


def _pick_datacube(obj, where):
    """The single DataCube in a py4DSTEM read result (object, tree or list)."""
    if _is_datacube(obj):
        return obj
    found = []

    def walk(node, path):
        branch = getattr(node, "_branch", None)
        if branch is None:
            return
        for key, child in branch.items():
            child_path = f"{path}/{key}" if path else key
            if _is_datacube(child):
                found.append((child_path, child))
            walk(child, child_path)

    walk(obj, getattr(obj, "name", ""))
    if len(found) == 1:
        return found[0][1]
    if not found:
        raise ValueError(
            f"No py4DSTEM DataCube found in {where} (read as {type(obj).__name__}"
            f"{': ' + repr(obj) if isinstance(obj, list) else ''}); pass "
            "`datapath` to select the data."
        )
    raise ValueError(
        f"Several DataCubes in {where}: "
        + ", ".join(p for p, _ in found)
        + "; pass one of them as `datapath`."
    )


def load_py4dstem(filename, lazy=False, datapath=None, chunks=None, **kwargs):
    """Read the DataCube of a py4DSTEM file as a HyperSpy 4D-STEM signal.

    py4DSTEM 0.14 writes EMD 1.0 files (HDF5): one or more data trees, each
    a root group holding the calibration (``<root>/metadatabundle/calibration``,
    shared by the whole tree) and any number of data nodes: ``DataCube``
    (4D-STEM data), ``DiffractionSlice``/``VirtualDiffraction`` (2D
    patterns), ``RealSlice``/``VirtualImage`` (images), ``Probe``,
    ``BraggVectors``, ``QPoints``, ``PointList(Array)``, ``Custom`` and
    nested nodes derived from them. This function finds the DataCube groups
    (by their ``python_class`` attribute) without reading any data: with one
    DataCube in the file it is chosen, with several ``datapath`` must name
    one. EMD 1.0 files are read with h5py alone (py4DSTEM is neither needed
    nor imported, so this works with numpy 2); the array is
    ``<datacube>/data`` (Rx, Ry, Qx, Qy) and the calibration is mapped exactly
    as :func:`from_py4dstem` maps a DataCube's. Files written by
    py4DSTEM <= 0.13 (not EMD 1.0) are read with ``py4DSTEM.read`` (eagerly,
    ``**kwargs`` passed to it), which needs py4DSTEM, and must hold a single
    DataCube.

    Parameters
    ----------
    filename : str or path-like
        The ``.h5``/``.emd`` file.
    lazy : bool, default False
        If True, the data stays on disk: the HDF5 dataset is wrapped in a dask
        array read chunk by chunk (the file is kept open while the signal
        uses it) and a :class:`~hyperspy_cnmf.signals.LazySTEM4D` is
        returned.
    datapath : str, optional
        HDF5 path of the DataCube group, e.g. ``"datacube_root/datacube"``
        (the error for a file with several DataCubes lists them); needed when
        the file holds several DataCubes.
    chunks : tuple or str, optional
        Dask chunks when ``lazy=True``; default ``("auto", "auto", -1, -1)``
        (whole patterns, scan blocks aligned with the file's own chunks).
    **kwargs
        Passed to ``py4DSTEM.read`` for legacy (py4DSTEM <= 0.13) files.

    Returns
    -------
    STEM4D or LazySTEM4D

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file holds no DataCube, or several and ``datapath`` is not
        given, or ``datapath`` is not a DataCube.
    ImportError
        For a legacy (not EMD 1.0) file when py4DSTEM is not installed
        (``pip install "py4dstem>=0.14.18,<0.15"``).

    Examples
    --------
    Not run by the doctests (they need a file on disk):

    >>> from hyperspy_cnmf.io import load_py4dstem
    >>> s = load_py4dstem("scan.h5")  # doctest: +SKIP
    >>> s_lazy = load_py4dstem("scan.h5", lazy=True)  # doctest: +SKIP
    >>> s_lazy  # doctest: +SKIP
    <LazySTEM4D, title: datacube, dimensions: (5, 4|16, 16)>
    """
    filename = os.fspath(filename)
    if not os.path.exists(filename):
        raise FileNotFoundError(f"No such file: {filename!r}")

    is_emd1, cubes, others = _find_datacubes(filename)
    if not is_emd1:
        # legacy py4DSTEM (<= 0.13) or EMD 0.1 file: let py4DSTEM read it all
        py4dstem = _import_py4dstem(
            f"{filename!r} is not an EMD 1.0 file (py4DSTEM <= 0.13 or EMD 0.1?): reading it"
        )
        obj = py4dstem.read(filename, datapath=datapath, **kwargs)
        return from_py4dstem(
            _pick_datacube(obj, repr(filename)), lazy=lazy, chunks=chunks
        )

    if datapath is not None:
        path = datapath.strip("/")
        if path not in cubes:
            raise ValueError(
                f"{datapath!r} is not a DataCube in {filename!r}; DataCubes: "
                f"{cubes or 'none'}."
            )
    elif len(cubes) == 1:
        path = cubes[0]
    elif not cubes:
        content = ", ".join(f"{p} ({c})" for p, c in others) or "no data nodes"
        raise ValueError(
            f"No py4DSTEM DataCube in {filename!r}; it contains: {content}."
        )
    else:
        raise ValueError(
            f"Several DataCubes in {filename!r}: {', '.join(cubes)}; pass one of "
            "them as `datapath`."
        )

    import h5py

    f = h5py.File(filename, "r")  # with lazy=True, kept open by the dask graph
    try:
        params = _calibration_params(_read_emd_calibration(f, path))
        dataset = f[f"{path}/data"]
        data = dataset if lazy else dataset[()]
        signal = _signal_from_parts(
            data, params, name=path.split("/")[-1], lazy=lazy, chunks=chunks
        )
    except BaseException:
        f.close()
        raise
    if not lazy:
        f.close()
    return signal


def as_signal(obj, lazy=False):
    """Return ``obj`` as a HyperSpy signal, converting a py4DSTEM DataCube.

    Use it where a function accepts "a signal": a HyperSpy signal is returned
    unchanged (py4DSTEM is not imported), a py4DSTEM ``DataCube`` is converted
    with :func:`from_py4dstem`.

    Parameters
    ----------
    obj : hyperspy.signals.BaseSignal or py4DSTEM.DataCube
        The data.
    lazy : bool, default False
        For a DataCube: return a lazy signal (see :func:`from_py4dstem`).

    Returns
    -------
    hyperspy.signals.BaseSignal
        ``obj`` itself, or the converted DataCube (a STEM4D/LazySTEM4D).

    Raises
    ------
    TypeError
        For any other object.

    Examples
    --------
    >>> import numpy as np
    >>> import hyperspy.api as hs
    >>> from hyperspy_cnmf.io import as_signal
    >>> s = hs.signals.Signal2D(np.zeros((2, 3, 4, 4)))
    >>> as_signal(s) is s
    True
    >>> as_signal(np.zeros((2, 3, 4, 4)))
    Traceback (most recent call last):
    ...
    TypeError: Expected a HyperSpy signal or a py4DSTEM DataCube, got numpy.ndarray.
    """
    if _is_hyperspy_signal(obj):
        return obj
    if _is_datacube(obj):
        return from_py4dstem(obj, lazy=lazy)
    raise TypeError(
        "Expected a HyperSpy signal or a py4DSTEM DataCube, got "
        f"{type(obj).__module__}.{type(obj).__qualname__}."
    )
