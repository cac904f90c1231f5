"""The functional API: constrained NMF and diffraction clustering on any 2+2 signal.

Every function takes the signal first and works on any HyperSpy signal with
2 navigation (scan) and 2 signal (detector) dimensions, in memory or lazy: a
plain ``Signal2D``, a pyxem signal (e.g. ``ElectronDiffraction2D``) or this
package's ``STEM4D``. The signal's class, data, axes and methods are left as
they are; the results are stored in its own ``learning_results``, exactly as
the methods of :class:`~hyperspy_cnmf.signals.STEM4D` store them (those
methods are thin wrappers of these functions).

- :func:`decomposition`: constrained NMF (``s.decomposition(algorithm=
  "constrained_nmf")`` of a ``STEM4D``);
- :func:`cluster_diffraction`, :func:`cluster_patterns`,
  :func:`get_cluster_diffraction_results`, :func:`plot_cluster_dendrogram`,
  :func:`plot_cluster_gallery`, :func:`polar_transform`: the
  rotation-invariant clustering;
- :func:`plot_map_spectra`, :func:`get_map_power_beyond`,
  :func:`get_dip_measure`, :func:`plot_dip_measure`: the diagnostics of the
  two constraints;
- :func:`get_direct_beam_position`, :func:`center_direct_beam`: descan;
- :class:`ConstrainedNMF`: a scikit-learn-style estimator for HyperSpy's own
  ``s.decomposition(algorithm=ConstrainedNMF(...))`` on any signal in memory.

Examples
--------
>>> import hyperspy.api as hs
>>> import hyperspy_cnmf
>>> from hyperspy_cnmf.data import simulated_precipitates
>>> s = hs.signals.Signal2D(simulated_precipitates(
...     scan_shape=(16, 16), detector_shape=(24, 24), n_grains=2, grain_diameter=3.0).data)
>>> hyperspy_cnmf.decomposition(s, 4, map_resolution=2, print_info=False, random_state=0)
>>> res = hyperspy_cnmf.cluster_diffraction(s)
>>> type(s).__name__, s.learning_results.decomposition_algorithm
('Signal2D', 'constrained_nmf')
"""

import inspect

import numpy as np
from hyperspy.signal import BaseSignal

from hyperspy_cnmf._warnings import at_user_site
from hyperspy_cnmf.signals import (
    _beam_shift,
    _cluster,
    _decomposition,
    _diagnostics,
    _pyxem,
    _store,
)
from hyperspy_cnmf.signals._axes import check_4d
from hyperspy_cnmf.signals._stem4d import STEM4D

__all__ = [
    "ConstrainedNMF",
    "center_direct_beam",
    "cluster_diffraction",
    "cluster_patterns",
    "decomposition",
    "get_cluster_diffraction_results",
    "get_dip_measure",
    "get_direct_beam_position",
    "get_map_power_beyond",
    "plot_cluster_dendrogram",
    "plot_cluster_gallery",
    "plot_dip_measure",
    "plot_map_spectra",
    "polar_transform",
]

_SIGNAL_ENTRY = """signal : hyperspy.signals.Signal2D or LazySignal2D
    Any signal with 2 navigation (scan) and 2 signal (detector) dimensions:
    a plain ``Signal2D``, a pyxem signal, a ``STEM4D``. Its class, data and
    axes are left unchanged; results go to its own ``learning_results``."""

#: The small simulated dataset of the examples, as a plain ``Signal2D``.
_EXAMPLE_DATA = """>>> import hyperspy.api as hs
>>> import hyperspy_cnmf
>>> from hyperspy_cnmf.data import simulated_precipitates
>>> s = hs.signals.Signal2D(simulated_precipitates(
...     scan_shape=(16, 16), detector_shape=(24, 24), n_grains=2, grain_diameter=3.0).data)"""
_EXAMPLE_DECOMPOSED = (
    _EXAMPLE_DATA
    + "\n>>> hyperspy_cnmf.decomposition(s, 4, map_resolution=2, print_info=False, random_state=0)"
)
_EXAMPLE_CLUSTERED = (
    _EXAMPLE_DECOMPOSED + "\n>>> _ = hyperspy_cnmf.cluster_diffraction(s)"
)


