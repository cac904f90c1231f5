"""Tests of the clustering core (numpy/numba/scipy only): hyperspy_cnmf.clustering."""

import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from hyperspy_cnmf import clustering as cl
from hyperspy_cnmf.data._simulate import render_bragg_pattern, render_matrix_pattern

SHAPE = (48, 48)
CENTRE_RC = (24.0, 24.0)  # (row, column) of the direct beam
CENTRE = (24.0, 24.0)  # (x, y)
K_SCALE = 0.4
RADIUS = 1.0


def spots(angles_deg, radius=12.0, sigma=1.2, shape=(65, 65), centre=(32.0, 32.0)):
    """Gaussian spots at ``radius`` px and the given azimuths (from +x to +y)."""
    yy, xx = np.indices(shape, dtype=float)
    out = np.zeros(shape)
    for a in np.deg2rad(np.atleast_1d(angles_deg)):
        x = centre[0] + radius * np.cos(a)
        y = centre[1] + radius * np.sin(a)
        out += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return out


def phase_pattern(phase, rotation):
    return render_bragg_pattern(SHAPE, CENTRE_RC, K_SCALE, RADIUS, phase, rotation)


@pytest.fixture(scope="module")
def matrix_pattern():
    return render_matrix_pattern(SHAPE, CENTRE_RC, K_SCALE, RADIUS)


@pytest.fixture(scope="module")
def component_stack(matrix_pattern):
    """Components as an over-complete NMF would give: split and rotated grains.

    Matrix: 3 noisy copies; hexagonal (phase 1) and square (phase 2) grains at
    random rotations, each split into two components rotated 2 degrees apart.
    Returns (patterns (k, qy, qx), phase of each component).
    """
    rng = np.random.default_rng(3)
    pats, phases = [], []
    for _ in range(3):
        pats.append(matrix_pattern * (1 + 0.05 * rng.standard_normal(SHAPE)))
        phases.append(0)
    for phase, n_grains in ((1, 3), (2, 3)):
        for rot in rng.uniform(0, 360, n_grains):
            for delta in (-1.0, 1.0):
                p = phase_pattern(phase, rot + delta) + 0.02 * matrix_pattern
                pats.append(p * (1 + 0.05 * rng.standard_normal(SHAPE)))
                phases.append(phase)
    pats = np.clip(np.array(pats), 0, None)
    order = rng.permutation(len(pats))
    scale = rng.uniform(0.1, 10.0, len(pats))[:, None, None]  # NMF scale is arbitrary
    return pats[order] * scale, np.array(phases)[order]


