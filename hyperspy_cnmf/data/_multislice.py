"""Reader of the multislice (abTEM) test cases made by ``shared/tools/simulate_abtem_4dstem.py``.

Each case is one ``.npz`` file: the noisy counts ``data_noisy`` (scan_y, scan_x, k_y, k_x),
the geometric truth ``labels`` / ``grain_phase`` and a JSON ``metadata_json`` with the
calibration. :func:`load_multislice_case` turns it into a calibrated 4D-STEM signal, as a user
would set it up from the microscope, plus its truth.
"""

import json

import numpy as np

__all__ = ["load_multislice_case"]


def load_multislice_case(path, lazy=False, key="data_noisy"):
    """A multislice test case as a calibrated :class:`~hyperspy_cnmf.signals.STEM4D` and its truth.

    Parameters
    ----------
    path : str or path-like
        An ``.npz`` file written by ``simulate_abtem_4dstem.py``.
    lazy : bool, default False
        Return a :class:`~hyperspy_cnmf.signals.LazySTEM4D` (dask chunks of 16 scan rows).
    key : str, default "data_noisy"
        The array to analyse (``"data_noisy"``: Poisson counts; ``"data_noisy_nodescan"`` in a
        descan case: the same scan without the beam's drift).

    Returns
    -------
    signal : STEM4D or LazySTEM4D
        float32 counts; navigation axes in nm (scan step), signal axes in mrad with the origin on
        the direct beam (``direct_beam_px``); ``Acquisition_instrument.TEM.beam_energy`` (keV) and
        ``convergence_angle`` (mrad) set.
    truth : dict
        ``phase_map`` (scan_y, scan_x) int (0 glass, 1 B2-CuZr, 2 fcc-Cu, 3 CuZr2: the phase of the
        grain whose projected disk holds the probe centre), ``labels`` (grain of each position, 0
        none), ``grain_phase`` (phase of each label), ``n_phases`` (distinct phases, glass
        included), ``n_grains`` and ``metadata`` (the file's parameters).

    Raises
    ------
    KeyError
        If the file lacks ``key`` or the truth arrays.
    """
    import hyperspy.api as hs

    with np.load(path) as z:
        data = np.asarray(z[key], dtype=np.float32)
        labels = np.asarray(z["labels"])
        grain_phase = np.asarray(z["grain_phase"])
        md = json.loads(str(z["metadata_json"]))
    s = hs.signals.Signal2D(data)
    for ax in s.axes_manager.navigation_axes:
        ax.scale, ax.units = md["scan_step_A"] / 10.0, "nm"
    dq = md["detector_mrad_per_px"]
    for ax, centre in zip(s.axes_manager.signal_axes, md["direct_beam_px"][::-1]):
        ax.scale, ax.units, ax.offset = dq, "mrad", -centre * dq
    s.metadata.set_item("Acquisition_instrument.TEM.beam_energy", md["energy_eV"] / 1e3)
    s.metadata.set_item(
        "Acquisition_instrument.TEM.convergence_angle", md["semiangle_mrad"]
    )
    s.metadata.General.title = str(path).rsplit("/", 1)[-1]
    s.set_signal_type("4D-STEM")
    if lazy:
        s = s.as_lazy()
        s.data = s.data.rechunk((16, -1, -1, -1))
    phase_map = grain_phase[labels]
    truth = {
        "phase_map": phase_map,
        "labels": labels,
        "grain_phase": grain_phase,
        "n_phases": int(np.unique(phase_map).size),
        "n_grains": int(grain_phase.size - 1),
        "metadata": md,
    }
    return s, truth