def _check_signal(signal, purpose):
    """The one check of every public function: a HyperSpy signal with 2+2 uniform axes."""
    if not isinstance(signal, BaseSignal):
        raise TypeError(
            f"{purpose} needs a HyperSpy signal with 2 navigation (scan) and 2 signal (detector) "
            f"dimensions, got {type(signal).__name__}; wrap an array with "
            "hyperspy.api.signals.Signal2D(array) (shape (scan_y, scan_x, det_y, det_x))"
        )
    check_4d(signal, purpose)


def _section_bounds(lines, title):
    """``(start, end)`` line indices of a numpydoc section's body, or None."""
    for i in range(len(lines) - 1):
        if lines[i] == title and set(lines[i + 1]) == {"-"}:
            end = len(lines)
            for j in range(i + 2, len(lines) - 1):
                if (
                    lines[j]
                    and set(lines[j + 1]) == {"-"}
                    and not lines[j][0].isspace()
                ):
                    end = j
                    break
            return i + 2, end
    return None


def _function_doc(doc, examples, summary=None, drop=(), first=()):
    """The docstring of a public function from its method's docstring.

    The ``self`` entry becomes the ``signal`` entry (its description kept
    below the common text), the parameters in ``drop`` go, the summary (all
    before "Parameters") is replaced when given, the parameters in
    ``first`` come first, and the examples are ``examples`` (on a plain
    ``Signal2D``).
    """
    lines = inspect.cleandoc(doc).split("\n")
    start, end = _section_bounds(lines, "Parameters")
    body = lines[start:end]
    entries, current = [], None
    for line in body:
        if line and not line[0].isspace():
            current = [line]
            entries.append(current)
        elif current is not None:
            current.append(line)
    own = []
    if entries and entries[0][0].split(" : ")[0].strip() == "self":
        own = [line for line in entries.pop(0)[1:] if line.strip()]
    names = {e[0].split(" : ")[0].strip() for e in entries}
    missing = set(drop) - names
    if missing:
        raise RuntimeError(f"no parameter entries {sorted(missing)} to drop")
    entries = [e for e in entries if e[0].split(" : ")[0].strip() not in drop]
    entries.sort(key=lambda e: e[0].split(" : ")[0].strip() not in first)
    params = _SIGNAL_ENTRY.split("\n") + own
    for entry in entries:
        params.extend(entry)
    while params and not params[-1].strip():
        params.pop()
    head = lines[: start - 2] if summary is None else summary.split("\n") + [""]
    tail = lines[end:]
    ex = _section_bounds(tail, "Examples")
    if ex is not None:
        tail = tail[: ex[0] - 2]
    while tail and not tail[-1].strip():
        tail.pop()
    out = head + ["Parameters", "----------"] + params + [""]
    if tail:
        out += tail + [""]
    out += ["Examples", "--------"] + examples.split("\n")
    return "\n".join(out) + "\n"


def _public(impl, purpose, examples, name=None, result=None, arguments=None):
    """A public function ``f(signal, ...)``: the one check, then the signal layer's ``impl``.

    ``arguments(bound)`` and ``result(out, signal)``, if given, convert the
    arguments (bound to ``impl``'s signature) and the result: pyxem's
    conventions and types (:mod:`hyperspy_cnmf.signals._pyxem`).
    """
    name = name or impl.__name__
    sig = inspect.signature(impl)

    @at_user_site
    def function(signal, *args, **kwargs):
        _check_signal(signal, purpose)
        if arguments is not None:
            bound = sig.bind(signal, *args, **kwargs)
            arguments(bound.arguments)
            args, kwargs = bound.args[1:], bound.kwargs
        out = impl(signal, *args, **kwargs)
        return out if result is None else result(out, signal)

    function.__name__ = function.__qualname__ = name
    function.__module__ = __name__
    function.__doc__ = _function_doc(impl.__doc__, examples)
    params = list(sig.parameters.values())
    params[0] = params[0].replace(name="signal")
    function.__signature__ = sig.replace(parameters=params)
    return function


def _pyxem_results(results, signal):
    """A pyxem signal's clustering results: merged patterns with its metadata (mask, beam energy)."""
    if _pyxem.is_pyxem_signal(signal):
        _pyxem.with_input_metadata(results, signal)
    return results


