"""The total training loss of a design: image terms, segmentation terms, regulariser,
combined with fixed or learned (uncertainty) weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ddmr.designs import SEGMENTATION_TERMS, Design
from ddmr.errors import ConfigError
from ddmr.losses.dice import DiceLoss
from ddmr.losses.hausdorff import HausdorffDTLoss
from ddmr.losses.ncc import NCCLoss
from ddmr.losses.regularisers import BendingEnergy, GradientL2
from ddmr.losses.ssim import SSIMLoss
from ddmr.losses.weighting import UncertaintyWeighting


class DesignLoss(nn.Module):
    """``forward(...) -> (total, terms)`` for one design.

    fixed, warped: (B, 1, D, H, W) images; displacement (B, 3, D, H, W) voxels;
    fixed_onehot, warped_onehot: (B, K, D, H, W) one-hot / soft label maps (channel 0 =
    background), required by segmentation-guided designs; spacing in mm (D, H, W).
    ``terms`` maps each term name (and ``"regulariser"``) to its unweighted value.
    """

    def __init__(self, design: Design) -> None:
        super().__init__()
        self.design = design
        modules = {
            "ncc": lambda: NCCLoss(design.ncc_window),
            "ssim": lambda: SSIMLoss(),
            "dice": lambda: DiceLoss(),
            "hausdorff": lambda: HausdorffDTLoss(),
        }
        self.terms = nn.ModuleDict({t: modules[t]() for t in design.losses})
        self.regulariser = GradientL2() if design.regulariser == "grad_l2" else BendingEnergy()
        self.weighting: UncertaintyWeighting | None = None
        if design.weighting == "uncertainty":
            self.weighting = UncertaintyWeighting(
                design.losses, ["regulariser"], mode=design.weighting_mode,
                regulariser_init=design.regulariser_weight,
            )

    def forward(
        self,
        fixed: torch.Tensor,
        warped: torch.Tensor,
        displacement: torch.Tensor,
        fixed_onehot: torch.Tensor | None = None,
        warped_onehot: torch.Tensor | None = None,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.design.needs_segmentations and (fixed_onehot is None or warped_onehot is None):
            raise ConfigError(
                f"design {self.design.name} is segmentation-guided and needs label maps"
            )
        values: dict[str, torch.Tensor] = {}
        for name, term in self.terms.items():
            if name in SEGMENTATION_TERMS:
                if name == "hausdorff":
                    values[name] = term(warped_onehot, fixed_onehot, spacing)
                else:
                    values[name] = term(warped_onehot, fixed_onehot)
            else:
                values[name] = term(warped, fixed)
        reg = self.regulariser(displacement)
        if self.weighting is not None:
            total = self.weighting(values, {"regulariser": reg})
        else:
            weights = self.design.fixed_weights()
            total = sum(w * values[t] for w, t in zip(weights, self.design.losses, strict=True))
            total = total + self.design.regulariser_weight * reg
        values["regulariser"] = reg
        return total, values

    def weights(self) -> dict[str, float]:
        """Current weight of every term (learned ones move during training)."""
        if self.weighting is not None:
            return self.weighting.weights()
        out = dict(zip(self.design.losses, self.design.fixed_weights(), strict=True))
        out["regulariser"] = self.design.regulariser_weight
        return out
