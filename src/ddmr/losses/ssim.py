"""3D structural similarity (Wang et al. 2004) with a Gaussian or uniform window."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


def _window_1d(kind: str, size: int, sigma: float, device, dtype) -> torch.Tensor:
    if kind == "uniform":
        return torch.full((size,), 1.0 / size, device=device, dtype=dtype)
    radius = size // 2
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    w = torch.exp(-(x * x) / (2 * sigma * sigma))
    return w / w.sum()


def _filter_valid(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Separable filtering of (N, 1, D, H, W) with kernel ``w``, 'valid' (no padding)."""
    k = w.numel()
    x = F.conv3d(x, w.view(1, 1, k, 1, 1))
    x = F.conv3d(x, w.view(1, 1, 1, k, 1))
    return F.conv3d(x, w.view(1, 1, 1, 1, k))


def ssim3d(
    a: torch.Tensor,
    b: torch.Tensor,
    data_range: float = 1.0,
    window: Literal["gaussian", "uniform"] = "gaussian",
    sigma: float = 1.5,
    size: int | None = None,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Mean SSIM of (B, C, D, H, W) volumes -> (B,).

    Gaussian window: ``sigma`` (default 1.5) truncated at 3.5 sigma (11 taps), as
    scikit-image with ``gaussian_weights=True``; uniform window: ``size`` (default 7).
    Only windows fully inside the volume are averaged (no padding), which equals
    scikit-image's border cropping. Volumes smaller than the window are refused.
    """
    if size is None:
        size = 2 * int(3.5 * sigma + 0.5) + 1 if window == "gaussian" else 7
    if min(a.shape[2:]) < size:
        raise ValueError(f"volume {tuple(a.shape[2:])} is smaller than the SSIM window {size}")
    w = _window_1d(window, size, sigma, a.device, a.dtype)
    # unbiased (sample) covariance for the uniform window, as scikit-image does
    correction = size**3 / (size**3 - 1) if window == "uniform" else 1.0
    B, C = a.shape[:2]
    x = a.reshape(B * C, 1, *a.shape[2:])
    y = b.reshape(B * C, 1, *b.shape[2:])
    stats = _filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=0), w)
    mu_x, mu_y, xx, yy, xy = stats.split(B * C, dim=0)
    var_x = (xx - mu_x * mu_x) * correction
    var_y = (yy - mu_y * mu_y) * correction
    cov = (xy - mu_x * mu_y) * correction
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )
    return s.reshape(B, -1).mean(dim=1)


class SSIMLoss(nn.Module):
    """``1 - SSIM`` averaged over the batch (images in [0, ``data_range``])."""

    def __init__(self, data_range: float = 1.0, window: Literal["gaussian", "uniform"] = "gaussian",
                 sigma: float = 1.5) -> None:
        super().__init__()
        self.data_range = data_range
        self.window = window
        self.sigma = sigma
        if not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        s = ssim3d(prediction, target, self.data_range, self.window, self.sigma)
        return 1.0 - s.mean()
