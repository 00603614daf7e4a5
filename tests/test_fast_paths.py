"""The registration path's fast implementations against plain references (issue 9):
label-exact warping with its uniform-cell shortcut, the separable field interpolation,
threaded spline resampling, bincount metrics and uncompressed-gzip field files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ddmr import metrics
from ddmr.io.images import load_image, save_image
from ddmr.registration import native
from ddmr.spatial import field, warp
from ddmr.spatial.displacement import Displacement, Transform
from ddmr.spatial.grid import Geometry
from ddmr.spatial.resample import antialias_sigma, resample_to
from ddmr.spatial.warp import label_cells


def blocky_labels(shape, seed, block=4, count=6):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, count, size=[max(1, n // block) for n in shape])
    zoom = [n / c for n, c in zip(shape, coarse.shape, strict=True)]
    labels = ndimage.zoom(coarse, zoom, order=0)[: shape[0], : shape[1], : shape[2]]
    return np.ascontiguousarray(labels.astype(np.uint8))


def reference_labels(labels, points, values):
    """The definition: each label's indicator interpolated trilinearly (border values
    beyond the grid), the largest weight wins (ties: first in values), 0 outside."""
    coordinates = np.clip(points.T, 0, np.array(labels.shape)[:, None] - 1)
    scores = np.stack([ndimage.map_coordinates((labels == v).astype(np.float64), coordinates,
                                               order=1, mode="nearest") for v in values])
    best = np.asarray(values)[np.argmax(scores > scores.max(axis=0) - 1e-9, axis=0)]
    inside = np.all((points >= -0.5) & (points <= np.array(labels.shape) - 0.5), axis=1)
    return np.where(inside, best, 0)


@pytest.mark.parametrize("shape", [(12, 9, 10), (1, 8, 7), (16, 3, 2)])
def test_label_sampling_equals_the_per_label_definition(shape):
    labels = blocky_labels(shape, seed=sum(shape))
    rng = np.random.default_rng(0)
    points = rng.uniform(-1.0, 1.0, size=(4000, 3)) + rng.uniform(0, 1, size=(4000, 3)) \
        * np.array(shape)
    values = [int(v) for v in np.unique(labels)]
    ours = warp.sample_labels(torch.from_numpy(labels)[None, None],
                               torch.from_numpy(points.T.astype(np.float32)), values).numpy()
    expected = reference_labels(labels, points.astype(np.float32).astype(np.float64), values)
    np.testing.assert_array_equal(ours, expected)


def test_label_cells_mark_uniform_cells_only():
    labels = blocky_labels((10, 11, 12), seed=3)
    cells = label_cells(torch.from_numpy(labels)[None, None]).numpy().reshape(labels.shape)
    padded = np.pad(labels, [(0, 1)] * 3, mode="edge")
    for i, j, k in np.random.default_rng(1).integers(0, 10, size=(200, 3)):
        corners = padded[i:i + 2, j:j + 2, k:k + 2]
        expected = labels[i, j, k] if np.all(corners == labels[i, j, k]) else -1
        assert cells[i, j, k] == expected


@pytest.mark.parametrize("rotated", [False, True])
def test_native_field_matches_scipy_linear_interpolation(rotated):
    """The network field brought to the fixed grid (separable path when the grids share
    axes, grid_sample otherwise) equals scipy's linear interpolation of it."""
    model = Geometry(np.diag([3.0, 2.5, 3.5, 1.0]), (8, 9, 7))
    fixed_affine = np.diag([1.0, 1.2, 0.9, 1.0])
    fixed_affine[:3, 3] = [-1.0, 0.5, 2.0]
    if rotated:
        fixed_affine[:3, :3] = Rotation.from_rotvec([0.1, -0.2, 0.15]).as_matrix() \
            @ fixed_affine[:3, :3]
    fixed = Geometry(fixed_affine, (17, 15, 20))
    u = torch.randn(1, 3, *model.shape, generator=torch.Generator().manual_seed(0))
    moving = np.random.default_rng(0).random((10, 10, 10)).astype(np.float32)
    result = native.to_native(Transform(np.eye(4), Displacement.from_voxels(u[0], model)),
                              fixed, moving, Geometry(np.diag([2.0, 2, 2, 1]), moving.shape))
    to_model = np.linalg.inv(model.affine) @ fixed.affine
    index = np.indices(fixed.shape).reshape(3, -1).astype(np.float64)
    q = to_model[:3, :3] @ index + to_model[:3, 3:]
    q = np.clip(q, 0, np.array(model.shape)[:, None] - 1)
    field = np.stack([ndimage.map_coordinates(u[0, c].double().numpy(), q, order=1)
                      for c in range(3)])
    expected = (model.affine[:3, :3] @ field).reshape(3, *fixed.shape)
    np.testing.assert_allclose(result.displacement_mm, expected, atol=2e-4)


