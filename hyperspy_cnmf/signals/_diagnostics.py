"""Diagnostics of a decomposition: the 4D-STEM signal methods.

Plain functions taking the signal as first argument, attached to
:class:`~hyperspy_cnmf.signals.STEM4D` (and inherited by the lazy class) as
methods. They read ``learning_results`` only (no pass over the data), so they
work identically on lazy signals and for any decomposition algorithm:

- :func:`get_map_power_beyond` / :func:`plot_map_spectra`: power of every
  map beyond the resolution circle ``|f| = 1 / resolution`` and the maps
  with their Fourier transforms (the paper's Fig. 1);
- :func:`get_dip_measure` / :func:`plot_dip_measure`: the fraction of every
  factor's intensity missing in downward-convex dips.
"""

import numpy as np

from hyperspy_cnmf._beam import Beam
from hyperspy_cnmf._docstrings import fill_doc
from hyperspy_cnmf.constraints import (
    DiffractionDipConstraint,
    dip_measure,
    map_power_beyond,
)
from hyperspy_cnmf.signals._axes import check_4d
from hyperspy_cnmf.signals._calibration import (
    estimate_probe_fwhm,
    find_beam_disk,
    navigation_scales,
)
from hyperspy_cnmf.signals._store import decomposition_settings


def _check_decomposition(signal):
    lr = signal.learning_results
    if lr.factors is None or lr.loadings is None:
        raise RuntimeError(
            "No decomposition found: run `decomposition` first (e.g. "
            "`s.decomposition(algorithm='constrained_nmf', output_dimension=8)`)."
        )
    check_4d(signal, "computing the diagnostics")
    return lr


def _component_indices(lr, components):
    n_total = lr.factors.shape[1]
    if components is None:
        n = lr.output_dimension or n_total
        return np.arange(min(int(n), n_total))
    if np.ndim(components) == 0:
        return np.arange(min(int(components), n_total))
    idx = np.asarray(components, dtype=np.int64).ravel()
    if idx.size == 0 or idx.min() < -n_total or idx.max() >= n_total:
        raise ValueError(f"`components` must be indices in [0, {n_total}).")
    return idx % n_total


def _maps(signal, idx):
    ny, nx = signal.axes_manager._navigation_shape_in_array
    return np.asarray(
        signal.learning_results.loadings[:, idx], dtype=np.float64
    ).T.reshape(-1, ny, nx)


def _factors(signal, idx):
    qy, qx = signal.axes_manager._signal_shape_in_array
    return np.asarray(
        signal.learning_results.factors[:, idx], dtype=np.float64
    ).T.reshape(-1, qy, qx)


def _check_non_negative(factors, run="this decomposition"):
    """Refuse factors with negative values (e.g. SVD/PCA): a dip "fraction" of them has no meaning.

    The dip measure is ``sum(closing(p) - p) / sum(p)``: for a pattern with
    negative values the denominator can be near 0 or negative and the result
    is no fraction (SVD factors gave 671). Negative entries beyond rounding
    (``1e-9`` of the largest magnitude) raise.
    """
    f = np.asarray(factors, dtype=np.float64)
    if not np.any(np.isfinite(f)):
        return factors
    low, high = np.nanmin(f), np.nanmax(np.abs(f))
    if low < -1e-9 * high:
        raise ValueError(
            f"the dip measure is meant for non-negative factors (NMF), but the factors of {run} have "
            f"negative values (minimum {low:.3g}, largest magnitude {high:.3g}); run "
            "decomposition(algorithm='constrained_nmf') (or 'NMF') first"
        )
    return factors


def _run_name(signal):
    algorithm = getattr(signal.learning_results, "decomposition_algorithm", None)
    return (
        f"this decomposition (algorithm={algorithm!r})"
        if algorithm
        else "this decomposition"
    )


def _model_pattern(signal):
    """Sum of the modelled patterns, ``factors @ sum(loadings)``: the mean
    pattern (times the number of positions) without reading the data."""
    lr = signal.learning_results
    qy, qx = signal.axes_manager._signal_shape_in_array
    weights = np.nansum(np.asarray(lr.loadings, dtype=np.float64), axis=0)
    return (np.nan_to_num(np.asarray(lr.factors, dtype=np.float64)) @ weights).reshape(
        qy, qx
    )


