"""Rotation-invariant similarity of diffraction patterns.

The similarity of two patterns is the maximum over an in-plane rotation of
their normalised cross-correlation: both are transformed to polar coordinates
about the direct beam, and the correlation is computed along the azimuth only
(the "uniaxial cross-correlation" of Kimoto et al.), for all cyclic shifts at
once with the FFT. The pseudo-distance used for clustering is
``1 - similarity``.
"""

from dataclasses import dataclass

import numpy as np
from scipy import fft as sp_fft

from hyperspy_cnmf._docstrings import fill_doc

__all__ = [
    "SimilarityResult",
    "prepare_polar",
    "rotational_similarity",
]

_NORMALIZE = ("pearson", "azimuthal", "cosine")


def _scaled_log(x):
    """``log(1 + x / m)`` per image, ``m`` the image's mean positive value.

    The scale makes the transform independent of the (arbitrary) scale of
    each pattern, e.g. of NMF factors normalised to unit sum.
    """
    x = np.clip(x, 0.0, None)
    axes = tuple(range(1, x.ndim))
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.nanmean(x, axis=axes, keepdims=True)
    m = np.where(np.isfinite(m) & (m > 0), m, 1.0)
    return np.log1p(x / m)


def _transform_function(intensity_transform_function):
    """Resolve the intensity transform (callable, 'sqrt', 'log' or None)."""
    f = intensity_transform_function
    if f is None:
        return None
    if callable(f):
        return f
    if f == "sqrt":
        return lambda x: np.sqrt(np.clip(x, 0.0, None))
    if f == "log":
        return _scaled_log
    raise ValueError(
        "`intensity_transform_function` must be a callable, 'sqrt', 'log' or None, "
        f"got {f!r}."
    )


def _radial_weights(radial_weighting, radii, n_r):
    if radial_weighting is None:
        return np.ones(n_r)
    if isinstance(radial_weighting, str):
        if radial_weighting != "r":
            raise ValueError(
                f"`radial_weighting` must be None, 'r' or an array, got {radial_weighting!r}."
            )
        if radii is None:
            raise ValueError("`radii` are needed for radial_weighting='r'.")
        w = np.asarray(radii, dtype=np.float64)
        if w.shape != (n_r,):
            raise ValueError(f"`radii` must have shape ({n_r},), got {w.shape}.")
        # area element r dr dphi; keep the centre sample a small positive weight
        step = np.min(np.diff(w)) if n_r > 1 else 1.0
        return np.maximum(w, 0.25 * step)
    w = np.asarray(radial_weighting, dtype=np.float64)
    if w.shape != (n_r,) or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError(
            f"`radial_weighting` as an array must be finite, >= 0, of shape ({n_r},)."
        )
    return w


def prepare_polar(
    polar,
    radii=None,
    intensity_transform_function=None,
    normalize="pearson",
    radial_weighting="r",
):
    """Turn polar images into unit-norm, weighted vectors for correlation.

    Steps: intensity transform, centring (``normalize``), multiplication by
    ``sqrt(w(r))``, missing (NaN) samples set to 0 (i.e. to the mean: they do
    not contribute), division by the norm. The correlation of two prepared
    images at a cyclic azimuthal shift is then their plain dot product and lies
    in ``[-1, 1]``.

    Parameters
    ----------
    polar : array_like, shape (n, n_r, n_theta)
    radii : array_like, shape (n_r,), optional
        Needed for ``radial_weighting="r"``.
    intensity_transform_function, normalize, radial_weighting
        See :func:`rotational_similarity`.

    Returns
    -------
    prepared : ndarray, shape (n, n_r, n_theta)
    norm_ok : ndarray of bool, shape (n,)
        False for images with no contrast (all missing or constant); their
        prepared image is 0 and their similarity to anything is 0.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import prepare_polar
    >>> p = np.random.default_rng(0).random((2, 4, 16))
    >>> b, ok = prepare_polar(p, radii=np.arange(4.0))
    >>> np.allclose((b**2).sum(axis=(1, 2)), 1.0), ok.tolist()
    (True, [True, True])
    """
    a = np.array(polar, dtype=np.float64, copy=True)
    if a.ndim != 3:
        raise ValueError("`polar` must have shape (n, n_r, n_theta).")
    if normalize not in _NORMALIZE:
        raise ValueError(f"`normalize` must be one of {_NORMALIZE}, got {normalize!r}.")
    n, n_r, n_t = a.shape
    f = _transform_function(intensity_transform_function)
    if f is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            a = np.asarray(f(a), dtype=np.float64)
        if a.shape != (n, n_r, n_t):
            raise ValueError("`intensity_transform_function` must keep the shape.")
    w = _radial_weights(radial_weighting, radii, n_r)
    invalid = ~np.isfinite(a)
    has_missing = bool(invalid.any())
    if has_missing:
        a[invalid] = 0.0
    if normalize == "pearson":
        count = (n_t - invalid.sum(axis=2)) if has_missing else np.full((n, n_r), n_t)
        den = count @ w
        mean = np.einsum("irt,r->i", a, w) / np.where(den > 0, den, 1.0)
        a -= mean[:, None, None]
    elif normalize == "azimuthal":
        count = (n_t - invalid.sum(axis=2)) if has_missing else np.full((n, n_r), n_t)
        a -= (a.sum(axis=2) / np.maximum(count, 1))[:, :, None]
    if has_missing:
        a[invalid] = 0.0
    a *= np.sqrt(w)[None, :, None]
    norm = np.sqrt(np.einsum("irt,irt->i", a, a))
    scale = norm.max() if n else 0.0
    ok = norm > 1e-12 * max(scale, 1e-300)
    a /= np.where(ok, norm, 1.0)[:, None, None]
    a[~ok] = 0.0
    return a, ok


