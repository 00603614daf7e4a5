"""Rigid transforms in physical (mm) space: rotation matrices and random draws.

Axes are the array axes (D, H, W) scaled by the voxel spacing, so a physical point is
``p = index * spacing`` (mm). The rotation is ``R = R0(a0) @ R1(a1) @ R2(a2)`` where
``Rk(a)`` turns by ``a`` degrees about axis k, right-handed in (D, H, W) order (the
intrinsic "XYZ" Euler convention with x = D, y = H, z = W).
"""

from __future__ import annotations

import torch


def _axis_rotation(angle_rad: torch.Tensor, axis: int) -> torch.Tensor:
    c, s = torch.cos(angle_rad), torch.sin(angle_rad)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    rot = torch.eye(3, dtype=angle_rad.dtype).repeat(*angle_rad.shape, 1, 1)
    rot[..., i, i] = c
    rot[..., i, j] = -s
    rot[..., j, i] = s
    rot[..., j, j] = c
    return rot


def rotation_matrix(angles_deg: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) from Euler angles (..., 3) in degrees, one per axis."""
    angles = torch.deg2rad(torch.as_tensor(angles_deg, dtype=torch.float64))
    return (_axis_rotation(angles[..., 0], 0) @ _axis_rotation(angles[..., 1], 1)
            @ _axis_rotation(angles[..., 2], 2))


def draw_uniform(batch: int, bound: float, generator: torch.Generator) -> torch.Tensor:
    """(batch, 3) float64 values uniform in [-bound, bound] (angles or translations)."""
    u = torch.rand(batch, 3, generator=generator, dtype=torch.float64,
                   device=generator.device).cpu()
    return (2 * u - 1) * bound
