"""The compiled kernels (:mod:`ddmr.spatial.kernels`, issue 28) compute what the torch path
computes: each kernel against its torch counterpart, the engine's whole run on both paths,
and the clean fallback to torch where numba cannot be loaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddmr.registration.engine import GridComposition
from ddmr.registration.similarity import LocalNCC, Objective, force_from_gradient
from ddmr.spatial import kernels
from ddmr.spatial.displacement import Displacement, Transform, channels_last_product
from ddmr.spatial.grid import affine_volume, sampling_matrix
from ddmr.spatial.warp import grid_sample_3d

pytestmark = pytest.mark.skipif(not kernels.available(), reason="numba is not installed")


def _random(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.mark.parametrize("shape", [(2, 20, 23, 17), (1, 3, 40, 2), (3, 1, 6, 25)])
def test_filters_equal_the_torch_path(shape, monkeypatch):
    from ddmr.spatial.filters import box_sum, gaussian_smooth

    x = _random(shape)
    compiled = [kernels.box_sum(x, w) for w in (1, 3, 9, 41)] + \
        [kernels.gaussian_smooth(x, s) for s in (0.5, 1.0, (2.0, 0.0, 0.7))]
    monkeypatch.setenv(kernels.SWITCH, "torch")
    reference = [box_sum(torch.from_numpy(x), w).numpy() for w in (1, 3, 9, 41)] + \
        [gaussian_smooth(torch.from_numpy(x), s).numpy() for s in (0.5, 1.0, (2.0, 0.0, 0.7))]
    for ours, theirs in zip(compiled, reference, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=2e-4 * max(1.0, np.abs(theirs).max()),
                                   rtol=0)


def test_sampling_equals_grid_sample_with_border_values():
    rng = np.random.default_rng(1)
    moving = _random((2, 15, 18, 21), 2)
    displacement = (rng.standard_normal((3, 20, 23, 17)) * 4).astype(np.float32)
    linear = rng.standard_normal((3, 3)) * 0.3  # many points beyond the moving grid
    base = np.c_[np.diag([0.8, 0.7, 1.1]) + rng.standard_normal((3, 3)) * 0.05, [1, -2, 0.5]]
    addend = _random((2, 20, 23, 17), 3)
    ours = kernels.sample_affine(moving, displacement, linear, base, addend)
    to_sampling = sampling_matrix(moving.shape[1:])
    full = np.vstack([base, [0, 0, 0, 1]])
    coordinates = channels_last_product(
        torch.from_numpy((to_sampling[:3, :3] @ linear).astype(np.float32)),
        torch.from_numpy(displacement)).add_(
        affine_volume(to_sampling @ full, displacement.shape[1:], channels_last=True))
    reference = grid_sample_3d(torch.from_numpy(moving)[None], coordinates[None])[0].numpy()
    np.testing.assert_allclose(ours, reference + addend, atol=1e-5)


@pytest.mark.parametrize("window", [3, 9])
def test_lncc_force_equals_the_similarity_and_force_of_the_torch_path(window):
    a, b = _random((20, 23, 17), 4), _random((20, 23, 17), 5)
    spacing = (1.0, 2.0, 1.5)
    value, force = kernels.LNCCKernel(a, window, 1e-5).force(b, spacing)
    expected, gradient = LocalNCC(window)(torch.from_numpy(a)[None], torch.from_numpy(b)[None])
    reference = force_from_gradient(gradient, torch.from_numpy(b)[None], spacing).numpy()
    assert value == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(force, reference, atol=1e-5 * np.abs(reference).max())


def test_largest_norm():
    field = np.random.default_rng(6).standard_normal((3, 9, 8, 7)).astype(np.float32)
    assert kernels.largest_norm(field) == pytest.approx(
        float(np.sqrt((field.astype(np.float64) ** 2).sum(0)).max()), rel=1e-6)


def test_kernels_write_only_into_float32_contiguous_arrays():
    x = np.ones((1, 4, 4, 8))  # float64 input: read as float32
    np.testing.assert_allclose(kernels.box_sum(x, 3)[0, 1, 1, 1], 27.0)
    with pytest.raises(ValueError, match="float32"):
        kernels.box_sum(x, 3, out=np.empty((1, 4, 4, 8)))
    with pytest.raises(ValueError, match="float32"):
        kernels.gaussian_smooth(x, 1.0, out=np.ones((1, 4, 4, 16), np.float32)[..., ::2])
    with pytest.raises(ValueError, match="shape"):
        kernels.box_sum(np.ones((4, 4, 8)), 3)


def test_the_engine_gives_the_same_field_on_both_paths(monkeypatch):
    from test_engine import FAST, _run

    compiled, *_ = _run(FAST)
    monkeypatch.setenv(kernels.SWITCH, "torch")
    reference, *_ = _run(FAST)
    assert [r["steps"] for r in compiled.levels] == [r["steps"] for r in reference.levels]
    assert compiled.objective == pytest.approx(reference.objective, abs=1e-4)
    difference = (compiled.displacement_mm - reference.displacement_mm).abs()
    assert float(difference.max()) < 0.05  # mm, after 90 steps of float32 rounding


def test_without_numba_the_torch_path_runs(monkeypatch):
    monkeypatch.setattr(kernels, "_numba", lambda: None)
    assert not kernels.available()
    fixed = torch.from_numpy(_random((1, 12, 13, 11), 7))
    objective = Objective(LocalNCC(5), fixed, (1.0, 1.0, 1.0))
    assert objective.kernel is None
    value, force = objective.force(fixed)
    assert value > 0.9 and force.shape == (3, 12, 13, 11)


def test_the_switch_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv(kernels.SWITCH, "torch")
    assert not kernels.available()
    monkeypatch.setenv(kernels.SWITCH, "")
    assert kernels.available()


def test_sampling_at_points_equals_the_torch_path(monkeypatch):
    from register_helpers import grid, rotation

    geometry = grid((10, 12, 9), (2.0, 1.5, 3.0), rotation((1, 0, 1), 25), (5.0, -3.0, 2.0))
    field = torch.from_numpy(_random((3, *geometry.shape), 8))
    rng = np.random.default_rng(9)
    index = rng.uniform(-3, 14, (40, 3))  # inside and beyond the grid (border values)
    points = torch.from_numpy(geometry.index_to_world(index).T.astype(np.float32)
                              .reshape(3, 5, 8))
    ours = Displacement(field, geometry)(points)
    monkeypatch.setenv(kernels.SWITCH, "torch")
    reference = Displacement(field, geometry)(points)
    assert ours.shape == (3, 5, 8)
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), atol=1e-5)


def test_overlay_cuts_read_a_slab_with_the_values_of_the_whole_volume():
    # (issue 28: the overlay resampled the whole volume for each of its 15 panels)
    from ddmr import overlay
    from ddmr.spatial.grid import Geometry
    from ddmr.spatial.resample import resample_to

    array = _random((60, 70, 50), 10)
    geometry = Geometry(np.array([[0, -1.1, 0.1, 30], [0.9, 0, 0, -20], [0.05, 0, 1.3, 5],
                                  [0, 0, 0, 1.0]]), array.shape)  # permuted, oblique
    for _, plane in overlay.slice_geometries(geometry):
        whole = resample_to(array, geometry, plane, order=1, cval=np.nan)[:, :, 0]
        np.testing.assert_allclose(overlay.cut_slice(array, geometry, plane), whole, atol=1e-5)
        moved = np.array(plane.affine)
        moved[:3, 3] += 500.0  # a plane beyond the volume: all NaN, as before
        far = Geometry(moved, plane.shape)
        assert np.isnan(overlay.cut_slice(array, geometry, far)).all()


@pytest.mark.parametrize("with_start", [False, True])
def test_the_inverse_settles_each_point_where_the_torch_path_settles_the_chunk(with_start,
                                                                               monkeypatch):
    from ddmr.registration.inverse import grid_inverse, invert
    from ddmr.spatial.filters import gaussian_smooth
    from register_helpers import grid, rotation

    fixed = grid((20, 22, 18), (2.0, 2.0, 2.0), rotation((0, 0, 1), 10), (3.0, -4.0, 1.0))
    moving = grid((17, 19, 21), (2.2, 1.8, 2.0), rotation((1, 1, 0), -15), (6.0, 0.0, -2.0))
    generator = torch.Generator().manual_seed(11)
    field = gaussian_smooth(torch.randn(3, *fixed.shape, generator=generator) * 8.0, 3.0)
    residual = Displacement(field.contiguous(), fixed)
    point_map = np.eye(4)
    point_map[:3, 3] = (1.5, -2.0, 0.5)
    start = Displacement(grid_inverse(field, fixed), fixed) if with_start else None
    ours = invert(Transform(point_map, residual), fixed, moving, start)
    monkeypatch.setenv(kernels.SWITCH, "torch")
    reference = invert(Transform(point_map, residual), fixed, moving, start)
    assert ours.error_max < 1e-2 and ours.error_mean <= reference.error_mean + 1e-4
    np.testing.assert_allclose(ours.displacement_mm, reference.displacement_mm, atol=1e-2)
    assert ours.overlap_fraction == reference.overlap_fraction


@pytest.mark.parametrize("threads", [1, 2])
def test_the_kernels_use_ddmrs_thread_count(threads):
    import os
    import subprocess
    import sys

    code = (f"from ddmr.threads import use_threads; use_threads({threads}); "
            "from ddmr.spatial import kernels; import numba; kernels.available(); "
            "print(numba.get_num_threads())")
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.split()[-1]
    assert int(printed) == min(threads, os.cpu_count())


@pytest.mark.parametrize("with_field", [True, False])
def test_the_native_outputs_equal_the_torch_path(with_field, monkeypatch):
    """:func:`ddmr.registration.native.to_native` on oblique, anisotropic grids far apart,
    the field on a third grid: displacement, warped image and labels on both paths."""
    from ddmr.registration.native import to_native
    from register_helpers import grid, rotation

    fixed = grid((30, 26, 22), (1.1, 1.0, 1.3), rotation((0, 0, 1), 10), (3.0, -5.0, 7.0))
    moving_grid = grid((28, 30, 20), (1.2, 0.9, 1.4), rotation((1, 1, 0), -20),
                       (-4.0, 2.0, 1.0))
    moving = _random(moving_grid.shape, 10)
    labels = (_random(moving_grid.shape, 11) * 4).astype(np.uint8)
    field_grid = grid((14, 15, 12), (2.0, 2.0, 2.0), rotation((0, 1, 0), 5),
                      (-2.0, -8.0, -3.0))
    field = torch.from_numpy((_random((3, *field_grid.shape), 12) - 0.5) * 6)
    point_map = np.eye(4)
    point_map[:3, :3] += np.random.default_rng(13).normal(0.0, 0.05, (3, 3))
    point_map[:3, 3] = (2.0, -1.0, 3.0)
    transform = Transform(point_map, Displacement(field, field_grid) if with_field else None)
    ours = to_native(transform, fixed, moving, moving_grid, labels)
    monkeypatch.setenv(kernels.SWITCH, "torch")
    reference = to_native(transform, fixed, moving, moving_grid, labels)
    np.testing.assert_allclose(ours.displacement_mm, reference.displacement_mm, atol=2e-4)
    # a voxel exactly at the half-voxel edge of the moving grid may fall either way
    assert np.mean(np.abs(ours.warped - reference.warped) > 1e-4) < 1e-3
    assert np.mean(ours.warped_labels != reference.warped_labels) < 1e-3


def test_linear_resampling_equals_the_torch_path(monkeypatch):
    """:func:`ddmr.spatial.resample.resample_to` (trilinear, ``cval`` beyond half a voxel)
    of a Fortran-ordered image onto an oblique grid of other spacing and extent."""
    from ddmr.spatial.resample import resample_to
    from register_helpers import grid, rotation

    source_grid = grid((24, 20, 18), (1.0, 1.2, 1.5), rotation((0, 1, 1), 15), (2.0, 3.0, -4.0))
    target = grid((30, 16, 25), (0.9, 1.4, 1.1), rotation((1, 0, 0), -30), (-3.0, 5.0, 2.0))
    image = np.asfortranarray(_random(source_grid.shape, 14))
    ours = resample_to(image, source_grid, target, order=1, cval=-2.0)
    monkeypatch.setenv(kernels.SWITCH, "torch")
    reference = resample_to(image, source_grid, target, order=1, cval=-2.0)
    assert (ours == -2.0).mean() > 0.05 and (ours > -2.0).mean() > 0.3  # both parts seen
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_the_inverse_on_the_fields_grid_equals_the_torch_path(monkeypatch):
    """:func:`ddmr.registration.inverse.grid_inverse` (a start for the inverse, recursive
    over coarser grids): ``e(y) = -d(y + e(y))`` on both paths."""
    from ddmr.registration.inverse import grid_inverse
    from ddmr.spatial.filters import gaussian_smooth
    from register_helpers import grid, rotation

    geometry = grid((40, 36, 34), (1.5, 1.5, 1.5), rotation((1, 0, 1), 20), (3.0, -4.0, 1.0))
    generator = torch.Generator().manual_seed(12)
    field = gaussian_smooth(torch.randn(3, *geometry.shape, generator=generator) * 10.0,
                            3.0).contiguous()
    ours = grid_inverse(field, geometry)
    monkeypatch.setenv(kernels.SWITCH, "torch")
    reference = grid_inverse(field, geometry)
    # the inverse it is: e(y) + d(y + e(y)) = 0 on the grid
    residual = ours + GridComposition(geometry)(field, ours)
    assert float(residual.abs().max()) < 2e-3
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), atol=5e-3)


def test_the_residual_equals_the_numpy_path(monkeypatch):
    """:func:`ddmr.spatial.field.residual_of` (the field less an affine point map) on an
    oblique, anisotropic grid far from the origin: compiled and numpy paths agree, and the
    residual is the whole transform less the affine part (``P(p + d) = p + disp``)."""
    from ddmr.spatial.field import residual_of
    from register_helpers import grid, rotation

    geometry = grid((21, 17, 19), (1.2, 0.9, 1.5), rotation((1, 2, 0), 25), (80.0, -60.0, 40.0))
    displacement = ((_random((3, *geometry.shape), 15) - 0.5) * 9).astype(np.float32)
    point_map = np.eye(4)
    point_map[:3, :3] += np.random.default_rng(16).normal(0.0, 0.08, (3, 3))
    point_map[:3, 3] = (12.0, -7.0, 3.0)
    ours = residual_of(displacement, geometry, point_map)
    points = geometry.points().numpy().astype(np.float64)
    whole = np.einsum("ab,b...->a...", point_map[:3, :3], points + ours) \
        + point_map[:3, 3, None, None, None]
    np.testing.assert_allclose(whole - points, displacement, atol=2e-4)
    monkeypatch.setenv(kernels.SWITCH, "torch")
    np.testing.assert_allclose(ours, residual_of(displacement, geometry, point_map), atol=1e-5)


def test_sdlogj_equals_numpy_in_float64(monkeypatch):
    """:func:`ddmr.spatial.field.sdlogj` of a float32 determinant with folded voxels (<= 0,
    floored at 1e-9): compiled, numpy's float64 std of the logs, and the torch path."""
    from ddmr.spatial.field import sdlogj

    determinant = (_random((23, 19, 17), 17) * 2.0 - 0.3).astype(np.float32)
    assert (determinant <= 0).any()
    reference = float(np.std(np.log(np.maximum(determinant.astype(np.float64), 1e-9))))
    assert sdlogj(determinant) == pytest.approx(reference, rel=1e-12)
    monkeypatch.setenv(kernels.SWITCH, "torch")
    assert sdlogj(determinant) == pytest.approx(reference, rel=1e-5)


