"""The numerical core: hyperspy_cnmf.nmf (solver, operators, initialisations)."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

from hyperspy_cnmf.nmf import (
    ConvergenceWarning,
    DenseOperator,
    FactoredOperator,
    SketchOperator,
    constrained_nmf,
    randomized_range,
)
from hyperspy_cnmf.nmf._operators import round_entries, round_sums


def _fit(X, k=4, **kw):
    kw.setdefault("random_state", 0)
    op = X if isinstance(X, FactoredOperator) else DenseOperator(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return constrained_nmf(op, k, **kw)


def test_core_never_imports_hyperspy_dask_py4dstem():
    code = (
        "import sys, hyperspy_cnmf.nmf, hyperspy_cnmf.constraints;"
        "bad=[m for m in ('hyperspy','dask','py4DSTEM') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("solver", ["hals", "mu", "als"])
def test_unconstrained_objective_never_increases(lowrank, solver):
    r = _fit(lowrank, solver=solver, sketch=False, max_iter=60, tol=0)
    # The iterations; the final separation may trade a little loss (up to max_clip) for less mixed patterns.
    loss = r.loss[np.asarray(r.phases) != "separate"]
    assert np.all(np.diff(loss) <= 1e-9 * loss[0]), np.diff(loss).max()
    assert loss[-1] < loss[0]


@pytest.mark.parametrize("solver", ["hals", "mu", "als"])
@pytest.mark.parametrize("init", ["nndsvda", "nndsvd", "spa", "random"])
def test_outputs_are_nonnegative_and_fit(lowrank, solver, init):
    r = _fit(lowrank, solver=solver, init=init, max_iter=80)
    assert r.W.min() >= 0 and r.Ht.min() >= 0
    # Poisson noise of mean m has variance m: the fit reaches about the noise level.
    assert r.loss[-1] < 1.5 * lowrank.mean()


def test_deterministic_with_random_state(lowrank):
    a = _fit(lowrank, init="random", random_state=3, max_iter=20)
    b = _fit(lowrank, init="random", random_state=3, max_iter=20)
    c = _fit(lowrank, init="random", random_state=4, max_iter=20)
    np.testing.assert_array_equal(a.W, b.W)
    np.testing.assert_array_equal(a.Ht, b.Ht)
    assert not np.allclose(a.W, c.W)


def test_float32_and_float64_agree(lowrank):
    r64 = _fit(lowrank, max_iter=100, tol=1e-7)
    r32 = _fit(lowrank.astype(np.float32), max_iter=100, tol=1e-7)
    assert abs(r32.loss[-1] - r64.loss[-1]) / r64.loss[-1] < 1e-3
    m64, m32 = r64.W @ r64.Ht.T, r32.W @ r32.Ht.T
    assert np.linalg.norm(m32 - m64) / np.linalg.norm(m64) < 1e-2


def test_sketch_reaches_exact_loss_with_fewer_passes(lowrank):
    exact = _fit(lowrank, sketch=False, max_iter=300, tol=1e-7)
    sk = _fit(lowrank, sketch=True, max_iter=300, tol=1e-7)
    assert sk.loss[-1] <= exact.loss[-1] * 1.001
    assert sk.n_passes < exact.n_passes
    assert sk.n_iter_sketch > 0


def test_masked_rows_and_columns_take_no_part(lowrank):
    row = np.ones(lowrank.shape[0])
    col = np.ones(lowrank.shape[1])
    row[:50] = 0
    col[-20:] = 0
    X2 = lowrank.copy()
    X2[:50] = 1e6  # garbage in masked rows
    X2[:, -20:] = 1e6  # and columns
    kw = dict(random_state=0, max_iter=30, sketch=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = constrained_nmf(DenseOperator(lowrank, row, col), 4, **kw)
        b = constrained_nmf(DenseOperator(X2, row, col), 4, **kw)
    np.testing.assert_allclose(a.Ht, b.Ht, rtol=1e-6, atol=1e-9)
    assert np.all(a.Ht[-20:] == 0)


def _sums_in_three_orders(terms):
    """Column sums of ``terms`` forward, backward and pairwise; they differ in their last digits."""
    forward, backward = terms.sum(axis=0), terms[::-1].sum(axis=0)
    pairwise = np.add.reduceat(terms, np.arange(0, len(terms), 7), axis=0).sum(axis=0)
    assert not (np.array_equal(forward, backward) and np.array_equal(forward, pairwise))
    return forward, backward, pairwise


def test_round_sums_makes_the_summation_order_invisible():
    rng = np.random.default_rng(0)
    terms = rng.standard_normal((4000, 6)) * rng.random(6) * 10.0 ** np.arange(6)
    forward, backward, pairwise = _sums_in_three_orders(terms)
    rounded = round_sums(forward)
    assert np.array_equal(round_sums(backward), rounded)
    assert np.array_equal(round_sums(pairwise), rounded)
    # a grid of 2**-24 of the largest entry (per column of a 2D array); NaN stays NaN
    assert np.abs(rounded - forward).max() <= 2.0**-24 * np.abs(forward).max()
    cols = round_sums(np.stack([forward, 1e-9 * forward, np.full(6, np.nan)], axis=1))
    np.testing.assert_allclose(
        cols[:, 1], 1e-9 * forward, rtol=0, atol=1e-16 * np.abs(forward).max()
    )
    assert np.isnan(cols[:, 2]).all()
    assert round_sums(np.zeros(0)).shape == (0,)


def test_round_entries_keeps_every_entry_s_precision():
    """Sums of non-negative terms (the exact iterations' ``Xe.T @ W``) rounded entry by
    entry: the summation order disappears and a pixel 1e5 times weaker than the direct
    beam keeps 24 bits (on a grid set by the largest entry, ``round_sums``, it lost
    all its digits: measured median error 5.6e-2 with entries rounded to 0)."""
    rng = np.random.default_rng(0)
    terms = rng.random((4000, 6)) * np.array([1e5, 1.0, 0.3, 1e-3, 7.0, 1e-9])
    forward, backward, pairwise = _sums_in_three_orders(terms)
    rounded = round_entries(forward)
    assert np.array_equal(round_entries(backward), rounded)
    assert np.array_equal(round_entries(pairwise), rounded)
    np.testing.assert_allclose(rounded, forward, rtol=2.0**-24, atol=0)
    assert np.array_equal(round_entries(2.0**-7 * forward), 2.0**-7 * rounded)
    special = round_entries(np.array([0.0, np.nan, np.inf, -3.0]))
    assert special[0] == 0 and np.isnan(special[1]) and special[2] == np.inf
    assert special[3] == -3.0


def test_a_near_exact_fit_is_not_stopped_by_the_rounding():
    """Exact rank-4 data: the loss is evaluated from the unrounded sums, so it stays
    the fit's own (3.7e-11 of the data's mean square after 200 iterations). Evaluated
    from the rounded sums it cancelled to 0 after 89 iterations, reported converged
    at a true error of 3.3e-9."""
    rng = np.random.default_rng(1)
    X = 40 * (rng.random((600, 4)) ** 3) @ (rng.random((4, 200)) ** 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        r = constrained_nmf(DenseOperator(X), 4, random_state=0)
    true = np.mean((X - r.W @ r.Ht.T) ** 2)
    assert r.n_iter == 200 and not r.converged
    assert true < 1e-10 * np.mean(X**2)
    np.testing.assert_allclose(r.loss[-1], true, rtol=1e-3)


def test_randomized_range_captures_low_rank():
    rng = np.random.default_rng(0)
    X = rng.random((300, 5)) @ rng.random((5, 120))
    op = DenseOperator(X)
    Q, Bt = randomized_range(op, 8, n_power_iter=1, rng=0)
    # to the rounding of the sums over positions (round_sums, 2**-24; measured 5e-8)
    assert np.linalg.norm(X - Q @ Bt.T) / np.linalg.norm(X) < 1e-6
    # n_power_iter + 1 reads: the 3 directions beyond the rank are dropped, not read
    assert op.n_passes == 2
    assert np.abs(Bt[:, 5:]).max() == 0
    sk = SketchOperator(Q, Bt, op)
    A = rng.random((120, 3))
    np.testing.assert_allclose(sk.right(A), X @ A, rtol=1e-8)


def test_constraints_are_applied_every_iteration(lowrank):
    calls = {"map": 0, "diff": 0}

    def map_c(W):
        calls["map"] += 1
        return W

    def diff_c(Ht):
        calls["diff"] += 1
        return np.minimum(Ht, np.percentile(Ht, 90))

    r = _fit(
        lowrank,
        max_iter=10,
        tol=0,
        sketch=False,
        map_constraint=map_c,
        diffraction_constraint=diff_c,
    )
    assert calls["map"] >= r.n_iter and calls["diff"] >= r.n_iter


def test_convergence_warning(lowrank):
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        constrained_nmf(DenseOperator(lowrank), 4, max_iter=2, tol=0, random_state=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0), "number of components"),
        (dict(k=1000), "number of components"),
        (dict(solver="pgd"), "unknown solver"),
        (dict(init="svd"), "unknown init"),
        (dict(init=(np.ones((3, 4)), np.ones((200, 4)))), "custom init"),
        (dict(init=(-np.ones((600, 4)), np.ones((200, 4)))), "non-negative"),
    ],
)
def test_argument_errors(lowrank, kwargs, match):
    k = kwargs.pop("k", 4)
    with pytest.raises(ValueError, match=match):
        constrained_nmf(DenseOperator(lowrank), k, **kwargs)


def test_all_masked_is_an_error(lowrank):
    with pytest.raises(ValueError, match="all data are masked"):
        constrained_nmf(DenseOperator(lowrank, row_scale=np.zeros(600)), 2)


def test_n_init_keeps_the_best_start(lowrank):
    """Extra random starts never end worse than the first one alone."""
    one = _fit(lowrank, n_init=1, separate=False, max_iter=100)
    many = _fit(lowrank, n_init=4, separate=False, max_iter=100)
    assert 0 <= many.best_init < 4
    assert many.loss[-1] <= one.loss[-1] * (1 + 1e-6)
    with pytest.raises(ValueError, match="n_init"):
        _fit(lowrank, n_init=0)


def test_max_exact_iter_caps_the_data_reads(lowrank):
    r = _fit(lowrank, sketch=True, max_exact_iter=2, tol=0, separate=False)
    assert r.n_iter == 2 and r.n_iter_sketch > 0
    assert not r.converged


def _smooth_maps(W):
    """A map constraint that is a projection: neighbouring rows (positions) averaged in pairs."""
    out = W.copy()
    out[0::2] = out[1::2] = (W[0::2] + W[1::2]) / 2
    return out


def test_constrained_exact_iteration_reads_the_data_once(lowrank):
    """With a map constraint and a sketch, one exact iteration costs one read."""
    op = DenseOperator(lowrank)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        r = constrained_nmf(
            op,
            4,
            sketch=True,
            map_constraint=_smooth_maps,
            max_exact_iter=5,
            tol=0,
            random_state=0,
            separate=False,
        )
        ref = constrained_nmf(
            DenseOperator(lowrank),
            4,
            sketch=True,
            map_constraint=_smooth_maps,
            max_exact_iter=0,
            tol=0,
            random_state=0,
            separate=False,
        )
    assert r.n_iter == 5
    assert r.n_passes - ref.n_passes == 5  # the sketch phase and its reads are the same
    # the reported loss is that of the returned (constrained) factors, evaluated exactly
    np.testing.assert_allclose(
        r.loss[-1],
        np.mean((lowrank - r.W @ r.Ht.T) ** 2),
        rtol=1e-9,
    )
    np.testing.assert_allclose(r.W, _smooth_maps(r.W), atol=1e-12 * r.W.max())


def test_one_read_iteration_reaches_the_two_read_fixed_point(lowrank):
    """Run to ``tol``, the one-read iteration (its maps' product corrected by the
    sketch) ends where the exact two-read alternation ends: the correction
    vanishes at a fixed point."""
    kw = dict(map_constraint=_smooth_maps, tol=1e-6, max_iter=500, random_state=0)
    one = _fit(lowrank, sketch=True, **kw)
    two = _fit(lowrank, sketch=False, **kw)
    assert one.converged and two.converged
    assert abs(one.loss[-1] - two.loss[-1]) <= 1e-4 * two.loss[-1]
    np.testing.assert_allclose(
        one.W @ one.Ht.T, two.W @ two.Ht.T, atol=0.05 * lowrank.std()
    )


def test_separation_moves_a_shared_pattern_back():
    """A component holding a share of another's pattern is cleaned exactly."""
    rng = np.random.default_rng(3)
    H = np.zeros((2, 40))
    H[0, :20] = rng.random(20) + 0.5  # the "matrix" pattern
    H[1, 25:35] = rng.random(10) + 0.5  # a "grain" pattern, disjoint
    W = rng.random((30, 2)) + 0.1
    W[:, 0] += 0.5  # the matrix is present everywhere
    X = W @ H
    # the same product with 0.4 of the matrix inside the grain's pattern
    mixed_H = H.copy()
    mixed_H[1] += 0.4 * H[0]
    mixed_W = W.copy()
    mixed_W[:, 0] -= 0.4 * W[:, 1]
    assert mixed_W.min() >= 0  # still a valid NMF of X
    np.testing.assert_allclose(mixed_W @ mixed_H, X)
    from hyperspy_cnmf.nmf._solver import _separate

    Wt, Ht = mixed_W.copy(), mixed_H.T.copy()
    _separate(Wt, Ht, np.ones(40))
    np.testing.assert_allclose(Ht, H.T, atol=1e-12)
    np.testing.assert_allclose(Wt @ Ht.T, X, atol=1e-12)


