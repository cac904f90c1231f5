"""Masks of the decomposition (issue 11, items 1 and 2).

* ``navigation_mask`` / ``signal_mask`` are placed by their shape, never by
  their size alone: array order (like ``s.data``), HyperSpy's axes order
  (``navigation_shape`` / ``signal_shape``, x first) on non-square scans and
  detectors, boolean signals; anything else raises naming the shapes.
* masked detector pixels take no part in the beam finding (mean pattern and
  per position); unmasked hot or dead pixels are reported and cannot move the
  beam.
"""

import warnings

import hyperspy.api as hs
import numpy as np
import pytest

from hyperspy_cnmf._beam import beam_search_pixels, defect_pixels, locate_direct_beam
from hyperspy_cnmf.signals import STEM4D

NAV = (6, 10)  # scan rows (y), columns (x): non-square
SIG = (20, 28)  # detector rows (ky), columns (kx): non-square
BEAM = (9.0, 13.0)  # (row, column) of the direct beam


def _data(nav=NAV, sig=SIG, beam=BEAM, seed=0):
    """Poisson counts: a direct-beam disk plus two phases of spots, left and right half of the scan."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(sig, dtype=float)
    disk = np.clip(3.5 - np.hypot(yy - beam[0], xx - beam[1]), 0, 1)
    spot = lambda r, c: np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / 2.0)  # noqa: E731
    phase_a = spot(beam[0], beam[1] + 8) + spot(beam[0], beam[1] - 8)
    phase_b = spot(beam[0] + 7, beam[1]) + spot(beam[0] - 7, beam[1])
    frac = np.broadcast_to(np.linspace(0, 1, nav[1])[None, :], nav)
    mean = (
        200 * disk
        + 2.0
        + 40 * (1 - frac)[..., None, None] * phase_a
        + 40 * frac[..., None, None] * phase_b
    )
    return rng.poisson(mean).astype(np.float32)


def _signal(data=None, lazy=False):
    s = STEM4D(_data() if data is None else data)
    return s.as_lazy() if lazy else s


#: The decomposition of these tests (a small, fixed fit).
FIT = dict(
    algorithm="constrained_nmf",
    output_dimension=2,
    max_iter=15,
    random_state=0,
    map_resolution=2.0,
    print_info=False,
    return_info=True,
)


def _fit(s, **kw):
    """``FIT`` (updated by ``kw``) with its warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return s.decomposition(**dict(FIT, **kw))


# --------------------------------------------------------------------------
# Item 1: masks by shape
# --------------------------------------------------------------------------
def _nav_mask():
    m = np.zeros(NAV, bool)  # array order (y, x)
    m[0, 9] = m[5, 0] = m[2, 7] = True
    return m


def _sig_mask():
    m = np.zeros(SIG, bool)  # array order (ky, kx)
    m[1, 26] = m[18, 2] = m[0, 0] = True
    return m


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
@pytest.mark.parametrize(
    "form",
    ["array", "hyperspy_order", "signal", "dask"],
)
def test_masks_land_on_the_right_positions_and_pixels(form, lazy):
    nav, sig = _nav_mask(), _sig_mask()
    if (
        form == "hyperspy_order"
    ):  # navigation_shape / signal_shape: x first, what HyperSpy 2.5 takes
        given = dict(navigation_mask=nav.T.copy(), signal_mask=sig.T.copy())
    elif form == "signal":
        given = dict(
            navigation_mask=hs.signals.BaseSignal(nav).T,
            signal_mask=hs.signals.Signal2D(sig),
        )
        assert given["navigation_mask"].axes_manager.navigation_shape == NAV[::-1]
    elif form == "dask":
        import dask.array as da

        given = dict(navigation_mask=da.from_array(nav), signal_mask=da.from_array(sig))
    else:
        given = dict(navigation_mask=nav, signal_mask=sig)
    s = _signal(lazy=lazy)
    _fit(s, direct_beam_mask=False, **given)
    lr = s.learning_results
    np.testing.assert_array_equal(np.isnan(lr.loadings[:, 0]), nav.ravel())
    np.testing.assert_array_equal(np.isnan(lr.factors[:, 0]), sig.ravel())
    np.testing.assert_array_equal(lr.navigation_mask, nav)
    np.testing.assert_array_equal(lr.signal_mask, sig)


