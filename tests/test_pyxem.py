"""pyxem's signals through the functional API (issue 12, item 2): calibration, conventions, types.

Runs where pyxem 0.21 is installed: the ``tests`` extra installs it, so CI
runs these tests. Without pyxem they fail (the ``pxm`` fixture raises
``ImportError``); they are never skipped. pyxem is imported in the fixture,
not at collection, so that a worker that runs none of them does not pay its
import (about 15 s).
"""

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import hyperspy_cnmf
from hyperspy_cnmf.constraints import electron_wavelength, probe_fwhm_from_convergence
from hyperspy_cnmf.data import simulated_precipitates
from hyperspy_cnmf.signals._calibration import estimate_probe_fwhm
from hyperspy_cnmf.signals._pyxem import beam_shift_offsets, is_pyxem_signal

README = Path(__file__).resolve().parents[1] / "README.md"
#: the simulated dataset's calibration (hyperspy_cnmf.data.simulated_precipitates)
SCAN_STEP_NM, K_STEP_INV_NM, ENERGY_KV, BEAM_PX = 0.5, 0.4, 200.0, (24.0, 24.0)
FIT = dict(random_state=0, print_info=False, max_iter=60)


@pytest.fixture(scope="module")
def pxm():
    import pyxem

    return pyxem


@pytest.fixture(scope="module")
def sim():
    return simulated_precipitates()


def _electron_diffraction(pxm, sim, lazy=False, units=True):
    """The simulated scan as a pyxem user holds it: calibrated with pyxem's own calls."""
    s = pxm.signals.ElectronDiffraction2D(sim.data.copy())
    s.set_scan_calibration(SCAN_STEP_NM)
    s.set_diffraction_calibration(K_STEP_INV_NM / 10)  # Å^-1 per px, units "$A^-1$"
    s.calibration.center = BEAM_PX
    alpha = float(sim.metadata.Acquisition_instrument.TEM.convergence_angle)
    if units:  # the Calibration setters: magnitudes with *_units beside them
        s.calibration.beam_energy = ENERGY_KV
        s.calibration.convergence_angle = alpha
    else:
        s.set_experimental_parameters(beam_energy=ENERGY_KV, convergence_angle=alpha)
    return s.as_lazy() if lazy else s


def _no_fallback_fwhm(s):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "2 scan steps" fallback
        return estimate_probe_fwhm(s, np.asarray(s.data).mean(axis=(0, 1)))


# --- (b) pyxem's unit names ------------------------------------------------------------
_LAMBDA_NM = electron_wavelength(ENERGY_KV)
#: pyxem's unit names and the step of each that is K_STEP_INV_NM of k = 1/d
PYXEM_UNITS = {
    "$A^{-1}$": K_STEP_INV_NM / 10,  # set_diffraction_calibration
    r"$\AA^{-1}$": K_STEP_INV_NM / 10,  # pyxem.data
    "A^-1": K_STEP_INV_NM / 10,
    "nm$^{-1}$": K_STEP_INV_NM,
    "k_A^-1": K_STEP_INV_NM / 10,  # s.unit = ...
    "k_nm^-1": K_STEP_INV_NM,
    "q_A^-1": 2 * np.pi * K_STEP_INV_NM / 10,  # q = 2 pi k
    "q_nm^-1": 2 * np.pi * K_STEP_INV_NM,
    "2th_rad": K_STEP_INV_NM * _LAMBDA_NM,  # 2 theta = k lambda
    "2th_deg": np.rad2deg(K_STEP_INV_NM * _LAMBDA_NM),
}


