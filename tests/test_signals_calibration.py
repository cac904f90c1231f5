"""Units of the axes (issue 11, item 8): converted with pint, or a clear error.

The probe size (``map_resolution="auto"``) and the map filter's scan steps
must not depend on how the calibration is spelled: x in nm and y in Å is the
same scan as both in nm.
"""

import warnings

import numpy as np
import pytest

from hyperspy_cnmf.constraints import electron_wavelength
from hyperspy_cnmf.signals import STEM4D
from hyperspy_cnmf.signals._calibration import (
    beam_energy_and_convergence,
    estimate_probe_fwhm,
    microscopy_spelling,
    navigation_scales,
    unit_quantity,
    warn_defect_pixels,
)

NAV = (6, 8)
SIG = (24, 24)


def _signal(
    nav_units=("nm", "nm"),
    nav_scales=(0.5, 0.5),
    sig_units=("1/nm", "1/nm"),
    sig_scales=(0.1, 0.1),
    energy=None,
    alpha=None,
):
    rng = np.random.default_rng(0)
    yy, xx = np.indices(SIG, dtype=float)
    disk = np.clip(4.5 - np.hypot(yy - 12, xx - 12), 0, 1)
    ring = np.exp(-((np.hypot(yy - 12, xx - 12) - 9) ** 2) / 2.0)
    w = rng.uniform(0.2, 1.0, NAV + (1, 1))
    s = STEM4D(
        rng.poisson(100 * disk + 20 * w * ring + 20 * (1 - w) * ring[::-1] + 1).astype(
            np.float32
        )
    )
    for ax, u, sc in zip(s.axes_manager.navigation_axes, nav_units, nav_scales):
        ax.units, ax.scale = u, sc
    for ax, u, sc in zip(s.axes_manager.signal_axes, sig_units, sig_scales):
        ax.units, ax.scale = u, sc
    if energy:
        s.metadata.set_item("Acquisition_instrument.TEM.beam_energy", energy)
    if alpha:
        s.metadata.set_item("Acquisition_instrument.TEM.convergence_angle", alpha)
    return s


def _fwhm(s):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback
        return estimate_probe_fwhm(s, s.mean(axis=s.axes_manager.navigation_axes).data)


def test_mixed_navigation_units_are_converted():
    ref = _signal()
    mixed = _signal(
        nav_units=("nm", "Å"), nav_scales=(0.5, 5.0)
    )  # the same 0.5 nm steps
    assert navigation_scales(mixed) == pytest.approx((0.5, 0.5, "nm")[:2] + ("nm",))
    assert _fwhm(mixed) == pytest.approx(_fwhm(ref))
    # the x axis's unit is the unit of the result
    in_angstrom = _signal(nav_units=("Å", "nm"), nav_scales=(5.0, 0.5))
    assert _fwhm(in_angstrom)[0] == pytest.approx(10 * _fwhm(ref)[0])


def test_mixed_units_give_the_same_decomposition():
    kw = dict(
        algorithm="constrained_nmf",
        output_dimension=2,
        max_iter=10,
        random_state=0,
        print_info=False,
        return_info=True,
    )
    ref, mixed = _signal(), _signal(nav_units=("nm", "Å"), nav_scales=(0.5, 5.0))
    info_ref = ref.decomposition(**kw)
    info = mixed.decomposition(**kw)
    assert info["map_resolution"] == pytest.approx(info_ref["map_resolution"])
    np.testing.assert_allclose(
        mixed.learning_results.factors,
        ref.learning_results.factors,
        rtol=1e-3,
        atol=1e-9,
    )  # 5 Å * 0.1 = 0.5 nm up to rounding
    # uncalibrated detector: the fallback is 2 scan steps in nm, not 2 x 5 "steps" of the Å axis
    kw.update(map_resolution="auto")
    mixed = _signal(
        nav_units=("nm", "Å"),
        nav_scales=(0.5, 5.0),
        sig_units=("px", "px"),
        sig_scales=(1, 1),
    )
    with pytest.warns(UserWarning, match="2 scan steps"):
        info = mixed.decomposition(**kw)
    assert info["map_resolution"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "sig_units, sig_scales, energy",
    [
        (("1/Å", "1/Å"), (0.01, 0.01), None),
        (("Å^-1", "A^-1"), (0.01, 0.01), None),
        (("nm-1", "1/nm"), (0.1, 0.1), None),
        (("1/nm", "1/Å"), (0.1, 0.01), None),
        # pyxem's names (its axes, s.unit = ...): TeX, k = 1/d, q = 2 pi / d, 2 theta
        (("$A^{-1}$", r"$\AA^{-1}$"), (0.01, 0.01), None),
        (("nm$^{-1}$", "k_nm^-1"), (0.1, 0.1), None),
        (("k_A^-1", "q_A^-1"), (0.01, 0.02 * np.pi), None),
        (("q_nm^-1", "q_nm^-1"), (0.2 * np.pi, 0.2 * np.pi), None),
        (("2th_rad", "2th_deg"), (0.1 * 0.0025079, np.rad2deg(0.1 * 0.0025079)), 200.0),
        (("mrad", "mrad"), (0.1 * 1e3 * 0.0025079, 0.1 * 1e3 * 0.0025079), 200.0),
        (("rad", "mrad"), (0.1 * 0.0025079, 0.1 * 1e3 * 0.0025079), 200.0),
    ],
)
def test_signal_units_spelled_any_way(sig_units, sig_scales, energy):
    ref = _fwhm(_signal())
    got = _fwhm(_signal(sig_units=sig_units, sig_scales=sig_scales, energy=energy))
    assert got[0] == pytest.approx(ref[0], rel=2e-3)
    assert got[1] == ref[1]


