"""The two domain constraints of Kimoto et al. (2025) and their diagnostics.

numpy and :mod:`scipy.fft` (plus the Numba kernels of
:mod:`hyperspy_cnmf.nmf._kernels`); no HyperSpy, dask or py4DSTEM. Both constraints are projections applied inside
the NMF iteration (see :func:`hyperspy_cnmf.nmf.constrained_nmf`); both are
scale-equivariant (``f(a W) = a f(W)``), so they commute with NMF's scaling
freedom.

Map constraint: spatial resolution
----------------------------------
A map ``c_k(x, y)`` is the image of one component recorded with a probe of
finite size. Its Fourier transform cannot carry signal beyond the probe's
transfer limit: for a probe of full width at half maximum ``d`` the transfer
at the spatial frequency ``f_c = 1/d`` is already down to about 3 % (Gaussian
probe: ``exp(-2 pi^2 sigma^2 f_c^2)`` with ``sigma = d / 2.355``), so power
beyond the circle ``|f| = f_c`` is noise. :class:`MapResolutionConstraint`
removes it with a radial low-pass filter applied to every map after every map
update, then clips negatives. Design choices:

* the filter is flat (transfer 1) up to ``(1 - taper) f_c`` and falls to 0 at
  ``f_c`` with a raised cosine (``filter="tukey"``, default): detail at the
  resolution limit is kept, nothing beyond it survives, and the smooth edge
  avoids the ringing of a hard circular mask (``filter="hard"`` is available,
  as is ``filter="gaussian"``, a positive kernel that never creates negatives
  but attenuates inside the circle);
* maps are mirror-extended before filtering, so the scan edges do not create
  the high-frequency cross of a periodic discontinuity. The filter of the
  mirror-extended map is computed exactly, without the extension, in the basis
  of the type-II discrete cosine transform (the DCT-II is the Fourier
  transform of the half-sample mirror extension), with :mod:`scipy.fft`, one
  axis at a time, skipping the frequencies the filter removes; the HALS
  update filters one map after every column step, so the cost of one map
  matters (``benchmarks/bench_dct.py`` compares it with the former matrix
  DCT of this module and with ``scipy.fft.dctn``);
* frequencies are calibrated: the cutoff is given as a length in the
  navigation axes' units and anisotropic scan steps are honoured.

Diffraction constraint: no downward-convex dips
-----------------------------------------------
Plain NMF fits overlapping components by carving holes ("downward-convex
peaks") into one pattern where another pattern has a Bragg disk or a halo.
Real diffraction intensity has peaks, never such holes. The constraint is a
grey-scale morphological *closing* with a disk of radius ``r``:

* a closing never lowers a pixel and leaves peaks of any width untouched, so
  sharp Bragg spots survive exactly;
* it fills every valley narrower than the disk, so it forbids holes of a
  Bragg disk's size: holes carved by another component's Bragg disk have the
  size of that disk, which is the size of the direct-beam disk (same
  convergence angle). The default radius is therefore the measured radius of
  the direct-beam disk, rounded and at least 1 px (:func:`default_dip_radius`;
  on simulated data the matched cosines were 0.90-0.93 with the disk radius
  + 1-2 px and >= 0.97 with the disk radius);
* masked detector pixels (``signal_mask``) take no part;
* ``strength`` in (0, 1] blends ``H + strength * (closing(H) - H)``, a softer
  constraint;
* on counting data the closing also lifts the factors' counting noise (every
  noise dip narrower than the disk is filled): with the direct beam masked,
  the model holds 1.09-1.28 times the data's counts on the fitted pixels of
  the multislice cases (0.02-0.15 counts per pixel and position) and 1.05 on
  the embedded default (``benchmarks/results/quality_valleys.md``, "model /
  data counts"); without the constraint 1.004 and 1.028 on the 2-phase (k =
  5) and descan (k = 10) cases. Filling only what exceeds the ring's noise
  brought it to 1.03-1.07 (subtracting the ring's 75th percentile fill, with
  labels as good: 66 fits, mean ARI 0.897 both; or twice the ring's robust
  noise), but both left more carved valleys (``quality_valleys.py`` with
  scratch patches, session 19); not adopted.

Valleys wider than the disk (e.g. between the direct beam and the first
amorphous halo) are real and kept. For convergent-beam data whose disks
nearly touch, gaps between disks narrower than the disk may be raised: lower
the radius or switch the constraint off.
"""