def test_separation_does_not_inflate_the_model():
    """A pattern lacking the other's weak tails is not over-subtracted."""
    from hyperspy_cnmf.nmf._solver import _separate

    hj = np.r_[np.full(5, 10.0), np.full(34, 0.9), 0.0]  # strong "beam" + weak tails
    hi = np.r_[
        np.full(5, 4.0), np.zeros(34), 10.0
    ]  # a spot; shares the beam, not the tails
    totals = []
    for max_clip in (10.0, 0.1):  # unchecked, default
        Ht = np.stack([hi, hj], axis=1)
        W = np.ones((10, 2))
        before = (W @ Ht.T).sum()
        _separate(W, Ht, np.ones(40), max_clip=max_clip)
        totals.append((W @ Ht.T).sum() / before)
    assert totals[0] > 1.1  # the unchecked move (a = 0.4) inflates the model
    assert totals[1] <= 1.05


def test_separation_gives_no_grain_a_floor_of_the_matrix():
    """The matrix's pattern keeps a grain's spots' pixels: no carve, no floor in the grain's map.

    By the ratio rule alone the matrix's halo "holds" 0.2 of the grain's
    pattern (spots 5x the halo on two pixels): the move would zero the halo
    at the spots and add 0.2 of the matrix's map to the grain's everywhere.
    """
    from hyperspy_cnmf.nmf._solver import _separate

    h_matrix = np.ones(40)  # a flat halo
    h_grain = np.zeros(40)
    h_grain[[3, 7]] = 5.0  # two Bragg spots on it
    w_matrix = np.ones(30)  # the glass is everywhere
    w_grain = np.zeros(30)
    w_grain[10:14] = 1.0  # a grain on 4 of 30 positions
    W = np.stack([w_matrix, w_grain], axis=1)
    Ht = np.stack([h_matrix, h_grain], axis=1)
    X = W @ Ht.T
    M = _separate(W, Ht, np.ones(40))
    np.testing.assert_array_equal(Ht[:, 0], h_matrix)  # no dip at the spots
    np.testing.assert_array_equal(W[:, 1], w_grain)  # no floor
    np.testing.assert_array_equal(M, np.eye(2))
    np.testing.assert_allclose(W @ Ht.T, X)
    # the other way, the grain's share of the matrix still goes
    Ht = np.stack([h_matrix, h_grain + 0.3 * h_matrix], axis=1)
    W = np.stack([w_matrix - 0.3 * w_grain, w_grain], axis=1)
    _separate(W, Ht, np.ones(40))
    np.testing.assert_allclose(Ht[:, 1], h_grain, atol=1e-12)
    np.testing.assert_allclose(W[:, 0], w_matrix, atol=1e-12)
    # a component whose map is all zero is present nowhere: no floor for it either
    W = np.stack([w_matrix, np.zeros(30)], axis=1)
    Ht = np.stack([h_matrix, h_grain], axis=1)
    _separate(W, Ht, np.ones(40))
    np.testing.assert_array_equal(W[:, 1], 0.0)
    np.testing.assert_array_equal(Ht[:, 0], h_matrix)
    # nor through a chain: the matrix into a wide component, that one into the grain
    h_wide = np.zeros(40)
    h_wide[10:20] = 2.0
    h_wide[[3, 7]] = 1.0
    w_wide = np.zeros(30)
    w_wide[:16] = 1.0
    w_small = np.zeros(30)
    w_small[:8] = 1.0
    W = np.stack([w_matrix, w_wide, w_small], axis=1)
    Ht = np.stack([h_matrix, h_wide, h_grain], axis=1)
    _separate(W, Ht, np.ones(40))
    np.testing.assert_array_equal(W[8:, 2], 0.0)


