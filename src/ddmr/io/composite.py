"""ITK composite transform files (HDF5, ``.h5``): a registration as the one file that
``antsApplyTransforms``, ``ants.apply_transforms`` and SimpleITK take, and any ITK/ANTs
transform file as a dense displacement for ``ddmr apply``.

An ITK transform maps points of the fixed (output) space to the moving space; an image is
pulled through it. A composite holds a queue of transforms and sends a point through the
last one first (``sitk.CompositeTransform([A, B])`` is ``x -> A(B(x))``), and ANTs' list
of files is the queue in the same order: ANTs' ``Composite.h5`` holds [affine, field]
and is its ``[field.nii.gz, affine.mat]``.

* ``transform.h5`` (:func:`write_composite`): the queue [``P``, ``d``], so a fixed point
  ``p`` goes to ``P(p + d(p))``: the affine part ``P`` (as ``affine.mat``) and the
  residual field ``d`` on the fixed grid (as ``residual_displacement.nii.gz``), i.e. ANTs'
  ``[residual_displacement.nii.gz, affine.mat]``.
* ``inverse_transform.h5`` (:func:`write_inverse_composite`): the queue [``P^-1``,
  ``r``] with ``r`` on the moving grid, so a moving point ``q`` goes to ``P^-1(q +
  r(q))``, which is ``q + inverse(q)`` (``inverse_displacement.nii.gz``) on the moving
  grid, and ``P^-1`` beyond it, where a field alone would leave points where they are.
  (ANTs' ``InverseComposite.h5`` is [field, ``P^-1``] with its field on the fixed grid;
  ``r`` on the moving grid follows from DDMR's inverse exactly, without resampling it.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ddmr.errors import InputError
from ddmr.io.files import atomic_path
from ddmr.spatial.grid import LPS_FLIP, Geometry

if TYPE_CHECKING:
    import SimpleITK as sitk  # noqa: N813

PathLike = str | os.PathLike[str]


def write_composite(path: PathLike, point_map: np.ndarray, residual_mm: np.ndarray,
                    geometry: Geometry) -> None:
    """Write the whole transform ``p -> P(p + d(p))`` as one ITK composite (``.h5``),
    atomically: ``point_map`` ``P`` (4, 4) RAS, fixed world -> moving world; ``residual_mm``
    ``d`` (3, I, J, K) RAS mm on the fixed grid ``geometry``."""
    import SimpleITK as sitk  # noqa: N813

    _write(path, sitk.CompositeTransform([itk_affine(point_map),
                                          itk_field(residual_mm, geometry)]))


def write_inverse_composite(path: PathLike, point_map: np.ndarray, inverse_mm: np.ndarray,
                            moving_geometry: Geometry) -> None:
    """Write the inverse transform (moving points to fixed points: it warps the fixed
    image onto the moving grid) as one ITK composite (``.h5``), atomically: ``q ->
    P^-1(q + r(q))`` with ``r = P(q + inverse_mm(q)) - q`` on ``moving_geometry``, which
    is ``q + inverse_mm(q)`` there (module docstring). ``point_map`` ``P`` (4, 4) RAS, fixed
    world -> moving world; ``inverse_mm`` (3, I, J, K) RAS mm on ``moving_geometry``."""
    import SimpleITK as sitk  # noqa: N813

    from ddmr.registration.native import residual_of

    inverse_map = np.linalg.inv(np.asarray(point_map, dtype=np.float64))
    residual = residual_of(inverse_mm, moving_geometry, inverse_map)
    _write(path, sitk.CompositeTransform([itk_affine(inverse_map),
                                          itk_field(residual, moving_geometry)]))


def itk_affine(point_map: np.ndarray) -> sitk.AffineTransform:
    """The (4, 4) RAS point map as an ITK affine transform (LPS, centre 0)."""
    import SimpleITK as sitk  # noqa: N813

    flip = np.eye(4)
    flip[:3, :3] = LPS_FLIP
    lps = flip @ np.asarray(point_map, dtype=np.float64) @ flip
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(float(v) for v in lps[:3, :3].ravel()))
    transform.SetTranslation(tuple(float(v) for v in lps[:3, 3]))
    return transform


def itk_field(field_mm: np.ndarray, geometry: Geometry) -> sitk.DisplacementFieldTransform:
    """A displacement field (3, I, J, K) RAS mm on ``geometry`` as an ITK displacement
    field transform (LPS mm; a point beyond the grid does not move)."""
    import SimpleITK as sitk  # noqa: N813

    from ddmr.spatial.field import lps_mm_components

    vectors = np.empty((*geometry.shape[::-1], 3), dtype=np.float64)  # (K, J, I, 3)
    for axis, component in enumerate(lps_mm_components(field_mm, geometry, units="mm")):
        vectors[..., axis] = component.T
    image = sitk.GetImageFromArray(vectors, isVector=True)
    del vectors
    origin, spacing, direction = geometry.to_itk()
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return sitk.DisplacementFieldTransform(image)


def _write(path: PathLike, transform: sitk.Transform) -> None:
    import SimpleITK as sitk  # noqa: N813

    path = Path(path)
    if path.suffix.lower() not in (".h5", ".hdf5"):
        raise InputError(f"{path}: composite transforms are written as .h5")
    with atomic_path(path) as temporary:
        sitk.WriteTransform(transform, str(temporary))


def read_transform(path: PathLike) -> sitk.Transform:
    """An ITK/ANTs transform file (``.h5`` composite, ``.mat``, ``.txt``, ``.tfm``) as a
    SimpleITK transform (fixed points -> moving points, LPS); :class:`InputError` naming
    ``path`` when it is missing, unreadable or not 3D."""
    import SimpleITK as sitk  # noqa: N813

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if "ITK ERROR" in line]
        detail = lines[0].split("): ", 1)[-1] if lines else type(error).__name__
        if "Could not create Transform IO object" in detail:
            detail = ("not a transform file that ITK can read (HDF5 .h5, .mat, .txt, "
                      ".tfm; for a displacement field, pass its ddmr register folder)")
        raise InputError(f"{path}: cannot read an ITK transform file: {detail}") from None
    if transform.GetDimension() != 3:
        raise InputError(f"{path}: a {transform.GetDimension()}D transform, expected 3D")
    return transform


def displacement_on(transform: sitk.Transform, reference: Geometry) -> np.ndarray:
    """The transform as a dense displacement (3, I, J, K) float32, RAS mm, on the grid
    ``reference``: a point p of it goes to ``p + field(p)``."""
    import SimpleITK as sitk  # noqa: N813

    origin, spacing, direction = reference.to_itk()
    image = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64,
                                              reference.shape, origin, spacing, direction)
    vectors = sitk.GetArrayViewFromImage(image)  # (K, J, I, 3), LPS
    out = np.empty((3, *reference.shape), dtype=np.float32)
    for axis, sign in enumerate(np.diag(LPS_FLIP)):
        out[axis] = sign * vectors[..., axis].T
    return out


def transform_points(transform: sitk.Transform, points_ras: np.ndarray) -> np.ndarray:
    """World points (n, 3, RAS mm) sent through the transform, as
    ``ants.apply_transforms_to_points`` does: fixed-space points to the moving space."""
    lps = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3) @ LPS_FLIP
    moved = np.array([transform.TransformPoint(tuple(float(v) for v in point))
                      for point in lps], dtype=np.float64).reshape(-1, 3)
    return moved @ LPS_FLIP
