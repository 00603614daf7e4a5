"""A Hausdorff-distance loss with a real gradient (Karimi and Salcudean, 2019, HD_DT).

``mean((p - q)^2 * (d_p^alpha + d_q^alpha))`` where ``d_p``, ``d_q`` are distances to the
boundaries of the thresholded prediction and of the target. The distances are computed
without gradient (scipy's exact Euclidean transform, in mm with ``spacing``); the
gradient flows through the soft prediction ``p``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn


def boundary_distance(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance (mm) of every voxel of a 3D boolean ``mask`` to the mask's boundary.

    Zero everywhere when the mask is empty or full.
    """
    if not mask.any() or mask.all():
        return np.zeros(mask.shape, dtype=np.float32)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return (inside + outside).astype(np.float32)


class HausdorffDTLoss(nn.Module):
    """HD_DT loss of one-hot (B, K, D, H, W) maps; channel 0 (background) is excluded.

    ``alpha`` is the distance exponent (2 in the paper); ``spacing`` in mm per (D, H, W).
    The value is normalised by the number of voxels and labels, in mm^alpha.
    """

    def __init__(self, alpha: float = 2.0, include_background: bool = False) -> None:
        super().__init__()
        self.alpha = alpha
        self.include_background = include_background

    @torch.no_grad()
    def _distances(self, maps: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
        masks = (maps > 0.5).cpu().numpy()
        out = np.zeros(masks.shape, dtype=np.float32)
        for b in range(masks.shape[0]):
            for k in range(masks.shape[1]):
                out[b, k] = boundary_distance(masks[b, k], spacing)
        return torch.from_numpy(out).to(maps.device, maps.dtype)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor,
                spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
        if not self.include_background:
            prediction = prediction[:, 1:]
            target = target[:, 1:]
        d_pred = self._distances(prediction.detach(), spacing)
        d_target = self._distances(target, spacing)
        weight = d_pred**self.alpha + d_target**self.alpha
        return ((prediction - target) ** 2 * weight).mean()