@pytest.mark.parametrize("unit", sorted(PYXEM_UNITS))
def test_pyxem_unit_names_give_one_probe_size(pxm, sim, unit):
    """map_resolution='auto' rule 2 (the beam disk in calibrated units) in every pyxem unit.

    Before pint read them, all of these fell back to "2 scan steps" with a warning
    (``$A^{-1}$`` was read as 1/ampere).
    """
    ref = _electron_diffraction(pxm, sim, units=False)
    del ref.metadata.Acquisition_instrument.TEM.convergence_angle  # rule 2
    for ax in ref.axes_manager.signal_axes:
        ax.units, ax.scale = "1/nm", K_STEP_INV_NM
    expected, how = _no_fallback_fwhm(ref)
    assert how.startswith("direct-beam disk")

    s = ref.deepcopy()
    if unit in ("k_A^-1", "k_nm^-1", "q_A^-1", "q_nm^-1", "2th_rad", "2th_deg"):
        s.unit = unit  # pyxem's own setter of these names
    else:
        s.axes_manager.signal_axes.set(units=unit)
    assert s.axes_manager.signal_axes[0].units == unit
    s.axes_manager.signal_axes.set(scale=PYXEM_UNITS[unit])
    fwhm, how = _no_fallback_fwhm(s)
    assert how.startswith("direct-beam disk")
    assert fwhm == pytest.approx(expected, rel=1e-9)
    # and the value is the probe of the simulation (1.5 nm) to the disk's pixel precision
    assert expected == pytest.approx(
        float(sim.metadata.Simulation.probe_fwhm_nm), rel=0.35
    )


def test_q_units_carry_the_two_pi(pxm, sim):
    """A q axis read as k gives a probe 2 pi off: the unit, not the number, must change."""
    s = _electron_diffraction(pxm, sim, units=False)
    del s.metadata.Acquisition_instrument.TEM.convergence_angle
    s.unit = "k_nm^-1"
    s.axes_manager.signal_axes.set(scale=K_STEP_INV_NM)
    k_fwhm = _no_fallback_fwhm(s)[0]
    s.unit = "q_nm^-1"  # same numbers, now read as q = 2 pi k
    assert _no_fallback_fwhm(s)[0] == pytest.approx(2 * np.pi * k_fwhm, rel=1e-9)


# --- (a) beam energy, convergence angle, beam centre -------------------------------------
@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_decomposition_and_clustering_read_pyxem_calibration(pxm, sim, lazy):
    s = _electron_diffraction(pxm, sim, lazy=lazy)
    cls = type(s)
    md = s.metadata.Acquisition_instrument.TEM
    assert (
        md.beam_energy_units == "kilovolt"
        and md.convergence_angle_units == "milliradian"
    )
    hyperspy_cnmf.decomposition(s, 7, **FIT)
    assert type(s) is cls  # the class and so every pyxem method stays
    expected = probe_fwhm_from_convergence(s.calibration.convergence_angle, ENERGY_KV)
    assert expected == pytest.approx(1.5, rel=1e-3)  # nm, the simulated probe
    # the map filter's probe size (nm): 0.514 lambda / alpha from pyxem's metadata
    assert float(s.learning_results.cnmf_map_resolution) == pytest.approx(
        expected, rel=1e-9
    )
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error", UserWarning
        )  # no "calibrated origin" disagreement
        res = hyperspy_cnmf.cluster_diffraction(s)
    centre = np.asarray(s.learning_results.cdiff_centre)
    np.testing.assert_allclose(centre, s.calibration.center, atol=0.05)
    assert len(res["merged_factors"].data) == 3  # matrix and the two crystal phases
    assert type(s) is cls


def test_a_wrong_pyxem_centre_is_reported(pxm, sim):
    s = _electron_diffraction(pxm, sim)
    s.calibration.center = (BEAM_PX[0] + 2, BEAM_PX[1])
    hyperspy_cnmf.decomposition(s, 7, **FIT)
    with pytest.warns(
        UserWarning, match=r"calibrated origin .* 2\.0\d px from the direct beam"
    ):
        hyperspy_cnmf.cluster_diffraction(s)
    np.testing.assert_allclose(s.learning_results.cdiff_centre, BEAM_PX, atol=0.05)


def test_metadata_units_are_converted(pxm, sim):
    """``*_units`` beside the numbers (pyxem's Calibration) are honoured, any unit pint converts."""
    s = _electron_diffraction(pxm, sim, units=False)
    alpha = float(s.metadata.Acquisition_instrument.TEM.convergence_angle)
    expected = probe_fwhm_from_convergence(alpha, ENERGY_KV)
    s.metadata.set_item("Acquisition_instrument.TEM.convergence_angle", alpha / 1000)
    s.metadata.set_item("Acquisition_instrument.TEM.convergence_angle_units", "rad")
    s.metadata.set_item("Acquisition_instrument.TEM.beam_energy", ENERGY_KV * 1000)
    s.metadata.set_item("Acquisition_instrument.TEM.beam_energy_units", "volt")
    assert _no_fallback_fwhm(s)[0] == pytest.approx(expected, rel=1e-9)
    s.metadata.set_item("Acquisition_instrument.TEM.beam_energy_units", "mrad")
    with pytest.raises(ValueError, match="beam_energy_units"):
        _no_fallback_fwhm(s)


