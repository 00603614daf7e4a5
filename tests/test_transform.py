"""The displacement field as a value (:class:`ddmr.spatial.displacement.Displacement`)
against independent references: scipy's linear interpolation (border rule) and ITK's
displacement field transform (zero rule), on an oblique, anisotropic grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ddmr.spatial.displacement import Displacement
from register_helpers import grid, rotation


def _geometry():
    return grid((10, 12, 9), (2.0, 1.5, 3.0), rotation((1, 0, 1), 25), (5.0, -3.0, 2.0))


def _field(geometry, seed: int = 3) -> torch.Tensor:
    return torch.rand(3, *geometry.shape, generator=torch.Generator().manual_seed(seed)) * 4 - 2


def _itk_field(field: Displacement):
    """The field as SimpleITK's displacement field transform (LPS, built independently)."""
    import SimpleITK as sitk  # noqa: N813

    lps = field.field_mm.numpy() * np.array([-1.0, -1.0, 1.0])[:, None, None, None]
    image = sitk.GetImageFromArray(lps.transpose(3, 2, 1, 0).astype(np.float64), isVector=True)
    origin, spacing, direction = field.grid.to_itk()
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return sitk.DisplacementFieldTransform(image)


def test_border_rule_is_scipys_linear_interpolation_with_nearest_edges():
    geometry = _geometry()
    field = _field(geometry)
    index = np.array([[1.3, 2.7, 4.1], [8.9, 0.2, 7.5], [4.0, 11.0, 0.0], [-3.0, 14.5, 4.0]])
    points = torch.from_numpy(geometry.index_to_world(index).T.astype(np.float32))
    ours = Displacement(field, geometry)(points).numpy()
    for c in range(3):
        reference = ndimage.map_coordinates(field[c].numpy(), index.T, order=1, mode="nearest")
        np.testing.assert_allclose(ours[c], reference, atol=1e-5)


def test_on_another_grid_equals_reading_at_its_world_points():
    source = _geometry()
    target = grid((13, 8, 11), (1.1, 2.2, 1.7), rotation((0, 1, 1), -10), (7.0, -1.0, 4.0))
    field = Displacement(_field(source, 8), source)
    ours = field.on(target)
    assert ours.shape == (3, *target.shape)
    np.testing.assert_allclose(ours.numpy(), field(target.points()).numpy(), atol=1e-5)


def test_zero_rule_moves_points_as_itks_displacement_field_transform():

    geometry = _geometry()
    field = Displacement(_field(geometry, 5), geometry, "zero")
    transform = _itk_field(field)
    rng = np.random.default_rng(0)
    index = rng.uniform(-0.45, np.array(geometry.shape) - 0.55, (50, 3))  # inside
    far = np.array([[-5.0, 3.0, 2.0], [30.0, 30.0, 30.0]])  # beyond: no displacement
    points = geometry.index_to_world(np.vstack([index, far]))
    ours = field.moved(points)
    flip = np.array([-1.0, -1.0, 1.0])
    theirs = np.array([transform.TransformPoint(tuple(p * flip)) for p in points]) * flip
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    np.testing.assert_allclose(ours[-2:], points[-2:], atol=1e-9)


def test_from_voxels_is_the_grids_linear_part_and_shapes_are_checked():
    geometry = _geometry()
    voxels = _field(geometry, 2)
    field = Displacement.from_voxels(voxels.numpy(), geometry)
    expected = np.einsum("ab,b...->a...", geometry.affine[:3, :3], voxels.double().numpy())
    np.testing.assert_allclose(field.field_mm.numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="field must be"):
        Displacement(torch.zeros(3, 4, 4, 4), geometry)
    with pytest.raises(ValueError, match="beyond"):
        Displacement(voxels, geometry, "wrap")


def test_transform_is_itks_composite_of_the_affine_part_after_the_field():
    import SimpleITK as sitk  # noqa: N813

    from ddmr.spatial.displacement import Transform

    geometry = _geometry()
    field = Displacement(_field(geometry, 6), geometry)
    point_map = np.eye(4)
    point_map[:3, :3] = rotation((0, 1, 1), 12) @ np.diag([1.1, 0.9, 1.05])
    point_map[:3, 3] = (4.0, -7.0, 12.5)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps_map = flip @ point_map @ flip
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tuple(lps_map[:3, :3].ravel()))
    affine.SetTranslation(tuple(lps_map[:3, 3]))
    composite = sitk.CompositeTransform([affine, _itk_field(field)])
    index = np.random.default_rng(1).uniform(0.5, np.array(geometry.shape) - 1.5, (30, 3))
    points = geometry.index_to_world(index)
    ours = Transform(point_map, field)(torch.from_numpy(points.T.astype(np.float32)))
    theirs = np.array([composite.TransformPoint(tuple(p * flip[:3, :3].diagonal()))
                       for p in points]) * flip[:3, :3].diagonal()
    np.testing.assert_allclose(ours.numpy().T, theirs, atol=1e-3)
    alone = Transform(point_map)(torch.from_numpy(points.T.astype(np.float32)))
    np.testing.assert_allclose(alone.numpy().T, points @ point_map[:3, :3].T + point_map[:3, 3],
                               atol=1e-3)
