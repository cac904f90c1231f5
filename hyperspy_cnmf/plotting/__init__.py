"""Matplotlib figures of hyperspy_cnmf (imported on use).

- :func:`plot_map_spectra`: maps and their Fourier transforms with the
  resolution circle (the paper's Fig. 1 diagnostic of the map constraint);
- :func:`plot_dip_measure`: per-factor dip measure, optionally compared
  between runs (diagnostic of the diffraction constraint);
- :mod:`hyperspy_cnmf.plotting._cluster`: dendrogram and gallery of the
  rotation-invariant diffraction clustering.
"""

from hyperspy_cnmf.plotting._diagnostics import plot_dip_measure, plot_map_spectra

__all__ = ["plot_dip_measure", "plot_map_spectra"]
