"""Tests of clustering.cluster_components on plain arrays (no HyperSpy).

A small synthetic over-complete decomposition: an amorphous matrix split into
two tiles, hexagonal and square grains (one hexagonal grain split into two
halves with slightly rotated patterns), and a direct-beam-only component
whose map follows the matrix, as an over-complete NMF makes from thickness
variations.
"""

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import adjusted_rand_score

from hyperspy_cnmf import clustering as cl
from hyperspy_cnmf.data._simulate import render_bragg_pattern, render_matrix_pattern

SHAPE = (48, 48)  # detector (qy, qx)
CENTRE = (24.0, 24.0)  # (x, y) px
SCAN = (20, 24)  # navigation (ny, nx), non-square
GRAINS = (  # (row, column) centre, radius (px), phase, rotation (deg)
    ((5.0, 6.0), 3.5, 1, 10.0),
    ((13.0, 17.0), 4.0, 2, 30.0),
    ((14.0, 5.0), 3.0, 1, 47.0),
)


def _pattern(phase, rotation):
    if phase == 0:
        return render_matrix_pattern(SHAPE, CENTRE, 0.4, 1.0)
    return render_bragg_pattern(SHAPE, CENTRE, 0.4, 1.0, phase, rotation)


def _disc(centre, radius):
    """Projected thickness of a sphere, ``sqrt(1 - (r / R)^2)``: zero at the rim."""
    yy, xx = np.indices(SCAN, dtype=float)
    r = np.hypot(yy - centre[0], xx - centre[1])
    return np.sqrt(np.clip(1.0 - (r / (radius + 0.5)) ** 2, 0.0, None))


def synthetic(beam=True, map_noise=0.0, seed=0):
    """factors (k, qy, qx), loadings (k, n), phase per component, true phase map."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(SCAN, dtype=float)
    grains = [_disc(c, r) for c, r, _, _ in GRAINS]
    matrix_map = 1.0 - 0.7 * np.sum(grains, axis=0)
    left = 1 / (1 + np.exp((xx - SCAN[1] / 2) / 2.0))
    F, L, phase = [], [], []
    for part in (left, 1 - left):  # the matrix in two tiles
        F.append(_pattern(0, 0))
        L.append(matrix_map * part)
        phase.append(0)
    for i, ((gy, gx), _, ph, rot) in enumerate(GRAINS):
        if i == 0:  # split grain: two halves, patterns 2.5 deg apart
            side = 1 / (1 + np.exp(-(xx - gx) / 1.0))
            for part, delta in ((side, -1.0), (1 - side, 1.5)):
                F.append(_pattern(ph, rot + delta))
                L.append(grains[i] * part)
                phase.append(ph)
        else:
            F.append(_pattern(ph, rot))
            L.append(grains[i])
            phase.append(ph)
    if beam:
        r = np.hypot(*(np.indices(SHAPE) - np.array(CENTRE)[::-1, None, None]))
        F.append(np.where(r <= 2.0, F[0].max(), 0.0))
        L.append(0.3 * matrix_map * (1 + 0.1 * (xx / SCAN[1] - 0.5)))
        phase.append(-1)
    F = np.clip(np.array(F), 0, None)
    L = np.array(L) + map_noise * rng.standard_normal((len(L),) + SCAN)
    scale = rng.uniform(0.1, 10.0, len(F))  # the NMF scale is arbitrary
    truth = np.zeros(SCAN, dtype=int)
    for (c, r, ph, _), g in zip(GRAINS, grains):
        truth[g > 0] = ph  # geometric: the probe position inside the projected disk
    return (
        F * scale[:, None, None],
        L.reshape(len(L), -1) / scale[:, None],
        np.array(phase),
        truth,
    )


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module")
def result(data):
    factors, loadings, _, _ = data
    return cl.cluster_components(factors, loadings, CENTRE, nav_shape=SCAN)


def test_core_does_not_import_hyperspy_or_dask():
    code = (
        "import sys, numpy as np\n"
        "from hyperspy_cnmf.clustering import cluster_components\n"
        "import hyperspy_cnmf._schema\n"
        "bad = [m for m in ('hyperspy', 'dask', 'py4DSTEM') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_components_group_by_phase(result, data):
    _, _, phase, _ = data
    crystal = phase >= 0
    assert result.labels.max() + 1 == 3
    assert adjusted_rand_score(phase[crystal], result.labels[crystal]) == 1
    assert result.labels.dtype == np.int64 and result.components.tolist() == list(
        range(phase.size)
    )
    k = phase.size
    assert result.pseudo_distance.shape == result.similarity.shape == (k, k)
    assert result.linkage.shape == (k - 1, 4)
    assert np.allclose(result.pairwise_rotation, -result.pairwise_rotation.T, atol=1e-9)


def test_beam_only_component_attached_by_map(result, data):
    _, _, phase, _ = data
    beam = phase == -1
    assert result.beam_only.tolist() == beam.tolist()
    matrix = result.labels[np.flatnonzero(phase == 0)[0]]
    assert result.labels[beam][0] == matrix
    assert result.rotation[beam][0] == 0 and not result.mirrored[beam][0]
    assert not result.beam_only[result.references].any()


def test_beam_only_switched_off_and_warning(data):
    factors, loadings, phase, _ = data
    res = cl.cluster_components(
        factors, loadings, CENTRE, nav_shape=SCAN, min_structure_fraction=0
    )
    assert not res.beam_only.any()
    assert res.labels.max() + 1 == 4  # the beam component is a cluster of its own
    # the cut is made among the structured components: the beam takes no slot
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = cl.cluster_components(
            factors, loadings, CENTRE, nav_shape=SCAN, n_clusters=3
        )
    assert res.labels.max() + 1 == 3 and res.beam_only[-1]
    assert res.labels[-1] == res.labels[0]  # joined the matrix by its map
    res = cl.cluster_components(factors, loadings, CENTRE, nav_shape=SCAN, n_clusters=4)
    assert res.labels.max() + 1 == 4
    assert all((~res.beam_only[res.labels == c]).any() for c in range(4))


def test_split_grain_and_matrix_tiles_form_one_object_each(result, data):
    _, _, phase, _ = data
    # matrix tiles (+ beam component) -> 1 object; split grain halves -> 1
    assert result.objects.tolist()[:4] == [0, 0, 1, 1]
    assert result.objects.max() + 1 == 1 + len(GRAINS) + 1  # + the beam map
    assert len(set(result.objects[4:6])) == 2  # distinct grains stay apart


def test_position_labels_match_the_phase_map(result, data):
    _, _, _, truth = data
    pos = result.position_labels
    assert pos.shape == (SCAN[0] * SCAN[1],) and pos.dtype == np.int64
    assert adjusted_rand_score(truth.ravel(), pos) >= 0.9
    assert np.mean(pos == 0) == pytest.approx(np.mean(truth == 0), abs=0.05)
    assert np.array_equal(np.argmin(result.distances, axis=0), pos)
    n_c = result.references.size
    counts = np.bincount(pos, minlength=n_c)
    assert list(counts) == sorted(counts, reverse=True)  # ordered by dominated area


def test_merged_results_in_data_units(result, data):
    factors, loadings, _, _ = data
    total = np.sum(loadings.sum(1) * factors.sum((1, 2)))
    n_c = result.references.size
    assert result.merged_maps.shape == (n_c, SCAN[0] * SCAN[1])
    assert np.nansum(result.merged_maps) == pytest.approx(total, rel=1e-9)
    assert result.merged_factors.shape == (n_c,) + SHAPE
    assert np.nansum(result.merged_factors) == pytest.approx(total, rel=0.05)
    assert result.centroids.shape == (n_c,) + SHAPE
    for c, ref in enumerate(result.references):
        assert result.labels[ref] == c and result.rotation[ref] == 0


def test_parameters_and_geometry(result, data):
    params = json.loads(json.dumps(result.parameters))
    assert params["centre_px"] == list(CENTRE)
    assert params["direct_beam_radius_px"] > 0  # "auto" resolved
    assert params["threshold"] == result.threshold == cl.DEFAULT_DISTANCE_THRESHOLD
    assert result.centre.tolist() == list(CENTRE)
    assert result.radii[0] == 0 and result.radii[-1] == 23
    assert result.n_theta == params["n_theta"]
    # the centre found on the weighted sum of the factors
    factors, loadings, _, _ = data
    auto = cl.cluster_components(factors, loadings, nav_shape=SCAN)
    assert auto.centre == pytest.approx(CENTRE, abs=0.3)
    assert np.array_equal(auto.labels, result.labels)
    sub = cl.cluster_components(
        factors[:4], loadings[:4], CENTRE, nav_shape=SCAN, components=[3, 5, 7, 9]
    )
    assert sub.components.tolist() == [3, 5, 7, 9]
    assert sub.parameters["components"] == [3, 5, 7, 9]


def test_noisy_maps_with_map_smoothing(data):
    _, _, _, truth = data
    factors, loadings, _, _ = synthetic(map_noise=0.15, seed=1)
    res = cl.cluster_components(
        factors, loadings, CENTRE, nav_shape=SCAN, map_smoothing=1.0
    )
    assert adjusted_rand_score(truth.ravel(), res.position_labels) >= 0.85
    # the stored maps are not smoothed (clusters are numbered by the positions
    # they dominate, which the smoothing changes: compare cluster by cluster)
    plain = cl.cluster_components(factors, loadings, CENTRE, nav_shape=SCAN)
    assert adjusted_rand_score(res.labels, plain.labels) == 1
    same = [plain.labels[res.labels == c][0] for c in range(res.labels.max() + 1)]
    assert np.array_equal(res.merged_maps, plain.merged_maps[same])


def test_masked_positions_and_pixels(result, data):
    factors, loadings, _, _ = data
    factors, loadings = factors.copy(), loadings.copy()
    factors[:, 20:23, 30:33] = np.nan
    loadings[:, :5] = np.nan
    res = cl.cluster_components(factors, loadings, CENTRE, nav_shape=SCAN)
    assert np.array_equal(res.labels, result.labels)
    assert (res.position_labels[:5] == -1).all()
    assert np.isnan(res.distances[:, :5]).all()
    assert np.isnan(res.merged_maps[:, :5]).all()


def test_errors(data):
    factors, loadings, _, _ = data
    with pytest.raises(ValueError, match="k, qy, qx"):
        cl.cluster_components(factors[0], loadings, CENTRE)
    with pytest.raises(ValueError, match="loadings"):
        cl.cluster_components(factors, loadings[:3], CENTRE)
    with pytest.raises(ValueError, match="At least 2"):
        cl.cluster_components(factors[:1], loadings[:1], CENTRE)
    with pytest.raises(ValueError, match="nav_shape"):
        cl.cluster_components(factors, loadings, CENTRE, nav_shape=(5, 5))
    with pytest.raises(ValueError, match="outside the pattern"):
        cl.cluster_components(factors, loadings, (60.0, 10.0), nav_shape=SCAN)
    with pytest.raises(ValueError, match="direct_beam_radius"):
        cl.cluster_components(factors, loadings, CENTRE, direct_beam_radius="big")
    with pytest.raises(ValueError, match="components"):
        cl.cluster_components(factors, loadings, CENTRE, components=[0, 1])
    with pytest.raises(ValueError, match="not both"):
        cl.cluster_components(
            factors, loadings, CENTRE, n_clusters=2, distance_threshold=0.3
        )
    with pytest.warns(UserWarning, match="negative"):
        cl.cluster_components(
            factors - 0.5 * factors.max(), loadings, CENTRE, n_clusters=3
        )


def test_invariant_to_rotation_of_all_factors(result, data):
    factors, loadings, _, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        turned = np.clip(
            np.nan_to_num(cl.rotate_patterns(factors, CENTRE, 33.0)), 0, None
        )
    res = cl.cluster_components(turned, loadings, CENTRE, nav_shape=SCAN)
    assert adjusted_rand_score(res.labels, result.labels) == 1
    assert np.array_equal(res.position_labels, result.position_labels)


def test_pattern_clustering_labels_all_patterns():
    factors, _, phase, _ = synthetic(beam=False)
    stack = factors / factors.sum((1, 2), keepdims=True)
    picked = [0, 2, 4, 5]  # one per object
    blocks = (stack[i : i + 3] for i in range(0, len(stack), 3))
    res = cl.cluster_patterns(
        stack[picked], centre=CENTRE, positions=picked, all_patterns=blocks, step=(2,)
    )
    assert res.position_labels.shape == (len(stack),)
    assert adjusted_rand_score(phase, res.position_labels) == 1
    assert np.array_equal(res.position_labels[picked], res.labels)
    assert res.distances.shape == (res.references.size, len(stack))
    assert res.parameters["step"] == [2] and res.step.tolist() == [2]
    assert res.merged is res.merged_factors
    assert res.centroids.shape == (res.references.size,) + SHAPE


def test_map_artefacts_flag_single_positions_and_the_scan_edge(data):
    factors, loadings, _, _ = data
    extra = np.zeros((2,) + SCAN)
    extra[0, 10, 11] = 5.0  # one probe position
    extra[1, -1, 3:9] = 5.0  # the last scan row only
    L = np.vstack([loadings, extra.reshape(2, -1)])
    F = np.concatenate([factors, factors[4:6]])
    flags = cl.map_artefacts(L, SCAN)
    assert flags.tolist() == [0] * len(loadings) + [1, 2]
    res = cl.cluster_components(F, L, CENTRE, nav_shape=SCAN)
    assert res.map_artefact.tolist() == flags.tolist()


def test_direct_beam_radius_beyond_the_radial_range_raises(data):
    """No k singleton clusters: a beam radius that masks every ring is refused."""
    factors, loadings, _, _ = data
    with pytest.raises(ValueError, match="masks every ring"):
        cl.cluster_components(
            factors, loadings, CENTRE, nav_shape=SCAN, direct_beam_radius=30.0
        )
    with pytest.raises(ValueError, match="masks every ring"):
        cl.cluster_components(
            factors,
            loadings,
            CENTRE,
            nav_shape=SCAN,
            radial_range=(0, 10),
            direct_beam_radius=12.0,
        )


def with_speckle(n=8, seed=1):
    """:func:`synthetic` plus ``n`` speckle components of the amorphous matrix.

    As an over-complete NMF fits an amorphous matrix's speckle (multislice
    cases of ``benchmarks/quality_physics.py`` at k = 30): the matrix pattern
    plus a Friedel pair of spots on its halo at a random azimuth, and a map
    that is a speckle field over the whole scan (intensity of a complex
    Gaussian field smoothed to the probe's size: exponential statistics).
    """
    factors, loadings, phase, truth = synthetic(beam=False)
    rng = np.random.default_rng(seed)
    matrix = _pattern(0, 0)
    yy, xx = np.indices(SHAPE, dtype=float) - np.array(CENTRE)[::-1, None, None]
    r = np.hypot(yy, xx).astype(int)
    profile = np.bincount(r.ravel(), matrix.ravel()) / np.bincount(r.ravel())
    halo = 4 + np.argmax(profile[4:])
    F, L = [], []
    for _ in range(n):
        a = rng.uniform(0, np.pi)
        spots = sum(
            np.exp(
                -((xx - s * halo * np.cos(a)) ** 2 + (yy - s * halo * np.sin(a)) ** 2)
                / 2
            )
            for s in (1, -1)
        )
        F.append(matrix / matrix.sum() + 0.5 * spots / spots.sum())
        field = [ndimage.gaussian_filter(rng.standard_normal(SCAN), 0.7) for _ in "ab"]
        speckle = np.hypot(*field) ** 2
        L.append(0.3 * speckle.ravel() / speckle.max())
    scale = np.nansum(factors[0]) * np.nanmax(loadings[0])
    return (
        np.concatenate([factors, scale * np.array(F)]),
        np.concatenate([loadings, np.array(L)]),
        np.r_[phase, np.zeros(n, dtype=int)],
        truth,
    )


def test_map_compactness_tells_objects_from_textures():
    factors, loadings, phase, _ = with_speckle()
    compact = cl.map_compactness(loadings, SCAN)
    assert compact.shape == (phase.size,)
    objects, speckle = compact[:6], compact[6:]  # matrix tiles, grains | speckle
    assert objects.min() > 0.9 and speckle.max() < cl.MIN_MAP_COMPACTNESS
    # the noise of a grain's map on a larger scan is left out with the noise
    # floor (measured 0.90 with it, 0.23 without)
    yy, xx = np.indices((64, 64))
    grain = np.clip(1 - ((yy - 30) ** 2 + (xx - 20) ** 2) / 16.0, 0, None)
    noisy = grain + 0.05 * np.random.default_rng(0).standard_normal(grain.shape)
    assert cl.map_compactness(noisy.reshape(1, -1), (64, 64))[0] > 0.8
    assert cl.map_compactness(noisy.reshape(1, -1), (64, 64), noise_floor=0)[0] < 0.3


def test_speckle_components_join_the_matrix_as_one_item():
    factors, loadings, phase, truth = with_speckle()
    res = cl.cluster_components(factors, loadings, CENTRE, nav_shape=SCAN)
    speckle = np.arange(phase.size) >= 6
    assert np.array_equal(res.texture, speckle)
    assert res.labels.max() + 1 == 3  # matrix and two phases
    assert adjusted_rand_score(phase, res.labels) == 1
    assert adjusted_rand_score(truth.ravel(), res.position_labels) >= 0.9
    assert res.parameters["min_map_compactness"] == cl.MIN_MAP_COMPACTNESS
    # without the rule the speckle components form a cluster of their own
    off = cl.cluster_components(
        factors, loadings, CENTRE, nav_shape=SCAN, min_map_compactness=0
    )
    assert not off.texture.any() and off.labels.max() + 1 == 4
    assert np.unique(off.labels[speckle]).size == 1
    assert off.labels[speckle][0] not in off.labels[~speckle]
    # too many clusters asked for: the rule is off and nothing is flagged
    many = cl.cluster_components(
        factors, loadings, CENTRE, nav_shape=SCAN, n_clusters=phase.size - 2
    )
    assert not many.texture.any() and many.labels.max() + 1 == phase.size - 2
    # n_clusters counts the texture group as one item
    two = cl.cluster_components(factors, loadings, CENTRE, nav_shape=SCAN, n_clusters=2)
    assert two.labels.max() + 1 == 2 and np.unique(two.labels[phase == 0]).size == 1


def test_clusters_dominating_few_positions_are_dissolved():
    # one extra component: a third phase seen at a single probe position (a
    # noise fit or a grain fragment of an over-complete NMF)
    factors, loadings, phase, truth = synthetic(beam=False)
    spot = np.zeros(SCAN)
    spot[17, 20] = 1.0
    spot = ndimage.gaussian_filter(spot, 0.7).ravel()
    extra = _pattern(3, 20.0) * np.nansum(factors[0]) / _pattern(3, 20.0).sum()
    factors = np.concatenate([factors, extra[None]])
    loadings = np.concatenate(
        [loadings, 2 * loadings[0].max() * spot[None] / spot.max()]
    )
    kept = cl.cluster_components(
        factors, loadings, CENTRE, nav_shape=SCAN, max_enclosure=None
    )
    assert kept.labels.max() + 1 == 4
    assert 0 < np.count_nonzero(kept.position_labels == kept.labels[-1]) < 10
    res = cl.cluster_components(
        factors,
        loadings,
        CENTRE,
        nav_shape=SCAN,
        min_cluster_positions=10,
        max_enclosure=None,
    )
    assert res.labels.max() + 1 == 3 and res.parameters["dissolved_clusters"] == 1
    # the spot touches a grain of another phase: not a piece of it (default max_enclosure)
    kept = cl.cluster_components(factors, loadings, CENTRE, nav_shape=SCAN)
    assert kept.labels.max() + 1 == 4 and kept.parameters["joined_clusters"] == 0
    assert adjusted_rand_score(res.labels[:-1], kept.labels[:-1]) == 1
    assert adjusted_rand_score(
        truth.ravel(), res.position_labels
    ) >= adjusted_rand_score(truth.ravel(), kept.position_labels)
    # an explicit n_clusters is kept as asked
    four = cl.cluster_components(
        factors,
        loadings,
        CENTRE,
        nav_shape=SCAN,
        n_clusters=4,
        min_cluster_positions=10,
    )
    assert four.labels.max() + 1 == 4 and four.parameters["dissolved_clusters"] == 0


def _disc_labels(shape, discs):
    """Position labels: 0 (matrix) with discs ``(row, col, radius, label)`` drawn in order."""
    yy, xx = np.indices(shape)
    pos = np.zeros(shape, dtype=np.int64)
    for y, x, r, lab in discs:
        pos[np.hypot(yy - y, xx - x) <= r] = lab
    return pos


def test_pieces_of_one_grain_join_touching_grains_do_not():
    from hyperspy_cnmf.clustering._components import _enclosure, _join_enclosed

    shape, bg = (30, 30), np.array([True, False, False])
    # a grain split into its rim (1) and core (2): the core is enclosed by the rim
    split = _disc_labels(shape, [(15, 15, 6, 1), (15, 15, 3, 2)])
    encloser, share = _enclosure(split.ravel(), shape, bg)
    assert encloser[2] == 1 and share[2] == 1.0 and encloser[1] == -1
    near = np.ones((3, 3), dtype=bool)  # the pieces diffract alike
    labels, joined = _join_enclosed(np.arange(3), split.ravel(), shape, bg, 0.4, near)
    assert joined == 1 and labels.tolist() == [0, 1, 1]
    # a patch of a grain's positions (2) off its centre, within the grain (1)
    patch = _disc_labels(shape, [(15, 15, 6, 1), (13, 17, 2, 2)])
    _, share = _enclosure(patch.ravel(), shape, bg)
    assert share[2] == 1.0
    # two grains of different phases that touch (and overlap by 1 step in
    # projection): a small part of the smaller one's border
    for gap in (0, 1):
        touching = _disc_labels(shape, [(15, 10, 6, 1), (15, 10 + 6 + 3 - gap, 3, 2)])
        _, share = _enclosure(touching.ravel(), shape, bg)
        assert share[2] < 0.3
        labels, joined = _join_enclosed(
            np.arange(3), touching.ravel(), shape, bg, 0.4, near
        )
        assert joined == 0 and labels.tolist() == [0, 1, 2]
    # a larger cluster is never joined to a smaller one that borders it
    _, share = _enclosure(split.ravel(), shape, bg)
    assert share[1] == 0
    # a grain of another phase inside a larger one (no member diffracts alike) stays
    far = np.eye(3, dtype=bool)
    labels, joined = _join_enclosed(np.arange(3), split.ravel(), shape, bg, 0.4, far)
    assert joined == 0 and labels.tolist() == [0, 1, 2]


def test_over_complete_grain_pieces_and_textures_rejoin():
    """An over-complete fit's pieces: a grain split into core and rim components
    (different reflections, so the diffraction keeps them apart) joins as one
    cluster; with ``max_enclosure=None`` they stay two."""
    factors, loadings, phase, truth = with_speckle()
    big = 1  # GRAINS[1], phase 2, radius 4: split into core and rim components
    gi = int(np.flatnonzero(phase == 2)[0])
    (gy, gx), radius, ph, rot = GRAINS[big]
    yy, xx = np.indices(SCAN, dtype=float)
    core = (np.hypot(yy - gy, xx - gx) <= radius / 2).ravel()
    # the rim's reflections: the phase's pattern; the core's: a third of them and
    # others (thickness-dependent excitation), pseudo-distance 0.47 to the rim's:
    # apart in the cut (0.3), alike enough for a piece (within 2 x 0.3)
    other = 0.35 * factors[gi] / np.nansum(factors[gi])
    other = other + 0.65 * _pattern(3, rot) / _pattern(3, rot).sum()
    other = other * np.nansum(factors[gi])
    rim_map = np.where(core, 0.0, loadings[gi])
    core_map = np.where(core, loadings[gi], 0.0)
    factors = np.concatenate([factors, other[None]])
    loadings = np.concatenate([loadings, core_map[None]])
    loadings[gi] = rim_map
    kw = dict(nav_shape=SCAN, min_cluster_positions=3)
    res = cl.cluster_components(factors, loadings, CENTRE, **kw)
    off = cl.cluster_components(factors, loadings, CENTRE, max_enclosure=None, **kw)
    assert off.labels[gi] != off.labels[-1]
    assert res.labels[gi] == res.labels[-1]
    assert res.labels.max() + 1 == off.labels.max()
    assert res.parameters["max_enclosure"] == cl.MAX_ENCLOSURE
    assert res.parameters["joined_clusters"] == 1
    for bad in (0, -0.1, 1.5):  # None, not 0, switches the rule off
        with pytest.raises(ValueError, match="max_enclosure"):
            cl.cluster_components(factors, loadings, CENTRE, max_enclosure=bad, **kw)
    # the grain's core and rim positions carry one label, as an unsplit grain's do
    grain = truth.ravel() == 2
    for r, n in ((res, 1), (off, 2)):
        held = r.position_labels[grain]
        assert np.unique(held[held != r.labels[0]]).size == n  # the matrix aside
    assert np.all(res.position_labels[core] == res.labels[gi])
    assert adjusted_rand_score(truth.ravel(), res.position_labels) >= 0.9


def test_unmixing_gives_texture_held_reflections_back_to_the_grain():
    """Speckle components that also hold a share of a grain's reflections (as an
    over-complete NMF of a glass with grains leaves them): the positions' model
    re-expressed with the texture group as one pattern returns that share to the
    grain's component, within the grain only."""
    from hyperspy_cnmf.clustering._components import _annulus, _unmixed_contributions

    factors, loadings, phase, truth = with_speckle()
    gi = int(np.flatnonzero(phase == 2)[0])
    tex = np.arange(phase.size) >= 6
    grain = loadings[gi].copy()
    unit = factors[gi] / np.nansum(factors[gi])
    for i in np.flatnonzero(tex)[
        :2
    ]:  # two speckle components with half the grain's spots
        factors[i] = factors[i] + np.nansum(factors[i]) * unit
        loadings[i] = loadings[i] + 0.5 * loadings[i].max() * grain / grain.max()
    contrib = loadings * np.nansum(factors, axis=(1, 2))[:, None]
    annulus = _annulus(SHAPE, CENTRE, np.arange(3.0, 23.0), 2.0).ravel()
    labels = np.r_[0, 0, 1, 1, 2, 1, np.zeros(8, dtype=int)]  # matrix, phase 1, phase 2
    args = (factors, loadings, contrib, labels, np.zeros(phase.size, bool))
    out = _unmixed_contributions(*args, tex, annulus)
    inside = grain > 0.2 * grain.max()
    # the speckle components held 0.61 of the grain's own counts inside the grain;
    # measured 1.24
    assert out[gi][inside].sum() / contrib[gi][inside].sum() > 1.15
    # the counts of the model are kept, and the matrix tiles keep their shapes
    np.testing.assert_allclose(np.nansum(out), np.nansum(contrib), rtol=0.05)
    assert np.corrcoef(out[0], contrib[0])[0, 1] > 0.95
    # without texture components nothing moves
    same = _unmixed_contributions(*args, np.zeros(phase.size, bool), annulus)
    np.testing.assert_allclose(
        same[:6], contrib[:6], rtol=0.02, atol=1e-9 * contrib.max()
    )


