"""Reader for 4D-STEM HDF5 files written by the ``fpd`` package.

The ``fpd`` package (fast pixelated detector, University of Glasgow) writes
Merlin/Medipix scans to HDF5 with the layout (``fpd_version`` 0.1.x)::

    fpd_expt/fpd_data/data    (scanY, scanX, detY, detX) counts
    fpd_expt/fpd_data/dim1    scan Y positions (attrs: name, units, e.g. "nm")
    fpd_expt/fpd_data/dim2    scan X positions
    fpd_expt/fpd_data/dim3    detector Y pixels (units "pixels")
    fpd_expt/fpd_data/dim4    detector X pixels
    fpd_expt/merlin_hdr/*     Merlin acquisition header (strings)
    fpd_expt/TIA0/tags/...    tags of a simultaneous TIA (FEI) image, if any

Only ``h5py`` is needed to read it; no ``fpd`` import. ``hyperspy.api.load``
does not know this layout (it stops at "multiple file readers" for ``.hdf5``);
:func:`hyperspy_cnmf.io.load` recognises it and calls :func:`load_fpd_hdf5`.
"""

import os

import numpy as np

#: HDF5 path of the 4D dataset in an fpd file.
FPD_DATA_PATH = "fpd_expt/fpd_data"

_PIXEL_UNITS = ("pixels", "pixel", "px", "")


def is_fpd_hdf5(path):
    """True if ``path`` is an HDF5 file with the ``fpd`` package's 4D-STEM layout.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    bool
        False for non-HDF5 files and for HDF5 files without
        ``fpd_expt/fpd_data/data``.
    """
    import h5py

    try:
        with h5py.File(os.fspath(path), "r") as f:
            obj = f.get(FPD_DATA_PATH + "/data")
            return isinstance(obj, h5py.Dataset)
    except (OSError, ValueError):
        return False