import numpy as np
from scipy import fft as sp_fft

from hyperspy_cnmf._beam import Beam, check_centre
from hyperspy_cnmf.nmf._kernels import (
    azimuthal_closing_apply,
    azimuthal_closing_stack,
    azimuthal_table,
    grey_closing_stack,
)

#: Full width at half maximum of the diffraction-limited (Airy) probe, in
#: units of lambda / alpha.
AIRY_FWHM = 0.514


def electron_wavelength(beam_energy_kev):
    """Relativistic electron wavelength in nm.

    Parameters
    ----------
    beam_energy_kev : float
        Accelerating voltage in kV.

    Examples
    --------
    >>> round(float(electron_wavelength(200.0)) * 1e3, 3)  # pm
    2.508
    """
    v = float(beam_energy_kev)
    if not np.isfinite(v) or v <= 0:
        raise ValueError(
            f"the beam energy must be positive (keV), got {beam_energy_kev}"
        )
    h, m0, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 2.99792458e8
    v *= 1e3
    return h / np.sqrt(2 * m0 * e * v * (1 + e * v / (2 * m0 * c**2))) * 1e9


def probe_fwhm_from_convergence(convergence_angle_mrad, beam_energy_kev):
    """FWHM (nm) of a diffraction-limited probe: ``0.514 * lambda / alpha``.

    Aberrations and the source size make real probes larger, so this is a
    lower bound; used as a cutoff it errs on the side of keeping detail.
    """
    return (
        AIRY_FWHM
        * electron_wavelength(beam_energy_kev)
        / (convergence_angle_mrad * 1e-3)
    )


#: The orthonormal DCT-II of :mod:`scipy.fft` (its inverse with the same arguments).
_DCT = {"type": 2, "norm": "ortho"}


def default_dip_radius(beam_radius):
    """Default closing half-length (px) for a direct-beam disk of radius ``beam_radius`` (px).

    The disk radius, rounded, at least 1 px: holes up to one Bragg disk wide
    are filled (see the module docstring).

    Examples
    --------
    >>> default_dip_radius(2.4), default_dip_radius(0.3)
    (2.0, 1.0)
    """
    return float(max(1.0, np.round(float(beam_radius))))


