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

The files are written with h5py in the layout that ITK's ``HDF5TransformIO`` writes and
reads (``/TransformGroup/0`` the composite, ``/1`` the affine, ``/2`` the field, each with
``TransformType``, ``TransformFixedParameters``, ``TransformParameters``; ``/ITKVersion``,
``/HDFVersion``, ``/OSName``, ``/OSVersion``), with the field stored compactly: float32
values (ITK reads a float dataset into its double transform), rounded as the ``.nii.gz``
fields are but to a finer step (:data:`STEP_MM`), in chunks of whole k-slices through
HDF5's own shuffle and deflate filters, which every HDF5 library has.
(SimpleITK's ``WriteTransform`` stores it as uncompressed float64, about four times
larger, from a float64 copy of the whole field.) Each chunk is built, shuffled and
deflated here (isal, which releases the GIL) on its own, so no copy of the field is held;
``benchmarks/bench_composite_write.py`` measures both writers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ddmr.errors import InputError
from ddmr.io.fields import itk_affine_parameters, rounded_to_step
from ddmr.io.files import atomic_path
from ddmr.io.images import FIELD_STEP_MM
from ddmr.spatial.grid import LPS_FLIP, Geometry

if TYPE_CHECKING:
    import SimpleITK as sitk  # noqa: N813

PathLike = str | os.PathLike[str]

#: The field's chunks hold whole k-slices, about this many values each (4 MiB of float32)
#: and at least one slice: enough for deflate, little memory for each chunk built.
CHUNK_VALUES = 1 << 20

#: Deflate level of the field's chunks (isal's levels 0-3): 1 is as small as 2 and 3 on
#: these fields and the fastest; 0 is a fifth larger.
DEFLATE_LEVEL = 1

#: The composite's field is rounded to this step in mm (as the ``.nii.gz`` fields are to
#: :data:`~ddmr.io.images.FIELD_STEP_MM`, a finer one: at most 0.00012 mm off, so that ANTs
#: and SimpleITK warp with the file as DDMR does, within 1e-4 of the image's range even
#: at sharp edges, where the 0.0005 mm of FIELD_STEP_MM can be 1.2e-4).
STEP_MM = FIELD_STEP_MM / 4

#: The ITK release whose HDF5 transform layout this is (ITK writes its own version into
#: ``/ITKVersion`` and reads it nowhere).
ITK_LAYOUT_VERSION = "5.4"


def write_composite(path: PathLike, point_map: np.ndarray, residual_mm: np.ndarray,
                    geometry: Geometry) -> None:
    """Write the whole transform ``p -> P(p + d(p))`` as one ITK composite (``.h5``),
    atomically: ``point_map`` ``P`` (4, 4) RAS, fixed world -> moving world; ``residual_mm``
    ``d`` (3, I, J, K) RAS mm on the fixed grid ``geometry``."""
    _write(path, point_map, residual_mm, geometry)


def write_inverse_composite(path: PathLike, point_map: np.ndarray, inverse_mm: np.ndarray,
                            moving_geometry: Geometry) -> None:
    """Write the inverse transform (moving points to fixed points: it warps the fixed
    image onto the moving grid) as one ITK composite (``.h5``), atomically: ``q ->
    P^-1(q + r(q))`` with ``r = P(q + inverse_mm(q)) - q`` on ``moving_geometry``, which
    is ``q + inverse_mm(q)`` there (module docstring). ``point_map`` ``P`` (4, 4) RAS, fixed
    world -> moving world; ``inverse_mm`` (3, I, J, K) RAS mm on ``moving_geometry``."""
    from ddmr.spatial import kernels
    from ddmr.spatial.field import residual_of, residual_parts

    inverse_map = np.linalg.inv(np.asarray(point_map, dtype=np.float64))
    if kernels.available() and inverse_mm.dtype == np.float32:  # r made chunk by chunk
        _write(path, inverse_map, inverse_mm, moving_geometry,
               residual_parts(moving_geometry, inverse_map))
        return
    _write(path, inverse_map, residual_of(inverse_mm, moving_geometry, inverse_map),
           moving_geometry)