# --------------------------------------------------------------------------
# Import hygiene
# --------------------------------------------------------------------------
def test_core_does_not_import_hyperspy_or_dask():
    code = (
        "import sys, numpy as np\n"
        "import hyperspy_cnmf.clustering as c\n"
        "c.polar_transform(np.ones((2, 9, 9)), centre=(4, 4))\n"
        "bad = [m for m in ('hyperspy', 'dask', 'py4DSTEM') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------
# Polar transform
# --------------------------------------------------------------------------
def test_polar_transform_shapes_and_defaults():
    data = np.random.default_rng(0).random((2, 3, 41, 41))
    polar, radii, theta = cl.polar_transform(data, centre=(20, 20))
    assert radii[0] == 0 and radii[-1] == 20
    assert theta.size == cl.default_n_theta(20) >= 8 * 20
    assert polar.shape == (2, 3, radii.size, theta.size)
    polar2, radii2, theta2 = cl.polar_transform(
        data[0, 0], centre=(20, 20), radial_range=(2, 10), delta_r=0.5, delta_theta=2.0
    )
    assert polar2.shape == (17, 180)
    assert radii2[0] == 2 and radii2[-1] == 10
    assert np.allclose(np.diff(theta2), 2.0)


def test_polar_transform_geometry():
    img = spots([30.0], radius=12.0, sigma=0.8)
    polar, radii, theta = cl.polar_transform(img, centre=(32, 32), n_theta=360)
    r_i, t_i = np.unravel_index(np.argmax(polar), polar.shape)
    assert radii[r_i] == 12
    assert theta[t_i] == pytest.approx(30.0, abs=1.0)
    # the centre value is the pixel value at the centre
    assert np.allclose(polar[0], img[32, 32])


def test_polar_transform_reads_off_detector_rings_from_their_friedel_mates():
    """A centrosymmetric pattern (spots at +-g) cut by the detector's edge: with ``friedel``
    the off-detector half of a ring is its mate's (the full pattern's ring); without, NaN."""
    full = spots(
        [30.0, 210.0], radius=12.0, sigma=0.8
    )  # a Friedel pair, centre (32, 32)
    cut = full[24:, 24:]  # the -g spot (at 210 degrees) is off the detector
    grid = dict(radial_range=(0, 16), n_theta=360)
    ref, radii, theta = cl.polar_transform(full, centre=(32, 32), **grid)
    plain, _, _ = cl.polar_transform(cut, centre=(8, 8), **grid)
    filled, _, _ = cl.polar_transform(cut, centre=(8, 8), friedel=True, **grid)
    ring = radii == 12
    off = np.isnan(plain[ring][0])
    assert 100 < off.sum() < 260  # a good part of the ring lies off the detector
    mated = off & ~np.isnan(filled[ring][0])
    assert mated.sum() > 60  # filled from the other side
    assert np.isnan(filled[ring][0][off & ~mated]).all()  # both sides off: still NaN
    on = ~np.isnan(filled[ring][0])
    np.testing.assert_allclose(filled[ring][0][on], ref[ring][0][on], atol=1e-9)
    assert theta[np.argmax(np.nan_to_num(plain[ring][0]))] == pytest.approx(30, abs=1)
    assert filled[ring][0][np.argmin(np.abs(theta - 210))] == pytest.approx(
        ref[ring][0][np.argmin(np.abs(theta - 210))]
    )
    assert cl.clustering_radius((8, 8), cut.shape) == 32  # the farthest edge
    # an odd number of azimuths: the mate lies midway between two samples (their mean)
    odd, _, theta_odd = cl.polar_transform(
        cut, centre=(8, 8), friedel=True, radial_range=(0, 16), n_theta=361
    )
    full_odd, _, _ = cl.polar_transform(
        full, centre=(32, 32), radial_range=(0, 16), n_theta=361
    )
    plain_odd, _, _ = cl.polar_transform(
        cut, centre=(8, 8), radial_range=(0, 16), n_theta=361
    )
    assert np.isnan(odd[ring]).sum() < np.isnan(plain_odd[ring]).sum() - 60
    at = np.argmin(np.abs(theta_odd - 210))
    assert odd[ring][0][at] == pytest.approx(full_odd[ring][0][at], rel=0.05)


def test_polar_transform_nan_and_direct_beam_mask():
    img = np.ones((33, 33))
    img[16, 26] = np.nan  # one missing pixel on the +x axis, r = 10
    polar, radii, theta = cl.polar_transform(
        img, centre=(16, 16), n_theta=64, direct_beam_radius=3
    )
    assert np.all(np.isnan(polar[radii < 3]))
    missing = np.isnan(polar[radii >= 3])
    assert 0 < missing.sum() <= 6  # only next to the missing pixel
    assert np.allclose(polar[radii >= 3][~missing], 1.0)
    # auto: the estimated radius masks a bright disk
    yy, xx = np.indices((65, 65))
    disk = (np.hypot(xx - 32, yy - 32) <= 3).astype(float) + 0.01
    p, r, _ = cl.polar_transform(disk, centre=(32, 32), direct_beam_radius="auto")
    assert np.all(np.isnan(p[r <= 3])) and not np.any(np.isnan(p[r > 8]))


def test_polar_transform_errors():
    img = np.zeros((16, 16))
    with pytest.raises(ValueError, match="outside the pattern"):
        cl.polar_transform(img, centre=(20, 3))
    with pytest.raises(ValueError, match="outside the pattern"):
        cl.polar_transform(img, centre=(-0.5, 3))
    with pytest.raises(ValueError, match="radial_range"):
        cl.polar_transform(img, centre=(0, 0))  # on the border: no ring
    with pytest.raises(ValueError, match="wholly off the detector"):
        cl.polar_transform(img, centre=(8, 8), radial_range=(13, 20))  # corner 11.3 px
    cl.polar_transform(
        img, centre=(8, 8), radial_range=(12, 20)
    )  # within 1 px: accepted
    # a range that starts on the detector and runs off it is fine (NaN beyond)
    p, r, _ = cl.polar_transform(img, centre=(8, 8), radial_range=(10, 20))
    assert np.isnan(p[r > 11]).all() and not np.isnan(p[r == 10]).all()
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        cl.polar_transform(np.zeros(5), centre=(0, 0))
    with pytest.raises(ValueError, match="direct_beam_radius"):
        cl.polar_transform(img, centre=(8, 8), direct_beam_radius="big")


def test_find_direct_beam_and_radius():
    yy, xx = np.indices((64, 64), dtype=float)
    beam = 50 * np.exp(-((xx - 29.4) ** 2 + (yy - 35.2) ** 2) / 4.0)
    halo = np.exp(-((np.hypot(xx - 29.4, yy - 35.2) - 15) ** 2) / 8.0)
    x, y = cl.find_direct_beam(beam + halo)
    assert x == pytest.approx(29.4, abs=0.1) and y == pytest.approx(35.2, abs=0.1)
    r = cl.estimate_direct_beam_radius(beam + halo, (x, y))
    assert 3 <= r <= 8  # beyond the beam, inside the halo


def test_rotate_patterns_roundtrip_and_mirror():
    img = spots([10.0, 100.0, 200.0], radius=14, sigma=2.0)
    rot = cl.rotate_patterns(img, (32, 32), 40.0)
    back = cl.rotate_patterns(rot, (32, 32), -40.0)
    inner = np.hypot(*(np.indices(img.shape) - 32.0)) < 25
    assert np.abs(back - img)[inner].max() < 0.1  # two bilinear resamplings
    expected = spots([50.0, 140.0, 240.0], radius=14, sigma=2.0)
    assert np.abs(rot - expected)[inner].max() < 0.05
    assert np.isnan(rot[0, 0])  # the corner comes from outside the detector
    mir = cl.rotate_patterns(img, (32, 32), 0.0, mirror=True)
    assert np.allclose(mir, spots([-10.0, -100.0, -200.0], radius=14, sigma=2.0))


# --------------------------------------------------------------------------
# Similarity
# --------------------------------------------------------------------------
@pytest.mark.parametrize("angle", [17.3, -123.6, 179.0])
def test_similarity_recovers_rotation(angle):
    base = [0.0, 80.0, 200.0]  # no rotational symmetry
    stack = np.stack([spots(base), spots(np.add(base, angle))])
    polar, radii, _ = cl.polar_transform(stack, centre=(32, 32))
    res = cl.rotational_similarity(polar, radii=radii)
    assert res.similarity[0, 1] > 0.99
    # rotation[i, j]: rotating j by it matches i
    expected = (-angle + 180) % 360 - 180
    assert res.rotation[0, 1] == pytest.approx(expected, abs=0.4)
    assert res.rotation[1, 0] == pytest.approx(-expected, abs=0.4)
    aligned = cl.rotate_patterns(stack[1], (32, 32), res.rotation[0, 1])
    inner = np.hypot(*(np.indices(stack[0].shape) - 32.0)) < 25
    assert np.corrcoef(aligned[inner], stack[0][inner])[0, 1] > 0.98
    assert np.allclose(np.diag(res.similarity), 1) and not res.mirrored.any()
    assert np.allclose(res.pseudo_distance, res.pseudo_distance.T)


def test_similarity_mirror():
    chiral = spots([0.0, 70.0, 190.0])
    mirrored_rotated = cl.rotate_patterns(chiral, (32, 32), 33.0, mirror=True)
    stack = np.nan_to_num(np.stack([chiral, mirrored_rotated]))
    polar, radii, _ = cl.polar_transform(stack, centre=(32, 32))
    plain = cl.rotational_similarity(polar, radii=radii)
    both = cl.rotational_similarity(polar, radii=radii, mirror=True)
    assert plain.similarity[0, 1] < 0.8
    assert both.similarity[0, 1] > 0.99
    assert both.mirrored[0, 1] and both.mirrored[1, 0]
    # the reported transform of j onto i: mirror then rotate
    aligned = cl.rotate_patterns(stack[1], (32, 32), both.rotation[0, 1], mirror=True)
    inner = np.hypot(*(np.indices(chiral.shape) - 32.0)) < 25
    assert np.corrcoef(aligned[inner], chiral[inner])[0, 1] > 0.98


def test_similarity_options_and_nan():
    rng = np.random.default_rng(1)
    polar = rng.random((4, 10, 64))
    radii = np.arange(10.0)
    for normalize in ("pearson", "azimuthal", "cosine"):
        for f in (None, "sqrt", "log", np.log1p):
            res = cl.rotational_similarity(
                polar, radii=radii, normalize=normalize, intensity_transform_function=f
            )
            assert res.similarity.shape == (4, 4)
            assert np.all(res.similarity <= 1 + 1e-9) and np.all(res.similarity >= -1)
    weighted = cl.rotational_similarity(polar, radial_weighting=np.linspace(0, 1, 10))
    assert np.isfinite(weighted.similarity).all()
    with_nan = polar.copy()
    with_nan[:, :2] = np.nan
    res = cl.rotational_similarity(with_nan, radii=radii)
    ref = cl.rotational_similarity(polar[:, 2:], radii=radii[2:])
    assert np.allclose(res.similarity, ref.similarity, atol=1e-5)
    other = cl.rotational_similarity(polar[:2], polar_other=polar, radii=radii)
    assert other.similarity.shape == (2, 4)
    full = cl.rotational_similarity(polar, radii=radii).similarity
    assert np.allclose(other.similarity[:, 2:], full[:2, 2:], atol=1e-5)
    blocked = cl.rotational_similarity(polar, radii=radii, max_block_bytes=1)
    assert np.allclose(
        blocked.similarity, cl.rotational_similarity(polar, radii=radii).similarity
    )


def test_similarity_errors():
    polar = np.ones((2, 4, 16))
    with pytest.raises(ValueError, match="normalize"):
        cl.rotational_similarity(polar, normalize="zscore")
    with pytest.raises(ValueError, match="intensity_transform_function"):
        cl.rotational_similarity(polar, intensity_transform_function="cube")
    with pytest.raises(ValueError, match="radii"):
        cl.rotational_similarity(polar, radial_weighting="r")
    with pytest.raises(ValueError, match="same"):
        cl.rotational_similarity(
            polar, polar_other=np.ones((2, 5, 16)), radial_weighting=None
        )


def test_similarity_separates_phases_invariant_to_rotation(component_stack):
    pats, phases = component_stack
    polar, radii, _ = cl.polar_transform(pats, centre=CENTRE, direct_beam_radius="auto")
    sim = cl.rotational_similarity(polar, radii=radii).similarity
    same = phases[:, None] == phases[None, :]
    assert sim[same].min() > 0.85  # rotated grains of one phase match
    assert sim[~same].max() < 0.6  # different phases do not


# --------------------------------------------------------------------------
# Hierarchical clustering
# --------------------------------------------------------------------------
def test_hierarchical_clustering_cuts():
    d = np.array(
        [
            [0, 0.1, 0.8, 0.9],
            [0.1, 0, 0.85, 0.9],
            [0.8, 0.85, 0, 0.2],
            [0.9, 0.9, 0.2, 0],
        ]
    )
    labels, Z, t = cl.hierarchical_clustering(d)
    assert labels.tolist() == [0, 0, 1, 1] and Z.shape == (3, 4)
    assert t == cl.DEFAULT_DISTANCE_THRESHOLD
    labels, _, t = cl.hierarchical_clustering(d, n_clusters=3)
    assert labels.max() == 2 and 0.1 < t < 0.2
    labels, _, _ = cl.hierarchical_clustering(d, distance_threshold=0.15)
    assert labels.tolist() == [0, 0, 1, 2]
    labels, _, t = cl.hierarchical_clustering(d, distance_threshold="gap")
    assert labels.tolist() == [0, 0, 1, 1] and 0.2 < t < 0.85
    for method in ("single", "complete", "weighted"):
        assert cl.hierarchical_clustering(d, method=method)[0].tolist() == [0, 0, 1, 1]
    with pytest.warns(UserWarning, match="Euclidean"):
        cl.hierarchical_clustering(d, method="ward")


def test_hierarchical_clustering_errors():
    d = np.array([[0, 0.5], [0.5, 0]])
    with pytest.raises(ValueError, match="not both"):
        cl.hierarchical_clustering(d, n_clusters=2, distance_threshold=0.3)
    with pytest.raises(ValueError, match="At least 2"):
        cl.hierarchical_clustering(np.zeros((1, 1)))
    with pytest.raises(ValueError, match="n_clusters"):
        cl.hierarchical_clustering(d, n_clusters=3)
    with pytest.raises(ValueError, match="symmetric"):
        cl.hierarchical_clustering(np.array([[0, 0.5], [0.1, 0]]))
    with pytest.raises(ValueError, match="method"):
        cl.hierarchical_clustering(d, method="kmeans")
    with pytest.raises(ValueError, match="distance_threshold"):
        cl.hierarchical_clustering(d, distance_threshold="middle")


def test_order_references_and_dominance():
    labels, order = cl.order_clusters([0, 1, 1, 2, 2, 2], key=[1, 2, 3])
    assert labels.tolist() == [2, 1, 1, 0, 0, 0] and order.tolist() == [2, 1, 0]
    s = np.array([[1, 0.9, 0.2], [0.9, 1, 0.3], [0.2, 0.3, 1]])
    assert cl.cluster_references(s, [0, 0, 1]).tolist() == [0, 2]  # ties: first
    assert cl.cluster_references(s, [0, 0, 1], weights=[1, 5, 1]).tolist() == [1, 2]
    # the matrix is large everywhere (70 % inside the grain): no raw argmax
    x = np.linspace(-1, 1, 101)
    grain = 0.3 * np.clip(1 - (x / 0.5) ** 2, 0, None)
    maps = np.stack([1 - grain, grain])
    labels, norm = cl.dominant_labels(maps)
    assert np.array_equal(labels == 1, grain > 0.5 * grain.max())
    assert np.nanmax(norm) == pytest.approx(1, abs=0.05)
    maps[:, :3] = np.nan
    assert (cl.dominant_labels(maps)[0][:3] == -1).all()


def test_dominant_labels_particles_set_the_outline():
    # the matrix dips twice as deep as the grain displaces it and slopes
    # across the scan: plain rescaling widens the grain, the particle rule
    # keeps its half-maximum outline
    x = np.linspace(-1, 1, 201)
    grain = np.clip(1 - (x / 0.4) ** 2, 0, None)
    matrix = 1 + 0.3 * x - 0.6 * grain
    maps = np.stack([matrix, grain])
    outline = grain >= 0.5
    plain = cl.dominant_labels(maps)[0] == 1
    assert plain.sum() > outline.sum()
    labels, score = cl.dominant_labels(maps, extended=[True, False])
    assert np.array_equal(labels == 1, outline)
    assert np.array_equal(labels, np.argmax(score, axis=0))
    assert np.nanmax(score[0]) <= 0.5 and np.nanmin(score[1][outline]) >= 0.5
    # only one kind: plain rescaling
    assert np.array_equal(cl.dominant_labels(maps, extended=[True, True])[0], plain * 1)
    with pytest.raises(ValueError, match="extended"):
        cl.dominant_labels(maps, extended=[True])


def test_dominant_labels_noise_floor_keeps_noise_out():
    # a weak particle on a noisy map: its low threshold is crossed by the
    # noise far from the grain unless it must also stand 3 sigma above noise
    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, 401)
    grain = 0.05 * np.clip(1 - (x / 0.2) ** 2, 0, None) + rng.normal(0, 0.005, x.size)
    maps = np.stack([1 - grain, grain])
    kw = dict(extended=[True, False], threshold=0.12, particle_baseline="median")
    loose = cl.dominant_labels(maps, **kw)[0] == 1
    labels = cl.dominant_labels(maps, noise_floor=3.0, **kw)[0] == 1
    outside = np.abs(x) > 0.25
    assert loose[outside].sum() > 5 and labels[outside].sum() <= 1
    inside = np.abs(x) < 0.1  # the grain's core (>= 75 % of its peak) stays
    assert labels[inside].all() and loose[inside].all()


