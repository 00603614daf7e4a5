"""Amortised optimisation: the registration engine's own fields between the training
subjects become the supervised term's target for inter-subject training pairs
(``TrainingProfile.engine_targets``), so that the network learns to give in one pass what
the engine finds by optimisation.

Fields are in voxels of the network's grid, (3, D, H, W) in (D, H, W) channel order,
pull-back: ``fixed(x) ~ moving(x + u(x))``, as the augmentation layer's ground truth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ddmr.spatial.warp import warp_image


def engine_fields(images: Mapping[str, torch.Tensor], spacing: Sequence[float]
                  ) -> dict[tuple[str, str], torch.Tensor]:
    """``(fixed id, moving id) -> (3, D, H, W)`` float32 voxel field of the default
    registration (world affine stage, then the engine; no network) for every ordered pair
    of ``images`` (id -> (D, H, W) float tensors on one grid of ``spacing`` mm, as the
    network sees them: the voxel grids are taken to coincide, as training pairs do)."""
    from ddmr.registration.pipeline import register

    affine = np.diag([*(float(s) for s in spacing), 1.0])
    scale = torch.tensor([float(s) for s in spacing]).view(3, 1, 1, 1)
    fields = {}
    for fixed_id, fixed in images.items():
        for moving_id, moving in images.items():
            if fixed_id == moving_id:
                continue
            result = register((fixed.numpy(), affine), (moving.numpy(), affine),
                              model=False)
            millimetres = torch.from_numpy(np.asarray(result.displacement_mm, np.float32))
            fields[fixed_id, moving_id] = millimetres / scale
    return fields


def through_augmentation(field: torch.Tensor, moving_displacement: torch.Tensor
                         ) -> torch.Tensor:
    """The target of a pair whose moving image is the augmentation layer's moving image of
    the second subject: ``u(x) + w(x + u(x))``, with ``field`` u (B, 3, D, H, W) from the
    first subject to the second and ``moving_displacement`` w (B, 3, D, H, W) the layer's
    ground truth of the second subject's pair (from its un-augmented image to its moving
    image); voxels."""
    return field + warp_image(moving_displacement, field, padding="border")