def test_extended_cluster_is_the_one_present_everywhere():
    """No cluster above half its range on most of the scan: the matrix is the one
    with the largest median, even when a grain cluster holds more counts."""
    from hyperspy_cnmf.clustering._components import _extended_clusters

    rng = np.random.default_rng(0)
    n = 400
    matrix = rng.exponential(1.0, n)  # speckle: its range is set by its peaks
    grain = np.zeros(n)
    grain[:40] = 30.0  # a grain cluster with more counts in total
    maps = np.stack([grain, matrix])
    ext = _extended_clusters(maps, np.array([0, 1]), np.zeros(n, bool), (0.0, 100.0))
    assert grain.sum() > matrix.sum() and ext.tolist() == [False, True]
    # a grain cluster whose components carry some of the matrix everywhere, with
    # a median as high as the speckled matrix's (an independent multislice case
    # with a 3.5 mrad probe): the median relative to the map's range decides
    grain = 1.05 * np.median(matrix) + rng.normal(0, 0.01, n)
    grain[:40] += 30.0
    maps = np.stack([grain, matrix])
    assert np.median(grain) > np.median(matrix)  # the former rule took the grain
    ext = _extended_clusters(maps, np.array([0, 1]), np.zeros(n, bool), (0.0, 100.0))
    assert ext.tolist() == [False, True]


def test_grains_in_one_orientation_are_no_texture():
    """Seven precipitates sharing one orientation make one component whose map is dotted
    over the scan (compactness 1/7) like the speckle's, but of object-sized regions: it
    is no texture when the object size is known (``min_cluster_positions``)."""
    from hyperspy_cnmf.clustering._components import (
        MIN_OBJECT_SHARE,
        _object_share,
        _texture,
    )

    shape = (48, 48)
    yy, xx = np.indices(shape, dtype=float)
    centres = [(6, 6), (6, 24), (6, 42), (24, 6), (24, 42), (42, 6), (42, 24)]
    grains = sum(
        np.clip(1 - ((yy - y) ** 2 + (xx - x) ** 2) / 16.0, 0, None) for y, x in centres
    )
    rng = np.random.default_rng(0)
    field = [ndimage.gaussian_filter(rng.standard_normal(shape), 1.2) for _ in "ab"]
    speckle = np.hypot(*field) ** 2
    maps = np.stack([grains, speckle]).reshape(2, -1)
    assert cl.map_compactness(maps, shape).max() < cl.MIN_MAP_COMPACTNESS
    share = _object_share(maps, shape, 15)
    assert share[0] >= MIN_OBJECT_SHARE > share[1]
    no_beam = np.zeros(2, dtype=bool)
    assert _texture(maps, shape, no_beam, cl.MIN_MAP_COMPACTNESS, 15).tolist() == [
        False,
        True,
    ]
    # without an object size both are textures (the former rule)
    assert _texture(maps, shape, no_beam, cl.MIN_MAP_COMPACTNESS).tolist() == [
        True,
        True,
    ]