@pytest.mark.parametrize("solver", ["hals", "mu", "als"])
@pytest.mark.parametrize("init", ["nndsvda", "nndsvd", "spa"])
def test_scale_equivariance_of_the_core(lowrank, solver, init):
    """The data times c give the same patterns and c times the maps (no absolute thresholds)."""
    ref = _fit(lowrank, solver=solver, init=init, max_iter=30)
    model = ref.W @ ref.Ht.T
    # Powers of four scale every float exactly, the factors (times sqrt(c)) included:
    # any absolute threshold would show. Other factors round the sums over positions
    # differently in their 24th bit (round_sums, round_entries), which the iterations
    # carry on: measured within 7e-6 of the model's maximum and 3e-7 of the losses.
    for c, rtol in (
        (2.0**-10, 1e-12),
        (2.0**14, 1e-12),
        (2.0**13, 1e-4),
        (1e-3, 1e-4),
        (10.0, 1e-4),
        (1e4, 1e-4),
    ):
        r = _fit(lowrank * c, solver=solver, init=init, max_iter=30)
        np.testing.assert_allclose(
            r.W @ r.Ht.T, c * model, rtol=rtol, atol=rtol * c * model.max()
        )
        np.testing.assert_allclose(r.loss, c**2 * ref.loss, rtol=rtol)


