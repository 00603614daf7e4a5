"""From the network's field to the fixed image's native grid, in world coordinates.

For a native fixed voxel x with RAS world point ``p = A_f x``, its index on the network's
grid is ``q = A_m^-1 p``; the network's pull-back displacement ``u`` (voxels of the
network's grid) is interpolated there trilinearly (piecewise linear resampling, constant
beyond the grid's border), and the point of the moving image it shows is

    p' = P(A_m (q + u(q))) = P(p + A_m[:3, :3] u(q))

where ``P`` (4, 4) is an optional affine pre-alignment (identity without one). The
native displacement is ``p' - p`` in RAS mm; the moving image (on its own grid) is
sampled at ``p'`` with linear interpolation, its labels label-exactly.

Everything runs in slabs of fixed slices, so memory stays a few times the size of one
volume. The affine parts are combined in float64 and applied in float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ddmr.spatial.field import SLAB_VOXELS
from ddmr.spatial.grid import Geometry, normalised
from ddmr.spatial.warp import (
    affine_volume,
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
    """The network's field ``u`` (1, 3, *model shape) interpolated trilinearly (border
    values beyond the grid) at the model-grid indices ``to_model @ x`` of the fixed voxels
    x of a slab: (3, rows, J, K). When ``to_model`` maps axis to axis (the model grid
    and the fixed grid share their axes, the usual case) it is three small matrix
    products, otherwise ``grid_sample``."""
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
    map) follows from the displacement: :func:`residual_of`."""

    displacement_mm: np.ndarray
    warped: np.ndarray
    warped_labels: np.ndarray | None


def residual_of(displacement_mm: np.ndarray, geometry: Geometry, point_map: np.ndarray
                ) -> np.ndarray:
    """``d`` (3, I, J, K) float32 RAS mm with ``p' = P(p + d(p))``, ``p' = p +
    displacement_mm`` at the points p of ``geometry`` and ``P`` the affine point map
    (4, 4): ``d = P^-1(p') - p = L disp + (L - I) p + t`` (``P^-1 = (L, t)``), in slabs,
    in float64 (made after the inverse, so that it is not held at the process's peak)."""
    inverse = np.linalg.inv(np.asarray(point_map, dtype=np.float64))
    linear, offset = inverse[:3, :3], inverse[:3, 3]
    to_residual = (linear - np.eye(3)) @ geometry.affine[:3, :3]
    base = (linear - np.eye(3)) @ geometry.affine[:3, 3] + offset
    shape = geometry.shape
    out = np.empty((3, *shape), dtype=np.float32)
    for sl in _slabs(shape):
        index = np.ix_(np.arange(sl.start, sl.stop, dtype=np.float64),
                       np.arange(shape[1], dtype=np.float64),
                       np.arange(shape[2], dtype=np.float64))
        block = displacement_mm[:, sl]
        for a in range(3):
            out[a, sl] = (linear[a, 0] * block[0] + linear[a, 1] * block[1]
                          + linear[a, 2] * block[2] + to_residual[a, 0] * index[0]
                          + to_residual[a, 1] * index[1] + to_residual[a, 2] * index[2]
                          + base[a])
    return out


def to_native(displacement: torch.Tensor, model_grid: Geometry, fixed: Geometry,
              moving: np.ndarray, moving_geometry: Geometry,
              moving_labels: np.ndarray | None = None,
              point_map: np.ndarray | None = None) -> NativeResult:
    """Bring the network's field (1, 3, *model_grid.shape), voxels of ``model_grid``, to
    the fixed grid and warp the moving image (and labels) there (see module docstring).
    ``point_map`` (4, 4) RAS: the affine pre-alignment, fixed world -> moving world.

    Every map is affine in the fixed index x except for the network's term ``d = A_m u``:
    ``q = Q x``, ``p' - p = (P - I) A_f x + P_3 d``, moving index ``= M P A_f x + M_3 P_3 d``
    (``M`` the moving grid's inverse affine); the (4, 4) products are formed in float64
    and applied in float32 (indices below 10^4 keep errors below 10^-3 voxel).
    """
    u = displacement.detach().to("cpu", torch.float32)
    point = np.eye(4) if point_map is None else np.asarray(point_map, dtype=np.float64)
    to_model = model_grid.matrix("world", "index") @ fixed.affine
    net_to_world = torch.from_numpy((point[:3, :3] @ model_grid.affine[:3, :3])
                                    .astype(np.float32))
    offset_map = point @ fixed.affine
    offset_map[:3, :] -= fixed.affine[:3, :]  # (P - I) A_f: displacement without the net
    to_moving_matrix = moving_geometry.matrix("world", "index")
    to_moving = to_moving_matrix @ point @ fixed.affine
    net_to_moving = torch.from_numpy((to_moving_matrix[:3, :3] @ point[:3, :3]
                                      @ model_grid.affine[:3, :3]).astype(np.float32))
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
    for sl in _slabs(shape):
        uq = _field_on_slab(u, to_model, sl, shape)  # (3, s, J, K) model-grid voxels
        disp = affine_volume(offset_map, shape, rows=sl) + torch.einsum(
            "ab,bijk->aijk", net_to_world, uq)
        out_disp[:, sl] = disp.numpy()
        moving_index = affine_volume(to_moving, shape, rows=sl) + torch.einsum(
            "ab,bijk->aijk", net_to_moving, uq)
        out_warped[sl] = sample_image(image, moving_index).numpy()
        if labels is not None:
            points = moving_index.reshape(3, -1)
            out_labels[sl] = sample_labels(labels, points, values, cells).numpy().reshape(
                moving_index.shape[1:])
    return NativeResult(out_disp, out_warped, out_labels)
