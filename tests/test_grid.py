"""Frames of a grid (:meth:`Geometry.matrix`, :meth:`Geometry.points`) against independent
references: SimpleITK's index -> physical point (LPS), the affine's own inverse, and
``grid_sample`` reading back each voxel from its sampling coordinates."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from ddmr.spatial.grid import FRAMES, Geometry


def oblique(shape=(7, 9, 5), flip: bool = True) -> Geometry:
    """An anisotropic, rotated, flipped grid with its origin far from the world's."""
    affine = np.eye(4)
    rotation = Rotation.from_euler("xyz", (25.0, -10.0, 40.0), degrees=True).as_matrix()
    affine[:3, :3] = rotation @ np.diag((1.3, 0.7, 2.4)) @ np.diag((-1.0 if flip else 1.0,
                                                                    1.0, 1.0))
    affine[:3, 3] = (-412.0, 95.5, 1203.0)
    return Geometry(affine, shape)


def test_itk_frame_is_simpleitks_physical_point():
    import SimpleITK as sitk  # noqa: N813

    geometry = oblique()
    image = sitk.Image(*geometry.shape, sitk.sitkFloat32)
    origin, spacing, direction = geometry.to_itk()
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    to_itk = geometry.matrix("index", "itk")
    for index in [(0, 0, 0), (6, 8, 4), (3, 1, 2)]:
        expected = image.TransformIndexToPhysicalPoint(index)
        np.testing.assert_allclose(to_itk[:3, :3] @ index + to_itk[:3, 3], expected,
                                   atol=1e-9)
    point = np.array([-400.0, 90.0, 1210.0])  # RAS
    lps = point * [-1.0, -1.0, 1.0]
    continuous = image.TransformPhysicalPointToContinuousIndex(tuple(lps))
    np.testing.assert_allclose((geometry.matrix("world", "index") @ [*point, 1.0])[:3],
                               continuous, atol=1e-9)


@pytest.mark.parametrize(("source", "target"), list(itertools.permutations(FRAMES, 2)))
def test_every_pair_of_frames_composes_and_inverts(source, target):
    geometry = oblique()
    forward, backward = geometry.matrix(source, target), geometry.matrix(target, source)
    np.testing.assert_allclose(forward @ backward, np.eye(4), atol=1e-12)
    via_index = geometry.matrix("index", target) @ geometry.matrix(source, "index")
    np.testing.assert_allclose(forward, via_index, atol=1e-12)
    np.testing.assert_array_equal(geometry.matrix("index", "world"), geometry.affine)
    np.testing.assert_allclose(geometry.matrix("world", "index"), np.linalg.inv(geometry.affine),
                               atol=1e-15)


def test_sampling_frame_reads_each_voxel_back_with_grid_sample():
    geometry = oblique()
    volume = torch.rand(1, 1, *geometry.shape, dtype=torch.float64)
    coordinates = geometry.points("sampling", channels_last=True, dtype=torch.float64)
    sampled = F.grid_sample(volume, coordinates[None], align_corners=True)
    torch.testing.assert_close(sampled, volume, atol=1e-12, rtol=0)


def test_points_are_the_affine_at_every_index_and_rows_are_a_slab():
    geometry = oblique()
    index = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"))
    expected = np.einsum("ab,bijk->aijk", geometry.affine[:3, :3], index) \
        + geometry.affine[:3, 3, None, None, None]
    points = geometry.points(dtype=torch.float64).numpy()
    np.testing.assert_allclose(points, expected, atol=1e-9)
    np.testing.assert_allclose(geometry.points().numpy(), expected, atol=1e-3)  # float32
    slab = geometry.points(dtype=torch.float64, rows=slice(2, 5)).numpy()
    np.testing.assert_array_equal(slab, points[:, 2:5])
    last = geometry.points("itk", channels_last=True, dtype=torch.float64).numpy()
    np.testing.assert_allclose(last, np.moveaxis(expected, 0, -1) * [-1.0, -1.0, 1.0],
                               atol=1e-9)


def test_matrices_are_read_only_and_unknown_frames_refused():
    geometry = oblique()
    for source, target in [("index", "world"), ("world", "index"), ("itk", "sampling")]:
        with pytest.raises(ValueError, match="read-only"):
            geometry.matrix(source, target)[0, 0] = 5.0
    with pytest.raises(ValueError, match="unknown frame 'voxel'"):
        geometry.matrix("voxel", "world")
    assert geometry.matrix("world", "index") is geometry.matrix("world", "index")  # cached
