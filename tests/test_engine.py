"""The registration engine (issue 21): its filters and similarities against independent
references, and on pairs with a known deformation: it improves on its start, is never
worse than it, stays folding-free, and in svf mode is diffeomorphic with its inverse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ddmr.errors import ConfigError
from ddmr.registration.engine import _Level, _Side, register_deformable
from ddmr.registration.moments import foreground_mask
from ddmr.registration.settings import EngineSettings
from ddmr.registration.similarity import LocalNCC, MindSSC, MutualInformation
from ddmr.spatial.displacement import Displacement
from ddmr.spatial.filters import box_sum, gaussian_smooth
from ddmr.spatial.grid import Geometry
from register_helpers import grid, head


@pytest.fixture(params=["compiled", "torch"])
def path(request, monkeypatch):
    """Run a test on the compiled kernels and on the torch path (the reference)."""
    from ddmr.spatial import kernels

    monkeypatch.setenv(kernels.SWITCH, request.param)
    if request.param == "compiled" and not kernels.available():
        pytest.skip("numba is not installed")
    return request.param


@pytest.mark.parametrize("shape", [(9, 11, 7), (3, 40, 2), (1, 6, 25)])
def test_box_sum_matches_scipy_uniform_filter(shape, path):
    # windows wider than an axis, as wide, and narrower (running sums and their borders)
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    for window in (1, 3, 5, 9):
        ours = box_sum(x, window).numpy()
        for c in range(2):
            reference = ndimage.uniform_filter(x[c].numpy().astype(np.float64), window,
                                               mode="constant") * window ** 3
            np.testing.assert_allclose(ours[c], reference, atol=1e-4)


def test_box_sum_of_a_large_volume_keeps_float32_accuracy(path):
    # cumulative sums along 200 voxels: the window sums of a 1 mm grid stay within
    # 1e-5 of their size (LNCC subtracts them)
    x = torch.rand(1, 200, 30, 30, generator=torch.Generator().manual_seed(4)) + 0.5
    ours = box_sum(x, 9)[0].numpy().astype(np.float64)
    reference = ndimage.uniform_filter(x[0].numpy().astype(np.float64), 9,
                                       mode="constant") * 729
    assert np.abs(ours - reference).max() <= 1e-5 * reference.max()


def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """The smoothing along one axis as a dense matrix: taps cut beyond 4 sigma, each
    row divided by its sum (the definition the filter must follow)."""
    offsets = np.subtract.outer(np.arange(n), np.arange(n)).astype(float)
    weights = np.exp(-offsets ** 2 / (2 * sigma * sigma)) * (np.abs(offsets) <= 4 * sigma)
    return weights / weights.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(("shape", "sigma"), [((30, 31, 29), 1.5), ((5, 12, 3), (2.0, 0.6, 1.0)),
                                              ((2, 1, 17), (0.5, 3.0, 0.0))])
def test_gaussian_smooth_equals_the_renormalised_matrix_everywhere(shape, sigma, path):
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(1))
    ours = gaussian_smooth(x, sigma).numpy()
    sigmas = (sigma,) * 3 if isinstance(sigma, float) else sigma
    reference = x.numpy().astype(np.float64)
    for axis, s in enumerate(sigmas):
        if s > 0:
            reference = np.moveaxis(np.tensordot(_gaussian_matrix(shape[axis], s),
                                                 np.moveaxis(reference, axis + 1, 0), 1),
                                    0, axis + 1)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_gaussian_smooth_matches_scipy_inside_and_keeps_constants(path):
    x = torch.rand(1, 30, 31, 29, generator=torch.Generator().manual_seed(1))
    ours = gaussian_smooth(x, 1.5)[0].numpy()
    reference = ndimage.gaussian_filter(x[0].numpy().astype(np.float64), 1.5, truncate=4.0)
    inner = (slice(7, -7),) * 3
    np.testing.assert_allclose(ours[inner], reference[inner], atol=1e-5)
    constant = torch.full((3, 12, 13, 14), 2.5)
    np.testing.assert_allclose(gaussian_smooth(constant, (2.0, 0.0, 1.0)).numpy(), 2.5,
                               atol=1e-5)


@pytest.mark.parametrize("similarity", [LocalNCC(5), MutualInformation(16), MindSSC()])
def test_similarity_gradients_match_finite_differences(similarity):
    generator = torch.Generator().manual_seed(2)
    fixed_image = torch.rand(12, 13, 11, generator=generator)
    moving_image = (fixed_image + 0.3 * torch.rand(12, 13, 11, generator=generator)) / 1.3
    fixed = similarity.features(fixed_image.double())
    warped = similarity.features(moving_image.double())
    value, gradient = similarity(fixed, warped)
    for index in [(0, 3, 4, 5), (0, 6, 7, 2), (0, 0, 0, 0), (-1, 11, 12, 10)]:
        step = torch.zeros_like(warped)
        step[index] = 1e-4
        plus, _ = similarity(fixed, warped + step)
        minus, _ = similarity(fixed, warped - step)
        assert (plus - minus) / 2e-4 == pytest.approx(float(gradient[index]), rel=1e-3,
                                                      abs=1e-9)
    same, _ = similarity(fixed, fixed)
    assert same >= value  # a perfect match scores best


def test_filters_in_place_equal_the_plain_ones(path):
    x = torch.rand(3, 9, 10, 8, generator=torch.Generator().manual_seed(5))
    for plain, in_place in ((box_sum(x, 5), box_sum(y := x.clone(), 5, out=y)),
                            (gaussian_smooth(x, 1.2), gaussian_smooth(z := x.clone(), 1.2,
                                                                      out=z)),
                            (gaussian_smooth(x, (0.0, 1.2, 0.0)),
                             gaussian_smooth(w := x.clone(), (0.0, 1.2, 0.0), out=w))):
        np.testing.assert_allclose(in_place.numpy(), plain.numpy(), atol=1e-6)
    assert torch.equal(gaussian_smooth(x, 0.0), x)


def test_level_samples_a_displaced_field_like_sample_field_and_scipy(path):
    geometry = Geometry(np.array([[1.5, 0, 0, -10.0], [0, 2.0, 0, 5.0], [0, 0, 1.0, 3.0],
                                  [0, 0, 0, 1.0]]), (14, 12, 16))  # RAS-aligned, anisotropic
    image = torch.rand(14, 12, 16, generator=torch.Generator().manual_seed(6)).numpy()
    mask = np.ones(image.shape, bool)
    side = _Side(image, geometry, (0.0, 1.0), mask, geometry)
    level = _Level(side, side, np.eye(4), 1.0, EngineSettings(), LocalNCC(5))
    generator = torch.Generator().manual_seed(7)
    field = torch.rand(3, *level.grid.shape, generator=generator)
    shift = 2.0 * torch.rand(3, *level.grid.shape, generator=generator) - 1.0
    ours = level.displaced(field, shift)
    np.testing.assert_allclose(ours.numpy(), Displacement(field, level.grid)(
                                                          level.points() + shift).numpy(),
                               atol=1e-4)
    index = np.linalg.inv(level.grid.affine) @ np.vstack(
        [(level.points() + shift).reshape(3, -1).numpy(), np.ones(shift[0].numel())])
    reference = ndimage.map_coordinates(field[1].numpy(), index[:3], order=1, mode="nearest")
    np.testing.assert_allclose(ours[1].numpy().ravel(), reference, atol=1e-4)


def _pair(shift_mm: float = 3.0, seed: int = 4):
    """A 'head' and the same head under a smooth sinusoidal deformation (and a small
    shift), both on a 2 mm grid: (fixed, moving, geometry, true pull-back map)."""
    geometry = grid((40, 44, 38), (2.0, 2.0, 2.0), np.eye(3), (0.0, 0.0, 0.0))
    index = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), -1)
    points = geometry.index_to_world(index)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 3)
    bend = np.stack([shift_mm * np.sin(points[..., (a + 1) % 3] / 12.0 + phase[a])
                     for a in range(3)], -1)
    fixed = (100 * head(points)).astype(np.float32)
    moving = (100 * head(points - bend)).astype(np.float32)  # moving(p + bend) = fixed(p)
    return fixed, moving, geometry


def _run(settings: EngineSettings, initial=None, shift_mm: float = 3.0):
    fixed, moving, geometry = _pair(shift_mm)
    masks = (foreground_mask(fixed), foreground_mask(moving))
    return register_deformable(fixed, geometry, masks[0], moving, geometry, masks[1],
                               np.eye(4), settings, initial), fixed, moving, geometry


FAST = EngineSettings(levels=(2, 1), iterations=(60, 30), window=5)


@pytest.mark.parametrize("mode", ["compositive", "additive", "svf"])
def test_engine_recovers_a_smooth_deformation(mode, path):
    from dataclasses import replace

    from ddmr.spatial.field import jacobian_determinant_mm

    result, fixed, moving, geometry = _run(replace(FAST, mode=mode))
    assert result.objective > result.objective_start + 0.05
    assert not result.kept_start
    # the warped moving image matches the fixed one far better than before
    grid_points = torch.from_numpy(np.stack(np.meshgrid(
        *[np.arange(n, dtype=np.float32) for n in geometry.shape], indexing="ij")))
    world = torch.einsum("ab,b...->a...", torch.from_numpy(geometry.affine[:3, :3]
                                                           .astype(np.float32)), grid_points)
    world = world + torch.from_numpy(geometry.affine[:3, 3].astype(np.float32)).view(3, 1, 1, 1)
    displacement = result.displacement()(world)
    moved = (world + displacement).numpy().reshape(3, -1).T
    coordinates = geometry.world_to_index(moved).T.reshape(3, *geometry.shape)
    warped = ndimage.map_coordinates(moving, coordinates, order=1, mode="nearest")
    inside = foreground_mask(fixed)
    before = np.abs(moving - fixed)[inside].mean()
    after = np.abs(warped - fixed)[inside].mean()
    assert after < 0.5 * before, (before, after)
    determinant = jacobian_determinant_mm(displacement.numpy(), geometry)
    assert (determinant > 0).all()
    if mode == "svf":  # exp(v) and exp(-v) invert each other
        assert result.inverse_mm is not None
        back = Displacement(result.inverse_mm, result.grid)(
            result.grid.points() + result.displacement_mm)
        error = (result.displacement_mm + back).norm(dim=0)
        assert float(error.mean()) < 0.1 * min(result.grid.spacing)


def test_engine_is_never_worse_than_its_start():
    """Started from a field that is already the answer's best, it returns the start."""
    result, *_ = _run(FAST)
    best = result.displacement_mm
    again, *_ = _run(EngineSettings(levels=(1,), iterations=(5,), window=5, step=3.0),
                     initial=Displacement(best, result.grid))
    assert again.objective >= again.objective_start
    assert again.objective_start == pytest.approx(result.objective, abs=0.02)


