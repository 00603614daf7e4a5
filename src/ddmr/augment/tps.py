"""Thin plate splines (TPS) in 3D and random control-point displacements.

A thin plate spline interpolating values ``v_i`` at centres ``c_i`` is

    f(x) = sum_i w_i U(|x - c_i|) + a_0 + a^T x,

with ``sum_i w_i = 0`` and ``sum_i w_i c_i = 0``. Two radial kernels are offered:
``"r2logr"``, ``U(r) = r^2 log r`` (the thin-plate kernel, default), and ``"r"``,
``U(r) = r`` (the biharmonic Green's function in 3D, which minimises the 3D bending
energy but has a cone-shaped cusp at every centre). The default is the smoother one
because the augmentation inverts the spline numerically on a coarse grid and cusps
make that inversion less accurate. All computations are float64 on the CPU (the
systems are small); callers
move results to their device. Coordinates are in mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

Kernel = Literal["r2logr", "r"]


def radial_kernel(distance: torch.Tensor, kernel: Kernel = "r2logr") -> torch.Tensor:
    """``U(r)`` of the thin plate spline, elementwise (``0 log 0 = 0``)."""
    if kernel == "r":
        return distance
    if kernel == "r2logr":
        safe = distance.clamp_min(torch.finfo(distance.dtype).tiny)
        return torch.where(distance > 0, distance.square() * torch.log(safe),
                           torch.zeros_like(distance))
    raise ValueError(f"unknown TPS kernel {kernel!r}")


def control_grid(extent_mm: Sequence[float], points_per_axis: int) -> torch.Tensor:
    """Regular control grid (N**3, 3) float64 spanning ``[0, extent]`` mm on each axis,
    corners included, ordered like ``meshgrid(indexing="ij")``."""
    axes = [torch.linspace(0.0, float(e), points_per_axis, dtype=torch.float64)
            for e in extent_mm]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def border_mask(points_per_axis: int) -> torch.Tensor:
    """(N**3,) bool: True for control points on the outer ring (a face of the grid)."""
    n = points_per_axis
    idx = torch.stack(torch.meshgrid(*[torch.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return ((idx == 0) | (idx == n - 1)).any(dim=1)


def draw_control_displacements(batch: int, n_points: int, bound: float,
                               generator: torch.Generator) -> torch.Tensor:
    """(batch, n_points, 3) float64 displacements uniform in the ball of radius ``bound``
    (mm): uniform direction, radius ``bound * U**(1/3)``, so each norm is at most ``bound``."""
    dev = generator.device
    direction = torch.randn(batch, n_points, 3, generator=generator, dtype=torch.float64,
                            device=dev).cpu()
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    radius = torch.rand(batch, n_points, 1, generator=generator, dtype=torch.float64,
                        device=dev).cpu().pow(1.0 / 3.0)
    return direction * radius * bound


class ThinPlateSpline:
    """A 3D TPS with fixed centres and evaluation points, for many value sets.

    centres: (M, 3) mm; points: (P, 3) mm where it will be evaluated. The system matrix
    is factorised once (float64) and the evaluation operator (P, M + 4) is built once
    (stored in ``dtype``; float32 halves its memory), so each :meth:`evaluate` costs one
    small solve and one (P, M + 4) x (M + 4, C) product.
    """

    def __init__(self, centres: torch.Tensor, points: torch.Tensor,
                 kernel: Kernel = "r2logr", dtype: torch.dtype = torch.float64) -> None:
        centres = torch.as_tensor(centres, dtype=torch.float64)
        points = torch.as_tensor(points, dtype=torch.float64)
        if centres.ndim != 2 or centres.shape[1] != 3 or centres.shape[0] < 4:
            raise ValueError(f"centres must be (M >= 4, 3), got {tuple(centres.shape)}")
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"points must be (P, 3), got {tuple(points.shape)}")
        # Normalise coordinates for conditioning; the interpolant does not change (a
        # change of scale adds a multiple of r^2 = |x|^2 - 2 c.x + |c|^2 to r^2 log r, which
        # the side conditions cancel, and merely scales r).
        self._origin = centres.mean(dim=0)
        self._scale = float((centres - self._origin).abs().max().clamp_min(1e-12))
        c = (centres - self._origin) / self._scale
        x = (points - self._origin) / self._scale
        m = c.shape[0]
        system = torch.zeros(m + 4, m + 4, dtype=torch.float64)
        dist = torch.cdist(c, c, compute_mode="donot_use_mm_for_euclid_dist")
        system[:m, :m] = radial_kernel(dist, kernel)
        system[:m, m] = 1.0
        system[:m, m + 1:] = c
        system[m, :m] = 1.0
        system[m + 1:, :m] = c.T
        self._lu, self._pivots = torch.linalg.lu_factor(system)
        self.centres = centres
        self.points = points
        # built in float64 (r^2 log r in float32 costs ~1e-3 mm), stored in ``dtype``
        self.operator = torch.cat(
            [radial_kernel(torch.cdist(x, c, compute_mode="donot_use_mm_for_euclid_dist"), kernel),
             torch.ones(x.shape[0], 1, dtype=torch.float64), x], dim=1).to(dtype)

    def coefficients(self, values: torch.Tensor) -> torch.Tensor:
        """Kernel weights and affine part (M + 4, C) interpolating ``values`` (M, C)."""
        values = torch.as_tensor(values, dtype=torch.float64)
        m = self.centres.shape[0]
        if values.ndim != 2 or values.shape[0] != m:
            raise ValueError(f"values must be ({m}, C), got {tuple(values.shape)}")
        rhs = torch.cat([values, values.new_zeros(4, values.shape[1])], dim=0)
        return torch.linalg.lu_solve(self._lu, self._pivots, rhs)

    def evaluate(self, values: torch.Tensor) -> torch.Tensor:
        """The TPS interpolating ``values`` (M, C) at the centres, evaluated at the
        points: (P, C) float64."""
        coefficients = self.coefficients(values).to(self.operator.dtype)
        return (self.operator @ coefficients).to(torch.float64)


def thin_plate_spline(centres: torch.Tensor, values: torch.Tensor, points: torch.Tensor,
                      kernel: Kernel = "r2logr") -> torch.Tensor:
    """One-off TPS: interpolate ``values`` (M, C) given at ``centres`` (M, 3) and evaluate
    it at ``points`` (P, 3). Returns (P, C) float64."""
    return ThinPlateSpline(centres, points, kernel).evaluate(values)
