"""LiberTEM front end: constrained NMF of a LiberTEM dataset, read by LiberTEM.

For data that LiberTEM reads (MIB, K2IS, FRMS6, SEQ, raw, raw_csr, NPY, HDF5,
...) with any LiberTEM executor (inline, threads, dask, a cluster):

>>> import numpy as np
>>> from libertem.api import Context
>>> import hyperspy_cnmf
>>> from hyperspy_cnmf.data import simulated_precipitates
>>> from hyperspy_cnmf.libertem import decomposition
>>> data = simulated_precipitates(scan_shape=(16, 16), detector_shape=(24, 24),
...                               n_grains=2, grain_diameter=3.0).data
>>> ctx = Context.make_with("inline")
>>> ds = ctx.load("memory", data=data, num_partitions=4)
>>> s = decomposition(ctx, ds, 4, scan_step=1.0, scan_units="nm", map_resolution=2.0,
...                   print_info=False, random_state=0)
>>> type(s).__name__, s.learning_results.factors.shape, s.learning_results.loadings.shape
('LazySTEM4D', (576, 4), (256, 4))
>>> res = hyperspy_cnmf.cluster_diffraction(s)  # the clustering needs no read of the data

Every read of the data during the fit is one run of one UDF
(:class:`hyperspy_cnmf.chunked_libertem.BlockUDF`) through
:class:`~hyperspy_cnmf.chunked_libertem.LiberTEMOperator`, the operator
interface of the dask path; the stages before and after the fit (argument
checks, direct beam, constraints, ``learning_results``) are those of
:func:`hyperspy_cnmf.decomposition`. The result is the same as that of
``hyperspy_cnmf.decomposition`` on the same data held in a dask array whose
chunks are the dataset's partitions (bit-identical, see
``tests/test_libertem.py``).

LiberTEM datasets carry the scan and detector shapes but no physical
calibration: give the scan step, the detector step and the beam energy and
convergence semi-angle as arguments (or ``map_resolution``, the probe FWHM in
scan units, directly), as they would be set on a HyperSpy signal.

LiberTEM is imported by this module only (``pip install
"hyperspy_cnmf[libertem]"``).
"""

import numbers

import numpy as np
from libertem.api import Context
from libertem.contrib.daskadapter import make_dask_array
from libertem.io.dataset.base import DataSet

from hyperspy_cnmf._warnings import at_user_site
from hyperspy_cnmf.chunked_libertem import LiberTEMOperator
from hyperspy_cnmf.signals import _decomposition, _store
from hyperspy_cnmf.signals._calibration import check_beam_energy, unit_quantity

__all__ = ["decomposition", "signal_from_dataset"]


def _check_dataset(dataset):
    if not isinstance(dataset, DataSet):
        raise TypeError(
            "dataset must be a LiberTEM dataset, e.g. ctx.load('mib', path=..., nav_shape=(ny, nx)); "
            f"got {type(dataset).__name__}"
        )
    shape = dataset.shape
    if shape.nav.dims != 2 or shape.sig.dims != 2:
        raise ValueError(
            "constrained NMF needs 4D-STEM data with 2 navigation (scan) and 2 signal (detector) "
            f"dimensions; this dataset has shape {tuple(shape)} with navigation "
            f"{tuple(shape.nav)} and signal {tuple(shape.sig)}; load it with the scan shape, "
            "e.g. ctx.load(..., nav_shape=(scan_y, scan_x))"
        )


def _steps(name, value):
    """``(step_y, step_x)`` from one positive number or a (y, x) pair; ``(1, 1)`` for None."""
    if value is None:
        return 1.0, 1.0
    values = (value, value) if isinstance(value, numbers.Real) else tuple(value)
    if len(values) != 2 or not all(
        isinstance(v, numbers.Real) and np.isfinite(v) and v > 0 for v in values
    ):
        raise ValueError(
            f"{name} must be a positive number or a (y, x) pair of positive numbers; got {value!r}"
        )
    return float(values[0]), float(values[1])


def _positive_or_none(name, value, unit):
    if value is not None and not (
        isinstance(value, numbers.Real) and np.isfinite(value) and value > 0
    ):
        raise ValueError(f"{name} must be a positive number ({unit}); got {value!r}")


