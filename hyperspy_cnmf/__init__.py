"""Constrained NMF and rotation-invariant diffraction clustering for 4D-STEM.

A HyperSpy extension implementing the method of Kimoto et al., *Sci. Rep.* 15,
39143 (2025): non-negative matrix factorization with two electron-microscopy
constraints (spatial resolution of the maps, no downward-convex dips in the
diffraction patterns), followed by rotation-invariant hierarchical clustering of
the components.

Importing this package is cheap: no Numba compilation and no py4DSTEM import
happen here. The signal classes are registered with HyperSpy through
``hyperspy_extension.yaml`` and reached with ``s.set_signal_type("4D-STEM")``.

The functional API of :mod:`hyperspy_cnmf.api` works on any signal with 2
navigation and 2 signal dimensions (a plain ``Signal2D``, a pyxem signal),
eager or lazy, without changing its class, and is re-exported here (imported
on first use): ``hyperspy_cnmf.decomposition(s, k)``,
``hyperspy_cnmf.cluster_diffraction(s)``, ... and the estimator
``hyperspy_cnmf.ConstrainedNMF`` for ``s.decomposition(algorithm=...)``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hyperspy_cnmf")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0+unknown"

#: The names of :mod:`hyperspy_cnmf.api`, re-exported (imported on first use: it imports HyperSpy).
_API = (
    "ConstrainedNMF",
    "center_direct_beam",
    "cluster_diffraction",
    "cluster_patterns",
    "decomposition",
    "get_cluster_diffraction_results",
    "get_dip_measure",
    "get_direct_beam_position",
    "get_map_power_beyond",
    "plot_cluster_dendrogram",
    "plot_cluster_gallery",
    "plot_dip_measure",
    "plot_map_spectra",
    "polar_transform",
)

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API or name == "api":
        from importlib import import_module

        api = import_module("hyperspy_cnmf.api")
        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
