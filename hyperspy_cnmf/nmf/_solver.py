"""The NMF iteration loop (plain Python around the Numba kernels).

One solver serves every data path: it sees the data only through an operator
(:mod:`hyperspy_cnmf.nmf._operators`), so an in-memory array, a stream of
dask chunks and a randomized sketch are driven by the same code.

One iteration is one read of the data (``fused_pass``): the maps are updated
block by block while ``X.T @ W`` is accumulated with the updated maps, then the
patterns are updated from those sums. The map constraint acts on the full
(small) map matrix between passes and the diffraction constraint on the
patterns after their update.
"""

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np

from hyperspy_cnmf.nmf._init import nndsvd_from_svd, random_init, spa_from_svd
from hyperspy_cnmf.nmf._kernels import hals_rows, mu_rows
from hyperspy_cnmf.nmf._operators import (
    SketchOperator,
    randomized_range,
    round_entries,
    round_sums,
)

SOLVERS = ("hals", "mu", "als")
#: Exact iterations after the sketch phase in the signal methods' default
#: (``max_exact_iter="auto"``, in memory and out of core alike), one read of
#: the data each (:func:`_iterate_one_read`): with the statistics read and
#: the range finder's, the lazy decomposition reads the data 11 times at
#: most, leaving one read for ``cluster_diffraction``'s grain patterns within
#: 12. The exact phase refines a fit already converged on the sketch; run
#: on to ``tol`` it takes 9-43 iterations at k = 30 (six multislice cases).
#: Position ARI of the main job (``python benchmarks/quality_rules.py
#: --exact``, k = true / 2x / 30, random_state 0-2; the clustering with the
#: grains' own patterns, rims and the maps' rises): the three multislice
#: cases and the embedded default (36 runs each), mean 0.903 to ``tol``,
#: 0.903, 0.902 and 0.901 at 9, 8 and 6, the true cluster count in all 36
#: each; five independent multislice cases (45 runs each, ``--files``),
#: 0.893 to ``tol`` and 0.892 at 9, 8 and 6, the true count in all 45 each
#: (``benchmarks/results/quality_exact*.md``, with the maps' supports).
EXACT_REFINEMENT = 8
#: Iterations run after the maps' supports are fixed (``map_support``), on
#: the sketch (no data read) when there is one, before the exact phase: the
#: matrix's components take up what the grains' floors held (the 64²
#: multislice case at k = 9: the grains' components' share of the far
#: glass's counts 0.74 -> 0.06, and the matrix's halo within truth + noise
#: along the azimuth, ``benchmarks/quality_valleys.py``).
SUPPORT_ITERATIONS = 10
#: Iterations without a new minimum of the loss after which a phase of
#: :func:`_iterate` stops and returns to its lowest iterate (:class:`_Lowest`).
#: Measured on the sketch phase of the default call (fourteen multislice
#: cases, ``benchmarks/results/quality_physics*.md``, and the embedded
#: default; k = true and 30, random_state 0-2: 90 fits): every fit that
#: settles within ``tol`` does so at most 28 iterations after its last new
#: minimum. On the 64 x 64 detector case (``v10`` of
#: ``quality_physics_more.md``) at k = 30 the loss cycled between 1.00 and
#: 1.09 times its minimum for all 200 iterations of ``max_iter`` (17-24 s;
#: the other cases 1-4 s); with the rule it stops at iteration 51 and keeps
#: the 11th (7 s; position ARI 0.910 / 0.937 / 0.948 -> 0.955 / 0.951 /
#: 0.952 at random_state 0-2) and no other of the 90 fits changes.
#: Re-drawn at 15000 and 100000 counts (the 126 fits of
#: ``benchmarks/quality_dose.py``'s multislice cases) 13 fits at k = 30 stop
#: on the rule, each somewhere else on its cycle (ARI -0.080 to +0.103; mean
#: of the 63 at k = 30 0.877 -> 0.876, the true count in 60 -> 59).
STALL_ITERATIONS = 40
#: Default extra rank of the randomized sketch beyond ``k``.
SKETCH_OVERSAMPLE = 10
INITS = ("nndsvda", "nndsvd", "spa", "random")
#: Relative floors and regularisations (times the scale of the quantity they
#: guard): no absolute threshold, so that the data times ``c`` give the same
#: patterns and ``c`` times the maps.
_EPS = 1e-12
_TINY = np.finfo(np.float64).tiny
_NO_SKIP = np.zeros(0, dtype=bool)


class ConvergenceWarning(UserWarning):
    """The solver stopped at ``max_iter`` before reaching ``tol``."""


@dataclass
class NMFResult:
    """Result of :func:`constrained_nmf`.

    Attributes
    ----------
    W : ndarray, shape (n_rows, k)
        Maps (effective-data units: divide by the row scale for data units).
    Ht : ndarray, shape (n_cols, k)
        Diffraction patterns (effective-data units).
    loss : ndarray
        Mean squared error of the effective data after every iteration
        (sketch iterations first, then exact ones).
    n_iter : int
        Exact iterations (each one read of the data).
    n_iter_sketch : int
        Iterations on the randomized sketch (no data read), those after the
        maps' supports were fixed (phase "support") not included.
    converged : bool
        Whether the last phase stopped by its rule: the relative loss change
        fell below ``tol``, or the loss made no new minimum for
        :data:`STALL_ITERATIONS` iterations (the constraints make it cycle;
        the lowest iterate is returned and the iterations after it are not
        counted).
    n_passes : int
        Reads of the data, all phases included.
    phases : list of str
        The phase of every entry of ``loss``: "sketch", "support" (after the
        maps' supports were fixed, ``map_support``), "exact" or "separate"
        (the loss after the component separation).
    best_init : int
        Which of the ``n_init`` starts was kept (0 = ``init``).
    sketch_converged : bool
        The sketch phase stopped by its rule, as ``converged`` (``sketch=True`` only); with a
        capped exact phase the result is then a refined sketch fit.
    confined : ndarray of bool, shape (k,)
        The maps confined to their support (``map_support``).
    supports : ndarray of float64, shape (n_rows, k), or None
        1 on the support of every confined map and everywhere for the free
        ones, 0 elsewhere (None when no map is confined).
    """

    W: np.ndarray
    Ht: np.ndarray
    loss: np.ndarray
    n_iter: int
    n_iter_sketch: int
    converged: bool
    n_passes: int = 0
    phases: list = field(default_factory=list)
    best_init: int = 0
    sketch_converged: bool = False
    confined: np.ndarray = None
    supports: np.ndarray = None


