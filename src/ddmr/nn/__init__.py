"""Networks: the paper's U-Net (:mod:`~ddmr.nn.unet`) and its blocks. Warping and
displacement-field algebra live in :mod:`ddmr.spatial`."""

from ddmr.nn.unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig"]
