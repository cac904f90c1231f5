"""The lazy (dask-backed, out-of-core) 4D-STEM signal class."""

from hyperspy.docstrings.signal import LAZYSIGNAL_DOC
from hyperspy.signals import LazySignal2D

from hyperspy_cnmf.signals._stem4d import STEM4D


class LazySTEM4D(STEM4D, LazySignal2D):
    # Our class first: its ``decomposition`` must shadow LazySignal's.
    __doc__ = STEM4D.__doc__ + LAZYSIGNAL_DOC.replace("__BASECLASS__", "STEM4D")
