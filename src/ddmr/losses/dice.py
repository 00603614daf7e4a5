"""Soft Dice over one-hot labels, background excluded (plain or generalised)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def one_hot(labels: torch.Tensor, values: Sequence[int]) -> torch.Tensor:
    """One-hot encode an integer map (B, 1, D, H, W) -> (B, K, D, H, W) float for ``values``."""
    channels = [(labels == v) for v in values]
    return torch.cat(channels, dim=1).float()


def dice_score(prediction: torch.Tensor, target: torch.Tensor, eps: float = 1e-6
               ) -> torch.Tensor:
    """Soft Dice per batch item and channel (B, K) of (B, K, D, H, W) probabilities.

    A channel empty in both maps scores 1.
    """
    dims = tuple(range(2, prediction.ndim))
    inter = (prediction * target).sum(dim=dims)
    total = prediction.sum(dim=dims) + target.sum(dim=dims)
    return (2 * inter + eps) / (total + eps)


class DiceLoss(nn.Module):
    """``1 - Dice`` of one-hot (B, K, D, H, W) maps whose channel 0 is background.

    ``generalised=True`` weights channels by the inverse squared target volume
    (Sudre et al. 2017); otherwise the per-label Dice scores are averaged.
    """

    def __init__(self, include_background: bool = False, generalised: bool = False,
                 eps: float = 1e-6) -> None:
        super().__init__()
        self.include_background = include_background
        self.generalised = generalised
        self.eps = eps

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self.include_background:
            prediction = prediction[:, 1:]
            target = target[:, 1:]
        if prediction.shape[1] == 0:
            raise ValueError("Dice needs at least one foreground label")
        if not self.generalised:
            return 1.0 - dice_score(prediction, target, self.eps).mean()
        dims = tuple(range(2, prediction.ndim))
        weight = 1.0 / (target.sum(dim=dims) ** 2 + self.eps)
        weight = torch.where(torch.isfinite(weight), weight, torch.zeros_like(weight))
        inter = (weight * (prediction * target).sum(dim=dims)).sum(dim=1)
        total = (weight * (prediction.sum(dim=dims) + target.sum(dim=dims))).sum(dim=1)
        return 1.0 - ((2 * inter + self.eps) / (total + self.eps)).mean()
