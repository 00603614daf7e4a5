"""The world affine stage's similarities (issue 29): the local squared NCC a level can use
instead of the global NCC has the gradient of its value, and finds a known affine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ddmr.registration.affine import (
    AffineSettings,
    _Fit,
    _Level,
    _level,
    _Problem,
    weighted_ncc,
    world_affine,
)
from ddmr.spatial.grid import Geometry
from register_helpers import grid, head, rotation


def _image(geometry: Geometry, moved: np.ndarray | None = None) -> np.ndarray:
    """The analytic head on ``geometry``, seen through the point map ``moved``: the value
    at p is head(moved^-1 p), so ``moved`` maps the first image's points onto this one."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), -1)
    points = geometry.index_to_world(index.reshape(-1, 3))
    back = np.linalg.inv(np.eye(4) if moved is None else moved)
    return (100.0 * head(points @ back[:3, :3].T + back[:3, 3])).reshape(
        geometry.shape).astype(np.float32)


@pytest.mark.parametrize("guided", [False, True])
def test_the_local_similarity_has_the_gradient_of_its_value(guided):
    """Its gradient against finite differences, with the guided labels' soft Dice added
    (issue 32) and without."""
    geometry = grid((20, 22, 18), (3.0, 3.0, 3.0), np.eye(3), (0.0, 0.0, 0.0))
    values = torch.from_numpy(_image(geometry) / 200.0)[None, None]
    labels = (values > 0.2).float() if guided else None
    level = _Level(values, geometry, geometry, labels)
    problem = _Problem(level, level, np.zeros(3), "lncc", 5)
    centre = torch.zeros(3)
    translation = torch.tensor([1.5, -2.0, 0.7], requires_grad=True)
    linear = torch.eye(3)
    problem.similarity(centre, translation, linear).backward()
    for axis in range(3):
        step = torch.zeros(3)
        step[axis] = 1e-2
        with torch.no_grad():
            plus = problem.similarity(centre, translation + step, linear)
            minus = problem.similarity(centre, translation - step, linear)
        assert float(translation.grad[axis]) == pytest.approx(
            float(plus - minus) / 2e-2, rel=0.05, abs=1e-5)


def test_the_weighted_ncc_is_pearson_over_the_points_both_scans_show():
    """Against numpy's correlation over the weighted points; the overlap penalty from
    half the reference count down."""
    rng = np.random.default_rng(3)
    a, b = rng.random(200), rng.random(200)
    b[:120] += a[:120]
    weight = np.zeros(200)
    weight[:120] = 1.0
    value = weighted_ncc(*(torch.from_numpy(v) for v in (a, b, weight)), reference=120)
    assert float(value) == pytest.approx(np.corrcoef(a[:120], b[:120])[0, 1], rel=1e-9)
    penalised = weighted_ncc(*(torch.from_numpy(v) for v in (a, b, weight)), reference=480)
    assert float(value - penalised) == pytest.approx((0.5 - 120 / 480) / 0.5)


@pytest.mark.parametrize("similarities", [("ncc", "lncc"), ("lncc", "lncc")])
def test_a_known_affine_is_found_with_the_local_similarity(similarities):
    fixed_geometry = grid((40, 44, 38), (2.0, 2.0, 2.0), np.eye(3), (0.0, 0.0, 0.0))
    moving_geometry = grid((36, 40, 42), (2.2, 2.0, 1.8), rotation((0, 1, 1), 20),
                           (30.0, -50.0, 200.0))  # headers far apart, oblique
    truth = np.eye(4)
    truth[:3, :3] = rotation((1, 0, 0), 8) @ np.diag([1.05, 0.97, 1.0])
    truth[:3, 3] = (33.0, -47.0, 196.0)
    fixed = _image(fixed_geometry)
    moving = _image(moving_geometry, truth)
    result = world_affine(fixed, fixed_geometry, moving, moving_geometry,
                          AffineSettings(similarities=similarities, window=5))
    index = np.stack(np.meshgrid(*[np.arange(0, n, 4) for n in fixed.shape],
                                 indexing="ij"), -1).reshape(-1, 3)
    points = fixed_geometry.index_to_world(index)
    points = points[head(points) > 0.5]  # inside the head
    ours = points @ result.point_map[:3, :3].T + result.point_map[:3, 3]
    expected = points @ truth[:3, :3].T + truth[:3, 3]
    assert np.linalg.norm(ours - expected, axis=1).mean() < 1.5  # mm