def test_hyperspy_order_gives_the_array_order_result():
    a, b = _signal(), _signal()
    _fit(a, navigation_mask=_nav_mask(), signal_mask=_sig_mask())
    _fit(b, navigation_mask=_nav_mask().T, signal_mask=_sig_mask().T)
    np.testing.assert_array_equal(
        a.learning_results.factors, b.learning_results.factors
    )
    np.testing.assert_array_equal(
        a.learning_results.loadings, b.learning_results.loadings
    )


@pytest.mark.parametrize(
    "kw, match",
    [
        (
            dict(navigation_mask=np.zeros(60, bool)),
            r"navigation_mask must be a boolean array of shape \(6, 10\)",
        ),
        (
            dict(navigation_mask=np.zeros((3, 20), bool)),
            r"\(6, 10\) \(array order.*\(10, 6\) \(navigation_shape",
        ),
        (
            dict(signal_mask=np.zeros(20 * 28, bool)),
            r"signal_mask .*\(20, 28\).*\(28, 20\) \(signal_shape",
        ),
        (dict(signal_mask=np.zeros((14, 40), bool)), r"got shape \(14, 40\)"),
        (
            dict(signal_mask=hs.signals.Signal2D(np.zeros((28, 20), bool))),
            r"signal whose data have the shape \(20, 28\).*got a signal with data of shape \(28, 20\)",
        ),
        (
            dict(navigation_mask=hs.signals.BaseSignal(np.zeros((10, 6), bool)).T),
            r"navigation_mask.*\(6, 10\)",
        ),
    ],
)
def test_masks_of_the_wrong_shape_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        _signal().decomposition(algorithm="constrained_nmf", output_dimension=2, **kw)


def test_square_scan_masks_are_in_array_order():
    data = _data(nav=(8, 8))
    nav = np.zeros((8, 8), bool)
    nav[0, 7] = True  # row 0, column 7; its transpose would be row 7, column 0
    s = STEM4D(data)
    _fit(s, navigation_mask=nav)
    assert np.isnan(s.learning_results.loadings[7, 0]) and not np.isnan(
        s.learning_results.loadings[56, 0]
    )


# --------------------------------------------------------------------------
# Item 2: masked (and hot/dead) pixels in the beam finding
# --------------------------------------------------------------------------
HOT = (3, 20)


def _with_hot_pixel(factor=10.0):
    data = _data()
    data[..., HOT[0], HOT[1]] = factor * data[..., int(BEAM[0]), int(BEAM[1])].max()
    return data


