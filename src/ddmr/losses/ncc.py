"""Normalised cross-correlation, global and local (windowed box filter)."""

from __future__ import annotations

import torch
from torch import nn

from ddmr.spatial.filters import box_mean


def global_ncc(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of two image batches (B, C, D, H, W) over all voxels -> (B,).

    Both vectors are centred before normalising (the original code forgot this).
    """
    a = a.flatten(1)
    b = b.flatten(1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    num = (a * b).sum(dim=1)
    den = torch.sqrt((a * a).sum(dim=1) * (b * b).sum(dim=1) + eps)
    return num / den


def local_ncc(a: torch.Tensor, b: torch.Tensor, window: int = 9, eps: float = 1e-5
              ) -> torch.Tensor:
    """Mean over voxels of the correlation in a cubic ``window`` around each voxel -> (B,).

    Local statistics come from separable box filters
    (:func:`ddmr.spatial.filters.box_mean`); windows are cut at
    the border (padding excluded from the means). ``eps`` is added to the covariance and
    to both variances, so flat regions that match score 1. Images are (B, 1, D, H, W).
    """
    if window % 2 != 1:
        raise ValueError(f"window must be odd, got {window}")
    stats = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    means = box_mean(stats, window)
    mu_a, mu_b, aa, bb, ab = means.split(a.shape[1], dim=1)
    var_a = (aa - mu_a * mu_a).clamp_min(0)
    var_b = (bb - mu_b * mu_b).clamp_min(0)
    cov = ab - mu_a * mu_b
    cc = (cov + eps) / torch.sqrt((var_a + eps) * (var_b + eps))
    return cc.flatten(1).mean(dim=1)


class NCCLoss(nn.Module):
    """``1 - NCC`` averaged over the batch; global when ``window`` is None, else local."""

    def __init__(self, window: int | None = 9) -> None:
        super().__init__()
        self.window = window

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.window is None:
            return 1.0 - global_ncc(prediction, target).mean()
        return 1.0 - local_ncc(prediction, target, self.window).mean()
