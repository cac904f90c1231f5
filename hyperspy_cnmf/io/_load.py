"""``load``: open any supported 4D-STEM file as a ``STEM4D`` / ``LazySTEM4D``.

Used by the ``hyperspy-cnmf run`` command. Dispatch:

- HDF5 files of the ``fpd`` package (``fpd_expt/fpd_data/data``):
  :func:`~hyperspy_cnmf.io.load_fpd_hdf5`;
- py4DSTEM EMD 1.0 files (root attribute ``emd_group_type = "file"``):
  :func:`~hyperspy_cnmf.io.load_py4dstem` (h5py only, no py4DSTEM);
- anything else (``.hspy``, ``.zspy``, ``.mib``, ``.blo``, ``.emd``, ``.dm4``,
  ...): RosettaSciIO through ``hyperspy.api.load``.
"""

import os
from pathlib import Path

import numpy as np

from hyperspy_cnmf._warnings import warn

#: Files (uncompressed data) larger than this are opened lazily by default.
LAZY_THRESHOLD_BYTES = 2 * 2**30

_HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".emd", ".he5")


def _is_hdf5(path):
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == b"\x89HDF\r\n\x1a\n"
    except (OSError, IsADirectoryError):
        return False


def _is_py4dstem_emd1(path):
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("emd_group_type") not in ("file", b"file"):
                return False
            # py4DSTEM/emdfile trees carry python_class attributes
            found = []

            def visit(name, obj):
                if "python_class" in obj.attrs:
                    found.append(name)
                    return True
                return None

            f.visititems(visit)
            return bool(found)
    except (OSError, ValueError):
        return False


def _is_hspy(path):
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("file_format") in ("HyperSpy", b"HyperSpy")
    except (OSError, ValueError):
        return False


def _fpd_size(path):
    import h5py

    with h5py.File(path, "r") as f:
        d = f["fpd_expt/fpd_data/data"]
        return int(np.prod(d.shape)) * d.dtype.itemsize


def _pick_4d(obj, path):
    """One 4-dimensional signal out of what ``hs.load`` returned."""
    if isinstance(obj, (list, tuple)):
        cands = [s for s in obj if s.data.ndim == 4]
        if len(cands) != 1:
            shapes = ", ".join(str(tuple(s.data.shape)) for s in obj) or "none"
            raise ValueError(
                f"{path!r} holds {len(obj)} datasets ({shapes}) and "
                f"{'none' if not cands else len(cands)} of them is 4-dimensional; "
                "expected exactly one 4D-STEM dataset"
            )
        return cands[0]
    return obj


class _DropLogRecords:
    """Logging filter: drop HyperSpy's "please report" and reader-guess records.

    ``load`` turns a failed read into one error of its own, which says what the
    file is and what is needed.
    """

    _TEXT = ("please report this error", "Unable to infer file type")

    def filter(self, record):
        msg = record.getMessage()
        return not any(t in msg for t in self._TEXT)


class _quiet_hyperspy_io:
    def __enter__(self):
        import logging

        self._logger = logging.getLogger("hyperspy.io")
        self._filter = _DropLogRecords()
        self._logger.addFilter(self._filter)

    def __exit__(self, *exc):
        self._logger.removeFilter(self._filter)
        return False


def _known_extension(suffix):
    try:
        from rsciio import IO_PLUGINS
    except ImportError:  # pragma: no cover - HyperSpy needs RosettaSciIO
        return True
    ext = suffix.lstrip(".").lower()
    return any(
        ext in [e.lower() for e in p.get("file_extensions", ())] for p in IO_PLUGINS
    )


def _hdf5_contents(path, limit=6):
    """Datasets of an HDF5 file as ``"name" (shape) dtype`` text; only the metadata is read."""
    import h5py

    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            found.append(f"{name!r} {tuple(obj.shape)} {obj.dtype}")

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except (OSError, ValueError) as err:
        return f"no readable datasets ({err})"
    if not found:
        return "no datasets"
    more = f" and {len(found) - limit} more" if len(found) > limit else ""
    return f"{len(found)} dataset(s): " + ", ".join(found[:limit]) + more


