"""Displacement-field algebra: identity grids, composition, inversion, integration,
resizing and Jacobian determinants.

All fields are (B, 3, D, H, W) voxel displacements in (D, H, W) channel order that pull
back (``warped(x) = moving(x + u(x))``); see :mod:`ddmr.nn.warp`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F


@lru_cache(maxsize=16)
def _identity_grid_cached(shape: tuple[int, int, int], device: str, dtype: torch.dtype):
    axes = [torch.arange(n, dtype=dtype, device=device) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


def identity_grid(shape: Sequence[int], device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Voxel coordinates (1, 3, D, H, W) of a grid: channel k holds the index along axis k."""
    return _identity_grid_cached(tuple(int(n) for n in shape), str(device), dtype)


def compose(first: torch.Tensor, then: torch.Tensor) -> torch.Tensor:
    """Displacement of the point map ``x -> y + then(y)`` with ``y = x + first(x)``.

    Warping by the result equals warping by ``then`` and then by ``first``:
    ``warp(m, compose(a, b)) == warp(warp(m, b), a)``. Shapes (B, 3, D, H, W).
    """
    from ddmr.nn.warp import warp_image

    return first + warp_image(then, first, padding="border")


def invert(displacement: torch.Tensor, iterations: int = 40) -> torch.Tensor:
    """Numerical inverse ``v`` of ``u`` such that ``compose(v, u) ~ 0`` (fixed-point iteration).

    Solves ``v(x) = -u(x + v(x))``; converges for fields whose Jacobian is close to the
    identity (no folding). Shape (B, 3, D, H, W).
    """
    from ddmr.nn.warp import warp_image

    inverse = -displacement
    for _ in range(iterations):
        inverse = -warp_image(displacement, inverse, padding="border")
    return inverse


def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring of a stationary velocity field (B, 3, D, H, W) into a
    diffeomorphic displacement of the same shape."""
    displacement = velocity / (2**steps)
    for _ in range(steps):
        displacement = compose(displacement, displacement)
    return displacement


def resize_displacement(displacement: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample a voxel displacement to another grid covering the same extent.

    Trilinear interpolation (corners aligned), then each component is rescaled by the
    ratio of voxel sizes so that it stays in voxels of the new grid.
    """
    old = displacement.shape[2:]
    resized = F.interpolate(displacement, size=tuple(shape), mode="trilinear", align_corners=True)
    scale = torch.tensor(
        [(new - 1) / max(o - 1, 1) for new, o in zip(shape, old, strict=True)],
        device=displacement.device, dtype=displacement.dtype,
    ).view(1, 3, 1, 1, 1)
    return resized * scale


def jacobian_determinant(displacement: torch.Tensor) -> torch.Tensor:
    """Determinant (B, 1, D, H, W) of the Jacobian of ``x -> x + u(x)``.

    Central differences inside, one-sided at the border. The determinant does not depend
    on voxel spacing, so the voxel field is enough. Values <= 0 mark folding.
    """
    grads = []
    for axis in range(3):
        grads.append(torch.gradient(displacement, dim=axis + 2)[0])
    # J[i][j] = d u_i / d x_j + delta_ij
    J = torch.stack(grads, dim=2)  # (B, 3 (i), 3 (j), D, H, W)
    eye = torch.eye(3, device=displacement.device, dtype=displacement.dtype)
    J = J + eye.view(1, 3, 3, 1, 1, 1)
    det = (
        J[:, 0, 0] * (J[:, 1, 1] * J[:, 2, 2] - J[:, 1, 2] * J[:, 2, 1])
        - J[:, 0, 1] * (J[:, 1, 0] * J[:, 2, 2] - J[:, 1, 2] * J[:, 2, 0])
        + J[:, 0, 2] * (J[:, 1, 0] * J[:, 2, 1] - J[:, 1, 1] * J[:, 2, 0])
    )
    return det.unsqueeze(1)
