"""Every argument and input of decomposition(algorithm="constrained_nmf"): one clear error
before the first read, degenerate inputs refused, and results that do not depend on units."""

import warnings

import dask.array as da
import hyperspy.api as hs
import numpy as np
import pytest

from hyperspy_cnmf.data import simulated_precipitates


@pytest.fixture(scope="module")
def small():
    return simulated_precipitates(scan_shape=(24, 24), n_grains=2, random_state=0)


def _run(s, k=4, **kw):
    kw.setdefault("random_state", 0)
    kw.setdefault("print_info", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return s.decomposition(
            algorithm="constrained_nmf", output_dimension=k, return_info=True, **kw
        )


class _ReadError(RuntimeError):
    pass


def _unreadable(s):
    """A lazy copy of ``s`` whose every chunk raises when it is read."""

    def fail(block):
        raise _ReadError("the data were read")

    data = da.map_blocks(
        fail,
        da.from_array(np.asarray(s.data, np.float32), chunks=(8, 8, -1, -1)),
        dtype=np.float32,
    )
    lazy = s.as_lazy()
    lazy.data = data
    return lazy


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tol=-1e-3), "tol must be a finite number"),
        (dict(tol=float("nan")), "tol must be a finite number"),
        (dict(max_iter=-1), "max_iter must be an integer >= 0"),
        (dict(max_iter=2.5), "max_iter must be an integer >= 0"),
        (dict(max_iter=True), "max_iter must be an integer >= 0"),
        (dict(random_state=-1), "random_state must be None or an integer >= 0"),
        (dict(random_state="0"), "random_state must be None"),
        (dict(n_init=0), "n_init must be an integer >= 1"),
        (dict(solver="cd"), "unknown solver 'cd'"),
        (dict(init="svd"), "unknown init 'svd'"),
        (dict(map_filter="tukeyy"), "unknown map_filter 'tukeyy'"),
        (dict(map_resolution=-2.0), "map_resolution must be"),
        (
            dict(diffraction_constraint_strength=2),
            r"diffraction_constraint_strength must be a finite number in \(0, 1\]",
        ),
        (dict(diffraction_constraint_size=0.5), "diffraction_constraint_size must be"),
        (
            dict(diffraction_constraint_mode="radial"),
            "unknown diffraction_constraint_mode",
        ),
        (dict(max_exact_iter="few"), "unknown max_exact_iter"),
        (dict(direct_beam_mask=-3), "direct_beam_mask must be"),
        (dict(sketch="yes"), "sketch must be True or False"),
        (
            dict(init=(np.ones((5, 4)), np.ones((48 * 48, 4)))),
            r"loadings must have the shape \(576, 4\)",
        ),
        (
            dict(init=(np.ones((576, 4)), np.ones((48 * 48, 3)))),
            r"factors must have the shape \(2304, 4\)",
        ),
        (
            dict(init=(np.zeros((576, 4)), np.ones((48 * 48, 4)))),
            r"all zero for component\(s\) \[0, 1, 2, 3\]",
        ),
        (dict(output_dimension=2.0), "output_dimension must be an integer >= 1"),
    ],
)
def test_bad_parameters_are_reported_before_the_first_read(small, kwargs, match):
    s = _unreadable(small)
    with pytest.raises(_ReadError):  # the probe: any read of this signal raises
        s.data.compute()
    k = kwargs.pop("output_dimension", 4)
    with pytest.raises(ValueError, match=match):
        _run(s, k=k, **kwargs)


def test_a_good_call_does_read(small):
    with pytest.raises(_ReadError):
        _run(_unreadable(small))


def test_complex_data_one_type_error_before_any_read(small):
    s = _unreadable(small)
    s.data = s.data.astype(np.complex64)  # dtype only: still unreadable
    with pytest.raises(TypeError, match="real, non-negative data; got complex data"):
        _run(s)
    eager = small.deepcopy()
    eager.data = eager.data.astype(np.complex64)
    with pytest.raises(TypeError, match="got complex data"):
        _run(eager)


