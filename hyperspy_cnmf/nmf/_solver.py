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

import warnings
from dataclasses import dataclass, field

import numpy as np

from hyperspy_cnmf.nmf._init import nndsvd_from_svd, random_init, spa_from_svd
from hyperspy_cnmf.nmf._kernels import hals_rows, mu_rows
from hyperspy_cnmf.nmf._operators import SketchOperator, randomized_range

SOLVERS = ("hals", "mu", "als")
INITS = ("nndsvda", "nndsvd", "spa", "random")
_EPS = 1e-12
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
        (sketch iterations first, then exact ones, then the final refit).
    n_iter : int
        Exact iterations (each one read of the data).
    n_iter_sketch : int
        Iterations on the randomized sketch (no data read).
    converged : bool
        Whether the relative loss change fell below ``tol``.
    n_passes : int
        Reads of the data, all phases included.
    """

    W: np.ndarray
    Ht: np.ndarray
    loss: np.ndarray
    n_iter: int
    n_iter_sketch: int
    converged: bool
    n_passes: int = 0
    phases: list = field(default_factory=list)


def _update(solver, A, R, G, skip, n_inner, inner_tol):
    """Solve (approximately) the non-negative sub-problem of ``A``, in place."""
    if solver == "hals":
        hals_rows(A, R, G, skip, n_inner, inner_tol)
    elif solver == "mu":
        mu_rows(A, R, G, skip, _EPS)
    else:  # "als": unconstrained least squares, then clipped (the paper's ALS)
        reg = _EPS * max(np.trace(G), 1.0) / G.shape[0]
        sol = np.linalg.solve(G + reg * np.eye(G.shape[0]), np.asarray(R, np.float64).T).T
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

    def wrapped(A):
        return constraint(A / safe) * safe

    return wrapped


def _balance(W, Ht):
    """Rescale each component so that its map and pattern have equal norms.

    ``W Ht^T`` is unchanged; this only removes NMF's scaling freedom, which
    otherwise lets the factors drift towards over/underflow.
    """
    nw = np.sqrt(np.einsum("ij,ij->j", W, W))
    nh = np.sqrt(np.einsum("ij,ij->j", Ht, Ht))
    ok = (nw > 0) & (nh > 0)
    d = np.ones_like(nw)
    d[ok] = np.sqrt(nh[ok] / nw[ok])
    W *= d
    Ht /= d


def _loss(sq_norm, XtW, WtW, Ht, n_valid):
    """Mean squared error ``||X - W Ht^T||^2 / n`` from the accumulated sums."""
    value = sq_norm - 2.0 * np.vdot(Ht, XtW) + np.vdot(WtW, Ht.T @ Ht)
    return max(value, 0.0) / n_valid


def _iterate(op, W, Ht, *, solver, max_iter, tol, map_c, diff_c, n_inner, inner_tol, callback, phase):
    valid_rows = op.row_scale != 0
    skip_cols = op.col_scale == 0
    n_valid = max(1, int(valid_rows.sum()) * int((~skip_cols).sum()))
    sq_norm = op.stats()["sq_norm"]
    losses = []
    converged = False
    for it in range(max_iter):
        G = Ht.T @ Ht
        XtW = op.fused_pass(W, Ht, lambda A, R, skip: _update(solver, A, R, G, skip, n_inner, inner_tol))
        Wv = W[valid_rows]
        WtW = Wv.T @ Wv
        _update(solver, Ht, XtW, WtW, skip_cols, n_inner, inner_tol)
        if diff_c is not None:
            Ht[:] = diff_c(Ht)
            Ht[skip_cols] = 0.0
        loss = _loss(sq_norm, XtW, WtW, Ht, n_valid)
        losses.append(loss)
        _balance(W, Ht)
        if map_c is not None:
            W[:] = map_c(W)
        if callback is not None:
            callback(phase, it, loss)
        if it > 0 and abs(losses[-2] - loss) <= tol * max(losses[-2], _EPS):
            converged = True
            break
    return losses, converged


def _initial_factors(op, k, init, rng, n_power_iter, oversample):
    stats = op.stats()
    n_valid = max(1, int((op.row_scale != 0).sum()) * int((op.col_scale != 0).sum()))
    mean = stats["total"] / n_valid
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
    sketch_oversample=10,
    n_power_iter=2,
    n_inner=10,
    inner_tol=0.1,
    callback=None,
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
        two iterations.
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
    callback : callable or None
        ``callback(phase, iteration, loss)`` after every iteration; it may
        raise to interrupt the fit.

    Returns
    -------
    NMFResult
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if not isinstance(init, tuple) and init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {INITS} or a (W, H) tuple")
    k = int(k)
    n_rows = int((op.row_scale != 0).sum())
    n_cols = int((op.col_scale != 0).sum())
    if n_rows == 0 or n_cols == 0:
        raise ValueError("all data are masked: nothing to factorize")
    if k < 1 or k > min(n_rows, n_cols):
        raise ValueError(
            f"the number of components ({k}) must be between 1 and min(unmasked positions, "
            f"unmasked pixels) = {min(n_rows, n_cols)}"
        )
    rng = np.random.default_rng(random_state)
    passes0 = getattr(op, "n_passes", 0)
    W, Ht, sketch_basis = _initial_factors(op, k, init, rng, n_power_iter, sketch_oversample)
    Ht[op.col_scale == 0] = 0.0
    W[op.row_scale == 0] = 0.0
    map_c = _physical(map_constraint, op.row_scale)
    diff_c = _physical(diffraction_constraint, op.col_scale)
    if map_c is not None:
        W[:] = map_c(W)
    if diff_c is not None:
        Ht[:] = diff_c(Ht)

    common = dict(solver=solver, map_c=map_c, diff_c=diff_c, n_inner=n_inner,
                  inner_tol=inner_tol, callback=callback)
    losses = []
    n_sketch = 0
    phases = []
    if sketch:
        if sketch_basis is None:
            sketch_basis = randomized_range(op, k + sketch_oversample, n_power_iter, rng)
        sk = SketchOperator(*sketch_basis, op)
        sk_losses, _ = _iterate(sk, W, Ht, max_iter=max_iter, tol=tol, phase="sketch", **common)
        losses += sk_losses
        n_sketch = len(sk_losses)
        phases += ["sketch"] * n_sketch
    ex_losses, converged = _iterate(op, W, Ht, max_iter=max_iter, tol=tol, phase="exact", **common)
    losses += ex_losses
    phases += ["exact"] * len(ex_losses)
    if map_c is not None:
        # The last map update was followed by the map constraint: refit the
        # patterns once to the constrained maps so that (W, Ht) is consistent.
        valid_rows = op.row_scale != 0
        XtW = op.left_t(W)
        Wv = W[valid_rows]
        WtW = Wv.T @ Wv
        _update(solver, Ht, XtW, WtW, op.col_scale == 0, max(n_inner, 50), inner_tol * 0.1)
        if diff_c is not None:
            Ht[:] = diff_c(Ht)
            Ht[op.col_scale == 0] = 0.0
        n_valid = max(1, n_rows * n_cols)
        losses.append(_loss(op.stats()["sq_norm"], XtW, WtW, Ht, n_valid))
        phases.append("refit")
    if not converged:
        warnings.warn(
            f"constrained NMF stopped at max_iter={max_iter} before the relative loss "
            f"change fell below tol={tol}; increase max_iter or tol",
            ConvergenceWarning,
            stacklevel=2,
        )
    return NMFResult(
        W=W,
        Ht=Ht,
        loss=np.asarray(losses),
        n_iter=len(ex_losses),
        n_iter_sketch=n_sketch,
        converged=converged,
        n_passes=getattr(op, "n_passes", 0) - passes0,
        phases=phases,
    )