# --- (c) pyxem's mask ---------------------------------------------------------------------
def test_pyxem_mask_is_the_default_signal_mask(pxm, sim):
    s = _electron_diffraction(pxm, sim)
    s.data[..., 5, 40] += 5000.0  # a hot pixel (row 5, column 40) in every pattern
    with pytest.warns(UserWarning, match=r"hot detector pixel.*\(5, 40\)"):
        hyperspy_cnmf.decomposition(s, 7, **FIT)

    mask = np.zeros(s.data.shape[-2:], bool)
    mask[5, 40] = True
    s.calibration.mask = mask  # pyxem stores it in metadata.General.mask
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        hyperspy_cnmf.decomposition(s, 7, **FIT)
    used = np.asarray(s.learning_results.signal_mask).reshape(mask.shape)
    assert used[5, 40]
    factors = s.learning_results.factors.reshape(mask.shape + (-1,))
    assert not np.isfinite(factors[5, 40]).any()  # the pixel took no part
    assert np.isfinite(factors[6, 40]).all()
    assert np.array_equal(s.calibration.mask, mask)  # not modified

    # an explicit signal_mask wins: all False uses every pixel, the hot one too
    with pytest.warns(UserWarning, match="hot detector pixel"):
        hyperspy_cnmf.decomposition(s, 7, signal_mask=np.zeros_like(mask), **FIT)
    # a lazy pyxem signal carries the same mask
    lazy = s.as_lazy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        hyperspy_cnmf.decomposition(lazy, 7, **FIT)
    assert np.asarray(lazy.learning_results.signal_mask).reshape(mask.shape)[5, 40]


def test_a_mask_of_the_wrong_shape_is_one_clear_error(pxm, sim):
    s = _electron_diffraction(pxm, sim)
    s.calibration.mask = np.zeros((10, 10), bool)
    with pytest.raises(ValueError, match="signal_mask"):
        hyperspy_cnmf.decomposition(s, 7, **FIT)


# --- (d) pyxem's beam positions -------------------------------------------------------------
def _descanned(pxm, lazy=False):
    """A Gaussian beam that walks 0.3 px per scan column and 0.2 px per row."""
    yy, xx = np.mgrid[:32, :32]
    data = np.empty((4, 5, 32, 32))
    for iy in range(4):
        for ix in range(5):
            data[iy, ix] = 100 * np.exp(
                -((xx - 14.2 - 0.3 * ix) ** 2 + (yy - 17.1 - 0.2 * iy) ** 2) / 6
            )
    s = pxm.signals.ElectronDiffraction2D(data)
    return s.as_lazy() if lazy else s


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_beam_shift_is_accepted_as_shifts(pxm, lazy):
    s = _descanned(pxm, lazy)
    bs = s.get_direct_beam_position(method="center_of_mass")  # pyxem's BeamShift
    assert type(bs).__name__.endswith("BeamShift")
    # pyxem's shift moves the beam to signal_shape / 2: minus the beam's offset from there
    iy, ix = np.mgrid[:4, :5]
    true = np.stack([14.2 + 0.3 * ix, 17.1 + 0.2 * iy], axis=-1)
    np.testing.assert_allclose(beam_shift_offsets(bs), true - 16.0, atol=0.05)
    np.testing.assert_allclose(
        hyperspy_cnmf.get_direct_beam_position(s).data, true, atol=0.05
    )

    ours = hyperspy_cnmf.center_direct_beam(s, shifts=bs)  # bilinear, as pyxem's
    theirs = s.center_direct_beam(shifts=bs, inplace=False)
    assert type(ours) is type(s)
    if lazy:
        ours.compute()
        theirs.compute()
    np.testing.assert_allclose(ours.data, theirs.data, rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        hyperspy_cnmf.get_direct_beam_position(ours).data, 16.0, atol=0.05
    )


