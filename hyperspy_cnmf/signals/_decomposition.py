"""``decomposition(algorithm="constrained_nmf")``: the signal-side wrapper.

Checks the arguments, builds a data operator (in-memory array or dask
chunks), the constraints and the progress bar, runs the core solver and writes
``learning_results`` exactly as HyperSpy expects. The signal's data are never
modified.
"""

import warnings
from functools import partial
from types import SimpleNamespace

import numpy as np

from hyperspy_cnmf._beam import (
    Beam,
    beam_search_pixels,
    positions_across_dead_pixels,
)
from hyperspy_cnmf._schema import DecompositionRecord
from hyperspy_cnmf._warnings import warn
from hyperspy_cnmf.constraints import (
    DiffractionDipConstraint,
    MapResolutionConstraint,
    MapSupport,
)
from hyperspy_cnmf.nmf import (
    EXACT_REFINEMENT,
    INITS,
    SOLVERS,
    SUPPORT_ITERATIONS,
    ConvergenceWarning,
    DenseOperator,
    FactoredOperator,
    constrained_nmf,
)
from hyperspy_cnmf.nmf._operators import range_test_matrix
from hyperspy_cnmf.nmf._solver import SKETCH_OVERSAMPLE
from hyperspy_cnmf.signals._axes import check_4d
from hyperspy_cnmf.signals._beam_shift import beam_motion, warn_if_beam_moves
from hyperspy_cnmf.signals._calibration import (
    beam_and_contrast,
    beam_energy_and_convergence,
    disk_radius_from_metadata,
    estimate_probe_fwhm,
    hidden_beam_text,
    navigation_scales,
    warn_defect_pixels,
)
from hyperspy_cnmf.signals._store import (
    clear_learning_results,
    decomposition_settings,
    support_iterations_text,
    to_learning_results,
)

ALGORITHM = "constrained_nmf"


def _mask_vector(mask, size, shape, name):
    """A ``navigation_mask`` / ``signal_mask`` as a flat boolean vector in the data's (C) order.

    Accepted, as by HyperSpy (True = excluded):

    * a boolean array (numpy or dask) in array order, ``shape`` (rows, columns),
      like ``s.data``; on a non-square scan or detector also in HyperSpy's
      axes order (``navigation_shape`` / ``signal_shape``, x first), which is
      transposed (HyperSpy 2.5's own ``decomposition`` takes that order);
    * a boolean signal (eager or lazy) whose data have the array-order shape,
      e.g. ``s.sum(axis=s.axes_manager.signal_axes) > t`` or ``Signal2D(mask)``.

    Anything else (a flat vector, another shape) raises, naming both shapes:
    a reshape by size alone would mask the wrong positions or pixels.
    """
    if mask is None:
        return np.zeros(size, dtype=bool)
    shape = tuple(int(n) for n in shape)
    hs_shape = shape[::-1]
    is_signal = hasattr(mask, "axes_manager")
    data = mask.data if is_signal else mask
    if hasattr(data, "compute"):
        data = data.compute()
    data = np.asarray(data)
    if data.dtype != bool:
        raise TypeError(
            f"{name} must be a boolean array (True = excluded), got dtype {data.dtype}"
        )
    if data.shape == shape:
        return data.ravel().copy()
    if data.shape == hs_shape and not is_signal:
        return np.ascontiguousarray(data.T).ravel()
    axes = "navigation_shape" if name.startswith("navigation") else "signal_shape"
    if is_signal:
        expected = f"a boolean signal whose data have the shape {shape} (array order, like s.data)"
    elif hs_shape != shape:
        expected = f"a boolean array of shape {shape} (array order, like s.data) or {hs_shape} ({axes}, x first)"
    else:
        expected = f"a boolean array of shape {shape}"
    raise ValueError(
        f"{name} must be {expected}; got {'a signal with data of ' if is_signal else ''}shape {data.shape}"
    )


def _check_dtype(dtype):
    """Real numbers only (counts or intensities), from the dtype alone: no read."""
    if np.issubdtype(dtype, np.complexfloating):
        raise TypeError(
            f"constrained NMF needs real, non-negative data; got complex data (dtype {dtype}). "
            "Decompose e.g. the intensity: s.data = abs(s.data) ** 2"
        )
    if not (
        np.issubdtype(dtype, np.floating)
        or np.issubdtype(dtype, np.integer)
        or np.issubdtype(dtype, np.bool_)
    ):
        raise TypeError(f"constrained NMF needs real numeric data; got dtype {dtype}")


def _unfolded_data(signal):
    """The data as a (positions, pixels) float array, without modifying the signal.

    For a lazy signal: the dask array itself (navigation axes then signal
    axes), unfolded and cast chunk by chunk by :class:`DaskOperator`.
    """
    data = signal.data
    _check_dtype(data.dtype)
    if signal._lazy:
        return data
    if not np.issubdtype(data.dtype, np.floating) or data.dtype.itemsize < 4:
        # Integer counts (and float16) are analysed as float32; the signal keeps its dtype.
        data = data.astype(np.float32)
    elif not data.dtype.isnative:
        # Big-endian floats (e.g. ">f4" from a file): a native copy for the Numba kernels.
        data = data.astype(data.dtype.newbyteorder("="))
    nav = signal.axes_manager._navigation_shape_in_array
    sig = signal.axes_manager._signal_shape_in_array
    return data.reshape(int(np.prod(nav)), int(np.prod(sig)))


def _make_operator(signal, row_scale, col_scale, poisson=True):
    """In-memory data: a DenseOperator; lazy data: a DaskOperator over the chunks."""
    if signal._lazy:
        from hyperspy_cnmf.chunked import DaskOperator

        return DaskOperator(
            _unfolded_data(signal),
            row_scale=row_scale,
            col_scale=col_scale,
            signal_ndim=signal.axes_manager.signal_dimension,
            poisson_stats=poisson,
        )
    return DenseOperator(
        _unfolded_data(signal),
        row_scale=row_scale,
        col_scale=col_scale,
        signal_shape=signal.axes_manager._signal_shape_in_array,
    )