class MapResolutionConstraint:
    """Low-pass every map beyond the resolution circle ``|f| = 1/resolution``.

    Parameters
    ----------
    nav_shape : tuple of int
        ``(ny, nx)``: the scan shape; maps are the columns of ``W`` reshaped
        in C order.
    resolution : float
        Probe size (FWHM) in the units of ``scale``; the cutoff frequency is
        ``1 / resolution``.
    scale : tuple of float
        ``(scale_y, scale_x)``: scan step per axis.
    filter : {"tukey", "hard", "gaussian"}
        Filter shape (see the module docstring).
    taper : float
        Width of the raised-cosine edge as a fraction of the cutoff
        (``filter="tukey"``).

    Examples
    --------
    >>> c = MapResolutionConstraint((32, 32), resolution=4.0)
    >>> W = np.random.default_rng(0).random((32 * 32, 2))
    >>> bool(np.all(c(W) >= 0))
    True
    """

    def __init__(
        self, nav_shape, resolution, scale=(1.0, 1.0), filter="tukey", taper=0.25
    ):
        if filter not in ("tukey", "hard", "gaussian"):
            raise ValueError(
                f"unknown map filter {filter!r}: use 'tukey', 'hard' or 'gaussian'"
            )
        resolution = float(resolution)
        if not np.isfinite(resolution) or resolution <= 0:
            raise ValueError(
                f"map_resolution must be a positive length, got {resolution}"
            )
        if not 0 < taper < 1:
            raise ValueError("taper must be in (0, 1)")
        self.nav_shape = tuple(int(n) for n in nav_shape)
        self.scale = (float(scale[0]), float(scale[1]))
        self.resolution = resolution
        self.cutoff = 1.0 / resolution
        self.filter = filter
        self.taper = taper
        # DCT-II frequency index k of an axis of n samples is the frequency
        # k / (2 n) cycles per sample of the mirror-extended map.
        ny, nx = self.nav_shape
        fy = np.arange(ny)[:, None] / (2 * ny * self.scale[0])
        fx = np.arange(nx)[None, :] / (2 * nx * self.scale[1])
        self.transfer = self.transfer_function(np.sqrt(fy**2 + fx**2))
        # Keep only the frequencies the filter passes (the others are zeroed).
        pass_y = np.nonzero(np.any(self.transfer > 0, axis=1))[0]
        pass_x = np.nonzero(np.any(self.transfer > 0, axis=0))[0]
        self._ky = int(pass_y[-1]) + 1 if pass_y.size else 1
        self._kx = int(pass_x[-1]) + 1 if pass_x.size else 1
        self._t = np.ascontiguousarray(self.transfer[: self._ky, : self._kx])

    def transfer_function(self, f):
        """Filter transfer at the spatial frequencies ``f`` (cycles / length)."""
        fc = self.cutoff
        if self.filter == "hard":
            return (f < fc).astype(float)
        if self.filter == "gaussian":
            # exp(-f^2 / 2 s^2) = 0.05 at f_c
            s = fc / np.sqrt(2 * np.log(20.0))
            return np.exp(-0.5 * (f / s) ** 2)
        f1 = (1.0 - self.taper) * fc
        t = np.clip((f - f1) / (fc - f1), 0.0, 1.0)
        return 0.5 * (1.0 + np.cos(np.pi * t))

    @property
    def active(self):
        """False when the circle encloses every sampled frequency (no-op)."""
        return bool(np.any(self.transfer < 1.0))

    def __call__(self, W):
        """Filter the maps (columns of ``W``) and clip negatives; returns a new array."""
        ny, nx = self.nav_shape
        W = np.asarray(W, dtype=np.float64)
        k = W.shape[1]
        maps = W.T.reshape(k, ny, nx)
        # One axis at a time, each sliced to the frequencies the filter passes
        # (and zero-padded back by the inverse, ``n=``): the transform skips
        # the removed part of the spectrum (benchmarks/bench_dct.py).
        spec = sp_fft.dct(maps, axis=2, **_DCT)[:, :, : self._kx]
        spec = sp_fft.dct(spec, axis=1, **_DCT)[:, : self._ky]
        spec *= self._t
        out = sp_fft.idct(sp_fft.idct(spec, n=ny, axis=1, **_DCT), n=nx, axis=2, **_DCT)
        np.maximum(out, 0.0, out=out)
        return out.reshape(k, ny * nx).T.copy()


#: Level (fraction of a map's maximum) that bounds an object's support
#: (:class:`MapSupport`): the connected region above it around the object's
#: core. Measured on ten multislice cases and the embedded default (three of
#: ``../shared/data/abtem_dev``, seven independent; random_state 0-2, k = true
#: and 30, scratch sweeps): at 0.05 mean position ARI 0.896 / 0.894 (k = true
#: / 30), every phase count right; at 0.10 the sketch's floors no longer join
#: small grains' cores (far-glass share 0 in 7 of 8 valley runs) but real map
#: tails are cut: 0.883 / 0.888, the 3.5 mrad case at k = true 0.441 with 2
#: of 4 phases.
SUPPORT_LEVEL = 0.05

#: Level (fraction of a map's maximum) of an object's core (:class:`MapSupport`).
SUPPORT_CORE = 0.5

#: Largest share of the scan an object's support may cover
#: (:class:`MapSupport`); a wider map (the matrix, a glass piece) is left free.
SUPPORT_MAX_FRACTION = 0.25