def test_threaded_spline_resampling_equals_scipy():
    rng = np.random.default_rng(2)
    image = ndimage.gaussian_filter(rng.random((30, 26, 22)), 1.5).astype(np.float32)
    source = Geometry(np.diag([1.2, 1.0, 1.4, 1.0]), image.shape)
    target_affine = np.eye(4)
    target_affine[:3, :3] = Rotation.from_rotvec([0.2, 0.1, -0.3]).as_matrix() * 2.1
    target_affine[:3, 3] = [3.0, 2.0, 4.0]
    target = Geometry(target_affine, (13, 11, 12))
    ours = resample_to(image, source, target, order=3, cval=-1.0, antialias=True)
    transform = np.linalg.inv(source.affine) @ target.affine
    sigma = np.maximum(np.linalg.norm(transform[:3, :3], axis=1) - 1, 0) / 2
    smooth = ndimage.gaussian_filter(image, sigma, mode="nearest")
    expected = np.clip(ndimage.affine_transform(
        smooth, transform[:3, :3], transform[:3, 3], output_shape=target.shape, order=3,
        mode="nearest"), image.min(), image.max())
    inside = ours != -1.0
    assert inside.mean() > 0.3
    np.testing.assert_allclose(ours[inside], expected[inside], atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_linear_resampling_by_grid_sample_equals_scipy(threads):
    # oblique, anisotropic, partly outside: the values of ndimage.affine_transform
    # (order 1, edge values), cval beyond half a voxel, the same voxels outside
    rng = np.random.default_rng(3)
    image = ndimage.gaussian_filter(rng.random((31, 27, 24)), 1.5).astype(np.float32)
    source = Geometry(np.diag([1.2, 1.0, 1.4, 1.0]), image.shape)
    target_affine = np.eye(4)
    target_affine[:3, :3] = Rotation.from_rotvec([0.3, -0.2, 0.25]).as_matrix() * 1.3
    target_affine[:3, 3] = [-4.0, 6.0, 2.0]
    target = Geometry(target_affine, (29, 25, 30))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = resample_to(image, source, target, order=1, cval=-1.0)
    finally:
        torch.set_num_threads(previous)
    transform = np.linalg.inv(source.affine) @ target.affine
    expected = ndimage.affine_transform(image, transform[:3, :3], transform[:3, 3],
                                        output_shape=target.shape, order=1, mode="nearest")
    index = np.einsum("ab,bijk->aijk", transform[:3, :3], np.indices(target.shape)) \
        + transform[:3, 3, None, None, None]
    inside = np.all([(index[a] >= -0.5 - 1e-4) & (index[a] <= n - 0.5 + 1e-4)
                     for a, n in enumerate(image.shape)], axis=0)  # (ITK's rule)
    assert 0.2 < inside.mean() < 0.95
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours == -1.0, ~inside)
    np.testing.assert_allclose(ours[inside], expected[inside], atol=1e-5)