def _nav_scale(signal):
    """The scan steps ``(step_y, step_x)`` in the x axis's unit (pint-converted), array order."""
    return navigation_scales(signal)[:2]


def _cnmf_settings(lr):
    """The last constrained NMF's settings, {} if none (:func:`_store.decomposition_settings`)."""
    return decomposition_settings(lr) or {}


def _resolution(signal, resolution):
    """Probe size for the diagnostics: given, the run's, or estimated."""
    if resolution is not None:
        resolution = float(resolution)
        if not np.isfinite(resolution) or resolution <= 0:
            raise ValueError(
                f"`resolution` must be a positive length, got {resolution}."
            )
        return resolution
    lr = signal.learning_results
    if _cnmf_settings(lr):
        stored = getattr(lr, "cnmf_map_resolution", None)
        if stored is not None and np.isfinite(float(stored)) and float(stored) > 0:
            return float(stored)
    value, _ = estimate_probe_fwhm(signal, _model_pattern(signal))
    return float(value)


def _beam(signal):
    """The direct beam of a decomposition, :class:`~hyperspy_cnmf._beam.Beam` ``(x, y, radius)`` px.

    The beam that the constrained NMF measured on the mean pattern and
    recorded (``cnmf_parameters``), the one its constraint used: the
    modelled sum pattern has no beam when ``direct_beam_mask`` left it out.
    Other runs: the beam found on the modelled sum pattern.
    """
    beam = Beam.from_record(_cnmf_settings(signal.learning_results))
    return find_beam_disk(_model_pattern(signal)) if beam is None else beam


def _dip_constraint(signal, radius, mode):
    """The closing that defines a dip: the run's diffraction constraint by default.

    Built as the decomposition builds it
    (:meth:`~hyperspy_cnmf.constraints.DiffractionDipConstraint.from_beam`),
    about the run's beam (:func:`_beam`).
    """
    lr = signal.learning_results
    settings = _cnmf_settings(lr)
    sig_shape = tuple(signal.axes_manager._signal_shape_in_array)
    if mode is None:
        mode = settings.get("diffraction_constraint_mode", "azimuthal")
    if radius is None:
        stored = (
            getattr(lr, "cnmf_diffraction_constraint_size", None) if settings else None
        )
        if stored is not None and np.isfinite(float(stored)):
            radius = float(stored)
        # else the default of decomposition(diffraction_constraint_size="auto")
    valid = (
        None
        if lr.signal_mask is None
        else ~np.asarray(lr.signal_mask, bool).reshape(sig_shape)
    )
    return DiffractionDipConstraint.from_beam(
        _beam(signal), sig_shape, radius, valid=valid, mode=mode
    )


def _frequency_units(signal):
    units = str(signal.axes_manager.navigation_axes[0].units)
    return "px" if units in ("", "<undefined>", "None") else units


@fill_doc
def get_map_power_beyond(self, resolution=None, components=None):
    """Fraction of each map's power beyond the resolution circle.

    The maps (``learning_results.loadings``) are Fourier transformed (mean
    removed, Hann window) and the fraction of their power at spatial
    frequencies ``|f| > 1 / resolution`` is returned
    (:func:`~hyperspy_cnmf.constraints.map_power_beyond`). A map that obeys
    the probe's resolution gives almost 0; noise gives about the area
    fraction of frequency space outside the circle.

    Parameters
    ----------
    %(decomposed_signal)s
    %(map_resolution)s
    %(component_subset)s

    Returns
    -------
    ndarray, shape (k,)

    Raises
    ------
    RuntimeError
        If there is no decomposition.

    Examples
    --------
    >>> from hyperspy_cnmf.data import simulated_precipitates
    >>> s = simulated_precipitates(scan_shape=(24, 24), n_grains=2)
    >>> s.decomposition(algorithm="constrained_nmf", output_dimension=4,
    ...                 print_info=False, random_state=0)
    >>> power = s.get_map_power_beyond()
    >>> power.shape, bool(power.max() < 0.01)  # the maps hold almost nothing finer than the probe
    ((4,), True)
    """
    lr = _check_decomposition(self)
    idx = _component_indices(lr, components)
    return map_power_beyond(
        _maps(self, idx), _resolution(self, resolution), _nav_scale(self)
    )