def test_non_uniform_navigation_axis_is_a_clear_error_before_any_read(small):
    data = np.asarray(small.data)
    axes = [
        {"axis": np.arange(24) ** 1.5, "name": "y", "units": "nm"},
        {"size": 24, "scale": 0.2, "name": "x", "units": "nm"},
        {"size": 48},
        {"size": 48},
    ]
    s = hs.signals.Signal2D(data, axes=axes)
    s.set_signal_type("4D-STEM")
    with pytest.raises(ValueError, match="navigation axis 'y' is non-uniform"):
        _run(s)
    lazy = _unreadable(small)
    lazy.axes_manager.navigation_axes[0].convert_to_non_uniform_axis()
    with pytest.raises(ValueError, match="non-uniform"):
        _run(lazy)
    # the diagnostics refuse it too, with the same message instead of an AttributeError
    fitted = small.deepcopy()
    _run(fitted)
    fitted.axes_manager.navigation_axes[1].convert_to_non_uniform_axis()
    with pytest.raises(ValueError, match="navigation axis 'y' is non-uniform"):
        fitted.get_map_power_beyond()


@pytest.mark.parametrize("poisson", [True, False])
def test_all_zero_data_are_named(small, poisson):
    s = small.deepcopy()
    s.data = np.zeros_like(s.data)
    with pytest.raises(ValueError, match="the data are all zero"):
        _run(s, normalize_poissonian_noise=poisson)
    lazy = s.as_lazy()
    with pytest.raises(ValueError, match="the data are all zero"):
        _run(lazy, normalize_poissonian_noise=poisson)


def test_big_endian_data_fit_like_native_and_stay_untouched(small):
    native = small.deepcopy()
    _run(native)
    big = small.deepcopy()
    big.data = big.data.astype(">f4")
    before = big.data.copy()
    _run(big)
    assert big.data.dtype == np.dtype(">f4")
    np.testing.assert_array_equal(big.data, before)
    np.testing.assert_array_equal(
        big.learning_results.factors, native.learning_results.factors
    )
    np.testing.assert_array_equal(
        big.learning_results.loadings, native.learning_results.loadings
    )


def test_lazy_and_eager_max_iter_0_agree(small):
    eager, lazy = small.deepcopy(), small.as_lazy()
    info_e = _run(eager, max_iter=0, max_exact_iter=1)
    info_l = _run(lazy, max_iter=0, max_exact_iter=1)
    assert info_e["n_iter"] == info_l["n_iter"] == 0
    assert info_e["n_iter_sketch"] == info_l["n_iter_sketch"] == 0
    np.testing.assert_allclose(
        lazy.learning_results.factors,
        eager.learning_results.factors,
        rtol=1e-4,
        atol=1e-7,
    )


@pytest.mark.parametrize("poisson", [True, False])
def test_decomposition_is_scale_equivariant(small, poisson):
    """decomposition(c X): the same factors and c times the loadings (the default call otherwise).

    Exact to float64 rounding for powers of 16: the Poisson-weighted data scale by
    sqrt(c) and the factors by its square root, and every sum over positions is rounded
    on a power-of-two grid (``round_sums``, ``round_entries``), so that no split of the
    data shows. Other factors round those sums differently in their 24th bit, as storing
    ``c X`` in float32 would: measured within 2e-5 (factors) and 7e-5 (loadings) of the
    maximum, the fit's own convergence (``tol`` 1e-5 on the loss); 1e-6 for 2**-10 and
    2**13.
    """
    ref = small.deepcopy()
    ref.data = ref.data.astype(np.float64)
    _run(ref, normalize_poissonian_noise=poisson)
    F, L = ref.learning_results.factors, ref.learning_results.loadings
    for c, tol in (
        (2.0**-12, 1e-8),
        (2.0**16, 1e-8),
        (2.0**-10, 3e-4),
        (2.0**13, 3e-4),
        (1e-3, 3e-4),
        (10.0, 3e-4),
        (1e4, 3e-4),
    ):
        s = small.deepcopy()
        s.data = s.data.astype(np.float64) * c
        _run(s, normalize_poissonian_noise=poisson)
        np.testing.assert_allclose(
            s.learning_results.factors, F, rtol=0, atol=tol * np.nanmax(F)
        )
        np.testing.assert_allclose(
            s.learning_results.loadings, c * L, rtol=0, atol=tol * c * np.nanmax(L)
        )


def test_dip_measure_refuses_factors_with_negative_values(small):
    s = small.deepcopy()
    s.decomposition(print_info=False)  # SVD
    with pytest.raises(
        ValueError, match="meant for non-negative factors.*algorithm='SVD'"
    ):
        s.get_dip_measure()
    with pytest.raises(ValueError, match="meant for non-negative factors"):
        s.plot_dip_measure()
    nmf = small.deepcopy()
    _run(nmf)
    d = nmf.get_dip_measure()
    assert np.all((d >= 0) & (d < 1))
    with pytest.raises(ValueError, match="run 'svd'"):
        nmf.plot_dip_measure({"svd": s})