@dataclass
class SimilarityResult:
    """Pairwise rotation-invariant similarity.

    Attributes
    ----------
    similarity : ndarray, shape (n, m)
        Maximum normalised cross-correlation over the rotation, in [-1, 1].
    rotation : ndarray, shape (n, m)
        Degrees, in (-180, 180]: pattern ``j`` transformed by
        :func:`~hyperspy_cnmf.clustering.rotate_patterns` with this angle (and
        ``mirrored[i, j]``) best matches pattern ``i``.
    mirrored : ndarray of bool, shape (n, m)
        Whether the best match uses the mirrored pattern ``j``
        (``phi -> -phi``, applied before the rotation).
    """

    similarity: np.ndarray
    rotation: np.ndarray
    mirrored: np.ndarray

    @property
    def pseudo_distance(self):
        """``1 - similarity``, clipped to [0, 2], zero on the diagonal if square."""
        d = np.clip(1.0 - self.similarity, 0.0, 2.0)
        if d.shape[0] == d.shape[1]:
            np.fill_diagonal(d, 0.0)
        return d


def _peak(corr):
    """Max along the last axis with parabolic sub-sample refinement.

    ``corr`` has shape (a, b, n_theta) (cyclic last axis). Returns
    (value, shift in samples), each of shape (a, b).
    """
    n_t = corr.shape[-1]
    k = np.argmax(corr, axis=-1)[..., None]
    y0 = np.take_along_axis(corr, k, axis=-1)[..., 0].astype(np.float64)
    ym = np.take_along_axis(corr, (k - 1) % n_t, axis=-1)[..., 0].astype(np.float64)
    yp = np.take_along_axis(corr, (k + 1) % n_t, axis=-1)[..., 0].astype(np.float64)
    den = ym - 2.0 * y0 + yp
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = np.where(den < 0, 0.5 * (ym - yp) / den, 0.0)
    delta = np.clip(delta, -0.5, 0.5)
    value = y0 - 0.25 * (ym - yp) * delta
    return np.maximum(value, y0), k[..., 0] + delta