def blob(shape, centre, sigma):
    yy, xx = np.indices(shape)
    return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma**2))


def test_map_objects_joins_tiles_not_grains():
    shape = (40, 40)
    yy, xx = np.indices(shape)
    grain_a = blob(shape, (10, 10), 3)
    side = 1 / (1 + np.exp(-(xx - 10) / 1.5))
    grain_b = blob(shape, (30, 28), 3)  # same phase, elsewhere
    matrix = 1 - 0.3 * (grain_a + grain_b)
    bands = [matrix * w for w in (xx < 20, xx >= 20)]  # matrix in two tiles
    bump = 0.1 * blob(shape, (25, 10), 4)  # a modulation inside the matrix
    maps = np.stack([grain_a * side, grain_a * (1 - side), grain_b, *bands, bump])
    labels = [1, 1, 1, 0, 0, 0]
    obj = cl.map_objects(maps.reshape(6, -1), labels, shape)
    assert obj.tolist() == [0, 0, 1, 2, 2, 3]
    # different clusters are never joined; 1-D default geometry
    assert cl.map_objects(maps.reshape(6, -1), [1, 2, 3, 0, 0, 0], shape)[
        :3
    ].tolist() == [0, 1, 2]
    assert cl.map_objects(np.eye(8)[[0, 3, 6]], [0, 0, 0]).tolist() == [0, 1, 2]
    assert cl.map_objects(
        np.array([[0, 1, 0, 0], [0, 0, 1, 0.0]]), [0, 0]
    ).tolist() == [0, 0]
    # NaN positions and flat maps
    m = maps.reshape(6, -1).copy()
    m[:, :40] = np.nan
    m[5] = 1.0
    assert cl.map_objects(m, labels, shape).tolist() == [0, 0, 1, 2, 2, 3]
    with pytest.raises(ValueError, match="nav_shape"):
        cl.map_objects(maps.reshape(6, -1), labels, (40, 41))
    with pytest.raises(ValueError, match="maps"):
        cl.map_objects(maps, labels, shape)


