"""From the final field to the fixed image's native grid, in world coordinates.

For a native fixed voxel x with RAS world point ``p = A_f x``, the final field ``d`` (a
:class:`~ddmr.spatial.displacement.Displacement`, RAS mm on its own grid: the engine's or
the network's) is interpolated at ``p`` trilinearly (border values beyond its grid), and
the point of the moving image it shows is

    p' = P(p + d(p))

where ``P`` (4, 4) is the affine part (identity without one; ``d = 0`` without a field).
The native displacement is ``p' - p`` in RAS mm; the moving image (on its own grid) is
sampled at ``p'`` with linear interpolation, its labels label-exactly.

Everything runs in slabs of fixed slices, so memory stays a few times the size of one
volume. The affine parts are combined in float64 and applied in float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ddmr.spatial import kernels
from ddmr.spatial.displacement import Transform
from ddmr.spatial.field import SLAB_VOXELS
from ddmr.spatial.grid import Geometry, affine_volume, normalised
from ddmr.spatial.warp import (
    grid_sample_3d,
    label_cells,
    sample_image,
    sample_labels,
)


def _slabs(shape: tuple[int, int, int]) -> Iterator[slice]:
    step = max(1, SLAB_VOXELS // max(shape[1] * shape[2], 1))
    for start in range(0, shape[0], step):
        yield slice(start, min(start + step, shape[0]))


def _interpolation_matrix(position: np.ndarray, size: int) -> torch.Tensor:
    """(m, size) float32 weights of linear interpolation at ``position`` (m,) (indices,
    clamped to the grid: the border value beyond it)."""
    position = np.clip(np.asarray(position, dtype=np.float64), 0.0, size - 1)
    low = np.minimum(np.floor(position), max(size - 2, 0)).astype(np.int64)
    frac = position - low
    weights = np.zeros((position.size, size), dtype=np.float64)
    rows = np.arange(position.size)
    weights[rows, low] = 1.0 - frac
    weights[rows, np.minimum(low + 1, size - 1)] += frac
    return torch.from_numpy(weights.astype(np.float32))


def _field_on_slab(u: torch.Tensor, to_model: np.ndarray, rows: slice,
                   shape: tuple[int, int, int]) -> torch.Tensor:
    """A field ``u`` (1, 3, *its grid's shape) interpolated trilinearly (border values
    beyond its grid) at its grid's indices ``to_model @ x`` of the fixed voxels x of a
    slab: (3, rows, J, K). When ``to_model`` maps axis to axis (the field's grid and the
    fixed grid share their axes, the usual case) it is three small matrix products,
    otherwise ``grid_sample``."""
    linear = to_model[:3, :3]
    model_shape = tuple(u.shape[2:])
    if np.allclose(linear, np.diag(np.diag(linear)), atol=1e-9 * np.abs(linear).max()):
        along = [np.arange(rows.start, rows.stop), np.arange(shape[1]), np.arange(shape[2])]
        w = [_interpolation_matrix(linear[a, a] * along[a] + to_model[a, 3], model_shape[a])
             for a in range(3)]
        field = torch.einsum("id,cdhw->cihw", w[0], u[0])
        field = torch.einsum("jh,cihw->cijw", w[1], field)
        return torch.einsum("kw,cijw->cijk", w[2], field)
    q = affine_volume(to_model, shape, rows=rows)
    grid = normalised(q, model_shape)[None]
    return grid_sample_3d(u, grid)[0]


@dataclass
class NativeResult:
    """Outputs on the fixed image's grid: ``displacement_mm`` (3, I, J, K) float32 RAS mm
    (``p' - p``, the whole transform), ``warped`` (I, J, K) float32, ``warped_labels``
    (I, J, K) uint8 or None. The residual (the non-rigid part before the affine point
    map) follows from the displacement: :func:`ddmr.spatial.field.residual_of`."""

    displacement_mm: np.ndarray
    warped: np.ndarray
    warped_labels: np.ndarray | None


def to_native(transform: Transform, fixed: Geometry, moving: np.ndarray,
              moving_geometry: Geometry, moving_labels: np.ndarray | None = None
              ) -> NativeResult:
    """Bring the ``transform`` (its affine part ``P`` and the final field ``d``, or none)
    to the fixed grid and warp the moving image (and labels) there (see module
    docstring).

    Every map is affine in the fixed index x except for the field's term: ``p' - p = (P -
    I) A_f x + P_3 d``, moving index ``= M P A_f x + M_3 P_3 d`` (``M`` the moving grid's
    inverse affine); the (4, 4) products are formed in float64 and applied in float32
    (indices below 10^4 keep errors below 10^-3 voxel).
    """
    point, field = transform.point_map, transform.residual
    offset_map = point @ fixed.affine
    offset_map[:3, :] -= fixed.affine[:3, :]  # (P - I) A_f: displacement without the field
    to_moving_matrix = moving_geometry.matrix("world", "index")
    to_moving = to_moving_matrix @ point @ fixed.affine
    if field is not None:
        u = field.field_mm.detach().to("cpu", torch.float32)[None]
        to_field = field.grid.matrix("world", "index") @ fixed.affine
        field_to_world = torch.from_numpy(point[:3, :3].astype(np.float32))
        field_to_moving = torch.from_numpy((to_moving_matrix[:3, :3] @ point[:3, :3])
                                           .astype(np.float32))
    image = torch.from_numpy(np.ascontiguousarray(moving, dtype=np.float32))[None, None]
    labels = values = cells = None
    if moving_labels is not None:
        labels = torch.from_numpy(np.ascontiguousarray(moving_labels))[None, None]
        values = torch.nonzero(torch.bincount(labels.reshape(-1)))[:, 0].tolist()
        cells = label_cells(labels)  # background competes too, as any label
    shape = fixed.shape
    out_disp = np.empty((3, *shape), dtype=np.float32)
    out_warped = np.empty(shape, dtype=np.float32)
    out_labels = np.zeros(shape, dtype=np.uint8) if labels is not None else None
    compiled = kernels.available()
    if compiled:  # the field and its maps as the kernel takes them (None: no field)
        kernel_field = ((u[0].numpy(), to_field, field_to_world.numpy(),
                         field_to_moving.numpy()) if field is not None else (None,) * 4)
    for sl in _slabs(shape):
        if compiled:  # one fused pass: the same maps and samples
            field_values, to_values, values_to_world, values_to_moving = kernel_field
            moving_index = torch.from_numpy(kernels.native_rows(
                field_values, to_values, offset_map, values_to_world, to_moving,
                values_to_moving, image[0, 0].numpy(), sl, out_disp, out_warped))
        else:
            disp = affine_volume(offset_map, shape, rows=sl)
            moving_index = affine_volume(to_moving, shape, rows=sl)
            if field is not None:
                d = _field_on_slab(u, to_field, sl, shape)  # (3, s, J, K) mm
                disp += torch.einsum("ab,bijk->aijk", field_to_world, d)
                moving_index += torch.einsum("ab,bijk->aijk", field_to_moving, d)
            out_disp[:, sl] = disp.numpy()
            out_warped[sl] = sample_image(image, moving_index).numpy()
        if labels is not None:
            points = moving_index.reshape(3, -1)
            out_labels[sl] = sample_labels(labels, points, values, cells).numpy().reshape(
                moving_index.shape[1:])
    return NativeResult(out_disp, out_warped, out_labels)


def seen_by_moving(displacement_mm: np.ndarray, fixed_geometry: Geometry,
                   moving_geometry: Geometry) -> np.ndarray:
    """(I, J, K) bool on the fixed grid: the voxels whose moving point ``p + u(p)``
    (``displacement_mm`` (3, I, J, K), RAS mm) lies within half a voxel of the moving grid:
    where the moving image has data."""
    from_world = moving_geometry.matrix("world", "index")
    return inside_grid(from_world @ fixed_geometry.affine, fixed_geometry.shape,
                       moving_geometry.shape, displacement_mm, from_world[:3, :3])


def inside_grid(to_voxels: np.ndarray, shape: tuple[int, int, int],
                target_shape: tuple[int, int, int],
                displacement_mm: np.ndarray | None = None,
                mm_to_voxels: np.ndarray | None = None) -> np.ndarray:
    """(*shape) bool: the voxels x of a grid whose target voxel coordinates
    ``to_voxels @ (x, 1)`` ((3, 4) or (4, 4)), plus ``mm_to_voxels @ u(x)`` for a
    displacement ``u`` (3, *shape) mm where given, lie within half a voxel of a grid of
    ``target_shape``. Slab by slab, one axis at a time (no volume of coordinates)."""
    limit = np.asarray(target_shape, dtype=np.float64) - 0.5
    out = np.empty(shape, dtype=bool)
    j, k = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    for slab in _slabs(shape):
        i = np.arange(shape[0])[slab][:, None, None]
        inside = np.ones((len(i), *shape[1:]), dtype=bool)
        for axis in range(3):
            row = to_voxels[axis]
            where = row[0] * i + row[1] * j + row[2] * k + row[3]
            if displacement_mm is not None:
                for c in range(3):
                    where = where + mm_to_voxels[axis, c] * displacement_mm[c, slab]
            inside &= (where >= -0.5) & (where <= limit[axis])
        out[slab] = inside
    return out
