"""The numerical core: constrained NMF on numpy arrays (numpy and numba only).

This subpackage never imports HyperSpy, dask or py4DSTEM.
"""

from hyperspy_cnmf.nmf._operators import (
    DenseOperator,
    FactoredOperator,
    SketchOperator,
    randomized_range,
)
from hyperspy_cnmf.nmf._solver import (
    EXACT_REFINEMENT,
    INITS,
    SOLVERS,
    SUPPORT_ITERATIONS,
    ConvergenceWarning,
    NMFResult,
    constrained_nmf,
)

__all__ = [
    "DenseOperator",
    "SketchOperator",
    "FactoredOperator",
    "randomized_range",
    "constrained_nmf",
    "NMFResult",
    "ConvergenceWarning",
    "SOLVERS",
    "INITS",
    "EXACT_REFINEMENT",
    "SUPPORT_ITERATIONS",
]
