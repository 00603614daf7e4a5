"""Preprocessing on the fly: resize to the model's grid and min-max normalise to [0, 1].

Resizing keeps the field of view: the first and last voxel centres stay where they were
(``align_corners=True``, the convention of :func:`ddmr.nn.fields.resize_displacement`),
so the new spacing is ``spacing * (n_old - 1) / (n_new - 1)``. Images are resampled
trilinearly, label maps by nearest neighbour (they keep their label values exactly).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ddmr.augment.intensity import minmax_normalise
from ddmr.spatial.grid import resized_spacing


def resize_image(image: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Trilinear resize of (B, C, D, H, W) to (B, C, *shape), corners aligned."""
    if tuple(image.shape[2:]) == tuple(shape):
        return image
    return F.interpolate(image.float(), size=tuple(shape), mode="trilinear", align_corners=True)


def resize_labels(labels: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of integer labels (B, 1, D, H, W) to (B, 1, *shape),
    corners aligned; keeps the dtype and the label values."""
    if tuple(labels.shape[2:]) == tuple(shape):
        return labels
    axes = [torch.linspace(-1.0, 1.0, int(n), device=labels.device) if n > 1
            else torch.zeros(1, device=labels.device) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).flip(-1)
    grid = grid.unsqueeze(0).expand(labels.shape[0], *grid.shape).contiguous()
    out = F.grid_sample(labels.float(), grid, mode="nearest", align_corners=True)
    return out.round().to(labels.dtype)


def preprocess(image: torch.Tensor, spacing: Sequence[float],
               shape: Sequence[int] | None = None, labels: torch.Tensor | None = None,
               normalise: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[float, float, float]]:
    """Resize ``image`` (B, 1, D, H, W) (and ``labels``) to ``shape`` (None keeps it) and
    min-max normalise it per sample. Returns (image, labels, new spacing in mm)."""
    spacing = tuple(float(s) for s in spacing)
    if shape is not None:
        shape = tuple(int(n) for n in shape)
        new_spacing = resized_spacing(spacing, image.shape[2:], shape)
        image = resize_image(image, shape)
        labels = None if labels is None else resize_labels(labels, shape)
        spacing = new_spacing
    image = image.float()
    if normalise:
        image = minmax_normalise(image)
    return image, labels, spacing


class Preprocess(nn.Module):
    """Module form of :func:`preprocess`: ``forward(image, spacing, labels=None)``."""

    def __init__(self, shape: Sequence[int] | None = None, normalise: bool = True) -> None:
        super().__init__()
        self.shape = None if shape is None else tuple(int(n) for n in shape)
        self.normalise = normalise

    def forward(self, image: torch.Tensor, spacing: Sequence[float],
                labels: torch.Tensor | None = None):
        return preprocess(image, spacing, self.shape, labels, self.normalise)
