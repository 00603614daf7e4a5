"""Displacement-field files: ddmr's voxel fields as ITK/ANTs displacement fields.

On disk (:func:`save_displacement`) a field is an ITK/ANTs displacement field: a NIfTI
vector image (I, J, K, 1, 3), intent "vector" (1007), whose vectors are physical offsets
in mm in LPS, ``d_LPS = diag(-1, -1, 1) @ affine[:3, :3] @ u`` for the ddmr voxel field
``u`` (:mod:`ddmr.spatial.field`). ``antsApplyTransforms`` and
``SimpleITK.DisplacementFieldTransform`` read it as the transform that maps a point of
the fixed (this) grid to the moving image, so applying it to the moving image gives the
same warped image as ddmr (``tests/test_io.py`` proves it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ddmr.errors import InputError
from ddmr.io.files import atomic_path, file_extension
from ddmr.io.images import (
    FIELD_STEP_MM,
    NIFTI_EXTENSIONS,
    _as_numpy,
    _check_readable,
    _check_writable,
    _quiet_nibabel,
    _write_nifti_volumes,
)
from ddmr.spatial.field import lps_matrix, lps_mm_components, lps_mm_to_displacement
from ddmr.spatial.grid import LPS_FLIP, Geometry, check_geometry

if TYPE_CHECKING:
    import SimpleITK as sitk  # noqa: N813
    import torch

PathLike = str | os.PathLike[str]


def save_displacement(path: PathLike, displacement_vox: np.ndarray | torch.Tensor,
                      geometry: Geometry, units: str = "voxels") -> None:
    """Write a ddmr voxel displacement as an ITK/ANTs displacement field (atomic).

    ``displacement_vox`` is (3, I, J, K) (or (1, 3, I, J, K)) in voxels of ``geometry``,
    channels (i, j, k), pull-back (``units="mm"``: the same field as RAS mm vectors).
    The file is a NIfTI vector image (I, J, K, 1, 3), intent 1007, holding LPS offsets
    in mm rounded to :data:`~ddmr.io.images.FIELD_STEP_MM`; see the module docstring.
    """
    array = _as_numpy(displacement_vox)
    if array.ndim == 5 and array.shape[0] == 1:
        array = array[0]
    if array.shape != (3, *geometry.shape):
        raise ValueError(
            f"displacement must be (3, {', '.join(map(str, geometry.shape))}), "
            f"got {tuple(array.shape)}"
        )
    path = Path(path)
    if file_extension(path) not in NIFTI_EXTENSIONS:
        raise InputError(f"{path}: displacement fields are written as .nii.gz or .nii")
    _check_writable(path)

    def vector_intent(header) -> None:
        header.set_intent("vector", (), "")

    with atomic_path(path) as temporary:  # one LPS component in memory at a time
        _write_nifti_volumes(temporary, (*geometry.shape, 1, 3),
                             _rounded_lps_components(array, geometry, units),
                             geometry, vector_intent)


def _rounded_lps_components(array: np.ndarray, geometry: Geometry, units: str
                            ) -> Iterator[np.ndarray]:
    """The LPS mm components of a field (3, I, J, K), each rounded to
    :data:`~ddmr.io.images.FIELD_STEP_MM`, one (I, J, K) array at a time (with the
    compiled kernels, made in Fortran order: written without a transposed copy)."""
    from ddmr.spatial import kernels

    if kernels.available() and array.dtype == np.float32:
        for row in lps_matrix(geometry, units):
            yield kernels.lps_component_f_order(array, row, FIELD_STEP_MM).T
        return
    yield from map(rounded_to_step, lps_mm_components(array, geometry, units))


def rounded_to_step(component: np.ndarray, step: float = FIELD_STEP_MM) -> np.ndarray:
    """``component`` (a new float32 array) rounded in place to ``step`` mm (a power of 2:
    :data:`FIELD_STEP_MM` for the ``.nii.gz`` fields, a finer one for the composite
    ``.h5`` files of :mod:`ddmr.io.composite`)."""
    component *= 1.0 / step
    np.rint(component, out=component)
    component *= step
    return component


def load_displacement(path: PathLike, units: str = "voxels") -> tuple[np.ndarray, Geometry]:
    """Read an ITK/ANTs displacement field: ``(displacement (3, I, J, K) float32 in voxels
    of the grid (``units="mm"``: RAS mm), Geometry)``, the inverse of
    :func:`save_displacement` (also reads fields that ANTs wrote, and .nrrd/.mha vector
    images)."""
    path = _check_readable(path)
    extension = file_extension(path)
    try:
        if extension in NIFTI_EXTENSIONS:
            import nibabel as nib

            with _quiet_nibabel():
                image = nib.load(str(path))
                data = np.asanyarray(image.dataobj)
            geometry = Geometry(np.asarray(image.affine, dtype=np.float64), data.shape[:3])
        else:
            import SimpleITK as sitk  # noqa: N813

            image = sitk.ReadImage(str(path))
            data = sitk.GetArrayFromImage(image)  # (K, J, I, 3)
            data = data.transpose(2, 1, 0, *range(3, data.ndim))
            geometry = Geometry.from_itk(image.GetOrigin(), image.GetSpacing(),
                                         image.GetDirection(), image.GetSize())
    except Exception as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{path}: cannot read displacement field: {detail}") from None
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim != 4 or data.shape[3] != 3:
        raise InputError(
            f"{path}: shape {tuple(data.shape)} is not a 3D displacement field (I, J, K, 1, 3)"
        )
    check_geometry(geometry, path)
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: displacement field contains NaN or Inf")
    return lps_mm_to_displacement(data, geometry, units), geometry


def _lps(matrix: np.ndarray) -> np.ndarray:
    flip = np.eye(4)
    flip[:3, :3] = LPS_FLIP
    return flip @ np.asarray(matrix, dtype=np.float64) @ flip


def itk_affine_parameters(point_map: np.ndarray) -> np.ndarray:
    """The (4, 4) RAS point map (fixed world -> moving world) as the 12 parameters of an
    ITK ``AffineTransform`` (float64): its LPS matrix row by row, then its translation;
    the fixed parameters (the centre) are 0, 0, 0. The one place that builds the affine
    that ``affine.mat`` and the composite ``.h5`` files hold."""
    lps = _lps(point_map)
    return np.concatenate([lps[:3, :3].ravel(), lps[:3, 3]])


def itk_affine(point_map: np.ndarray) -> sitk.AffineTransform:
    """The (4, 4) RAS point map as a SimpleITK affine transform (LPS, centre 0)."""
    import SimpleITK as sitk  # noqa: N813

    parameters = [float(v) for v in itk_affine_parameters(point_map)]
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(parameters[:9])
    transform.SetTranslation(parameters[9:])
    return transform


def save_affine(path: PathLike, point_map: np.ndarray) -> None:
    """Write a (4, 4) RAS point map (fixed world -> moving world, as ddmr's affine part)
    as an ITK affine transform file (``.mat``, the format ANTs writes; ``.txt``/``.tfm``
    text), atomically: ``antsApplyTransforms -t affine.mat`` and
    ``ants.apply_transforms(..., [affine.mat])`` apply it (LPS, centre 0)."""
    import SimpleITK as sitk  # noqa: N813

    transform = itk_affine(point_map)
    path = Path(path)
    with atomic_path(path) as temporary:
        sitk.WriteTransform(transform, str(temporary))


def load_affine(path: PathLike) -> np.ndarray:
    """Read an ITK affine transform file (``.mat``, ``.txt``, ``.tfm``; as ANTs writes
    them) -> the (4, 4) RAS point map (fixed world -> moving world)."""
    import SimpleITK as sitk  # noqa: N813

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        transform = sitk.ReadTransform(str(path))
        parameters = np.asarray(transform.GetParameters(), dtype=np.float64)
        centre = np.asarray(transform.GetFixedParameters(), dtype=np.float64)
        if transform.GetDimension() != 3 or parameters.size != 12 or centre.size != 3:
            raise ValueError(f"a {transform.GetName()} with {parameters.size} parameters is "
                             "not a 3D affine transform")
    except (RuntimeError, ValueError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{path}: cannot read an affine transform: {detail}") from None
    matrix, translation = parameters[:9].reshape(3, 3), parameters[9:]
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = centre + translation - matrix @ centre
    return _lps(lps)
