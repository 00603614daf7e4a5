"""The random parameters of one augmented batch and how they are drawn."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddmr.augment.config import AugmentationConfig
from ddmr.augment.intensity import draw_brightness, draw_gamma
from ddmr.augment.rigid import draw_uniform
from ddmr.augment.tps import draw_control_displacements
from ddmr.augment.transform import TransformPlan


@dataclass
class AugmentationParameters:
    """Per-sample draws (float64, CPU), batch first.

    rotation: (B, 3) degrees about the D, H, W axes.
    translation: (B, 3) mm along D, H, W.
    tps_displacements: (B, M, 3) mm at the control points, or None (non-rigid off);
        these are the values after the bound/Jacobian limiting, so the TPS interpolates
        exactly these.
    control_points: (M, 3) mm positions of the control points, or None.
    gamma: (B, 2) gamma of the fixed and of the moving image (1 = unchanged).
    brightness: (B, 2) additive brightness of the fixed and of the moving image.
    """

    rotation: torch.Tensor
    translation: torch.Tensor
    tps_displacements: torch.Tensor | None
    control_points: torch.Tensor | None
    gamma: torch.Tensor
    brightness: torch.Tensor

    @property
    def batch(self) -> int:
        return int(self.rotation.shape[0])

    def to_dict(self) -> dict:
        """Plain lists, for JSON."""
        out = {}
        for key in ("rotation", "translation", "tps_displacements", "control_points",
                    "gamma", "brightness"):
            value = getattr(self, key)
            out[key] = None if value is None else value.tolist()
        return out

    @classmethod
    def identity(cls, batch: int) -> AugmentationParameters:
        """Parameters that change nothing."""
        zeros = torch.zeros(batch, 3, dtype=torch.float64)
        return cls(zeros, zeros.clone(), None, None,
                   torch.ones(batch, 2, dtype=torch.float64),
                   torch.zeros(batch, 2, dtype=torch.float64))


def draw_parameters(config: AugmentationConfig, plan: TransformPlan | None, batch: int,
                    generator: torch.Generator) -> AugmentationParameters:
    """Draw one batch of parameters from ``generator`` (the only source of randomness).

    Order of draws: rotation, translation, TPS, gamma (fixed, moving), brightness
    (fixed, moving); a part that is switched off draws nothing.
    """
    params = AugmentationParameters.identity(batch)
    if config.rigid:
        params.rotation = draw_uniform(batch, config.max_rotation, generator)
        params.translation = draw_uniform(batch, config.max_translation, generator)
    if config.nonrigid:
        if plan is None or plan.control_points is None or plan.free_controls is None:
            raise ValueError("the non-rigid part needs a TransformPlan built with it on")
        values = draw_control_displacements(batch, len(plan.control_points),
                                            config.max_tps, generator)
        values = values * plan.free_controls.view(1, -1, 1)
        params.tps_displacements = torch.stack([plan.limit_tps(v) for v in values])
        params.control_points = plan.control_points.clone()
    if config.intensity:
        params.gamma = torch.stack([draw_gamma(batch, config.gamma_range, generator)
                                    for _ in range(2)], dim=1)
        params.brightness = torch.stack([draw_brightness(batch, config.max_brightness,
                                                         generator) for _ in range(2)], dim=1)
    return params