def test_a_start_on_every_other_voxel_gives_the_same_inverse():
    """:func:`ddmr.registration.inverse.start_inverse` (the grid inverse on every other
    voxel of the field's grid) as the start of :func:`invert`: the same inverse as from
    the grid inverse on the whole grid, as precise, on oblique grids."""
    from ddmr.registration.inverse import grid_inverse, invert, start_inverse
    from ddmr.spatial.filters import gaussian_smooth
    from register_helpers import grid, rotation

    fixed = grid((40, 36, 34), (1.5, 1.5, 1.5), rotation((1, 0, 1), 20), (3.0, -4.0, 1.0))
    moving = grid((30, 38, 33), (1.7, 1.4, 1.6), rotation((0, 1, 1), -10), (5.0, 1.0, -3.0))
    generator = torch.Generator().manual_seed(13)
    field = gaussian_smooth(torch.randn(3, *fixed.shape, generator=generator) * 10.0,
                            3.0).contiguous()
    transform = Transform(np.eye(4), Displacement(field, fixed))
    start = start_inverse(field, fixed)
    assert start.grid.shape == (20, 18, 17)
    halved = invert(transform, fixed, moving, start)
    whole = invert(transform, fixed, moving, Displacement(grid_inverse(field, fixed), fixed))
    assert halved.overlap_fraction == whole.overlap_fraction > 0.5
    assert halved.error_max < 1e-2 and halved.error_p95 <= whole.error_p95 + 1e-4
    np.testing.assert_allclose(halved.displacement_mm, whole.displacement_mm, atol=5e-3)


