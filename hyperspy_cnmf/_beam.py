"""The direct-beam disk of a diffraction pattern (numpy and scipy only).

The one direct-beam finder of the package: the decomposition (default size
and centre of the diffraction constraint, probe size from calibrated
diffraction), the calibration helpers and the rotation-invariant clustering
(centre of the polar transform) all call :func:`locate_direct_beam`.
"""

from collections import namedtuple

import numpy as np
from scipy import ndimage

__all__ = ["DirectBeam", "locate_direct_beam"]

#: Position ``(x, y)`` (column, row) and radius of the direct-beam disk, in px.
DirectBeam = namedtuple("DirectBeam", ["x", "y", "radius"])


def locate_direct_beam(pattern, sigma=0.7):
    """Centre and radius (px) of the direct-beam disk of a pattern.

    1. Missing (NaN, infinite) pixels take the value of the nearest valid
       pixel, and the pattern is smoothed with a Gaussian of ``sigma`` px.
    2. The disk is the connected region around the brightest pixel that is
       brighter than halfway between the pattern's median and that maximum
       (a half-maximum contour, so it adapts to any disk size); its radius is
       ``sqrt(area / pi)``.
    3. The centre is the centre of mass of the intensity *above that level*
       inside the region: the weights fall continuously to zero at the
       region's edge, so neither the pixelated edge nor the background biases
       it (sub-0.1 px on Gaussian beams and on flat disks of any size).

    Parameters
    ----------
    pattern : array_like, shape (qy, qx)
        A representative pattern: the mean pattern, or the intensity-weighted
        sum of the NMF factors.
    sigma : float, default 0.7
        Gaussian smoothing (px) before the search; 0 for none.

    Returns
    -------
    DirectBeam
        Named tuple ``(x, y, radius)`` in px; ``x`` is the column, ``y`` the
        row.

    Raises
    ------
    ValueError
        If the pattern is not 2D or has no finite value.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_cnmf._beam import locate_direct_beam
    >>> yy, xx = np.mgrid[:64, :64]
    >>> disk = (np.hypot(xx - 30.0, yy - 40.0) <= 8).astype(float)
    >>> beam = locate_direct_beam(disk + 0.01)
    >>> round(beam.x, 1), round(beam.y, 1), round(beam.radius, 1)
    (30.0, 40.0, 7.9)
    """
    img = np.asarray(pattern, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError("`pattern` must be a 2D array (qy, qx).")
    valid = np.isfinite(img)
    if not valid.any():
        raise ValueError("`pattern` has no finite value.")
    if not valid.all():
        nearest = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
        img = img[tuple(nearest)]
    smooth = ndimage.gaussian_filter(img, sigma) if sigma else img
    peak = np.unravel_index(np.argmax(smooth), smooth.shape)
    level = 0.5 * (np.median(smooth) + smooth[peak])
    labels, _ = ndimage.label(smooth >= level)
    region = labels == labels[peak]
    weights = np.where(region, smooth - level, 0.0)
    if weights.sum() > 0:
        cy, cx = ndimage.center_of_mass(weights)
    else:  # flat pattern: no disk stands out
        cy, cx = peak
    return DirectBeam(float(cx), float(cy), float(np.sqrt(region.sum() / np.pi)))