def _read_error(path, err, lazy):
    """One clear sentence for a file that ``hs.load`` could not read."""
    suffix = Path(path).suffix.lower()
    supported = ".hspy, .zspy, .mib, .blo, .emd, .dm4, ... (RosettaSciIO), fpd HDF5 or py4DSTEM EMD 1.0"
    generic = "multiple file readers" in str(err) or not _known_extension(
        suffix
    )  # e.g. .h5, .hdf5
    if suffix not in (".hspy", ".zspy") and generic and _is_hdf5(path):
        return (
            f"cannot read {path!r}: it is an HDF5 file in none of the layouts read here (HyperSpy .hspy, fpd, "
            f"py4DSTEM EMD 1.0, RosettaSciIO's EMD/NeXus/USID/...); it holds {_hdf5_contents(path)}. Needed: one "
            "4-dimensional dataset (2 scan + 2 detector dimensions) in one of these formats, e.g. "
            "hs.signals.Signal2D(h5py.File(path)[name][()]).save('scan.zspy')"
        )
    if suffix != ".zspy" and not os.path.isdir(path) and not _known_extension(suffix):
        return (
            f"cannot read {path!r}: {suffix or 'a file without extension'!r} is not a format that "
            f"HyperSpy/RosettaSciIO reads ({err}); supported: {supported}"
        )
    if suffix == ".zspy" and not lazy:
        from hyperspy_cnmf.io._zspy import describe_corrupt_chunk

        detail = describe_corrupt_chunk(path)
        if detail:
            return f"cannot read {path!r}: the file is damaged: {detail}"
    return f"cannot read {path!r}: {err}"


def as_stem4d(signal, source="the data"):
    """Check that ``signal`` is 2+2 dimensional and make it a 4D-STEM signal.

    A 4-dimensional signal with another signal dimension (e.g. a 4D array
    loaded as ``Signal1D``) is transposed to 2 navigation + 2 signal axes.

    Raises
    ------
    ValueError
        For data that are not 4-dimensional.
    """
    am = signal.axes_manager
    if signal.data.ndim != 4:
        raise ValueError(
            f"{source} is not 4D-STEM data: it has {signal.data.ndim} dimension(s) "
            f"(shape {tuple(signal.data.shape)}, {am._get_dimension_str()}); expected "
            "2 scan + 2 detector dimensions"
        )
    if am.signal_dimension != 2:
        signal = signal.transpose(signal_axes=2)
    if np.iscomplexobj(signal.data):
        raise ValueError(f"{source} is complex; 4D-STEM intensities must be real")
    signal.set_signal_type("4D-STEM")
    return signal


def bin_detector(signal, factor):
    """Sum ``factor x factor`` detector pixels with HyperSpy's ``rebin``, lazily if lazy.

    The rows/columns left over when a detector side is not a multiple of
    ``factor`` are cropped first (with a warning), so that ``rebin`` sums
    whole blocks, eagerly or lazily; integer counts are summed as ``uint32``
    (unsigned and boolean data) or ``int64`` (signed), floats in their own
    type. A binned pixel lies at the centre of its ``factor x factor`` pixels
    (HyperSpy's axis update).

    Parameters
    ----------
    signal : STEM4D or LazySTEM4D
    factor : int

    Returns
    -------
    STEM4D or LazySTEM4D
        A new signal (the input is returned unchanged for ``factor == 1``).
    """
    if (
        isinstance(factor, bool)
        or not isinstance(factor, (int, np.integer))
        or factor < 1
    ):
        raise ValueError(
            f"the binning factor must be a positive integer, got {factor!r}"
        )
    factor = int(factor)
    if factor == 1:
        return signal
    kx, ky = signal.axes_manager.signal_axes
    if factor > min(kx.size, ky.size):
        raise ValueError(
            f"binning factor {factor} is larger than the detector ({ky.size} x {kx.size})"
        )
    nx, ny = kx.size - kx.size % factor, ky.size - ky.size % factor
    if (nx, ny) != (kx.size, ky.size):
        warn(
            f"The detector ({ky.size} x {kx.size}) is not a multiple of the binning "
            f"factor {factor}; the last rows/columns are cropped.",
            UserWarning,
        )
        # HyperSpy's rebin interpolates (eager) or refuses (lazy) otherwise
        signal = signal.isig[:nx, :ny]
    kind = np.dtype(signal.data.dtype).kind
    dtype = np.uint32 if kind in "ub" else None  # None: NumPy's sum (int64 for signed)
    out = signal.rebin(scale=(1, 1, factor, factor), dtype=dtype)
    out.set_signal_type("4D-STEM")
    return out


