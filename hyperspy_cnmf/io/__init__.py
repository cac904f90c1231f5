"""Input/output helpers of hyperspy_cnmf.

py4DSTEM bridge (py4DSTEM is optional and imported only when needed):

- :func:`from_py4dstem`: py4DSTEM ``DataCube`` -> ``STEM4D``/``LazySTEM4D``;
- :func:`to_py4dstem`: 2+2 dimensional HyperSpy signal -> ``DataCube``;
- :func:`load_py4dstem`: read the DataCube of a py4DSTEM (EMD 1.0) file
  with h5py alone (no py4DSTEM needed);
- :func:`as_signal`: accept a HyperSpy signal or a DataCube wherever a signal
  is expected.

Readers:

- :func:`load`: any supported 4D-STEM file (RosettaSciIO formats, fpd HDF5,
  py4DSTEM EMD 1.0) as a ``STEM4D``/``LazySTEM4D``;
- :func:`load_fpd_hdf5`: HDF5 files of the ``fpd`` package (Merlin scans).

Importing this package imports neither py4DSTEM nor HyperSpy.
"""

from hyperspy_cnmf.io._fpd import load_fpd_hdf5
from hyperspy_cnmf.io._load import load
from hyperspy_cnmf.io._py4dstem import (
    as_signal,
    from_py4dstem,
    load_py4dstem,
    to_py4dstem,
)

__all__ = [
    "from_py4dstem",
    "to_py4dstem",
    "load_py4dstem",
    "as_signal",
    "load_fpd_hdf5",
    "load",
]