def _known_pair():
    fixed_geometry = grid((40, 44, 38), (2.0, 2.0, 2.0), np.eye(3), (0.0, 0.0, 0.0))
    moving_geometry = grid((36, 40, 42), (2.2, 2.0, 1.8), rotation((0, 1, 1), 20),
                           (30.0, -50.0, 200.0))
    truth = np.eye(4)
    truth[:3, :3] = rotation((1, 0, 0), 8) @ np.diag([1.05, 0.97, 1.0])
    truth[:3, 3] = (33.0, -47.0, 196.0)
    return (_image(fixed_geometry), fixed_geometry,
            _image(moving_geometry, truth), moving_geometry)


def test_a_fit_scores_its_own_result_as_it_found_it():
    # score(point map) goes back to the fit's own parameters (translation about the centres)
    import math

    from ddmr.registration.moments import foreground_mask, intensity_scale, moments

    fixed, fixed_geometry, moving, moving_geometry = _known_pair()
    settings = AffineSettings(reverse_anisotropy=math.inf)
    sides = []
    for image, geometry in ((fixed, fixed_geometry), (moving, moving_geometry)):
        mask = foreground_mask(image)
        sides.append((image, geometry, mask, intensity_scale(image, mask),
                      moments(mask, geometry)))
    levels = [tuple(_level(image, geometry, mask, spacing, settings.margin_mm, scale)
                    for image, geometry, mask, scale, _ in sides)
              for spacing in settings.levels_mm]
    fit = _Fit(levels, sides[0][4], sides[1][4], settings)
    assert fit.score(fit.result.point_map) == pytest.approx(fit.result.similarity, rel=1e-4)
    assert fit.score(np.eye(4)) < fit.result.similarity


def test_an_anisotropic_result_is_fitted_the_other_way_round_too():
    import math

    fixed, fixed_geometry, moving, moving_geometry = _known_pair()
    once = world_affine(fixed, fixed_geometry, moving, moving_geometry,
                        AffineSettings(reverse_anisotropy=math.inf))
    assert not once.reverse_tried and not once.reversed
    backward = world_affine(moving, moving_geometry, fixed, fixed_geometry,
                            AffineSettings(reverse_anisotropy=math.inf))
    always = world_affine(fixed, fixed_geometry, moving, moving_geometry,
                          AffineSettings(reverse_anisotropy=1.0))
    assert always.reverse_tried and always.summary()["reverse_tried"]
    expected = np.linalg.inv(backward.point_map) if always.reversed else once.point_map
    np.testing.assert_allclose(always.point_map, expected, atol=1e-6)


def test_settings_name_one_known_similarity_per_level():
    with pytest.raises(ValueError, match="similarity"):
        AffineSettings(similarities=("ncc",))
    with pytest.raises(ValueError, match="similarity"):
        AffineSettings(similarities=("ncc", "mi"))


def test_the_foreground_fills_the_same_holes_inside_its_box_as_in_the_whole_array():
    from ddmr.registration.moments import fill_holes, foreground_mask

    rng = np.random.default_rng(3)
    image = np.zeros((40, 36, 30), np.float32)
    image[5:30, 4:33, 0:22] = 100.0  # touches the array's border on one side
    image[10:20, 10:20, 8:14] = 0.0  # an enclosed hole (3D)
    image[12:14, 4:33, 16:18] = 0.0  # a tunnel through the object: holes slice by slice
    image[25:30, 30:33, 0:4] = 0.0  # a notch open to the array's border
    image += rng.normal(0, 1, image.shape).astype(np.float32)
    ours = foreground_mask(image)
    labelled, _ = ndimage.label(image > 50.0)
    whole = fill_holes(labelled > 0)
    for axis in range(3):
        whole = fill_holes(whole, axis)
    np.testing.assert_array_equal(ours, whole)
    assert ours[15, 15, 10] and ours[13, 20, 17] and not ours[27, 31, 1]