def _pyxem_shifts(arguments):
    """pyxem's ``BeamShift`` given as ``shifts``: minus it, this package's offsets."""
    if arguments.get("shifts") is not None:
        arguments["shifts"] = _pyxem.beam_shift_offsets(arguments["shifts"])


def _pyxem_polar(polar, signal):
    """A pyxem signal's polar transform as pyxem's ``PolarDiffraction2D``, in pyxem's azimuth."""
    if _pyxem.is_pyxem_signal(signal):
        return _pyxem.as_polar_diffraction(polar, signal)
    return polar


@at_user_site
def decomposition(
    signal, output_dimension=None, *, normalize_poissonian_noise=None, **kwargs
):
    # the docstring: STEM4D.decomposition's, for constrained NMF only (set below)
    _check_signal(signal, "constrained NMF")
    if kwargs.get("signal_mask") is None:  # pyxem's stored mask, if any, is the default
        kwargs["signal_mask"] = _pyxem.stored_mask(signal)
    out = _decomposition.constrained_nmf_decomposition(
        signal,
        output_dimension,
        normalize_poissonian_noise=True
        if normalize_poissonian_noise is None
        else normalize_poissonian_noise,
        **kwargs,
    )
    # What depended on the old decomposition goes: the clustering of the components (and
    # HyperSpy's cluster_* fields it wrote).
    _store.forget_results_of_decomposition(signal.learning_results, True)
    return out


decomposition.__doc__ = _function_doc(
    STEM4D.decomposition.__doc__,
    _EXAMPLE_DATA
    + """
>>> info = hyperspy_cnmf.decomposition(s, 4, map_resolution=2, print_info=False,
...                                    return_info=True, random_state=0)
>>> s.learning_results.factors.shape, s.learning_results.loadings.shape
((576, 4), (256, 4))
>>> type(s).__name__  # still the user's class, with all its methods
'Signal2D'
>>> s.plot_decomposition_results()""",
    summary="""Constrained NMF of a 2+2 signal; the results go to its ``learning_results``.

The data ``X`` (positions x detector pixels) are factorized as ``X ~ W H``
with non-negative maps ``W`` (HyperSpy *loadings*) and diffraction patterns
``H`` (HyperSpy *factors*), under the two constraints of Kimoto et al.,
Sci. Rep. 15, 39143 (2025): maps hold no detail finer than the probe, and
patterns have no downward-convex dips (see :mod:`hyperspy_cnmf.constraints`).
With both constraints off it is the paper's "primitive NMF". The same as
``s.decomposition(algorithm="constrained_nmf", ...)`` of a ``STEM4D``; the
signal's HyperSpy methods (``plot_decomposition_results``,
``get_decomposition_model``, ...) read the results.

On a pyxem signal pyxem's calibration is read: ``signal_mask=None`` takes
its stored mask (``s.calibration.mask``, True = excluded; pass an all-False
array to use every pixel), ``map_resolution="auto"`` its ``beam_energy`` and
``convergence_angle`` (with their ``*_units``), or else its calibrated
signal axes in any of its unit names (``$A^{-1}$``, ``k_nm^-1``,
``q_nm^-1``, ...; :mod:`hyperspy_cnmf.signals._pyxem`).""",
    drop=("algorithm", "*args, **kwargs"),
    first=("output_dimension",),
)

