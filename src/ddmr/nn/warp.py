"""Warping images and label maps with a dense displacement field.

Convention: ``u`` has shape (B, 3, D, H, W), is in voxels of the grid it lives on,
channels in (D, H, W) order, and pulls back: ``warped(x) = moving(x + u(x))``.
Points that fall outside the moving image take ``padding`` values.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Padding = Literal["zeros", "border", "reflection"]


@lru_cache(maxsize=4)
def _normalised_identity(shape: tuple[int, int, int], device: str, dtype: torch.dtype
                         ) -> torch.Tensor:
    """(1, D, H, W, 3) ``grid_sample`` coordinates of the grid's own voxels, (W, H, D)."""
    axes = [torch.arange(n, dtype=dtype, device=device) * (2.0 / max(n - 1, 1)) - 1.0
            for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1).unsqueeze(0)


def sampling_grid(displacement: torch.Tensor) -> torch.Tensor:
    """Turn a voxel displacement (B, 3, D, H, W) into a ``grid_sample`` grid (B, D, H, W, 3).

    The grid is normalised for ``align_corners=True`` and its last axis is in (W, H, D)
    order, as ``grid_sample`` expects.
    """
    if displacement.ndim != 5 or displacement.shape[1] != 3:
        raise ValueError(f"displacement must be (B, 3, D, H, W), got {tuple(displacement.shape)}")
    shape = tuple(int(n) for n in displacement.shape[2:])
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape[::-1]],
                         device=displacement.device, dtype=displacement.dtype)
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


def warp_labels(
    labels: torch.Tensor,
    displacement: torch.Tensor,
    method: Literal["nearest", "onehot"] = "onehot",
) -> torch.Tensor:
    """Warp an integer label map (B, 1, D, H, W) so that it keeps exactly its label values.

    ``nearest`` samples the nearest voxel; ``onehot`` interpolates each label's indicator
    trilinearly and keeps the label with the largest weight (smoother boundaries). Points
    outside the moving image become background (0). Returns the labels' dtype.
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
    batch = displacement.shape[0]
    best_score = torch.zeros((batch, 1, *labels.shape[2:]), device=labels.device)
    best_label = torch.zeros_like(best_score, dtype=dtype)
    source = labels if labels.shape[0] == batch else labels.expand(batch, *labels.shape[1:])
    for value in torch.unique(labels).tolist():
        indicator = (source == value).float()
        score = F.grid_sample(indicator, grid, mode="bilinear", padding_mode="zeros",
                              align_corners=True)
        better = score > best_score
        best_score = torch.where(better, score, best_score)
        best_label = torch.where(better, torch.full_like(best_label, value), best_label)
    return best_label


class SpatialTransformer(nn.Module):
    """Module form of :func:`warp_image`: ``forward(moving, displacement) -> warped``."""

    def __init__(self, mode: Literal["linear", "nearest"] = "linear",
                 padding: Padding = "zeros") -> None:
        super().__init__()
        self.mode = mode
        self.padding = padding

    def forward(self, moving: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
        return warp_image(moving, displacement, mode=self.mode, padding=self.padding)
