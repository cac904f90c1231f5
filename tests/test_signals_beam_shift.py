"""Descan: get_direct_beam_position, center_direct_beam and the decomposition's warning.

The abTEM multislice cases live outside the repository (``../shared/data/abtem_dev``,
see its README) or where ``HYPERSPY_CNMF_ABTEM`` points. Missing folder: the tests
that need it fail on CI (``CI`` set) and are skipped elsewhere, with the path.
"""

import json
import warnings

import dask
import dask.array as da
import hyperspy.api as hs
import numpy as np
import pytest
from _shared_data import abtem_path
from test_beam_positions import shifted_disks

from hyperspy_cnmf._beam import BEAM_MOTION_SIGNIFICANCE, beam_drift_t
from hyperspy_cnmf.signals import STEM4D, LazySTEM4D
from hyperspy_cnmf.signals._beam_shift import (
    BEAM_MOTION_LIMIT,
    beam_motion,
    fit_plane,
    warn_if_beam_moves,
)

DESCAN = "zrcual_3phase_descan_32x32_40x40_seed202.npz"
NO_DESCAN = (
    "zrcual_2phase_40x40_48x48_seed101.npz",
    "zrcual_3phase_64x64_40x40_seed303.npz",
)


def _abtem(name):
    return np.load(abtem_path(name))


def _signal(data, meta=None):
    s = hs.signals.Signal2D(data)
    s.set_signal_type("4D-STEM")
    if meta is not None:
        for ax in s.axes_manager.navigation_axes:
            ax.scale, ax.units = meta["scan_step_A"] / 10, "nm"
        for ax, c in zip(s.axes_manager.signal_axes, meta["direct_beam_px"][::-1]):
            ax.scale, ax.units = meta["detector_mrad_per_px"], "mrad"
            ax.offset = -c * meta["detector_mrad_per_px"]
    return s


@pytest.fixture(scope="module")
def descan():
    z = _abtem(DESCAN)
    meta = json.loads(str(z["metadata_json"]))
    truth = (
        z["descan_px"][..., ::-1]
        + np.asarray(meta["direct_beam_px"], dtype=float)[::-1]
    )  # (x, y)
    return _signal(z["data_noisy"], meta), truth, z["data_noisy_nodescan"]


def _ramp(ny=5, nx=6, step=0.25, seed=0):
    """A synthetic scan whose beam walks ``step`` px per scan column in x and half that per row in y."""
    iy, ix = np.mgrid[:ny, :nx]
    truth = np.stack([16.0 + step * ix, 15.0 + 0.5 * step * iy], axis=-1)
    data = (
        shifted_disks(truth.reshape(-1, 2), seed=seed)
        .reshape(ny, nx, 32, 36)
        .astype(np.float32)
    )
    return data, truth


def _rms(a, b):
    return float(np.sqrt(np.mean((np.asarray(a) - b) ** 2)))


# -- measuring ------------------------------------------------------------


def test_positions_match_the_abtem_descan(descan):
    s, truth, _ = descan
    pos = s.get_direct_beam_position()
    assert pos.data.shape == truth.shape
    assert (
        _rms(pos.data, truth) < 0.1
    )  # measured 0.050 px per coordinate at 1500 e-/position
    assert [ax.units for ax in pos.axes_manager.navigation_axes] == ["nm", "nm"]
    np.testing.assert_allclose(pos.axes_manager.navigation_axes[0].scale, 0.3)


