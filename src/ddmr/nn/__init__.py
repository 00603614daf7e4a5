"""Networks and spatial operations: U-Net, warping, displacement-field algebra."""

from ddmr.nn.fields import (
    compose,
    identity_grid,
    integrate_velocity,
    invert,
    jacobian_determinant,
)
from ddmr.nn.unet import UNet, UNetConfig
from ddmr.nn.warp import SpatialTransformer, warp_image, warp_labels

__all__ = [
    "SpatialTransformer",
    "UNet",
    "UNetConfig",
    "compose",
    "identity_grid",
    "integrate_velocity",
    "invert",
    "jacobian_determinant",
    "warp_image",
    "warp_labels",
]