def test_nndsvda_start_is_scale_equivariant(lowrank):
    from hyperspy_cnmf.nmf._init import nndsvd_from_svd

    U, S, Vt = np.linalg.svd(lowrank, full_matrices=False)
    W1, H1 = nndsvd_from_svd(U, S, Vt, 4, lowrank.mean())
    W2, H2 = nndsvd_from_svd(U, 10 * S, Vt, 4, 10 * lowrank.mean())
    np.testing.assert_allclose(W2, np.sqrt(10) * W1, rtol=1e-12)
    np.testing.assert_allclose(H2, np.sqrt(10) * H1, rtol=1e-12)


def test_degenerate_inputs_raise(lowrank):
    with pytest.raises(ValueError, match="all zero"):
        _fit(np.zeros_like(lowrank))
    W0, H0 = np.ones((600, 4)), np.ones((200, 4))
    W0[:, 2] = 0.0
    with pytest.raises(ValueError, match=r"component\(s\) \[2\]"):
        _fit(lowrank, init=(W0, H0))
    with pytest.raises(ValueError, match="overflows"):
        _fit(lowrank * 1e160)


def test_non_finite_factors_raise_with_the_reason(lowrank):
    from hyperspy_cnmf.nmf._solver import NonFiniteError

    huge = (np.full((600, 4), 1e200), np.full((200, 4), 1e200))
    with pytest.raises(NonFiniteError, match="NaN or infinite.*exact iteration 1"):
        _fit(lowrank, init=huge, sketch=False, separate=False)