def test_length_units_spelled_any_way():
    ref = _fwhm(_signal(energy=200.0, alpha=20.0))[0]
    for units, scale, factor in (
        ("Å", 5.0, 10.0),
        ("A", 5.0, 10.0),
        ("angstrom", 5.0, 10.0),
        ("µm", 5e-4, 1e-3),
        ("um", 5e-4, 1e-3),
        ("pm", 500.0, 1e3),
    ):
        s = _signal(
            nav_units=(units, units),
            nav_scales=(scale, scale),
            energy=200.0,
            alpha=20.0,
        )
        assert _fwhm(s)[0] == pytest.approx(ref * factor), units


@pytest.mark.parametrize(
    "nav_units, match",
    [
        (
            ("nm", "px"),
            r"navigation axes have incompatible units: 'x' in 'nm' and 'y' in 'px'",
        ),
        (("nm", "bananas"), r"incompatible units.*not understood"),
        (("nm", "furlong / fortnight"), r"incompatible units"),
        (("nm", "mrad"), r"incompatible units"),
    ],
)
def test_incompatible_navigation_units_raise(nav_units, match):
    s = _signal(nav_units=nav_units)
    with pytest.raises(ValueError, match=match):
        navigation_scales(s)
    with pytest.raises(ValueError, match=match):  # before the first read of the data
        s.decomposition(algorithm="constrained_nmf", output_dimension=2)


def test_incompatible_signal_units_raise():
    s = _signal(sig_units=("1/nm", "px"))
    with pytest.raises(ValueError, match=r"signal axes have incompatible units"):
        s.decomposition(
            algorithm="constrained_nmf",
            output_dimension=2,
            max_iter=2,
            print_info=False,
        )


def test_uncalibrated_units_keep_the_fallback():
    s = _signal(nav_units=("px", "<undefined>"), nav_scales=(1, 1))
    assert navigation_scales(s) == (1.0, 1.0, "px")
    with pytest.warns(UserWarning, match="2 scan steps"):
        assert (
            estimate_probe_fwhm(s, s.mean(axis=s.axes_manager.navigation_axes).data)[0]
            == 2.0
        )
    assert unit_quantity("px") is None
    with pytest.raises(ValueError, match="not understood"):
        unit_quantity("bananas")


#: Each unit name and the number of 1/nm of k = 1/d (or mrad) that one of it is.
_RECIPROCAL = {
    "1/nm": 1.0,
    "nm-1": 1.0,
    "nm$^{-1}$": 1.0,
    "$nm^{-1}$": 1.0,
    "k_nm^-1": 1.0,
    "Å^-1": 10.0,
    "\u212b^-1": 10.0,  # the ångström sign U+212B
    "1/A": 10.0,
    "A^-1": 10.0,
    "A-1": 10.0,
    "$A^{-1}$": 10.0,
    r"$\AA^{-1}$": 10.0,
    "k_A^-1": 10.0,
    "q_nm^-1": 1 / (2 * np.pi),
    "q_A^-1": 10 / (2 * np.pi),
    "µm-1": 1e-3,
    r"$\mu m^{-1}$": 1e-3,
}


