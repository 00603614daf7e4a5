"""Smoothing filters on voxel grids, separable along the three axes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of (B, C, D, H, W) over a cubic ``window`` (odd, voxels) around each voxel,
    windows cut at the border (the mean over the part inside the grid): separable, from
    cumulative sums along each axis (cost independent of the window)."""
    radius = window // 2
    for dim in (2, 3, 4):
        n = x.shape[dim]
        if n == 1 or radius == 0:
            continue
        pad = [0, 0] * (4 - dim) + [1, 0]
        cumulative = F.pad(x.cumsum(dim), pad)  # a zero before the first voxel
        index = torch.arange(n, device=x.device)
        high = torch.clamp(index + radius + 1, max=n)
        low = torch.clamp(index - radius, min=0)
        count = (high - low).to(x.dtype).view([-1 if d == dim else 1 for d in range(5)])
        x = (cumulative.index_select(dim, high) - cumulative.index_select(dim, low)) / count
    return x