def test_attach_by_map():
    maps = np.array([[1.0, 1, 1, 2], [0, 0, 5, 0], [1.1, 1, 0.9, 2.2], [0, 0.1, 4, 0]])
    # 2 and 3 are detached and alone in their clusters: they follow their maps
    assert cl.attach_by_map([0, 1, 2, 3], [0, 0, 1, 1], maps).tolist() == [0, 1, 0, 1]
    # a detached member of a regular cluster stays
    assert cl.attach_by_map([0, 1, 1, 2], [0, 0, 1, 1], maps).tolist() == [0, 1, 1, 1]
    # all detached: unchanged; NaN positions ignored
    assert cl.attach_by_map([0, 1, 2, 3], [1, 1, 1, 1], maps).tolist() == [0, 1, 2, 3]
    m = maps.copy()
    m[:, 0] = np.nan
    assert cl.attach_by_map([2, 1, 0, 3], [0, 0, 1, 1], m).tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="same items"):
        cl.attach_by_map([0, 1], [0, 1, 1], maps)


def test_merge_aligned_reproduces_reference():
    base = spots([5.0, 95.0, 215.0])
    stack = np.stack([cl.rotate_patterns(base, (32, 32), a) for a in (0, 25, -60)])
    stack = np.nan_to_num(stack)
    polar, radii, _ = cl.polar_transform(stack, centre=(32, 32))
    sim = cl.rotational_similarity(polar, radii=radii)
    labels = np.zeros(3, dtype=int)
    rot, mir = cl.align_to_references(sim, labels, [0])
    assert rot == pytest.approx([0, -25, 60], abs=0.5)
    merged = cl.merge_aligned(stack, (32, 32), labels, rot, mir, weights=[1, 2, 3])[0]
    inner = np.hypot(*(np.indices(base.shape) - 32.0)) < 25
    assert np.corrcoef(merged[inner], base[inner])[0, 1] > 0.99
    assert merged[inner].sum() == pytest.approx(6 * base[inner].sum(), rel=0.02)