def _disks(centres, shape=(41, 41), radius=3.0, centre=(20.0, 20.0), halo=0.0):
    """Flat Bragg disks at ``(r, angle_deg, intensity)`` about ``centre`` (+ a halo ring)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    out = np.zeros(shape)
    for r, a, i in centres:
        x = centre[0] + r * np.cos(np.deg2rad(a))
        y = centre[1] + r * np.sin(np.deg2rad(a))
        out += i * (np.hypot(xx - x, yy - y) <= radius)
    if halo:
        out += halo * np.exp(
            -((np.hypot(xx - centre[0], yy - centre[1]) - 14) ** 2) / 8
        )
    return out


def test_bragg_disk_image_marks_disk_centres_not_the_halo():
    p = _disks([(10, 0, 1.0), (10, 90, 0.6), (12, 200, 0.05)], halo=0.5)
    img = cl.bragg_disk_image(p, (20.0, 20.0), 3.0, beam_radius=5.0)
    peaks = np.argwhere(img == ndimage.maximum_filter(img, size=5)) * (img.max() > 0)
    strong = {tuple(q) for q in peaks if img[tuple(q)] > 0.3 * img.max()}
    assert strong == {
        (20, 30),
        (30, 20),
    }  # (y, x) of the two disks; halo and weak disk gone
    # a disk within the beam radius is left out; a pattern without disks gives zeros
    inner = _disks([(2, 0, 1.0)], radius=2.5)
    assert cl.bragg_disk_image(inner, (20.0, 20.0), 3.0, 5.0).max() == 0
    assert cl.bragg_disk_image(np.zeros((41, 41)), (20.0, 20.0), 3.0).max() == 0


def _near_phases():
    """Two phases with disks on one ring, 16 degrees apart in azimuth (as B2-CuZr [001]
    and CuZr2 [100] on the multislice cases): two rotated grains of each, disjoint maps."""
    square = [(10, a, 1.0) for a in (0, 90, 180, 270)]
    rhomb = [(10, a, 1.0) for a in (0, 74, 180, 254)]
    rot = lambda cs, t: [(r, a + t, i) for r, a, i in cs]  # noqa: E731
    factors = [
        _disks(rot(square, 0)),
        _disks(rot(square, 33)),
        _disks(rot(rhomb, 10)),
        _disks(rot(rhomb, 51)),
    ]
    yy, xx = np.mgrid[:32, :32]
    maps = np.stack(
        [
            np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 8.0)
            for y, x in [(7, 7), (7, 24), (24, 7), (24, 24)]
        ]
    )
    mat = 1.0 - 0.8 * maps[:4].sum(0, keepdims=True)
    factors.append(_disks([], halo=1.0) + 0.01)
    maps = np.concatenate([maps, mat])
    return np.stack(factors), maps.reshape(len(factors), -1)


def test_bragg_disk_split_parts_near_phases_and_keeps_rotated_grains():
    f, m = _near_phases()
    kw = dict(nav_shape=(32, 32), direct_beam_radius=5.0)
    merged = cl.cluster_components(f, m, (20.0, 20.0), **kw)
    # the pattern correlation merges the two phases (disks overlap by half at 16 degrees)
    assert (
        merged.labels[0] == merged.labels[2]
        and merged.parameters["split_clusters"] == 0
    )
    res = cl.cluster_components(f, m, (20.0, 20.0), disk_radius=3.0, **kw)
    assert res.labels[0] == res.labels[1] and res.labels[2] == res.labels[3]
    assert res.labels[0] != res.labels[2] and res.parameters["split_clusters"] == 1
    assert res.parameters["disk_radius_px"] == 3.0
    # pieces of one grain (different disks, overlapping maps) stay together
    from hyperspy_cnmf.clustering._components import _split_by_bragg_disks

    d = np.array([[0, 0.6, 0.6], [0.6, 0, 0.05], [0.6, 0.05, 0]])
    regular = np.ones(3, dtype=bool)
    apart = np.array([[1.0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
    overlapping = np.array([[1.0, 1, 1, 0], [0, 1, 1, 1], [0, 1, 1, 1]])
    labels, added = _split_by_bragg_disks(np.zeros(3, int), regular, d, apart, 0.3)
    assert labels[0] != labels[1] == labels[2] and added == 1
    labels, added = _split_by_bragg_disks(
        np.zeros(3, int), regular, d, overlapping, 0.3
    )
    assert labels.tolist() == [0, 0, 0] and added == 0
    # n_clusters given: no split; a bad radius is refused
    fixed = cl.cluster_components(
        f, m, (20.0, 20.0), disk_radius=3.0, n_clusters=2, **kw
    )
    assert fixed.parameters["split_clusters"] == 0
    for bad in (0, -1.0, np.nan):
        with pytest.raises(ValueError, match="disk_radius"):
            cl.cluster_components(f, m, (20.0, 20.0), disk_radius=bad, **kw)


def test_touching_pieces_of_one_crystal_join():
    """A low-dose grain at over-complete k falls into patches (sectors) that no
    cluster encloses; touching patches with one Bragg-disk geometry at zero
    rotation (one crystal) join, a touching grain of another crystal stays."""
    from hyperspy_cnmf.clustering._components import _join_enclosed

    shape = (30, 30)
    yy, xx = np.indices(shape)
    pos = np.zeros(shape, dtype=np.int64)
    grain = np.hypot(yy - 12, xx - 12) <= 6
    angle = np.arctan2(yy - 12, xx - 12)
    pos[grain & (angle < -1.0)] = 1
    pos[grain & (angle >= -1.0) & (angle < 1.2)] = 2
    pos[grain & (angle >= 1.2)] = 3
    pos[np.hypot(yy - 12, xx - 22) <= 4] = 4  # another grain touching sector 2
    bg = np.array([True, False, False, False, False])
    labels = np.arange(5)  # one component per cluster
    near = np.ones((5, 5), dtype=bool)  # all near: the enclosure rule alone decides
    same = np.zeros((5, 5), dtype=bool)
    same[1:4, 1:4] = True  # the sectors: one crystal
    w = np.ones(5)
    out, joined = _join_enclosed(labels, pos.ravel(), shape, bg, 0.99, near, (same, w))
    assert joined == 2 and out[1] == out[2] == out[3] != out[4]
    # without the same-crystal pairs (or with None) nothing is joined at this enclosure
    out, joined = _join_enclosed(labels, pos.ravel(), shape, bg, 0.99, near, None)
    assert joined == 0 and out.tolist() == [0, 1, 2, 3, 4]
    eye = (np.eye(5, dtype=bool), w)
    out, joined = _join_enclosed(labels, pos.ravel(), shape, bg, 0.99, near, eye)
    assert joined == 0
    # a cluster mixing several grains (components 2 and 5 in cluster 2, which
    # touches grain 4; 5 of grain 4's crystal, but the weaker) does not absorb
    # grain 4's clean cluster
    mixed = np.array([0, 1, 2, 3, 4, 2])
    same6 = np.zeros((6, 6), dtype=bool)
    same6[4, 5] = same6[5, 4] = True
    w6 = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.2])
    out, joined = _join_enclosed(mixed, pos.ravel(), shape, bg, 0.99, near, (same6, w6))
    assert joined == 0
    w6[5] = 5.0  # the same pair, now most of cluster 1's counts: one crystal
    out, joined = _join_enclosed(mixed, pos.ravel(), shape, bg, 0.99, near, (same6, w6))
    assert joined == 1 and out[2] == out[4]


def test_same_crystal_needs_one_orientation():
    from hyperspy_cnmf.clustering._components import _same_crystal

    square = [(10, a, 1.0) for a in (0, 90, 180, 270)]
    turned = [(r, a + 33, i) for r, a, i in square]
    disks = np.stack(
        [
            cl.bragg_disk_image(_disks(c), (20.0, 20.0), 3.0, 5.0)
            for c in (square, square, turned)
        ]
    )
    polar, radii, sim = cl.polar_similarity(disks, (20.0, 20.0), direct_beam_radius=5.0)
    kw = dict(
        intensity_transform_function=None, normalize="pearson", radial_weighting="r"
    )
    same = _same_crystal(polar, radii, kw, np.ones(3, dtype=bool))
    assert (
        same[0, 1] and not same[0, 2]
    )  # a rotated grain of the phase: another crystal
    assert (
        sim.pseudo_distance[0, 2] < 0.05
    )  # though the rotation-invariant measure matches
    assert not _same_crystal(polar, radii, kw, np.array([True, False, True]))[0, 1]


def test_refit_guard_keeps_grains_of_a_phase_found_twice_whose_disks_close():
    """The count's grains that a refit must not give to the matrix: regions of a cluster
    with two of them whose model pattern closes as a lattice; a cluster of glass patches
    (disks at random azimuths on the halo) or a phase found once is no such grain."""
    from hyperspy_cnmf.clustering._components import (
        _confirmed_grains,
        _counted_regions,
        _lost_grains,
    )

    grid = [(8 * i, 8 * j) for i in range(-2, 3) for j in range(-2, 3)]
    lattice = [
        (np.hypot(x, y), np.degrees(np.arctan2(y, x)), 1.0)
        for x, y in grid
        if 0 < np.hypot(x, y) <= 18
    ]
    speckle = [(10, a, 1.0) for a in (17, 83, 151, 229, 301)]
    lab = np.zeros((24, 24), int)
    lab[2:6, 2:6] = 1
    lab[2:6, 14:18] = 1
    lab[14:18, 2:6] = 2
    lab[20:22, 20:22] = 3  # a region too small to count, of a cluster after theirs
    loadings = np.stack(
        [np.ones((24, 24)), (lab == 1).astype(float), (lab == 2).astype(float)]
    ).reshape(3, -1)
    counted = _counted_regions(lab.ravel(), (24, 24))
    beam = dict(centre=(20.0, 20.0), disk_radius=3.0, beam_radius=5.0)
    halo = _disks([], halo=0.3) + 0.01
    found = {}
    for name, spots in (("lattice", lattice), ("speckle", speckle)):
        factors = np.stack([halo, _disks(spots), _disks(lattice)])
        found[name] = _confirmed_grains(counted, factors, loadings, **beam)
    # the two grains of cluster 1; the phase found once (cluster 2) is not asked
    assert [g.size for g in found["lattice"]] == [16, 16]
    assert found["speckle"] == []
    trial = lab.copy()
    assert _lost_grains(found["lattice"], trial.ravel()) == 0
    trial[2:6, 14:18] = 0  # one grain to the matrix
    assert _lost_grains(found["lattice"], trial.ravel()) == 1


def test_bragg_disk_image_errors():
    p = np.zeros((41, 41))
    for centre, radius in [
        ((20, 20), 1e4),
        ((20, 20), -1),
        ((20, 20), np.nan),
        ((20, 20), True),
        ((np.nan, 20), 3.0),
        ((20,), 3.0),
    ]:
        with pytest.raises(ValueError, match="disk_radius|centre"):
            cl.bragg_disk_image(p, centre, radius)
    with pytest.raises(ValueError, match="2-D"):
        cl.bragg_disk_image(np.zeros(5), (2, 2), 1.0)
    f, m = _near_phases()
    with pytest.raises(ValueError, match="exceeds the patterns"):
        cl.cluster_components(f, m, (20.0, 20.0), nav_shape=(32, 32), disk_radius=50.0)
    for bad in ("3", True):
        with pytest.raises(ValueError, match="disk_radius"):
            cl.cluster_components(
                f, m, (20.0, 20.0), nav_shape=(32, 32), disk_radius=bad
            )


def test_parted_glass_joins_the_matrix():
    """Glass components that the cut put beside a phase (its ring on the halo) are
    parted by their disk geometry and join the matrix, not a second matrix cluster."""
    from hyperspy_cnmf.clustering._components import _split_by_bragg_disks

    n = 100
    rng = np.random.default_rng(0)
    glass = 1.0 + 0.1 * rng.random(n)
    grain = np.zeros(n)
    grain[:10] = 5.0
    glass[:10] = glass[-10:] = 0.0  # the matrix map dips under the grains
    maps = np.stack([glass, grain, grain[::-1], glass * 0.5])  # 0 matrix, 3 glass-like
    labels = np.array([0, 1, 1, 1])
    d = np.full((4, 4), 0.8)
    d[1, 2] = d[2, 1] = 0.1
    np.fill_diagonal(d, 0.0)
    regular = np.array([False, True, True, True])  # the matrix cluster is exempt
    out, parted = _split_by_bragg_disks(labels, regular, d, maps, 0.4, matrix=0)
    assert parted == 1 and out.tolist() == [0, 1, 1, 0]
    # without a matrix the glass group is a cluster of its own
    out, parted = _split_by_bragg_disks(labels, regular, d, maps, 0.4)
    assert parted == 1 and out.tolist() == [0, 1, 1, 2]


def _three_grains():
    """Maps (3, 32 * 32) of three Gaussian grains at (8, 8), (8, 24) and (24, 16) and
    the matrix's map around them."""
    yy, xx = np.mgrid[:32, :32]
    grains = np.stack(
        [
            np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 8.0)
            for y, x in [(8, 8), (8, 24), (24, 16)]
        ]
    ).reshape(3, -1)
    return grains, 1.0 - 0.8 * grains.sum(0)


def _mixed_component():
    """Three grains (square disks at 0 and 33 degrees, one rhomb at 10) in a halo
    matrix; one component took the square-0 and the rhomb grain (a mixed NMF
    component). Returns factors, maps, the true model per position and the grains."""
    square = [(10, a, 1.0) for a in (0, 90, 180, 270)]
    rhomb = [(10, a, 1.0) for a in (0, 74, 180, 254)]
    rot = lambda cs, t: [(r, a + t, i) for r, a, i in cs]  # noqa: E731
    halo = _disks([], halo=1.0) + 0.01
    true = [_disks(rot(square, 0)), _disks(rot(rhomb, 10)), _disks(rot(square, 33))]
    grains, matrix = _three_grains()
    model = (
        np.tensordot(grains.T, np.stack(true), axes=1)
        + matrix[:, None, None] * halo[None]
    )
    factors = np.stack([0.5 * (true[0] + true[1]), true[2], halo])
    maps = np.stack([grains[0] + grains[1], grains[2], matrix])
    return factors, maps, model, grains > 0.3


def _means(model, counts=None):
    """``region_patterns`` over ``model`` (or a Poisson draw of ``counts * model``)."""
    if counts is not None:
        model = np.random.default_rng(0).poisson(counts * model).astype(float)
    flat = model.reshape(model.shape[0], -1)

    def means(region, filters, at, which):
        n = int(region.max()) + 1
        patterns = np.stack([model[region == r].mean(0) for r in range(n)])
        return patterns, np.einsum("ij,ij->i", flat[at], filters[which])

    return means


def test_grain_patterns_part_a_mixed_component():
    """Each grain is classed by its own mean pattern: the grains of one mixed component
    part, and the square grains of two components meet."""
    f, m, model, grains = _mixed_component()
    kw = dict(nav_shape=(32, 32), direct_beam_radius=5.0, disk_radius=3.0)
    plain = cl.cluster_components(f, m, (20.0, 20.0), **kw)
    pos = plain.position_labels
    assert plain.parameters["grain_regions"] == 0
    assert pos[grains[0]][0] == pos[grains[1]][0]  # the mixed component's grains
    res = cl.cluster_components(f, m, (20.0, 20.0), region_patterns=_means(model), **kw)
    pos = res.position_labels
    g = [np.bincount(pos[grains[i]]).argmax() for i in range(3)]
    assert g[0] == g[2] != g[1] and res.parameters["grain_regions"] >= 3
    assert len(np.unique(pos)) == res.references.size == 3  # matrix, square, rhomb
    # every cluster keeps a member; merged factors and maps follow the new labels
    assert np.bincount(res.labels, minlength=3).min() >= 1
    assert res.merged_factors.shape[0] == res.merged_maps.shape[0] == 3
    # n_clusters given or no disk radius: not used
    fixed = cl.cluster_components(
        f, m, (20.0, 20.0), region_patterns=_means(model), n_clusters=2, **kw
    )
    assert fixed.parameters["grain_regions"] == 0
    with pytest.raises(ValueError, match="region_patterns"):
        cl.cluster_components(
            f,
            m,
            (20.0, 20.0),
            region_patterns=lambda r, f, a, w: (model[:2], np.zeros(a.size)),
            **kw,
        )


def test_map_rises_mark_grains_that_no_cluster_dominates():
    """Matrix positions where the matrix's map stands well above its level form regions;
    its noise, its dips (thinner glass in a grain) and single spikes do not. So do a
    particle cluster's second, weaker grain away from its own, not its rim."""
    from hyperspy_cnmf.clustering._components import (
        MATRIX_RISE,
        MATRIX_RISE_POSITIONS,
        PARTICLE_RISE,
        PARTICLE_RISE_POSITIONS,
        _map_rises,
    )

    rng = np.random.default_rng(3)
    shape = (30, 30)
    yy, xx = np.mgrid[:30, :30]
    bump = np.hypot(yy - 8, xx - 20) <= 3  # a grain the matrix component carries
    dip = np.hypot(yy - 20, xx - 8) <= 3  # a grain of its own: the glass dips
    level = 1.0 + 0.05 * rng.standard_normal(shape)
    level[bump] = 3.0
    level[dip] = 0.6
    level[2, 2] = 5.0  # one position's spike
    contrib = np.stack([0.5 * level, 0.5 * level, dip * 2.0]).reshape(3, -1)
    labels = np.array([0, 0, 1])
    pos = np.where(dip.ravel(), 1, 0)
    out, owner = _map_rises(contrib, labels, pos, 0, shape)
    np.testing.assert_array_equal(out, np.where(bump.ravel(), 0, -1))
    assert owner.tolist() == [0]
    assert MATRIX_RISE_POSITIONS > 1
    # a rise short of (1 + MATRIX_RISE) times the level, or lost in the noise: none
    low = level.copy()
    low[bump] = 1.0 + 0.8 * MATRIX_RISE
    contrib[:2] = 0.5 * low.ravel()
    assert (_map_rises(contrib, labels, pos, 0, shape)[0] < 0).all()
    noisy = 1.0 + 0.5 * rng.standard_normal(shape)
    noisy[bump] = 3.0  # 4 sigma
    contrib[:2] = 0.5 * np.abs(noisy).ravel()
    assert (_map_rises(contrib, labels, pos, 0, shape)[0] < 0).all()
    # positions another cluster holds are not the matrix's to give
    contrib[:2] = 0.5 * level.ravel()
    assert (
        _map_rises(contrib, labels, np.where(bump.ravel(), 1, 0), 0, shape)[0] < 0
    ).all()
    # a particle cluster's second grain, weak beside its main one, away from both
    grain = np.zeros(shape)
    grain[dip] = 10.0
    second = np.hypot(yy - 24, xx - 24) <= 2  # 13 positions at 0.2 of the range
    grain[second] = 2.0
    grain[np.hypot(yy - 8, xx - 5) <= 1] = 2.0  # 5 positions: too few
    grain[dip.nonzero()[0].min() - 1, 8] = 2.0  # next to its grain: a rim's
    grain += 0.2 + 0.01 * rng.standard_normal(shape)
    contrib = np.stack([0.5 * level, 0.5 * level, grain]).reshape(3, -1)
    contrib[:2, bump.ravel()] = 0.5  # the matrix carries nothing
    out, owner = _map_rises(contrib, labels, pos, 0, shape)
    np.testing.assert_array_equal(out, np.where(second.ravel(), 0, -1))
    assert owner.tolist() == [1] and PARTICLE_RISE_POSITIONS > 5
    # judged on the component's own map, not lost in its cluster's summed noise
    broad = 5.0 + 3.0 * rng.standard_normal(shape)
    both = np.vstack([contrib, np.abs(broad).reshape(1, -1)])
    out, owner = _map_rises(both, np.array([0, 0, 1, 1]), pos, 0, shape)
    np.testing.assert_array_equal(out, np.where(second.ravel(), 0, -1))
    # below PARTICLE_RISE of the range: none
    weak = grain.copy()
    weak[second] = 0.2 + 0.8 * PARTICLE_RISE * 9.8
    contrib[2] = weak.ravel()
    assert (_map_rises(contrib, labels, pos, 0, shape)[0] < 0).all()


def test_grain_the_matrix_carries_is_classed_by_its_pattern():
    """A grain that only the matrix's component carries (the glass's pattern plus its
    disks, too few components) is found where the matrix's map rises, and classed with
    the grain of its phase by its own patterns."""
    f, m, model, grains = _mixed_component()
    halo = f[2]
    square = _disks([(10, a, 1.0) for a in (0, 90, 180, 270)])
    rhomb = _disks([(10, a + 10, 1.0) for a in (0, 74, 180, 254)])
    square33 = _disks([(10, a + 33, 1.0) for a in (0, 90, 180, 270)])
    g, matrix = _three_grains()
    # the matrix's component carries the square grain at (8, 8)
    factors = np.stack([halo + 0.4 * square, rhomb, square33])
    maps = np.stack([matrix + 2.5 * g[0], g[1], g[2]])
    kw = dict(nav_shape=(32, 32), direct_beam_radius=5.0, disk_radius=3.0)
    plain = cl.cluster_components(factors, maps, (20.0, 20.0), **kw)
    pos = plain.position_labels
    matrix_label = np.bincount(pos).argmax()
    assert (pos[grains[0]] == matrix_label).all()  # the grain is matrix
    res = cl.cluster_components(
        factors, maps, (20.0, 20.0), region_patterns=_means(model), **kw
    )
    pos = res.position_labels
    found = [np.bincount(pos[grains[i]]).argmax() for i in range(3)]
    assert found[0] == found[2] != found[1] != np.bincount(pos).argmax()
    assert np.mean(pos[grains[0]] == found[0]) > 0.8
    assert len(np.unique(pos)) == 3  # matrix, square, rhomb
    assert res.parameters["grain_rise_regions"] == 1
    assert plain.parameters["grain_rise_regions"] == 0


