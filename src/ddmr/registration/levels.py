"""One pyramid level of one image, as the affine stage and the engine both see it: a grid
over the image's foreground (:func:`object_grid`) and the image on it with its intensities
mapped to [0, 1] (:func:`scaled_on`)."""

from __future__ import annotations

import math

import numpy as np

from ddmr.spatial.grid import Geometry, image_box, intersect, mask_box, target_grid
from ddmr.spatial.resample import resample_to


def object_grid(mask: np.ndarray, geometry: Geometry, spacing: float, margin: float,
                min_size: int) -> Geometry:
    """An RAS-aligned grid of ``spacing`` mm over the world box of ``mask`` (I, J, K) on
    ``geometry`` (plus ``margin`` mm; the whole image when the mask is empty), inside the
    image's own box, with at least ``min_size`` voxels along each axis."""
    box = mask_box(mask, geometry, margin) or image_box(geometry)
    box = intersect(box, image_box(geometry))
    size = tuple(max(min_size, math.ceil(float(e) / spacing)) for e in box[1] - box[0])
    return target_grid(box, size, spacing, "pad")


def scaled_on(image: np.ndarray, geometry: Geometry, grid: Geometry,
              scale: tuple[float, float]) -> np.ndarray:
    """``image`` (I, J, K) on ``geometry`` resampled onto ``grid`` (trilinear, smoothed
    first where ``grid`` is coarser; ``scale[0]`` beyond the image), its intensities
    ``scale`` = (low, high) mapped to [0, 1] and clipped: (*grid.shape) float32."""
    low, high = scale
    values = image if geometry.isclose(grid) else resample_to(
        image, geometry, grid, order=1, cval=low, antialias=True)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)