cluster_diffraction = _public(
    _cluster.cluster_diffraction,
    "cluster_diffraction",
    _EXAMPLE_DECOMPOSED
    + """
>>> res = hyperspy_cnmf.cluster_diffraction(s)
>>> sorted(res)
['labels', 'linkage', 'mean_patterns', 'merged_factors', 'merged_maps', 'position_labels', 'pseudo_distance', 'refit_factors', 'refit_loadings', 'rotation']
>>> s.learning_results.cluster_algorithm
'cluster_diffraction'""",
    result=_pyxem_results,
)
cluster_patterns = _public(
    _cluster.cluster_patterns,
    "cluster_patterns",
    _EXAMPLE_DATA
    + """
>>> res = hyperspy_cnmf.cluster_patterns(s, step=2, n_clusters=3)
>>> s.learning_results.number_of_clusters
3""",
    result=_pyxem_results,
)
get_cluster_diffraction_results = _public(
    _cluster.get_cluster_diffraction_results,
    "get_cluster_diffraction_results",
    _EXAMPLE_CLUSTERED
    + """
>>> res = hyperspy_cnmf.get_cluster_diffraction_results(s)
>>> res["merged_factors"].axes_manager.signal_shape
(24, 24)""",
    result=_pyxem_results,
)
polar_transform = _public(
    _cluster.polar_transform,
    "polar_transform",
    _EXAMPLE_DATA
    + """
>>> p = hyperspy_cnmf.polar_transform(s)
>>> type(p).__name__, p.axes_manager.navigation_shape
('Signal2D', (16, 16))""",
    result=_pyxem_polar,
)
plot_cluster_dendrogram = _public(
    _cluster.plot_cluster_dendrogram,
    "plot_cluster_dendrogram",
    _EXAMPLE_CLUSTERED + "\n>>> fig = hyperspy_cnmf.plot_cluster_dendrogram(s)",
)
plot_cluster_gallery = _public(
    _cluster.plot_cluster_gallery,
    "plot_cluster_gallery",
    _EXAMPLE_CLUSTERED + "\n>>> fig = hyperspy_cnmf.plot_cluster_gallery(s)",
)
plot_map_spectra = _public(
    _diagnostics.plot_map_spectra,
    "computing the diagnostics",
    _EXAMPLE_DECOMPOSED + "\n>>> fig = hyperspy_cnmf.plot_map_spectra(s)",
    name="plot_map_spectra",
)
get_map_power_beyond = _public(
    _diagnostics.get_map_power_beyond,
    "computing the diagnostics",
    _EXAMPLE_DECOMPOSED
    + """
>>> hyperspy_cnmf.get_map_power_beyond(s).shape
(4,)""",
    name="get_map_power_beyond",
)
get_dip_measure = _public(
    _diagnostics.get_dip_measure,
    "computing the diagnostics",
    _EXAMPLE_DECOMPOSED
    + """
>>> hyperspy_cnmf.get_dip_measure(s).shape
(4,)""",
    name="get_dip_measure",
)
plot_dip_measure = _public(
    _diagnostics.plot_dip_measure,
    "computing the diagnostics",
    _EXAMPLE_DECOMPOSED + "\n>>> fig = hyperspy_cnmf.plot_dip_measure(s)",
    name="plot_dip_measure",
)
get_direct_beam_position = _public(
    _beam_shift.get_direct_beam_position,
    "the direct-beam position",
    _EXAMPLE_DATA
    + """
>>> hyperspy_cnmf.get_direct_beam_position(s).data.shape
(16, 16, 2)""",
    name="get_direct_beam_position",
)
center_direct_beam = _public(
    _beam_shift.center_direct_beam,
    "center_direct_beam",
    _EXAMPLE_DATA
    + """
>>> c = hyperspy_cnmf.center_direct_beam(s, show_progressbar=False)
>>> type(c).__name__, c.data.shape == s.data.shape, c is s
('Signal2D', True, False)""",
    arguments=_pyxem_shifts,
)