@pytest.mark.parametrize("order_in_memory", ["C", "F"])
def test_linear_antialiased_resampling_smooths_renormalised_at_the_borders(order_in_memory):
    # an oblique, coarser target: the Gaussian of antialias_sigma truncated at 4 sigma and
    # renormalised over the taps inside the grid (scipy's normalised convolution: zeros
    # beyond the grid, divided by the smoothed ones), then scipy's trilinear resampling
    rng = np.random.default_rng(8)
    image = np.asarray(ndimage.gaussian_filter(rng.random((33, 29, 26)), 1.0),
                       dtype=np.float32, order=order_in_memory)
    source = Geometry(np.diag([1.0, 1.1, 0.9, 1.0]), image.shape)
    target_affine = np.eye(4)
    target_affine[:3, :3] = Rotation.from_rotvec([0.2, -0.1, 0.15]).as_matrix() * 2.6
    target_affine[:3, 3] = [1.0, 2.0, -1.0]
    target = Geometry(target_affine, (14, 13, 12))
    sigma = antialias_sigma(source, target)
    assert np.all(sigma > 0.5)
    ours = resample_to(image, source, target, order=1, cval=-1.0, antialias=True)

    def smooth(volume):
        for axis, s in enumerate(sigma):
            volume = ndimage.gaussian_filter1d(volume, s, axis=axis, mode="constant",
                                               radius=int(np.floor(4 * s)))
        return volume

    smoothed = smooth(image.astype(np.float64)) / smooth(np.ones(image.shape))
    transform = np.linalg.inv(source.affine) @ target.affine
    expected = ndimage.affine_transform(smoothed, transform[:3, :3], transform[:3, 3],
                                        output_shape=target.shape, order=1, mode="nearest")
    inside = ours != -1.0
    assert inside.mean() > 0.3
    np.testing.assert_allclose(ours[inside], expected[inside], atol=1e-5)
    edge_repeated = ndimage.affine_transform(
        ndimage.gaussian_filter(image, sigma, mode="nearest"), transform[:3, :3],
        transform[:3, 3], output_shape=target.shape, order=1, mode="nearest")
    assert np.abs(edge_repeated[inside] - ours[inside]).max() > 1e-3  # the rule matters


@pytest.mark.parametrize(("units", "name"), [("mm", "d.nii.gz"), ("voxels", "d.nii")])
def test_field_files_written_a_component_at_a_time_equal_nibabels(tmp_path, units, name):
    # the streamed vector file holds the very bytes nibabel writes from the whole array,
    # rounded to the field step
    import gzip

    from ddmr.io.fields import load_displacement, save_displacement
    from ddmr.io.images import FIELD_STEP_MM, _write_nifti
    from ddmr.spatial.field import displacement_to_lps_mm

    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_rotvec([0.3, -0.1, 0.2]).as_matrix() @ np.diag(
        [1.2, 0.9, 1.5])
    affine[:3, 3] = [-30.0, 12.0, 80.0]
    geometry = Geometry(affine, (7, 9, 11))
    field_values = np.random.default_rng(4).normal(size=(3, *geometry.shape)).astype(
        np.float32)
    save_displacement(tmp_path / name, field_values, geometry, units)

    def vector_intent(header) -> None:
        header.set_intent("vector", (), "")

    reference = tmp_path / f"reference-{name}"
    lps = displacement_to_lps_mm(field_values, geometry, units).astype(np.float64)
    lps = (np.rint(lps / FIELD_STEP_MM) * FIELD_STEP_MM).astype(np.float32)
    _write_nifti(reference, lps.reshape(*geometry.shape, 1, 3), geometry, vector_intent)
    read = gzip.decompress if name.endswith(".gz") else bytes
    assert read((tmp_path / name).read_bytes()) == read(reference.read_bytes())
    back, back_geometry = load_displacement(tmp_path / name)
    assert back_geometry.isclose(geometry)
    expected = field_values if units == "voxels" else field.mm_to_voxels(field_values,
                                                                         geometry)
    error_mm = np.einsum("ab,b...->a...", geometry.affine[:3, :3], back - expected)
    assert np.abs(error_mm).max() <= 0.5 * FIELD_STEP_MM + 1e-5


