"""The stored-results schema: records to and from ``learning_results``.

hyperspy_cnmf._schema declares the stored fields (the dataclasses of the
core); hyperspy_cnmf.signals._store copies them to and from
``learning_results``. The records must survive ``learning_results.save`` /
``load`` and ``s.save`` / ``hs.load`` unchanged, under the attribute names of
earlier versions (saved files stay readable).
"""

import dataclasses

import hyperspy.api as hs
import numpy as np
import pytest
from hyperspy.learn import LearningResults

from hyperspy_cnmf import clustering as cl
from hyperspy_cnmf._schema import (
    DecompositionRecord,
    from_stored,
    stored,
    stored_fields,
    to_stored,
)
from hyperspy_cnmf.signals._store import from_learning_results, to_learning_results

#: The stored attribute names of earlier versions: renaming one breaks files.
NAMES = {
    "cnmf_": (
        DecompositionRecord,
        (
            "loss",
            "n_iter",
            "n_iter_sketch",
            "converged",
            "map_resolution",
            "diffraction_constraint_size",
            "parameters",
            "beam_positions",  # added with issue 10 (descan in the clustering)
            "row_scale",  # added with issue 10 (the clustering's refit)
            "col_scale",
        ),
    ),
    "cdiff_": (
        cl.ComponentClustering,
        (
            "components",
            "position_labels",
            "labels",
            "linkage",
            "pseudo_distance",
            "pairwise_rotation",
            "pairwise_mirrored",
            "rotation",
            "mirrored",
            "references",
            "merged_factors",
            "merged_maps",
            "normalised_maps",
            "objects",
            "beam_only",
            "threshold",
            "centre",
            "radii",
            "parameters",
            "map_artefact",  # added with issue 10, item 8
            "texture",  # added with issue 10, item 4
            "mean_patterns",  # added with issue 10, item 9
            "refit_factors",  # added with issue 10 (the clustering's refit)
            "refit_loadings",
        ),
    ),
    "cpat_": (
        cl.PatternClustering,
        (
            "positions",
            "position_labels",
            "step",
            "labels",
            "linkage",
            "pseudo_distance",
            "rotation",
            "mirrored",
            "references",
            "merged_factors",
            "threshold",
            "centre",
            "radii",
            "parameters",
        ),
    ),
}
DETECTOR = (16, 16)
SCAN = (3, 4)


def _spots(angle):
    yy, xx = np.indices(DETECTOR, dtype=float)
    out = np.exp(-((yy - 8) ** 2 + (xx - 8) ** 2) / 2.0)
    for a in np.deg2rad(angle + np.arange(0, 360, 60)):
        out += np.exp(-((xx - 8 - 5 * np.cos(a)) ** 2 + (yy - 8 - 5 * np.sin(a)) ** 2))
    return out


@pytest.fixture(scope="module")
def records():
    rng = np.random.default_rng(0)
    factors = np.stack([_spots(a) for a in (0.0, 13.0, 31.0)])
    factors[2] = np.roll(factors[2], 1, axis=0)
    loadings = rng.random((3, SCAN[0] * SCAN[1]))
    comp = cl.cluster_components(factors, loadings, (8, 8), nav_shape=SCAN)
    comp.refit_factors, comp.refit_loadings = (
        factors,
        loadings,
    )  # as a refit stores them
    blocks = iter([factors[:2], factors[2:]])
    pat = cl.cluster_patterns(
        factors, centre=(8, 8), positions=[0, 1, 2], all_patterns=blocks, step=(1, 1)
    )
    dec = DecompositionRecord(
        loss=np.array([3.0, 2.0, 1.5]),
        n_iter=3,
        n_iter_sketch=0,
        converged=True,
        map_resolution=float("nan"),
        diffraction_constraint_size=2.5,
        parameters={"k": 3, "map_filter": "gaussian", "tol": 1e-4, "x": None},
        beam_positions=np.array([[8.0, 8.25], [np.nan, np.nan]] * 6),
        row_scale=rng.random(SCAN[0] * SCAN[1]),
        col_scale=np.r_[0.0, rng.random(DETECTOR[0] * DETECTOR[1] - 1)],
    )
    return {"cnmf_": dec, "cdiff_": comp, "cpat_": pat}


def _assert_same(a, b):
    """Stored fields of two records equal (arrays bitwise, NaN == NaN)."""
    assert type(a) is type(b)
    for f in stored_fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, dict):
            assert x == y, f.name
        elif isinstance(x, (float, int, bool)):
            assert type(y) is type(x) and (x == y or (x != x and y != y)), f.name
        else:
            x, y = np.asarray(x), np.asarray(y)
            assert x.shape == y.shape and x.dtype == y.dtype, f.name
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f.name


def test_stored_names_are_the_historical_ones():
    for _, (cls, names) in NAMES.items():
        assert sorted(f.name for f in stored_fields(cls)) == sorted(names)


def test_stored_representation_is_arrays_scalars_and_strings(records):
    for prefix, rec in records.items():
        for name, value in to_stored(rec).items():
            assert isinstance(value, (np.ndarray, str, float, int, bool)), name
            if isinstance(value, np.ndarray):
                assert value.dtype != object, name
    comp = to_stored(records["cdiff_"])
    c = records["cdiff_"].references.size
    n = SCAN[0] * SCAN[1]
    assert comp["merged_factors"].shape == (DETECTOR[0] * DETECTOR[1], c)
    assert comp["mean_patterns"].shape == (DETECTOR[0] * DETECTOR[1], c)
    assert comp["merged_maps"].shape == comp["normalised_maps"].shape == (n, c)
    assert comp["labels"].dtype == np.int64 and comp["beam_only"].dtype == bool
    assert isinstance(comp["parameters"], str) and isinstance(comp["threshold"], float)
    assert "similarity" not in comp and "distances" not in comp  # transient


def _shapes(prefix):
    if prefix == "cnmf_":
        return None
    return {
        "merged_factors": DETECTOR,
        "mean_patterns": DETECTOR,
        "refit_factors": DETECTOR,
    }


def test_round_trip_in_memory(records):
    for prefix, rec in records.items():
        lr = LearningResults()
        to_learning_results(lr, rec, prefix)
        back = from_learning_results(lr, type(rec), prefix, shapes=_shapes(prefix))
        _assert_same(rec, back)
        for f in dataclasses.fields(back):
            if not f.metadata["stored"]:
                assert getattr(back, f.name) is None
    assert (
        from_learning_results(LearningResults(), cl.PatternClustering, "cpat_") is None
    )
    flat = from_stored(cl.ComponentClustering, to_stored(records["cdiff_"]))
    assert flat.merged_factors.shape == (records["cdiff_"].references.size, 256)


def test_round_trip_through_files(records, tmp_path):
    s = hs.signals.Signal2D(np.zeros(SCAN + DETECTOR))
    lr = s.learning_results
    for prefix, rec in records.items():
        to_learning_results(lr, rec, prefix)
    lr.save(tmp_path / "lr.npz", overwrite=True)
    loaded = LearningResults()
    loaded.load(tmp_path / "lr.npz")
    s.save(tmp_path / "s.hspy")
    s2 = hs.load(tmp_path / "s.hspy")
    for other in (loaded, s2.learning_results):
        for prefix, rec in records.items():
            back = from_learning_results(
                other, type(rec), prefix, shapes=_shapes(prefix)
            )
            _assert_same(rec, back)


def test_field_declaration_errors():
    with pytest.raises(ValueError, match="kind"):
        stored("dict")