@pytest.mark.parametrize("units", sorted(_RECIPROCAL))
def test_reciprocal_unit_names(units):
    """Each spelling, pyxem's included, is a reciprocal length pint converts; q carries 2 pi."""
    q = unit_quantity(units)
    assert q.to("1/nm").magnitude == pytest.approx(_RECIPROCAL[units], rel=1e-12)


@pytest.mark.parametrize(
    "units, mrad", [("2th_rad", 1e3), ("2th_deg", np.pi / 0.18), ("mrad", 1.0)]
)
def test_scattering_angle_unit_names(units, mrad):
    assert unit_quantity(units).to("mrad").magnitude == pytest.approx(mrad, rel=1e-12)


def test_spelling_rules_leave_other_units_alone():
    assert microscopy_spelling("mA") == "mA"  # the milliampere stays
    assert str(unit_quantity("A").units) == "angstrom"  # a lone A is the ångström
    assert microscopy_spelling("$A^{-1}$") == "Å^-1"
    assert microscopy_spelling("q_nm^-1") == "(nm^-1) / (2 * pi)"
    with pytest.raises(ValueError, match="not understood"):
        unit_quantity("k_bananas")
    with pytest.raises(ValueError, match="not understood"):
        unit_quantity("2")


def test_metadata_units_are_read():
    """``beam_energy_units`` / ``convergence_angle_units`` (pyxem's Calibration) convert."""
    s = _signal(energy=200.0, alpha=20.0)
    assert beam_energy_and_convergence(s) == (200.0, 20.0)  # no units: keV, mrad
    tem = s.metadata.Acquisition_instrument.TEM
    tem.beam_energy, tem.beam_energy_units = 200.0, "kilovolt"  # pyxem's setter
    tem.convergence_angle, tem.convergence_angle_units = 20.0, "milliradian"
    assert beam_energy_and_convergence(s) == pytest.approx((200.0, 20.0))
    tem.beam_energy, tem.beam_energy_units = 2e5, "V"
    tem.convergence_angle, tem.convergence_angle_units = 0.02, "rad"
    assert beam_energy_and_convergence(s) == pytest.approx((200.0, 20.0))
    tem.beam_energy, tem.beam_energy_units = 3.2e-14, "J"  # an energy, not a voltage
    assert beam_energy_and_convergence(s)[0] == pytest.approx(199.7, rel=1e-3)
    ref = _fwhm(_signal(energy=200.0, alpha=20.0))
    tem.beam_energy, tem.beam_energy_units = 200.0, "kV"
    assert _fwhm(s) == (pytest.approx(ref[0], rel=1e-12), ref[1])
    tem.convergence_angle_units = "nm"
    with pytest.raises(ValueError, match="convergence_angle_units"):
        beam_energy_and_convergence(s)
    assert electron_wavelength(200.0) == pytest.approx(0.0025079, rel=1e-4)


# -- the hot-pixel warning is significance-based ------------------------------


def _counts(dose, scan=(32, 32), seed=0):
    from hyperspy_cnmf.data import simulated_precipitates

    return simulated_precipitates(
        scan_shape=scan,
        detector_shape=(48, 48),
        dose=dose,
        n_grains=3,
        grain_diameter=4.0,
        random_state=seed,
    ).data


def _hot_warnings(data):
    mean = data.reshape(-1, *data.shape[-2:]).mean(axis=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hot, _ = warn_defect_pixels(mean, data.shape[0] * data.shape[1])
    return hot, [w for w in caught if "hot detector pixel" in str(w.message)]


@pytest.mark.parametrize("dose", [20, 2000])
def test_no_hot_pixels_from_counting_noise(dose):
    """Stray counts in dark pixels are no hot pixels: at 20 counts per pattern, and on 3 x 3 crops.

    Before the Poisson rule, 2-20 pixels were reported on the full scan at 20 counts and
    12-47 on every 3 x 3 crop at any dose.
    """
    for seed in range(2):
        data = _counts(dose, seed=seed)
        assert not _hot_warnings(data)[1]
        for iy in range(0, 30, 6):
            for ix in range(0, 30, 6):
                assert not _hot_warnings(data[iy : iy + 3, ix : ix + 3])[1]


def test_a_real_hot_pixel_warns_at_low_dose_and_on_a_crop():
    data = _counts(20)[10:13, 10:13].copy()
    data[..., 5, 40] += (
        20.0  # 20 counts in every pattern where its neighbours see ~none
    )
    hot, (w,) = _hot_warnings(data)
    assert np.argwhere(hot).tolist() == [[5, 40]]
    assert "(5, 40)" in str(w.message)