def test_grain_patterns_keep_a_right_partition():
    """Where every grain already sits with its phase, the phases stay; only rims grow."""
    f, m = _near_phases()
    model = np.tensordot(m.T, f, axes=1)
    kw = dict(nav_shape=(32, 32), direct_beam_radius=5.0, disk_radius=3.0)
    plain = cl.cluster_components(f, m, (20.0, 20.0), **kw)
    means = _means(model, counts=50.0)
    res = cl.cluster_components(
        f, m, (20.0, 20.0), region_patterns=means, probe_fwhm=1.5, **kw
    )
    assert res.parameters["grain_regions"] == 4
    # a probe of unknown size or broader than 2 steps: no rim grows (at 2.5 steps the
    # core release's tenth leaves these grains whole; from 2.9 steps it grows,
    # _core_release_fraction, and takes their faintest edge positions)
    for probe in (None, 2.5):
        same = cl.cluster_components(
            f, m, (20.0, 20.0), region_patterns=means, probe_fwhm=probe, **kw
        )
        assert same.parameters["grain_rim_positions"] == 0
        assert same.parameters["probe_fwhm_steps"] == probe
        np.testing.assert_array_equal(same.position_labels, plain.position_labels)
    for bad in (0.0, -1.0, "2", True, np.nan):
        with pytest.raises(ValueError, match="probe_fwhm"):
            cl.cluster_components(f, m, (20.0, 20.0), probe_fwhm=bad, **kw)
    # the same clusters of components (numbered by their positions' count)
    to_plain = np.full(res.labels.max() + 1, -1)
    to_plain[res.labels] = plain.labels
    np.testing.assert_array_equal(to_plain[res.labels], plain.labels)
    assert np.unique(to_plain).size == to_plain.size
    before, after = plain.position_labels, to_plain[res.position_labels]
    changed = np.flatnonzero(before != after)
    matrix = np.bincount(before).argmax()
    assert (before[changed] == matrix).all() and (after[changed] != matrix).all()
    assert 0 < changed.size == res.parameters["grain_rim_positions"]
    # every grown position touches a position its grain held before
    grid = before.reshape(32, 32)
    for p in changed:
        y, x = divmod(int(p), 32)
        assert (grid[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] == after[p]).any()


def _grain_on_glass():
    """A grain's four disks, the glass's halo, and a 32 x 32 scan's grid with each
    position's distance from the grain's centre (16, 16)."""
    grain = _disks([(10, a, 1.0) for a in (20, 110, 200, 290)])
    halo = _disks([], halo=1.0) + 0.05
    yy, xx = np.mgrid[:32, :32]
    return grain, halo, yy, xx, np.hypot(yy - 16, xx - 16)


def test_rim_growth_claims_the_rim_that_shows_the_disks():
    """Matrix positions next to a grain join it where their patterns show its disks
    above the local matrix's fluctuation, and nowhere else."""
    from hyperspy_cnmf.clustering._components import (
        EDGE,
        NULL,
        RING,
        _bragg_filters,
        _rim_growth,
        _rim_release,
        _rim_requests,
    )

    grain, halo, yy, xx, d = _grain_on_glass()
    core = d <= 4.0
    rim = (d > 4.0) & (d <= 5.5)  # one ring of positions: weak disks
    amount = np.where(core, 1.0, np.where(rim, 0.4, 0.0))
    rng = np.random.default_rng(1)
    model = 30.0 * (halo[None] + amount.ravel()[:, None, None] * grain[None])
    data = rng.poisson(model).astype(float).reshape(1024, -1)
    region = np.where(core.ravel(), 0, -1)
    at, which, role = _rim_requests(region, ~core.ravel(), (32, 32))
    ring = at[role == RING]
    next_to = ndimage.binary_dilation(core, np.ones((3, 3))) & ~core
    assert set(ring) == set(np.flatnonzero(next_to.ravel()))
    assert (role == NULL).sum() >= 20 and not np.isin(at[role == NULL], ring).any()
    edge = core & ~ndimage.binary_erosion(core, np.ones((3, 3)))
    assert set(at[role == EDGE]) == set(np.flatnonzero(edge.ravel()))
    filters = _bragg_filters(grain[None], (20.0, 20.0), 3.0, 5.0)
    assert abs(filters.sum()) < 1e-4  # ring means removed: a flat pattern answers 0
    response = np.einsum("ij,ij->i", data[at], filters[which])
    claimed, by = _rim_growth(at, which, role, response, 1)
    truth = set(np.flatnonzero(rim.ravel()))
    assert (by == 0).all()
    assert len(truth & set(claimed)) >= 0.9 * len(truth & set(ring))
    assert len(set(claimed) - truth) <= 1
    # a flat null (no spread) or too few null positions: nothing claimed
    assert _rim_growth(at, which, role, np.zeros(at.size), 1)[0].size == 0
    few = np.where((role == NULL) & (np.cumsum(role == NULL) > 5), RING, role)
    assert _rim_growth(at, which, few.astype(np.int8), response, 1)[0].size == 0
    # a ring that stands out of the noise but holds under a quarter of the edge's
    # excess (the tail of a probe centred outside, at high counts) is not claimed
    null_med = np.median(response[role == NULL])
    step = np.median(response[role == EDGE]) - null_med
    mad = 1.4826 * np.median(np.abs(response[role == NULL] - null_med))
    tail = np.where(role == RING, null_med + 0.2 * step, response)
    assert 0.2 * step > 3.5 * mad  # significant, yet too weak
    assert _rim_growth(at, which, role, tail, 1)[0].size == 0
    assert (
        _rim_growth(
            at, which, role, np.where(role == RING, null_med + 0.3 * step, response), 1
        )[0].size
        == ring.size
    )
    # the grain's own positions all show its disks: none goes back to the matrix
    assert _rim_release(at, which, role, response, 1).size == 0
    # a patch of glass that a broad component map took with the grain does
    patch = (yy >= 5) & (yy < 12) & (np.abs(xx - 16) <= 1)  # through the rim
    grid = np.where(core | patch, 0, -1)
    at, which, role = _rim_requests(grid.ravel(), grid.ravel() < 0, (32, 32))
    response = np.einsum("ij,ij->i", data[at], filters[which])
    released = set(_rim_release(at, which, role, response, 1))
    glass = np.flatnonzero((patch & (amount == 0)).ravel())
    assert released <= set(glass) and len(released) >= 0.8 * glass.size
    # a region next to the grain (a piece of grain and glass that may go to the
    # matrix whole): its positions next to the grain are in the grain's ring too,
    # and the grain's next to it in its own
    piece = (d > 4.0) & (d <= 7.0) & (yy < 16)
    grid = np.where(core, 0, np.where(piece, 1, -1))
    at, which, role = _rim_requests(grid.ravel(), grid.ravel() < 0, (32, 32))
    assert set(at[(role == RING) & (which == 0)]) == set(
        np.flatnonzero(next_to.ravel())
    )
    ring1 = set(at[(role == RING) & (which == 1)])
    assert ring1 & set(np.flatnonzero(core.ravel()))
    assert not ring1 & set(np.flatnonzero(piece.ravel()))


def test_far_null_falls_back_to_nearer_matrix_when_regions_cover_the_scan():
    """Where the regions leave fewer than RIM_MIN_NULL matrix positions RIM_NULL_SHELL's
    inner distance away (the matrix cut into many regions), the far null takes the
    farthest there are, never a region's rim; with room, it stays as far as before."""
    from hyperspy_cnmf.clustering._components import (
        EDGE,
        FAR,
        FAR_NULL_MIN_GAP,
        INSIDE,
        RIM_MIN_NULL,
        RIM_NULL_SHELL,
        _crystal_scores,
        _rim_requests,
    )

    nav = (32, 32)
    grid = -np.ones(nav, dtype=np.int64)
    # 3 x 3 regions every 6 steps: no matrix position 4 steps from every region
    n = 0
    for y in range(1, 32, 6):
        for x in range(1, 32, 6):
            grid[y : y + 3, x : x + 3] = n
            n += 1
    d_any = ndimage.distance_transform_cdt(grid < 0, metric="chessboard")
    assert ((grid < 0) & (d_any >= RIM_NULL_SHELL[0])).sum() < RIM_MIN_NULL
    region = grid.ravel()
    at, which, role = _rim_requests(region, region < 0, nav)
    far = np.unique(at[role == FAR])
    assert far.size >= RIM_MIN_NULL
    assert d_any.ravel()[far].min() >= FAR_NULL_MIN_GAP  # never next to a region
    assert d_any.ravel()[far].max() == d_any.max()
    # so every region is tested: a crystal score, not NaN
    rng = np.random.default_rng(0)
    own = (role == EDGE) | (role == INSIDE)
    response = rng.normal(0.0, 1.0, at.size) + 10.0 * own  # 10 sigma above the null
    filters = np.ones((n, 4), dtype=np.float32)
    patterns = np.ones((n, 2, 2))
    q75 = _crystal_scores(at, which, role, response, filters, patterns)[0]
    assert np.isfinite(q75).all() and (q75 > 5).all()
    # one region in a wide matrix: the far null as far as before
    grid = -np.ones(nav, dtype=np.int64)
    grid[14:18, 14:18] = 0
    at, which, role = _rim_requests(grid.ravel(), grid.ravel() < 0, nav)
    d_any = ndimage.distance_transform_cdt(grid < 0, metric="chessboard")
    assert d_any.ravel()[at[role == FAR]].min() >= RIM_NULL_SHELL[0]


def test_broad_probe_release_measures_a_region_against_its_grains_core():
    """Under a broad probe a region mostly of the glass about a grain (three of its
    positions on the grain, the rest the probe's tail at a thirteenth of the grain's core)
    keeps its tails against its own upper decile; against the strongest region of its
    grain (``grain_of``) they go back to the matrix, its grain positions stay; a region
    of another grain is not measured against it."""
    from hyperspy_cnmf.clustering._components import (
        CORE_RELEASE_FRACTION,
        INSIDE,
        NULL,
        _rim_release,
    )

    rng = np.random.default_rng(0)
    at, which, role, response = [], [], [], []
    start = 0
    own = {0: 100.0 + rng.normal(0.0, 5.0, 30), 1: np.r_[[60.0] * 3, [8.0] * 17]}
    for r in (0, 1):
        null = rng.normal(0.0, 1.0, 40)
        for values, kind in ((null, NULL), (own[r], INSIDE)):
            at.append(np.arange(start, start + values.size))
            which.append(np.full(values.size, r))
            role.append(np.full(values.size, kind, dtype=np.int8))
            response.append(values)
            start += values.size
    at, which, role, response = (np.concatenate(a) for a in (at, which, role, response))
    tails = at[(which == 1) & (role == INSIDE) & (response == 8.0)]
    # 8 is above a tenth of the region's own upper decile (~13) and below a tenth of
    # its grain's (~106); the region's own decile stands 10 z above its null
    decile = [np.percentile(own[r], 90) for r in (0, 1)]
    assert CORE_RELEASE_FRACTION * decile[1] < 8.0 < CORE_RELEASE_FRACTION * decile[0]

    def released(grain_of=None):
        return set(
            _rim_release(
                at,
                which,
                role,
                response,
                2,
                core_fraction=CORE_RELEASE_FRACTION,
                grain_of=grain_of,
            )
        )

    alone = released()
    assert not alone & set(tails)
    assert released(np.array([0, 0])) == set(tails)
    assert released(np.array([0, 1])) == alone
    # a narrow probe: no core release at all
    assert not set(
        _rim_release(at, which, role, response, 2, grain_of=np.array([0, 0]))
    ) & set(tails)


def test_core_release_fraction_grows_with_the_probe():
    """No core release under a narrow probe; a tenth of the core up to about 3 steps;
    beyond, the share of a straight edge's signal a Gaussian probe of that FWHM holds
    1.5 steps outside it (a quarter of the core under 5 steps), so that a probe's tail
    at 0.15 of the core stays with a grain under 2.4 steps and goes back under 4."""
    from hyperspy_cnmf.clustering._components import (
        CORE_RELEASE_FRACTION,
        INSIDE,
        NULL,
        RIM_MAX_PROBE_FWHM,
        _core_release_fraction,
        _rim_release,
    )

    assert _core_release_fraction(None) == 0.0
    assert _core_release_fraction(RIM_MAX_PROBE_FWHM) == 0.0
    widths = np.linspace(2.1, 8.0, 30)
    fractions = [_core_release_fraction(w) for w in widths]
    assert min(fractions) == CORE_RELEASE_FRACTION
    assert np.all(np.diff(fractions) >= 0) and 0.18 < fractions[-1] < 0.5
    sigma = 4.0 / 2.3548  # FWHM over sigma of a Gaussian
    edge = 0.5 * math.erfc(1.5 / sigma / math.sqrt(2.0))
    assert (
        _core_release_fraction(4.0)
        == pytest.approx(edge)
        == pytest.approx(0.189, abs=1e-3)
    )
    rng = np.random.default_rng(1)
    null = rng.normal(0.0, 1.0, 40)
    own = np.r_[100.0 + rng.normal(0.0, 3.0, 30), [15.0] * 6]
    at = np.arange(null.size + own.size)
    which = np.zeros(at.size, int)
    role = np.r_[np.full(null.size, NULL), np.full(own.size, INSIDE)].astype(np.int8)
    response = np.r_[null, own]
    tails = set(at[response == 15.0])
    kept = _rim_release(
        at, which, role, response, 1, core_fraction=_core_release_fraction(2.4)
    )
    gone = _rim_release(
        at, which, role, response, 1, core_fraction=_core_release_fraction(4.0)
    )
    assert not set(kept) & tails and set(gone) == tails


def test_rim_release_asks_a_placed_region_for_a_rims_evidence():
    """A region joined to a phase by its pattern only (``placed``) keeps only the
    positions whose response stands RIM_Z above its null; a grain keeps those above
    GRAIN_RELEASE_Z."""
    from hyperspy_cnmf.clustering._components import (
        EDGE,
        GRAIN_RELEASE_Z,
        INSIDE,
        NULL,
        RIM_Z,
        _rim_release,
    )

    rng = np.random.default_rng(0)
    null = rng.standard_normal(200)
    z_own = np.array([0.5, 2.0, 3.0, 5.0, 8.0])
    assert GRAIN_RELEASE_Z < 2.0 < 3.0 < RIM_Z < 5.0
    med, mad = np.median(null), 1.4826 * np.median(np.abs(null - np.median(null)))
    response = np.r_[null, med + z_own * mad]
    at = np.arange(response.size)
    which = np.zeros(response.size, np.int64)
    role = np.r_[np.full(200, NULL), [EDGE, EDGE, INSIDE, INSIDE, INSIDE]].astype(
        np.int8
    )
    grain = set(_rim_release(at, which, role, response, 1))
    placed = set(_rim_release(at, which, role, response, 1, np.array([True])))
    assert grain == {200}
    assert placed == {200, 201, 202}
    assert set(_rim_release(at, which, role, response, 1, np.array([False]))) == grain


def test_standing_claims_take_no_grain_position():
    """A rim-growth claim stands on a position in the matrix after the grouping (its
    rim, a released position, a region that went to the matrix whole) by a region
    that stayed a grain; never on a position of a grain, nor by a region sent to
    the matrix."""
    from hyperspy_cnmf.clustering._components import _standing_claims

    n_ext = 2  # labels 0 (the matrix) and 1 (a texture cluster) are extended
    region_label = np.array([2, 3, 0])  # regions 0, 1 stayed grains; 2 went to 0
    new_pos = np.array([0, 1, 0, 2, 3, 0])  # 0-2 extended, 3-4 grains, 5 released
    claimed = np.array([0, 1, 2, 3, 4, 5, 0])
    by = np.array([0, 1, 0, 1, 0, 1, 2])
    ok = _standing_claims(claimed, by, region_label, new_pos, n_ext)
    assert ok.tolist() == [True, True, True, False, False, True, False]


def test_grain_groups_rules():
    """Large regions are cut on their distance; small ones join the nearest group, the
    grain they touch, their cluster's, or form a group that needs enough positions."""
    from hyperspy_cnmf.clustering._components import _grain_groups

    sizes = np.array([30, 30, 30, 5, 5, 5, 5, 12, 12, 5])
    owner = np.array([0, 0, 1, 0, 2, 0, 3, 4, 4, 5])
    d = np.full((10, 10), 0.6)
    d[0, 1] = d[1, 0] = 0.05  # one phase
    d[3, [0, 1]] = d[[0, 1], 3] = 0.1  # near that phase
    d[4, 2] = d[2, 4] = 0.45  # noisy, not clearly another pattern
    d[9, 2] = d[2, 9] = 0.9  # clearly another pattern
    d[7, 8] = d[8, 7] = 0.3  # two pieces of one phase
    np.fill_diagonal(d, 0.0)
    touching = np.zeros((10, 10))
    touching[[4, 9], 2] = touching[2, [4, 9]] = 3  # touching region 2's grain
    group, evidence = _grain_groups(d, sizes, owner, touching)
    assert group[0] == group[1] == group[3] != group[2] == group[4] != group[9]
    assert group[5] != group[0] and not evidence[group[5]]  # clearly another: matrix
    near = d.copy()
    near[5, [0, 1]] = near[[0, 1], 5] = 0.45  # noisy, not clearly another pattern
    group_near, _ = _grain_groups(near, sizes, owner, touching)
    assert group_near[5] == group_near[0]  # its cluster's large regions
    assert group[7] == group[8] != group[6]  # one group per cluster
    assert evidence[group[7]] and not evidence[group[6]]  # 24 and 5 positions
    # 24 positions of unlike patterns (the glass's speckle): no phase
    unlike = d.copy()
    unlike[7, 8] = unlike[8, 7] = 0.6
    group, evidence = _grain_groups(unlike, sizes, owner, touching)
    assert group[7] == group[8] and not evidence[group[7]]
    # ... unless one of them holds three quarters: one particle beside a stray piece
    one = sizes.copy()
    one[7], one[8] = 18, 4
    group, evidence = _grain_groups(unlike, one, owner, touching)
    assert evidence[group[7]]
    # a region without Bragg disks is not placed by its pattern or its neighbour
    empty = np.zeros(10, dtype=bool)
    empty[[3, 4]] = True
    group, _ = _grain_groups(d, sizes, owner, touching, empty)
    assert group[3] == group[0] and group[4] != group[2]  # its cluster's / its own
    # nor counted as evidence; large regions without disks make no phase
    empty[[2, 7]] = True
    group, evidence = _grain_groups(d, sizes, owner, touching, empty)
    assert not evidence[group[2]] and not evidence[group[7]] and evidence[group[0]]