# --- (e) results as pyxem signals -------------------------------------------------------------
@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_merged_patterns_are_electron_diffraction(pxm, sim, lazy):
    s = _electron_diffraction(pxm, sim, lazy=lazy)
    mask = np.zeros(s.data.shape[-2:], bool)
    mask[0] = True
    s.calibration.mask = mask
    hyperspy_cnmf.decomposition(s, 7, **FIT)
    res = hyperspy_cnmf.cluster_diffraction(s)
    again = hyperspy_cnmf.get_cluster_diffraction_results(s)
    for merged in (
        res["merged_factors"],
        again["merged_factors"],
        res["mean_patterns"],
        again["mean_patterns"],
    ):
        assert type(merged) is pxm.signals.ElectronDiffraction2D
        assert merged.calibration.beam_energy == ENERGY_KV
        assert merged.calibration.convergence_angle == s.calibration.convergence_angle
        assert np.array_equal(merged.calibration.mask, mask)
        assert merged.axes_manager.signal_axes[0].units == "$A^{-1}$"
        np.testing.assert_allclose(merged.calibration.center, BEAM_PX)
    polar = merged.get_azimuthal_integral2d(npt=20, npt_azim=90, show_progressbar=False)
    assert type(polar).__name__ == "PolarDiffraction2D"
    assert polar.data.shape == (3, 20, 90)


def test_polar_transform_in_pyxem_azimuth(pxm):
    """Spots at +kx and +ky land where pyxem's own azimuthal integration puts them."""
    yy, xx = np.mgrid[:40, :48]
    img = np.exp(-((xx - 36) ** 2 + (yy - 20) ** 2) / 2)  # +kx (column 36)
    img += 0.5 * np.exp(-((xx - 24) ** 2 + (yy - 32) ** 2) / 2)  # +ky (row 32)
    s = pxm.signals.ElectronDiffraction2D(np.tile(img, (2, 2, 1, 1)))
    s.set_diffraction_calibration(0.01)
    s.calibration.center = (24, 20)
    theirs = s.get_azimuthal_integral2d(npt=30, npt_azim=72, show_progressbar=False)
    ours = hyperspy_cnmf.polar_transform(s, n_theta=72)
    assert type(ours) is type(theirs)
    for p in (ours, theirs):
        az = p.axes_manager.signal_axes[0]
        assert (az.name, az.units) == ("Radians", "Rad")
        assert az.offset == pytest.approx(-np.pi) and az.scale == pytest.approx(
            np.pi / 36
        )

    def peaks(p, shift=0.0):
        """Azimuths (rad) of the local maxima above 10 % of the radially summed profile."""
        prof = np.nansum(np.asarray(p.data[0, 0]), axis=0)
        ang = p.axes_manager.signal_axes[0].axis + shift
        top = (prof >= np.roll(prof, 1)) & (prof > np.roll(prof, -1))
        return np.sort(ang[top & (prof > 0.1 * prof.max())])

    np.testing.assert_allclose(peaks(ours), [-np.pi / 2, 0.0], atol=1e-9)
    # pyxem labels a bin by its lower edge: its peaks are within a bin of ours
    np.testing.assert_allclose(peaks(theirs), [-np.pi / 2, 0.0], atol=np.pi / 36 + 1e-9)

    lazy = hyperspy_cnmf.polar_transform(s.as_lazy(), n_theta=72)
    assert type(lazy).__name__ == "LazyPolarDiffraction2D"
    np.testing.assert_allclose(np.asarray(lazy.data), ours.data, equal_nan=True)


