"""Images as SimpleITK and ANTs objects: scalar 3D arrays with their :class:`Geometry`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ddmr.spatial.grid import Geometry

if TYPE_CHECKING:
    pass



def to_sitk(array: np.ndarray, geometry: Geometry):
    """A ``SimpleITK.Image`` of a scalar (I, J, K) array on ``geometry``."""
    import SimpleITK as sitk  # noqa: N813

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    origin, spacing, direction = geometry.to_itk()
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def from_sitk(image) -> tuple[np.ndarray, Geometry]:
    """(array (I, J, K), Geometry) of a scalar 3D ``SimpleITK.Image``."""
    import SimpleITK as sitk  # noqa: N813

    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    geometry = Geometry.from_itk(image.GetOrigin(), image.GetSpacing(),
                                 image.GetDirection(), image.GetSize())
    return array, geometry


def to_ants(array: np.ndarray, geometry: Geometry):
    """An ``ants.ANTsImage`` of a scalar (I, J, K) array on ``geometry`` (float32)."""
    import ants

    origin, spacing, direction = geometry.to_itk()
    return ants.from_numpy(
        np.ascontiguousarray(np.asarray(array, dtype=np.float32)),
        origin=origin, spacing=spacing, direction=np.asarray(direction).reshape(3, 3),
    )


def from_ants(image) -> tuple[np.ndarray, Geometry]:
    """(array (I, J, K), Geometry) of a scalar 3D ``ants.ANTsImage``."""
    array = image.numpy()
    geometry = Geometry.from_itk(image.origin, image.spacing,
                                 np.asarray(image.direction).ravel(), array.shape)
    return array, geometry