def _with_clean_masked_entries(signal, op, nav_mask, sig_mask):
    """Eager data with NaN in masked entries: analyse a copy with those set to 0.

    Only masked entries are cleaned: NaN outside the masks stay, so that the
    caller reports them. Lazy data are cleaned chunk by chunk by the
    DaskOperator itself (never a copy of the whole array).
    """
    if signal._lazy or not (nav_mask.any() or sig_mask.any()):
        return op
    X = op.X
    if np.all(np.isfinite(X[nav_mask])) and np.all(np.isfinite(X[:, sig_mask])):
        return op
    clean = np.array(X, copy=True)
    clean[nav_mask] = np.nan_to_num(clean[nav_mask], nan=0.0, posinf=0.0, neginf=0.0)
    clean[:, sig_mask] = np.nan_to_num(
        clean[:, sig_mask], nan=0.0, posinf=0.0, neginf=0.0
    )
    return DenseOperator(
        clean,
        row_scale=op.row_scale,
        col_scale=op.col_scale,
        signal_shape=op.signal_shape,
    )


def _single_threaded_blas():
    """BLAS limited to one thread during the fit (``threadpoolctl``, a dependency).

    The large products of a fit are Numba kernels, threaded by the in-memory
    operator itself or run by the dask scheduler's threads; BLAS only serves
    the small products between reads (the sketch, the Gram matrices).
    Threading those gains little and costs much, as measured on the 2-core
    benchmark machine: OpenBLAS threads left spinning after the small
    products take the cores from the Numba-threaded data passes (one exact
    in-memory iteration of the eager benchmark: 83 ms with two BLAS threads,
    52 ms with one); with other processes busy on the machine the map filter,
    then matrix products, took 5.5 ms per 256 x 256 map with two threads
    inside a fit (load 1.7-2.5) instead of 1.1 ms idle, and two lazy fits that
    take 11.5 s took 88 and 104 s (load 3.8). The limit is process-wide while the
    fit runs and restored afterwards.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _expect_range_product(op, k, init, sketch, poisson, random_state):
    """Let an out-of-core operator compute the range finder's first product in its first read.

    The solver's first use of its random generator is the test matrix of
    the randomized range finder (:func:`~hyperspy_cnmf.nmf._operators.range_test_matrix`)
    when it initialises from the sketch (``nndsvd*``, ``spa``) or sketches
    after a custom init. The same matrix, drawn here from the same seed, is
    handed to the operator, whose statistics read (needed anyway for the
    input checks) then multiplies the data by it: one read of the whole
    dataset less per fit. Not with the Poisson weighting (the scales, hence
    the product, are only known after that read) or a ``Generator``
    ``random_state`` (drawing from it here would change the solver's draws).

    Returns the seed to give the solver: ``random_state``, or for ``None``
    a fresh integer seed (the same randomness, but known here).
    """
    if random_state is None:
        random_state = int(np.random.SeedSequence().generate_state(1)[0])
    first_draw_is_range = (
        isinstance(init, str)
        and init != "random"
        or (isinstance(init, tuple) and sketch)
    )
    if (
        hasattr(op, "expect_right_gram")
        and not poisson
        and first_draw_is_range
        and isinstance(random_state, (int, np.integer))
    ):
        omega = range_test_matrix(
            op, k + SKETCH_OVERSAMPLE, np.random.default_rng(random_state)
        )
        op.expect_right_gram(omega)
    return random_state


def _poisson_scales(op, nav_valid, sig_valid):
    """Keenan-Kotula weights ``1 / sqrt(row sum * column sum)``, times ``sqrt(total)``.

    For Poisson counts with a (nearly) separable mean ``row * col / total``
    the scaled residual ``(X - WH) * sqrt(total / (row * col))`` has unit
    variance, so the loss (the mean squared scaled residual) reads as a
    reduced chi-square: about 1 for a fit at the noise level. The constant
    factor changes nothing else (HyperSpy's own scaling omits it).
    """
    rows, cols = op.row_col_sums(nav_valid, sig_valid)
    r = np.where(
        nav_valid & (rows > 0), 1.0 / np.sqrt(np.where(rows > 0, rows, 1.0)), 0.0
    )
    c = np.where(
        sig_valid & (cols > 0), 1.0 / np.sqrt(np.where(cols > 0, cols, 1.0)), 0.0
    )
    total = float(cols[sig_valid].sum())
    return r * (
        np.sqrt(total) if total > 0 else 1.0
    ), c  # no absolute floor: scale-equivariant


def _show_progress(show_progressbar):
    if show_progressbar is None:
        from hyperspy.defaults_parser import preferences

        show_progressbar = preferences.General.show_progressbar
    return bool(show_progressbar)


def _run_label(map_resolution, diffraction_constraint):
    """ "primitive NMF" when both constraints are off (the paper's name), else "constrained NMF"."""
    map_off = map_resolution is None or map_resolution is False
    return (
        "primitive NMF" if map_off and not diffraction_constraint else "constrained NMF"
    )


#: What the fit does in each phase reported by the solver's callback.
_PHASES = {
    "sketch": "iterations on the sketch",
    "support": "iterations with the maps' supports",
    "exact": "exact iterations",
}


def _stage_bar(show_progressbar, text):
    """A line for a phase without iterations (e.g. the statistics read): its name and duration.

    Returns a function that closes it (prints the elapsed time); a no-op
    without progress bars.
    """
    if not _show_progress(show_progressbar):
        return lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(total=None, desc=text, bar_format="{desc} [{elapsed}]", leave=True)
    return bar.close


def _progress_callback(
    show_progressbar, max_iter, max_exact_iter=None, label="constrained NMF"
):
    """Progress bars of a fit: one per phase, each closed at its real number of iterations.

    An initialisation line runs until the first iteration; then one bar per
    phase ("sketch", "exact", and a new one for every further start of
    ``n_init``) whose total is the phase's cap (``max_iter`` on the sketch,
    ``min(max_exact_iter, max_iter)`` exact); when the phase ends (converged
    or capped) the total is set to the iterations run, so that a bar that
    stops at 23 of 200 shows 23/23 with the final loss, not 23/200.

    Returns
    -------
    callback : callable or None
        ``callback(phase, iteration, loss)`` for the solver; None without
        progress bars.
    close : callable
        Ends the open bar (call it in a ``finally``).
    """
    if not _show_progress(show_progressbar):
        return None, lambda: None
    from tqdm.auto import tqdm

    caps = {
        "sketch": int(max_iter),
        "support": SUPPORT_ITERATIONS,
        "exact": int(
            max_iter
            if max_exact_iter is None
            else min(int(max_exact_iter), int(max_iter))
        ),
    }
    state = {
        "bar": None,
        "phase": None,
        "starts": 0,
        "init": tqdm(
            total=None,
            desc=f"{label}: initialisation",
            bar_format="{desc} [{elapsed}]",
            leave=True,
        ),
    }

    def finish():
        bar = state["bar"]
        if bar is not None:
            bar.total = (
                bar.n
            )  # the real number of iterations: the bar ends full, not at n/max_iter
            bar.refresh()
            bar.close()
            state["bar"] = None
        if state["init"] is not None:
            state["init"].close()
            state["init"] = None

    def callback(phase, iteration, loss):
        if state["bar"] is None or phase != state["phase"] or iteration == 0:
            finish()
            state["starts"] = (
                state["starts"] + 1 if phase == state["phase"] and iteration == 0 else 1
            )
            name = _PHASES.get(phase, phase)
            if state["starts"] > 1:
                name += f", start {state['starts']}"
            state["phase"] = phase
            state["bar"] = tqdm(
                total=max(1, caps.get(phase, int(max_iter))),
                desc=f"{label} ({name})",
                leave=True,
            )
        bar = state["bar"]
        bar.update(1)
        bar.set_postfix(
            loss=f"{loss:.4g}", refresh=bar.n == 1
        )  # shown at once, then at tqdm's pace

    return callback, finish


#: Margin (px) added to the direct beam's half-maximum radius by ``direct_beam_mask="auto"``: the
#: disk's blurred edge falls to the background within about 1 px of the half-maximum contour
#: (measured on the multislice cases of ../shared/data/abtem_dev), plus 0.5 px for the centre.
BEAM_MASK_MARGIN = 1.5


def _mask_radius(value, beam, excursion=0.0):
    """Radius (px) of the direct-beam disk left out of the fit; 0 when it is fitted.

    ``"auto"``: the half-maximum radius of the mean pattern's disk plus
    :data:`BEAM_MASK_MARGIN` plus ``excursion``, half the beam's measured motion over
    the scan (descan), so that the moving disk stays inside the mask.
    """
    if value is None or value is False:
        return 0.0
    if value is True or value == "auto":
        return float(beam.radius) + BEAM_MASK_MARGIN + float(excursion)
    return float(value)


def _direct_beam_disk(radius, beam, sig_shape):
    """Flat boolean mask of the detector pixels within ``radius`` (px) of the beam centre."""
    yy, xx = np.indices(sig_shape)
    return (np.hypot(yy - beam.y, xx - beam.x) <= radius).ravel()


class _Constraint:
    """One allowed kind of value of a parameter: a test and its description."""

    def __init__(self, test, text):
        self.test, self.text = test, text

    def __call__(self, value):
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False


def _options(*values):
    return _Constraint(
        lambda v: isinstance(v, str) and v in values,
        "one of " + ", ".join(repr(v) for v in values),
    )


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_)
    )


def _integer(low):
    return _Constraint(lambda v: _is_int(v) and v >= low, f"an integer >= {low}")


def _real(low, high=None, low_open=False, high_open=False):
    def test(v):
        if not (_is_real(v) and np.isfinite(v)):
            return False
        below = high is None or (v < high if high_open else v <= high)
        return (v > low if low_open else v >= low) and below

    close = ")" if high_open else "]"
    interval = (
        f"{'(' if low_open else '['}{low:g}, "
        f"{'inf)' if high is None else f'{high:g}{close}'}"
    )
    return _Constraint(test, f"a finite number in {interval}")


_NONE = _Constraint(lambda v: v is None, "None")
_FALSE = _Constraint(lambda v: v is False, "False")
_BOOL = _Constraint(lambda v: isinstance(v, (bool, np.bool_)), "True or False")
_GENERATOR = _Constraint(
    lambda v: isinstance(v, np.random.Generator), "a numpy.random.Generator"
)
_PAIR = _Constraint(
    lambda v: isinstance(v, (tuple, list)), "a (loadings, factors) pair"
)

#: The allowed values of every argument of :func:`constrained_nmf_decomposition`
#: (scikit-learn's ``_parameter_constraints``), checked at once by :func:`_check_params`
#: before the first read of the data. The masks are checked against the axes by
#: :func:`_mask_vector`, a custom ``init``'s shapes by :func:`_check_custom_init`.
_PARAMETER_CONSTRAINTS = {
    "output_dimension": [_integer(1)],
    "solver": [_options(*SOLVERS)],
    "init": [_options(*INITS), _PAIR],
    "max_iter": [_integer(0)],
    "tol": [_real(0)],
    "random_state": [_NONE, _integer(0), _GENERATOR],
    "map_resolution": [_options("auto"), _NONE, _FALSE, _real(0, low_open=True)],
    "map_filter": [_options("tukey", "hard", "gaussian")],
    "diffraction_constraint": [_BOOL],
    "diffraction_constraint_size": [_options("auto"), _real(1)],
    "diffraction_constraint_strength": [_real(0, 1, low_open=True)],
    "diffraction_constraint_mode": [_options("azimuthal", "isotropic")],
    "normalize_poissonian_noise": [_BOOL],
    "direct_beam_mask": [_options("auto"), _NONE, _BOOL, _real(0, low_open=True)],
    "defect_pixel_mask": [_BOOL],
    "sketch": [_BOOL],
    "n_init": [_integer(1)],
    "max_exact_iter": [_options("auto"), _NONE, _integer(0)],
    "separate_components": [_BOOL],
    "map_support": [_BOOL],
    "print_info": [_BOOL],
    "return_info": [_BOOL],
    "show_progressbar": [_NONE, _BOOL],
}


def _check_params(params, parameter_constraints=_PARAMETER_CONSTRAINTS):
    """Check every argument against its constraints (default :data:`_PARAMETER_CONSTRAINTS`): one clear error, no data read."""
    for name, constraints in parameter_constraints.items():
        value = params[name]
        if not any(c(value) for c in constraints):
            allowed = " or ".join(c.text for c in constraints)
            what = f"unknown {name} {value!r}: " if isinstance(value, str) else ""
            raise ValueError(f"{what}{name} must be {allowed}; got {value!r}")


def _check_custom_init(init, n_nav, n_sig, k):
    """A custom ``(loadings, factors)`` pair in HyperSpy's layout, as float64 arrays.

    Shapes ``(n_nav, k)`` and ``(n_sig, k)``; NaN (masked entries of an earlier
    run's ``learning_results``) read as 0; non-negative and finite; no component
    whose map or pattern is all zero (the updates never move it away from zero).
    """
    if len(init) != 2:
        raise ValueError("a custom init is a (loadings, factors) pair")
    loadings, factors = (np.asarray(a, dtype=np.float64) for a in init)
    for name, a, shape in (
        ("loadings", loadings, (n_nav, k)),
        ("factors", factors, (n_sig, k)),
    ):
        if a.shape != shape:
            raise ValueError(
                f"the custom init's {name} must have the shape {shape} (HyperSpy's layout: "
                f"{'navigation' if name == 'loadings' else 'signal'} size x output_dimension), got {a.shape}"
            )
    loadings, factors = (
        np.nan_to_num(loadings, nan=0.0),
        np.nan_to_num(factors, nan=0.0),
    )
    for name, a in (("loadings", loadings), ("factors", factors)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"the custom init's {name} contain infinite values")
        if a.min() < 0:
            raise ValueError(
                f"the custom init's {name} must be non-negative (minimum {a.min():g})"
            )
        dead = np.flatnonzero(~np.any(a > 0, axis=0))
        if dead.size:
            raise ValueError(
                f"the custom init's {name} are all zero for component(s) {dead.tolist()}: a component "
                "that starts at zero stays zero; give it a non-zero start"
            )
    return loadings, factors


def constrained_nmf_decomposition(
    signal,
    output_dimension=None,
    *,
    solver="hals",
    init="nndsvda",
    max_iter=200,
    tol=1e-5,
    random_state=0,
    map_resolution="auto",
    map_filter="tukey",
    diffraction_constraint=True,
    diffraction_constraint_size="auto",
    diffraction_constraint_strength=1.0,
    diffraction_constraint_mode="azimuthal",
    navigation_mask=None,
    signal_mask=None,
    normalize_poissonian_noise=True,
    direct_beam_mask="auto",
    defect_pixel_mask=True,
    sketch=True,
    n_init=1,
    max_exact_iter="auto",
    separate_components=True,
    map_support=True,
    print_info=True,
    return_info=False,
    show_progressbar=None,
    _operator=None,
):
    """Run constrained NMF on a 4D-STEM signal; see ``STEM4D.decomposition``.

    ``_operator`` (private, for other engines such as
    :mod:`hyperspy_cnmf.libertem`): ``_operator(row_scale, col_scale,
    poisson)`` returns the data operator over the signal's data, read instead
    of the signal's own array; the default is a ``DenseOperator`` (in memory)
    or a ``DaskOperator`` (lazy).

    The stages, each a function of this module: every argument checked before
    the first read (:func:`_checked_arguments`); the statistics read
    (:func:`_read_statistics`); the direct beam and the fit's pixels and
    scales (:func:`_measure_beam`, :func:`_scaled_operator`); the
    constraints (:func:`_build_constraints`); the fit (:func:`_fit`); back to
    data units (:func:`_to_data_units`); the results written to
    ``learning_results`` (:func:`_write_results`).
    """
    p = _checked_arguments(signal, locals())
    op, seed = _read_statistics(signal, p)
    mean_pattern, beam, hidden, mask_radius, beam_mask, beam_positions = _measure_beam(
        signal, op, p
    )
    op, row_scale, col_scale = _scaled_operator(op, p, beam_mask)
    sig_mask, sig_valid = p.sig_mask | beam_mask, ~p.sig_mask & ~beam_mask
    settings = _settings(p, beam, mask_radius, hidden)
    map_c, diff_c, res_value, dip_radius = _build_constraints(
        signal, p, beam, mean_pattern, sig_valid, settings
    )
    result = _fit(op, p, seed, row_scale, col_scale, map_c, diff_c)
    loadings, factors, order = _to_data_units(
        result, row_scale, col_scale, ~p.nav_mask, sig_valid, p.nav_mask, sig_mask
    )
    # the components confined to their supports, in the stored order
    settings["confined_maps"] = np.flatnonzero(result.confined[order]).tolist()
    settings["n_iter_support"] = result.phases.count("support")
    record = DecompositionRecord(
        loss=result.loss,
        n_iter=result.n_iter,
        n_iter_sketch=result.n_iter_sketch,
        converged=result.converged,
        map_resolution=res_value,
        diffraction_constraint_size=dip_radius,
        parameters=settings,
        beam_positions=beam_positions,
        row_scale=row_scale,
        col_scale=col_scale,
    )
    _write_results(signal.learning_results, p, loadings, factors, sig_mask, record)
    info = dict(
        settings,
        loss=result.loss,
        n_iter=result.n_iter,
        n_iter_sketch=result.n_iter_sketch,
        converged=result.converged,
        sketch_converged=result.sketch_converged,
        n_passes=result.n_passes,
        final_loss=float(result.loss[-1]),
        beam_positions=beam_positions,
    )
    if print_info:
        print(_summary(info, p.k))
    if return_info:
        return info
    return None


def _checked_arguments(signal, params):
    """Stage 1: every argument, the axes and the dtype checked, before the first read.

    Returns the arguments as a namespace, with ``k``, the custom ``init`` as
    arrays, ``max_exact_iter`` resolved, the array-order shapes ``nav_shape``
    and ``sig_shape``, the masks as flat vectors ``nav_mask`` and ``sig_mask``
    (True = excluded) and the scan steps ``nav_steps`` (pint-converted).
    """
    check_4d(signal)
    if params["output_dimension"] is None:
        raise ValueError(
            "output_dimension (the number of components k) must be given for algorithm='constrained_nmf'"
        )
    _check_params(params)
    _check_dtype(signal.data.dtype)
    p = SimpleNamespace(**{name: params[name] for name in _PARAMETER_CONSTRAINTS})
    if isinstance(p.max_exact_iter, str):
        # In memory and out of core alike, so that a lazy fit gives the in-memory result
        # (issue 10, item 7): a fixed refinement of the sketch's fit (EXACT_REFINEMENT, one
        # read each); without a sketch the exact iterations run to ``tol``.
        p.max_exact_iter = EXACT_REFINEMENT if p.sketch else None
    am = signal.axes_manager
    p.nav_shape = am._navigation_shape_in_array
    p.sig_shape = am._signal_shape_in_array
    n_nav, n_sig = int(np.prod(p.nav_shape)), int(np.prod(p.sig_shape))
    p.k = int(p.output_dimension)
    if isinstance(p.init, (tuple, list)):
        p.init = _check_custom_init(p.init, n_nav, n_sig, p.k)
    elif p.init not in INITS:
        raise ValueError(
            f"unknown init {p.init!r}; choose one of {INITS} or a (loadings, factors) pair"
        )

    p.nav_mask = _mask_vector(
        params["navigation_mask"], n_nav, p.nav_shape, "navigation_mask"
    )
    p.sig_mask = _mask_vector(params["signal_mask"], n_sig, p.sig_shape, "signal_mask")
    if p.nav_mask.all() or p.sig_mask.all():
        raise ValueError("all data are masked: nothing to factorize")
    # The scan steps in one unit (pint), or a clear error for units that do not convert: before the read.
    p.nav_steps = (
        navigation_scales(signal) if _map_constraint_on(p.map_resolution) else None
    )
    if isinstance(
        p.map_resolution, str
    ):  # "auto" reads the beam energy: checked before the read
        beam_energy_and_convergence(signal)
    p.label = _run_label(p.map_resolution, p.diffraction_constraint)
    p.operator = params["_operator"]
    return p


def _map_constraint_on(map_resolution):
    return map_resolution is not None and map_resolution is not False


#: A smallest value (outside the masks) of at least this many counts suggests an offset: counting
#: data read 0 somewhere (every multislice case, the embedded default and the NIST scan do, up
#: to 50000 electrons per pattern); noise-free intensities (fractions of the beam) stay below it,
#: scaled to 1e6 counts per pattern they do not (a needless warning). A single zero (a dead
#: pixel, a gap) hides an offset, and one below a count is not seen.
_OFFSET_SUSPECT = 1.0


def _read_statistics(signal, p):
    """Stage 2: the data operator and its statistics read, with the checks that need it.

    Returns the operator and the solver's seed; the read also measured the
    direct-beam position of every scan position (``op.beam_positions()``).
    """
    nav_valid, sig_valid = ~p.nav_mask, ~p.sig_mask
    make = p.operator if p.operator is not None else partial(_make_operator, signal)
    op = make(
        nav_valid.astype(float),
        sig_valid.astype(float),
        poisson=bool(p.normalize_poissonian_noise),
    )
    op = _with_clean_masked_entries(signal, op, p.nav_mask, p.sig_mask)
    seed = _expect_range_product(
        op, p.k, p.init, p.sketch, p.normalize_poissonian_noise, p.random_state
    )
    done = _stage_bar(
        p.show_progressbar, f"{p.label}: reading the data (statistics, direct beam)"
    )
    try:
        stats = op.stats()
    finally:
        done()
    if stats["n_bad"]:
        raise ValueError(
            f"the data contain {stats['n_bad']} NaN or infinite values outside the masks; "
            "exclude them with navigation_mask / signal_mask"
        )
    if stats["total"] == 0 and stats["minimum"] >= 0:
        raise ValueError(
            "the data are all zero (outside the masks): they carry no variation, there is nothing to factorize"
        )
    if stats["minimum"] < 0:
        raise ValueError(
            f"NMF needs non-negative data, but the minimum (outside the masks) is "
            f"{stats['minimum']:g}; remove the offset (e.g. s.data.clip(0)) or mask those pixels"
        )
    if stats["minimum"] >= _OFFSET_SUSPECT and p.normalize_poissonian_noise:
        warn(
            f"no pixel of any pattern reads below {stats['minimum']:g}: the data seem to "
            "carry an offset (a dark level or pedestal), which the Poisson weighting takes "
            "for counts (an offset of 5 per pixel dropped the position ARI of the multislice "
            "cases and the embedded default at k = 30 from 0.90-0.93 to 0.26-0.42); subtract "
            f"it before the decomposition (e.g. s = s - {stats['minimum']:g})",
            UserWarning,
        )
    if p.k > min(nav_valid.sum(), sig_valid.sum()):
        raise ValueError(
            f"output_dimension={p.k} is larger than min(unmasked positions, unmasked pixels) = "
            f"{min(nav_valid.sum(), sig_valid.sum())}"
        )
    return op, seed


def _measure_beam(signal, op, p):
    """Stage 3: the mean pattern, its direct beam and the direct-beam disk left out of the fit.

    Hot/dead pixels left unmasked are reported and, with
    ``defect_pixel_mask``, the hot ones left out of the fit with the beam; masked pixels
    take no part in the beam finding (except a masked region that holds the beam itself:
    :func:`hyperspy_cnmf._beam.beam_search_pixels`). The beam positions measured in the
    statistics read are freed of the bias of dead pixels near the beam
    (:func:`hyperspy_cnmf._beam.positions_across_dead_pixels`); a descan is then warned
    about, and half its excursion widens the direct-beam disk. A beam hidden by a beam
    stop (:func:`~hyperspy_cnmf.signals._calibration.beam_and_contrast`; recorded as
    ``direct_beam_hidden``) is warned about: its centre is the pattern's centre of
    inversion symmetry, the stop's shadow is the disk left out, its radius (the Bragg
    disks') comes from the metadata (NaN without the convergence semi-angle), and its
    positions are unknown (NaN).

    Returns
    -------
    mean_pattern : ndarray, shape ``sig_shape``
    beam : Beam
        ``(x, y, radius)`` px, x first.
    hidden : bool
        Whether the beam is hidden (a beam stop).
    mask_radius : float
        Radius (px) of the direct-beam disk left out (0: none).
    beam_mask : ndarray of bool, flat
        Its unmasked pixels, and the hot pixels left out.
    beam_positions : ndarray, shape (n_positions, 2), or None
        ``(x, y)`` px of every scan position.
    """
    nav_valid, sig_valid = ~p.nav_mask, ~p.sig_mask
    mean_pattern = op.mean_pattern(nav_valid).reshape(p.sig_shape)
    _check_variation(op, p, mean_pattern)
    hot, dead = warn_defect_pixels(
        mean_pattern,
        int(nav_valid.sum()),
        mask=p.sig_mask.reshape(p.sig_shape),
        excluded=p.defect_pixel_mask,
    )
    beam, contrast, hidden = beam_and_contrast(
        mean_pattern,
        mask=p.sig_mask.reshape(p.sig_shape),
        dead=dead,  # always: a gap through the beam would cut it in pieces
    )
    beam_positions = op.beam_positions()
    shadow = 0.0
    if hidden:
        # the beam's radius found is its shadow's; the disks' own from the metadata
        shadow = beam.radius
        disk = disk_radius_from_metadata(signal)
        beam = Beam(beam.x, beam.y, np.nan if disk is None else disk)
        warn(
            hidden_beam_text(beam, contrast)
            + f", and the disk of {shadow:.3g} px about it is left out of the fit; the "
            "beam's motion over the scan (descan) is not measured"
            + (
                f"; the Bragg disks' radius is taken from the convergence semi-angle "
                f"({disk:.3g} px)"
                if disk is not None
                else "; the Bragg disks' radius is unknown: set the convergence semi-angle "
                "in the metadata, or pass diffraction_constraint_size=<disk radius, px> "
                "and map_resolution=<probe size>"
            ),
            UserWarning,
        )
        if beam_positions is not None:  # what the centre of mass found is not the beam
            beam_positions = np.full_like(beam_positions, np.nan)
    elif beam_positions is not None:
        beam_positions = positions_across_dead_pixels(
            beam_positions,
            mean_pattern,
            dead,
            valid=beam_search_pixels(p.sig_mask.reshape(p.sig_shape)),
            hot=hot,  # in the data the statistics read measured
        )
    warn_if_beam_moves(beam_positions, p.nav_shape)
    excursion = 0.5 * float(np.max(beam_motion(beam_positions, p.nav_shape)))
    mask_radius = _mask_radius(
        p.direct_beam_mask, Beam(beam.x, beam.y, shadow) if hidden else beam, excursion
    )
    beam_mask = _direct_beam_disk(mask_radius, beam, p.sig_shape) & sig_valid
    if p.defect_pixel_mask:
        # measured on the 3-phase descan multislice case, one hot pixel at 50x the
        # data's maximum: ARI 0.000 (1 cluster) fitted, 0.889 (4) left out. Dead pixels
        # stay in the fit (the zeros they read): a 1-px gap through the beam, left out of
        # the beam finding only, scored 0.889-0.915 fitted and 0.833-0.893 also masked on
        # the abtem_dev cases (the embedded default 0.004 higher masked; session 28 scratch
        # runs, benchmarks/quality_physics.py --detector-gap 1 on the intermediate code)
        beam_mask |= hot.ravel() & sig_valid
    fit_valid = sig_valid & ~beam_mask
    if p.k > fit_valid.sum():
        raise ValueError(
            f"output_dimension={p.k} is larger than the {int(fit_valid.sum())} detector pixels left "
            "outside the direct-beam mask; pass a smaller direct_beam_mask radius or direct_beam_mask=False"
        )
    return mean_pattern, beam, hidden, mask_radius, beam_mask, beam_positions


#: Relative variation ``sum |x_i - mean|^2 / sum |x_i|^2`` below which the statistics read
#: suspects constant data (then checked exactly, or in float64 sums); real counts data give
#: about ``1 / (1 + counts per pixel)``, 1e-3 or more.
_CONSTANT_SUSPECT = 1e-4
#: ... and below which float64 sums (lazy data) prove it: identical patterns give 1e-13.
_CONSTANT_FLOAT64 = 1e-9


def _check_variation(op, p, mean_pattern):
    """Refuse data whose unmasked positions all hold the same pattern (no variation to factorize).

    From the statistics read: ``sq_norm - n |mean pattern|^2`` is the summed
    squared deviation of the patterns from their mean. Where it is small
    (< :data:`_CONSTANT_SUSPECT` of ``sq_norm``), in-memory data are
    compared exactly (no file read), and lazy data are refused when it is
    below :data:`_CONSTANT_FLOAT64` (their sums are float64); a false
    suspicion costs one pass over memory and changes nothing.
    """
    nav_valid, sig_valid = ~p.nav_mask, ~p.sig_mask
    n = int(nav_valid.sum())
    sq = float(op.stats()["sq_norm"])
    m = np.asarray(mean_pattern, dtype=np.float64).ravel()[sig_valid]
    if n < 2 or sq <= 0:
        return
    rel = (sq - n * float(m @ m)) / sq
    if rel >= _CONSTANT_SUSPECT:
        return
    X = getattr(op, "X", None)
    if isinstance(X, np.ndarray):  # in memory: the exact comparison
        rows = np.flatnonzero(nav_valid)
        first = X[rows[0], sig_valid]
        blocks = (rows[i : i + 256] for i in range(0, rows.size, 256))  # bounded copies
        constant = all(np.all(X[block][:, sig_valid] == first) for block in blocks)
    else:
        constant = rel < _CONSTANT_FLOAT64
    if constant:
        raise ValueError(
            f"the data carry no variation: all {n} unmasked positions hold the same diffraction "
            "pattern (constant data), so there is nothing to factorize into components or to "
            "cluster. Check that the right data were loaded (not a blank or one frame repeated) "
            "and that navigation_mask leaves more than one kind of pattern"
        )


def _scaled_operator(op, p, beam_mask):
    """Stage 4: the row and column scales of the fit (Poisson weights, masks), applied to the operator."""
    nav_valid, sig_valid = ~p.nav_mask, ~p.sig_mask
    row_scale, col_scale = (
        nav_valid.astype(float),
        (sig_valid & ~beam_mask).astype(float),
    )
    if p.normalize_poissonian_noise:
        # Row sums over all unmasked pixels (the statistics read, no extra pass); the
        # direct beam then takes no part in the fit through its zero column scale.
        row_scale, col_scale = _poisson_scales(op, nav_valid, sig_valid)
        col_scale = np.where(beam_mask, 0.0, col_scale)
    if p.normalize_poissonian_noise or beam_mask.any():
        op = op.rescaled(row_scale, col_scale)
    return op, row_scale, col_scale


def _settings(p, beam, mask_radius, hidden):
    """The run's settings as recorded (``cnmf_parameters``), before the constraints add theirs."""
    dbm = p.direct_beam_mask
    return dict(
        algorithm=ALGORITHM,
        solver=p.solver,
        max_iter=int(p.max_iter),
        tol=float(p.tol),
        random_state=None
        if p.random_state is None
        else int(p.random_state)
        if np.isscalar(p.random_state)
        else "Generator",
        normalize_poissonian_noise=bool(p.normalize_poissonian_noise),
        sketch=bool(p.sketch),
        n_init=int(p.n_init),
        max_exact_iter=None if p.max_exact_iter is None else int(p.max_exact_iter),
        separate_components=bool(p.separate_components),
        init=p.init if isinstance(p.init, str) else "custom",
        direct_beam_mask=dbm
        if isinstance(dbm, str) or dbm is None
        else bool(dbm)
        if isinstance(dbm, bool)
        else float(dbm),
        **beam.record(),  # direct_beam_x_px, direct_beam_y_px, direct_beam_radius_px
        direct_beam_mask_radius_px=mask_radius,
        direct_beam_hidden=bool(hidden),
        defect_pixel_mask=bool(p.defect_pixel_mask),
    )


def _build_constraints(signal, p, beam, mean_pattern, sig_valid, settings):
    """Stage 5: the map and diffraction constraints (None when off); their settings go into ``settings``.

    Returns ``(map_constraint, diffraction_constraint, map_resolution,
    diffraction_constraint_size)``, the last two NaN when off.
    """
    map_c = None
    res_value, res_how = np.nan, "off"
    if _map_constraint_on(p.map_resolution):
        if isinstance(p.map_resolution, str):
            res_value, res_how = estimate_probe_fwhm(
                signal, mean_pattern, beam_radius_px=beam.radius
            )
        else:
            res_value, res_how = float(p.map_resolution), "user"
        # (step_y, step_x) in the x axis's units, like res_value; array order is (y, x)
        map_c = MapResolutionConstraint(
            p.nav_shape, res_value, scale=p.nav_steps[:2], filter=p.map_filter
        )
    settings.update(
        map_resolution=float(res_value),
        map_resolution_method=res_how,
        map_filter=p.map_filter if map_c is not None else "off",
        # the supports act with the map constraint only: record what runs
        map_support=bool(p.map_support and map_c is not None),
    )

    diff_c = None
    dip_radius = np.nan
    if p.diffraction_constraint:
        diff_c = DiffractionDipConstraint.from_beam(
            beam,
            p.sig_shape,
            p.diffraction_constraint_size,
            p.diffraction_constraint_strength,
            valid=sig_valid,
            mode=p.diffraction_constraint_mode,
        )
        dip_radius = diff_c.radius
    settings.update(
        diffraction_constraint=bool(p.diffraction_constraint),
        diffraction_constraint_size=float(dip_radius),
        diffraction_constraint_mode=p.diffraction_constraint_mode,
        diffraction_constraint_strength=float(p.diffraction_constraint_strength)
        if diff_c
        else float("nan"),
    )
    return map_c, diff_c, res_value, dip_radius


def _fit(op, p, seed, row_scale, col_scale, map_c, diff_c):
    """Stage 6: the solver on the scaled operator, with progress bars and single-threaded BLAS."""
    init = p.init
    if isinstance(init, tuple):
        # HyperSpy layout (loadings (nav, k), factors (sig, k)) in data units -> effective units
        r_safe = np.where(row_scale > 0, row_scale, 1.0)[:, None]
        c_safe = np.where(col_scale > 0, col_scale, 1.0)[:, None]
        init = (init[0] * r_safe, init[1] * c_safe)
    callback, close = _progress_callback(
        p.show_progressbar, p.max_iter, p.max_exact_iter, p.label
    )
    try:
        with _single_threaded_blas():
            return constrained_nmf(
                op,
                p.k,
                solver=p.solver,
                init=init,
                max_iter=p.max_iter,
                tol=p.tol,
                random_state=seed,
                map_constraint=map_c,
                diffraction_constraint=diff_c,
                sketch=p.sketch,
                n_init=p.n_init,
                max_exact_iter=p.max_exact_iter,
                separate=p.separate_components,
                callback=callback,
                map_support=MapSupport(p.nav_shape) if p.map_support else None,
            )
    finally:
        close()


def _to_data_units(
    result, row_scale, col_scale, nav_valid, sig_valid, nav_mask, sig_mask
):
    """Stage 7: HyperSpy's ``(loadings, factors)`` in data units.

    Unit-sum patterns (over the fitted pixels), components sorted by total
    intensity, NaN in the masked positions and pixels. Returns them and the
    order (the solver's index of every stored component).
    """
    r_safe = np.where(row_scale > 0, row_scale, 1.0)[:, None]
    c_safe = np.where(col_scale > 0, col_scale, 1.0)[:, None]
    loadings = result.W / r_safe
    factors = result.Ht / c_safe
    norm = factors[sig_valid].sum(axis=0)
    norm = np.where(norm > 0, norm, 1.0)
    factors /= norm
    loadings *= norm
    order = np.argsort(-loadings[nav_valid].sum(axis=0), kind="stable")
    loadings, factors = loadings[:, order], factors[:, order]
    loadings[nav_mask] = np.nan
    factors[sig_mask] = np.nan
    return loadings, factors, order


def _write_results(lr, p, loadings, factors, sig_mask, record):
    """Stage 8: ``learning_results`` as HyperSpy expects them, plus the run's record (``cnmf_*``)."""
    nav_valid, k = ~p.nav_mask, p.k
    lr.factors = factors
    lr.loadings = loadings
    lr.explained_variance = (
        None  # NMF has no variances; the ratio is each component's share of
    )
    # the modelled counts (loadings x unit-sum factors), the sort order, for HyperSpy's scree plot
    counts = np.nansum(loadings[nav_valid], axis=0)
    lr.explained_variance_ratio = (
        counts / counts.sum() if counts.sum() > 0 else np.full(k, 1.0 / k)
    )
    lr.number_significant_components = k
    lr.decomposition_algorithm = ALGORITHM
    lr.poissonian_noise_normalized = bool(p.normalize_poissonian_noise)
    lr.output_dimension = k
    lr.unfolded = False
    lr.centre = None
    lr.mean = None
    lr.navigation_mask = p.nav_mask.reshape(p.nav_shape) if p.nav_mask.any() else None
    lr.signal_mask = sig_mask.reshape(p.sig_shape) if sig_mask.any() else None
    lr.unmixing_matrix = None
    lr.bss_algorithm = None
    lr.bss_factors = None
    lr.bss_loadings = None
    clear_learning_results(
        lr, "cnmf_"
    )  # no field of an older run stays beside this one
    to_learning_results(lr, record, "cnmf_")


def _primitive_note(info):
    """ " (primitive NMF: both constraints off)" when neither constraint acted."""
    off = info["map_filter"] == "off" and not info["diffraction_constraint"]
    return " (primitive NMF: both constraints off)" if off else ""


def _summary(info, k):
    lines = [
        "Decomposition info:",
        f"  algorithm=constrained_nmf{_primitive_note(info)}  output_dimension={k}  solver={info['solver']}",
        f"  normalize_poissonian_noise={info['normalize_poissonian_noise']}",
        f"  map constraint: resolution={info['map_resolution']:.4g} ({info['map_resolution_method']}), filter={info['map_filter']}",
        f"  diffraction constraint: {info['diffraction_constraint']} "
        f"({info['diffraction_constraint_mode']} closing, size {info['diffraction_constraint_size']:g} px)",
        f"  iterations: {info['n_iter_sketch']} on the sketch + "
        f"{support_iterations_text(info)}{info['n_iter']} exact "
        f"({info['n_passes']} data reads), converged={info['converged']}"
        + (
            f" (sketch converged, exact refinement capped at max_exact_iter={info['max_exact_iter']})"
            if info["sketch_converged"] and not info["converged"]
            else ""
        ),
        (
            f"  final loss={info['final_loss']:.6g} (Poisson-weighted: a reduced chi-square, ~1 at the noise level)"
            if info["normalize_poissonian_noise"]
            else f"  final MSE={info['final_loss']:.6g}"
        ),
    ]
    return "\n".join(lines)


def _unexplained(W, H, Wr, Hr):
    """``||W H^T - Wr Hr^T||^2 / ||W H^T||^2`` through the factors (effective units), float."""
    A = np.hstack([W, Wr])
    B = np.hstack([H, -Hr])
    total = float(((W.T @ W) * (H.T @ H)).sum())
    return float(((A.T @ A) * (B.T @ B)).sum()) / total if total > 0 else 0.0


def model_refit(signal, components):
    """The refit of the decomposition's own model, for ``cluster_components(refit=...)``; or None.

    Fits ``k`` new components to the model of the clustered components,
    ``loadings[:, components] @ factors[:, components].T``, with the weights,
    constraints and solver settings the decomposition recorded
    (``cnmf_row_scale``, ``cnmf_col_scale``, ``cnmf_map_resolution``,
    ``cnmf_parameters``): a :class:`~hyperspy_cnmf.nmf.FactoredOperator`,
    so nothing is read, in memory and out of core alike (the lazy result is
    the in-memory one). The initialisation is ``"nndsvda"`` with the
    decomposition's ``random_state`` (0 where it was None or a Generator); no
    sketch; the iterations stop at ``tol``, by the stall rule or at the
    decomposition's ``max_iter`` (200 by default), as its sketch phase does
    (``refit.info`` records which).

    Parameters
    ----------
    signal : STEM4D or LazySTEM4D
        With a ``decomposition(algorithm="constrained_nmf")``.
    components : ndarray of int
        The decomposition's components that were clustered.

    Returns
    -------
    callable or None
        ``refit(k) -> (factors, loadings)``: float64 arrays of shapes
        ``(k, qy, qx)`` and ``(k, n_positions)`` in data units, as the
        decomposition stores them (unit-sum patterns over the fitted pixels,
        sorted by intensity, NaN where masked); its ``info`` attribute then
        holds the fit's ``n_iter``, ``converged`` and ``unexplained``, the
        share of the model's (weighted) sum of squares that the refit
        leaves. None when the last decomposition was another algorithm or
        its record holds no weights (written by an older version) or no
        direct beam.
    """
    lr = signal.learning_results
    params = decomposition_settings(lr)
    row_scale = getattr(lr, "cnmf_row_scale", None)
    col_scale = getattr(lr, "cnmf_col_scale", None)
    beam = Beam.from_record(params)
    if params is None or row_scale is None or col_scale is None or beam is None:
        return None
    row_scale = np.asarray(row_scale, dtype=np.float64)
    col_scale = np.asarray(col_scale, dtype=np.float64)
    am = signal.axes_manager
    nav_shape, sig_shape = am._navigation_shape_in_array, am._signal_shape_in_array
    idx = np.asarray(components)
    W = (
        np.nan_to_num(np.asarray(lr.loadings[:, idx], dtype=np.float64))
        * row_scale[:, None]
    )
    H = (
        np.nan_to_num(np.asarray(lr.factors[:, idx], dtype=np.float64))
        * col_scale[:, None]
    )
    sig_mask = (
        np.zeros(int(np.prod(sig_shape)), bool)
        if lr.signal_mask is None
        else np.asarray(lr.signal_mask, bool).ravel()
    )
    nav_mask = (
        np.zeros(int(np.prod(nav_shape)), bool)
        if lr.navigation_mask is None
        else np.asarray(lr.navigation_mask, bool).ravel()
    )
    map_c = None
    resolution = float(getattr(lr, "cnmf_map_resolution", np.nan))
    if np.isfinite(resolution):
        map_c = MapResolutionConstraint(
            nav_shape,
            resolution,
            scale=navigation_scales(signal)[:2],
            filter=params.get("map_filter", "tukey"),
        )
    diff_c = None
    if params.get("diffraction_constraint"):
        diff_c = DiffractionDipConstraint.from_beam(  # as _build_constraints made it
            beam,
            sig_shape,
            params["diffraction_constraint_size"],
            params["diffraction_constraint_strength"],
            valid=~sig_mask,
            mode=params["diffraction_constraint_mode"],
        )

    def refit(k):
        with _single_threaded_blas(), warnings.catch_warnings():
            # recorded below (refit.info), not a user-facing cap
            warnings.simplefilter("ignore", ConvergenceWarning)
            result = constrained_nmf(
                FactoredOperator(W, H, row_scale, col_scale),
                int(k),
                solver=params.get("solver", "hals"),
                init="nndsvda",
                max_iter=int(params.get("max_iter", 200)),
                tol=float(params.get("tol", 1e-5)),
                random_state=params.get("random_state")
                if isinstance(params.get("random_state"), int)
                else 0,  # a refit of the same model is the same refit
                map_constraint=map_c,
                diffraction_constraint=diff_c,
                separate=bool(params.get("separate_components", True)),
                map_support=MapSupport(nav_shape)
                if params.get("map_support") and map_c is not None
                else None,
            )
        loadings, factors, _ = _to_data_units(
            result, row_scale, col_scale, ~nav_mask, ~sig_mask, nav_mask, sig_mask
        )
        refit.info = dict(
            n_iter=int(result.n_iter),
            converged=bool(result.converged),
            unexplained=_unexplained(W, H, result.W, result.Ht),
        )
        return factors.T.reshape((int(k),) + tuple(sig_shape)), loadings.T

    refit.info = {}
    return refit
