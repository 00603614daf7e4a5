"""Warping images and label maps with a dense displacement field.

A displacement ``u`` (B, 3, D, H, W) in voxels pulls back: ``warped(x) = moving(x + u(x))``
(the convention of :mod:`ddmr.spatial.field`). Points that fall outside the moving image
take ``padding`` values. Labels are warped label-exactly: each label's indicator is
interpolated and the largest weight wins (:func:`warp_labels`, :func:`sample_labels`).
:func:`sample_image` and :func:`sample_labels` take voxel indices of arbitrary points
(the world-space resampling of :mod:`ddmr.registration.native`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F

# the grid's points under an affine live in grid.py; engine, native and displacement
# import them from here too
from ddmr.spatial.grid import affine_volume as affine_volume
from ddmr.spatial.grid import normalised, sampling_scale

Padding = Literal["zeros", "border", "reflection"]


@lru_cache(maxsize=4)
def _normalised_identity(shape: tuple[int, int, int], device: str, dtype: torch.dtype
                         ) -> torch.Tensor:
    """(1, D, H, W, 3) ``grid_sample`` coordinates of the grid's own voxels, (W, H, D)."""
    axes = [torch.arange(n, dtype=dtype, device=device) * scale - 1.0
            for n, scale in zip(shape, sampling_scale(shape), strict=True)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1).unsqueeze(0)


def sampling_grid(displacement: torch.Tensor) -> torch.Tensor:
    """Turn a voxel displacement (B, 3, D, H, W) into a ``grid_sample`` grid (B, D, H, W, 3).

    The grid is normalised for ``align_corners=True`` and its last axis is in (W, H, D)
    order, as ``grid_sample`` expects.
    """
    if displacement.ndim != 5 or displacement.shape[1] != 3:
        raise ValueError(f"displacement must be (B, 3, D, H, W), got {tuple(displacement.shape)}")
    shape = tuple(int(n) for n in displacement.shape[2:])
    scale = torch.tensor(sampling_scale(shape[::-1]), device=displacement.device,
                         dtype=displacement.dtype)
    base = _normalised_identity(shape, str(displacement.device), displacement.dtype)
    # one pass: identity + scaled displacement, read channel-last in (W, H, D) order
    return torch.addcmul(base, displacement.permute(0, 2, 3, 4, 1).flip(-1), scale)


def _check_pair(image: torch.Tensor, displacement: torch.Tensor) -> None:
    if image.ndim != 5:
        raise ValueError(f"image must be (B, C, D, H, W), got {tuple(image.shape)}")
    if image.shape[2:] != displacement.shape[2:]:
        raise ValueError(
            f"image grid {tuple(image.shape[2:])} differs from displacement grid "
            f"{tuple(displacement.shape[2:])}"
        )
    if image.shape[0] != displacement.shape[0] and image.shape[0] != 1:
        raise ValueError(f"batch sizes differ: {image.shape[0]} vs {displacement.shape[0]}")


def grid_sample_3d(volume: torch.Tensor, grid: torch.Tensor, padding: Padding = "border",
                   mode: Literal["bilinear", "nearest"] = "bilinear") -> torch.Tensor:
    """``F.grid_sample`` (aligned corners) of ``volume`` (1, C, D, H, W) at the
    coordinates ``grid`` (1, *S, 3): (1, C, *S). On a CPU the points are split into one
    batch per torch thread, since its 3D kernel runs the batch in parallel and nothing
    else (twice as fast on two cores; the values are the same)."""
    threads = torch.get_num_threads()
    points = grid[0].numel() // 3
    if volume.device.type != "cpu" or threads < 2 or volume.shape[0] != 1 or \
            points < 4096 * threads:
        return F.grid_sample(volume, grid, mode=mode, padding_mode=padding,
                             align_corners=True)
    channels, shape = volume.shape[1], grid.shape[1:-1]
    flat = grid.reshape(-1, 3)
    per_batch = points // threads
    split = per_batch * threads
    sampled = F.grid_sample(volume.expand(threads, *volume.shape[1:]),
                            flat[:split].view(threads, per_batch, 1, 1, 3), mode=mode,
                            padding_mode=padding, align_corners=True)
    if channels == 1 and split == points:  # already in order: no copy
        return sampled.view(1, 1, *shape)
    rest = None if split == points else F.grid_sample(
        volume, flat[split:].view(1, -1, 1, 1, 3), mode=mode, padding_mode=padding,
        align_corners=True).view(channels, -1)
    del grid, flat  # (freed here when the caller passed a temporary: one volume less)
    out = torch.empty((channels, points), dtype=volume.dtype, device=volume.device)
    out[:, :split].view(channels, threads, per_batch).copy_(
        sampled.view(threads, channels, per_batch).transpose(0, 1))
    if rest is not None:
        out[:, split:] = rest
    return out.view(1, channels, *shape)