def test_max_iter_caps_every_phase(lowrank):
    r = _fit(lowrank, max_iter=0, max_exact_iter=5, sketch=True, separate=False)
    assert r.n_iter == 0 and r.n_iter_sketch == 0 and r.loss.size == 0


def test_map_support_removes_a_grains_floor_and_fills_the_matrix_dips():
    """From the exact solution in which the grain's map has a floor over the matrix
    and the matrix's pattern lacks the grain's spots (a zero-loss member of NMF's
    non-unique family), the maps' supports lead to the floor-free one."""
    from hyperspy_cnmf.constraints import MapResolutionConstraint, MapSupport

    n, p = 20, 60
    halo = np.exp(-0.5 * ((np.arange(p) - 30) / 8.0) ** 2) + 0.1
    spots = np.zeros(p)
    spots[[24, 37]] = 2.0 * halo[[24, 37]]
    h_grain = 0.5 * halo + spots
    grain = np.zeros((n, n))
    grain[6:10, 8:12] = 1.0
    W_true = np.stack([np.ones(n * n), grain.ravel()], axis=1)
    X = W_true @ np.stack([halo, h_grain], axis=1).T
    floor = 0.04  # the same X: matrix pattern halo - 0.04 h_grain, grain map + 0.04
    W0 = np.stack([np.ones(n * n), grain.ravel() + floor], axis=1)
    H0 = np.stack([halo - floor * h_grain, h_grain], axis=1)
    assert H0.min() >= 0
    np.testing.assert_allclose(W0 @ H0.T, X)
    identity = MapResolutionConstraint((n, n), resolution=1.0)  # beyond Nyquist
    kw = dict(
        init=(W0, H0), map_constraint=identity, separate=False, tol=1e-12, max_iter=50
    )
    free = _fit(X, 2, **kw)
    assert free.W[~grain.ravel().astype(bool), 1].min() > 0.03  # the floor stays
    assert free.confined is not None and not free.confined.any()
    res = _fit(X, 2, map_support=MapSupport((n, n)), **kw)
    assert res.confined.tolist() == [False, True]
    assert "support" in res.phases
    outside = ~MapSupport((n, n)).masks(W_true)[:, 1].astype(bool)
    np.testing.assert_array_equal(res.W[outside, 1], 0.0)
    h_m = res.Ht[:, 0] / res.Ht[:, 0].max()
    np.testing.assert_allclose(
        h_m, halo / halo.max(), atol=0.02
    )  # no dips at the spots
    assert np.linalg.norm(res.W @ res.Ht.T - X) < 1e-3 * np.linalg.norm(X)


