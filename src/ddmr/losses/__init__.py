"""Losses for registration: similarity, overlap, distance, regularisers and their weighting.

Every loss returns a scalar to minimise (mean over the batch).
"""

from ddmr.losses.design_loss import DesignLoss
from ddmr.losses.dice import DiceLoss, dice_score, one_hot
from ddmr.losses.hausdorff import HausdorffDTLoss
from ddmr.losses.mutual_information import MutualInformationLoss, mutual_information
from ddmr.losses.ncc import NCCLoss, global_ncc, local_ncc
from ddmr.losses.regularisers import BendingEnergy, GradientL2
from ddmr.losses.ssim import SSIMLoss, ssim3d
from ddmr.losses.weighting import UncertaintyWeighting

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
