"""Losses for registration: similarity, overlap, distance, regularisers and their weighting.

Every loss returns a scalar to minimise (mean over the batch). Each is imported on first
use: commands that need only a similarity (``ddmr register``) start faster.
"""

from __future__ import annotations

import importlib
from typing import Any

# the function that shares its module's name, bound now: importing the submodule would
# otherwise leave the package attribute naming the module
from ddmr.losses.mutual_information import mutual_information

# public name -> module under ddmr.losses; every other loss is imported on first use, so
# that ``ddmr register`` (which needs global NCC alone) imports no training losses
_LAZY = {"BendingEnergy": "regularisers", "DesignLoss": "design_loss", "DiceLoss": "dice",
         "GradientL2": "regularisers", "HausdorffDTLoss": "hausdorff",
         "MutualInformationLoss": "mutual_information", "NCCLoss": "ncc",
         "SSIMLoss": "ssim", "UncertaintyWeighting": "weighting", "dice_score": "dice",
         "global_ncc": "ncc", "local_ncc": "ncc", "one_hot": "dice", "ssim3d": "ssim"}

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