def _decode(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip()
    if isinstance(value, np.ndarray) and value.shape == ():
        return _decode(value[()])
    if isinstance(value, np.generic):
        return value.item()
    return value


def _group_to_dict(group, max_items=500):
    """Scalars and short strings of an HDF5 group as a nested dict."""
    import h5py

    out = {}
    for key, obj in list(group.items())[:max_items]:
        name = str(key).replace(" ", "_").replace("%", "percent").replace(".", "_")
        if isinstance(obj, h5py.Group):
            sub = _group_to_dict(obj, max_items)
            if sub:
                out[name] = sub
        elif obj.shape == () and obj.dtype.kind in "biufSOU":
            value = _decode(obj[()])
            if isinstance(value, (str, int, float, bool)):
                out[name] = value
    for key, value in group.attrs.items():
        value = _decode(value)
        if isinstance(value, (str, int, float, bool)):
            out.setdefault("attrs", {})[str(key)] = value
    return out


def _axis_from_dim(f, path, size, default_name):
    """Axis dict (name, scale, offset, units, size) of one ``dimN`` dataset (or defaults)."""
    dset = f.get(path)
    units = ""
    scale, offset = 1.0, 0.0
    if dset is not None and dset.ndim == 1 and dset.shape[0] == size:
        values = np.asarray(dset[()], dtype=np.float64)
        units = str(_decode(dset.attrs.get("units", "")) or "")
        if size > 1 and np.all(np.isfinite(values)):
            steps = np.diff(values)
            step = float(np.median(steps))
            if step != 0 and np.allclose(steps, step, rtol=1e-3, atol=1e-9 * abs(step)):
                scale, offset = step, float(values[0])
        # offsets like -4e-8 nm are rounding noise of a zero offset
        if abs(offset) < 1e-6 * abs(scale):
            offset = 0.0
    if units.lower() in _PIXEL_UNITS:
        units = "px"
    return {
        "name": default_name,
        "scale": scale,
        "offset": offset,
        "units": units,
        "size": size,
    }


def _float(text):
    try:
        return float(str(text).split()[0])
    except (ValueError, IndexError):
        return None


def _acquisition_metadata(f):
    """``(metadata dict, original_metadata dict)`` from the TIA tags and Merlin header."""
    md, original = {}, {}
    hdr = f.get("fpd_expt/merlin_hdr")
    if hdr is not None:
        original["merlin_hdr"] = _group_to_dict(hdr)
    tia = f.get("fpd_expt/TIA0/tags")
    if tia is not None:
        original["TIA0_tags"] = _group_to_dict(tia)
    original["file_attrs"] = {
        str(k): _decode(v)
        for k, v in f.attrs.items()
        if isinstance(_decode(v), (str, int, float))
    }
    tem = {}
    desc = f.get("fpd_expt/TIA0/tags/ObjectInfo/ExperimentalDescription")
    if desc is not None:

        def item(key):
            return _decode(desc[key][()]) if key in desc else None

        energy = item("High tension_kV")
        if energy is not None and _float(energy):
            tem["beam_energy"] = _float(energy)
        cl = item("Camera length_m")
        if cl is not None and _float(cl):
            tem["camera_length"] = _float(cl) * 1e3  # HyperSpy convention: mm
        mag = item("Magnification_x")
        if mag is not None and _float(mag):
            tem["magnification"] = _float(mag)
        scope = item("Microscope")
        if scope:
            tem["microscope"] = str(scope).replace("Microscope ", "", 1)
        mode = item("Mode")
        if mode:
            tem["acquisition_mode"] = str(mode).strip()
    if "beam_energy" not in tem:
        volt = f.get(
            "fpd_expt/TIA0/tags/ObjectInfo/ExperimentalConditions/MicroscopeConditions/AcceleratingVoltage"
        )
        if volt is not None and _float(_decode(volt[()])):
            tem["beam_energy"] = _float(_decode(volt[()])) / 1e3
    if hdr is not None:
        det = {}
        for key in (
            "chip_type",
            "chip_id",
            "chip_mode",
            "counter_depth",
            "readout_system",
        ):
            if key in hdr:
                det[key] = str(_decode(hdr[key][()]))
        if det:
            tem["Detector"] = {"Diffraction": det}
    if tem:
        md["Acquisition_instrument"] = {"TEM": tem}
    stamp = original.get("merlin_hdr", {}).get("time_and_date_stamp")
    if stamp:
        from datetime import datetime

        try:
            when = datetime.strptime(str(stamp).strip(), "%m/%d/%Y %I:%M:%S %p")
        except ValueError:
            pass
        else:
            md["General"] = {
                "date": when.date().isoformat(),
                "time": when.time().isoformat(),
            }
    return md, original


def load_fpd_hdf5(path, bin_signal=1, lazy=False, chunks=None):
    """Read a 4D-STEM scan from an HDF5 file of the ``fpd`` package.

    The counts ``fpd_expt/fpd_data/data`` (scanY, scanX, detY, detX) become a
    calibrated :class:`~hyperspy_cnmf.signals.STEM4D` (or, with
    ``lazy=True``, a :class:`~hyperspy_cnmf.signals.LazySTEM4D` reading the
    file chunk by chunk). The scan axes take their step, offset and unit
    (e.g. nm) from ``dim1``/``dim2``; the detector axes are in detector
    pixels of the camera (``dim3``/``dim4``), so after binning a pixel has the
    scale ``bin_signal`` and the axes still give the unbinned pixel position.
    The beam energy (keV), camera length (mm), magnification and microscope
    of the simultaneous TIA image tags go to
    ``metadata.Acquisition_instrument.TEM``, the Merlin header and all TIA
    tags to ``original_metadata``.

    Parameters
    ----------
    path : str or path-like
        The ``.hdf5`` file.
    bin_signal : int, default 1
        Sum ``bin_signal x bin_signal`` detector pixels with HyperSpy's
        ``rebin`` (eagerly or lazily; the rows/columns left over when the
        detector size is not a multiple are cropped, with a warning). Integer
        counts are summed as ``uint32``.
    lazy : bool, default False
        Keep the data on disk: the HDF5 dataset is wrapped with
        :func:`dask.array.from_array` (the file stays open while the signal
        uses it) and nothing is read until computed.
    chunks : tuple, optional
        Dask chunks for ``lazy=True``; default: the file's own chunking along
        the scan, whole detector frames.

    Returns
    -------
    STEM4D or LazySTEM4D

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file has no ``fpd_expt/fpd_data/data`` dataset, it is not 4D,
        or ``bin_signal`` is not a positive integer no larger than the
        detector.

    Examples
    --------
    Not run by the doctests (they need a file on disk):

    >>> from hyperspy_cnmf.io import load_fpd_hdf5
    >>> s = load_fpd_hdf5("FPD_HDF5.hdf5", bin_signal=4)  # doctest: +SKIP
    >>> s  # doctest: +SKIP
    <STEM4D, title: FPD_HDF5, dimensions: (16, 16|64, 64)>
    >>> s.metadata.Acquisition_instrument.TEM.beam_energy  # doctest: +SKIP
    200.0
    """
    import h5py

    from hyperspy_cnmf.signals import STEM4D

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file: {path!r}")
    if (
        isinstance(bin_signal, bool)
        or not isinstance(bin_signal, (int, np.integer))
        or bin_signal < 1
    ):
        raise ValueError(f"bin_signal must be a positive integer, got {bin_signal!r}")
    b = int(bin_signal)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path!r} is not an HDF5 file ({err})") from None
    try:
        dset = f.get(FPD_DATA_PATH + "/data")
        if not isinstance(dset, h5py.Dataset):
            raise ValueError(
                f"{path!r} is not an fpd 4D-STEM file: no dataset '{FPD_DATA_PATH}/data'"
            )
        if dset.ndim != 4:
            raise ValueError(
                f"'{FPD_DATA_PATH}/data' in {path!r} has shape {dset.shape}; expected "
                "4 dimensions (scanY, scanX, detY, detX)"
            )
        ny, nx, qy, qx = dset.shape
        if b > min(qy, qx):
            raise ValueError(
                f"bin_signal={b} is larger than the detector ({qy} x {qx})"
            )
        ay = _axis_from_dim(f, FPD_DATA_PATH + "/dim1", ny, "y")
        ax_ = _axis_from_dim(f, FPD_DATA_PATH + "/dim2", nx, "x")
        aqy = _axis_from_dim(f, FPD_DATA_PATH + "/dim3", qy, "ky")
        aqx = _axis_from_dim(f, FPD_DATA_PATH + "/dim4", qx, "kx")
        md, original = _acquisition_metadata(f)
        quantity = _decode(dset.attrs.get("units", "")) or "Counts"
    except Exception:
        f.close()
        raise

    if lazy:
        import dask.array as da

        if chunks is None:
            # whole frames; scan blocks of ~8 MiB aligned with the file's chunks
            fy, fx = (dset.chunks or (1, 1))[:2]
            side = max(1, int(np.sqrt(8 * 2**20 / (qy * qx * dset.dtype.itemsize))))
            chunks = (
                min(ny, -(-side // fy) * fy),
                min(nx, -(-side // fx) * fx),
                -1,
                -1,
            )
        data = da.from_array(dset, chunks=chunks, lock=True)
        if data.dtype.byteorder == ">":
            data = data.astype(data.dtype.newbyteorder("="))
    else:
        try:
            data = dset[()]
        finally:
            f.close()
        if data.dtype.byteorder == ">":
            data = data.astype(data.dtype.newbyteorder("="))

    axes = []
    for a, nav in ((ay, True), (ax_, True), (aqy, False), (aqx, False)):
        axes.append(dict(a, navigate=nav))
    title = os.path.splitext(os.path.basename(path))[0]
    md.setdefault("General", {})
    md["General"].update(title=title, original_filename=os.path.basename(path))
    md["Signal"] = {"signal_type": "4D-STEM", "quantity": f"Intensity ({quantity})"}
    if lazy:
        from hyperspy_cnmf.signals import LazySTEM4D

        # the dask graph holds the h5py dataset, which keeps the file open
        s = LazySTEM4D(data, axes=axes, metadata=md, original_metadata=original)
    else:
        s = STEM4D(data, axes=axes, metadata=md, original_metadata=original)
    if b > 1:
        from hyperspy_cnmf.io._load import bin_detector

        # HyperSpy's rebin, eager or lazy: counts summed (uint32), a binned
        # pixel at the centre of its b x b pixels, the remainder cropped
        s = bin_detector(s, b)
    return s
