"""The eager 4D-STEM signal class: thin wrappers around the numerical core."""

from hyperspy.signals import Signal2D

from hyperspy_cnmf.signals._axes import set_default_axes


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
