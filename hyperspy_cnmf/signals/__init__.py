"""HyperSpy signal classes of hyperspy_cnmf.

- :class:`STEM4D`: an in-memory 4D-STEM dataset (navigation ``(x, y)``, signal
  ``(kx, ky)``), ``signal_type="4D-STEM"``.
- :class:`LazySTEM4D`: the same, backed by a dask array (out-of-core).
- :class:`ComplexSTEM4D`, :class:`LazyComplexSTEM4D`: complex data (e.g. an
  exit wave), where constrained NMF raises a clear ``TypeError``.
"""

from hyperspy_cnmf.signals._complex import ComplexSTEM4D, LazyComplexSTEM4D
from hyperspy_cnmf.signals._lazy_stem4d import LazySTEM4D
from hyperspy_cnmf.signals._stem4d import STEM4D

__all__ = ["STEM4D", "LazySTEM4D", "ComplexSTEM4D", "LazyComplexSTEM4D"]
