"""Constrained NMF and rotation-invariant diffraction clustering for 4D-STEM.

A HyperSpy extension implementing the method of Kimoto et al., *Sci. Rep.* 15,
39143 (2025): non-negative matrix factorization with two electron-microscopy
constraints (spatial resolution of the maps, no downward-convex dips in the
diffraction patterns), followed by rotation-invariant hierarchical clustering of
the components.

Importing this package is cheap: no Numba compilation and no py4DSTEM import
happen here. The signal classes are registered with HyperSpy through
``hyperspy_extension.yaml`` and reached with ``s.set_signal_type("4D-STEM")``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hyperspy_cnmf")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0+unknown"

__all__ = ["__version__"]