def _uncompressed_bytes(signal):
    """Size of the data in memory: shape x itemsize (not the size on disk)."""
    return int(np.prod(signal.data.shape)) * np.dtype(signal.data.dtype).itemsize


def _open(path, kind, suffix, lazy, kwargs):
    """The one 4D signal of a py4DSTEM or RosettaSciIO file (not yet a ``STEM4D``)."""
    if kind == "py4dstem":
        from hyperspy_cnmf.io._py4dstem import load_py4dstem

        return load_py4dstem(path, lazy=lazy)
    import hyperspy.api as hs

    if suffix == ".zspy":  # a lost chunk would be read as zeros
        from hyperspy_cnmf.io._zspy import check_zspy_chunks

        check_zspy_chunks(path)
    try:
        with _quiet_hyperspy_io():
            s = hs.load(path, lazy=lazy, **kwargs)
    except ImportError:
        raise
    except Exception as err:  # RosettaSciIO raises many types
        raise ValueError(_read_error(path, err, lazy)) from None
    return _pick_4d(s, path)


def load(path, lazy=None, bin_signal=1, **kwargs):
    """Open a 4D-STEM file as a calibrated ``STEM4D`` (or ``LazySTEM4D``).

    Parameters
    ----------
    path : str or path-like
        The file (or ``.zspy`` folder).
    lazy : bool or None, default None
        Keep the data on disk (dask). None: lazily when the (uncompressed)
        data are larger than :data:`LAZY_THRESHOLD_BYTES` (2 GiB).
    bin_signal : int, default 1
        Sum ``bin_signal x bin_signal`` detector pixels.
    **kwargs
        Passed to ``hyperspy.api.load`` (RosettaSciIO formats only).

    Returns
    -------
    STEM4D or LazySTEM4D

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file cannot be read or does not hold 4D (2 scan + 2 detector)
        data.

    Examples
    --------
    Not run by the doctests (they need files on disk):

    >>> from hyperspy_cnmf.io import load
    >>> s = load("scan.hspy")  # doctest: +SKIP
    >>> s = load("FPD_HDF5.hdf5", bin_signal=4)  # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file: {path!r}")
    suffix = Path(path).suffix.lower()
    kind = "hyperspy"
    if suffix not in (".hspy", ".zspy") and _is_hdf5(path):
        from hyperspy_cnmf.io._fpd import is_fpd_hdf5

        if is_fpd_hdf5(path):
            kind = "fpd"
        elif _is_py4dstem_emd1(path):
            kind = "py4dstem"
        elif "reader" not in kwargs and _is_hspy(
            path
        ):  # a HyperSpy file named .h5, .hdf5, ...
            kwargs["reader"] = "hspy"
    if kind == "fpd":
        from hyperspy_cnmf.io._fpd import load_fpd_hdf5

        if lazy is None:
            lazy = _fpd_size(path) > LAZY_THRESHOLD_BYTES
        return load_fpd_hdf5(path, bin_signal=bin_signal, lazy=bool(lazy))
    if lazy is None:
        # the uncompressed size (shape x itemsize), not the size on disk: open
        # lazily (only the metadata are read), then in memory if small enough
        try:
            s = _open(path, kind, suffix, True, kwargs)
        except ValueError:  # not readable lazily: the in-memory read says why
            s = None
        if s is None or _uncompressed_bytes(s) <= LAZY_THRESHOLD_BYTES:
            s = _open(path, kind, suffix, False, kwargs)
    else:
        s = _open(path, kind, suffix, bool(lazy), kwargs)
    s = as_stem4d(s, source=repr(path))
    return bin_detector(s, bin_signal)