def test_grain_groups_weak_regions_and_pieces_across_clusters():
    """A region whose disks are the glass's speckle (weak) is placed by its pattern
    or goes to the matrix, and is no evidence; small pieces of one pattern in several
    clusters make a phase together."""
    from hyperspy_cnmf.clustering._components import _grain_groups

    sizes = np.array([30, 30, 25, 5, 12, 10, 6])
    owner = np.array([0, 1, 2, 0, 3, 4, 0])
    d = np.full((7, 7), 0.6)
    d[0, 1] = d[1, 0] = 0.1  # a weak region near a crystal's pattern
    d[4, 5] = d[5, 4] = 0.1  # two pieces of one phase in two clusters
    d[3, [0, 1]] = d[[0, 1], 3] = 0.45  # a noisy small piece of that crystal
    np.fill_diagonal(d, 0.0)
    touching = np.zeros((7, 7))
    weak = np.zeros(7, dtype=bool)
    weak[[1, 2, 6]] = True
    group, evidence = _grain_groups(d, sizes, owner, touching, None, weak)
    assert group[1] == group[0] and evidence[group[0]]  # placed by its pattern
    assert not evidence[group[2]]  # speckle alone: no phase
    assert group[6] != group[0] and not evidence[group[6]]  # not its cluster's grain
    assert group[3] == group[0]  # a small piece that shows disks: its cluster's
    assert group[4] == group[5] and evidence[group[4]]  # 22 positions of one pattern
    assert len(set(group[[0, 2, 4]])) == 3
    # a small weak region is not the nearest evidence for a pattern
    group, evidence = _grain_groups(
        d, sizes, owner, touching, None, weak | (sizes < 20)
    )
    assert not evidence[group[4]] and not evidence[group[5]]


def test_grain_groups_a_strong_small_core_unlike_every_crystal_is_a_phase():
    """A cluster's small region below MIN_GRAIN_POSITIONS makes a phase when its
    crystal is strong, it holds STRONG_CRYSTAL_POSITIONS, and its pattern is none
    of the crystals' (the 3.0 mrad case at half counts: a CuZr2 grain's 12-position
    core beside two fcc-Cu grains)."""
    from hyperspy_cnmf.clustering._components import (
        GRAIN_DISTANCE,
        STRONG_CRYSTAL_POSITIONS,
        _grain_groups,
    )

    sizes = np.array([29, 38, STRONG_CRYSTAL_POSITIONS + 2, 3])
    owner = np.array([1, 1, 2, 0])
    d = np.full((4, 4), 0.77)
    d[0, 1] = d[1, 0] = 0.07  # the two grains of one phase
    d[2, 3] = d[3, 2] = 0.49
    np.fill_diagonal(d, 0.0)
    touching = np.zeros((4, 4))
    strong = np.array([True, True, True, True])
    group, evidence = _grain_groups(d, sizes, owner, touching)
    assert not evidence[group[2]]  # 14 positions: no phase by size
    group, evidence = _grain_groups(d, sizes, owner, touching, None, None, strong)
    assert evidence[group[2]] and group[2] != group[0] and evidence[group[0]]
    # not strong, too few positions, or near a crystal found: no phase
    for sz, st, dist in (
        (sizes[2], False, 0.77),
        (STRONG_CRYSTAL_POSITIONS - 1, True, 0.77),
        (sizes[2], True, 1.9 * GRAIN_DISTANCE),
    ):
        s2, d2 = sizes.copy(), d.copy()
        s2[2] = sz
        d2[2, [0, 1]] = d2[[0, 1], 2] = dist
        group, evidence = _grain_groups(
            d2, s2, owner, touching, None, None, strong & [True, True, st, True]
        )
        assert not evidence[group[2]] or group[2] == group[0]
    # dots of glass the core's component picked up (patterns far from it) go to
    # the matrix and do not stop the phase
    for n_dots in (1, 2):
        n = 4 + n_dots
        dd = np.full((n, n), 0.8)
        dd[:4, :4] = d
        dd[4:, 4:] = 0.3
        np.fill_diagonal(dd, 0.0)
        sz = np.r_[sizes, [3] * n_dots]
        ow = np.r_[owner, [2] * n_dots]
        st = np.r_[strong, [False] * n_dots]
        group, evidence = _grain_groups(dd, sz, ow, np.zeros((n, n)), None, None, st)
        assert evidence[group[2]] and group[2] != group[0]
        assert all(not evidence[group[r]] for r in range(4, n))


def test_grain_groups_a_strong_region_beside_another_phases_grain_is_a_phase():
    """A strong region of STRONG_CRYSTAL_POSITIONS or more in a cluster that holds
    another phase's large grain makes a phase of its own where its pattern lies
    beyond STRONG_PHASE_DISTANCE from every phase found (a CuZr2 grain whose
    component the cut put with two B2 grains': 11 positions, 0.46 from the B2 grain,
    joined it under the twice-the-cut rule); nearer, weaker or smaller, it joins its
    cluster's phase as before. The cluster's small regions near it go with it."""
    from hyperspy_cnmf.clustering._components import (
        GRAIN_DISTANCE,
        STRONG_CRYSTAL_POSITIONS,
        STRONG_PHASE_DISTANCE,
        _grain_groups,
    )

    # 0: fcc grain (cluster 1); 1: B2 grain, 2: CuZr2 core, 3: a piece of the
    # CuZr2 grain, all three in cluster 2
    sizes = np.array([34, 29, 11, 5])
    owner = np.array([1, 2, 2, 2])
    d = np.full((4, 4), 0.8)
    d[1, 2] = d[2, 1] = d[1, 3] = d[3, 1] = 0.46
    d[2, 3] = d[3, 2] = 0.1
    np.fill_diagonal(d, 0.0)
    touching = np.zeros((4, 4))
    strong = np.array([True, True, True, False])
    assert 0.46 < 2 * GRAIN_DISTANCE and 0.46 > STRONG_PHASE_DISTANCE
    group, evidence = _grain_groups(d, sizes, owner, touching, None, None, strong)
    assert evidence[group[2]] and len({group[0], group[1], group[2]}) == 3
    assert group[3] == group[2]
    for sz, st, dist in (
        (sizes[2], False, 0.46),
        (STRONG_CRYSTAL_POSITIONS - 1, True, 0.46),
        (sizes[2], True, 0.9 * STRONG_PHASE_DISTANCE),
    ):
        s2, d2 = sizes.copy(), d.copy()
        s2[2] = sz
        d2[1, 2] = d2[2, 1] = dist
        group, evidence = _grain_groups(
            d2, s2, owner, touching, None, None, strong & [True, True, st, True]
        )
        assert group[2] == group[1]


def test_disk_containment_finds_a_grains_disks_in_its_rims_region():
    """A region of a grain's rim and glass holds some of the grain's disks, about its
    own beam, and a spot of speckle: most of its disk weight lies on the grain's (not
    all). A touching grain of another lattice, or the same lattice rotated, holds little
    of it; only touching pairs are measured (NaN elsewhere)."""
    from hyperspy_cnmf.clustering._components import (
        CONTAINED_DISKS,
        _disk_containment,
        bragg_disk_image,
    )

    c = np.array([20.0, 20.0])
    t = np.deg2rad(17.0)
    a1, a2 = 8 * np.r_[np.cos(t), np.sin(t)], 8 * np.r_[-np.sin(t), np.cos(t)]
    grain = [c + i * a1 + j * a2 for i in (-1, 0, 1) for j in (-1, 0, 1) if i or j]
    rim = [grain[k] + (0.5, 0.0) for k in (1, 3, 4, 6)]  # 4 of the 8, beam 0.5 px off
    speckle = [c + (11.0, 14.0)]
    t2 = np.deg2rad(40.0)
    other = [
        c
        + i * 7 * np.r_[np.cos(t2), np.sin(t2)]
        + j * 9 * np.r_[-np.sin(t2), np.cos(t2)]
        for i in (-1, 0, 1)
        for j in (-1, 0, 1)
        if i or j
    ]
    centres = np.array([c, c + (0.5, 0.0), c])
    patterns = [
        _spots(grain),
        _spots(rim + speckle, weights=[1.0] * 4 + [0.4]),
        _spots(other),
    ]
    disks = np.stack(
        [bragg_disk_image(p, tuple(x), 2.0, 4.0) for p, x in zip(patterns, centres)]
    )
    touching = np.ones((3, 3)) - np.eye(3)
    touching[0, 2] = touching[2, 0] = 0
    cont = _disk_containment(disks, centres, 2.0, touching)
    assert cont[1, 0] >= CONTAINED_DISKS and cont[1, 0] < 1.0
    assert cont[1, 2] < 0.5 and cont[2, 1] < 0.5
    assert np.isnan(cont[0, 2]) and np.isnan(np.diag(cont)).all()


def test_grain_groups_a_region_whose_disks_lie_on_a_touching_grains_joins_it():
    """A large region (glass and a grain's rim) whose mean pattern lies beyond the cut
    from the grain's, but whose disks lie on the touching grain's, joins the grain's
    group instead of making a phase of its own; below CONTAINED_DISKS, not touching,
    or faint, it stays as the cut left it."""
    from hyperspy_cnmf.clustering._components import (
        CONTAINED_DISKS,
        GRAIN_DISTANCE,
        _grain_groups,
    )

    sizes = np.array([74, 52, 25])  # B2 grain, CuZr2 grain, the B2 grain's rim region
    owner = np.array([1, 2, 3])
    d = np.array([[0.0, 0.8, 0.35], [0.8, 0.0, 0.8], [0.35, 0.8, 0.0]])
    assert d[0, 2] > GRAIN_DISTANCE
    touching = np.zeros((3, 3))
    touching[0, 2] = touching[2, 0] = 6
    contained = np.full((3, 3), np.nan)
    contained[2, 0] = 0.89
    group, evidence = _grain_groups(d, sizes, owner, touching)
    assert group[2] not in (group[0], group[1]) and evidence[group[2]]
    group, evidence = _grain_groups(d, sizes, owner, touching, contained=contained)
    assert group[2] == group[0] and group[1] != group[0]
    assert evidence[group[0]] and evidence[group[1]]
    for cont, touch, faint in (
        (0.9 * CONTAINED_DISKS, 6, False),
        (0.89, 0, False),
        (0.89, 6, True),
    ):
        c2, t2 = contained.copy(), touching.copy()
        c2[2, 0] = cont
        t2[0, 2] = t2[2, 0] = touch
        group, _ = _grain_groups(
            d,
            sizes,
            owner,
            t2,
            None,
            None,
            None,
            np.array([False, False, faint]),
            c2,
        )
        assert group[2] != group[0]


def test_one_grain_one_phase_joins_the_phases_of_a_grains_pieces():
    """An over-complete fit cut a small B2 grain into pieces below MIN_GRAIN_POSITIONS:
    one piece went with the B2 phase's other grain (another orientation), the other with a
    piece of glass and the grain's rim (a large region beyond the cut): two phases for
    one grain. The two touching pieces whose disks lie on each other's make them one,
    under the larger; not where they do not touch, where their disks differ, where a
    piece is below GRAIN_PIECE_POSITIONS or shows no crystal, where the two phases'
    large regions lie beyond STRONG_PHASE_DISTANCE, nor for a group without
    evidence."""
    from hyperspy_cnmf.clustering._components import (
        CONTAINED_DISKS,
        GRAIN_DISTANCE,
        GRAIN_PIECE_POSITIONS,
        STRONG_PHASE_DISTANCE,
        _grain_groups,
    )

    # B2 grain (30), rim + glass region (22), the small grain's two pieces (11, 10)
    sizes = np.array([30, 22, 11, 10])
    owner = np.array([1, 2, 3, 4])
    d = np.array(
        [
            [0.0, 0.29, 0.20, 0.32],
            [0.29, 0.0, 0.33, 0.20],
            [0.20, 0.33, 0.0, 0.28],
            [0.32, 0.20, 0.28, 0.0],
        ]
    )
    touching = np.zeros((4, 4))
    touching[2, 3] = touching[3, 2] = 5  # the two pieces
    touching[1, 3] = touching[3, 1] = 4  # the rim region beside one piece
    contained = np.full((4, 4), np.nan)
    contained[2, 3], contained[3, 2] = 0.95, 1.0
    group, evidence = _grain_groups(d, sizes, owner, touching)
    assert d[0, 1] > GRAIN_DISTANCE and group[0] != group[1]
    assert group[2] == group[0] and group[3] == group[1]
    assert evidence[group[0]] and evidence[group[1]]
    group, evidence = _grain_groups(d, sizes, owner, touching, contained=contained)
    assert len(set(group)) == 1 and evidence[group[0]] and group[0] == 0
    for cont, touch, size, faint in (
        (0.9 * CONTAINED_DISKS, 5, 10, False),
        (0.95, 0, 10, False),
        (0.95, 5, GRAIN_PIECE_POSITIONS - 1, False),
        (0.95, 5, 10, True),
    ):
        c2, t2, s2 = contained.copy(), touching.copy(), sizes.copy()
        c2[2, 3] = c2[3, 2] = cont
        t2[2, 3] = t2[3, 2] = touch
        s2[3] = size
        group, evidence = _grain_groups(
            d, s2, owner, t2, None, None, None, np.array([False] * 3 + [faint]), c2
        )
        assert group[0] == group[2] and group[1] == group[3] != group[0]
        assert evidence[group[0]] and evidence[group[1]]
    # two phases whose large regions lie beyond STRONG_PHASE_DISTANCE stay two (one
    # holds a misplaced piece of the other's grain)
    d2 = d.copy()
    d2[0, 1] = d2[1, 0] = 1.1 * STRONG_PHASE_DISTANCE
    group, evidence = _grain_groups(d2, sizes, owner, touching, contained=contained)
    assert group[0] != group[1] and evidence[group[0]] and evidence[group[1]]
    # a group without evidence (the rim region faint too) is joined by nothing
    group, evidence = _grain_groups(
        d,
        sizes,
        owner,
        touching,
        None,
        None,
        None,
        np.array([False, True, False, True]),
        contained,
    )
    assert not evidence[group[1]] and group[2] == group[0]


def test_grain_groups_a_blank_region_joins_no_phase_by_contact():
    """A small patch of glass beside a grain (faint, its upper quartile below CONTACT_Z:
    it shows no crystal) whose mean pattern lies beyond the cut from the grain's joined
    the grain's phase by touching it; it goes to the matrix. A blank region within the
    cut of the grain's pattern (a piece of it) stays, as does one that is not blank."""
    from hyperspy_cnmf.clustering._components import GRAIN_DISTANCE, _grain_groups

    sizes = np.array([60, 14, 8])  # the grain, a glass patch, a weak piece of the grain
    owner = np.array([1, 2, 2])
    d = np.array([[0.0, 0.48, 0.2], [0.48, 0.0, 0.45], [0.2, 0.45, 0.0]])
    assert GRAIN_DISTANCE < d[0, 1] <= 2 * GRAIN_DISTANCE and d[0, 2] <= GRAIN_DISTANCE
    touching = np.zeros((3, 3))
    touching[0, 1] = touching[1, 0] = touching[0, 2] = touching[2, 0] = 4
    faint = np.array([False, True, True])
    group, evidence = _grain_groups(d, sizes, owner, touching, faint=faint)
    assert group[1] == group[0] == group[2] and evidence[group[0]]
    blank = np.array([False, True, True])
    group, evidence = _grain_groups(d, sizes, owner, touching, faint=faint, blank=blank)
    assert evidence[group[0]] and group[2] == group[0]
    assert group[1] != group[0] and not evidence[group[1]]


def _speckled_scan(counts, rng):
    """A 32 x 32 scan of glass whose every pattern holds its own speckle (41 x 41 px),
    with a crystal grain (disk of radius 4 about (8, 8)); expected counts and the grain."""
    yy, xx = np.mgrid[:32, :32]
    grain = np.hypot(yy - 8, xx - 8) <= 4.0
    halo = _disks([], halo=1.0) + 0.05
    disks = _disks([(10, a, 1.0) for a in (20, 110, 200, 290)])
    speckle = ndimage.gaussian_filter(rng.normal(size=(1024, 41, 41)), (0, 1.5, 1.5))
    speckle = 1.0 + 0.3 * speckle / speckle.std()
    model = halo[None] * np.clip(speckle, 0.0, None)
    model[grain.ravel()] += disks
    return counts * model.reshape(1024, -1), grain


def test_crystal_evidence_tells_a_grain_from_a_patch_of_speckle():
    """Where the glass's speckle spreads the matrix's responses beyond counting noise,
    a patch of glass (whose filter is its own mean speckle) shows no crystal and a grain
    does; under counting noise nothing is ruled out."""
    from hyperspy_cnmf.clustering._components import (
        FAR,
        _bragg_filters,
        _crystal_evidence,
        _rim_requests,
    )

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:32, :32]
    patch = (np.abs(yy - 22) <= 3) & (np.abs(xx - 22) <= 3)
    for counts, expected in ((20000.0, [True, False]), (0.3, [True, True])):
        model, grain = _speckled_scan(counts, rng)
        data = rng.poisson(model).astype(float)
        region = np.full(1024, -1)
        region[grain.ravel()] = 0
        region[patch.ravel()] = 1
        at, which, role = _rim_requests(region, region < 0, (32, 32))
        assert (role == FAR).sum() > 0
        means = np.stack([data[region == r].mean(0) for r in (0, 1)])
        shape = (2, 41, 41)
        filters = _bragg_filters(means.reshape(shape), (20.0, 20.0), 3.0, 5.0)
        response = np.einsum("ij,ij->i", data[at], filters[which])
        out = _crystal_evidence(
            at, which, role, response, filters, means.reshape(shape)
        )
        assert out.tolist() == expected, counts