@pytest.mark.parametrize("units", ["mm", "voxels"])
def test_field_files_hold_the_same_values_on_both_paths(units, tmp_path, monkeypatch):
    """The NIfTI field and the composite ``.h5`` written through the compiled layout
    kernels hold exactly the values the numpy path writes (oblique grid, odd sizes, the
    last chunk part-filled)."""
    import h5py
    import nibabel as nib

    from ddmr.io import composite
    from ddmr.io.fields import save_displacement
    from register_helpers import grid, rotation

    geometry = grid((37, 23, 29), (1.1, 0.9, 1.3), rotation((1, 1, 0), 35), (4.0, -6.0, 2.0))
    field = (_random((3, *geometry.shape), 15) - 0.5) * 20.0
    monkeypatch.setattr(composite, "CHUNK_VALUES", 3 * 37 * 23 * 4)  # 4 slices a chunk
    point_map = np.eye(4)
    point_map[:3, 3] = (1.0, 2.0, -3.0)
    written = {}
    for path_kind in ("compiled", "torch"):
        monkeypatch.setenv(kernels.SWITCH, "" if path_kind == "compiled" else "torch")
        save_displacement(tmp_path / f"{path_kind}.nii.gz", field, geometry, units)
        composite.write_composite(tmp_path / f"{path_kind}.h5", point_map, field, geometry)
        composite.write_inverse_composite(tmp_path / f"{path_kind}-inverse.h5", point_map,
                                          field, geometry)
        parameters = []
        for name in (f"{path_kind}.h5", f"{path_kind}-inverse.h5"):
            with h5py.File(tmp_path / name) as h5:
                parameters.append(h5["TransformGroup/2/TransformParameters"][()])
        written[path_kind] = (np.asarray(nib.load(tmp_path / f"{path_kind}.nii.gz").dataobj),
                              *parameters)
    for compiled, reference in zip(written["compiled"], written["torch"], strict=True):
        np.testing.assert_array_equal(compiled, reference)
    assert np.abs(written["compiled"][0]).max() > 1.0  # the values, not zeros