@fill_doc
def plot_map_spectra(self, components=None, resolution=None, **kwargs):
    """Plot every map with its Fourier transform and the resolution circle.

    As in Fig. 1 of Kimoto et al. (2025): for each component its map
    (calibrated scan axes) and below it the logarithm of the map's power
    spectrum (zero frequency at the centre, axes in ``1/<navigation unit>``)
    with the dotted circle ``|f| = 1 / resolution``. Power outside the circle
    is finer than the probe, i.e. noise: present in PCA and primitive NMF
    maps, absent from constrained ones. Each spectrum's title gives the
    fraction of power beyond the circle (:meth:`get_map_power_beyond`).

    Parameters
    ----------
    %(decomposed_signal)s
    %(component_subset)s
    %(map_resolution)s
    **kwargs
        Passed to :func:`hyperspy_cnmf.plotting.plot_map_spectra`
        (``per_row``, ``cmap``, ``spectrum_cmap``, ``dynamic_range``, ...).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    RuntimeError
        If there is no decomposition.

    Examples
    --------
    >>> from hyperspy_cnmf.data import simulated_precipitates
    >>> s = simulated_precipitates(scan_shape=(24, 24), n_grains=2)
    >>> s.decomposition(algorithm="constrained_nmf", output_dimension=4,
    ...                 print_info=False, random_state=0)
    >>> fig = s.plot_map_spectra()

    Saved (not run by the doctests, which write no files):

    >>> fig.savefig("map_spectra.png")  # doctest: +SKIP
    """
    from hyperspy_cnmf.plotting import _diagnostics as plotting
    from hyperspy_cnmf.signals._axes import axis_info

    lr = _check_decomposition(self)
    idx = _component_indices(lr, components)
    res = _resolution(self, resolution)
    kwargs.setdefault("names", [f"Component {i}" for i in idx])
    quantity = self.metadata.get_item("Signal.quantity", None) or "counts"
    kwargs.setdefault(
        "map_label",
        # constrained NMF patterns sum to 1: the maps are the data's units per position
        f"{quantity} per position"
        if lr.decomposition_algorithm == "constrained_nmf"
        else "loading (a.u.)",
    )
    kwargs.setdefault(
        "title",
        f"Maps of {self.metadata.General.title} and their Fourier transforms "
        f"(dotted: |f| = 1/d, d = {res:.3g} {_frequency_units(self)})",
    )
    return plotting.plot_map_spectra(
        _maps(self, idx),
        res,
        navigation_axes=[axis_info(a) for a in self.axes_manager.navigation_axes],
        **kwargs,
    )


@fill_doc
def get_dip_measure(self, radius=None, components=None, mode=None):
    """Fraction of each factor's intensity missing in downward-convex dips.

    ``sum(closing(p) - p) / sum(p)`` for every factor ``p``
    (:func:`~hyperspy_cnmf.constraints.dip_measure`), with the closing of the
    diffraction constraint of ``decomposition(algorithm="constrained_nmf")``:
    centred on the direct beam, which is found on the modelled sum pattern
    ``factors @ sum(loadings)`` (no pass over the data).

    Parameters
    ----------
    %(decomposed_signal)s
    radius : float, optional
        Size (px) of the dips to measure. Default: the run's
        ``diffraction_constraint_size``, else (constraint off, another
        algorithm) the default of the decomposition, the direct-beam disk
        radius (rounded, at least 1 px).
    %(component_subset)s
    mode : {"azimuthal", "isotropic"}, optional
        Closing along circles about the direct beam (the decomposition's
        default) or with a disk; default the run's.

    Returns
    -------
    ndarray, shape (k,)

    Raises
    ------
    RuntimeError
        If there is no decomposition.
    ValueError
        If the factors have negative values (SVD, PCA, ICA): the measure is
        meant for non-negative factors.

    Examples
    --------
    >>> from hyperspy_cnmf.data import simulated_precipitates
    >>> s = simulated_precipitates(scan_shape=(24, 24), n_grains=2)
    >>> s.decomposition(algorithm="constrained_nmf", output_dimension=4,
    ...                 print_info=False, random_state=0)
    >>> dips = s.get_dip_measure()
    >>> dips.shape, bool(dips.max() < 0.05)  # under 5 % of each factor's intensity in dips
    ((4,), True)
    """
    lr = _check_decomposition(self)
    idx = _component_indices(lr, components)
    factors = _check_non_negative(_factors(self, idx), _run_name(self))
    return dip_measure(factors, _dip_constraint(self, radius, mode))