def test_centroids_and_dice_by_bincount_equal_scipy():
    a = blocky_labels((20, 18, 16), seed=5)
    b = np.roll(a, 2, axis=1)
    values = [1, 2, 3, 4, 5, 9]
    spacing = (1.5, 1.0, 2.0)
    ours = metrics.centroids(a, values, spacing)
    for row, value in zip(ours, values, strict=True):
        if (a == value).any():
            expected = np.asarray(ndimage.center_of_mass(a == value)) * spacing
            np.testing.assert_allclose(row, expected, rtol=1e-12)
        else:
            assert np.all(np.isnan(row))
    dice = metrics.dice_per_label(a, b, values)
    for d, value in zip(dice, values, strict=True):
        x, y = a == value, b == value
        total = x.sum() + y.sum()
        assert (np.isnan(d) and total == 0) or d == pytest.approx(2 * (x & y).sum() / total)


def test_float_fields_written_without_compression_read_back(tmp_path):
    import SimpleITK as sitk  # noqa: N813

    geometry = Geometry(np.diag([1.5, 1.5, 2.0, 1.0]), (6, 7, 8))
    values = np.random.default_rng(0).normal(size=geometry.shape).astype(np.float32)
    save_image(tmp_path / "a.nii.gz", values, geometry, gzip_level=0)
    back, _ = load_image(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(back, values)
    itk = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a.nii.gz"))).transpose(2, 1, 0)
    np.testing.assert_array_equal(itk, values)


@pytest.mark.parametrize("flow", ["full", "half"])
def test_unet_levers_keep_the_eager_output(flow):
    """oneDNN path, inference_mode and channels_last_3d (the levers of
    benchmarks/bench_paper_net.py) give the plain eager field within 1e-5 voxel."""
    from ddmr.nn import UNet, UNetConfig

    torch.manual_seed(0)
    plain = UNet(UNetConfig(encoder=(8, 16, 16), head=(8,), fast_cpu_conv=False,
                            flow_resolution=flow)).eval()
    torch.nn.init.normal_(plain.output.weight, std=1e-2)
    fast = UNet(UNetConfig(encoder=(8, 16, 16), head=(8,), fast_cpu_conv=True,
                           flow_resolution=flow)).eval()
    fast.load_state_dict(plain.state_dict())
    fast = fast.to(memory_format=torch.channels_last_3d)
    g = torch.Generator().manual_seed(1)
    fixed, moving = torch.rand(2, 1, 1, 24, 24, 24, generator=g)
    with torch.no_grad():
        expected = plain(fixed, moving)
    with torch.inference_mode():
        ours = fast(fixed.contiguous(memory_format=torch.channels_last_3d),
                    moving.contiguous(memory_format=torch.channels_last_3d))
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(ours.contiguous(), expected, atol=1e-5, rtol=1e-4)


def test_nifti_files_are_byte_identical_across_writes(tmp_path):
    geometry = Geometry(np.diag([1.5, 1.5, 2.0, 1.0]), (6, 7, 8))
    values = np.random.default_rng(0).normal(size=geometry.shape).astype(np.float32)
    for level in (0, 1):
        save_image(tmp_path / "a.nii.gz", values, geometry, gzip_level=level)
        save_image(tmp_path / "b.nii.gz", values, geometry, gzip_level=level)
        assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()


def test_moving_source_is_rebuilt_when_the_prealignment_changes_its_smoothing():
    from ddmr.prepare.recipe import PrepareOptions
    from ddmr.registration.space import ModelSpace, model_source, source_fits

    prepared = Geometry(np.diag([2.0, 1.0, 1.0, 1.0]), (10, 20, 20))
    space = ModelSpace(prepared, prepared, PrepareOptions(size=(10, 20, 20)))
    image = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    source = model_source(image, Geometry(np.eye(4), image.shape), space)
    assert source.sigma == pytest.approx((0.5, 0.0, 0.0))
    assert source_fits(source, space, np.eye(4))
    small = np.eye(4)
    small[:3, :3] = Rotation.from_rotvec([0.0, 0.0, 0.02]).as_matrix()
    assert source_fits(source, space, small)
    quarter = np.eye(4)
    quarter[:3, :3] = Rotation.from_rotvec([0.0, 0.0, np.pi / 2]).as_matrix()
    assert not source_fits(source, space, quarter)  # the coarse axis now lies along y


def test_bincount_metrics_take_sparse_label_values():
    a = np.zeros((6, 6, 6), np.int64)
    a[:3] = 10**9
    b = np.roll(a, 1, axis=0)
    assert metrics.dice_per_label(a, b, [10**9])[0] == pytest.approx(2 * 2 / 6)
    centre = metrics.centroids(a, [10**9], (1.0, 1.0, 1.0))[0]
    np.testing.assert_allclose(centre, [1.0, 2.5, 2.5])


def test_native_jacobian_matches_the_reference_on_thin_and_odd_grids():
    from ddmr.spatial.field import jacobian_determinant

    rng = np.random.default_rng(11)
    affine = np.eye(4)
    affine[:3, :3] = [[1.2, 0.1, 0.0], [0.0, 0.9, 0.2], [0.1, 0.0, 2.0]]
    for shape in [(2, 5, 3), (6, 2, 7), (5, 4, 3)]:
        geometry = Geometry(affine, shape)
        field_mm = rng.normal(0, 0.8, size=(3, *shape)).astype(np.float32)
        voxels = torch.from_numpy(field.mm_to_voxels(field_mm, geometry))[None]
        expected = jacobian_determinant(voxels)[0, 0].numpy()
        np.testing.assert_allclose(field.jacobian_determinant_mm(field_mm, geometry), expected,
                                   rtol=1e-5, atol=1e-5)


def smooth_volume(shape, seed):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 1.5).astype(np.float32)