def test_a_large_image_has_its_foreground_found_on_every_second_voxel(monkeypatch):
    # a 1 mm-sized grid: the object, its enclosed hole and its open notch as the full
    # computation finds them, to the 2-voxel steps of the coarse grid at the borders
    import ddmr.registration.moments as moments

    image = np.zeros((181, 167, 149), np.float32)  # 4.5 M voxels, odd sizes
    image[20:150, 15:140, 10:130] = 100.0
    image[60:90, 50:80, 40:70] = 0.0  # enclosed: filled
    image[120:150, 100:140, 10:30] = 0.0  # open to the object's outside: not filled
    image += np.random.default_rng(4).normal(0, 1, image.shape).astype(np.float32)
    assert image.size > moments.DECIMATE_ABOVE
    coarse = moments.foreground_mask(image)
    monkeypatch.setattr(moments, "DECIMATE_ABOVE", image.size)
    full = moments.foreground_mask(image)
    assert coarse.shape == full.shape and coarse.dtype == bool
    assert full[75, 65, 55] and coarse[75, 65, 55] and not coarse[140, 120, 20]
    differ = coarse != full
    assert differ.mean() < 0.01
    # where they differ, within a voxel of the full mask's border
    border = full ^ ndimage.binary_erosion(full)
    assert np.all(ndimage.binary_dilation(border, iterations=1)[differ])


@pytest.mark.parametrize("similarity", ["ncc", "lncc"])
def test_the_compiled_gradient_equals_autograd_through_grid_sample(similarity, monkeypatch):
    from ddmr.registration.moments import foreground_mask, intensity_scale, moments
    from ddmr.spatial import kernels

    if not kernels.available():
        pytest.skip("numba is not installed")
    fixed, fixed_geometry, moving, moving_geometry = _known_pair()
    # smooth images: a sample whose float32 coordinate falls in the neighbouring cell
    # (a voxel face within rounding) changes the derivative little
    fixed, moving = (ndimage.gaussian_filter(image, 1.5) for image in (fixed, moving))
    sides = []
    for image, geometry in ((fixed, fixed_geometry), (moving, moving_geometry)):
        mask = foreground_mask(image)
        sides.append(_level(image, geometry, mask, 2.0, 10.0, intensity_scale(image, mask)))
    centres = [moments(foreground_mask(image), geometry).centre
               for image, geometry in ((fixed, fixed_geometry), (moving, moving_geometry))]
    # off the optimum, with some points beyond the moving level (zeros there)
    translation = torch.tensor([4.0, -6.0, 9.0])
    linear = torch.tensor([[1.08, 0.06, 0.0], [-0.05, 0.93, 0.03], [0.02, -0.04, 1.05]])
    centre = torch.from_numpy(centres[1].astype(np.float32))
    compiled = _Problem(*sides, centres[0], similarity, 3)
    assert compiled.compiled
    ours = compiled.value_and_gradient(centre, translation, linear)
    monkeypatch.setenv(kernels.SWITCH, "torch")
    reference = _Problem(*sides, centres[0], similarity, 3)
    assert not reference.compiled
    theirs = reference.value_and_gradient(centre, translation, linear)
    assert ours[0] == pytest.approx(theirs[0], rel=1e-4)  # float32 samples, LNCC eps
    for mine, other in zip(ours[1:], theirs[1:], strict=True):
        scale = float(other.abs().max())
        assert scale > 0
        np.testing.assert_allclose(mine.numpy(), other.numpy(), rtol=0, atol=1e-3 * scale)


def test_the_affine_stage_ends_in_the_same_place_on_both_paths(monkeypatch):
    from ddmr.spatial import kernels

    if not kernels.available():
        pytest.skip("numba is not installed")
    pair = _known_pair()
    compiled = world_affine(*pair).point_map
    monkeypatch.setenv(kernels.SWITCH, "torch")
    reference = world_affine(*pair).point_map
    # the same optimum; the trajectories differ by float32 rounding alone
    np.testing.assert_allclose(compiled[:3, :3], reference[:3, :3], atol=2e-3)
    np.testing.assert_allclose(compiled[:3, 3], reference[:3, 3], atol=0.2)  # mm