def plot_dip_measure(
    self,
    others=None,
    radius=None,
    components=None,
    mode=None,
    labels=None,
    n_show=3,
    **kwargs,
):
    """Plot the per-factor dip measure, optionally against other runs.

    A bar per factor of :meth:`get_dip_measure`; with ``others``, the
    factors of other decompositions of the same data (e.g. a primitive NMF,
    ``diffraction_constraint=False``) side by side, measured with the same
    closing. Below, for every run, the ``n_show`` factors with the largest
    dips, their dips outlined.

    Parameters
    ----------
    self : STEM4D or LazySTEM4D
        A signal with a decomposition.
    others : signal, array or dict, optional
        Other runs: a signal with a decomposition (or a list/dict of them),
        or factors as arrays ``(k, qy, qx)``; a dict maps run names to them.
    radius, components, mode
        See :meth:`get_dip_measure` (``components`` applies to this signal).
    labels : list of str, optional
        Run names (this signal first); default its title, then ``"Run i"``.
    n_show : int, default 3
        Factors shown per run (0: the bar chart only).
    **kwargs
        Passed to :func:`hyperspy_cnmf.plotting.plot_dip_measure`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from hyperspy_cnmf.data import simulated_precipitates
    >>> s = simulated_precipitates(scan_shape=(24, 24), n_grains=2)
    >>> p = s.deepcopy()
    >>> s.decomposition(algorithm="constrained_nmf", output_dimension=4,
    ...                 print_info=False, random_state=0)
    >>> p.decomposition(algorithm="constrained_nmf", output_dimension=4, map_resolution=None,
    ...                 diffraction_constraint=False, print_info=False, random_state=0)
    >>> fig = s.plot_dip_measure({"primitive": p})
    """
    from hyperspy_cnmf.plotting import _diagnostics as plotting
    from hyperspy_cnmf.signals._axes import axis_info

    lr = _check_decomposition(self)
    idx = _component_indices(lr, components)
    constraint = _dip_constraint(self, radius, mode)
    if others is None:
        others = {}
    elif not isinstance(others, dict):
        others = list(others) if isinstance(others, (list, tuple)) else [others]
        names = list(labels[1:]) if labels else []
        names += [f"Run {i}" for i in range(len(names) + 1, len(others) + 1)]
        others = dict(zip(names, others))
    first = (labels[0] if labels else None) or self.metadata.General.title or "This run"
    runs = {first: _check_non_negative(_factors(self, idx), _run_name(self))}
    qy, qx = self.axes_manager._signal_shape_in_array
    for name, other in others.items():
        if hasattr(other, "learning_results"):
            _check_decomposition(other)
            other = _factors(other, _component_indices(other.learning_results, None))
        runs[str(name)] = _check_non_negative(
            np.asarray(getattr(other, "data", other), dtype=np.float64).reshape(
                -1, qy, qx
            ),
            f"run {name!r}",
        )
    kwargs.setdefault(
        "signal_axes", [axis_info(a) for a in self.axes_manager.signal_axes]
    )
    return plotting.plot_dip_measure(runs, constraint, n_show=n_show, **kwargs)