def test_map_support_bookkeeping_caps_and_separation():
    """The support phase obeys max_iter and is counted once; the maps stay in their
    supports through the exact iterations and the separation after them (a
    reviewer's case, grain A's pattern holding B's: the separation added B's map to
    A's, 4 positions outside A's support, before such moves were blocked)."""
    from hyperspy_cnmf.constraints import MapResolutionConstraint, MapSupport

    ny, nx, p = 16, 24, 60
    halo = np.exp(-0.5 * ((np.arange(p) - 30) / 8.0) ** 2) + 0.1
    h_b = np.zeros(p)
    h_b[[10, 50]] = 3.0
    pure = np.zeros(p)
    pure[[20, 40]] = 3.0
    g_a = np.zeros((ny, nx))
    g_a[2:4, 2:4] = 1.0
    g_b = np.zeros((ny, nx))
    g_b[9:12, 15:18] = 1.0
    W0 = np.stack([np.ones(ny * nx), g_a.ravel(), g_b.ravel()], axis=1)
    H0 = np.stack([halo, pure + h_b, h_b], axis=1)
    X = W0 @ H0.T
    kw = dict(
        init=(W0, H0),
        map_constraint=MapResolutionConstraint((ny, nx), resolution=1.0),
        map_support=MapSupport((ny, nx)),
        tol=1e-12,
    )
    res = _fit(X, 3, max_iter=20, sketch=False, separate=False, **kw)
    m = MapSupport((ny, nx)).masks(W0)
    assert res.confined.tolist() == [False, True, True]
    np.testing.assert_array_equal(res.W[m == 0], 0.0)
    n_support = res.phases.count("support")
    assert n_support == 10 and res.n_iter + n_support == len(res.loss)
    capped = _fit(X, 3, max_iter=2, sketch=False, separate=False, **kw)
    assert capped.phases.count("support") == 2 and capped.n_iter == 2
    sk = _fit(X, 3, max_iter=2, separate=False, sketch=True, **kw)
    assert sk.phases.count("support") == 2
    assert sk.n_iter_sketch == sk.phases.count("sketch")
    start = _fit(X, 3, max_iter=0, separate=False, sketch=False, **kw)
    assert "support" not in start.phases
    np.testing.assert_array_equal(res.supports, m)
    sep = _fit(X, 3, max_iter=20, sketch=False, separate=True, **kw)
    assert sep.phases[-1] == "separate"
    np.testing.assert_array_equal(sep.W[m == 0], 0.0)
    # the same separation without the supports moves B's map into A's
    from hyperspy_cnmf.nmf._solver import _separate

    W, Ht = res.W.copy(), res.Ht.copy()
    _separate(W, Ht, np.ones(p))
    assert (W[m == 0] > 0).any()
    W, Ht = res.W.copy(), res.Ht.copy()
    _separate(W, Ht, np.ones(p), supports=res.supports)
    np.testing.assert_array_equal(W[m == 0], 0.0)