def test_positions_across_a_detector_gap(descan):
    """A 2-px cross of zero lines (a detector's chip gaps) through the descan case's beam:
    the centre of mass read the zeros: rms 0.675 px per coordinate, a motion of 2.66 / 1.61 px
    for the true 1.33 / 0.67 px. The dead pixels found on the mean pattern and their bias
    removed: rms 0.166 px, motion 1.29 / 0.90 px (the beam disk's own contrast under the grains moves the
    part of it left; 0.050 px rms without the gap)."""
    s, truth, _ = descan
    qy, qx = s.data.shape[-2:]
    data = s.data.copy()
    data[..., qy // 2 - 1 : qy // 2 + 1, :] = 0
    data[..., :, qx // 2 - 1 : qx // 2 + 1] = 0
    gap = _signal(data)
    pos = gap.get_direct_beam_position().data
    assert _rms(pos, truth) < 0.2
    motion, true_motion = beam_motion(pos), beam_motion(truth)
    np.testing.assert_allclose(motion, true_motion, rtol=0.4)
    lazy = _signal(data).as_lazy()
    np.testing.assert_allclose(lazy.get_direct_beam_position().data, pos, atol=1e-9)
    # NaN pixels near the beam and one all-NaN pattern: the mean ignores them (it
    # raised "No points given" / left the correction off)
    data[..., 22, 22] = np.nan
    data[0, 0] = np.nan
    for s in (_signal(data), _signal(data).as_lazy()):
        got = s.get_direct_beam_position().data
        assert np.isnan(got[0, 0]).all()
        assert _rms(got.reshape(-1, 2)[1:], truth.reshape(-1, 2)[1:]) < 0.2
    # a short scan: only part of the gap found dead (the mean's zeros tell the rest)
    short = _signal(np.ascontiguousarray(data[4:20, 4:20]))
    assert _rms(short.get_direct_beam_position().data, truth[4:20, 4:20]) < 0.25


def test_positions_under_a_beam_stop_are_unknown(descan):
    """A stop over the beam: the centre of mass found pieces of the halo (positions ~7 px
    apart, no warning, and center_direct_beam shifted the patterns by them); now a
    warning, NaN, and center_direct_beam refuses."""
    s, truth, _ = descan
    qy, qx = s.data.shape[-2:]
    yy, xx = np.mgrid[:qy, :qx]
    cx, cy = truth.reshape(-1, 2).mean(axis=0)
    shadow = (np.hypot(xx - cx, yy - cy) <= 8) | ((abs(yy - cy) <= 3) & (xx >= cx))
    stopped = _signal(s.data * ~shadow)
    with pytest.warns(UserWarning, match="not visible"):
        pos = stopped.get_direct_beam_position().data
    assert np.isnan(pos).all()
    with pytest.warns(UserWarning, match="not visible"):
        with pytest.raises(ValueError, match="beam stop"):
            stopped.center_direct_beam()


def test_positions_synthetic_eager_equals_lazy():
    data, truth = _ramp()
    s = _signal(data)
    pos = s.get_direct_beam_position().data
    assert _rms(pos, truth) < 0.06
    lazy = _signal(data).as_lazy()
    np.testing.assert_allclose(lazy.get_direct_beam_position().data, pos, atol=1e-12)
    with pytest.raises(ValueError, match="method"):
        s.get_direct_beam_position(method="blur")


def test_beam_motion_rule():
    data, truth = _ramp()
    assert (
        1.0 < beam_motion(truth)[0] <= 1.25
    )  # true 1.25; the 3x3 mean shortens a ramp by 2/3 step
    assert np.all(beam_motion(np.full((4, 4, 2), 3.0)) == 0)
    assert warn_if_beam_moves(None).tolist() == [0.0, 0.0]
    with pytest.warns(UserWarning, match="center_direct_beam"):
        warn_if_beam_moves(truth)
    np.testing.assert_allclose(fit_plane(truth), truth, atol=1e-12)


# -- correcting -----------------------------------------------------------


@pytest.mark.parametrize("fit", ["plane", None])
def test_center_synthetic(fit):
    data, truth = _ramp()
    before = data.copy()
    s = _signal(data)
    for ax in s.axes_manager.signal_axes:
        ax.scale, ax.offset, ax.units = 0.5, -8.0, "mrad"
    s.metadata.General.title = "ramp"
    c, shifts = s.center_direct_beam(fit=fit, return_shifts=True)
    np.testing.assert_array_equal(s.data, before)  # input untouched
    assert isinstance(c, STEM4D) and c is not s and c.data.shape == s.data.shape
    assert [(a.scale, a.offset, a.units) for a in c.axes_manager.signal_axes] == [
        (0.5, -8.0, "mrad")
    ] * 2
    assert c.metadata.General.title == "ramp"
    assert c.data.min() >= 0
    pos = c.get_direct_beam_position().data
    target = np.median((truth - shifts).reshape(-1, 2), axis=0)
    assert np.abs(pos - target).max() < 0.15
    assert _rms(shifts - (truth - target), 0) < 0.06


def test_center_origin_options_and_given_shifts():
    data, truth = _ramp()
    s = _signal(data)
    c = s.center_direct_beam(origin=(18.0, 16.0))
    np.testing.assert_allclose(
        np.median(c.get_direct_beam_position().data.reshape(-1, 2), axis=0),
        (18.0, 16.0),
        atol=0.1,
    )
    for ax, px in zip(s.axes_manager.signal_axes, (17.0, 15.5)):
        ax.offset = -px * ax.scale
    c = s.center_direct_beam(origin="calibration")
    np.testing.assert_allclose(
        np.median(c.get_direct_beam_position().data.reshape(-1, 2), axis=0),
        (17.0, 15.5),
        atol=0.1,
    )
    # given shifts are used as they are: the measured offsets of the ramp from (16, 15)
    c = s.center_direct_beam(shifts=truth - (16.0, 15.0))
    assert np.abs(c.get_direct_beam_position().data - (16.0, 15.0)).max() < 0.15
    with pytest.raises(ValueError, match="shifts"):
        s.center_direct_beam(shifts=np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="fit"):
        s.center_direct_beam(fit="quadratic")
    with pytest.raises(ValueError, match="origin"):
        s.center_direct_beam(origin="middle")
    s.axes_manager.signal_axes[0].offset = 100.0
    with pytest.raises(ValueError, match="outside the detector"):
        s.center_direct_beam(origin="calibration")
    with pytest.raises(ValueError, match="2 navigation"):
        STEM4D(data[0, 0]).center_direct_beam()


def test_integer_counts_come_back_float():
    data, _ = _ramp()
    s = _signal(data.astype(np.uint16))
    c = s.center_direct_beam()
    assert c.data.dtype == np.float32 and s.data.dtype == np.uint16


def test_center_lazy_stays_lazy_reads_once_and_equals_eager():
    data, _ = _ramp()
    reads = []

    def count(block):
        if block.size:  # not dask's meta inference on an empty block
            reads.append(block.shape)
        return block

    darr = da.from_array(data, chunks=(2, 3, 32, 36)).map_blocks(
        count, dtype=data.dtype
    )
    lazy = LazySTEM4D(darr)
    out = lazy.center_direct_beam()
    assert isinstance(out, LazySTEM4D) and out._lazy
    n_chunks = darr.npartitions
    assert (
        len(reads) == n_chunks
    )  # positions measured in one pass, chunk by chunk; shift not run yet
    assert max(np.prod(r) for r in reads) <= 2 * 3 * 32 * 36
    with dask.config.set(scheduler="synchronous"):
        result = out.data.compute()
    eager = _signal(data).center_direct_beam()
    np.testing.assert_allclose(result, eager.data, atol=1e-6)


def test_center_abtem_descan_removes_the_drift(descan):
    s, truth, _ = descan
    before = s.data.copy()
    c = s.center_direct_beam(fit=None)
    np.testing.assert_array_equal(s.data, before)
    pos = c.get_direct_beam_position().data
    assert np.max(beam_motion(pos)) < 0.15
    plane = (
        s.center_direct_beam()
    )  # the plane fit leaves the file's stepwise (binned) descan residual
    assert (
        np.max(beam_motion(plane.get_direct_beam_position().data)) < BEAM_MOTION_LIMIT
    )
    for a, b in zip(c.axes_manager._axes, s.axes_manager._axes):
        assert (a.scale, a.offset, a.units) == (b.scale, b.offset, b.units)


# -- the decomposition's warning --------------------------------------------


def _decompose(s):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = s.decomposition(
            algorithm="constrained_nmf",
            output_dimension=3,
            max_iter=3,
            random_state=0,
            print_info=False,
            return_info=True,
            show_progressbar=False,
        )
    return info, [w for w in caught if "direct beam moves" in str(w.message)]


@pytest.mark.parametrize("lazy", [False, True])
def test_decomposition_warns_on_descan_and_returns_positions(descan, lazy):
    s, truth, _ = descan
    s = s.as_lazy() if lazy else s.deepcopy()
    info, warned = _decompose(s)
    assert len(warned) == 1 and issubclass(warned[0].category, UserWarning)
    assert "center_direct_beam" in str(warned[0].message)
    assert warned[0].filename == __file__
    bp = info["beam_positions"]
    assert bp.shape == (truth.shape[0] * truth.shape[1], 2)
    assert _rms(bp, truth.reshape(-1, 2)) < 0.1
    # stored with the run, for the clustering (each grain about its own beam)
    stored = s.learning_results.cnmf_beam_positions
    assert stored.dtype == np.float64
    np.testing.assert_array_equal(stored, bp)


def test_decomposition_silent_without_descan(descan):
    _, _, nodescan = descan
    assert not _decompose(_signal(nodescan))[1]
    s, _, _ = descan
    assert not _decompose(s.center_direct_beam())[1]


@pytest.mark.parametrize("name", NO_DESCAN)
def test_decomposition_silent_on_other_abtem_cases(name):
    z = _abtem(name)
    assert not _decompose(_signal(z["data_noisy"]).as_lazy())[1]


# -- the descan warning is significance-based ------------------------------


def _low_dose(dose, seed=0, shift_px=0.0):
    """The simulator (32 x 32 scan, 48 x 48 detector) with a sub-pixel beam ramp of ``shift_px`` along x."""
    from scipy import ndimage

    from hyperspy_cnmf.data import simulated_precipitates

    s = simulated_precipitates(
        scan_shape=(32, 32),
        detector_shape=(48, 48),
        dose=dose,
        n_grains=3,
        grain_diameter=4.0,
        random_state=seed,
        noise=False,
    )
    data = s.data.copy()
    if shift_px:
        for ix in range(32):
            data[:, ix] = ndimage.shift(
                data[:, ix], (0, 0, shift_px * ix / 31), order=1, mode="nearest"
            )
    s.data = np.random.default_rng(seed).poisson(data).astype(np.float32)
    return s


def _descan_warnings(positions):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_beam_moves(positions)
    return [w for w in caught if "direct beam moves" in str(w.message)]


@pytest.mark.parametrize("dose", [20, 2000])
def test_no_descan_warning_from_counting_noise_or_small_crops(dose):
    """No descan: silent at 20 counts per pattern (the centres scatter by px there) and on 3 x 3 crops.

    Before the significance rule, 20 counts per pattern read as 2.5-3.5 px of motion
    and warned on every seed; 3 x 3 crops warned by chance.
    """
    for seed in range(2):
        pos = _low_dose(dose, seed).get_direct_beam_position().data
        assert not _descan_warnings(pos)
        for iy in range(0, 30, 3):
            for ix in range(0, 30, 3):
                assert not _descan_warnings(pos[iy : iy + 3, ix : ix + 3])


@pytest.mark.parametrize("dose", [20, 2000])
def test_a_one_pixel_descan_warns_at_any_dose(dose):
    pos = _low_dose(dose, 0, shift_px=1.0).get_direct_beam_position().data
    (w,) = _descan_warnings(pos)
    assert "standard errors" in str(w.message)
    assert beam_drift_t(pos)[0] > 3 * BEAM_MOTION_SIGNIFICANCE  # measured 23 at dose 20


def test_drift_statistic_needs_enough_positions():
    iy, ix = np.mgrid[:3, :3]
    ramp = np.stack([20 + 0.5 * ix, 20 + 0 * iy], axis=-1).astype(float)
    assert beam_drift_t(ramp).tolist() == [0.0, 0.0]  # 9 positions: cannot tell
    iy, ix = np.mgrid[:8, :8]
    ramp = np.stack([20 + 0.5 * ix, 20 + 0 * iy], axis=-1).astype(float)
    assert beam_drift_t(ramp)[0] == np.inf and beam_drift_t(ramp)[1] == 0.0


def test_decomposition_at_low_dose_is_silent():
    """The main job at 20 counts per pattern, full scan and a 3 x 3 crop: no descan or hot-pixel warning."""
    s = _low_dose(20)
    for sig, k in ((s, 4), (s.inav[10:13, 10:13], 2)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sig.decomposition(
                algorithm="constrained_nmf",
                output_dimension=k,
                max_iter=20,
                print_info=False,
                show_progressbar=False,
            )
        msgs = [str(w.message) for w in caught]
        assert not [m for m in msgs if "direct beam moves" in m or "hot" in m], msgs