def _write(path: PathLike, point_map: np.ndarray, field_mm: np.ndarray,
           geometry: Geometry, maps: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """The composite [``point_map``, ``field_mm`` on ``geometry``] (RAS, as
    :func:`write_composite` takes them) to ``path``, atomically; with ``maps`` (linear
    (3, 3), position (3, 4); compiled kernels only) the field written is ``linear @
    field_mm + position @ (x, 1)``, made as the chunks are."""
    import platform

    import h5py

    path = Path(path)
    if path.suffix.lower() not in (".h5", ".hdf5"):
        raise InputError(f"{path}: composite transforms are written as .h5")
    if tuple(np.shape(field_mm)) != (3, *geometry.shape):
        raise ValueError(f"field must be (3, {', '.join(map(str, geometry.shape))}), "
                         f"got {tuple(np.shape(field_mm))}")
    origin, spacing, direction = geometry.to_itk()
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as h5:
        _string(h5, "ITKVersion", ITK_LAYOUT_VERSION)
        _string(h5, "HDFVersion", f"HDF5 library version: {h5py.version.hdf5_version}")
        _string(h5, "OSName", platform.system())
        _string(h5, "OSVersion", platform.release())
        queue = h5.create_group("TransformGroup")
        _string(queue.create_group("0"), "TransformType", "CompositeTransform_double_3_3")
        affine = queue.create_group("1")  # the queue's first: a point goes through it last
        _string(affine, "TransformType", "AffineTransform_double_3_3")
        _parameters(affine, "TransformFixedParameters", np.zeros(3))  # the centre
        _parameters(affine, "TransformParameters", itk_affine_parameters(point_map))
        field = queue.create_group("2")
        _string(field, "TransformType", "DisplacementFieldTransform_double_3_3")
        _parameters(field, "TransformFixedParameters",
                    np.array([*geometry.shape, *origin, *spacing, *direction]))
        _write_field(field, field_mm, geometry, maps)


def _string(group, name: str, value: str) -> None:
    """A (1,) variable-length ASCII string dataset, as ITK writes (and reads) them."""
    import h5py

    group.create_dataset(name, data=np.array([value.encode("ascii", "replace")],
                                             dtype=h5py.string_dtype("ascii")))


def _parameters(group, name: str, values: np.ndarray) -> None:
    group.create_dataset(name, data=np.asarray(values, dtype=np.float64))


def _write_field(group, field_mm: np.ndarray, geometry: Geometry,
                 maps: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """The ``TransformParameters`` of a displacement field transform: its LPS mm vectors
    in ITK's pixel order (the three components fastest, then i, j, k) as float32 rounded
    to :data:`STEP_MM`, in chunks of whole k-slices, each built, shuffled and deflated
    here (the bytes that HDF5's shuffle and deflate filters undo) and written as it is:
    one chunk in memory at a time. ``maps``: as :func:`_write`."""
    from isal import isal_zlib

    size_i, size_j, size_k = geometry.shape
    per_slice = 3 * size_i * size_j
    slices = max(1, min(size_k, CHUNK_VALUES // per_slice))
    dataset = group.create_dataset("TransformParameters", shape=(per_slice * size_k,),
                                   dtype=np.float32, chunks=(per_slice * slices,),
                                   shuffle=True, compression="gzip",
                                   compression_opts=DEFLATE_LEVEL)
    from ddmr.spatial import kernels

    signs = np.diag(LPS_FLIP)  # RAS mm -> LPS mm
    planes = np.empty((4, per_slice * slices), dtype=np.uint8)  # byte b of every value
    if kernels.available() and field_mm.dtype == np.float32:  # one pass per chunk
        linear, position = maps or (np.eye(3), np.zeros((3, 4)))
        for start in range(0, size_k, slices):
            kernels.itk_chunk_shuffled(field_mm, linear, position, signs, STEP_MM,
                                       slice(start, min(start + slices, size_k)), planes)
            dataset.id.write_direct_chunk((start * per_slice,),
                                          isal_zlib.compress(planes, DEFLATE_LEVEL))
        return
    if maps is not None:
        raise ValueError("maps are applied by the compiled kernels only")
    slab = np.empty((slices, size_j, size_i, 3), dtype=np.float32)  # (k, j, i, component)
    block = np.empty((size_i, size_j, slices), dtype=np.float32)
    for start in range(0, size_k, slices):
        count = min(slices, size_k - start)
        for axis in range(3):  # gathered first, then transposed: twice as fast as at once
            np.copyto(block[..., :count], field_mm[axis, :, :, start:start + count],
                      casting="same_kind")
            np.multiply(block[..., :count].T, signs[axis], out=slab[:count, ..., axis])
        slab[count:] = 0  # HDF5 stores the last chunk whole; its tail is never read
        rounded_to_step(slab, STEP_MM)
        np.copyto(planes, slab.view(np.uint8).reshape(-1, 4).T)
        dataset.id.write_direct_chunk((start * per_slice,),
                                      isal_zlib.compress(planes, DEFLATE_LEVEL))


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
