"""Complex 4D-STEM signals: a clear error instead of HyperSpy's "not recognised".

``set_signal_type("4D-STEM")`` on complex data (an exit wave, a ptychographic
reconstruction) would otherwise give HyperSpy's ``ComplexSignal2D``, whose
``decomposition(algorithm="constrained_nmf")`` reports an unknown algorithm.
NMF needs real, non-negative intensities: these classes say so and name the fix.
"""

from hyperspy.signals import ComplexSignal2D, LazyComplexSignal2D

from hyperspy_cnmf.signals._decomposition import ALGORITHM

_MESSAGE = (
    "constrained NMF needs real, non-negative intensities, but this 4D-STEM signal is "
    "complex (dtype {dtype}); take the intensity first, e.g. "
    "`s = s.amplitude ** 2` (or `s.real` if the imaginary part is zero), then "
    '`s.set_signal_type("4D-STEM")`'
)


class ComplexSTEM4D(ComplexSignal2D):
    """A complex 4D-STEM dataset (e.g. an exit wave); HyperSpy's complex signal otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> import hyperspy.api as hs
    >>> s = hs.signals.Signal2D(np.ones((2, 2, 4, 4), dtype=complex))
    >>> s.set_signal_type("4D-STEM")
    >>> s.decomposition(algorithm="constrained_nmf", output_dimension=2)
    Traceback (most recent call last):
    ...
    TypeError: constrained NMF needs real, non-negative intensities, ...
    """

    _signal_type = "4D-STEM"
    _alias_signal_types = ["4DSTEM", "4D_STEM", "4d-stem"]

    def decomposition(self, *args, **kwargs):
        """HyperSpy's decomposition; ``algorithm="constrained_nmf"`` raises ``TypeError``.

        Raises
        ------
        TypeError
            For ``algorithm="constrained_nmf"``: NMF needs real intensities.
        """
        algorithm = kwargs.get("algorithm", args[1] if len(args) > 1 else None)
        if isinstance(algorithm, str) and algorithm.lower() == ALGORITHM:
            raise TypeError(_MESSAGE.format(dtype=self.data.dtype))
        return super().decomposition(*args, **kwargs)


class LazyComplexSTEM4D(ComplexSTEM4D, LazyComplexSignal2D):
    """The lazy (dask-backed) :class:`ComplexSTEM4D`."""