def _check_units(nav_units, sig_units):
    """A length for the scan, a reciprocal length or an angle for the detector (pint)."""
    nav, sig = unit_quantity(nav_units), unit_quantity(sig_units)  # None for "px"
    if nav is not None and not nav.is_compatible_with("nm"):
        raise ValueError(
            f"scan_units must be a length (nm, Å, µm, ...); got {nav_units!r}"
        )
    if sig is not None and not (
        sig.is_compatible_with("1/nm") or sig.is_compatible_with("rad")
    ):
        raise ValueError(
            "detector_units must be a reciprocal length (1/nm, 1/Å) or an angle (mrad); "
            f"got {sig_units!r}"
        )


def signal_from_dataset(
    dataset,
    *,
    scan_step=None,
    scan_units="nm",
    detector_step=None,
    detector_units="1/nm",
    beam_energy=None,
    convergence_angle=None,
):
    """A lazy 4D-STEM signal over a LiberTEM dataset, calibrated from the arguments.

    The data are LiberTEM's partitions as dask chunks
    (:func:`libertem.contrib.daskadapter.make_dask_array`, in the dataset's
    dtype): nothing is read here. The axes are named ``x``, ``y`` (scan) and
    ``kx``, ``ky`` (detector), their sizes the dataset's shape.

    Parameters
    ----------
    dataset : libertem.io.dataset.base.DataSet
        From ``ctx.load(...)``, with 2 navigation and 2 signal dimensions
        (shape ``(scan_y, scan_x, det_y, det_x)``).
    scan_step : float or (float, float), optional
        Scan step (one value, or ``(step_y, step_x)``) in ``scan_units``.
        None: uncalibrated, step 1 in ``"px"``.
    scan_units : str, default "nm"
        A length unit pint knows (nm, Å, µm, ...); ignored without ``scan_step``.
    detector_step : float or (float, float), optional
        Detector pixel size (one value, or ``(step_y, step_x)``) in
        ``detector_units``. None: uncalibrated, step 1 in ``"px"``.
    detector_units : str, default "1/nm"
        A reciprocal length (1/nm, 1/Å) or an angle (mrad, with
        ``beam_energy``); ignored without ``detector_step``.
    beam_energy : float, optional
        keV, stored as ``metadata.Acquisition_instrument.TEM.beam_energy``.
    convergence_angle : float, optional
        Convergence semi-angle in mrad, stored as
        ``metadata.Acquisition_instrument.TEM.convergence_angle``; with
        ``beam_energy`` it gives the probe size (``map_resolution="auto"``).

    Returns
    -------
    LazySTEM4D
        Shape ``(scan_y, scan_x | det_y, det_x)`` in the dataset's dtype.

    Raises
    ------
    TypeError
        If ``dataset`` is not a LiberTEM dataset.
    ValueError
        If it is not 2+2 dimensional, or a step, the beam energy or the
        convergence angle is not a positive number, or a unit is not understood.
    """
    _check_dataset(dataset)
    nav_steps = _steps("scan_step", scan_step)
    sig_steps = _steps("detector_step", detector_step)
    _positive_or_none("beam_energy", beam_energy, "keV")
    check_beam_energy(beam_energy, "beam_energy")  # keV: 1-3000, not eV
    _positive_or_none("convergence_angle", convergence_angle, "mrad")
    nav_units = "px" if scan_step is None else str(scan_units)
    sig_units = "px" if detector_step is None else str(detector_units)
    _check_units(nav_units, sig_units)

    from hyperspy.signals import LazySignal2D

    darray, _ = make_dask_array(dataset, dtype=dataset.dtype)
    signal = LazySignal2D(darray)
    signal.set_signal_type("4D-STEM")
    am = signal.axes_manager
    for axes, names, steps, units in (
        (am.navigation_axes, ("x", "y"), nav_steps, nav_units),
        (am.signal_axes, ("kx", "ky"), sig_steps, sig_units),
    ):
        for axis, name, step in zip(axes, names, steps[::-1]):  # x first
            axis.name, axis.scale, axis.offset, axis.units = name, step, 0.0, units
    if beam_energy is not None:
        signal.metadata.set_item(
            "Acquisition_instrument.TEM.beam_energy", float(beam_energy)
        )
    if convergence_angle is not None:
        signal.metadata.set_item(
            "Acquisition_instrument.TEM.convergence_angle", float(convergence_angle)
        )
    signal.metadata.General.title = f"LiberTEM {type(dataset).__name__}"
    return signal