# -- degenerate calibrations and data: one clear error before (or at) the first read --------


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # HyperSpy, on inf
@pytest.mark.parametrize("step", [0.0, float("nan"), float("inf")])
def test_zero_or_non_finite_scan_step_before_the_first_read(small, step):
    """A zero step gave a NonFiniteError deep in the solver; now one ValueError naming the axis."""
    s = _unreadable(small)
    s.axes_manager.navigation_axes[1].scale = step  # y
    with pytest.raises(
        ValueError, match=r"navigation axis 'y' has scale .*\.scale = 0\.5"
    ):
        _run(s)
    eager = small.deepcopy()
    eager.axes_manager.navigation_axes[1].scale = step
    with pytest.raises(ValueError, match="navigation axis 'y'"):
        _run(eager)
    eager.axes_manager.navigation_axes[1].scale = -0.5  # a flipped axis is a step
    assert _run(eager, max_iter=3)["map_resolution"] > 0
    _run(
        small.deepcopy(), map_resolution=None, max_iter=3
    )  # no map constraint: not needed


@pytest.mark.parametrize(
    "energy, units, match",
    [
        (200e3, None, r"200000 keV is not a plausible TEM beam energy .* 200 keV\?"),
        (300e3, None, r"300 keV\?"),
        (0.2, None, r"0\.2 keV is not a plausible"),
        (5e6, "eV", r"5000 keV is not a plausible"),
    ],
)
def test_implausible_beam_energy_before_the_first_read(small, energy, units, match):
    s = _unreadable(small)
    s.metadata.set_item("Acquisition_instrument.TEM.beam_energy", energy)
    if units:
        s.metadata.set_item("Acquisition_instrument.TEM.beam_energy_units", units)
    with pytest.raises(ValueError, match=match):
        _run(s)


def test_beam_energy_in_ev_with_its_unit_is_converted(small):
    ref = _run(small.deepcopy(), max_iter=3)
    s = small.deepcopy()
    s.metadata.set_item("Acquisition_instrument.TEM.beam_energy", 200e3)
    s.metadata.set_item("Acquisition_instrument.TEM.beam_energy_units", "eV")
    assert _run(s, max_iter=3)["map_resolution"] == pytest.approx(ref["map_resolution"])


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("kind", ["constant", "one frame repeated"])
def test_constant_data_one_clear_error(small, lazy, kind):
    """Every position the same pattern: 'no variation' from the statistics read, not a radial_range error."""
    s = small.deepcopy()
    s.data[:] = 5.0 if kind == "constant" else s.data[3, 4]
    s = s.as_lazy() if lazy else s
    with pytest.raises(
        ValueError, match="the data carry no variation: all 576 unmasked"
    ):
        _run(s)


def test_one_differing_position_is_variation(small):
    s = small.deepcopy()
    s.data[:] = s.data[3, 4]
    s.data[0, 0] += 1.0  # one count more at every pixel of one position
    _run(s, max_iter=3)
    s.data[0, 0] = s.data[3, 4]
    mask = np.zeros(s.axes_manager.navigation_shape[::-1], bool)
    with pytest.raises(ValueError, match="no variation"):
        _run(s, navigation_mask=mask)


def test_an_offset_is_reported_and_counts_are_not(small):
    """Counting data read 0 somewhere; data whose smallest value is 1 or more carry an offset
    (a dark level), which the Poisson weighting takes for counts: one warning naming the
    subtraction. Noise-free intensities (fractions) and counts raise none."""

    def offset_warnings(s, **kw):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s.decomposition(
                algorithm="constrained_nmf",
                output_dimension=2,
                max_iter=3,
                random_state=0,
                print_info=False,
                **kw,
            )
        return [str(w.message) for w in caught if "offset" in str(w.message)]

    assert float(np.min(small.data)) == 0.0 and not offset_warnings(small.deepcopy())
    shifted = small.deepcopy()
    shifted.data = shifted.data.astype(np.float32) + 5
    (message,) = offset_warnings(shifted)
    assert "reads below 5" in message and "s = s - 5" in message
    assert not offset_warnings(shifted.as_lazy(), normalize_poissonian_noise=False)
    fractions = small.deepcopy()
    fractions.data = (fractions.data.astype(np.float32) + 5) / 1e4
    assert not offset_warnings(fractions)
