"""Atlas label propagation with ANTs: how the paper labelled IXI.

The atlas image is registered to a subject in two ANTs runs, an affine one (mutual
information) and then a deformable SyN one started from it, and the atlas labels are
carried over with ANTs' ``genericLabel`` interpolation. The affine stage runs on its own
so that its multi-resolution schedule follows ``affine_iterations`` (ANTsPy's one-call
"SyN" ignores it and starts at 1/4 resolution, which breaks down on small volumes).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ddmr.io.convert import to_ants
from ddmr.spatial.grid import Geometry


def propagate_labels(image: np.ndarray, geometry: Geometry, atlas_image: np.ndarray,
                     atlas_geometry: Geometry, atlas_labels: np.ndarray,
                     syn_iterations: Sequence[int] = (40, 20, 0),
                     affine_iterations: Sequence[int] = (200, 100, 50)) -> np.ndarray:
    """Labels (I, J, K) uint8 on ``image``'s grid, propagated from the atlas.

    ``image`` (I, J, K) on ``geometry``; ``atlas_image`` and ``atlas_labels`` share
    ``atlas_geometry``. Iterations are per resolution level, coarse to fine; level ``n``
    of ``L`` is shrunk by ``2**(L-1-n)``.
    """
    import ants

    fixed = to_ants(image, geometry)
    moving = to_ants(atlas_image, atlas_geometry)
    labels = to_ants(atlas_labels.astype(np.float32), atlas_geometry)
    levels = len(affine_iterations)
    with tempfile.TemporaryDirectory(prefix="ddmr-atlas-") as folder:
        affine = ants.registration(
            fixed, moving, type_of_transform="Affine", outprefix=str(Path(folder) / "aff_"),
            aff_iterations=tuple(affine_iterations),
            aff_shrink_factors=tuple(2 ** (levels - 1 - n) for n in range(levels)),
            aff_smoothing_sigmas=tuple(levels - 1 - n for n in range(levels)),
        )
        deformable = ants.registration(
            fixed, moving, type_of_transform="SyNOnly", outprefix=str(Path(folder) / "syn_"),
            initial_transform=affine["fwdtransforms"], reg_iterations=tuple(syn_iterations),
        )
        warped = ants.apply_transforms(fixed, labels, deformable["fwdtransforms"],
                                       interpolator="genericLabel")
    return np.rint(warped.numpy()).clip(0, 255).astype(np.uint8)
