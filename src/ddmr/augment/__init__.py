"""The augmentation layer: synthetic training pairs on the fly with a ground-truth field.

``AugmentationLayer(config, seed=...)(fixed, labels, spacing)`` returns an
:class:`AugmentedPair`: intensity-augmented fixed image and labels, a moving image made
by a random rigid + thin-plate-spline transform (with its own intensity augmentation),
the moving labels, and the ground-truth pull-back displacement ``u`` (voxels) with
``warp_image(moving, u) ~ fixed``. See :mod:`ddmr.augment.transform` for the maths.
"""

from ddmr.augment.config import AugmentationConfig
from ddmr.augment.intensity import adjust_intensity
from ddmr.augment.layer import AugmentationLayer, AugmentedPair, apply_parameters, augment
from ddmr.augment.parameters import AugmentationParameters, draw_parameters
from ddmr.augment.rigid import rotation_matrix
from ddmr.augment.tps import ThinPlateSpline, control_grid, thin_plate_spline
from ddmr.augment.transform import TransformPlan

__all__ = [
    "AugmentationConfig",
    "AugmentationLayer",
    "AugmentationParameters",
    "AugmentedPair",
    "ThinPlateSpline",
    "TransformPlan",
    "adjust_intensity",
    "apply_parameters",
    "augment",
    "control_grid",
    "draw_parameters",
    "rotation_matrix",
    "thin_plate_spline",
]
