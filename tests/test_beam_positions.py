"""The per-pattern direct-beam centre measured in the statistics read (kernel and operators)."""

import dask.array as da
import numpy as np
import pytest

from hyperspy_cnmf._beam import defect_pixels, positions_across_dead_pixels
from hyperspy_cnmf.chunked import DaskOperator
from hyperspy_cnmf.nmf import DenseOperator
from hyperspy_cnmf.nmf._kernels import block_beam_centres

SIG = (32, 36)


def shifted_disks(
    centres, shape=SIG, radius=4.0, counts=3000.0, background=0.3, seed=0, oversample=8
):
    """Poisson patterns of a flat disk (anti-aliased by oversampling) at the given (x, y) centres."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    yy = (np.arange(ny)[:, None] + sub[None, :]).ravel()
    xx = (np.arange(nx)[:, None] + sub[None, :]).ravel()
    out = np.empty((len(centres), ny, nx))
    for i, (cx, cy) in enumerate(centres):
        fine = (np.hypot(xx[None, :] - cx, yy[:, None] - cy) <= radius).astype(float)
        disk = fine.reshape(ny, oversample, nx, oversample).mean(axis=(1, 3))
        mean = counts * disk / disk.sum() + background
        out[i] = rng.poisson(mean)
    return out


def _centres(n, seed=1):
    rng = np.random.default_rng(seed)
    return np.stack(
        [17.0 + rng.uniform(-1.5, 1.5, n), 15.0 + rng.uniform(-1.5, 1.5, n)], axis=1
    )


def _measure(X, shape=SIG, row_valid=None, col_valid=None):
    X = np.ascontiguousarray(X.reshape(X.shape[0], -1), dtype=np.float32)
    out = np.empty((X.shape[0], 2))
    row_valid = np.ones(X.shape[0], dtype=bool) if row_valid is None else row_valid
    col_valid = np.ones(X.shape[1], dtype=bool) if col_valid is None else col_valid
    block_beam_centres(X, shape[0], shape[1], row_valid, col_valid, out)
    return out


def test_kernel_finds_subpixel_disk_centres():
    truth = _centres(64)
    pos = _measure(shifted_disks(truth))
    err = pos - truth
    assert np.sqrt((err**2).mean()) < 0.06
    assert np.abs(err.mean(axis=0)).max() < 0.03  # no systematic (pixel-locking) bias


def test_kernel_noise_free_is_exact():
    truth = np.array([[17.0, 15.0], [17.25, 14.5], [16.6, 15.8]])
    rng_free = shifted_disks(truth, counts=1e9, background=0.0)
    pos = _measure(rng_free)
    np.testing.assert_allclose(pos, truth, atol=0.02)


def _with_gap(X, width, row=15, col=17):
    """``X`` (n, qy, qx) with a cross of zero lines ``width`` px wide (a detector's chip gaps)."""
    X = X.copy()
    X[:, row - width // 2 : row - width // 2 + width, :] = 0
    X[:, :, col - width // 2 : col - width // 2 + width] = 0
    return X


@pytest.mark.parametrize(
    "width, before, after", [(1, 0.15, 0.06), (2, 0.5, 0.16), (3, 1.4, 0.28)]
)
def test_positions_across_dead_pixels_undo_a_gap_through_the_beam(width, before, after):
    """A cross of dead lines through a 4-px beam moving +-1.5 px: the centre of mass reads
    the zeros. Measured rms 0.172 / 0.529 / 1.530 px, after 0.041 / 0.133 / 0.233 px (slope
    of measured on true x 1.19 / 1.53 / 2.68, after 1.00 / 0.89 / 0.80)."""
    truth = _centres(200)
    X = _with_gap(shifted_disks(truth), width)
    mean = X.mean(axis=0)
    _, dead = defect_pixels(mean, len(X), poisson=True)
    assert dead[15].all() and dead[:, 17].all()
    pos = _measure(X)
    fixed = positions_across_dead_pixels(pos, mean, dead)
    assert np.sqrt(((pos - truth) ** 2).mean()) > before
    assert np.sqrt(((fixed - truth) ** 2).mean()) < after
    # NaN rows stay NaN; the input is not modified
    pos[3] = np.nan
    kept = pos.copy()
    again = positions_across_dead_pixels(pos, mean, dead)
    assert np.isnan(again[3]).all() and np.isfinite(np.delete(again, 3, 0)).all()
    np.testing.assert_array_equal(pos, kept)


def test_positions_across_dead_pixels_with_a_hot_pixel_a_short_scan_or_a_masked_gap():
    """Review cases (``/work/notes/s29/review29``): a hot pixel beside the beam stays put
    while the beam moves (moved with the template it drew the response: the descan
    case's rms 0.872 -> 2.349 px, now 0.173); on a short scan only part of a gap is found
    dead, but its mean is zero (16 x 16 of the descan case: 0.544 -> 1.370, now 0.148);
    a gap given as masked pixels (not read) biases as dead ones do."""
    truth = _centres(200)
    clean = shifted_disks(truth)
    X = _with_gap(clean, 2)
    X[:, 8, 26] += 300.0  # a hot pixel 9 px from the beam
    mean = X.mean(axis=0)
    hot, dead = defect_pixels(mean, len(X), poisson=True)
    assert hot[8, 26]
    pos = _measure(X)
    fixed = positions_across_dead_pixels(pos, mean, dead, hot=hot)
    assert np.sqrt(((fixed - truth) ** 2).mean()) < 0.2
    # only the mean's zeros tell the gap
    X = _with_gap(clean, 2)
    pos = _measure(X)
    none = np.zeros(SIG, dtype=bool)
    fixed = positions_across_dead_pixels(pos, X.mean(axis=0), none)
    assert np.sqrt(((fixed - truth) ** 2).mean()) < 0.16
    # the gap masked (not read) instead of zero
    masked = _with_gap(np.ones((1,) + SIG), 2)[0] == 0
    pos = _measure(clean, col_valid=~masked.ravel())
    fixed = positions_across_dead_pixels(pos, clean.mean(axis=0), none, valid=~masked)
    assert np.sqrt(((pos - truth) ** 2).mean()) > 0.5
    assert np.sqrt(((fixed - truth) ** 2).mean()) < 0.16
    with pytest.raises(ValueError, match="shape"):
        positions_across_dead_pixels(pos, clean.mean(axis=0), none[:5])


def test_positions_across_dead_pixels_leave_positions_without_a_gap_near_the_beam():
    truth = _centres(50)
    X = shifted_disks(truth)
    pos = _measure(X)
    none = np.zeros(SIG, dtype=bool)
    assert positions_across_dead_pixels(pos, X.mean(axis=0), none) is pos
    far = none.copy()
    far[:, 34] = True  # a dead column 17 px from the beam: not read
    assert positions_across_dead_pixels(pos, X.mean(axis=0), far) is pos


def test_kernel_masked_rows_empty_rows_nan_and_masked_pixels():
    X = shifted_disks(_centres(4)).reshape(4, -1)
    X[2] = 0.0
    X[3, 5] = np.nan  # a NaN pixel is skipped
    row_valid = np.array([True, False, True, True])
    pos = _measure(X, row_valid=row_valid)
    assert np.isnan(pos[1]).all() and np.isnan(pos[2]).all()
    assert np.isfinite(pos[[0, 3]]).all()
    # a masked hot pixel is ignored
    hot = X.copy()
    hot[0, 3] = 1e6
    col_valid = np.ones(X.shape[1], dtype=bool)
    col_valid[3] = False
    np.testing.assert_allclose(_measure(hot, col_valid=col_valid)[0], pos[0], atol=1e-9)


def _data(n=(6, 8)):
    truth = _centres(n[0] * n[1], seed=3)
    return shifted_disks(truth, seed=4).astype(np.float32).reshape(n + SIG), truth


def test_dense_and_dask_operators_measure_in_the_stats_read():
    data, truth = _data()
    X = data.reshape(48, -1)
    op = DenseOperator(X, signal_shape=SIG)
    op.stats()
    dense = op.beam_positions()
    assert op.n_passes == 1  # no read of its own
    assert np.sqrt(((dense - truth) ** 2).mean()) < 0.06

    dop = DaskOperator(da.from_array(data, chunks=(2, 8) + SIG))
    dop.stats()
    lazy = dop.beam_positions()
    assert dop.n_passes == 1
    np.testing.assert_allclose(lazy, dense, rtol=0, atol=1e-12)

    # rescaled operators (the Poisson scales) reuse the measurement, no read
    r = dop.rescaled(np.full(48, 2.0), np.ones(X.shape[1]))
    np.testing.assert_array_equal(r.beam_positions(), lazy)
    assert r.n_passes == 0
    np.testing.assert_array_equal(
        op.rescaled(np.full(48, 2.0), None).beam_positions(), dense
    )


def test_masks_rows_nan_pixels_ignored():
    data, _ = _data()
    X = data.reshape(48, -1)
    rows = np.ones(48)
    rows[7] = 0
    cols = np.ones(X.shape[1])
    cols[: X.shape[1] // 2] = (
        0  # a mask over the beam's half does not change the measurement
    )
    dense = DenseOperator(X, rows, cols, signal_shape=SIG).beam_positions()
    lazy = DaskOperator(
        da.from_array(data, chunks=(3, 8) + SIG), rows, cols
    ).beam_positions()
    ref = DenseOperator(X, signal_shape=SIG).beam_positions()
    assert np.isnan(dense[7]).all() and np.isnan(lazy[7]).all()
    keep = np.arange(48) != 7
    np.testing.assert_allclose(dense[keep], ref[keep], atol=1e-12)
    np.testing.assert_allclose(lazy[keep], ref[keep], atol=1e-12)


def test_no_signal_shape_gives_none_and_bad_shape_raises():
    X = np.ones((4, 12), dtype=np.float32)
    assert DenseOperator(X).beam_positions() is None
    assert DaskOperator(da.from_array(X, chunks=(2, 12))).beam_positions() is None
    with pytest.raises(ValueError, match="signal_shape"):
        DenseOperator(X, signal_shape=(5, 5))


def test_dask_operator_reads_again_only_for_other_rows():
    data, _ = _data()
    dop = DaskOperator(da.from_array(data, chunks=(3, 8) + SIG))
    ref = dop.beam_positions()
    assert dop.n_passes == 1
    rows = np.ones(48)
    rows[5] = 0
    other = dop.rescaled(rows, None)
    got = other.beam_positions()  # other rows: its own read
    assert other.n_passes == 1
    assert np.isnan(got[5]).all()
    np.testing.assert_array_equal(np.delete(got, 5, axis=0), np.delete(ref, 5, axis=0))