@pytest.mark.parametrize("order", [3, 5])
@pytest.mark.parametrize("sigma", [None, (0.5, 0.0, 0.8)])
def test_dense_spline_coefficients_equal_scipy_filters(monkeypatch, order, sigma):
    import ddmr.spatial.resample as io

    volume = smooth_volume((14, 11, 9), seed=order)
    geometry = Geometry(np.diag([1.5, 1.2, 2.0, 1.0]), volume.shape)
    dense = io.spline_source(volume, geometry, order, sigma)
    monkeypatch.setattr(io, "DENSE_FILTER_LIMIT", 0)
    filtered = io.spline_source(volume, geometry, order, sigma)
    assert dense.sigma == filtered.sigma
    np.testing.assert_allclose(dense.coefficients, filtered.coefficients, atol=1e-5)


@pytest.mark.parametrize("case", ["coarser", "flipped, partly outside", "finer"])
def test_axis_aligned_resampling_equals_the_spline_path(case):
    from ddmr.spatial.resample import (
        antialias_sigma,
        resample_axis_aligned,
        resample_spline,
        spline_source,
    )

    volume = smooth_volume((20, 17, 15), seed=4)
    source = Geometry(np.diag([1.5, 1.4, 1.6, 1.0]), volume.shape)
    affine = {"coarser": np.diag([3.0, 3.1, 2.9, 1.0]),
              "flipped, partly outside": np.diag([-2.0, 1.0, 3.5, 1.0]),
              "finer": np.diag([0.7, 0.9, 1.1, 1.0])}[case]
    affine[:3, 3] = {"coarser": [1.0, -2.0, 3.0], "flipped, partly outside": [40.0, -5.0, 4.0],
                     "finer": [2.0, 1.0, 0.5]}[case]
    target = Geometry(affine, (11, 13, 9))
    sigma = antialias_sigma(source, target)
    expected = resample_spline(spline_source(volume, source, 3, sigma), target, cval=-1.0)
    ours = resample_axis_aligned(volume, source, target, 3, sigma, cval=-1.0)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    if case == "flipped, partly outside":
        assert 0 < np.mean(expected == -1.0) < 1
    rotated = affine.copy()
    rotated[:3, :3] = Rotation.from_rotvec([0.0, 0.0, 0.2]).as_matrix() @ affine[:3, :3]
    assert resample_axis_aligned(volume, source, Geometry(rotated, (11, 13, 9))) is None