def _beam_of(info):
    return (
        info["direct_beam_y_px"],
        info["direct_beam_x_px"],
        info["direct_beam_radius_px"],
    )


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_masked_hot_pixel_takes_no_part_in_the_beam_finding(lazy):
    clean = _signal(lazy=lazy)
    info_clean = _fit(clean)
    hot_mask = np.zeros(SIG, bool)
    hot_mask[HOT] = True
    hot = _signal(_with_hot_pixel(), lazy=lazy)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # masked: nothing to report
        info = hot.decomposition(**FIT, signal_mask=hot_mask)
    y, x, r = _beam_of(info)
    assert (y, x) == pytest.approx(BEAM, abs=0.1)
    assert (y, x, r) == pytest.approx(_beam_of(info_clean), abs=1e-6)
    # the dip constraint's size follows the beam radius
    assert (
        hot.learning_results.cnmf_diffraction_constraint_size
        == clean.learning_results.cnmf_diffraction_constraint_size
    )
    # per position: the masked pixel is not read by the beam kernel
    np.testing.assert_allclose(
        info["beam_positions"], info_clean["beam_positions"], atol=1e-9
    )


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_unmasked_hot_pixel_is_reported_and_cannot_move_the_beam(lazy):
    clean = _signal(lazy=lazy)
    info_clean = _fit(clean)
    s = _signal(_with_hot_pixel(), lazy=lazy)
    with pytest.warns(
        UserWarning, match=r"1 hot detector pixel.*\(3, 20\).*signal_mask"
    ):
        info = s.decomposition(**FIT)
    assert _beam_of(info)[:2] == pytest.approx(BEAM, abs=0.1)
    assert _beam_of(info)[2] == pytest.approx(_beam_of(info_clean)[2], abs=1e-6)
    np.testing.assert_allclose(
        info["beam_positions"], info_clean["beam_positions"], atol=0.05
    )


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_unmasked_hot_pixel_is_left_out_of_the_fit(lazy):
    """``defect_pixel_mask=True`` (default): the hot pixel found on the mean pattern is
    excluded like a ``signal_mask`` pixel (NaN factors, in ``learning_results.signal_mask``);
    the fit is that of the masked data up to the row sums of the Poisson weights, which the
    statistics read took with the pixel in."""
    hot_mask = np.zeros(SIG, bool)
    hot_mask[HOT] = True
    masked = _signal(_with_hot_pixel(), lazy=lazy)
    _fit(masked, signal_mask=hot_mask)
    s = _signal(_with_hot_pixel(), lazy=lazy)
    with pytest.warns(UserWarning, match=r"1 hot detector pixel.*left out of the fit"):
        s.decomposition(**FIT)
    lr = s.learning_results
    assert np.asarray(lr.signal_mask).reshape(SIG)[HOT]
    factors = np.asarray(lr.factors).reshape(*SIG, -1)
    assert np.isnan(factors[HOT]).all()
    assert lr.cnmf_parameters and '"defect_pixel_mask": true' in str(lr.cnmf_parameters)
    ref = np.asarray(masked.learning_results.factors)
    got = np.asarray(lr.factors)
    ok = np.isfinite(ref).all(axis=1)
    assert np.array_equal(ok, np.isfinite(got).all(axis=1))
    cos = (
        np.sum(ref[ok] * got[ok], 0)
        / np.linalg.norm(ref[ok], axis=0)
        / np.linalg.norm(got[ok], axis=0)
    )
    assert cos.min() >= 0.999
    # fitted on request: the warning gives the mask that excludes it
    fitted = _signal(_with_hot_pixel(), lazy=lazy)
    with pytest.warns(
        UserWarning, match=r"1 hot detector pixel.*mask\[\(3,\), \(20,\)\] = True"
    ):
        fitted.decomposition(**FIT, defect_pixel_mask=False)
    assert np.isfinite(
        np.asarray(fitted.learning_results.factors).reshape(*SIG, -1)[HOT]
    ).all()
    with pytest.raises(ValueError, match="defect_pixel_mask"):
        fitted.decomposition(**FIT, defect_pixel_mask="yes")


def test_auto_probe_size_ignores_a_masked_hot_pixel():
    def calibrated(data):
        s = STEM4D(data)
        for ax in s.axes_manager.navigation_axes:
            ax.units, ax.scale = "nm", 0.5
        for ax in s.axes_manager.signal_axes:
            ax.units, ax.scale = "1/nm", 0.1
        return s

    clean, hot = calibrated(_data()), calibrated(_with_hot_pixel())
    mask = np.zeros(SIG, bool)
    mask[HOT] = True
    info = _fit(clean, map_resolution="auto")
    _fit(hot, map_resolution="auto", signal_mask=mask)
    ref = clean.learning_results.cnmf_map_resolution
    assert info["map_resolution_method"].startswith("direct-beam disk")
    assert hot.learning_results.cnmf_map_resolution == pytest.approx(ref, rel=1e-9)


