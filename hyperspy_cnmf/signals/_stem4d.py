"""The eager 4D-STEM signal class: thin wrappers of the functional API (:mod:`hyperspy_cnmf.api`)."""

import functools
from importlib import import_module

from hyperspy.signals import Signal2D

from hyperspy_cnmf._warnings import at_user_site
from hyperspy_cnmf.signals import (
    _beam_shift,
    _cluster,
    _decomposition,
    _diagnostics,
    _store,
)
from hyperspy_cnmf.signals._axes import set_default_axes


def _method(impl):
    """``STEM4D.<name>``: a thin wrapper of ``hyperspy_cnmf.api.<name>``, documented as ``impl``.

    The public function is looked up at call time (``hyperspy_cnmf.api`` imports this module).
    The wrapper keeps ``impl``'s module, so that its examples run once, as ``impl``'s doctests.
    """

    @functools.wraps(impl)
    def method(self, *args, **kwargs):
        api = import_module("hyperspy_cnmf.api")
        return getattr(api, impl.__name__)(self, *args, **kwargs)

    return method


class STEM4D(Signal2D):
    """A 4D-STEM dataset: a diffraction pattern at every probe position.

    The navigation axes are the scan ``(x, y)`` and the signal axes the
    detector ``(kx, ky)``. Reach this class with
    ``s.set_signal_type("4D-STEM")`` on any 2+2 dimensional ``Signal2D``.

    Examples
    --------
    >>> import numpy as np
    >>> import hyperspy.api as hs
    >>> s = hs.signals.Signal2D(np.random.rand(8, 8, 16, 16))
    >>> s.set_signal_type("4D-STEM")
    >>> type(s).__name__
    'STEM4D'
    """

    _signal_type = "4D-STEM"
    _alias_signal_types = ["4DSTEM", "4D_STEM", "4d-stem"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        set_default_axes(self)
        lr = getattr(self, "learning_results", None)
        if lr is not None and not isinstance(lr, _store.STEM4DLearningResults):
            # HyperSpy's LearningResults, whose summary() also lists the constrained NMF and
            # clustering settings; the same attributes, saved and loaded as HyperSpy's.
            new = _store.STEM4DLearningResults()
            new.__dict__.update(lr.__dict__)
            self.learning_results = new

    # The functional API (hyperspy_cnmf.api: any 2+2 signal) as methods.
    cluster_diffraction = _method(_cluster.cluster_diffraction)
    cluster_patterns = _method(_cluster.cluster_patterns)
    get_cluster_diffraction_results = _method(_cluster.get_cluster_diffraction_results)
    polar_transform = _method(_cluster.polar_transform)
    plot_cluster_dendrogram = _method(_cluster.plot_cluster_dendrogram)
    plot_cluster_gallery = _method(_cluster.plot_cluster_gallery)
    plot_map_spectra = _method(_diagnostics.plot_map_spectra)
    get_map_power_beyond = _method(_diagnostics.get_map_power_beyond)
    get_dip_measure = _method(_diagnostics.get_dip_measure)
    plot_dip_measure = _method(_diagnostics.plot_dip_measure)
    center_direct_beam = _method(_beam_shift.center_direct_beam)
    get_direct_beam_position = _method(_beam_shift.get_direct_beam_position)

    @at_user_site
    def decomposition(
        self,
        normalize_poissonian_noise=None,
        algorithm="SVD",
        output_dimension=None,
        *args,
        **kwargs,
    ):
        """Decompose the dataset; adds ``algorithm="constrained_nmf"``.

        Every other algorithm is HyperSpy's own (see
        :meth:`hyperspy.api.signals.Signal2D.decomposition`), unchanged.

        With ``algorithm="constrained_nmf"`` the data ``X`` (positions x
        detector pixels) are factorized as ``X ~ W H`` with non-negative maps
        ``W`` (HyperSpy *loadings*) and diffraction patterns ``H`` (HyperSpy
        *factors*), under the two constraints of Kimoto et al., Sci. Rep. 15,
        39143 (2025): maps hold no detail finer than the probe, and patterns
        have no downward-convex dips (see :mod:`hyperspy_cnmf.constraints`).
        With both constraints off it is the paper's "primitive NMF".

        Parameters
        ----------
        normalize_poissonian_noise : bool or None, default None
            Keenan-Kotula scaling of the data before the fit (exactly undone
            afterwards); the constraints act on the unscaled factors. None:
            True for ``algorithm="constrained_nmf"`` (unlike HyperSpy's
            default, False for its own algorithms, which is kept for them).
            4D-STEM data are counts whose variance equals their mean, and the
            direct beam and the amorphous halo are hundreds of times brighter
            than the Bragg spots of small precipitates: an unweighted
            least-squares fit spends its components on the noise of the bright
            pixels. Measured on the multislice cases of
            ``../shared/data/abtem_dev`` (``benchmarks/quality_physics.py``):
            unweighted, nearly every component was a direct-beam variation and
            the position ARI against the true phase map was about 0.
        direct_beam_mask : "auto", float, False or None, default "auto"
            Leave the direct-beam disk out of the fit: it carries ~95 % of the
            counts and only thickness and descan, no structure, and a fit that
            includes it spends components on it. ``"auto"``: the disk found on
            the mean pattern (half-maximum radius) plus
            ``BEAM_MASK_MARGIN`` = 1.5 px plus half the beam's motion over the
            scan (descan, measured in the statistics read); a number: that radius in detector
            pixels about the same centre; False/None: fit the beam too (the
            paper's setting). The masked pixels come back as NaN in the
            factors and are added to ``learning_results.signal_mask``; the
            beam's centre and radius are recorded in ``cnmf_parameters``
            (``direct_beam_x_px``, ``direct_beam_y_px``,
            ``direct_beam_radius_px``, ``direct_beam_mask_radius_px``) and used
            by :meth:`cluster_diffraction` as the centre of the polar transform.
            A beam hidden by a beam stop (nothing read at the mean pattern's
            centre of inversion symmetry, and its brightest region less than
            50 times its median or a compact shadow there;
            ``direct_beam_hidden`` in ``cnmf_parameters``)
            is warned about: its centre is that centre of symmetry, ``"auto"``
            leaves the stop's shadow out, and the radius recorded is the Bragg
            disks' from the convergence semi-angle (NaN without it).
        defect_pixel_mask : bool, default True
            Leave the hot detector pixels found on the mean pattern
            (:func:`hyperspy_cnmf._beam.defect_pixels`: a pixel, or a group of
            up to 2 x 2 away from the direct beam, far brighter than the
            pixels around it and significant against counting noise) out of
            the fit, with a warning that names them; they come back as NaN in
            the factors and are added to ``learning_results.signal_mask``.
            Dead pixels (zero in every pattern among live ones, single or
            the lines of a detector's gaps between chips) are reported, left
            out of the direct-beam finding and fitted as the zeros they read
            (``signal_mask`` leaves them out of the fit too). A hot pixel fitted takes the components: on the
            3-phase descan multislice case, one hot pixel at (5, 30) at 50
            times the data's maximum gave position ARI 0.000 (one cluster)
            fitted and 0.889 (4 clusters) left out. The mean pattern cannot
            tell a hot pixel from a one-pixel Bragg spot of a grain that
            covers a few % of the scan with many counts: such a spot is left
            out too (the warning names it). False: fit them (the warning then
            shows the ``signal_mask`` that excludes them).
        algorithm : str or object, default "SVD"
            ``"constrained_nmf"`` or any HyperSpy algorithm.
        output_dimension : int
            Number of components k (required for constrained NMF). The paper
            uses deliberately many (30) and merges them with
            :meth:`cluster_diffraction`.
        solver : {"hals", "mu", "als"}, default "hals"
            Update rule: hierarchical alternating least squares with
            accelerated inner sweeps, Lee-Seung multiplicative updates, or
            clipped alternating least squares (the paper's baselines).
        init : {"nndsvda", "nndsvd", "random"} or (loadings, factors), default "nndsvda"
            Initialisation; a custom pair has HyperSpy's shapes
            ``(navigation_size, k)`` and ``(signal_size, k)`` (e.g. the
            ``learning_results`` of an earlier run, for a warm start).
        max_iter : int, default 200
            Maximum exact iterations (each is one read of the data).
        tol : float, default 1e-5
            Stop when the mean squared error changes by less than this
            relative amount between iterations.
        random_state : int, numpy.random.Generator or None, default 0
            Seed of the randomized sketch (its Gaussian test matrix) and of
            random starts. Fixed by default, so that the same call on the same
            data gives the same result, in memory or lazily in any chunks;
            ``None`` draws a fresh seed (the result then varies between calls).
        map_resolution : "auto", float or None, default "auto"
            Probe size (FWHM) in the navigation axes' units; power beyond the
            spatial frequency ``1 / map_resolution`` is removed from every
            map at every iteration. ``"auto"`` estimates it from the
            metadata (convergence angle, beam energy) or the direct-beam disk
            (see :func:`hyperspy_cnmf.signals._calibration.estimate_probe_fwhm`);
            ``None`` switches the map constraint off.
        map_filter : {"tukey", "hard", "gaussian"}, default "tukey"
            Shape of the low-pass filter at the cutoff.
        diffraction_constraint : bool, default True
            Forbid downward-convex dips in the patterns: after every pattern
            update a grey-scale closing along the arcs of constant scattering
            angle about the direct beam (``diffraction_constraint_mode=
            "azimuthal"``) or with a disk (``"isotropic"``); False switches
            it off.
        diffraction_constraint_size : "auto" or float, default "auto"
            Half-length in detector pixels of the closing's structuring
            element; holes narrower than ``2 * size + 1`` px are filled.
            ``"auto"``: the direct-beam disk radius (rounded, at least 1 px),
            i.e. holes up to one Bragg disk wide, the shape NMF carves where
            another component has a spot. Larger sizes also lift the
            counting-noise floor between spots and bias the patterns
            (measured on the simulated data: matched cosine 0.90-0.93 at
            2-3 px against >= 0.97 at 1 px).
        diffraction_constraint_strength : float, default 1.0
            Fraction in (0, 1] of the closing applied per iteration.
        navigation_mask, signal_mask : bool array or signal, optional
            True marks excluded probe positions / detector pixels (e.g. the
            direct beam). Excluded entries take no part in the fit and come
            back as NaN, as in HyperSpy; the map and pattern grids stay intact
            for the constraints.
        sketch : bool, default True
            Converge first on a randomized low-rank sketch of the data, then
            refine on the exact data until ``tol``: far fewer data reads.
        n_init : int, default 1
            Number of starts (the first from ``init``, the others random);
            the one with the lowest loss is kept. With ``sketch=True`` the
            starts run on the sketch and cost no extra data reads.
        max_exact_iter : int, None or "auto", default "auto"
            Cap on the exact iterations after the sketch, in memory and lazily
            alike, so that a lazy signal gives the in-memory result. ``"auto"``:
            :data:`~hyperspy_cnmf.nmf.EXACT_REFINEMENT` (8) with ``sketch``,
            one read of the data each (11 reads in all out of core), else
            ``max_iter``; None: until ``tol`` (30-60 reads at k = 30). The
            exact phase refines a fit converged on the sketch; run to ``tol``
            it gives no better phases on the multislice benchmark (the
            constant gives the measurements).
        separate_components : bool, default True
            NMF is not unique: a grain's pattern can keep a share of the
            matrix pattern (direct beam, halos) while the matrix map dips
            under the grain, at the same fit. At the end, move such shared
            content back to the component that owns it, as far as
            non-negativity allows (then re-apply the diffraction constraint).
            Turn off for plain NMF output.
        map_support : bool, default True
            With the map constraint: after the sketch, confine the map of
            every compact object (a grain; not the matrix, whose map covers
            more than a quarter of the scan) to its support, the connected
            region around its core down to 5 % of its maximum grown by one
            scan step (:class:`~hyperspy_cnmf.constraints.MapSupport`). NMF
            otherwise lets a grain's component keep a floor over the matrix
            that fits the glass's speckle, and the matrix's pattern then
            loses the grain's Bragg disks (dips the data do not have) while
            the grains' patterns hold the matrix. No extra read of the data.
            The confined components are listed in ``cnmf_parameters``
            (``confined_maps``).
        print_info : bool, default True
            Print a summary of the run.
        return_info : bool, default False
            Return a dict with the settings, the loss history and counts.
        show_progressbar : bool or None
            Progress bar over the iterations (None: HyperSpy's preference).
        *args, **kwargs
            Passed to HyperSpy for its other algorithms.

        Returns
        -------
        dict or None
            The run information when ``return_info=True``.

        Notes
        -----
        ``learning_results`` receives ``factors`` (signal_size, k; each
        pattern sums to 1 so the loadings are counts per component),
        ``loadings`` (navigation_size, k), components sorted by total
        intensity, plus ``cnmf_loss`` (mean squared error per iteration; with
        ``normalize_poissonian_noise=True`` the Poisson-weighted one, which
        reads as a reduced chi-square, about 1 at the noise level),
        ``cnmf_parameters`` (JSON settings) and the resolved constraint
        sizes ``cnmf_map_resolution`` and ``cnmf_diffraction_constraint_size``.

        Examples
        --------
        >>> from hyperspy_cnmf.data import simulated_precipitates
        >>> s = simulated_precipitates()
        >>> s.decomposition(algorithm="constrained_nmf", output_dimension=7,
        ...                 print_info=False, random_state=0)
        >>> s.plot_decomposition_results()
        """
        constrained = (
            isinstance(algorithm, str) and algorithm.lower() == _decomposition.ALGORITHM
        )
        if constrained:
            if args:
                raise TypeError("pass the constrained_nmf options by keyword")
            out = _decomposition.constrained_nmf_decomposition(
                self,
                output_dimension,
                normalize_poissonian_noise=True
                if normalize_poissonian_noise is None
                else normalize_poissonian_noise,
                **kwargs,
            )
        else:
            out = super().decomposition(
                bool(normalize_poissonian_noise),
                algorithm,
                output_dimension,
                *args,
                **kwargs,
            )
        # What depended on the old decomposition goes: the clustering of the components (and
        # HyperSpy's cluster_* fields it wrote), and the cnmf_* record after another algorithm.
        _store.forget_results_of_decomposition(self.learning_results, constrained)
        return out

    def cluster_analysis(self, *args, **kwargs):
        """HyperSpy's ``cluster_analysis``, unchanged; see :meth:`hyperspy.api.signals.BaseSignal.cluster_analysis`.

        It replaces the ``cluster_*`` fields of ``learning_results``, so the
        results of :meth:`cluster_diffraction` and :meth:`cluster_patterns`
        (``cdiff_*``, ``cpat_*``), which wrote those fields, are removed with
        them: no record of an older clustering remains beside the new one.
        """
        out = super().cluster_analysis(*args, **kwargs)
        if getattr(self.learning_results, "cluster_labels", None) is not None:
            _store.clear_learning_results(self.learning_results, "cdiff_")
            _store.clear_learning_results(self.learning_results, "cpat_")
        return out

    def plot_cluster_results(self, *args, **kwargs):
        """HyperSpy's ``plot_cluster_results``, refused when the clustering is stale.

        After :meth:`cluster_diffraction`, the ``cluster_*`` fields are checked
        against the decomposition they were made from first (see
        :meth:`get_cluster_diffraction_results`).
        """
        lr = self.learning_results
        if getattr(lr, "cluster_algorithm", None) == "cluster_diffraction":
            stale = _store.stale_clustering(lr, "cdiff_", "cluster_diffraction")
            if stale:
                raise RuntimeError(stale)
        return super().plot_cluster_results(*args, **kwargs)

    def get_scree_plot_data(self):
        """HyperSpy's scree-plot data; for constrained NMF each component's share of the modelled counts.

        NMF has no variance ordering; ``explained_variance_ratio`` of a
        constrained NMF run is the fraction of the modelled counts (the sum of
        ``loadings x factors`` over the unmasked data) that each component
        carries, the order in which the components are sorted. It is what
        :meth:`plot_scree_plot` and ``plot_explained_variance_ratio`` show.
        """
        s = super().get_scree_plot_data()
        if self.learning_results.decomposition_algorithm == _decomposition.ALGORITHM:
            s.metadata.General.title = (
                f"{self.metadata.General.title}\n"
                "constrained NMF: share of the modelled counts"
            )
        return s

    def plot_scree_plot(self, *args, **kwargs):
        """HyperSpy's scree plot; for constrained NMF the share of the modelled counts per component.

        See :meth:`get_scree_plot_data`.
        """
        ax = super().plot_scree_plot(*args, **kwargs)
        if self.learning_results.decomposition_algorithm == _decomposition.ALGORITHM:
            ax.set_ylabel("Share of the modelled counts")
            if kwargs.get("fig") is None and kwargs.get("ax") is None:
                ax.figure.tight_layout()  # HyperSpy's figure of its own: keep the label inside
        return ax

    def export_decomposition_results(
        self,
        comp_ids=None,
        folder=None,
        calibrate=True,
        factor_prefix="factor",
        factor_format="hspy",
        loading_prefix="loading",
        loading_format="hspy",
        *args,
        **kwargs,
    ):
        """Save the decomposition factors and loadings to files.

        HyperSpy 2.5's own implementation fails for two-dimensional signals
        (it adds a tuple to a list); this one writes, for the selected
        components, one stack of factors (diffraction patterns, calibrated as
        this signal's detector) and one stack of loadings (maps, calibrated as
        the scan) to ``folder``.

        Parameters
        ----------
        comp_ids : None, int or list of int
            Components to export: all (None), the first ``comp_ids``, or the
            listed ones.
        folder : str or None
            Output folder (created if needed); None is the working directory.
        calibrate : bool
            Unused; the exported signals keep the calibrations.
        factor_prefix, loading_prefix : str
            File name stems.
        factor_format, loading_format : str
            File extensions understood by ``hs.save`` (e.g. "hspy", "zspy").
        *args, **kwargs
            Accepted for signature compatibility with HyperSpy and ignored.

        Returns
        -------
        list of pathlib.Path
            The files written.
        """
        from pathlib import Path

        import numpy as np

        n = self.learning_results.factors.shape[1]
        if comp_ids is None:
            ids = list(range(n))
        elif isinstance(comp_ids, (int, np.integer)):
            ids = list(range(int(comp_ids)))
        else:
            ids = [int(i) for i in comp_ids]
        if any(not -n <= i < n for i in ids):
            raise ValueError(
                f"comp_ids {comp_ids!r} is out of range for {n} component(s)"
            )
        out = Path(folder or ".")
        out.mkdir(parents=True, exist_ok=True)
        from hyperspy.utils import stack

        def pick(signal, axes):
            # always a component axis, also for one component
            if signal.axes_manager.navigation_dimension == 0:
                # k = 1: HyperSpy's loadings come without it (and with a renamed scan axis)
                dicts = [
                    {
                        "size": len(ids),
                        "navigate": True,
                        "name": "Decomposition component index",
                    }
                ]
                for axis in axes[::-1]:
                    dicts.append(dict(axis.get_axis_dictionary(), navigate=False))
                one = type(signal)(
                    np.repeat(signal.data[np.newaxis], len(ids), axis=0), axes=dicts
                )
                one.metadata.General.title = signal.metadata.General.title
                return one
            if (
                len(ids) == 1
            ):  # stack() would return the one signal as it is, without the axis
                return signal.inav[ids[0] % n : ids[0] % n + 1]
            return stack([signal.inav[i] for i in ids], show_progressbar=False)

        am = self.axes_manager
        factors = pick(self.get_decomposition_factors(), am.signal_axes)
        loadings = pick(self.get_decomposition_loadings(), am.navigation_axes)
        files = [
            out / f"{factor_prefix}s.{factor_format}",
            out / f"{loading_prefix}s.{loading_format}",
        ]
        factors.save(files[0], overwrite=True)
        loadings.save(files[1], overwrite=True)
        return files
