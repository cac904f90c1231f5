"""The report's and the diagnostics' scan steps and masks, as the decomposition reads them (issue 13, follow-ups).

* ``report.nav_scale`` and the diagnostics' map spectra use the pint-converted
  steps of ``navigation_scales`` (x and y in one unit);
* ``report.reconstruction_mse`` / ``mean_pattern_mse`` place ``signal_mask``
  by its shape (array order or ``signal_shape``, x first), as the
  decomposition does, and refuse a flat vector.
"""

import warnings

import numpy as np
import pytest

from hyperspy_cnmf import report
from hyperspy_cnmf.signals import STEM4D, _diagnostics
from hyperspy_cnmf.signals._calibration import navigation_scales

SIG = (10, 14)  # non-square detector


def _signal(y_units="nm", y_scale=0.5):
    rng = np.random.default_rng(0)
    s = STEM4D(rng.poisson(5.0, size=(6, 8) + SIG).astype(np.float32))
    ax_x, ax_y = s.axes_manager.navigation_axes
    ax_x.units, ax_x.scale = "nm", 0.5
    ax_y.units, ax_y.scale = y_units, y_scale
    return s


def test_nav_scale_converts_units():
    same, mixed = _signal(), _signal(y_units="Å", y_scale=5.0)  # the same 0.5 nm steps
    assert report.nav_scale(same) == pytest.approx((0.5, 0.5))
    assert report.nav_scale(mixed) == pytest.approx((0.5, 0.5))
    assert _diagnostics._nav_scale(mixed) == pytest.approx(navigation_scales(same)[:2])
    with pytest.raises(ValueError, match="incompatible units"):
        report.nav_scale(_signal(y_units="px", y_scale=1.0))


def test_report_masks_are_placed_by_shape():
    s = _signal()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.decomposition(
            algorithm="constrained_nmf",
            output_dimension=2,
            max_iter=3,
            random_state=0,
            direct_beam_mask=False,
            print_info=False,
            show_progressbar=False,
        )
    mask = np.zeros(SIG, bool)
    mask[:3, :5] = True  # not symmetric: a wrong placement changes the numbers
    for f in (report.reconstruction_mse, report.mean_pattern_mse):
        array_order = f(s, signal_mask=mask)
        assert f(s, signal_mask=mask.T) == array_order  # signal_shape (x first)
        assert array_order != f(s)
        with pytest.raises(ValueError, match="signal_mask must be"):
            f(s, signal_mask=mask.ravel())