def test_sampling_grid_is_the_normalised_identity_plus_displacement():
    from ddmr.spatial.warp import sampling_grid

    displacement = torch.randn(2, 3, 5, 7, 4, requires_grad=True)
    index = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in (5, 7, 4)],
                                       indexing="ij"))
    points = index + displacement  # (B, 3, D, H, W) voxel positions
    scale = torch.tensor([2 / 4, 2 / 6, 2 / 3]).view(1, 3, 1, 1, 1)
    expected = (points * scale - 1).permute(0, 2, 3, 4, 1).flip(-1)
    grid = sampling_grid(displacement)
    torch.testing.assert_close(grid, expected, atol=1e-6, rtol=0)
    grid.sum().backward()
    torch.testing.assert_close(displacement.grad, scale.expand_as(displacement).clone())


def reference_onehot_warp(labels, displacement):
    """The definition: each label's indicator warped trilinearly (zeros beyond the grid),
    the largest weight wins (strictly larger: ties go to the smaller label; none: 0)."""
    from ddmr.spatial.warp import sampling_grid

    grid = sampling_grid(displacement)
    source = labels.expand(displacement.shape[0], *labels.shape[1:])
    best_score = torch.zeros(source.shape, dtype=torch.float32)
    best = torch.zeros_like(source)
    for value in torch.unique(labels).tolist():
        score = torch.nn.functional.grid_sample((source == value).float(), grid,
                                                align_corners=True)
        best = torch.where(score > best_score, torch.full_like(best, value), best)
        best_score = torch.maximum(score, best_score)
    return best


@pytest.mark.parametrize("batch", [1, 3])
def test_onehot_label_warping_equals_the_per_label_definition(batch):
    from ddmr.spatial.warp import warp_labels

    shape = (13, 11, 9)
    labels = torch.from_numpy(blocky_labels(shape, seed=5) * 3)[None, None]  # gaps: 0, 3, 6...
    generator = torch.Generator().manual_seed(batch)
    coarse = torch.randn(batch, 3, 3, 3, 3, generator=generator) * 4.0
    displacement = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear")
    displacement[:, :, :2] += 30.0  # some points far outside the grid
    ours = warp_labels(labels, displacement, method="onehot")
    expected = reference_onehot_warp(labels, displacement)
    assert torch.equal(ours, expected)
    assert (ours == 0).any() and len(torch.unique(ours)) > 2


def test_large_sources_keep_scipy_filters(monkeypatch):
    import ddmr.spatial.resample as io

    volume = smooth_volume((12, 10, 8), seed=2)
    source = Geometry(np.diag([1.0, 1.0, 1.0, 1.0]), volume.shape)
    target = Geometry(np.diag([2.0, 2.0, 2.0, 1.0]), (6, 5, 4))
    assert io.resample_axis_aligned(volume, source, target) is not None
    monkeypatch.setattr(io, "DENSE_FILTER_LIMIT", 11)
    assert io.resample_axis_aligned(volume, source, target) is None
    np.testing.assert_allclose(io.resample_to(volume, source, target, antialias=True),
                               io.resample_spline(io.spline_source(
                                   volume, source, 3, io.antialias_sigma(source, target)),
                                   target), atol=1e-6)
