"""Registration of two different people whatever their headers say (issue 18).

The bundled test heads (pycortex-s1, itk-kmeans) are registered to each other as they
are (their headers put them ~190 mm apart) and again with their headers altered: voxel
axes permuted and flipped (the header changed with them, so the anatomy stays where it
was in world space) and the origin moved by up to 300 mm; or the whole head turned in
world space (an oblique header). The DSC must not move by more than 0.01, in both
directions, with and without the registration engine, and the QC verdict must pass.
"""

from __future__ import annotations

import numpy as np
import pytest

from ddmr.data.cohort import sample_cohort_dir
from ddmr.io.images import load_image, load_labels
from ddmr.registration.settings import EngineSettings
from ddmr.spatial.grid import Geometry
from register_helpers import rotation

FIXED, MOVING = "pycortex-s1", "itk-kmeans"


def subject(name: str) -> dict[str, tuple[np.ndarray, Geometry]]:
    root = sample_cohort_dir()
    image, geometry = load_image(root / "images" / f"{name}.nii.gz")
    labels, _ = load_labels(root / "labels" / f"{name}.nii.gz")
    return {"image": (image, geometry), "labels": (labels, geometry)}


def reheader(array: np.ndarray, geometry: Geometry, rng: np.random.Generator,
             turn_degrees: float = 0.0) -> tuple[np.ndarray, Geometry]:
    """The same anatomy stored another way: axes permuted and flipped with the header
    following them, the origin moved by up to 300 mm, and (``turn_degrees``) the head
    turned about a random axis in world space."""
    order = rng.permutation(3)
    flips = rng.random(3) < 0.5
    data = np.transpose(array, order)
    affine = geometry.affine.copy()
    affine[:3, :3] = affine[:3, :3][:, order]
    for axis in np.nonzero(flips)[0]:
        data = np.flip(data, axis)
        affine[:3, 3] += affine[:3, axis] * (data.shape[axis] - 1)
        affine[:3, axis] *= -1
    affine[:3, 3] += rng.uniform(-300.0, 300.0, 3)
    if turn_degrees:
        turn = np.eye(4)
        turn[:3, :3] = rotation(tuple(rng.normal(size=3)), turn_degrees)
        affine = turn @ affine
    return np.ascontiguousarray(data), Geometry(affine, data.shape)


def altered(name: str, seed: int, turn_degrees: float = 0.0) -> dict:
    rng = np.random.default_rng(seed)
    parts = subject(name)
    state = rng.bit_generator.state
    out = {}
    for key, (array, geometry) in parts.items():
        rng.bit_generator.state = state  # image and labels altered the same way
        out[key] = reheader(array, geometry, rng, turn_degrees)
    return out


#: A short engine budget: these tests are about where the images are, not how far the
#: engine gets.
SHORT_ENGINE = EngineSettings(iterations=(40, 20, 5))


def run(fixed: dict, moving: dict, engine: bool):
    import ddmr

    return ddmr.register(fixed["image"], moving["image"], fixed["labels"], moving["labels"],
                         engine=SHORT_ENGINE if engine else False)


@pytest.fixture(scope="module")
def references():
    """DSC of the pair in both directions with the bundled headers, with and without
    the engine."""
    a, b = subject(FIXED), subject(MOVING)
    out = {}
    for direction, (fixed, moving) in {"forward": (a, b), "backward": (b, a)}.items():
        for engine in (False, True):
            result = run(fixed, moving, engine)
            assert result.qc.passed, result.qc.line()
            out[direction, engine] = result.summary["metrics"]["dsc"]
    return out


def test_bundled_pair_registers_by_default_with_a_qc_pass(references):
    """The pair that returned an all-black image with exit 0 (issue 18)."""
    assert references["forward", False] >= 0.75
    assert references["backward", False] >= 0.75


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("engine", [False, True])
def test_permuted_flipped_and_moved_headers_give_the_same_dsc(references, direction, engine):
    names = (FIXED, MOVING) if direction == "forward" else (MOVING, FIXED)
    fixed = altered(names[0], seed=1 + 20 * engine)
    moving = altered(names[1], seed=2 + 20 * engine)
    offset = np.linalg.norm(fixed["image"][1].origin - moving["image"][1].origin)
    assert offset > 100.0  # the headers disagree by far more than a head's size
    result = run(fixed, moving, engine)
    assert result.qc.passed, result.qc.line()
    assert result.summary["metrics"]["dsc"] == pytest.approx(references[direction, engine],
                                                              abs=0.01)


@pytest.mark.slow
def test_a_head_turned_in_world_space_is_found(references):
    """An oblique header: the moving head turned by 20 degrees (and moved) in world space.
    The affine stage turns it back: DSC within 0.01 of the bundled headers'."""
    moving = altered(MOVING, seed=5, turn_degrees=20.0)
    result = run(subject(FIXED), moving, False)
    assert result.qc.passed, result.qc.line()
    assert result.summary["metrics"]["dsc"] == pytest.approx(references["forward", False],
                                                              abs=0.01)