def test_crystal_evidence_threshold_falls_with_the_region_size():
    """Where speckle rules (counting variance far below the null's), a region's upper
    quartile must reach CRYSTAL_Z up to 20 positions, CRYSTAL_Z * sqrt(20 / n) beyond,
    never below CRYSTAL_FLOOR_Z: z 6.5 is speckle for 20 positions and a crystal for
    80; z 5 (above the scaled level 4) is speckle for 80 too."""
    from hyperspy_cnmf.clustering._components import (
        CRYSTAL_FLOOR_Z,
        CRYSTAL_Z,
        EDGE,
        FAR,
        INSIDE,
        _crystal_evidence,
        _crystal_level,
    )

    assert _crystal_level(np.array([10, 20, 80, 500])).tolist() == [
        CRYSTAL_Z,
        CRYSTAL_Z,
        CRYSTAL_FLOOR_Z,
        CRYSTAL_FLOOR_Z,
    ]
    assert _crystal_level(np.array([36]))[0] == pytest.approx(CRYSTAL_FLOOR_Z, rel=0.01)

    rng = np.random.default_rng(0)
    null = rng.normal(size=64)
    med = np.median(null)
    mad = 1.4826 * np.median(np.abs(null - med))
    filters = np.full((3, 25), 1e-6, dtype=np.float32)
    patterns = np.ones((3, 5, 5))  # counting variance ~1e-11: speckle rules
    at, which, role, response = [], [], [], []
    for r, (n, z) in enumerate(((20, 6.5), (80, 6.5), (80, 5.0))):
        at += [np.arange(64), np.arange(64, 64 + n)]
        which += [np.full(64, r), np.full(n, r)]
        role += [np.full(64, FAR), np.where(np.arange(n) % 4 == 0, EDGE, INSIDE)]
        response += [null, np.full(n, med + z * mad)]
    out = _crystal_evidence(
        *(np.concatenate(a) for a in (at, which, role, response)), filters, patterns
    )
    assert CRYSTAL_FLOOR_Z < 6.5 < CRYSTAL_Z and 5.0 < CRYSTAL_FLOOR_Z
    assert out.tolist() == [False, True, False]


def test_members_by_positions_judge_a_component_by_its_object():
    """A grain component's floor noise over the matrix does not outweigh its grain;
    textures join the matrix even where they also carry a small grain."""
    from hyperspy_cnmf.clustering._components import _members_by_positions

    rng = np.random.default_rng(0)
    n = 1600
    pos = np.zeros(n, dtype=np.int64)  # cluster 0: the matrix
    pos[:30] = 1  # a grain of 30 positions
    pos[30:60] = 2  # another
    grain = np.where(pos == 1, 1.0, 0.0) + np.abs(
        rng.normal(0.0, 0.1, n)
    )  # noisy floor
    other = np.where(pos == 2, 1.0, 0.0) + np.abs(rng.normal(0.0, 0.02, n))
    glass = np.where(pos == 0, 1.0, 0.0) + rng.normal(0.0, 0.05, n)
    glass[pos == 2] += 0.5  # the glass's component also carries the second grain
    contrib = np.stack([glass, grain, other, glass.copy()])
    labels = np.array([0, 0, 2, 0])
    # over the median alone the floor's noise summed over 1540 positions wins
    excess = np.clip(grain - np.median(grain), 0, None)
    assert excess[pos == 0].sum() > excess[pos == 1].sum()
    new = _members_by_positions(contrib, pos, 3, labels)
    assert new[1] == 1 and new[2] == 2
    texture = np.array([True, False, False, True])
    new = _members_by_positions(contrib, pos, 3, labels, texture, 0)
    assert new.tolist() == [0, 1, 2, 0]


def test_textures_merge_unrotated():
    """The glass's components with complementary anisotropic halos sum to an even
    halo; rotated onto one reference their lobes would add up."""
    from hyperspy_cnmf.clustering._components import _aligned_merge
    from hyperspy_cnmf.clustering._hierarchical import polar_similarity

    n = 41
    yy, xx = np.indices((n, n)) - 20.0
    r, phi = np.hypot(yy, xx), np.arctan2(yy, xx)
    ring = np.exp(-0.5 * ((r - 12.0) / 2.0) ** 2)
    lobes_a = ring * np.cos(phi) ** 2  # lobes along x
    lobes_b = ring * np.sin(phi) ** 2  # along y
    factors = np.stack([lobes_a, lobes_b])
    _, _, sim = polar_similarity(factors, (20.0, 20.0))
    labels = np.zeros(2, dtype=np.int64)
    ones = np.ones(2)
    no = np.zeros(2, dtype=bool)
    rotated = _aligned_merge(factors, (20.0, 20.0), sim, labels, no, ones, ones)
    even = _aligned_merge(
        factors, (20.0, 20.0), sim, labels, no, ones, ones, np.ones(2, bool)
    )
    assert abs(abs(rotated["rotation"][1]) - 90.0) < 10.0  # aligned: lobes added
    assert even["rotation"].tolist() == [0.0, 0.0]
    on_ring = (r > 11.5) & (r < 12.5)
    m_even = even["merged_factors"][0][on_ring]
    m_rot = rotated["merged_factors"][0][on_ring]
    assert m_even.min() > 0.9 * m_even.max()  # an even halo
    assert m_rot.min() < 0.5 * m_rot.max()


def test_grain_groups_a_strong_small_region_near_a_crystal_joins_it():
    """A small region with a crystal far above the glass, beyond the cut but within
    twice it of one crystal's group, joins that group, not the glass."""
    from hyperspy_cnmf.clustering._components import GRAIN_DISTANCE, _grain_groups

    sizes = np.array([45, 37, 32, 8])
    owner = np.array([1, 2, 3, 0])  # the small region: a rise of the matrix's cluster
    d = np.array(
        [
            [0.0, 0.82, 0.6, 0.56],
            [0.82, 0.0, 0.82, 0.81],
            [0.6, 0.82, 0.0, 1.01 * GRAIN_DISTANCE],
            [0.56, 0.81, 1.01 * GRAIN_DISTANCE, 0.0],
        ]
    )
    touching = np.zeros((4, 4))
    strong = np.array([True, True, True, True])
    group, evidence = _grain_groups(d, sizes, owner, touching, None, None, strong)
    assert group[3] == group[2] and evidence[group[3]]
    # not strong: the glass, as before
    group, evidence = _grain_groups(d, sizes, owner, touching, None, None, None)
    assert not evidence[group[3]]
    # in a cluster that holds a crystal, its cluster's rule places it (the real
    # NIST scan: a particle's edge piece stays with its particle's phase)
    d3 = d.copy()
    d3[3, 1] = d3[1, 3] = 1.8 * GRAIN_DISTANCE  # within twice the cut of its own
    group, evidence = _grain_groups(
        d3, sizes, np.array([1, 2, 3, 2]), touching, None, None, strong
    )
    assert group[3] == group[1] != group[2]
    # beyond twice the cut from every crystal: not joined
    d2 = d.copy()
    d2[3, :3] = d2[:3, 3] = 2.1 * GRAIN_DISTANCE
    group, evidence = _grain_groups(d2, sizes, owner, touching, None, None, strong)
    assert group[3] not in group[:3]


def test_split_regions_by_component_parts_touching_grains():
    """Two touching grains of one cluster, each dominated by its own component,
    become two regions; a small piece joins the large piece it touches; a region
    one component dominates, or whose second piece is small, stays whole."""
    from hyperspy_cnmf.clustering._components import (
        MIN_GRAIN_POSITIONS,
        _split_regions_by_component,
    )

    nav = (12, 16)
    n = nav[0] * nav[1]
    grid = np.full(nav, -1)
    grid[2:8, 1:7] = 0  # grain A (36 positions)
    grid[2:8, 7:13] = 0  # grain B touching it (36), the same cluster's region
    grid[8, 12] = 0  # one position below B
    region = grid.ravel().copy()
    owner = np.array([1])
    contrib = np.zeros((3, n))  # component 0: matrix, 1: grain A, 2: grain B
    a = np.zeros(nav, bool)
    a[2:8, 1:7] = True
    contrib[1, a.ravel()] = 1.0
    b = np.zeros(nav, bool)
    b[2:8, 7:13] = True
    b[8, 12] = True
    contrib[2, b.ravel()] = 1.0
    contrib[2, np.flatnonzero(b.ravel())[-1]] = 0.3  # the lone position: B's, weakly
    labels = np.array([0, 1, 1])
    new_region, new_owner = _split_regions_by_component(
        region, owner, contrib, labels, nav
    )
    assert new_owner.tolist() == [1, 1]
    assert np.unique(new_region[a.ravel()]).size == 1
    assert np.unique(new_region[b.ravel()]).size == 1
    assert new_region[a.ravel()][0] != new_region[b.ravel()][0]
    assert (new_region[region < 0] == -1).all()
    # a third component dominating one position of A: a small piece, it joins A
    contrib2 = np.vstack([contrib, np.zeros(n)])
    contrib2[3, np.flatnonzero(a.ravel())[0]] = 2.0
    r2, o2 = _split_regions_by_component(region, owner, contrib2, np.r_[labels, 1], nav)
    assert o2.size == 2 and np.unique(r2[a.ravel()]).size == 1
    # a chain of small pieces (each its own component) below B joins B, not A
    chain = region.copy().reshape(nav)
    chain[8, 12] = chain[9, 13] = 0
    contrib4 = np.vstack([contrib, np.zeros((2, n))])
    contrib4[:, np.ravel_multi_index((8, 12), nav)] = [0, 0, 0, 1.0, 0]
    contrib4[:, np.ravel_multi_index((9, 13), nav)] = [0, 0, 0, 0, 1.0]
    r5, o5 = _split_regions_by_component(
        chain.ravel(), owner, contrib4, np.r_[labels, 1, 1], nav
    )
    b_region = r5[np.flatnonzero(b.ravel())[0]]
    assert o5.size == 2 and r5[np.ravel_multi_index((9, 13), nav)] == b_region
    # one component over both grains, or B below MIN_GRAIN_POSITIONS: one region
    one = contrib.copy()
    one[1, b.ravel()] = 2.0
    r3, o3 = _split_regions_by_component(region, owner, one, labels, nav)
    assert o3.tolist() == [1] and np.array_equal(r3, region)
    small = region.copy()
    keep_b = np.flatnonzero(b.ravel())[: MIN_GRAIN_POSITIONS - 1]
    small[np.setdiff1d(np.flatnonzero(b.ravel()), keep_b)] = -1
    r4, o4 = _split_regions_by_component(small, owner, contrib, labels, nav)
    assert o4.tolist() == [1]


def test_touching_grains_of_one_phase_stay_one_phase():
    """The package simulator's dataset 3 (two touching hexagonal grains in
    different orientations): 3 clusters (matrix + 2 phases), not 4 (measured
    before the split: 4 at k = 7, 14, 21; position ARI 0.827 -> 0.853 at k = 7)."""
    from sklearn.metrics import adjusted_rand_score

    from hyperspy_cnmf.data import simulated_precipitates

    s = simulated_precipitates(random_state=3)
    s.decomposition(
        algorithm="constrained_nmf",
        output_dimension=7,
        random_state=0,
        print_info=False,
        show_progressbar=False,
    )
    s.cluster_diffraction()
    lr = s.learning_results
    assert np.unique(lr.cdiff_labels).size == 3
    truth = np.asarray(s.metadata.Simulation.phase_map).ravel()
    pos = lr.cdiff_position_labels
    assert adjusted_rand_score(truth[pos >= 0], pos[pos >= 0]) >= 0.84


def test_grain_groups_a_faint_region_makes_no_phase_of_its_own():
    """A large region whose disks stay below CRYSTAL_Z under counting noise
    (``faint``) makes no phase of its own, alone or with the pieces of its
    cluster; within the cut of a crystal's group it still joins that phase."""
    from hyperspy_cnmf.clustering._components import GRAIN_DISTANCE, _grain_groups

    sizes = np.array([40, 22, 4, 3])
    owner = np.array([1, 2, 2, 2])
    d = np.full((4, 4), 0.8)
    d[2, 3] = d[3, 2] = 0.1
    np.fill_diagonal(d, 0.0)
    touching = np.zeros((4, 4))
    group, evidence = _grain_groups(d, sizes, owner, touching)
    assert evidence[group[1]] and group[1] != group[0]
    faint = np.array([False, True, False, False])
    group, evidence = _grain_groups(d, sizes, owner, touching, faint=faint)
    assert evidence[group[0]] and not evidence[group[1]]
    assert not evidence[group[2]] and not evidence[group[3]]
    # all faint: pieces of one pattern across clusters are no phase either
    owner2 = np.array([1, 2, 3, 3])
    sizes2 = np.array([40, 5, 12, 10])
    d2 = d.copy()
    d2[1, 2:] = d2[2:, 1] = 0.1
    all_faint = np.array([False, True, True, True])
    group, evidence = _grain_groups(d2, sizes2, owner2, touching, faint=all_faint)
    assert not evidence[group[1:]].any()
    group, evidence = _grain_groups(d2, sizes2, owner2, touching)
    assert evidence[group[1]] and group[1] != group[0]
    # near a crystal's group: joins it
    d3 = d.copy()
    d3[0, 1] = d3[1, 0] = 0.5 * GRAIN_DISTANCE
    group, evidence = _grain_groups(d3, sizes, owner, touching, faint=faint)
    assert group[1] == group[0] and evidence[group[0]]


def test_halves_self_distances_and_noise_correction():
    """Regions part like a chessboard; the halves of a noisier mean lie further
    apart; the correction takes both regions' noise off large regions' distances only."""
    from hyperspy_cnmf.clustering._components import (
        MIN_GRAIN_POSITIONS,
        _halves,
        _noise_corrected,
        _self_distances,
    )

    region = np.array([[0, 0, -1], [0, 1, 1]]).ravel()
    assert _halves(region, (2, 3)).tolist() == [0, 1, -1, 1, 2, 3]

    rng = np.random.default_rng(0)
    n = 40
    yy, xx = np.mgrid[:n, :n]
    clean = 5.0 * np.exp(-np.hypot(xx - 20, yy - 20) / 6.0)
    for a in np.deg2rad([10, 70, 130, 190, 250, 310]):
        cx, cy = 20 + 11 * np.cos(a), 20 + 11 * np.sin(a)
        clean += 4.0 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 2.0)

    def half(counts):  # the mean of `counts` noisy patterns
        return rng.poisson(clean * 50 * counts) / (50.0 * counts)

    halves = np.stack([half(40), half(40), half(0.3), half(0.3), half(40), clean * 0])
    counts = np.array([40, 40, 10, 10, 40, 0])
    d = _self_distances(halves, counts, [(20.0, 20.0)] * 3, 1.5, 3.0, {}, {}, (20, 20))
    assert d.shape == (3,)
    assert 0 < d[0] < d[1]
    assert d[2] == 0.0  # an empty half: no measure, no correction
    small = np.array([40, 40, 9, 10, 40, 0])  # 19 positions: not measured
    centres = [(20.0, 20.0)] * 3
    assert _self_distances(halves, small, centres, 1.5, 3.0, {}, {}, (20, 20))[1] == 0.0
    assert _halves(np.array([0, 0, 0, -1]), (4,)).tolist() == [0, 1, 0, -1]
    assert _halves(np.zeros(8, int), (2, 2, 2)).tolist() == [0, 1, 1, 0, 1, 0, 0, 1]

    # unequal halves of one region: the same noise measured (the halves' distance
    # scaled by n1 n2 / N^2; unscaled, 20 / 2 read 5x the noise of 11 / 11)
    def noise(n1, n2, draws=12):
        out = []
        for _ in range(draws):
            h = np.stack([half(n1 / 50), half(n2 / 50)])
            out.append(
                _self_distances(
                    h,
                    np.array([n1, n2]),
                    [(20.0, 20.0)],
                    1.5,
                    3.0,
                    {},
                    {},
                    (20.0, 20.0),
                )[0]
            )
        return np.mean(out)

    even, odd = noise(11, 11), noise(20, 2)
    assert 0.5 < odd / even < 2.0

    dist = np.array([[0.0, 0.34, 0.6], [0.34, 0.0, 0.6], [0.6, 0.6, 0.0]])
    sizes = np.array([44, 22, MIN_GRAIN_POSITIONS - 1])
    self_d = np.array([0.01, 0.09, 0.2])
    out = _noise_corrected(dist, self_d, sizes)
    assert out[0, 1] == out[1, 0] == pytest.approx(0.34 - 0.1)
    assert out[0, 2] == 0.6 and out[1, 2] == 0.6  # small regions keep theirs
    assert (np.diag(out) == 0).all()
    assert _noise_corrected(dist, np.full(3, 0.5), np.full(3, 30)).min() == 0.0