def test_dead_pixel_is_reported():
    data = _data()
    data[..., 15, 4] = 0.0
    with pytest.warns(
        UserWarning, match=r"1 dead detector pixel.*\(15, 4\).*signal_mask"
    ):
        STEM4D(data).decomposition(
            algorithm="constrained_nmf",
            output_dimension=2,
            max_iter=5,
            map_resolution=2.0,
            print_info=False,
        )


def _with_gap(width=2, data=None):
    """A detector's gap: a cross of zero lines ``width`` px wide through the direct beam."""
    data = _data() if data is None else data.copy()
    r, c = int(BEAM[0]), int(BEAM[1])
    data[..., r : r + width, :] = 0.0
    data[..., :, c : c + width] = 0.0
    return data


def test_dead_lines_are_dead_pixels():
    """Every pixel of a zero line up to 6 px wide is dead (the 8-neighbour median saw only 1 px)."""
    pattern = _data().mean(axis=(0, 1))
    for width in (1, 2, 3, 6):
        gap = _with_gap(width, pattern[None, None])[0, 0]
        hot, dead = defect_pixels(gap, n_positions=60, poisson=True)
        assert np.array_equal(dead, gap == 0), width
        assert not hot.any(), (
            width
        )  # the beam's pieces beside the gap are no hot pixels
    # a dark corner that no count reaches is not dead
    dark = pattern.copy()
    dark[:4, :4] = 0.0
    dark[4:6, :6] = dark[:6, 4:6] = 0.05  # its live border: 3 counts over 60 positions
    assert not defect_pixels(dark, n_positions=60, poisson=True)[1].any()


def test_a_hot_pixel_beside_a_gap_is_found_and_a_masked_gap_is_not_read():
    """Review (session 28): a hot pixel beside a gap was compared with the gap filled from
    itself (missed: then taken for the beam, one cluster on the multislice cases); a gap
    given as ``signal_mask`` (3 px and more) was read by the beam finders as a region that
    could hold the beam."""
    pattern = _with_gap(3, _data().mean(axis=(0, 1))[None, None])[0, 0]
    # a hot pixel beside the horizontal gap (rows 9-11), far from the beam
    pattern[8, 26] = 50 * pattern.max()
    hot, dead = defect_pixels(pattern, n_positions=60, poisson=True)
    assert np.argwhere(hot).tolist() == [[8, 26]]
    assert dead.sum() == (pattern == 0).sum()
    gap = pattern == 0
    assert not beam_search_pixels(gap)[gap].any()  # the lines are never read
    yy, xx = np.indices(SIG)
    disk = np.hypot(yy - BEAM[0], xx - BEAM[1]) <= 4.5
    assert beam_search_pixels(disk)[disk].all()  # a disk over the beam is
    # masked, the gap is left out of the beam finding as when found dead
    masked = locate_direct_beam(pattern, mask=~beam_search_pixels(gap))
    assert masked == pytest.approx(locate_direct_beam(pattern, mask=dead), abs=1e-9)


def test_dark_rims_at_low_counts_are_not_dead():
    """Zeros beside a bright disk where the detector is dark (a short or low-dose scan) join
    the dark region: no dead pixel (before the thin-region rule: 4-43 on small crops)."""
    rng = np.random.default_rng(1)
    yy, xx = np.indices((40, 40))
    lam = 30.0 * (np.hypot(yy - 20, xx - 20) <= 5) + 0.02
    mean = rng.poisson(np.broadcast_to(lam, (16, 40, 40))).mean(axis=0)
    assert (mean == 0).sum() > 500
    assert not defect_pixels(mean, n_positions=16, poisson=True)[1].any()


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_detector_gap_through_the_beam_takes_no_part_in_the_beam_finding(lazy):
    """A gap of zero lines through the direct beam (a Medipix quad's cross) is found dead and
    left out of the beam finding: the beam is that of the data without the gap (the gap cut
    it in four and moved it by 2 px on the multislice cases). The gap is fitted (its zeros):
    that scored higher than masking it (``tests/test_data_multislice.py``)."""
    info_clean = _fit(_signal(lazy=lazy))
    s = _signal(_with_gap(), lazy=lazy)
    with pytest.warns(
        UserWarning,
        match=r"92 dead detector pixel.*left out of the direct-beam finding",
    ):
        info = s.decomposition(**FIT)
    y, x, r = _beam_of(info)
    # the gap holds the beam's centre row and column and one beside them: read from both
    # sides (fill_pixels), the centre moves by 0.3 px (by 2 px before the gap was found)
    assert (y, x) == pytest.approx(_beam_of(info_clean)[:2], abs=0.35)
    assert r == pytest.approx(_beam_of(info_clean)[2], abs=0.5)
    gap = (_with_gap() == 0).all(axis=(0, 1))
    assert gap.sum() == 92
    factors = np.asarray(s.learning_results.factors).reshape(*SIG, -1)
    outside = gap & ~np.isnan(factors).all(axis=-1)  # beyond the direct-beam mask
    assert outside.sum() >= 60 and np.isfinite(factors[outside]).all()