class MapSupport:
    """Confine the map of every compact object to its support.

    NMF is not unique, and the non-negative family it stops in lets a
    grain's component carry a floor over the matrix: its map stays above zero
    far from the grain, fitting the glass's position-to-position variation
    (its speckle) with the halo its pattern holds, and the matrix's pattern
    takes the grain's Bragg disks out where that floor adds them (a dip the
    data do not have). On the multislice cases of ``../shared/data`` the
    grains' components carried up to 0.74 of the model's counts on the glass
    >= 5 steps from every grain (the 3-phase 64 x 64 case at k = 9;
    ``benchmarks/quality_valleys.py``, "far glass"). The support of a map is
    the connected region of its positions at or above ``level`` of its
    maximum that holds its core (positions at or above ``core`` of the
    maximum; several for a component that found grains of one orientation),
    grown by ``dilation`` scan steps (8-connectivity).
    A map whose support covers more than ``max_fraction`` of the scan is the
    matrix or a piece of it and stays free. Used by
    :func:`hyperspy_cnmf.nmf.constrained_nmf` (``map_support``): the maps of
    the fit on the sketch fix the supports, the maps outside them are set to
    zero and stay zero in every further iteration and in the component
    separation at the end (:func:`hyperspy_cnmf.nmf._solver._separate`).

    Parameters
    ----------
    nav_shape : tuple of int
        ``(ny, nx)``: the scan shape; maps are the columns of ``W`` reshaped
        in C order.
    level, core, max_fraction : float
        :data:`SUPPORT_LEVEL`, :data:`SUPPORT_CORE`,
        :data:`SUPPORT_MAX_FRACTION` by default; ``0 < level <= core <= 1``,
        ``0 < max_fraction <= 1``.
    dilation : int
        Scan steps the support is grown by (>= 0).

    Raises
    ------
    ValueError
        For levels or fractions out of range or a negative dilation.

    Examples
    --------
    >>> W = np.full((8 * 8, 2), 0.02)  # a floor everywhere
    >>> W[[18, 19, 26, 27], 0] = 1.0   # a 2 x 2 grain in map 0
    >>> W[:, 1] = 1.0                  # the matrix
    >>> m = MapSupport((8, 8)).masks(W)
    >>> int(m[:, 0].sum()), int(m[:, 1].sum())  # the grain grown by 1 step; the matrix free
    (16, 64)
    """

    def __init__(
        self,
        nav_shape,
        level=SUPPORT_LEVEL,
        core=SUPPORT_CORE,
        max_fraction=SUPPORT_MAX_FRACTION,
        dilation=1,
    ):
        level, core, max_fraction = float(level), float(core), float(max_fraction)
        if not 0 < level <= core <= 1:
            raise ValueError(
                f"the support levels must satisfy 0 < level <= core <= 1, got {level}, {core}"
            )
        if not 0 < max_fraction <= 1:
            raise ValueError(f"max_fraction must be in (0, 1], got {max_fraction}")
        if int(dilation) != dilation or dilation < 0:
            raise ValueError(f"dilation must be a whole number >= 0, got {dilation}")
        self.nav_shape = tuple(int(n) for n in nav_shape)
        self.level, self.core, self.max_fraction = level, core, max_fraction
        self.dilation = int(dilation)

    def masks(self, W, valid=None):
        """Support of every map: float64 array of 0 and 1 shaped like ``W`` (n, k).

        Columns of maps without a support (wider than ``max_fraction`` of
        the ``valid`` positions, bool (n,), all by default; or zero
        everywhere) are all ones.
        """
        from scipy import ndimage

        W = np.asarray(W, dtype=np.float64)
        out = np.ones_like(W)
        valid = np.ones(W.shape[0], bool) if valid is None else np.asarray(valid, bool)
        n_valid = max(int(valid.sum()), 1)
        eight = np.ones((3, 3), dtype=bool)
        for j in range(W.shape[1]):
            w = W[:, j].reshape(self.nav_shape)
            top = w.max()
            if not top > 0:
                continue
            regions, _ = ndimage.label(w >= self.level * top, structure=eight)
            cores = np.unique(regions[(w >= self.core * top) & (regions > 0)])
            support = np.isin(regions, cores)
            if self.dilation:
                support = ndimage.binary_dilation(
                    support, structure=eight, iterations=self.dilation
                )
            if (support.ravel() & valid).sum() <= self.max_fraction * n_valid:
                out[:, j] = support.ravel()
        return out