def test_grain_patterns_are_compared_on_the_fits_pixels():
    """The grains' mean patterns (read from the data, direct beam included) are
    compared where the fit's factors are defined: a beam that wanders with the scan
    (descan) inside the disk the fit left out makes no phase."""
    f, m, model, grains = _mixed_component()
    kw = dict(nav_shape=(32, 32), direct_beam_radius=5.0, disk_radius=3.0)
    yy, xx = np.mgrid[:41, :41]
    f = f.copy()
    f[:, np.hypot(xx - 20, yy - 20) <= 7.5] = np.nan  # the fit's direct-beam mask
    moving = model.copy()
    for p in range(model.shape[0]):  # a spot within 7.5 px turning across the scan
        moving[p] += 3.0 * _disks([(5.5, 360.0 * (p % 32) / 32, 1.0)], radius=2.0)
    still = cl.cluster_components(
        f, m, (20.0, 20.0), region_patterns=_means(model), **kw
    )
    res = cl.cluster_components(
        f, m, (20.0, 20.0), region_patterns=_means(moving), **kw
    )
    np.testing.assert_array_equal(res.position_labels, still.position_labels)
    found = [np.bincount(res.position_labels[grains[i]]).argmax() for i in range(3)]
    assert found[0] == found[2] != found[1]  # the two square grains: one phase


def _descan(model, amplitude, nav_shape=(32, 32), centre=(20.0, 20.0)):
    """``model``'s patterns moved by a linear descan of +-``amplitude`` px in x and
    half that in y over the scan (bilinear); returns them and every position's
    ``(x, y)`` beam centre."""
    yy, xx = np.mgrid[: nav_shape[0], : nav_shape[1]]
    shift = np.stack(
        [
            amplitude * (2 * xx / (nav_shape[1] - 1) - 1),
            0.5 * amplitude * (2 * yy / (nav_shape[0] - 1) - 1),
        ],
        axis=-1,
    ).reshape(-1, 2)
    moved = np.stack(
        [
            ndimage.shift(p, (d[1], d[0]), order=1, mode="nearest")
            for p, d in zip(model, shift)
        ]
    )
    return moved, shift + np.asarray(centre)


def test_grain_patterns_are_compared_about_each_regions_own_beam():
    """Under descan the whole pattern moves with the beam: with the beam of every
    position (``cnmf_beam_positions``) each grain's mean pattern is compared about
    its own beam and the grains are classed as without descan; about one fixed
    centre, 3 px of descan makes the rhomb grain the square grains' phase."""
    f, m, model, grains = _mixed_component()
    kw = dict(nav_shape=(32, 32), direct_beam_radius=5.0, disk_radius=3.0)
    still = cl.cluster_components(
        f, m, (20.0, 20.0), region_patterns=_means(model), **kw
    )
    moved, beam = _descan(model, 3.0)
    fixed = cl.cluster_components(
        f, m, (20.0, 20.0), region_patterns=_means(moved), **kw
    )
    found = [np.bincount(fixed.position_labels[grains[i]]).argmax() for i in range(3)]
    assert found[0] == found[1] == found[2]  # the failure: one phase for all
    res = cl.cluster_components(
        f, m, (20.0, 20.0), region_patterns=_means(moved), beam_positions=beam, **kw
    )
    np.testing.assert_array_equal(res.position_labels, still.position_labels)
    # without descan the beam positions change nothing
    flat = np.tile([20.0, 20.0], (32 * 32, 1))
    same = cl.cluster_components(
        f, m, (20.0, 20.0), region_patterns=_means(model), beam_positions=flat, **kw
    )
    np.testing.assert_array_equal(same.position_labels, still.position_labels)
    with pytest.raises(ValueError, match="beam_positions"):
        cl.cluster_components(f, m, (20.0, 20.0), beam_positions=beam[:-1], **kw)


def test_bragg_filter_is_taken_about_the_patterns_most_isotropic_centre():
    """A glass pattern whose halo sits 1.5 px off the scan's centre (descan) leaves,
    about that centre, a crescent of excess that the filter takes for disks; of the
    candidate centres its own, about which the excess is least, is taken. A grain's
    disks stay."""
    from hyperspy_cnmf.clustering._components import _bragg_filters, _ring_excess

    own = (21.5, 20.0)
    glass = _disks([], halo=1.0, centre=own) + 0.05
    beyond = np.hypot(*np.mgrid[-20:21, -18.5:22.5]) > 7.0  # 2 px beyond the beam
    excess = [_ring_excess(glass, c, 3.0)[1][beyond].sum() for c in ((20.0, 20.0), own)]
    assert excess[1] < 0.5 * excess[0]  # a crescent about the scan's centre (0.26)
    both = np.array([[[20.0, 20.0], list(own)]])
    # about its own centre, 1.5 px from the first (where the fit left the beam
    # out), the zone zeroed about the beam reaches 1.5 px farther
    np.testing.assert_array_equal(
        _bragg_filters(glass[None], both, 3.0, 5.0),
        _bragg_filters(glass[None], own, 3.0, 6.5),
    )
    grain = glass + _disks([(10, a, 1.0) for a in (20, 110, 200, 290)], centre=own)
    best = _bragg_filters(grain[None], both, 3.0, 5.0)[0].reshape(41, 41)
    direct = _bragg_filters(grain[None], own, 3.0, 6.5)[0].reshape(41, 41)
    np.testing.assert_array_equal(best, direct)
    x, y = own[0] + 10 * np.cos(np.deg2rad(20)), own[1] + 10 * np.sin(np.deg2rad(20))
    assert best[int(round(y)), int(round(x))] > 0.5 * best.max()


def test_beam_offsets_of_regions_and_of_their_model_patterns():
    """A region's offset is its positions' mean beam less the scan's (NaN left out);
    its model pattern's, its components' offsets (each the mean over its map, by
    contribution) weighted by their counts in the region."""
    from hyperspy_cnmf.clustering._components import _beam_offsets, _model_offsets

    beam = np.array([[10.0, 5.0], [12.0, 5.0], [14.0, 8.0], [np.nan, np.nan]])
    region = np.array([0, 0, 1, 1])
    mean = np.array([12.0, 6.0])
    np.testing.assert_allclose(
        _beam_offsets(region, 3, beam),
        [[11.0 - 12.0, 5.0 - 6.0], [14.0 - 12.0, 8.0 - 6.0], [0.0, 0.0]],
    )
    assert not _beam_offsets(region, 2, None).any()
    assert not _beam_offsets(region, 2, np.full((4, 2), np.nan)).any()
    loadings = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 5.0]])
    comp = np.array([[11.0, 5.0], [14.0, 8.0]]) - mean  # NaN position: no weight
    weights = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]])
    factor_sum = np.array([1.0, 3.0])
    out = _model_offsets(weights, loadings, factor_sum, beam)
    np.testing.assert_allclose(out[0], comp[0])
    np.testing.assert_allclose(out[1], (0.5 * comp[0] + 1.5 * comp[1]) / 2.0)
    assert (
        not out[2].any()
        and not _model_offsets(weights, loadings, factor_sum, None).any()
    )


def test_rim_release_falls_back_on_the_far_null_without_a_null_shell():
    """A region with other regions all around it has no null shell: its own
    positions are judged against the matrix far from every grain (FAR), so the
    glass it took goes back; with a null shell that one is used."""
    from hyperspy_cnmf.clustering._components import (
        EDGE,
        FAR,
        INSIDE,
        NULL,
        _rim_release,
    )

    rng = np.random.default_rng(0)
    inside, glass, far = np.arange(10), np.arange(10, 16), np.arange(100, 140)
    at = np.r_[inside, glass, far]
    which = np.zeros(at.size, dtype=np.int64)
    role = np.r_[
        np.full(inside.size, INSIDE), np.full(glass.size, EDGE), np.full(far.size, FAR)
    ].astype(np.int8)
    response = np.r_[
        100.0 + rng.normal(0, 1, inside.size),
        np.full(glass.size, 0.2),
        rng.normal(0, 1, far.size),
    ]
    released = _rim_release(at, which, role, response, 1)
    assert set(released) == set(glass)
    # a null shell of its own (here far above the glass) takes precedence
    shell = np.arange(200, 230)
    at2 = np.r_[at, shell]
    which2 = np.zeros(at2.size, dtype=np.int64)
    role2 = np.r_[role, np.full(shell.size, NULL)].astype(np.int8)
    response2 = np.r_[response, -50.0 + rng.normal(0, 1, shell.size)]
    assert _rim_release(at2, which2, role2, response2, 1).size == 0


def test_on_crystal_borders_marks_the_rim_a_larger_unlike_crystal_lends():
    """Own positions next to a larger crystal region whose pattern is unlike the
    region's are marked (their disks may be that crystal's rim); not next to a
    smaller one, an alike one (pieces of one grain) or a region without a crystal."""
    from hyperspy_cnmf.clustering._components import INSIDE, _on_crystal_borders

    grid = np.full((6, 8), -1)
    grid[:, :4] = 0  # a large crystal
    grid[:, 4:6] = 1  # a patch beside it
    grid[:, 7] = 2  # apart
    region = grid.ravel()
    at = np.flatnonzero(region >= 0)
    which = region[at]
    role = np.full(at.size, INSIDE, dtype=np.int8)
    crystal = np.ones(3, dtype=bool)
    unlike = ~np.eye(3, dtype=bool)
    out = _on_crystal_borders(at, which, role, region, (6, 8), crystal, unlike)
    x = at % 8
    np.testing.assert_array_equal(out, (which == 1) & (x == 4))
    alike = unlike.copy()
    alike[1, 0] = False
    assert not _on_crystal_borders(
        at, which, role, region, (6, 8), crystal, alike
    ).any()
    none = np.array([False, True, True])
    assert not _on_crystal_borders(at, which, role, region, (6, 8), none, unlike).any()
    # a touch at a corner counts (8-connectivity)
    corner = np.full((6, 8), -1)
    corner[:3, :3] = 0
    corner[3:, 3:5] = 1
    region = corner.ravel()
    at = np.flatnonzero(region >= 0)
    which, role = region[at], np.full(at.size, INSIDE, dtype=np.int8)
    out = _on_crystal_borders(
        at, which, role, region, (6, 8), crystal[:2], unlike[:2, :2]
    )
    assert out.sum() == 1 and at[out][0] == 3 * 8 + 3


def test_rim_release_returns_a_probes_tail_at_high_counts():
    """Edge positions whose excess stays below RELEASE_FRACTION of the grain's interior
    go back to the matrix where the interior stands RELEASE_INTERIOR_Z above the null
    (high counts: the tail of a probe outside the grain is significant, yet weak);
    at low counts only the robust z decides."""
    from hyperspy_cnmf.clustering._components import (
        EDGE,
        GRAIN_RELEASE_Z,
        INSIDE,
        NULL,
        RELEASE_FRACTION,
        RELEASE_INTERIOR_Z,
        _bragg_filters,
        _rim_release,
        _rim_requests,
    )

    grain, halo, yy, xx, d = _grain_on_glass()
    core, ring = d <= 4.0, (d > 4.0) & (d <= 5.5)
    region = np.where((core | ring).ravel(), 0, -1)  # the map took a ring of glass
    at, which, role = _rim_requests(region, region < 0, (32, 32))
    filters = _bragg_filters(grain[None], (20.0, 20.0), 3.0, 5.0)
    edges = set(at[role == EDGE])
    assert edges <= set(np.flatnonzero(ring.ravel()))

    def release(counts, share):
        amount = np.where(core, 1.0, np.where(ring, share, 0.0)).ravel()
        model = counts * (halo[None] + amount[:, None, None] * grain[None])
        data = np.random.default_rng(1).poisson(model).astype(float).reshape(1024, -1)
        response = np.einsum("ij,ij->i", data[at], filters[which])
        null = response[role == NULL]
        med = np.median(null)
        mad = 1.4826 * np.median(np.abs(null - med))
        z = (response - med) / mad
        interior = np.median(z[role == INSIDE])
        return set(_rim_release(at, which, role, response, 1)), z, interior

    tail = 0.5 * RELEASE_FRACTION
    released, z, interior = release(3000.0, tail)
    assert interior >= RELEASE_INTERIOR_Z and z[role == EDGE].min() > 3.5
    assert released == edges  # significant, yet a tail
    assert not release(3000.0, 3 * RELEASE_FRACTION)[0]  # a rim: kept
    released, z, interior = release(2.0, tail)
    assert interior < RELEASE_INTERIOR_Z  # low counts: the robust z alone
    own = (role == EDGE) | (role == INSIDE)
    assert released == set(at[own & (z < GRAIN_RELEASE_Z)])
    assert (z[role == EDGE] >= GRAIN_RELEASE_Z).any()  # some of the tail kept


def test_crystal_evidence_on_a_larger_crystals_border_is_borrowed():
    """A region whose disks show only on its positions next to a larger crystal
    unlike it (that crystal's rim, in a patch of glass) has no evidence of its own:
    its test, repeated without them, fails; elsewhere, or next to an alike region,
    it keeps its evidence; a region left without positions has none."""
    from hyperspy_cnmf.clustering._components import (
        INSIDE,
        NULL,
        STRONG_CRYSTAL_Z,
        _borrowed_evidence,
    )

    rng = np.random.default_rng(0)
    grid = np.full((12, 16), -1)
    grid[2:8, :5] = 0  # a large crystal (30 positions)
    grid[2:8, 5:7] = 1  # a patch beside it (12)
    grid[10, 5:7] = 2  # a small region apart (2)
    region = grid.ravel()
    own = np.flatnonzero(region >= 0)
    null = np.flatnonzero(grid.ravel() < 0)[:60]
    at = np.concatenate([own] + [null] * 3)
    which = np.concatenate([region[own]] + [np.full(null.size, r) for r in range(3)])
    role = np.concatenate(
        [np.full(own.size, INSIDE), np.full(3 * null.size, NULL)]
    ).astype(np.int8)
    response = rng.standard_normal(at.size)
    x = at % 16
    response[(which == 0) & (role == INSIDE)] += 30.0
    touching = (which == 1) & (role == INSIDE) & (x == 5)
    response[touching] += 3.0 * STRONG_CRYSTAL_Z  # its disks: the crystal's rim
    response[(which == 2) & (role == INSIDE)] += 30.0
    tested = np.ones(3, dtype=bool)
    count = np.array([30, 12, 2])
    unlike = ~np.eye(3, dtype=bool)
    args = (at, which, role, response, region, grid.shape)
    faint, weak = _borrowed_evidence(*args, tested, count, unlike)
    assert faint.tolist() == [False, True, False] and weak.tolist() == faint.tolist()
    alike = unlike.copy()
    alike[1, 0] = False  # a piece of the same grain lends nothing
    assert not _borrowed_evidence(*args, tested, count, alike)[0].any()
    far = response.copy()
    far[touching] -= 3.0 * STRONG_CRYSTAL_Z
    far[(which == 1) & (role == INSIDE) & (x == 6)] += 3.0 * STRONG_CRYSTAL_Z
    faint, weak = _borrowed_evidence(*args[:3], far, *args[4:], tested, count, unlike)
    assert not faint[1] and not weak[1]  # its own disks, away from the border
    # every position on the border: none left to show a crystal of its own
    grid2 = grid.copy()
    grid2[2:8, 6] = -1
    region2 = grid2.ravel()
    keep = (region2[at] >= 0) | (role == NULL)
    args2 = (at[keep], which[keep], role[keep], response[keep])
    faint, weak = _borrowed_evidence(
        *args2, region2, grid.shape, tested, np.array([30, 6, 2]), unlike
    )
    assert faint[1] and weak[1]


def test_mean_patterns_align_each_position_as_the_member_that_dominates_it():
    """``mean_patterns``: the model over a cluster's positions, each rotated as its owner."""
    yy, xx = np.mgrid[:21, :21]
    spot = np.exp(-((xx - 16.0) ** 2 + (yy - 10.0) ** 2))
    beam = np.exp(-((xx - 10.0) ** 2 + (yy - 10.0) ** 2))
    f = np.stack(
        [
            spot,
            np.nan_to_num(
                cl.rotate_patterns(spot, (10, 10), 90)
            ),  # the same grain rotated
            np.full((21, 21), 0.1),  # the glass
            100 * beam,  # a beam-only component, attached to the grains' cluster
        ]
    )
    f[:, 0, 0] = np.nan  # a masked detector pixel
    # positions: grain a, grain b, glass, glass, an undecided one
    w = np.array(
        [
            [2.0, 0.0, 0.0, 0.0, 1.0],
            [0.0, 2.0, 0.0, 0.0, 0.0],
            [1.0, 1.0, 1.0, 1.0, 1.0],
            [1.0, 1.0, 0.0, 0.0, 0.0],
        ]
    )
    labels, rot = [0, 0, 1, 0], [0.0, -90.0, 0.0, 0.0]
    aligned = np.array([True, True, True, False])
    m = cl.mean_patterns(f, w, labels, [0, 0, 1, 1, -1], (10, 10), rot, aligned=aligned)
    assert m.shape == (2, 21, 21) and np.isnan(m[:, 0, 0]).all()
    # both grains' spots on the reference's, with the glass and the beam under them
    assert m[0, 10, 16] == pytest.approx(2 * spot.max() + 0.1, rel=1e-6)
    assert m[0, 16, 10] == pytest.approx(0.1 + 100 * beam[16, 10], abs=1e-6)
    assert m[0, 10, 10] == pytest.approx(100.1, rel=1e-6)
    np.testing.assert_allclose(m[1][1:, 1:], 0.1)  # the glass positions' own mean
    # the beam-only member, the largest everywhere, would own the grains: no alignment
    m2 = cl.mean_patterns(f, w, labels, [0, 0, 1, 1, -1], (10, 10), rot)
    assert m2[0, 10, 16] == pytest.approx(spot.max() + 0.1, rel=1e-3)
    # a cluster without positions is NaN; the undecided position counts nowhere
    m3 = cl.mean_patterns(f, w, [0, 0, 2, 0], [0, 0, 2, 2, -1], (10, 10), rot)
    assert np.isnan(m3[1]).all() and np.isfinite(m3[2][1:, 1:]).all()
    # a dead detector column off the centre: where the one rotated grain brings it,
    # no position has data (NaN, not another orientation's counts); corners that
    # every rotation brings in from outside the detector take the unrotated mean
    g = f.copy()
    g[:, :, 3] = np.nan
    m4 = cl.mean_patterns(
        g, w, labels, [1, 0, 1, 1, -1], (10, 10), rot, aligned=aligned
    )
    assert np.isnan(m4[0, 17, :]).all() and np.isnan(m4[0, :, 3]).all()
    m5 = cl.mean_patterns(
        f, w, labels, [1, 0, 1, 1, -1], (10, 10), [0, 45, 0, 0], aligned=aligned
    )
    assert np.isnan(cl.rotate_patterns(np.ones((21, 21)), (10, 10), 45.0)[20, 20])
    assert m5[0, 20, 20] == pytest.approx(0.1 + 100 * beam[20, 20])  # unrotated
    with pytest.raises(ValueError, match="Shapes disagree"):
        cl.mean_patterns(f, w[:, :3], labels, [0, 0, 1, 1, -1], (10, 10), rot)


