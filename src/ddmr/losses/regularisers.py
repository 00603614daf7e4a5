"""Smoothness regularisers of a displacement field (B, 3, D, H, W) in voxels."""

from __future__ import annotations

import torch
from torch import nn


def _diff(u: torch.Tensor, axis: int) -> torch.Tensor:
    """Forward difference along spatial ``axis`` (0, 1, 2)."""
    dim = axis + 2
    n = u.shape[dim]
    return u.narrow(dim, 1, n - 1) - u.narrow(dim, 0, n - 1)


class GradientL2(nn.Module):
    """First-order 'diffusion' regulariser: mean squared forward difference, averaged over
    the three axes (voxels^2 per voxel)."""

    def forward(self, displacement: torch.Tensor) -> torch.Tensor:
        return sum(_diff(displacement, a).pow(2).mean() for a in range(3)) / 3.0


class BendingEnergy(nn.Module):
    """Second-order regulariser: mean of the squared second derivatives
    (d2u/dx_i^2 and twice the mixed d2u/dx_i dx_j), by finite differences."""

    def forward(self, displacement: torch.Tensor) -> torch.Tensor:
        total = displacement.new_zeros(())
        for i in range(3):
            for j in range(i, 3):
                second = _diff(_diff(displacement, i), j)
                total = total + (1.0 if i == j else 2.0) * second.pow(2).mean()
        return total
