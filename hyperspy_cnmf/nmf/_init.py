"""Initialisations of the factors (numpy only)."""

import numpy as np


def nndsvd_from_svd(U, S, Vt, k, mean, fill="average", rng=None):
    """Non-negative double SVD initialisation (Boutsidis & Gallopoulos 2008).

    Each singular triplet is split into its positive and negative parts and
    the dominant part kept. Entries below ``1e-6 sqrt(S[0])`` are zeroed and,
    with ``fill="average"`` (NNDSVDa, as in scikit-learn), zeros are filled
    with ``sqrt(mean)`` so that multiplicative updates can move them.
    Threshold and fill scale with the data: the factors of ``c X`` are
    ``sqrt(c)`` times those of ``X``.

    Parameters
    ----------
    U : ndarray, shape (n_rows, >= k)
    S : ndarray, shape (>= k,)
    Vt : ndarray, shape (>= k, n_cols)
    k : int
    mean : float
        Mean of the (effective) data.
    fill : {"average", None}
    rng : numpy.random.Generator, unused (kept for a uniform signature)

    Returns
    -------
    W : ndarray, shape (n_rows, k)
    Ht : ndarray, shape (n_cols, k)
    """
    n_rows, n_cols = U.shape[0], Vt.shape[1]
    W = np.zeros((n_rows, k))
    Ht = np.zeros((n_cols, k))
    # The first triplet of non-negative data has a single sign.
    W[:, 0] = np.sqrt(S[0]) * np.abs(U[:, 0])
    Ht[:, 0] = np.sqrt(S[0]) * np.abs(Vt[0])
    for j in range(1, k):
        x, y = U[:, j], Vt[j]
        xp, xn = np.maximum(x, 0), np.maximum(-x, 0)
        yp, yn = np.maximum(y, 0), np.maximum(-y, 0)
        xpn, xnn = np.linalg.norm(xp), np.linalg.norm(xn)
        ypn, ynn = np.linalg.norm(yp), np.linalg.norm(yn)
        mp, mn = xpn * ypn, xnn * ynn
        if mp > mn:
            u, v, sigma = xp / max(xpn, 1e-300), yp / max(ypn, 1e-300), mp
        else:
            u, v, sigma = xn / max(xnn, 1e-300), yn / max(ynn, 1e-300), mn
        lbd = np.sqrt(S[j] * sigma)
        W[:, j] = lbd * u
        Ht[:, j] = lbd * v
    # Relative threshold and fill, so that the data times ``c`` give the same
    # factors times ``sqrt(c)`` (scale equivariance): both scale with the data.
    eps = 1e-6 * np.sqrt(S[0]) if S[0] > 0 else 0.0
    W[W < eps] = 0.0
    Ht[Ht < eps] = 0.0
    if fill == "average":
        # ``sqrt(mean)``: a filled map entry times a filled pattern entry is the
        # data mean, the product scikit-learn's fill aims at; its fill with the
        # mean itself is not equivariant (W and Ht scale as sqrt(data)).
        avg = np.sqrt(max(mean, 0.0))
        W[W == 0] = avg
        Ht[Ht == 0] = avg
    return W, Ht


def random_init(n_rows, n_cols, k, mean, rng):
    """Random non-negative factors scaled like the data (scikit-learn's rule).

    Entries are ``|N(0, 1)| * sqrt(mean / k)`` so that ``W @ Ht.T`` has the
    data's mean on average.
    """
    avg = np.sqrt(max(mean, 0.0) / k)
    W = avg * np.abs(rng.standard_normal((n_rows, k)))
    Ht = avg * np.abs(rng.standard_normal((n_cols, k)))
    return W, Ht


def spa_from_svd(U, S, Vt, k, valid_rows=None):
    """Successive projection algorithm on the denoised rows (Gillis & Vavasis 2014).

    For near-separable data, where some probe positions see one component
    almost alone (a grain centre, a patch of pure matrix), SPA picks the ``k``
    most extreme rows of the rank-``r`` approximation ``U S Vt``: the row of
    largest norm, then repeatedly the row farthest from the span of those
    already picked. Their (clipped) patterns initialise ``Ht``; the maps
    start from the clipped least-squares fit to those patterns. Working on the
    low-rank rows makes the picks robust to counting noise.

    Parameters
    ----------
    U, S, Vt : ndarray
        Truncated SVD of the effective data (rank >= k).
    k : int
    valid_rows : ndarray of bool, optional
        Rows that may be picked (unmasked positions).

    Returns
    -------
    W : ndarray, shape (n_rows, k)
    Ht : ndarray, shape (n_cols, k)
    picked : ndarray of int, shape (k,)
        Indices of the picked rows.
    """
    R = U * S
    if valid_rows is not None:
        R = np.where(valid_rows[:, None], R, 0.0)
    work = R.copy()
    picked = []
    for _ in range(k):
        norms = np.einsum("ij,ij->i", work, work)
        norms[picked] = -1.0
        j = int(np.argmax(norms))
        picked.append(j)
        u = work[j] / max(np.sqrt(norms[j]), 1e-300)
        work -= np.outer(work @ u, u)
    picked = np.asarray(picked)
    Ht = np.maximum((R[picked] @ Vt).T, 0.0)
    # Maps: clipped least squares of the low-rank data on those patterns.
    G = Ht.T @ Ht
    rhs = (R @ Vt) @ Ht
    reg = max(
        1e-12 * np.trace(G), np.finfo(np.float64).tiny
    )  # relative: scale-equivariant
    W = np.maximum(np.linalg.solve(G + reg * np.eye(k), rhs.T).T, 0.0)
    if valid_rows is not None:
        W[~valid_rows] = 0.0
    return W, Ht, picked