def test_sampling_with_zeros_beyond_and_its_derivatives_equal_grid_sample():
    rng = np.random.default_rng(7)
    moving = _random((15, 18, 21), 8)
    shape = (12, 14, 10)
    matrix = np.c_[np.diag([1.3, 1.25, 1.9]) + rng.standard_normal((3, 3)) * 0.1,
                   [-2.3, 0.4, -1.7]]  # some points beyond the moving grid
    values, derivatives = kernels.sample_gradient(moving, matrix, shape)
    index = torch.from_numpy(affine_volume(np.vstack([matrix, [0, 0, 0, 1]]), shape,
                                           channels_last=True).numpy().astype(np.float64))
    index.requires_grad_(True)
    scale = torch.tensor([2.0 / (n - 1) for n in moving.shape], dtype=torch.float64)
    grid = (index * scale - 1.0).flip(-1)[None]
    reference = torch.nn.functional.grid_sample(
        torch.from_numpy(moving.astype(np.float64))[None, None], grid, mode="bilinear",
        padding_mode="zeros", align_corners=True)[0, 0]
    (by_index,) = torch.autograd.grad(reference.sum(), index)
    assert (reference == 0).any() and (reference > 0).any()
    np.testing.assert_allclose(values, reference.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(derivatives, by_index.permute(3, 0, 1, 2).numpy(), atol=1e-4)


def test_weighted_index_sums_equal_numpy():
    vectors, weights = _random((3, 7, 9, 5), 9) - 0.5, _random((7, 9, 5), 10)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in weights.shape], indexing="ij"))
    homogeneous = np.concatenate([index, np.ones((1, *weights.shape))])
    expected = np.einsum("cijk,ijk,aijk->ca", vectors.astype(np.float64), weights, homogeneous)
    np.testing.assert_allclose(kernels.weighted_index_sums(vectors, weights), expected,
                               rtol=1e-6)


