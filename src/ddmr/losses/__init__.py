"""Losses for registration: similarity, overlap, distance, regularisers and their weighting.

Every loss returns a scalar to minimise (mean over the batch). The Hausdorff loss (and
the design loss that may use it) are imported on first use, as they pull in scipy:
commands that need only a similarity (``ddmr register``) start faster.
"""

from __future__ import annotations

import importlib
from typing import Any

from ddmr.losses.dice import DiceLoss, dice_score, one_hot
from ddmr.losses.mutual_information import MutualInformationLoss, mutual_information
from ddmr.losses.ncc import NCCLoss, global_ncc, local_ncc
from ddmr.losses.regularisers import BendingEnergy, GradientL2
from ddmr.losses.ssim import SSIMLoss, ssim3d
from ddmr.losses.weighting import UncertaintyWeighting

_LAZY = {"DesignLoss": "design_loss", "HausdorffDTLoss": "hausdorff"}

__all__ = [
    "BendingEnergy",
    "DesignLoss",
    "DiceLoss",
    "GradientL2",
    "HausdorffDTLoss",
    "MutualInformationLoss",
    "NCCLoss",
    "SSIMLoss",
    "UncertaintyWeighting",
    "dice_score",
    "global_ncc",
    "local_ncc",
    "mutual_information",
    "one_hot",
    "ssim3d",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ddmr.losses' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ddmr.losses.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