@at_user_site
def decomposition(
    ctx,
    dataset,
    output_dimension,
    *,
    scan_step=None,
    scan_units="nm",
    detector_step=None,
    detector_units="1/nm",
    beam_energy=None,
    convergence_angle=None,
    normalize_poissonian_noise=True,
    progress=False,
    **kwargs,
):
    """Constrained NMF of a LiberTEM dataset, every read of the data a LiberTEM UDF run.

    The same fit as :func:`hyperspy_cnmf.decomposition` (the same checks,
    solver, constraints and stored results), with the data read by
    LiberTEM's executor from LiberTEM's reader
    (:class:`~hyperspy_cnmf.chunked_libertem.LiberTEMOperator`, one
    :class:`~hyperspy_cnmf.chunked_libertem.BlockUDF` run per read).

    Parameters
    ----------
    ctx : libertem.api.Context
        Its executor runs the reads (``Context.make_with("inline")``,
        ``"threads"``, ``"dask"``, ...).
    dataset : libertem.io.dataset.base.DataSet
        From ``ctx.load(...)``, with 2 navigation and 2 signal dimensions.
        Never modified.
    output_dimension : int
        Number of components ``k``.
    scan_step, scan_units, detector_step, detector_units, beam_energy, convergence_angle
        The calibration LiberTEM datasets do not carry; see
        :func:`signal_from_dataset`. ``map_resolution="auto"`` (the default)
        takes the probe size from ``beam_energy`` and ``convergence_angle``,
        else from the direct-beam disk on a calibrated detector, else 2 scan
        steps with a warning; ``map_resolution=<probe FWHM in scan_units>``
        sets it.
    normalize_poissonian_noise : bool, default True
        Poisson (Keenan-Kotula) weighting, as in :func:`hyperspy_cnmf.decomposition`.
    progress : bool, default False
        LiberTEM's progress bar of every read (the fit's own bar is
        ``show_progressbar``).
    **kwargs
        Every other argument of :func:`hyperspy_cnmf.decomposition`
        (``map_resolution``, ``diffraction_constraint``, ``navigation_mask``,
        ``signal_mask``, ``random_state``, ``print_info``, ``return_info``, ...).

    Returns
    -------
    LazySTEM4D
        The signal of :func:`signal_from_dataset`, with the decomposition in
        its ``learning_results`` (``factors`` (pixels, k), ``loadings``
        (positions, k), the ``cnmf_*`` record), stored exactly as
        :func:`hyperspy_cnmf.decomposition` stores them; with
        ``return_info=True``, ``(signal, info)``. Its data remain LiberTEM's
        reader behind dask: ``hyperspy_cnmf.cluster_diffraction(s)``,
        ``s.get_decomposition_model()`` and the plots work on it.

    Raises
    ------
    TypeError
        If ``ctx`` is not a LiberTEM ``Context`` or ``dataset`` not a LiberTEM
        dataset.
    ValueError
        For a dataset that is not 2+2 dimensional, a bad calibration or any
        argument :func:`hyperspy_cnmf.decomposition` refuses; always before
        the first read of the data.
    """
    if not isinstance(ctx, Context):
        raise TypeError(
            "ctx must be a LiberTEM Context (libertem.api.Context.make_with(...)), "
            f"got {type(ctx).__name__}"
        )
    signal = signal_from_dataset(
        dataset,
        scan_step=scan_step,
        scan_units=scan_units,
        detector_step=detector_step,
        detector_units=detector_units,
        beam_energy=beam_energy,
        convergence_angle=convergence_angle,
    )

    def operator(row_scale, col_scale, poisson):
        return LiberTEMOperator(
            dataset,
            row_scale,
            col_scale,
            ctx=ctx,
            poisson_stats=poisson,
            progress=progress,
        )

    # As hyperspy_cnmf.decomposition (api.py), called at the same depth so that the
    # warnings of the run point at the user's line.
    info = _decomposition.constrained_nmf_decomposition(
        signal,
        output_dimension,
        normalize_poissonian_noise=normalize_poissonian_noise,
        _operator=operator,
        **kwargs,
    )
    _store.forget_results_of_decomposition(signal.learning_results, True)
    return signal if info is None else (signal, info)