def test_composition_may_write_over_its_update():
    # the engine's d o (id + s) + s written into s itself
    rng = np.random.default_rng(11)
    field = (rng.standard_normal((3, 14, 12, 16)) * 2).astype(np.float32)
    update = (rng.standard_normal((3, 14, 12, 16)) * 1.5).astype(np.float32)
    linear, base = np.eye(3) * 0.9, np.c_[np.eye(3), [0.5, -1.0, 0.25]]
    expected = kernels.sample_affine(field, update, linear, base, update)
    out = kernels.sample_affine(field, update, linear, base, update, out=update)
    assert out is update
    np.testing.assert_array_equal(out, expected)


def test_temporaries_share_one_piece_of_memory_within_a_block():
    x = _random((3, 20, 23, 17), 12)
    lncc = kernels.LNCCKernel(_random((20, 23, 17), 13), 5, 1e-5)
    b = _random((20, 23, 17), 14)
    fresh = [kernels.gaussian_smooth(x, 1.0), kernels.box_sum(x.copy(), 5, out=None),
             *lncc.force(b, (1.0, 1.0, 1.0))[1:]]
    with kernels.reusing_scratch():
        smoothed = kernels.gaussian_smooth(x, 1.0)
        assert kernels._ARENA.memory.size == 20 * 23 * 17  # into a new array: one spare channel
        smoothed_in_place = x.copy()
        kernels.gaussian_smooth(smoothed_in_place, 1.0, out=smoothed_in_place)
        assert kernels._ARENA.memory.size == 2 * 20 * 23 * 17  # in place: two
        in_place = x.copy()
        kernels.box_sum(in_place, 5, out=in_place)
        _, force = lncc.force(b, (1.0, 1.0, 1.0))
        assert kernels._ARENA.memory.size == 5 * 20 * 23 * 17  # grown once, to the largest
        grown = kernels._ARENA.memory
        kernels.gaussian_smooth(x, 1.0)
        assert kernels._ARENA.memory is grown  # and reused
        assert kernels._ARENA.top == 0
    assert kernels._ARENA.memory.size == 0  # freed with the block
    for ours, theirs in zip([smoothed, in_place, force], fresh, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(smoothed_in_place, fresh[0])


def test_a_field_on_another_grid_equals_the_torch_path(monkeypatch):
    from ddmr.spatial.grid import Geometry

    coarse = Geometry(np.array([[2.0, 0.1, 0, -3], [0, 2.0, 0, 5], [0, 0, 2.2, -2],
                                [0, 0, 0, 1]]), (9, 11, 10))
    fine = Geometry(np.array([[0, 1.0, 0, -7], [-1.0, 0, 0, 14], [0, 0, 1.1, -4.5],
                              [0, 0, 0, 1]]), (25, 19, 23))  # reaches beyond: border values
    field = Displacement(torch.from_numpy(_random((3, 9, 11, 10), 15) * 4), coarse)
    ours = field.on(fine)
    monkeypatch.setenv(kernels.SWITCH, "torch")
    theirs = field.on(fine)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-4)