def test_signal_mask_over_the_beam_still_finds_the_beam():
    """A masked disk over the direct beam (a common way to leave it out) is still read by the finders."""
    clean = _signal()
    info_clean = _fit(clean)
    yy, xx = np.indices(SIG)
    mask = np.hypot(yy - BEAM[0], xx - BEAM[1]) <= 4.5
    s = _signal()
    info = _fit(s, signal_mask=mask)
    assert _beam_of(info) == pytest.approx(_beam_of(info_clean), abs=1e-6)
    np.testing.assert_allclose(
        info["beam_positions"], info_clean["beam_positions"], atol=1e-9
    )


def test_beam_helpers():
    yy, xx = np.indices(SIG, dtype=float)
    pattern = np.exp(-((yy - 9.3) ** 2 + (xx - 13.6) ** 2) / 4.0) + 0.01
    ref = locate_direct_beam(pattern)
    hot = pattern.copy()
    hot[HOT] = 10 * pattern.max()
    hot[17, 25] = 0.0
    found_hot, found_dead = defect_pixels(hot, n_positions=1e4)
    assert np.argwhere(found_hot).tolist() == [list(HOT)]
    assert np.argwhere(found_dead).tolist() == [[17, 25]]
    assert locate_direct_beam(hot) == pytest.approx(ref, abs=1e-9)
    # an isolated masked pixel is excluded, a masked 3x3+ region (the beam) is not
    mask = np.zeros(SIG, bool)
    mask[HOT] = True
    mask[8:11, 12:15] = True
    usable = beam_search_pixels(mask)
    assert not usable[HOT] and usable[8:11, 12:15].all()


def test_touching_hot_pixels_are_found_and_a_small_beam_is_not():
    """A pair, a diagonal pair or a 2 x 2 block of hot pixels (each the other's brightest
    neighbour) is found; a direct beam of radius 1 px, as sharp, is not."""
    yy, xx = np.indices(SIG, dtype=float)
    for radius in (1.0, 3.0):
        base = 200.0 * (np.hypot(yy - 9, xx - 13) <= radius) + 2.0
        assert not defect_pixels(base, n_positions=1e4, poisson=True)[0].any()
        for pixels in (
            [(3, 20), (3, 21)],
            [(3, 20), (4, 21)],
            [(3, 20), (3, 21), (4, 20), (4, 21)],
        ):
            hot = base.copy()
            for p in pixels:
                hot[p] = 10 * base.max()
            found, _ = defect_pixels(hot, n_positions=1e4, poisson=True)
            assert sorted(map(tuple, np.argwhere(found).tolist())) == sorted(pixels)
    # a 3 x 3 block is no defect of single pixels (nor a 2 x 2 block at the beam)
    block = base.copy()
    block[2:5, 19:22] = 10 * base.max()
    assert not defect_pixels(block, n_positions=1e4, poisson=True)[0].any()
    near = base.copy()
    near[8:10, 15:17] = 10 * base.max()
    assert not defect_pixels(near, n_positions=1e4, poisson=True)[0][8:10, 15:17].any()