def test_settings_are_checked():
    for bad in ({"levels": (2, 1), "iterations": (5,)}, {"similarity": "ssd"},
                {"mode": "fast"}, {"window": 4}, {"step": 0.0}, {"levels": (0,),
                                                                  "iterations": (1,)},
                {"fluid_sigma": -1.0}, {"finest_diffusion_sigma": float("nan")}):
        with pytest.raises(ConfigError):
            EngineSettings(**bad)


def test_the_finest_level_smooths_with_its_own_sigmas(monkeypatch):
    """The finest level's fluid and diffusion sigmas apply there alone (the coarser
    levels keep the others); None means as at the other levels; the mm floors hold."""
    from dataclasses import replace

    import ddmr.registration.engine as engine

    settings = replace(FAST, fluid_sigma=1.5, diffusion_sigma=1.25, finest_fluid_sigma=0.75,
                       finest_diffusion_sigma=0.5)
    assert settings.smoothing(True, 1.0) == (0.75, 0.5)
    assert settings.smoothing(False, 1.0) == (1.5, 1.25)
    assert replace(settings, finest_fluid_sigma=None).smoothing(True, 1.0) == (1.5, 0.5)
    assert replace(settings, fluid_mm=2.0).smoothing(True, 0.5) == (4.0, 0.5)
    seen: dict[tuple[int, ...], set[float]] = {}
    smooth = engine.gaussian_smooth

    def recording(volume, sigma, out=None):
        seen.setdefault(tuple(volume.shape[1:]), set()).add(sigma)
        return smooth(volume, sigma, out=out)

    monkeypatch.setattr(engine, "gaussian_smooth", recording)
    result, *_ = _run(settings)
    assert seen[tuple(result.grid.shape)] == {0.75, 0.5}
    assert {0.75, 0.5}.isdisjoint(set().union(*(sigmas for shape, sigmas in seen.items()
                                                if shape != tuple(result.grid.shape))))
    assert len(seen) == 2


def test_geometry_of_the_result_follows_the_fixed_foreground():
    result, _, _, geometry = _run(EngineSettings(levels=(1,), iterations=(1,)))
    assert isinstance(result.grid, Geometry)
    assert np.allclose(result.grid.spacing, geometry.spacing)
    assert result.displacement_mm.shape == (3, *result.grid.shape)


def test_an_engine_that_cannot_fit_in_memory_is_refused_before_allocating(monkeypatch):
    import ddmr.memory
    from ddmr.errors import InputError

    fixed, moving, geometry = _pair()
    monkeypatch.setattr(ddmr.memory, "available_memory", lambda: 1_000_000)
    masks = (foreground_mask(fixed), foreground_mask(moving))
    with pytest.raises(InputError, match=r"needs about .* GB for its finest grid .* use --fast"):
        register_deformable(fixed, geometry, masks[0], moving, geometry, masks[1], np.eye(4))