def test_clustering_stores_the_mean_pattern_of_each_cluster(result, data):
    # the pipeline's mean patterns are mean_patterns of its own labels and alignment
    factors, loadings, _, _ = data
    again = cl.mean_patterns(
        factors,
        loadings,
        result.labels,
        result.position_labels,
        tuple(result.centre),
        result.rotation,
        result.mirrored,
        aligned=~result.beam_only,
    )
    np.testing.assert_array_equal(result.mean_patterns, again)
    assert result.mean_patterns.shape == result.merged_factors.shape
    # the alignment moves counts, it does not make them: each cluster's mean holds the
    # model's counts per position there (the matrix under a grain included)
    model = loadings.T @ factors.reshape(len(factors), -1)
    for c in range(result.mean_patterns.shape[0]):
        on = result.position_labels == c
        per_position = model[on].sum(axis=1).mean()
        assert np.nansum(result.mean_patterns[c]) == pytest.approx(
            per_position, rel=0.02
        )


def test_rim_release_under_a_broad_probe_returns_a_tenth_of_the_core():
    """Under a probe broader than RIM_MAX_PROBE_FWHM steps (``broad``) any own position
    whose excess stays below CORE_RELEASE_FRACTION of the region's upper decile goes
    back (the probe's tail a step or two into the glass), wherever it lies in the
    region; a rim at three times that share stays; without ``broad`` the tail inside
    the region is kept."""
    from hyperspy_cnmf.clustering._components import (
        CORE_RELEASE_FRACTION,
        EDGE,
        INSIDE,
        _bragg_filters,
        _rim_release,
        _rim_requests,
    )

    grain, halo, yy, xx, d = _grain_on_glass()
    core, ring = d <= 4.0, (d > 4.0) & (d <= 7.5)  # two to three steps of glass
    region = np.where((core | ring).ravel(), 0, -1)
    at, which, role = _rim_requests(region, region < 0, (32, 32))
    filters = _bragg_filters(grain[None], (20.0, 20.0), 3.0, 5.0)
    own = (role == EDGE) | (role == INSIDE)
    tail_inside = own & (role == INSIDE) & ring.ravel()[at]
    assert tail_inside.any()  # glass that the plain release does not test

    def release(share, broad):
        amount = np.where(core, 1.0, np.where(ring, share, 0.0)).ravel()
        model = 3000.0 * (halo[None] + amount[:, None, None] * grain[None])
        data = np.random.default_rng(1).poisson(model).astype(float).reshape(1024, -1)
        response = np.einsum("ij,ij->i", data[at], filters[which])
        fraction = CORE_RELEASE_FRACTION if broad else 0.0
        return set(_rim_release(at, which, role, response, 1, core_fraction=fraction))

    tail = 0.5 * CORE_RELEASE_FRACTION
    released = release(tail, True)
    assert released == set(at[own & ring.ravel()[at]])
    assert not released & set(np.flatnonzero(core.ravel()))
    assert not set(at[tail_inside]) & release(tail, False)
    assert not release(3 * CORE_RELEASE_FRACTION, True)  # a rim: kept


def test_mixed_region_placed_by_its_pattern_needs_a_rims_evidence():
    """A region mostly of glass about a small grain (median z below MIXED_FRACTION of
    its upper decile) counts as placed when it carries a phase's label: its glass,
    a little above the null through the component's self-selection, goes back, the
    grain stays. A region that is all grain is not mixed."""
    from hyperspy_cnmf.clustering._components import (
        FAR,
        INSIDE,
        MIXED_FRACTION,
        _mixed_regions,
        _rim_release,
    )

    rng = np.random.default_rng(0)
    null = rng.normal(size=64)
    own = np.r_[rng.normal(14.0, 2.0, 12), rng.normal(2.0, 1.0, 95)]  # grain, glass
    response = np.r_[null, own, null, rng.normal(14.0, 2.0, 40)]
    at = np.r_[np.arange(64), 100 + np.arange(107), np.arange(64), 300 + np.arange(40)]
    which = np.r_[np.zeros(171, np.int64), np.ones(104, np.int64)]
    role = np.r_[
        np.full(64, FAR), np.full(107, INSIDE), np.full(64, FAR), np.full(40, INSIDE)
    ]
    mixed = _mixed_regions(at, which, role, response, 2)
    assert mixed.tolist() == [True, False]
    z = own / (1.4826 * np.median(np.abs(null - np.median(null))))
    assert np.median(z) < MIXED_FRACTION * np.percentile(z, 90)
    plain = set(_rim_release(at, which, role, response, 2))
    placed = set(_rim_release(at, which, role, response, 2, placed=mixed))
    grain_at, glass_at = set(100 + np.arange(12)), set(100 + 12 + np.arange(95))
    assert not placed & grain_at
    assert len(placed & glass_at) > len(plain & glass_at) + 50
    assert placed - plain <= glass_at


def test_disk_contrast_tells_a_steady_patch_of_glass_from_a_crystal():
    """The contrast of a region's disks in its mean pattern does not grow with the
    counts: a patch of glass whose speckle is steady over it stays below
    MIN_DISK_CONTRAST at any dose while its robust z grows past CRYSTAL_Z's level; a
    grain's disks stand far above; the level falls as sqrt(20 / n)."""
    from hyperspy_cnmf.clustering._components import (
        MIN_DISK_CONTRAST,
        _bragg_filters,
        _contrast_level,
        _crystal_level,
        _crystal_scores,
        _disk_contrast,
        _rim_requests,
    )

    grain, halo, yy, xx, d = _grain_on_glass()
    rng = np.random.default_rng(5)
    # the patch's own speckle, steady over it (the same atoms' order in every pattern)
    speckle = 1.0 + 0.5 * ndimage.gaussian_filter(rng.normal(size=halo.shape), 1.0)
    speckle = np.clip(speckle, 0.0, None)
    patch = d <= 4.5
    region = np.where(patch.ravel(), 0, -1)
    at, which, role = _rim_requests(region, region < 0, (32, 32))
    n_own = int(patch.sum())
    assert _contrast_level(n_own) < MIN_DISK_CONTRAST == _contrast_level(10)
    out = {}
    for name, inside in (("glass", halo * speckle), ("grain", halo + 3.0 * grain)):
        for counts in (3000.0, 100000.0):
            model = np.where(patch.ravel()[:, None, None], inside[None], halo[None])
            data = rng.poisson(counts * model).astype(float).reshape(1024, -1)
            mean = data[patch.ravel()].mean(0).reshape(1, 41, 41)
            filters = _bragg_filters(mean, (20.0, 20.0), 3.0, 5.0)
            response = np.einsum("ij,ij->i", data[at], filters[which])
            q75 = _crystal_scores(at, which, role, response, filters, mean)[0][0]
            c = _disk_contrast(at, which, role, response, filters, mean)[0]
            out[name, counts] = q75, c
    for counts in (3000.0, 100000.0):
        assert out["glass", counts][1] < _contrast_level(n_own)
        assert out["grain", counts][1] > 2 * MIN_DISK_CONTRAST
    # the robust z of the glass patch grows with the dose past the crystal level
    assert out["glass", 100000.0][0] > max(
        _crystal_level(n_own), out["glass", 3000.0][0]
    )


def _one_region_on_a_far_null(n):
    """One region's ``n`` own positions (INSIDE) after 64 far-null positions (FAR) with
    normal responses, and one 3 x 3 filter (three disk pixels, six of their rings):
    ``(null responses, filters, at, which, role)``."""
    from hyperspy_cnmf.clustering._components import FAR, INSIDE

    null = np.random.default_rng(2).normal(size=64)
    filters = np.zeros((1, 9), dtype=np.float32)
    filters[0, :3], filters[0, 3:] = 1.0 / 3.0, -1.0 / 6.0  # disks and their rings
    at = np.r_[np.arange(64), 100 + np.arange(n)]
    which = np.zeros(64 + n, dtype=np.int64)
    role = np.r_[np.full(64, FAR), np.full(n, INSIDE)]
    return null, filters, at, which, role


def test_faint_asks_a_low_z_region_for_contrast():
    """A region whose upper quartile passes the size-scaled crystal level but stays
    below CRYSTAL_Z is no evidence of a phase of its own where its disks' contrast
    stays below the level (a steady patch of glass); with the same z and clear
    contrast, or far above the noise whatever its contrast, it is evidence."""
    from hyperspy_cnmf.clustering._components import (
        CRYSTAL_Z,
        _contrast_level,
        _crystal_level,
        _crystal_scores,
        _disk_contrast,
        _faint,
    )

    n = 55
    null, filters, at, which, role = _one_region_on_a_far_null(n)

    def faint(z, disks):
        response = np.r_[
            null,
            np.full(
                n,
                np.median(null)
                + z * 1.4826 * np.median(np.abs(null - np.median(null))),
            ),
        ]
        patterns = np.r_[np.full(3, disks), np.full(6, 1000.0)].reshape(1, 3, 3)
        scores = _crystal_scores(at, which, role, response, filters, patterns)
        c = _disk_contrast(at, which, role, response, filters, patterns)[0]
        return bool(_faint(at, which, role, response, filters, patterns, scores)[0]), c

    z = 0.5 * (_crystal_level(n) + CRYSTAL_Z)  # passes the size-scaled level only
    assert _crystal_level(n) < z < CRYSTAL_Z
    glass, c = faint(z, 1000.0)  # the disks no brighter than their rings
    assert glass and c < _contrast_level(n)
    crystal, c = faint(z, 5000.0)
    assert not crystal and c > _contrast_level(n)
    assert not faint(2 * CRYSTAL_Z, 1000.0)[0]  # far above the noise
    assert faint(0.5 * _crystal_level(n), 5000.0)[0]  # within the noise


def _spots(centres, shape=(41, 41), radius=2.0, weights=None):
    """A pattern of flat disks of ``radius`` px at ``centres`` ((n, 2) x, y px) on a
    weak uniform background."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.full(shape, 0.01)
    for i, (x, y) in enumerate(centres):
        w = 1.0 if weights is None else weights[i]
        out += w * (np.hypot(xx - x, yy - y) <= radius)
    return out


def test_lattice_closure_tells_a_crystals_disks_from_the_glasss_speckle():
    """A crystal's disks are its reciprocal lattice's points: the sum or difference of
    two is a third wherever the detector shows it (closure 1 for a rotated square
    lattice, a centred rectangular one and a systematic row). Spots of the glass's
    speckle at random azimuths on its halo, in Friedel pairs, close by chance only:
    below LATTICE_CLOSURE on average over 40 draws. One disk, or none, is not judged
    (NaN)."""
    from hyperspy_cnmf.clustering._components import (
        LATTICE_CLOSURE,
        _lattice_closure,
    )

    c = np.array([20.0, 20.0])

    def lattice(a, b, reach=6):
        # every point whose disk the detector shows, if only in part
        pts = [
            c + i * np.asarray(a) + j * np.asarray(b)
            for i in range(-reach, reach + 1)
            for j in range(-reach, reach + 1)
            if (i, j) != (0, 0)
        ]
        return [p for p in pts if np.all((p >= -1) & (p <= 41))]

    t = np.deg2rad(17.0)
    square = lattice(7 * np.r_[np.cos(t), np.sin(t)], 7 * np.r_[-np.sin(t), np.cos(t)])
    centred = [
        p
        for p in lattice((6.0, 0.0), (0.0, 8.0))
        if round((p[0] - c[0]) / 6.0 + (p[1] - c[1]) / 8.0) % 2 == 0
    ]
    row = [c + i * np.r_[5.0, 3.0] for i in range(-4, 5) if i]
    patterns = np.stack([_spots(p) for p in (square, centred, row)])
    closure = _lattice_closure(patterns, np.tile(c, (3, 1)), 2.0, np.full(3, 3.0))
    assert np.all(closure >= 0.9), closure
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(40):
        phi = rng.uniform(0, np.pi, 3)  # three Friedel pairs on the halo (r = 12 px)
        g = 12.0 * np.c_[np.cos(phi), np.sin(phi)]
        speckle = _spots(np.r_[c + g, c - g], weights=rng.uniform(0.5, 1.0, 6))
        draws.append(_lattice_closure(speckle[None], c[None], 2.0, np.array([3.0]))[0])
    assert np.nanmean(draws) < LATTICE_CLOSURE
    one = _spots([c + (10.0, 0.0)])[None]
    assert np.isnan(_lattice_closure(one, c[None], 2.0, np.array([3.0]))[0])


def test_lattice_closure_of_thousands_of_maxima_stays_small():
    """Review (session 28): a noisy full-resolution factor (the NIST scan unbinned, 256 x 256
    px, k = 4) holds thousands of maxima; the nearest disk of every sum and difference was
    found on a dense (pairs x disks) array: 26.9 GiB asked, a crash (here 47 GiB). A k-d tree over blocks
    of pairs: a 42 x 42 lattice of disks (1764 maxima) closes (sums and differences of
    lattice points are lattice points), and its one in-memory block stays small."""
    from hyperspy_cnmf.clustering import _components as comp

    shape = (256, 256)
    c = np.array([128.0, 128.0])
    peak = np.zeros(shape, dtype=bool)
    peak[2:254:6, 2:254:6] = True  # 1764 maxima on a square lattice through the centre
    found = [(None, None, np.ones(shape), peak)]
    closure = comp._lattice_closure(
        np.zeros((1,) + shape), c[None], 2.0, np.array([3.0]), found=found
    )
    assert closure[0] >= 0.95  # sums near the edges land beyond the last disks
    assert comp._CLOSURE_PAIRS * 2 * 2 * 8 < 64 * 2**20  # sums and differences, x and y


def test_faint_asks_a_region_below_the_strong_level_for_a_lattice():
    """A region whose upper quartile passes CRYSTAL_Z and whose disks stand out of their
    rings is still no evidence of a phase of its own where its disks close as a
    lattice less than LATTICE_CLOSURE (a patch of glass whose speckle an over-complete
    fit selected), or cannot be judged as one (NaN: a lone Friedel pair of the glass's
    own mean pattern), while it stays below STRONG_CRYSTAL_Z; a lattice, or a region
    far above the glass whatever its disks, is evidence."""
    from hyperspy_cnmf.clustering._components import (
        CRYSTAL_Z,
        LATTICE_CLOSURE,
        STRONG_CRYSTAL_Z,
        _crystal_scores,
        _faint,
    )

    n = 30
    null, filters, at, which, role = _one_region_on_a_far_null(n)
    patterns = np.r_[np.full(3, 5000.0), np.full(6, 1000.0)].reshape(1, 3, 3)
    mad = 1.4826 * np.median(np.abs(null - np.median(null)))

    def faint(z, closure):
        response = np.r_[null, np.full(n, np.median(null) + z * mad)]
        scores = _crystal_scores(at, which, role, response, filters, patterns)
        args = (at, which, role, response, filters, patterns, scores)
        return bool(_faint(*args, closure=np.array([closure]))[0])

    z = 0.5 * (CRYSTAL_Z + STRONG_CRYSTAL_Z)
    assert faint(z, 0.5 * LATTICE_CLOSURE)
    assert not faint(z, 2 * LATTICE_CLOSURE)
    assert faint(z, np.nan)
    assert not faint(1.5 * STRONG_CRYSTAL_Z, 0.0)
    assert not faint(1.5 * STRONG_CRYSTAL_Z, np.nan)


def test_grain_count_counts_the_regions_of_every_cluster_but_the_matrix():
    """Connected regions (8-connected) of at least REFIT_GRAIN_POSITIONS positions; the cluster
    with the most positions is the matrix; unlabelled positions (-1) count for none."""
    lab = np.zeros((20, 20), int)
    lab[1:5, 1:5] = 1  # 16 positions
    lab[10:14, 10:14] = 1  # a second grain of the same phase
    lab[5:8, 5:8] = 1  # 9, touching the first diagonally: one region with it
    lab[15:19, 1:5] = 2
    lab[0, 19] = 2  # a lone position: no grain
    lab[17:19, 17:20] = 3  # 6 positions < 10
    lab[19, 0] = -1
    assert cl.REFIT_GRAIN_POSITIONS == 10
    assert cl.grain_count(lab.ravel(), (20, 20)) == 3
    assert cl.grain_count(np.zeros(400, int), (20, 20)) == 0
    assert cl.grain_count(np.full(400, -1), (20, 20)) == 0