def test_a_cycling_loss_stops_at_its_lowest_iterate(lowrank, monkeypatch):
    """A constraint that keeps the loss from settling: the fit stops after
    ``STALL_ITERATIONS`` iterations without a new minimum, on its lowest iterate."""
    import hyperspy_cnmf.nmf._solver as solver

    def fit():
        rng = np.random.default_rng(0)

        def shaky(Ht):  # not a projection: a fresh random tilt every call
            return Ht * (1.0 + 0.3 * rng.random(Ht.shape))

        return constrained_nmf(
            DenseOperator(lowrank),
            4,
            random_state=0,
            max_iter=400,
            sketch=False,
            separate=False,
            diffraction_constraint=shaky,
        )

    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # a stall is no cap
        r = fit()
    assert r.converged
    assert r.n_iter + solver.STALL_ITERATIONS < 400
    assert r.loss[-1] == r.loss.min()  # the history stops at the kept iterate
    model = np.mean((lowrank - r.W @ r.Ht.T) ** 2)
    np.testing.assert_allclose(model, r.loss[-1], rtol=1e-8)
    # the separation after it starts from the kept iterate's products
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        sep = constrained_nmf(
            DenseOperator(lowrank),
            4,
            random_state=0,
            max_iter=400,
            sketch=False,
            diffraction_constraint=lambda Ht: Ht * (1.0 + 0.3 * rng.random(Ht.shape)),
        )
    assert sep.phases[-1] == "separate"
    model = np.mean((lowrank - sep.W @ sep.Ht.T) ** 2)
    np.testing.assert_allclose(model, sep.loss[-1], rtol=1e-8)
    # without the rule the same fit runs to its cap and ends higher; so does
    # a fit with tol = 0 (no stall rule: max_iter iterations)
    monkeypatch.setattr(solver, "STALL_ITERATIONS", 10**6)
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        capped = fit()
    assert not capped.converged and capped.n_iter == 400
    assert capped.loss[-1] > r.loss[-1]
    monkeypatch.setattr(solver, "STALL_ITERATIONS", 40)
    n_calls = []
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        constrained_nmf(
            DenseOperator(lowrank),
            4,
            random_state=0,
            tol=0,
            max_iter=120,
            sketch=False,
            separate=False,
            diffraction_constraint=lambda Ht: Ht * (1.0 + 0.3 * rng.random(Ht.shape)),
            callback=lambda phase, it, loss: n_calls.append(it),
        )
    assert len(n_calls) == 120