@fill_doc
def rotational_similarity(
    polar,
    polar_other=None,
    radii=None,
    intensity_transform_function=None,
    normalize="pearson",
    radial_weighting="r",
    mirror=False,
    max_block_bytes=2**26,
    workers=1,
):
    """Pairwise similarity of polar patterns, maximised over the rotation.

    For every pair ``(i, j)`` the normalised cross-correlation of the two
    prepared polar images (see :func:`prepare_polar`) is computed for all
    cyclic shifts along the azimuth with the FFT (rotation theorem: a rotation
    is a cyclic shift of the polar image), and its maximum (refined to
    sub-sample precision by a parabola through the peak) is kept with the
    corresponding angle.

    Parameters
    ----------
    polar : array_like, shape (n, n_r, n_theta)
        Polar images (see :func:`~hyperspy_cnmf.clustering.polar_transform`);
        NaN samples are missing and do not contribute.
    polar_other : array_like, shape (m, n_r, n_theta), optional
        Compare ``polar`` with this second stack instead of with itself.
    radii : array_like, shape (n_r,), optional
        Radii of the rings, needed for ``radial_weighting="r"``.
    %(similarity)s
    max_block_bytes : int, default 2**26
        Memory bound of one block of correlation curves (single precision);
        larger problems are processed by blocks of rows.
    workers : int, default 1
        Passed to :mod:`scipy.fft`.

    Returns
    -------
    SimilarityResult
        ``similarity`` (n, m), ``rotation`` (n, m) in degrees and ``mirrored``
        (n, m). Without ``polar_other`` the matrices are exactly symmetric
        (antisymmetric for the rotation of non-mirrored pairs) with a unit
        diagonal and zero rotation on the diagonal.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf.clustering import polar_transform, rotational_similarity
    >>> yy, xx = np.mgrid[:65, :65] - 32.0
    >>> def spots(angle):  # three spots, no rotational symmetry
    ...     a = np.deg2rad(angle + np.array([0.0, 80.0, 200.0]))
    ...     return sum(np.exp(-((xx - 20 * np.cos(t)) ** 2 + (yy - 20 * np.sin(t)) ** 2) / 4)
    ...                for t in a)
    >>> polar, radii, _ = polar_transform(np.stack([spots(0), spots(17)]), centre=(32, 32))
    >>> res = rotational_similarity(polar, radii=radii)
    >>> round(float(res.similarity[0, 1]), 2), round(float(res.rotation[1, 0]), 0)
    (1.0, 17.0)
    """
    prep = dict(
        radii=radii,
        intensity_transform_function=intensity_transform_function,
        normalize=normalize,
        radial_weighting=radial_weighting,
    )
    a, _ = prepare_polar(polar, **prep)
    square = polar_other is None
    if square:
        b = a
    else:
        b, _ = prepare_polar(polar_other, **prep)
        if b.shape[1:] != a.shape[1:]:
            raise ValueError(
                "`polar` and `polar_other` must have the same (n_r, n_theta)."
            )
    n, _, n_t = a.shape
    m = b.shape[0]
    # spectra along the azimuth, single precision: (n_k, n, n_r)
    fa = sp_fft.rfft(a.astype(np.float32), axis=-1, workers=workers)
    fa = np.ascontiguousarray(fa.transpose(2, 0, 1))
    if square:
        fb = fa
    else:
        fb = sp_fft.rfft(b.astype(np.float32), axis=-1, workers=workers)
        fb = np.ascontiguousarray(fb.transpose(2, 0, 1))
    fb_t = np.ascontiguousarray(fb.transpose(0, 2, 1))  # (n_k, n_r, m)
    fb_tc = fb_t.conj()
    sim = np.zeros((n, m))
    rot = np.zeros((n, m))
    mir = np.zeros((n, m), dtype=bool)
    rows = max(1, int(max_block_bytes // max(1, 4 * n_t * m)))
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        # square problems: only the columns j >= i0 (the rest by symmetry)
        j0 = i0 if square else 0
        fi = fa[:, i0:i1, :]
        passes = [(fb_tc[:, :, j0:], False)]  # sum a(phi) b(phi - s) <-> A conj(B)
        if mirror:
            passes.append((fb_t[:, :, j0:], True))  # sum a(phi) b(s - phi) <-> A B
        for fbj, is_mirror in passes:
            spec = np.ascontiguousarray((fi @ fbj).transpose(1, 2, 0))
            corr = sp_fft.irfft(spec, n=n_t, axis=-1, workers=workers)
            val, shift = _peak(corr)
            if is_mirror:
                use = val > sim[i0:i1, j0:] + 1e-5
                sim[i0:i1, j0:] = np.where(use, val, sim[i0:i1, j0:])
                rot[i0:i1, j0:] = np.where(use, shift, rot[i0:i1, j0:])
                mir[i0:i1, j0:] = use
            else:
                sim[i0:i1, j0:] = val
                rot[i0:i1, j0:] = shift
    rot *= 360.0 / n_t
    sim = np.clip(sim, -1.0, 1.0)
    rot = (rot + 180.0) % 360.0 - 180.0
    rot[rot == -180.0] = 180.0
    if square:
        iu = np.triu_indices(n, 1)
        sim[iu[1], iu[0]] = sim[iu]
        mir[iu[1], iu[0]] = mir[iu]
        # reverse transform: R(-a) for rotations, the same R(a) M for mirrors
        rot[iu[1], iu[0]] = np.where(mir[iu], rot[iu], -rot[iu])
        rot[rot == -180.0] = 180.0
        np.fill_diagonal(sim, 1.0)
        np.fill_diagonal(rot, 0.0)
        np.fill_diagonal(mir, False)
    return SimilarityResult(similarity=sim, rotation=rot, mirrored=mir)