# --------------------------------------------------------------------------
# Whole pipeline on arrays
# --------------------------------------------------------------------------
def test_cluster_patterns_groups_phases(component_stack):
    pats, phases = component_stack
    res = cl.cluster_patterns(pats, centre=CENTRE)
    assert adjusted_rand_score(phases, res.labels) >= 0.95
    assert res.labels.max() == 2
    assert res.merged.shape == (3,) + SHAPE
    assert np.bincount(res.labels).tolist() == sorted(
        np.bincount(res.labels), reverse=True
    )
    # members of one cluster are aligned on their reference
    for c, ref in enumerate(res.references):
        assert res.labels[ref] == c and res.rotation[ref] == 0
    # automatic centre (direct beam of the mean pattern) gives the same result
    auto = cl.cluster_patterns(pats)
    assert auto.centre == pytest.approx(CENTRE, abs=0.3)
    assert adjusted_rand_score(res.labels, auto.labels) == 1


def test_cluster_patterns_invariant_to_global_rotation(component_stack):
    pats, phases = component_stack
    ref = cl.cluster_patterns(pats, centre=CENTRE)
    turned = np.nan_to_num(cl.rotate_patterns(pats, CENTRE, 37.0))
    res = cl.cluster_patterns(turned, centre=CENTRE)
    assert adjusted_rand_score(ref.labels, res.labels) == 1
    assert np.abs(res.pseudo_distance - ref.pseudo_distance).max() < 0.05
    with pytest.raises(ValueError, match="At least 2"):
        cl.cluster_patterns(pats[:1], centre=CENTRE)