def warp_image(
    image: torch.Tensor,
    displacement: torch.Tensor,
    mode: Literal["linear", "nearest"] = "linear",
    padding: Padding = "zeros",
) -> torch.Tensor:
    """Warp ``image`` (B, C, D, H, W) by ``displacement`` (B, 3, D, H, W) in voxels.

    ``mode="linear"`` is trilinear interpolation. A batch-1 image is broadcast over the
    displacement's batch. Returns a float tensor of the image's shape.
    """
    _check_pair(image, displacement)
    if image.shape[0] == 1 and displacement.shape[0] > 1:
        image = image.expand(displacement.shape[0], *image.shape[1:])
    grid = sampling_grid(displacement.to(image.dtype))
    return F.grid_sample(
        image,
        grid,
        mode="bilinear" if mode == "linear" else "nearest",
        padding_mode=padding,
        align_corners=True,
    )


def label_cells(labels: torch.Tensor) -> torch.Tensor:
    """For each voxel of ``labels`` (1, 1, D, H, W), the label of the interpolation cell
    whose first corner it is (corners ``+0/+1`` along each axis, the grid's last slice
    repeated beyond it) when all eight corners carry that label, else -1: (D*H*W,) int32,
    on the labels' device."""
    volume = labels[0, 0]
    padded = F.pad(volume[None, None].to(torch.int32), (0, 1, 0, 1, 0, 1), mode="replicate")[0, 0]
    depth, height, width = volume.shape
    first = padded[:depth, :height, :width]
    uniform = torch.ones_like(first, dtype=torch.bool)
    for corner in range(1, 8):
        a, b, c = (corner >> 2) & 1, (corner >> 1) & 1, corner & 1
        uniform &= padded[a:a + depth, b:b + height, c:c + width] == first
    return torch.where(uniform, first, torch.full_like(first, -1)).reshape(-1)


def vote_labels(volume: torch.Tensor, low: list[torch.Tensor], frac: list[torch.Tensor],
                values: list[int], beyond: Literal["border", "zero"] = "border"
                ) -> torch.Tensor:
    """The one-hot rule at m points of a label ``volume`` (D, H, W): each corner of the
    point's cell (first corner ``low``, per axis (m,) integers) weighs ``frac`` (per axis
    (m,), in [0, 1]) trilinearly; every label of ``values`` scores the weights of the
    corners carrying it and the largest positive score wins (ties: the first in
    ``values``; no label of ``values``: 0). Corners beyond the grid take the border's
    label (``beyond="border"``) or no label at all (``"zero"``, as zero padding of each
    label's indicator). (m,) labels."""
    size = volume.shape
    flat = volume.reshape(-1)
    corners, weights = [], []
    for corner in range(8):
        step = [(corner >> 2) & 1, (corner >> 1) & 1, corner & 1]
        at = [low[a] + step[a] for a in range(3)]
        weight = torch.ones_like(frac[0])
        for a in range(3):
            weight = weight * (frac[a] if step[a] else 1.0 - frac[a])
            if beyond == "zero":
                weight = weight * ((at[a] >= 0) & (at[a] < size[a]))
            at[a] = at[a].clamp(0, size[a] - 1)
        corners.append(flat[(at[0] * size[1] + at[1]) * size[2] + at[2]])
        weights.append(weight)
    labels = torch.stack(corners, dim=1)  # (m, 8)
    corner_weights = torch.stack(weights, dim=1)
    score = torch.zeros_like(corner_weights)  # each corner: the weight of its label
    for other in range(8):
        score += corner_weights[:, other:other + 1] * (labels == labels[:, other:other + 1])
    count = len(values)
    rank = torch.full((max(int(volume.max()), *values) + 1,), count, dtype=torch.int64,
                      device=volume.device)
    rank[torch.tensor(values, dtype=torch.int64, device=volume.device)] = torch.arange(
        count, device=volume.device)
    corner_rank = rank[labels.long()]
    score = torch.where(corner_rank < count, score, torch.zeros_like(score))
    top = score.max(dim=1, keepdim=True).values
    order = torch.where((score == top) & (score > 0), corner_rank, count)
    first = order.argmin(dim=1, keepdim=True)
    return torch.where(order.gather(1, first)[:, 0] < count, labels.gather(1, first)[:, 0],
                       torch.zeros_like(labels[:, 0]))


