"""Affine pre-alignment with ANTs (antspyx), at low resolution.

The result is a (4, 4) matrix in RAS mm that maps a point of the fixed image's world to
the point of the moving image it corresponds to (the direction in which ANTs' forward
transforms map points), so ``moving(P p)`` is the affinely aligned moving image.
"""

from __future__ import annotations

import logging
import shutil
import tempfile

import numpy as np

from ddmr.io.convert import to_ants
from ddmr.spatial.grid import LPS_FLIP, Geometry, image_box

logger = logging.getLogger(__name__)

#: Coarsest voxel size (mm) at which the affine is estimated.
AFFINE_SPACING = 4.0
#: Voxels along the longest side below which the images are not made coarser.
AFFINE_MIN_VOXELS = 32


def _ants_affine_to_ras(parameters: np.ndarray, fixed_parameters: np.ndarray) -> np.ndarray:
    """ITK ``AffineTransform`` parameters (12: row-major matrix, translation) and centre
    (3), LPS, -> (4, 4) RAS point map. ITK: ``T(x) = M (x - c) + c + t``."""
    matrix = np.asarray(parameters[:9], dtype=np.float64).reshape(3, 3)
    translation = np.asarray(parameters[9:12], dtype=np.float64)
    centre = np.asarray(fixed_parameters[:3], dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = centre + translation - matrix @ centre
    flip = np.eye(4)
    flip[:3, :3] = LPS_FLIP
    return flip @ lps @ flip


def affine_prealign(fixed: np.ndarray, fixed_geometry: Geometry, moving: np.ndarray,
                    moving_geometry: Geometry, spacing: float = AFFINE_SPACING) -> np.ndarray:
    """Estimate the affine point map (4, 4) RAS mm from the fixed world to the moving
    world with ``ants.registration(type_of_transform="Affine")`` (Mattes MI, all voxels
    sampled, centre-of-mass initialisation) on copies resampled to at most ``spacing`` mm
    (finer for small images: at least :data:`AFFINE_MIN_VOXELS` along the longest side)."""
    import ants

    def low_resolution(array: np.ndarray, geometry: Geometry):
        image = to_ants(array, geometry)
        low, high = image_box(geometry)
        step = min(spacing, float(np.max(high - low)) / AFFINE_MIN_VOXELS)
        target = [max(step, s) for s in geometry.spacing]
        return ants.resample_image(image, target, use_voxels=False, interp_type=0)

    fixed_low = low_resolution(fixed, fixed_geometry)
    moving_low = low_resolution(moving, moving_geometry)
    folder = tempfile.mkdtemp(prefix="ddmr-affine-")
    try:
        result = ants.registration(
            fixed_low, moving_low, type_of_transform="Affine",
            outprefix=f"{folder}/", aff_random_sampling_rate=1.0,
            aff_iterations=(100, 50, 25), aff_shrink_factors=(4, 2, 1),
            aff_smoothing_sigmas=(2, 1, 0),
        )
        transform = ants.read_transform(result["fwdtransforms"][0])
        point_map = _ants_affine_to_ras(np.asarray(transform.parameters),
                                        np.asarray(transform.fixed_parameters))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    logger.info("affine pre-alignment (RAS, fixed -> moving):\n%s", np.round(point_map, 4))
    return point_map