def disk_offsets(radius):
    """Offsets ``(dy, dx)`` of the pixels of a disk of the given radius."""
    r = int(np.floor(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = yy**2 + xx**2 <= radius**2 + 1e-9
    return yy[inside].astype(np.int64), xx[inside].astype(np.int64)


def closing(patterns, radius, valid=None):
    """Grey-scale closing of a stack of patterns with a disk.

    Parameters
    ----------
    patterns : ndarray, shape (k, qy, qx)
    radius : float
        Disk radius in pixels.
    valid : ndarray of bool, shape (qy, qx), optional
        False for masked pixels (left unchanged, ignored by the neighbours).
    """
    patterns = np.asarray(patterns, dtype=np.float64)
    if valid is None:
        valid = np.ones(patterns.shape[1:], dtype=bool)
    dy, dx = disk_offsets(radius)
    return grey_closing_stack(
        np.ascontiguousarray(patterns), np.asarray(valid, bool), dy, dx
    )


def azimuthal_closing(patterns, centre, half, r_min=None, valid=None):
    """Grey-scale closing of a stack of patterns along the azimuth.

    The closing runs on circles about ``centre`` (see
    :func:`hyperspy_cnmf.nmf._kernels.azimuthal_closing_stack`). The circles
    are sampled bilinearly, which keeps real features intact (on the
    noise-free simulated patterns a 1-px closing moves no pixel by more than
    0.7 % of its pattern's maximum) but makes the operator not exactly
    idempotent: on pure noise a second application still raises the mean by
    a third of the first rise. A closing on the nearest pixels of each arc is
    idempotent but was measured to raise Bragg-spot flanks by up to 50 % of
    the spot maximum, so it was not adopted.

    Parameters
    ----------
    patterns : ndarray, shape (k, qy, qx)
    centre : Beam or tuple of float
        ``(x, y)``: the direct-beam position in pixels, x (column) first.
    half : int
        Half-length (pixels) of the closing segment along the azimuth.
    r_min : float, optional
        Radius inside which nothing changes (default ``2 * half + 1``).
    valid : ndarray of bool, shape (qy, qx), optional
        False for masked pixels.
    """
    patterns = np.ascontiguousarray(patterns, dtype=np.float64)
    if valid is None:
        valid = np.ones(patterns.shape[1:], dtype=bool)
    if r_min is None:
        r_min = 2 * half + 1
    cx, cy = check_centre(centre, patterns.shape[1:])
    return azimuthal_closing_stack(
        patterns, np.asarray(valid, bool), cy, cx, int(half), float(r_min)
    )


class DiffractionDipConstraint:
    """Forbid downward-convex dips in the diffraction patterns.

    Parameters
    ----------
    sig_shape : tuple of int
        ``(qy, qx)``: the detector shape; patterns are the columns of ``Ht``
        reshaped in C order.
    radius : float
        Size (pixels) of the dips to forbid: the closing element is a segment
        of ``2 * radius + 1`` pixels along the azimuth (``mode="azimuthal"``)
        or a disk of that radius (``mode="isotropic"``).
    strength : float
        In (0, 1]: fraction of the closing applied per iteration.
    valid : ndarray of bool, shape (qy, qx), optional
        False for masked detector pixels.
    centre : Beam or tuple of float, optional
        ``(x, y)`` direct-beam position in pixels, x (column) first (needed
        by ``mode="azimuthal"``; default: the detector centre). A centre
        outside the detector raises. Built from a measured beam by
        :meth:`from_beam`.
    mode : {"azimuthal", "isotropic"}
        ``"azimuthal"`` (default) closes along circles about the direct beam:
        it fills holes carved into halos and backgrounds while the radial
        valleys between the direct beam and the halos, which are real, stay
        untouched. ``"isotropic"`` is the plain disk closing, which also
        raises such valleys when they are narrower than the disk.
    r_min : float, optional
        Radius (pixels) about the centre left unchanged (the direct-beam
        disk); default ``2 * radius + 1``.

    Attributes
    ----------
    centre : tuple of float
        ``(x, y)``, px.

    Examples
    --------
    >>> p = np.ones((1, 21, 21)); p[0, 3, 10] = 0.0  # a one-pixel hole
    >>> c = DiffractionDipConstraint((21, 21), radius=1)
    >>> round(float(c(p.reshape(1, -1).T).min()), 2)  # filled (bilinear samples)
    1.0
    """

    def __init__(
        self,
        sig_shape,
        radius,
        strength=1.0,
        valid=None,
        centre=None,
        mode="azimuthal",
        r_min=None,
    ):
        radius = float(radius)
        if not np.isfinite(radius) or radius < 1:
            raise ValueError(
                f"the diffraction constraint size must be >= 1 pixel, got {radius}"
            )
        strength = float(strength)
        if not 0 < strength <= 1:
            raise ValueError(
                f"the diffraction constraint strength must be in (0, 1], got {strength}"
            )
        if mode not in ("azimuthal", "isotropic"):
            raise ValueError(
                f"unknown diffraction constraint mode {mode!r}: use 'azimuthal' or 'isotropic'"
            )
        self.sig_shape = tuple(int(n) for n in sig_shape)
        self.radius = radius
        self.strength = strength
        self.mode = mode
        self.valid = (
            np.ones(self.sig_shape, bool)
            if valid is None
            else np.asarray(valid, bool).reshape(self.sig_shape)
        )
        if centre is None:
            centre = ((self.sig_shape[1] - 1) / 2, (self.sig_shape[0] - 1) / 2)
        self.centre = check_centre(centre, self.sig_shape)
        self.r_min = 2 * radius + 1 if r_min is None else float(r_min)
        if not (np.isfinite(self.r_min) and self.r_min >= 0):
            raise ValueError(
                f"`r_min` must be a finite radius >= 0 (px), got {r_min!r}"
            )
        self._table = None

    @classmethod
    def from_beam(
        cls, beam, sig_shape, radius="auto", strength=1.0, valid=None, mode="azimuthal"
    ):
        """The dip constraint about a measured direct beam: the package's one way to build it.

        Centred on the beam, with the beam disk and two closing radii about
        it left unchanged (``r_min = beam.radius + 2 * radius``), as the
        decomposition, its diagnostics and the command line use it.

        Parameters
        ----------
        beam : Beam
            ``(x, y, radius)`` of the direct beam, px.
        sig_shape : tuple of int
            ``(qy, qx)``.
        radius : float, "auto" or None, default "auto"
            Size (px) of the dips; "auto" or None: :func:`default_dip_radius`
            of the beam radius. A beam radius of NaN (unknown: a beam hidden
            by a beam stop) counts as 0 (one-pixel dips, closed from 2 px).
        strength, valid, mode
            As for the class.

        Examples
        --------
        >>> from hyperspy_cnmf._beam import Beam
        >>> c = DiffractionDipConstraint.from_beam(Beam(x=40, y=12, radius=3.2), (32, 48))
        >>> c.centre, c.radius, round(c.r_min, 1)
        ((40.0, 12.0), 3.0, 9.2)
        """
        if not isinstance(beam, Beam):
            raise TypeError(f"`beam` must be a Beam (x, y, radius), got {beam!r}")
        # a beam of unknown radius (NaN: hidden by a beam stop) counts as 0
        beam_radius = float(beam.radius) if np.isfinite(beam.radius) else 0.0
        radius = (
            default_dip_radius(beam_radius)
            if radius is None or radius == "auto"
            else float(radius)
        )
        return cls(
            sig_shape,
            radius,
            strength,
            valid=valid,
            centre=beam,
            mode=mode,
            r_min=beam_radius + 2 * radius,
        )

    def close(self, stack):
        """The closing of a stack of patterns, shape (k, qy, qx)."""
        if self.mode == "isotropic":
            return closing(stack, self.radius, self.valid)
        half = int(round(self.radius))
        if self._table is None:
            # The sampling geometry is fixed: computed once, reused by every
            # closing of the iterations (the same numbers as azimuthal_closing).
            cx, cy = self.centre  # array order for the kernel
            self._table = azimuthal_table(self.valid, cy, cx, half, self.r_min)
        stack = np.ascontiguousarray(stack, dtype=np.float64)
        return azimuthal_closing_apply(stack, *self._table, half)

    def __call__(self, Ht):
        """Apply the closing to the patterns (columns of ``Ht``); returns a new array."""
        qy, qx = self.sig_shape
        k = Ht.shape[1]
        stack = np.ascontiguousarray(Ht.T, dtype=np.float64).reshape(k, qy, qx)
        closed = self.close(stack)
        if self.strength < 1:
            closed = stack + self.strength * (closed - stack)
        return closed.reshape(k, qy * qx).T.copy()

    def dip_measure(self, patterns):
        """Per-pattern fraction of intensity missing in dips (see :func:`dip_measure`)."""
        return dip_measure(patterns, self)


def dip_measure(patterns, constraint, valid=None):
    """Fraction of each pattern's intensity missing in downward-convex dips.

    ``sum(close(p) - p) / sum(p)`` over valid pixels, where ``close`` is the
    closing of a :class:`DiffractionDipConstraint` (or, given a number, the
    isotropic disk closing of that radius). Zero for a pattern without dips;
    counting noise alone gives a small positive floor.

    Parameters
    ----------
    patterns : ndarray, shape (k, qy, qx) or (qy, qx)
    constraint : DiffractionDipConstraint or float
        The constraint whose closing defines a dip, or a disk radius (pixels).
    valid : ndarray of bool, optional
        Valid pixels when ``constraint`` is a number.

    Returns
    -------
    ndarray, shape (k,)
    """
    p = np.asarray(patterns, dtype=np.float64)
    if p.ndim == 2:
        p = p[None]
    if not isinstance(constraint, DiffractionDipConstraint):
        constraint = DiffractionDipConstraint(
            p.shape[1:], constraint, valid=valid, mode="isotropic"
        )
    valid = constraint.valid
    p = np.where(valid, np.nan_to_num(p), 0.0)
    gap = constraint.close(p) - p
    total = np.sum(p[:, valid], axis=1)
    return np.sum(gap[:, valid], axis=1) / np.where(total > 0, total, 1.0)


def map_power_spectra(maps, scale=(1.0, 1.0)):
    """Power spectra of maps with a Hann window (edges do not leak).

    Parameters
    ----------
    maps : ndarray, shape (k, ny, nx) or (ny, nx)
    scale : tuple of float
        Scan step per axis.

    Returns
    -------
    power : ndarray, shape (k, ny, nx)
        ``|FFT|^2`` of the mean-subtracted, windowed maps, zero frequency at
        the centre (``fftshift``).
    fy, fx : ndarray
        Frequencies (cycles per unit length) of the rows and columns.
    """
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim == 2:
        m = m[None]
    m = np.nan_to_num(m)
    ny, nx = m.shape[1:]
    win = np.hanning(ny)[:, None] * np.hanning(nx)[None, :]
    m = (m - m.mean(axis=(1, 2), keepdims=True)) * win
    power = np.abs(np.fft.fftshift(np.fft.fft2(m), axes=(1, 2))) ** 2
    fy = np.fft.fftshift(np.fft.fftfreq(ny, d=scale[0]))
    fx = np.fft.fftshift(np.fft.fftfreq(nx, d=scale[1]))
    return power, fy, fx


def map_power_beyond(maps, resolution, scale=(1.0, 1.0)):
    """Fraction of each map's (non-constant) power beyond ``|f| = 1/resolution``.

    White noise gives the area fraction of frequency space outside the circle;
    a map that obeys the resolution limit gives almost zero.

    Returns
    -------
    ndarray, shape (k,)
    """
    power, fy, fx = map_power_spectra(maps, scale)
    f = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    outside = f > 1.0 / float(resolution)
    total = power.sum(axis=(1, 2))
    return power[:, outside].sum(axis=1) / np.where(total > 0, total, 1.0)