def _onehot_labels(labels: torch.Tensor, grid: torch.Tensor, values: list[int]) -> torch.Tensor:
    """:func:`warp_labels`' one-hot rule for one label map (1, 1, D, H, W) and one grid
    (1, *S, 3): (*S) labels. A point whose cell lies inside the grid and carries one
    label takes it directly; the others (near label boundaries and the border) are
    decided by :func:`vote_labels` with zero beyond the grid."""
    shape = labels.shape[2:]
    flat_grid = grid.reshape(-1, 3)
    # the voxel index grid_sample computes from the grid (align_corners=True), per axis
    index = [(flat_grid[:, 2 - axis] + 1) / 2 * (shape[axis] - 1) for axis in range(3)]
    floor = [torch.floor(index[axis]) for axis in range(3)]
    cell_inside = torch.ones_like(floor[0], dtype=torch.bool)
    for axis in range(3):
        cell_inside &= (floor[axis] >= 0) & (floor[axis] <= shape[axis] - 2)
    low = [floor[axis].clamp(0, max(shape[axis] - 2, 0)).to(torch.int64) for axis in range(3)]
    direct = label_cells(labels)[(low[0] * shape[1] + low[1]) * shape[2] + low[2]]
    direct = torch.where(cell_inside, direct, torch.full_like(direct, -1))
    result = direct.clamp(min=0).to(labels.dtype)
    mixed = torch.nonzero(direct < 0).squeeze(1)
    if mixed.numel():
        # far outside points: clamp before the integer cast, they only need to stay out
        start = [floor[a][mixed].clamp(-2, shape[a] + 1).to(torch.int64) for a in range(3)]
        result[mixed] = vote_labels(labels[0, 0], start,
                                    [index[a][mixed] - floor[a][mixed] for a in range(3)],
                                    values, beyond="zero")
    return result.reshape(grid.shape[1:-1])


def warp_labels(
    labels: torch.Tensor,
    displacement: torch.Tensor,
    method: Literal["nearest", "onehot"] = "onehot",
) -> torch.Tensor:
    """Warp an integer label map (B, 1, D, H, W) so that it keeps exactly its label values.

    ``nearest`` samples the nearest voxel; ``onehot`` interpolates each label's indicator
    trilinearly (zero beyond the grid) and keeps the label with the largest weight (ties:
    the smaller label; no weight: 0), for smoother boundaries. Points outside the moving
    image become background (0). Returns the labels' dtype.
    """
    _check_pair(labels, displacement)
    if labels.shape[1] != 1:
        raise ValueError(f"labels must have one channel, got {labels.shape[1]}")
    dtype = labels.dtype
    if method == "nearest":
        warped = warp_image(labels.float(), displacement.float(), mode="nearest")
        return warped.round().to(dtype)
    if method != "onehot":
        raise ValueError(f"unknown label warping method {method!r}")
    grid = sampling_grid(displacement.float())
    values = torch.unique(labels).tolist()
    out = torch.empty((grid.shape[0], 1, *grid.shape[1:4]), dtype=dtype, device=labels.device)
    for item in range(grid.shape[0]):
        source = labels[item if labels.shape[0] > 1 else 0][None]
        out[item, 0] = _onehot_labels(source, grid[item:item + 1], values)
    return out


def inside(index: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(*S) bool: indices (3, *S) within half a voxel of the grid (as ITK decides what
    is inside an image)."""
    result = torch.ones(index.shape[1:], dtype=torch.bool, device=index.device)
    for axis, n in enumerate(shape):
        result &= (index[axis] >= -0.5) & (index[axis] <= n - 0.5)
    return result


def sample_image(image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``image`` (1, 1, D, H, W) at voxel indices (3, *S) ->
    (*S); edge values are replicated up to half a voxel beyond the grid, 0 further out
    (ITK/ANTs' linear interpolator with default value 0)."""
    shape = tuple(image.shape[2:])
    grid = normalised(index.reshape(3, 1, 1, -1), shape)[None].to(image.dtype)
    values = grid_sample_3d(image, grid).reshape(index.shape[1:])
    return torch.where(inside(index, shape), values, torch.zeros_like(values))


def sample_labels(labels: torch.Tensor, index: torch.Tensor, values: list[int],
                  cells: torch.Tensor | None = None) -> torch.Tensor:
    """Label-exact interpolation of ``labels`` (1, 1, D, H, W) uint8 at indices (3, n):
    each label of ``values`` (include 0: background competes like any label) has its
    indicator interpolated trilinearly (border values beyond the grid) and the label of
    largest weight wins (ties: the first in ``values``; 0 outside the grid). (n,) uint8.

    Points whose interpolation cell carries one label take it from ``cells``
    (:func:`label_cells`, computed here when not given); only the others
    (near label boundaries) are decided by :func:`vote_labels`.
    """
    size = labels.shape[2:]
    if cells is None:
        cells = label_cells(labels)
    # per axis, contiguous (n,): the point clamped to the grid and its cell's first corner
    clamped = [index[a].clamp(0.0, size[a] - 1) for a in range(3)]
    low = [torch.floor(clamped[a]).clamp_(max=max(size[a] - 2, 0)).to(torch.int32)
           for a in range(3)]
    direct = cells[(low[0] * size[1] + low[1]) * size[2] + low[2]]
    best = direct.clamp(min=0).to(labels.dtype)
    mixed = torch.nonzero(direct < 0).squeeze(1)
    if mixed.numel():
        low_m = [low[a][mixed] for a in range(3)]
        best[mixed] = vote_labels(labels[0, 0], low_m,
                                  [clamped[a][mixed] - low_m[a].to(clamped[a].dtype)
                                   for a in range(3)], values)
    return torch.where(inside(index, tuple(size)), best, torch.zeros_like(best))
