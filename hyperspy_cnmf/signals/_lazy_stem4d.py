"""The lazy (dask-backed, out-of-core) 4D-STEM signal class."""

from hyperspy.signals import LazySignal2D

from hyperspy_cnmf.signals._stem4d import STEM4D


class LazySTEM4D(STEM4D, LazySignal2D):
    # Our class first: its ``decomposition`` must shadow LazySignal's.
    # (HyperSpy's LAZYSIGNAL_DOC is not used: its example calls
    # ``hs.signals.STEM4D``, which an extension's class is not)
    __doc__ = (
        STEM4D.__doc__
        + """
    The lazy version holds a dask array: the data is read chunk by chunk and
    the computation is delayed until explicitly requested. Reach it with
    ``as_lazy()`` or by loading with ``lazy=True``:

    >>> s.as_lazy()
    <LazySTEM4D, title: , dimensions: (8, 8|16, 16)>
    """
    )