class ConstrainedNMF:
    """Constrained NMF as a scikit-learn-style estimator, for HyperSpy's ``decomposition``.

    ``s.decomposition(algorithm=ConstrainedNMF(n_components=k, ...))`` runs
    the numerical core (:func:`hyperspy_cnmf.nmf.constrained_nmf`) through
    HyperSpy's own decomposition, on any HyperSpy signal in memory (a
    ``Signal1D`` too): HyperSpy unfolds, masks and (with
    ``normalize_poissonian_noise=True``) scales the data, calls
    :meth:`fit_transform` on the matrix ``X`` (positions x signal channels)
    and stores ``W`` as the loadings and ``components_.T`` as the factors.
    The constraints need the geometry that a matrix has lost:

    - the map constraint (no detail finer than the probe) is on when both
      ``navigation_shape`` and ``map_resolution`` are given;
    - the diffraction constraint (no downward-convex dips, centred on the
      direct beam of the mean pattern) is on when ``signal_shape`` is given
      and ``diffraction_constraint`` is True.

    With neither it is plain NMF by the package's solver. The constraints
    act on the matrix HyperSpy passes, i.e. on the Poisson-scaled factors
    when HyperSpy scales the data. Unlike :func:`hyperspy_cnmf.decomposition`
    there is no direct-beam mask, no calibration ("auto" probe size) and no
    ``cnmf_*`` record; use that function for 4D-STEM data. A
    ``navigation_mask`` or ``signal_mask`` removes rows or columns, so the
    map or diffraction constraint cannot be combined with it.

    ``get_params`` and ``set_params`` follow scikit-learn (``clone``,
    ``Pipeline`` and ``GridSearchCV`` work when scikit-learn is installed; it
    is not needed).

    Parameters
    ----------
    n_components : int
        Number of components k (required).
    solver : {"hals", "mu", "als"}, default "hals"
        Update rule (see :func:`hyperspy_cnmf.nmf.constrained_nmf`).
    init : {"nndsvda", "nndsvd", "random"}, default "nndsvda"
        Initialisation.
    max_iter : int, default 200
        Maximum iterations.
    tol : float, default 1e-5
        Relative change of the loss at which the iterations stop.
    random_state : int, numpy.random.Generator or None, default 0
        Seed of the randomized sketch (its Gaussian test matrix) and of random
        starts. Fixed by default: the same call on the same data gives the
        same result; ``None`` draws a fresh seed.
    navigation_shape : tuple of int, optional
        Shape of the scan in array order, ``(rows, columns)``: the rows of
        ``X`` reshaped in C order are the maps, i.e. ``s.data.shape[:2]``
        (the reverse of ``s.axes_manager.navigation_shape``). None: no map
        constraint.
    map_resolution : float, optional
        Probe size (FWHM) in scan steps: power beyond the spatial frequency
        ``1 / map_resolution`` (per step) is removed from every map at every
        iteration. None: no map constraint.
    map_filter : {"tukey", "hard", "gaussian"}, default "tukey"
        Shape of the low-pass filter at the cutoff.
    signal_shape : tuple of int, optional
        Detector shape in array order ``(qy, qx)``, i.e. ``s.data.shape[-2:]``
        of a ``Signal2D``. None: no diffraction constraint.
    diffraction_constraint : bool, default True
        With ``signal_shape``: forbid downward-convex dips (grey-scale
        closing about the direct beam of the mean pattern).
    diffraction_constraint_size : "auto" or float, default "auto"
        Half-length (px) of the closing element; "auto": from the direct-beam
        radius.
    diffraction_constraint_strength : float, default 1.0
        Fraction in (0, 1] of the closing applied per iteration.
    diffraction_constraint_mode : {"azimuthal", "isotropic"}, default "azimuthal"
        Closing along the arcs about the direct beam, or with a disk.
    sketch : bool, default True
        Converge first on a randomized sketch of the data, then refine on the
        exact data.
    n_init : int, default 1
        Number of starts; the one with the lowest loss is kept.
    max_exact_iter : int or None, default None
        Cap on the exact iterations after the sketch (None: ``max_iter``).
    separate_components : bool, default True
        Move pattern content shared between components to the component that
        owns it at the end (see :func:`hyperspy_cnmf.nmf.constrained_nmf`).
    map_support : bool, default True
        With the map constraint: confine every compact object's map to its
        support after the sketch (:class:`hyperspy_cnmf.constraints.MapSupport`).

    Attributes
    ----------
    components_ : ndarray, shape (n_components, n_features)
        The patterns (HyperSpy's factors, transposed).
    n_components_ : int
    n_features_in_ : int
    reconstruction_err_ : float
        Frobenius norm of ``X - W @ components_`` after the fit.
    loss_ : ndarray
        Mean squared error after every iteration.
    n_iter_ : int
        Exact iterations.
    converged_ : bool
        Whether the fit stopped by its rule (``tol``, or a stalled loss)
        rather than by ``max_iter``.

    Examples
    --------
    >>> import hyperspy.api as hs
    >>> from hyperspy_cnmf import ConstrainedNMF
    >>> from hyperspy_cnmf.data import simulated_precipitates
    >>> s = hs.signals.Signal2D(simulated_precipitates(
    ...     scan_shape=(16, 16), detector_shape=(24, 24), n_grains=2, grain_diameter=3.0).data)
    >>> est = ConstrainedNMF(n_components=4, navigation_shape=s.data.shape[:2],
    ...                      map_resolution=3.0, signal_shape=s.data.shape[-2:])
    >>> est
    ConstrainedNMF(map_resolution=3.0, n_components=4, navigation_shape=(16, 16), signal_shape=(24, 24))
    >>> s.decomposition(algorithm=est, print_info=False)
    >>> bool((s.learning_results.factors >= 0).all()), s.learning_results.loadings.shape
    (True, (256, 4))
    """

    def __init__(
        self,
        n_components=None,
        *,
        solver="hals",
        init="nndsvda",
        max_iter=200,
        tol=1e-5,
        random_state=0,
        navigation_shape=None,
        map_resolution=None,
        map_filter="tukey",
        signal_shape=None,
        diffraction_constraint=True,
        diffraction_constraint_size="auto",
        diffraction_constraint_strength=1.0,
        diffraction_constraint_mode="azimuthal",
        sketch=True,
        n_init=1,
        max_exact_iter=None,
        separate_components=True,
        map_support=True,
    ):
        self.n_components = n_components
        self.solver = solver
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.navigation_shape = navigation_shape
        self.map_resolution = map_resolution
        self.map_filter = map_filter
        self.signal_shape = signal_shape
        self.diffraction_constraint = diffraction_constraint
        self.diffraction_constraint_size = diffraction_constraint_size
        self.diffraction_constraint_strength = diffraction_constraint_strength
        self.diffraction_constraint_mode = diffraction_constraint_mode
        self.sketch = sketch
        self.n_init = n_init
        self.max_exact_iter = max_exact_iter
        self.separate_components = separate_components
        self.map_support = map_support

    # scikit-learn's estimator protocol, without importing scikit-learn
    @classmethod
    def _get_param_names(cls):
        return sorted(
            p.name
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind != p.VAR_KEYWORD
        )

    def get_params(self, deep=True):
        """The estimator's parameters, as scikit-learn's ``get_params``.

        Parameters
        ----------
        deep : bool, default True
            Accepted for compatibility (no parameter is an estimator).

        Returns
        -------
        dict
        """
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        """Set parameters, as scikit-learn's ``set_params``; returns the estimator.

        Raises
        ------
        ValueError
            For a name that is not a parameter.
        """
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"invalid parameter {name!r} for {type(self).__name__}; valid parameters: {valid}"
                )
            setattr(self, name, value)
        return self

    def __repr__(self):
        defaults = {
            p.name: p.default
            for p in inspect.signature(type(self).__init__).parameters.values()
        }
        changed = []
        for name, value in self.get_params().items():
            default = defaults.get(name)
            if not (
                value is default
                or (
                    type(value) is type(default)
                    and np.ndim(value) == 0
                    and value == default
                )
            ):
                if isinstance(value, list):
                    value = tuple(value)
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    # fitting
    def _check_X(self, X, n_features=None):
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(
                f"ConstrainedNMF needs a 2D array (n_samples, n_features), got shape {X.shape}"
            )
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float64)
        if not np.isfinite(X).all():
            raise ValueError("ConstrainedNMF needs finite data (no NaN or inf)")
        if X.size and X.min() < 0:
            raise ValueError(
                f"ConstrainedNMF needs non-negative data; the minimum is {float(X.min())}"
            )
        if n_features is not None and X.shape[1] != n_features:
            raise ValueError(
                f"X has {X.shape[1]} features, but the estimator was fitted with {n_features}"
            )
        return np.ascontiguousarray(X)

    def _constraints(self, X):
        from hyperspy_cnmf._beam import locate_direct_beam
        from hyperspy_cnmf.constraints import (
            DiffractionDipConstraint,
            MapResolutionConstraint,
        )

        n_samples, n_features = X.shape
        map_c = diff_c = None
        if (self.navigation_shape is None) != (self.map_resolution is None):
            raise ValueError(
                "the map constraint needs both navigation_shape (the scan shape in array order) "
                "and map_resolution (the probe FWHM in scan steps); give both or neither"
            )
        if self.navigation_shape is not None:
            nav = tuple(int(v) for v in self.navigation_shape)
            if len(nav) != 2 or int(np.prod(nav)) != n_samples:
                raise ValueError(
                    f"navigation_shape {nav} does not match the {n_samples} rows of X: the map "
                    "constraint needs every scan position (no navigation_mask) and a 2D scan"
                )
            map_c = MapResolutionConstraint(
                nav, self.map_resolution, filter=self.map_filter
            )
        if self.signal_shape is not None and self.diffraction_constraint:
            sig = tuple(int(v) for v in self.signal_shape)
            if len(sig) != 2 or int(np.prod(sig)) != n_features:
                raise ValueError(
                    f"signal_shape {sig} does not match the {n_features} columns of X: the "
                    "diffraction constraint needs every detector pixel (no signal_mask) and a 2D detector"
                )
            beam = locate_direct_beam(X.mean(axis=0).reshape(sig))
            diff_c = DiffractionDipConstraint.from_beam(
                beam,
                sig,
                self.diffraction_constraint_size,
                self.diffraction_constraint_strength,
                mode=self.diffraction_constraint_mode,
            )
        return map_c, diff_c

    @at_user_site
    def fit_transform(self, X, y=None):
        """Fit the model to ``X`` and return the maps ``W`` (HyperSpy's loadings).

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features)
            Non-negative, finite data.
        y : None
            Ignored.

        Returns
        -------
        ndarray, shape (n_samples, n_components)
        """
        from hyperspy_cnmf.constraints import MapSupport
        from hyperspy_cnmf.nmf import DenseOperator, constrained_nmf

        if self.n_components is None:
            raise ValueError(
                "ConstrainedNMF needs n_components (the number of components k)"
            )
        X = self._check_X(X)
        map_c, diff_c = self._constraints(X)
        result = constrained_nmf(
            DenseOperator(X),
            self.n_components,
            solver=self.solver,
            init=self.init,
            max_iter=self.max_iter,
            tol=self.tol,
            random_state=self.random_state,
            map_constraint=map_c,
            diffraction_constraint=diff_c,
            sketch=self.sketch,
            n_init=self.n_init,
            max_exact_iter=self.max_exact_iter,
            separate=self.separate_components,
            map_support=MapSupport(tuple(self.navigation_shape))
            if self.map_support and map_c is not None
            else None,
        )
        self.components_ = np.ascontiguousarray(result.Ht.T)
        self.n_components_ = int(result.Ht.shape[1])
        self.n_features_in_ = int(X.shape[1])
        self.loss_ = np.asarray(result.loss)
        self.n_iter_ = int(result.n_iter)
        self.converged_ = bool(result.converged)
        self.reconstruction_err_ = float(np.linalg.norm(X - result.W @ result.Ht.T))
        return result.W

    def fit(self, X, y=None):
        """Fit the model to ``X``; returns the estimator.

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        ConstrainedNMF
        """
        self.fit_transform(X)
        return self

    @at_user_site
    def transform(self, X):
        """The non-negative maps of ``X`` for the fitted patterns (``components_`` fixed).

        Non-negative least squares by HALS sweeps over the components
        (no constraint on the maps).

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features)

        Returns
        -------
        ndarray, shape (n_samples, n_components)
        """
        if not hasattr(self, "components_"):
            raise RuntimeError("this ConstrainedNMF is not fitted yet: call fit first")
        X = self._check_X(X, self.n_features_in_)
        H = self.components_.astype(np.float64)
        HHt = H @ H.T
        XHt = X @ H.T
        diag = np.diag(HHt)
        W = np.maximum(np.linalg.lstsq(HHt, XHt.T, rcond=None)[0].T, 0.0)
        for _ in range(max(int(self.max_iter), 1)):
            change = 0.0
            for j in range(W.shape[1]):
                if diag[j] <= 0:
                    W[:, j] = 0.0
                    continue
                new = np.maximum(W[:, j] + (XHt[:, j] - W @ HHt[:, j]) / diag[j], 0.0)
                change += float(np.sum((new - W[:, j]) ** 2))
                W[:, j] = new
            if change <= self.tol**2 * max(float(np.sum(W**2)), np.finfo(float).tiny):
                break
        return W
