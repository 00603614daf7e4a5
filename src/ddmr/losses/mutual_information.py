"""Mutual information with Parzen (Gaussian) histograms, for multi-modal similarity."""

from __future__ import annotations

import torch
from torch import nn


def mutual_information(a: torch.Tensor, b: torch.Tensor, bins: int = 32,
                       sigma: float | None = None, max_voxels: int | None = 2**16
                       ) -> torch.Tensor:
    """Mutual information (nats) of intensities in [0, 1], per batch item -> (B,).

    Each voxel spreads over ``bins`` Gaussian bins (width ``sigma``, default one bin);
    at most ``max_voxels`` voxels are used (None: all), taken at a regular stride
    (deterministic). The loss here and the registration engine's similarity.
    """
    sigma = sigma if sigma is not None else 1.0 / bins
    a = a.flatten(1)
    b = b.flatten(1)
    stride = 1 if max_voxels is None else max(1, a.shape[1] // max_voxels)
    a = a[:, ::stride].clamp(0, 1)
    b = b[:, ::stride].clamp(0, 1)
    centres = torch.linspace(0, 1, bins, device=a.device, dtype=a.dtype)

    def soft_bins(x: torch.Tensor) -> torch.Tensor:
        w = torch.exp(-((x.unsqueeze(-1) - centres) ** 2) / (2 * sigma**2))
        return w / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)

    wa, wb = soft_bins(a), soft_bins(b)  # (B, N, bins)
    joint = torch.einsum("bni,bnj->bij", wa, wb) / a.shape[1]
    pa = joint.sum(dim=2, keepdim=True)
    pb = joint.sum(dim=1, keepdim=True)
    ratio = joint / (pa * pb).clamp_min(1e-12)
    return (joint * torch.log(ratio.clamp_min(1e-12))).sum(dim=(1, 2))


class MutualInformationLoss(nn.Module):
    """Negative mutual information averaged over the batch."""

    def __init__(self, bins: int = 32, max_voxels: int = 2**16) -> None:
        super().__init__()
        self.bins = bins
        self.max_voxels = max_voxels

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -mutual_information(prediction, target, self.bins,
                                   max_voxels=self.max_voxels).mean()