def _update(solver, A, R, G, skip, n_inner, inner_tol):
    """Solve (approximately) the non-negative sub-problem of ``A``, in place."""
    if solver == "hals":
        hals_rows(A, R, G, skip, n_inner, inner_tol)
    elif solver == "mu":
        # Several multiplicative sweeps per data read: R and G are fixed
        # within an update and a sweep costs a small fraction of a read
        # (measured: 4x less wall time to a lower loss on the benchmark).
        # The denominator ``A G`` has the units of ``R``: floored relative to it.
        eps = max(_EPS * float(np.max(R, initial=0.0)), _TINY)
        for _ in range(max(1, n_inner // 2)):
            mu_rows(A, R, G, skip, eps)
    else:  # "als": unconstrained least squares, then clipped (the paper's ALS)
        reg = max(_EPS * np.trace(G) / G.shape[0], _TINY)  # relative: scale-equivariant
        sol = np.linalg.solve(
            G + reg * np.eye(G.shape[0]), np.asarray(R, np.float64).T
        ).T
        np.maximum(sol, 0.0, out=sol)
        if skip.shape[0] == A.shape[0]:
            A[~skip] = sol[~skip]
        else:
            A[:] = sol


def _physical(constraint, scale):
    """Wrap a constraint so that it acts on factors in data units."""
    if constraint is None or np.all((scale == 0) | (scale == 1)):
        return constraint
    safe = np.where(scale > 0, scale, 1.0)[:, None]
    scale = np.asarray(scale, dtype=np.float64)[:, None]

    def wrapped(A):
        # Rows of scale 0 (masked, or columns without counts under the Poisson
        # weighting) come back as 0: multiplied by the fallback 1 they would mix
        # data units into the effective ones (not scale-equivariant).
        return constraint(A / safe) * scale

    return wrapped


def _balance(W, Ht):
    """Rescale each component so that its map and pattern have equal norms.

    ``W Ht^T`` is unchanged; this only removes NMF's scaling freedom, which
    otherwise lets the factors drift towards over/underflow. Returns the
    factors ``d`` by which the maps were multiplied.
    """
    nw = np.sqrt(np.einsum("ij,ij->j", W, W))
    nh = np.sqrt(np.einsum("ij,ij->j", Ht, Ht))
    ok = (nw > 0) & (nh > 0)
    d = np.ones_like(nw)
    d[ok] = np.sqrt(nh[ok] / nw[ok])
    W *= d
    Ht /= d
    return d


def _loss(sq_norm, XtW, WtW, Ht, n_valid):
    """Mean squared error ``||X - W Ht^T||^2 / n`` from the accumulated sums."""
    value = sq_norm - 2.0 * np.vdot(Ht, XtW) + np.vdot(WtW, Ht.T @ Ht)
    return max(value, 0.0) / n_valid


def _projected_update(solver, A, R, G, skip, project, n_inner, inner_tol, masks=None):
    """Update ``A`` (in place) on the set allowed by a column constraint.

    The constraint couples all rows of a column (a map is filtered over the
    whole scan, a pattern closed over the whole detector), so the update
    needs the full ``R``. For HALS each column's sub-problem
    ``min ||R_j - A G_j||`` is isotropic in ``a_j``: its constrained solution
    is the projection of the unconstrained one, so every column step is
    followed by ``project`` and the sweeps descend on the constrained
    problem. MU and ALS update all columns, then project. ``masks`` (0/1,
    shaped like ``A``, or None): each column is multiplied by its mask after
    the projection (the supports of :class:`~hyperspy_cnmf.constraints.MapSupport`;
    zeroing entries is a projection too).
    """
    has_skip = skip.shape[0] == A.shape[0] and skip.any()
    if solver != "hals":
        _update(solver, A, R, G, skip, n_inner, inner_tol)  # leaves A >= 0
        A[:] = project(A)
        if masks is not None:
            A *= masks
        if has_skip:
            A[skip] = 0.0
        return
    # Columns as contiguous rows: every column step reads and writes whole
    # columns, which in the (n, k) C layout would be strided passes over A.
    At = np.ascontiguousarray(A.T)
    Rt = np.ascontiguousarray(np.asarray(R, dtype=np.float64).T)
    Mt = None if masks is None else np.ascontiguousarray(masks.T)
    k = At.shape[0]
    first = None
    for sweep in range(max(1, n_inner)):
        change = 0.0
        for j in range(k):
            if G[j, j] <= 0:
                continue
            step = Rt[j] - G[:, j] @ At
            step /= G[j, j]
            step += At[j]
            np.maximum(step, 0.0, out=step)
            new = project(step[:, None])[:, 0]
            if Mt is not None:
                new *= Mt[j]
            if has_skip:
                new[skip] = 0.0
            diff = new - At[j]
            change += float(diff @ diff)
            At[j] = new
        if first is None:
            first = change
        elif change <= inner_tol * first:
            break
    A[:] = At.T


def _masks_and_norm(op):
    """Valid rows, skipped rows and columns, the number of valid entries and ``||Xe||^2``."""
    valid_rows = op.row_scale != 0
    skip_cols = op.col_scale == 0
    n_valid = max(1, int(valid_rows.sum()) * int((~skip_cols).sum()))
    return valid_rows, ~valid_rows, skip_cols, n_valid, op.stats()["sq_norm"]


def _record(losses, loss, W, Ht, phase, it):
    """Append the iteration's loss; a non-finite one raises with the reason."""
    if not np.isfinite(loss):
        _raise_non_finite(W, Ht, phase, it)
    losses.append(loss)


def _settled(losses, tol):
    """The relative loss change of the last iteration is within ``tol`` (no absolute floor)."""
    return len(losses) > 1 and abs(losses[-2] - losses[-1]) <= tol * losses[-2]


class _Lowest:
    """The lowest-loss iterate of a phase, and whether the loss has stalled.

    The constraints are applied inside the updates (after every column step
    of the patterns) and are not projections onto a convex set, so an
    iteration does not always lower the loss: on some fits the loss cycles
    and never settles within ``tol``. A phase whose loss has made no new
    minimum (below ``(1 - tol)`` times the lowest so far) for
    :data:`STALL_ITERATIONS` iterations stops there and returns to its
    lowest iterate (:meth:`restore`).
    """

    def __init__(self, tol):
        self.tol = tol
        self.loss = np.inf
        self.mark = np.inf  # the loss at the last new minimum beyond tol
        self.since = 0
        self.kept = None

    def stalled(self, losses, W, Ht, XtW):
        """Record the iterate just evaluated; True once the loss has stalled.

        Never with ``tol == 0``: the phase then runs its ``max_iter``
        iterations. A phase stopped by its cap (the support phase's fixed
        refinement, or ``max_iter``) ends on its last iterate, as before.
        """
        loss = losses[-1]
        if self.tol > 0 and loss < self.loss:  # (never restored with tol == 0)
            self.loss = loss
            self.kept = (
                len(losses),
                W.copy(),
                Ht.copy(),
                None if XtW is None else XtW.copy(),
            )
        if loss < (1.0 - self.tol) * self.mark:
            self.mark, self.since = loss, 0
        else:
            self.since += 1
        return self.tol > 0 and self.since >= STALL_ITERATIONS

    def restore(self, losses, W, Ht):
        """Put the lowest iterate back (in place); its ``XtW``. The history is cut there."""
        n, W0, Ht0, XtW = self.kept
        W[:] = W0
        Ht[:] = Ht0
        del losses[n:]
        return XtW


def _iterate(
    op,
    W,
    Ht,
    *,
    solver,
    max_iter,
    tol,
    map_c,
    diff_c,
    n_inner,
    inner_tol,
    callback,
    phase,
    sketch_op=None,
    masks=None,
):
    """Alternate map and pattern updates until the loss settles.

    Without a map constraint one iteration is one read of the data
    (``fused_pass``). With it the maps are updated on the full ``Xe @ Ht``
    and projected column by column, so they cannot be updated block by
    block inside the read. Given a sketch of the data (``sketch_op``), one
    read (``right_left_t``, which every operator has) still serves one iteration
    (:func:`_iterate_one_read`); otherwise the maps' product and
    ``Xe.T @ W`` take a read each. Every iterate satisfies the constraint,
    so the loss reported is that of constrained factors.

    ``masks``: the maps' supports (:func:`_projected_update`), with a map
    constraint only.

    A phase whose loss cycles stops when it has made no new minimum for
    :data:`STALL_ITERATIONS` iterations and returns to its lowest iterate
    (:class:`_Lowest`; not in the one-read iteration, which the default
    caps at :data:`EXACT_REFINEMENT`).

    Returns the losses (one per iterate kept), whether ``tol`` was reached
    or the loss stalled, and ``op.left_t(W)`` for the final factors (None
    without iterations).
    """
    if map_c is not None and sketch_op is not None:
        return _iterate_one_read(
            op,
            W,
            Ht,
            sketch_op,
            solver=solver,
            max_iter=max_iter,
            tol=tol,
            map_c=map_c,
            diff_c=diff_c,
            n_inner=n_inner,
            inner_tol=inner_tol,
            callback=callback,
            phase=phase,
            masks=masks,
        )
    valid_rows, skip_rows, skip_cols, n_valid, sq_norm = _masks_and_norm(op)
    losses = []
    converged = False
    XtW = None
    lowest = _Lowest(tol)
    for it in range(max_iter):
        G = Ht.T @ Ht
        if map_c is None:
            XtW = op.fused_pass(
                W,
                Ht,
                lambda A, R, skip: _update(solver, A, R, G, skip, n_inner, inner_tol),
            )
        else:
            _projected_update(
                solver,
                W,
                op.right(Ht),
                G,
                skip_rows,
                map_c,
                n_inner,
                inner_tol,
                masks,
            )
            XtW = op.left_t(W)
        Wv = W[valid_rows]
        WtW = Wv.T @ Wv
        _pattern_update(op, solver, Ht, XtW, WtW, skip_cols, diff_c, n_inner, inner_tol)
        _record(losses, _loss(sq_norm, XtW, WtW, Ht, n_valid), W, Ht, phase, it)
        XtW *= _balance(W, Ht)  # Xe.T @ W of the balanced maps
        if callback is not None:
            callback(phase, it, losses[-1])
        if _settled(losses, tol):
            converged = True
            break
        if lowest.stalled(losses, W, Ht, XtW):
            XtW = lowest.restore(losses, W, Ht)
            converged = True
            break
    return losses, converged, XtW


def _update_sums(op, XtW):
    """``Xe.T @ W`` as the patterns' update takes it.

    A sum over the data's positions is rounded entry by entry
    (:func:`~hyperspy_cnmf.nmf._operators.round_entries`), so that no split of
    the data (threads, chunks) shows in the fit; the loss is evaluated from
    the unrounded sum, whose precision it needs near an exact fit. The
    sketch's products are no such sums and stay as they are.
    """
    return XtW if isinstance(op, SketchOperator) else round_entries(XtW)


def _pattern_update(op, solver, Ht, XtW, WtW, skip_cols, diff_c, n_inner, inner_tol):
    """The patterns' update (projected by ``diff_c`` when given), in place.

    ``XtW`` is ``op``'s ``Xe.T @ W``, taken as :func:`_update_sums` gives it.
    """
    XtW = _update_sums(op, XtW)
    if diff_c is None:
        _update(solver, Ht, XtW, WtW, skip_cols, n_inner, inner_tol)
    else:
        _projected_update(solver, Ht, XtW, WtW, skip_cols, diff_c, n_inner, inner_tol)


def _iterate_one_read(
    op,
    W,
    Ht,
    sketch_op,
    *,
    solver,
    max_iter,
    tol,
    map_c,
    diff_c,
    n_inner,
    inner_tol,
    callback,
    phase,
    masks=None,
):
    """:func:`_iterate` with a map constraint, one read of the data per iteration.

    Iteration ``t`` reads ``Xe @ Ht_t`` and ``Xe.T @ W_t`` together
    (``op.right_left_t``). The patterns are updated exactly from the second
    (``Ht_{t+1}``, the loss of ``(W_t, Ht_{t+1})`` reported exactly), then
    the maps from ``Xe @ Ht_{t+1} = Xe @ Ht_t + Xe @ (Ht_{t+1} - Ht_t)``, the
    small change taken from the sketch (``sketch_op``: ``Q Q^T Xe``). Only
    that change's part outside the sketch's range is approximated, and it
    vanishes as the iterations settle, so a fixed point is one of the exact
    problem; the result is the last exactly evaluated pair
    ``(W_t, Ht_{t+1})``, whose ``Xe.T @ W_t`` is returned. The two-read
    iteration alternates the same updates with ``Xe @ Ht_{t+1}`` read.
    """
    valid_rows, skip_rows, skip_cols, n_valid, sq_norm = _masks_and_norm(op)
    losses = []
    converged = False
    XtW = None
    for it in range(max_iter):
        R, XtW = op.right_left_t(Ht, W)
        Wv = W[valid_rows]
        WtW = Wv.T @ Wv
        Ht_read = Ht.copy()
        _pattern_update(op, solver, Ht, XtW, WtW, skip_cols, diff_c, n_inner, inner_tol)
        _record(losses, _loss(sq_norm, XtW, WtW, Ht, n_valid), W, Ht, phase, it)
        R += sketch_op.right(Ht - Ht_read)  # ~ Xe @ Ht_{t+1}
        d = _balance(W, Ht)
        XtW *= d  # Xe.T @ W of the balanced maps
        R /= d  # Xe @ Ht of the balanced patterns
        if callback is not None:
            callback(phase, it, losses[-1])
        if _settled(losses, tol):
            converged = True
            break
        if it == max_iter - 1:
            break  # the maps' update would need another read to evaluate
        _projected_update(
            solver, W, R, Ht.T @ Ht, skip_rows, map_c, n_inner, inner_tol, masks
        )
    return losses, converged, XtW


class NonFiniteError(FloatingPointError):
    """The fit produced NaN or infinite factors (the data or the start overflowed)."""


def _raise_non_finite(W, Ht, phase, it):
    """Stop the fit with the reason instead of returning NaN/inf factors."""
    bad = [
        name
        for name, A in (("maps", W), ("patterns", Ht))
        if not np.all(np.isfinite(A))
    ]
    where = " and ".join(bad) if bad else "the loss (the products of the factors)"
    big = max(
        float(np.max(np.abs(A), initial=0.0)) if np.all(np.isfinite(A)) else np.inf
        for A in (W, Ht)
    )
    raise NonFiniteError(
        f"constrained NMF diverged: {where} became NaN or infinite in {phase} iteration {it + 1} "
        f"(largest factor entry {big:.3g}). The factors over- or underflowed float64: the data or "
        "the custom init are too large or too small in absolute value; rescale them by a constant "
        "(the fit is scale-equivariant) or use another solver"
    )


def _safe_share(hi, hj, a, max_clip):
    """Largest ``x <= a`` such that ``hi - x hj`` loses at most ``max_clip`` to clipping.

    The loss is ``sum(max(x hj - hi, 0)) / (x sum(hj))``: the part of the
    moved intensity that would be added to the model without being taken
    from ``hi``. It does not decrease with ``x``, so bisection finds the
    bound.
    """
    total = hj.sum()
    if total <= 0 or a <= 0:
        return 0.0

    def clipped(x):
        return np.maximum(x * hj - hi, 0.0).sum() / (x * total)

    if clipped(a) <= max_clip:
        return a
    lo, up = 0.0, a
    for _ in range(30):
        mid = 0.5 * (lo + up)
        if clipped(mid) <= max_clip:
            lo = mid
        else:
            up = mid
    return lo


def _separate(
    W, Ht, col_scale, support=0.1, max_clip=0.1, max_moves=None, supports=None
):
    """Move shared pattern content to the component that owns it (in place).

    NMF is not unique: for components i, j, ``(W_j + a W_i, H_i - a H_j)``
    fits the data exactly as well as ``(W_j, H_i)`` while ``H_i >= a H_j``.
    Solvers stop anywhere in that family, typically with a grain's pattern
    still holding a share of the matrix pattern (direct beam, halos). This
    picks the member in which each pattern holds as little of another as
    non-negativity allows. The candidate ``a`` is the smallest ratio
    ``H_i / H_j`` over the pixels where ``H_j`` is strong
    (``>= support * max H_j``), so that counting noise in weak pixels does
    not decide it; it is then lowered until at most ``max_clip`` of the
    moved intensity falls on pixels where ``H_i`` has less than ``a H_j``
    (clipped, it would be added to the model: on the sparse NIST scan an
    unchecked move inflated the model's total counts by 50 %, with
    ``max_clip=0.1`` they stay within 4 %, while 0.02 was measured to stop
    the separation on the simulated data). Maps only grow, so the map
    constraint (a linear filter) still holds.

    A move adds ``a W_i`` to ``W_j``; it is not made when ``W_i`` is present
    (``> 0`` and ``>= support * max``, on the maps as they stand after the
    moves so far, in the fit's weighted units) on more positions outside
    ``W_j``'s than ``W_j`` is present on: the matrix's map added to a
    grain's gives the grain a floor wherever the matrix is, and the grain's
    pattern taken from the matrix's carves its Bragg spots out of the
    matrix's halo, a dip the data do not have (issue 10, item 9). On the
    embedded default at k = 7 (``benchmarks/quality_valleys.py``,
    random_state 0-2) the grains' components then carried 0.19 of the
    model's counts on the glass far from every grain (0.05 with the rule)
    and the matrix's halo ring dipped 0.288 of its maximum along the azimuth
    (0.172; truth 0.127, truth + noise 0.15).

    With ``supports`` (``(n, k)`` 0/1, :attr:`NMFResult.supports`), no move
    adds a map that is nonzero where the receiving map's support is 0: a
    confined map stays confined (the 2-phase multislice case at k = 10,
    random_state 0: ARI 0.912 -> 0.905; no other fit of the sweep at
    k = true, 2x and 30 changed).

    Returns the ``(k, k)`` matrix ``M`` with ``W_after = W_before @ M`` (the
    moves are column operations on ``W``), so that ``Xe.T @ W`` of the
    separated maps follows from the one of the fit without a data read.
    """
    k = W.shape[1]
    M = np.eye(k)
    if max_moves is None:
        max_moves = 4 * k * k
    wsum = W.sum(axis=0)
    # "Strong" is judged on the patterns in data units (the effective ones
    # carry the Poisson weights, which flatten the direct beam).
    unit = np.where(col_scale > 0, col_scale, np.inf)[:, None]
    Hd = Ht / unit
    strong = Hd >= support * Hd.max(axis=0, keepdims=True)
    exhausted = np.eye(k, dtype=bool)
    # no move that spreads a map over more positions where the receiving
    # component is absent than it covers (kept up to date as maps grow)
    present = _presence(W, support)
    outside = _outside(W, supports)
    blocked = _spreads(present) | outside
    floor = 1e-3 * float((wsum * Ht.sum(axis=0)).sum())
    for _ in range(max_moves):
        best, gain = None, 0.0
        for j in range(k):
            mask = strong[:, j]
            if not mask.any():
                continue
            ratio = Ht[mask] / Ht[mask, j : j + 1]
            a = ratio.min(axis=0)
            a[exhausted[:, j] | blocked[:, j]] = 0.0
            moved = a * Ht[:, j].sum() * wsum
            i = int(np.argmax(moved))
            if moved[i] > gain:
                best, gain = (i, j, a[i]), moved[i]
        if best is None or gain <= floor:
            break
        i, j, a = best
        a = _safe_share(Ht[:, i], Ht[:, j], a, max_clip)
        if a * Ht[:, j].sum() * wsum[i] <= floor:
            exhausted[i, j] = True
            continue
        Ht[:, i] = np.maximum(Ht[:, i] - a * Ht[:, j], 0.0)
        W[:, j] += a * W[:, i]
        M[:, j] += a * M[:, i]
        wsum = W.sum(axis=0)
        Hd[:, i] = Ht[:, i] / unit[:, 0]
        strong[:, i] = Hd[:, i] >= support * Hd[:, i].max()
        present[:, j] = _presence(W[:, j : j + 1], support)[:, 0]
        _spreads(present, blocked, j)
        if supports is not None:  # only map j grew: its row
            outside[j] = _outside(W, supports, j)
            blocked |= outside
    return M


def _outside(W, supports, i=None):
    """``[i, j]``: map ``i`` is nonzero where map ``j``'s support is 0 (bool, (k, k)).

    With ``i``, that row only (bool, (k,)).
    """
    k = W.shape[1]
    if supports is None:
        return np.zeros((k, k), dtype=bool)
    rows = W if i is None else W[:, i : i + 1]
    out = (rows > 0).astype(np.float64).T @ (np.asarray(supports) == 0) > 0
    if i is None:
        np.fill_diagonal(out, False)
        return out
    out[0, i] = False
    return out[0]


def _presence(W, support):
    """Where each map is present: ``> 0`` and ``>= support`` of its maximum (bool, like ``W``)."""
    return (W > 0) & (W >= support * W.max(axis=0, keepdims=True))


def _spreads(present, out=None, j=None):
    """``[i, j]``: adding map ``i`` to map ``j`` would cover more positions where
    ``j`` is absent than ``j`` is present on (bool, (k, k)).

    With ``out`` and ``j``, updates the row and column of ``j`` in ``out``
    (after map ``j`` changed) instead.
    """
    p = present.astype(np.float64)
    count = p.sum(axis=0)
    if out is None:
        return p.T @ (1.0 - p) > count[None, :]
    out[:, j] = p.T @ (1.0 - p[:, j]) > count[j]
    out[j, :] = (1.0 - p).T @ p[:, j] > count
    return out


def _start(W0, Ht0, op, map_c, diff_c):
    """Copies of the initial factors, masked and projected on the constraints."""
    W, Ht = W0.copy(), Ht0.copy()
    Ht[op.col_scale == 0] = 0.0
    W[op.row_scale == 0] = 0.0
    if map_c is not None:
        W[:] = map_c(W)
    if diff_c is not None:
        Ht[:] = diff_c(Ht)
    # The projections may fill masked entries; they take no part in the fit.
    Ht[op.col_scale == 0] = 0.0
    W[op.row_scale == 0] = 0.0
    return W, Ht


def _data_mean(op):
    """Mean of the unmasked effective data (:func:`round_sums`: the same for any split of the data)."""
    n_valid = max(1, int((op.row_scale != 0).sum()) * int((op.col_scale != 0).sum()))
    return float(round_sums(np.array(op.stats()["total"] / n_valid)))


def _initial_factors(op, k, init, rng, n_power_iter, oversample, mean):
    if isinstance(init, tuple):
        W0, Ht0 = (np.array(a, dtype=np.float64) for a in init)
        if W0.shape != (op.shape[0], k) or Ht0.shape != (op.shape[1], k):
            raise ValueError(
                f"custom init must be (maps, patterns) of shapes {(op.shape[0], k)} and "
                f"{(op.shape[1], k)}, got {W0.shape} and {Ht0.shape}"
            )
        if not (np.all(np.isfinite(W0)) and np.all(np.isfinite(Ht0))):
            raise ValueError("custom init contains NaN or infinite values")
        if W0.min() < 0 or Ht0.min() < 0:
            raise ValueError("custom init must be non-negative")
        dead = np.flatnonzero(
            ~(
                np.any(W0[op.row_scale != 0] > 0, axis=0)
                & np.any(Ht0[op.col_scale != 0] > 0, axis=0)
            )
        )
        if dead.size:
            raise ValueError(
                f"custom init: component(s) {dead.tolist()} have an all-zero map or pattern "
                "(on the unmasked entries); a component that starts at zero stays zero"
            )
        return W0, Ht0, None
    if init == "random":
        W0, Ht0 = random_init(op.shape[0], op.shape[1], k, mean, rng)
        return W0, Ht0, None
    Q, Bt = randomized_range(op, k + oversample, n_power_iter=n_power_iter, rng=rng)
    Ub, S, Vt = np.linalg.svd(Bt.T, full_matrices=False)
    U = Q @ Ub
    if init == "spa":
        W0, Ht0, _ = spa_from_svd(U, S, Vt, k, valid_rows=op.row_scale != 0)
        # Multiplicative updates cannot move exact zeros: lift them slightly.
        for A in (W0, Ht0):
            A[A == 0] = 1e-2 * (A.mean() if A.max() > 0 else 1.0)
        return W0, Ht0, (Q, Bt)
    fill = "average" if init == "nndsvda" else None
    W0, Ht0 = nndsvd_from_svd(U, S, Vt, k, mean, fill=fill)
    return W0, Ht0, (Q, Bt)


def _check_args(op, k, solver, init, n_init, max_iter, max_exact_iter):
    """Checked ``k``, unmasked row and column counts, ``n_init`` and exact-iteration cap."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if not isinstance(init, tuple) and init not in INITS:
        raise ValueError(
            f"unknown init {init!r}; choose one of {INITS} or a (W, H) tuple"
        )
    k = int(k)
    n_rows = int((op.row_scale != 0).sum())
    n_cols = int((op.col_scale != 0).sum())
    if n_rows == 0 or n_cols == 0:
        raise ValueError(
            "all data are masked: nothing to factorize (rows or columns of zero scale count as masked; "
            "with the Poisson weighting, rows and columns without counts)"
        )
    if k < 1 or k > min(n_rows, n_cols):
        raise ValueError(
            f"the number of components ({k}) must be between 1 and min(unmasked positions, "
            f"unmasked pixels) = {min(n_rows, n_cols)}"
        )
    n_init = int(n_init)
    if n_init < 1:
        raise ValueError(f"n_init must be a positive integer, got {n_init}")
    if max_exact_iter is None:
        max_exact_iter = max_iter
    # ``max_iter`` caps every phase, in memory and out of core alike: with
    # ``max_iter=0`` the result is the (projected, separated) start.
    max_exact_iter = min(int(max_exact_iter), int(max_iter))
    return k, n_rows, n_cols, n_init, max_exact_iter


def _check_data(op):
    """Refuse data whose (weighted) sum of squares is zero or overflows."""
    sq_norm = op.stats()["sq_norm"]
    if sq_norm == 0:
        raise ValueError(
            "the data are all zero (on the unmasked entries): there is nothing to factorize"
        )
    if not np.isfinite(sq_norm):
        raise ValueError(
            "the sum of squares of the (weighted) data overflows float64 "
            f"({sq_norm}); divide the data by a constant (the fit is scale-equivariant)"
        )


def _fit_phases(
    op,
    k,
    init,
    rng,
    iterate,
    *,
    sketch,
    sketch_oversample,
    n_power_iter,
    n_init,
    max_iter,
    max_exact_iter,
    map_c,
    diff_c,
    map_support=None,
):
    """Every start iterated (on the sketch if ``sketch``), the best one refined on the data.

    With ``map_support`` (and a map constraint), the best start's maps fix
    the supports (:class:`~hyperspy_cnmf.constraints.MapSupport`, on the
    maps in data units, over the unmasked positions), up to
    :data:`SUPPORT_ITERATIONS` iterations (at most the first phase's cap)
    follow on the same operator (phase "support": a fixed refinement, like
    the capped exact phase; ``sketch_converged`` stays the sketch phase's)
    and the exact phase keeps them. Without a sketch the support phase reads
    the data twice per iteration and its convergence is the result's.

    Returns the :class:`NMFResult` (``loss`` still a list, ``n_passes`` not
    set) and ``Xe.T @ W`` of its factors (None when no exact iteration ran).
    """
    mean = _data_mean(op)
    W0, Ht0, sketch_basis = _initial_factors(
        op, k, init, rng, n_power_iter, sketch_oversample, mean
    )
    if sketch and sketch_basis is None:
        sketch_basis = randomized_range(op, k + sketch_oversample, n_power_iter, rng)
    first_op = SketchOperator(*sketch_basis, op) if sketch else op
    first_phase = "sketch" if sketch else "exact"
    first_cap = max_iter if sketch else max_exact_iter
    best = None
    for start in range(n_init):
        if start > 0:
            W0, Ht0 = random_init(op.shape[0], op.shape[1], k, mean, rng)
        W, Ht = _start(W0, Ht0, op, map_c, diff_c)
        run_losses, run_conv, run_xtw = iterate(
            first_op, W, Ht, max_iter=first_cap, phase=first_phase
        )
        if best is None or run_losses[-1] < best[2][-1]:
            best = (W, Ht, run_losses, run_conv, start, run_xtw)
    W, Ht, first_losses, converged, best_start, XtW = best
    masks = None
    confined = np.zeros(k, dtype=bool)
    support_losses = []
    support_cap = min(SUPPORT_ITERATIONS, first_cap)
    if map_support is not None and map_c is not None and support_cap > 0:
        valid = op.row_scale > 0
        scale = np.where(valid, op.row_scale, np.inf)[:, None]
        supports = map_support.masks(W / scale, valid=valid)
        confined = ~np.all(supports > 0, axis=0)
        if confined.any():
            masks = supports
            W *= masks
            support_losses, support_conv, XtW = iterate(
                first_op,
                W,
                Ht,
                max_iter=support_cap,
                phase="support",
                masks=masks,
            )
            if not sketch:  # the fit returned is the support phase's
                converged = support_conv
    n_first = len(first_losses)
    result = NMFResult(
        W=W,
        Ht=Ht,
        loss=list(first_losses) + list(support_losses),
        n_iter=0 if sketch else n_first,
        n_iter_sketch=n_first if sketch else 0,
        converged=converged,
        phases=[first_phase] * n_first + ["support"] * len(support_losses),
        best_init=best_start,
        sketch_converged=bool(sketch and converged),
        confined=confined,
        supports=masks,
    )
    if sketch:  # XtW holds products with the sketch, not the data: replaced
        ex_losses, result.converged, XtW = iterate(
            op,
            W,
            Ht,
            max_iter=max_exact_iter,
            phase="exact",
            sketch_op=first_op,
            masks=masks,
        )
        result.loss += ex_losses
        result.phases += ["exact"] * len(ex_losses)
        result.n_iter = len(ex_losses)
    return result, XtW


def _separate_stage(op, W, Ht, XtW, diff_c, n_valid, supports=None):
    """Separate the components in place (:func:`_separate`); the loss of the result."""
    # Last, since further iterations drift back into the mixed members
    # of the family (they fit a little more noise). The moves are column
    # operations on the maps, so the loss of the final factors needs no
    # read when the last iteration was exact.
    M = _separate(W, Ht, op.col_scale, supports=supports)
    if diff_c is not None:
        # The subtraction leaves noise-deep holes where the other
        # pattern is strong: close them again.
        Ht[:] = diff_c(Ht)
        Ht[op.col_scale == 0] = 0.0
    XtW = op.left_t(W) if XtW is None else XtW @ M
    Wv = W[op.row_scale != 0]
    return _loss(op.stats()["sq_norm"], XtW, Wv.T @ Wv, Ht, n_valid)


def constrained_nmf(
    op,
    k,
    *,
    solver="hals",
    init="nndsvda",
    max_iter=200,
    tol=1e-5,
    random_state=None,
    map_constraint=None,
    diffraction_constraint=None,
    sketch=False,
    sketch_oversample=SKETCH_OVERSAMPLE,
    n_power_iter=2,
    n_inner=10,
    inner_tol=0.1,
    n_init=1,
    max_exact_iter=None,
    separate=True,
    callback=None,
    map_support=None,
):
    """Non-negative matrix factorization with projection constraints.

    Minimises ``||Xe - W Ht^T||_F^2`` over ``W, Ht >= 0`` by alternating
    updates, applying ``map_constraint`` to ``W`` and
    ``diffraction_constraint`` to ``Ht`` after their updates. With both
    constraints ``None`` this is plain ("primitive") NMF.

    Parameters
    ----------
    op : operator
        The data (see :mod:`hyperspy_cnmf.nmf._operators`).
    k : int
        Number of components.
    solver : {"hals", "mu", "als"}
        ``"hals"``: hierarchical alternating least squares with accelerated
        inner sweeps (the coordinate-descent family of scikit-learn's
        ``solver="cd"``); ``"mu"``: Lee-Seung multiplicative updates;
        ``"als"``: clipped alternating least squares. The last two are the
        paper's "primitive NMF" baselines.
    init : {"nndsvda", "nndsvd", "random"} or tuple of ndarray
        Initial factors, or ``(W0, Ht0)`` with shapes (n_rows, k), (n_cols, k).
    max_iter : int
        Maximum number of exact iterations (each one read of the data).
    tol : float
        Stop when the loss changes by less than ``tol`` (relative) between
        two iterations, or, where the constraints make it cycle, when it has
        made no new minimum (by more than ``tol``, relative) for
        :data:`STALL_ITERATIONS` iterations: the phase then returns to its
        lowest iterate, and the iterations after it are neither counted nor
        kept in ``loss`` (the callback has seen them). ``tol=0`` runs
        ``max_iter`` iterations.
    random_state : int, numpy.random.Generator or None
    map_constraint, diffraction_constraint : callable or None
        ``f(W) -> W'`` and ``f(Ht) -> Ht'`` acting on data-unit factors.
    sketch : bool
        Before the exact iterations, iterate to convergence on a randomized
        low-rank sketch of the data (no data reads), then refine on the exact
        data. Cuts the number of data reads several-fold.
    sketch_oversample : int
        Extra sketch rank beyond ``k``.
    n_power_iter : int
        Power iterations of the randomized range finder (used by the
        ``nndsvd*`` initialisations and by ``sketch``).
    n_inner, inner_tol : int, float
        Maximum inner HALS sweeps per update and their relative stopping
        threshold (``solver="hals"`` only).
    n_init : int
        Number of starts. The first uses ``init``, the others random factors
        (from ``random_state``); each is iterated to convergence and the one
        with the lowest loss is kept. With ``sketch=True`` the starts run on
        the sketch, so extra starts cost CPU time but no data reads. The
        lowest loss is not always the physically right solution (a split
        matrix component can fit more noise than a missed small grain), so
        this is no substitute for Poisson weighting.
    max_exact_iter : int or None
        Cap on the exact iterations after the sketch phase (``None``:
        ``max_iter``). A small cap bounds the number of data reads, e.g. for
        out-of-core data. If the cap is reached before ``tol``, the result is
        flagged as not converged; a :class:`ConvergenceWarning` is raised
        unless the cap is a refinement budget (``sketch=True``, the sketch
        phase stopped by its rule, see ``tol``, and ``max_exact_iter <
        max_iter``).
    separate : bool
        After the iterations, move pattern content shared between components
        to the component that owns it (see :func:`_separate`): NMF's
        solutions are not unique, and this picks the one with the least
        mixed patterns. It needs no data read after exact iterations
        (the loss of the separated factors follows from the last one's
        products), else one.
    callback : callable or None
        ``callback(phase, iteration, loss)`` after every iteration (those a
        stalled phase discards included); it may raise to interrupt the fit.
    map_support : MapSupport or None
        With a map constraint: after the first phase (the sketch), confine
        every compact object's map to its support
        (:class:`~hyperspy_cnmf.constraints.MapSupport`), iterate up to
        :data:`SUPPORT_ITERATIONS` times more on the same operator (no read
        on the sketch) and keep the supports in the exact phase, so that no
        grain's component carries a floor over the matrix. Ignored without a
        map constraint.

    Returns
    -------
    NMFResult
    """
    k, n_rows, n_cols, n_init, max_exact_iter = _check_args(
        op, k, solver, init, n_init, max_iter, max_exact_iter
    )
    _check_data(op)
    rng = np.random.default_rng(random_state)
    passes0 = getattr(op, "n_passes", 0)
    map_c = _physical(map_constraint, op.row_scale)
    diff_c = _physical(diffraction_constraint, op.col_scale)
    iterate = functools.partial(
        _iterate,
        tol=tol,
        solver=solver,
        map_c=map_c,
        diff_c=diff_c,
        n_inner=n_inner,
        inner_tol=inner_tol,
        callback=callback,
    )
    n_valid = max(1, n_rows * n_cols)
    result, XtW = _fit_phases(
        op,
        k,
        init,
        rng,
        iterate,
        sketch=sketch,
        sketch_oversample=sketch_oversample,
        n_power_iter=n_power_iter,
        n_init=n_init,
        max_iter=max_iter,
        max_exact_iter=max_exact_iter,
        map_c=map_c,
        diff_c=diff_c,
        map_support=map_support,
    )
    if separate and k > 1:
        result.loss.append(
            _separate_stage(
                op, result.W, result.Ht, XtW, diff_c, n_valid, result.supports
            )
        )
        result.phases.append("separate")
    refinement_budget = result.sketch_converged and max_exact_iter < max_iter
    if not result.converged and not refinement_budget:
        warnings.warn(
            f"constrained NMF stopped at its iteration cap (max_iter={max_iter}, "
            f"max_exact_iter={max_exact_iter}) before the relative loss change fell below "
            f"tol={tol}; increase the cap or tol",
            ConvergenceWarning,
            stacklevel=2,
        )
    result.loss = np.asarray(result.loss)
    result.n_passes = getattr(op, "n_passes", 0) - passes0
    return result