def test_template_matching_on_our_polar_transform(pxm):
    """pyxem's template matching on our PolarDiffraction2D finds pyxem's in-plane rotations.

    pyxem's own data: Si [001] at 0 deg (left half of the scan) and 10 deg (right).
    A reversed azimuth would give -10 deg (80 deg modulo the 4-fold axis); pyxem's own
    integration labels each bin by its lower edge, so it may be a degree off.
    """
    from diffsims.generators.simulation_generator import SimulationGenerator
    from orix.quaternion import Rotation
    from pyxem.data.simulated_si import si_phase, si_tilt

    s = si_tilt()
    s.calibration.center = None
    sim = SimulationGenerator(200).calculate_diffraction2d(
        si_phase(),
        rotation=Rotation.from_euler([0, 0, 0], degrees=True),
        max_excitation_error=0.1,
        reciprocal_radius=1.5,
        with_direct_beam=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = s.get_azimuthal_integral2d(
            npt=50, npt_azim=360, mean=True, show_progressbar=False
        ).get_orientation(sim)
        ours = hyperspy_cnmf.polar_transform(s, n_theta=360).get_orientation(sim)
    # in-plane angle (deg) of the best match, left and right halves of the scan, as the
    # circular difference from the truth modulo the 4-fold axis
    for result, atol in (
        (ours, 0.6),
        (theirs, 1.1),
    ):  # pyxem: bins of 1 deg by lower edge
        found = result.data[0, [0, -1], 0, 2]
        off = (found - np.array([0.0, 10.0]) + 45) % 90 - 45
        np.testing.assert_allclose(off, 0.0, atol=atol)


# --- (f) the README's example ---------------------------------------------------------------
def _readme_block():
    text = README.read_text(encoding="utf-8")
    section = text.split("## pyxem users", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the pyxem section has one Python example"
    return blocks[0]


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_readme_pyxem_example_runs(pxm, lazy):
    code = _readme_block()
    marker = "# s = s.as_lazy()"
    assert marker in code
    if lazy:
        code = code.replace(marker, marker[2:])
    ns = {}
    exec(compile(code, str(README), "exec"), ns)
    s = ns["s"]
    assert is_pyxem_signal(s)
    assert type(s).__name__ == (
        "LazyElectronDiffraction2D" if lazy else "ElectronDiffraction2D"
    )
    assert s.learning_results.decomposition_algorithm == "constrained_nmf"
    assert type(ns["phases"]) is pxm.signals.ElectronDiffraction2D
    assert type(ns["polar"]).__name__ == (
        "LazyPolarDiffraction2D" if lazy else "PolarDiffraction2D"
    )
    assert type(ns["phase_polar"]).__name__ == "PolarDiffraction2D"
    assert ns["phases"].data.shape == (3, 48, 48)
    assert np.array_equal(ns["phases"].calibration.mask, ns["mask"])
    # the probe size came from the metadata, the centre from calibration.center
    assert float(s.learning_results.cnmf_map_resolution) == pytest.approx(1.5, rel=2e-3)
    np.testing.assert_allclose(s.learning_results.cdiff_centre, (24, 24), atol=0.1)
    assert callable(s.get_virtual_image) and callable(s.template_match)


def test_a_pyxem_centre_off_the_detector_is_reported(pxm, sim):
    """A calibration.center beyond the detector (a factor-10 slip) warns, naming it and the centre used."""
    s = _electron_diffraction(pxm, sim)
    hyperspy_cnmf.decomposition(s, 7, **FIT)
    s.calibration.center = (240.0, 24.0)
    with pytest.warns(UserWarning, match="outside the detector") as record:
        hyperspy_cnmf.cluster_diffraction(s)
    (w,) = [w for w in record if "outside the detector" in str(w.message)]
    assert re.search(
        r"\(240, 24\) px, outside .* \(24\.\d\d, 24\.\d\d\) px is used", str(w.message)
    )
    assert w.filename == __file__
    np.testing.assert_allclose(s.learning_results.cdiff_centre, BEAM_PX, atol=0.05)
    # without a decomposition (the polar transform): the beam found on the data
    t = _electron_diffraction(pxm, sim)
    t.calibration.center = (24.0, -300.0)
    with pytest.warns(
        UserWarning, match=r"\(24, -300\) px, outside .* found on the data"
    ):
        hyperspy_cnmf.polar_transform(t)


def test_a_pyxem_beam_energy_in_ev_is_refused(pxm, sim):
    s = _electron_diffraction(pxm, sim, units=False)
    s.metadata.set_item("Acquisition_instrument.TEM.beam_energy", 200e3)
    with pytest.raises(ValueError, match=r"200000 keV is not a plausible .* 200 keV\?"):
        hyperspy_cnmf.decomposition(s, 7, **FIT)
    s.metadata.set_item(
        "Acquisition_instrument.TEM.beam_energy_units", "eV"
    )  # then it converts
    assert _no_fallback_fwhm(s)[0] == pytest.approx(
        probe_fwhm_from_convergence(
            float(s.metadata.Acquisition_instrument.TEM.convergence_angle), ENERGY_KV
        ),
        rel=1e-9,
    )
