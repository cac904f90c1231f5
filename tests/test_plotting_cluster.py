"""Figures of the clustering (hyperspy_cnmf.plotting._cluster): pixels without data."""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors

from hyperspy_cnmf.plotting._cluster import (
    MASKED_COLOR,
    MASKED_NOTE,
    diffraction_cmap,
    plot_gallery,
)


def _beam_masked(n=3, q=21):
    """Patterns: a halo ring, zero intensity in a corner, the direct-beam disk NaN."""
    yy, xx = np.mgrid[:q, :q]
    r = np.hypot(yy - q // 2, xx - q // 2)
    F = np.repeat((1 + 100 * np.exp(-((r - 7) ** 2)))[None], n, axis=0)
    F[:, r <= 2] = np.nan  # left out of the fit
    F[:, 0, 0] = 0.0  # no intensity
    return F, np.ones((n, 6, 6))


def _diffraction_images(fig):
    return [
        im
        for ax in fig.axes
        for im in ax.get_images()
        if np.ma.is_masked(im.get_array()) or im.get_array().shape == (21, 21)
    ]


def test_gallery_draws_pixels_without_data_grey_not_dark():
    F, M = _beam_masked()
    fig = plot_gallery(F, M)
    images = _diffraction_images(fig)
    assert len(images) == 3
    grey = colors.to_rgba(MASKED_COLOR)
    for norm in ("log", "gamma", "linear"):
        fig = plot_gallery(F, M, norm=norm)
        for im in _diffraction_images(fig):
            rgba = im.to_rgba(im.get_array())
            np.testing.assert_allclose(rgba[10, 10], grey)  # the beam disk: no data
            # zero intensity is the colour map's dark end, distinct from "no data"
            np.testing.assert_allclose(rgba[0, 0], im.cmap(0.0))
            assert np.abs(np.subtract(rgba[0, 0], grey)).max() > 0.3
        assert MASKED_NOTE in fig._suptitle.get_text()
    plt.close("all")


def test_gallery_without_masked_pixels_has_no_note():
    F, M = _beam_masked()
    F = np.nan_to_num(F, nan=5.0)
    fig = plot_gallery(F, M)
    assert MASKED_NOTE not in fig._suptitle.get_text()
    plt.close("all")


def test_diffraction_cmap_keeps_the_colours():
    base = plt.get_cmap("inferno")
    cmap = diffraction_cmap("inferno")
    x = np.linspace(0, 1, 11)
    np.testing.assert_allclose(cmap(x), base(x))
    np.testing.assert_allclose(
        cmap(np.ma.masked_invalid([np.nan]))[0], colors.to_rgba(MASKED_COLOR)
    )
