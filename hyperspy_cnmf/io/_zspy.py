"""Integrity checks of ``.zspy`` (zarr) files, without reading the data.

zarr reads a chunk that is absent from the store as the array's fill value
(0 for HyperSpy's files), so a file with a lost chunk loads without an error
and is analysed as if the probe had recorded nothing there.
:func:`check_zspy_chunks` compares the chunk keys present in the store with the
chunk grid of each signal's data array: a listing of keys, no chunk is read or
decompressed. :func:`find_corrupt_chunk` is for the failure path only: it
decodes one chunk at a time to name the one that cannot be read.

Written for zarr 2 (RosettaSciIO's ``.zspy`` reader needs ``zarr<3``).
"""

import itertools
import os
import zipfile


def _open(path):
    """``(group, store)`` of a ``.zspy`` folder or zip file, read-only."""
    import zarr

    store = None
    if os.path.isfile(path) and zipfile.is_zipfile(path):
        store = zarr.storage.ZipStore(path, mode="r")
        return zarr.open_group(store=store, mode="r"), store
    return zarr.open_group(path, mode="r"), store


def _data_arrays(group):
    """``(name, array)`` of each signal's data array (``Experiments/<title>/data``)."""
    import zarr

    exps = group["Experiments"] if "Experiments" in group else None
    if exps is None or not isinstance(exps, zarr.hierarchy.Group):
        return []
    out = []
    for title, node in exps.groups():
        if "data" in node and isinstance(node["data"], zarr.core.Array):
            out.append((f"Experiments/{title}/data", node["data"]))
    return out


def _chunk_key(arr, idx):
    key_of = getattr(arr, "_chunk_key", None)
    if key_of is not None:
        return key_of(idx)
    prefix = f"{arr.path}/" if arr.path else ""
    return prefix + ".".join(str(i) for i in idx)


def _grid(arr):
    return itertools.product(*(range(n) for n in arr.cdata_shape)) if arr.ndim else [()]


def _region(arr, idx):
    """The array region covered by chunk ``idx``, as text (``[4:8, 0:16, ...]``)."""
    parts = []
    for i, c, n in zip(idx, arr.chunks, arr.shape, strict=True):
        parts.append(f"{i * c}:{min((i + 1) * c, n)}")
    return "[" + ", ".join(parts) + "]"


def check_zspy_chunks(path):
    """Raise ``ValueError`` if a data chunk of the ``.zspy`` file ``path`` is missing.

    Only the store's keys are looked up; no chunk is read.

    Parameters
    ----------
    path : str
        A ``.zspy`` folder (or zip file).

    Raises
    ------
    ValueError
        Naming the file, the array, the first missing chunk (grid index, store
        key and array region) and how many are missing.
    """
    try:
        group, store = _open(path)
    except Exception:  # not a zarr group: the reader reports it
        return
    try:
        for name, arr in _data_arrays(group):
            chunk_store = arr.chunk_store if arr.chunk_store is not None else arr.store
            missing = [
                idx for idx in _grid(arr) if _chunk_key(arr, idx) not in chunk_store
            ]
            if missing:
                idx = missing[0]
                total = 1
                for n in arr.cdata_shape:
                    total *= n
                raise ValueError(
                    f"{path!r} is incomplete: the data chunk {_chunk_key(arr, idx)!r} (chunk {tuple(idx)}, "
                    f"array region {_region(arr, idx)}) is missing"
                    + (
                        f", and {len(missing) - 1} more of its {total} chunks"
                        if len(missing) > 1
                        else ""
                    )
                    + f"; zarr would read it as the fill value ({arr.fill_value}). Copy the file again or "
                    "re-save it from the original data"
                )
    finally:
        if store is not None:
            store.close()


def find_corrupt_chunk(path):
    """The first data chunk of ``path`` that cannot be decoded, or None.

    Reads (decompresses) the chunks one at a time, so it costs one read of
    the file: call it only after a read has failed.

    Returns
    -------
    tuple or None
        ``(array name, chunk index, store key, array region, error)``.
    """
    try:
        group, store = _open(path)
    except Exception:
        return None
    try:
        for name, arr in _data_arrays(group):
            for idx in _grid(arr):
                sl = tuple(
                    slice(i * c, (i + 1) * c)
                    for i, c in zip(idx, arr.chunks, strict=True)
                )
                try:
                    arr[sl]
                except (
                    Exception
                ) as err:  # numcodecs raises RuntimeError, ValueError, ...
                    return (
                        name,
                        tuple(idx),
                        _chunk_key(arr, idx),
                        _region(arr, idx),
                        err,
                    )
        return None
    finally:
        if store is not None:
            store.close()


def describe_corrupt_chunk(path):
    """One sentence naming the chunk that cannot be decoded, or "" if none is found."""
    found = find_corrupt_chunk(path)
    if found is None:
        return ""
    _, idx, key, region, err = found
    return (
        f"the data chunk {key!r} (chunk {idx}, array region {region}) cannot be decoded "
        f"({type(err).__name__}: {err})"
    )
