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
import torch.nn.functional as F

from ddmr.io import Geometry

#: Fixed-grid voxels handled per slab.
SLAB_VOXELS = 1 << 21


def _slabs(shape: tuple[int, int, int]) -> Iterator[slice]:
    step = max(1, SLAB_VOXELS // max(shape[1] * shape[2], 1))
    for start in range(0, shape[0], step):
        yield slice(start, min(start + step, shape[0]))


def _slab_indices(sl: slice, shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel indices (n, 3) float64 of the slab ``sl`` (first axis) of a grid."""
    i, j, k = np.meshgrid(np.arange(sl.start, sl.stop), np.arange(shape[1]),
                          np.arange(shape[2]), indexing="ij")
    return np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(np.float64)


def sample(volume: torch.Tensor, index: torch.Tensor, mode: str = "bilinear",
           padding: str = "zeros") -> torch.Tensor:
    """Sample ``volume`` (1, C, D, H, W) at voxel indices ``index`` (n, 3) (D, H, W
    order) -> (C, n). ``mode``/``padding`` as :func:`torch.nn.functional.grid_sample`."""
    shape = volume.shape[2:]
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], dtype=index.dtype,
                         device=index.device)
    grid = (index * scale - 1.0).flip(-1).view(1, -1, 1, 1, 3).to(volume.dtype)
    out = F.grid_sample(volume, grid, mode=mode, padding_mode=padding, align_corners=True)
    return out.view(volume.shape[1], -1)


def inside(index: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(n,) bool: indices (n, 3) within half a voxel of the grid (as ITK decides what is
    inside an image)."""
    upper = torch.tensor(shape, dtype=index.dtype, device=index.device) - 0.5
    return ((index >= -0.5) & (index <= upper)).all(dim=1)


def sample_image(image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``image`` (1, 1, D, H, W) at indices (n, 3) -> (n,); edge
    values are replicated up to half a voxel beyond the grid, 0 further out (ITK/ANTs'
    linear interpolator with default value 0)."""
    values = sample(image, index, "bilinear", "border")[0]
    return torch.where(inside(index, tuple(image.shape[2:])), values, torch.zeros_like(values))


def sample_labels(labels: torch.Tensor, index: torch.Tensor,
                  values: list[int]) -> torch.Tensor:
    """Label-exact interpolation of ``labels`` (1, 1, D, H, W) uint8 at indices (n, 3):
    each label of ``values`` (include 0: background competes like any label) has its
    indicator interpolated trilinearly and the label of largest weight wins (ties: the
    first in ``values``; 0 outside the grid). Returns (n,) uint8.

    The eight neighbours and their weights are found once; points whose neighbours all
    carry one label take it directly, and only the others (near label boundaries) go
    through the comparison per label.
    """
    volume = labels[0, 0]
    flat = volume.reshape(-1)
    size = volume.shape
    top = torch.tensor(size, device=index.device, dtype=index.dtype) - 1
    clamped = torch.minimum(torch.clamp(index, min=0.0), top)
    low = torch.minimum(torch.floor(clamped), (top - 1).clamp(min=0)).long()
    frac = (clamped - low.to(index.dtype)).to(torch.float32)
    corners, weights = [], []
    for corner in range(8):
        step = [(corner >> 2) & 1, (corner >> 1) & 1, corner & 1]
        at = [torch.clamp(low[:, a] + step[a], max=size[a] - 1) for a in range(3)]
        corners.append(flat[(at[0] * size[1] + at[1]) * size[2] + at[2]])
        weights.append(torch.ones_like(frac[:, 0]))
        for a in range(3):
            weights[-1] = weights[-1] * (frac[:, a] if step[a] else 1.0 - frac[:, a])
    corner_labels = torch.stack(corners, dim=1)  # (n, 8)
    best = corner_labels[:, 0].clone()
    mixed = torch.nonzero((corner_labels != best[:, None]).any(dim=1)).squeeze(1)
    if mixed.numel():
        mixed_labels = corner_labels[mixed]
        mixed_weights = torch.stack(weights, dim=1)[mixed]
        best_score = torch.zeros(mixed.numel(), dtype=torch.float32, device=index.device)
        winner = torch.zeros(mixed.numel(), dtype=labels.dtype, device=index.device)
        for value in values:
            score = (mixed_weights * (mixed_labels == value)).sum(dim=1)
            better = score > best_score
            best_score = torch.where(better, score, best_score)
            winner = torch.where(better, torch.full_like(winner, value), winner)
        best[mixed] = winner
    return torch.where(inside(index, tuple(size)), best, torch.zeros_like(best))


@dataclass
class NativeResult:
    """Outputs on the fixed image's grid: ``displacement_mm`` (3, I, J, K) float32 RAS mm
    (``p' - p``), ``warped`` (I, J, K) float32, ``warped_labels`` (I, J, K) uint8 or None."""

    displacement_mm: np.ndarray
    warped: np.ndarray
    warped_labels: np.ndarray | None


def _affine_parts(matrix: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 3) linear part (transposed, for ``points @ M``) and (3,) offset, float32."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return (torch.from_numpy(matrix[:3, :3].T.astype(np.float32)),
            torch.from_numpy(matrix[:3, 3].astype(np.float32)))


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
    to_model = _affine_parts(np.linalg.inv(model_grid.affine) @ fixed.affine)
    net_to_world = torch.from_numpy((point[:3, :3] @ model_grid.affine[:3, :3]).T
                                    .astype(np.float32))
    offset_map = point @ fixed.affine
    offset_map[:3, :] -= fixed.affine[:3, :]  # (P - I) A_f: displacement without the net
    base_displacement = _affine_parts(offset_map)
    to_moving_matrix = np.linalg.inv(moving_geometry.affine)
    to_moving = _affine_parts(to_moving_matrix @ point @ fixed.affine)
    net_to_moving = torch.from_numpy((to_moving_matrix[:3, :3] @ point[:3, :3]
                                      @ model_grid.affine[:3, :3]).T.astype(np.float32))
    image = torch.from_numpy(np.ascontiguousarray(moving, dtype=np.float32))[None, None]
    labels = values = None
    if moving_labels is not None:
        labels = torch.from_numpy(np.ascontiguousarray(moving_labels))[None, None]
        values = [int(v) for v in np.unique(moving_labels)]  # background competes too
    shape = fixed.shape
    out_disp = np.empty((3, *shape), dtype=np.float32)
    out_warped = np.empty(shape, dtype=np.float32)
    out_labels = np.zeros(shape, dtype=np.uint8) if labels is not None else None
    for sl in _slabs(shape):
        index = torch.from_numpy(_slab_indices(sl, shape).astype(np.float32))
        q = index @ to_model[0] + to_model[1]
        uq = sample(u, q, "bilinear", "border").T  # (n, 3) voxels of the model grid
        slab_shape = (sl.stop - sl.start, shape[1], shape[2])
        disp = index @ base_displacement[0] + base_displacement[1] + uq @ net_to_world
        out_disp[:, sl] = disp.T.reshape(3, *slab_shape).numpy()
        moving_index = index @ to_moving[0] + to_moving[1] + uq @ net_to_moving
        out_warped[sl] = sample_image(image, moving_index).numpy().reshape(slab_shape)
        if labels is not None:
            out_labels[sl] = sample_labels(labels, moving_index, values).numpy().reshape(
                slab_shape)
    return NativeResult(out_disp, out_warped, out_labels)


def mm_to_voxels(displacement_mm: np.ndarray, geometry: Geometry) -> np.ndarray:
    """RAS mm displacement (3, I, J, K) -> voxels of ``geometry`` (3, I, J, K) float32."""
    inverse = np.linalg.inv(geometry.affine[:3, :3])
    return np.einsum("ab,bijk->aijk", inverse, displacement_mm).astype(np.float32)


def jacobian_determinant(displacement_mm: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Determinant (I, J, K) of the Jacobian of ``p -> p + d(p)`` in physical space, for a
    RAS mm displacement (3, I, J, K) on ``geometry``. It equals the determinant of the
    voxel-space Jacobian (``det(A^-1 J A) = det J``), computed by
    :func:`ddmr.nn.fields.jacobian_determinant` in slabs of slices (each with one slice of
    overlap on either side, so the finite differences are those of the whole volume)."""
    from ddmr.nn.fields import jacobian_determinant as voxel_jacobian

    voxels = mm_to_voxels(displacement_mm, geometry)
    depth = voxels.shape[1]
    out = np.empty(voxels.shape[1:], dtype=np.float32)
    step = max(1, SLAB_VOXELS // max(voxels.shape[2] * voxels.shape[3], 1))
    for start in range(0, depth, step):
        stop = min(start + step, depth)
        low, high = max(start - 1, 0), min(stop + 1, depth)
        if high - low < 2:  # a single slice: no neighbours to differentiate along i
            low, high = max(low - 1, 0), min(high + 1, depth)
        block = torch.from_numpy(np.ascontiguousarray(voxels[:, low:high]))[None]
        out[start:stop] = voxel_jacobian(block)[0, 0, start - low:stop - low].numpy()
    return out
