"""Numba kernel of the report's residual read (:func:`hyperspy_cnmf.report.model_mse`).

One pass over a block of the data in its own dtype (integer counts stay
integers until each entry is read), with float64 arithmetic and sums and no
temporary larger than one row: the model row ``W[i] @ Ht + offset`` is built
in a row buffer, then the squared residuals of the row are summed.
"""

import numba
import numpy as np

#: Floating-point reordering allowed in the sums (vectorized).
_FAST = {"reassoc", "contract"}


@numba.njit(nogil=True, cache=True, fastmath=_FAST)
def residual_sq_sums(X, W, Ht, offset, valid, pattern, base_valid, out):
    """Add the squared residuals of a block of rows to ``out``, in place.

    ``out[0] += sum_i sum_j (X[i, valid[j]] - (W[i] @ Ht[:, j] + offset[j]))**2``
    (the decomposition model) and
    ``out[1] += sum_i sum_j (X[i, b_j] - t_i * pattern[j])**2`` with
    ``b_j = base_valid[j]`` and ``t_i = sum_j X[i, b_j]`` (the rank-1
    mean-pattern baseline). An empty ``valid`` (or ``base_valid``) leaves
    that sum out.

    Parameters
    ----------
    X : ndarray, shape (n, m), any real dtype
        A block of rows of the data (rows = positions, columns = pixels).
    W : ndarray, shape (n, k), float64
        The loadings of these rows.
    Ht : ndarray, shape (k, len(valid)), float64, C-contiguous
        The factors on the valid pixels.
    offset : ndarray, shape (len(valid),), float64
        Added to the model (the mean of a centred decomposition, or zeros).
    valid : ndarray of int64, shape (mv,)
        Columns of ``X`` of the model's residual.
    pattern : ndarray, shape (len(base_valid),), float64
        The unit-sum mean pattern on ``base_valid``.
    base_valid : ndarray of int64, shape (mb,)
        Columns of ``X`` of the baseline's residual.
    out : ndarray, shape (2,), float64
        The two sums, added to.
    """
    n = X.shape[0]
    k = Ht.shape[0]
    mv = valid.shape[0]
    mb = base_valid.shape[0]
    model = np.empty(mv)
    for i in range(n):
        x = X[i]
        if mv:
            for j in range(mv):
                model[j] = offset[j]
            for c in range(k):
                w = W[i, c]
                h = Ht[c]
                for j in range(mv):
                    model[j] += w * h[j]
            s = 0.0
            for j in range(mv):
                d = x[valid[j]] - model[j]
                s += d * d
            out[0] += s
        if mb:
            t = 0.0
            for j in range(mb):
                t += x[base_valid[j]]
            s = 0.0
            for j in range(mb):
                d = x[base_valid[j]] - t * pattern[j]
                s += d * d
            out[1] += s