def test_factored_operator_is_its_model_and_refuses_what_no_fit_gives():
    """A fit's model as data: the products, statistics and scales of ``W @ Ht.T``, no read."""
    rng = np.random.default_rng(3)
    W, Ht = rng.random((30, 4)), rng.random((20, 4))
    rs, cs = rng.random(30) + 0.5, np.r_[np.ones(18), 0.0, 0.0]
    op = FactoredOperator(W, Ht, rs, cs)
    X = W @ Ht.T
    A, B = rng.random((20, 3)), rng.random((30, 3))
    np.testing.assert_allclose(op.right(A), X @ A, rtol=1e-12)
    np.testing.assert_allclose(op.left_t(B), X.T @ B, rtol=1e-12)
    R, L = op.right_left_t(A, B)
    np.testing.assert_allclose(R, X @ A, rtol=1e-12)
    np.testing.assert_allclose(L, X.T @ B, rtol=1e-12)
    stats = op.stats()
    assert stats["sq_norm"] == pytest.approx((X**2).sum(), rel=1e-12)
    assert stats["total"] == pytest.approx(X.sum(), rel=1e-12)
    assert stats["minimum"] == 0.0 and stats["n_bad"] == 0
    np.testing.assert_array_equal(op.row_scale, rs)
    np.testing.assert_array_equal(op.col_scale, cs)
    assert op.n_passes == 0
    with pytest.raises(ValueError, match="non-negative"):
        FactoredOperator(-W, Ht, rs, cs)
    with pytest.raises(ValueError, match="finite"):
        FactoredOperator(np.where(W > 0.5, np.nan, W), Ht, rs, cs)
    with pytest.raises(ValueError, match="rank"):
        FactoredOperator(W, Ht[:, :3], rs, cs)
    with pytest.raises(ValueError, match="row_scale"):
        FactoredOperator(W, Ht, rs[:5], cs)


def test_a_fit_to_a_factored_model_recovers_it(lowrank):
    """Fewer components fitted to an over-complete fit's model: the refit of the clustering
    (``cluster_diffraction(refit="auto")``) reproduces the data it came from."""
    X = lowrank
    over = _fit(X, k=8, tol=1e-7, max_iter=400)
    op = FactoredOperator(over.W, over.Ht, np.ones(X.shape[0]), np.ones(X.shape[1]))
    refit = _fit(op, k=4, tol=1e-7, max_iter=400)
    direct = _fit(X, k=4, tol=1e-7, max_iter=400)
    err_refit = np.linalg.norm(refit.W @ refit.Ht.T - X)
    err_direct = np.linalg.norm(direct.W @ direct.Ht.T - X)
    assert err_refit <= 1.01 * err_direct  # as good as a fit to the data itself
    assert op.n_passes == 0
