"""The inverse of a registration: the transform that maps the fixed image onto the moving
one, on the moving image's grid.

The forward transform maps a fixed world point ``p`` to the moving point
``phi(p) = P(p + d(p))`` (:mod:`ddmr.registration.native`). Its inverse takes a moving
point ``q`` to the ``p`` with ``p + d(p) = y``, ``y = P^-1 q``:

* in the engine's ``svf`` mode ``id + d = exp(v)``, so ``p = y + e(y)`` with
  ``e = exp(-v) - id`` (integrated by the engine);
* otherwise by fixed-point iteration ``p <- y - d(p)`` from ``p = y - d(y)``, which
  converges while ``d`` contracts (no folding, moderate gradients).

The inverse displacement ``p - q`` (RAS mm) is given on the moving grid, with its error:
``|phi(p) - q|`` in voxels of the moving grid, over the moving voxels whose ``p`` falls
inside the fixed grid (the overlap).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ddmr.spatial.grid import Geometry

#: The most fixed-point iterations of the numerical inverse, and the mean change (mm) of
#: an iterate at which it stops (its error is measured, and reported, afterwards).
ITERATIONS = 30
TOLERANCE_MM = 1e-3
#: Moving-grid voxels handled at once.
CHUNK = 1 << 20

Sampler = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Inverse:
    """displacement_mm: (3, *moving.shape) float32 RAS mm, ``p - q``; method: ``exp(-v)``
    or ``fixed point``; error_mean / error_p95 / error_max: ``|phi(p) - q|`` in moving
    voxels inside the overlap (NaN without overlap); overlap_fraction: of moving voxels."""

    displacement_mm: np.ndarray
    method: str
    error_mean: float
    error_p95: float
    error_max: float
    overlap_fraction: float

    def summary(self) -> dict[str, float | str]:
        return {"method": self.method, "error_mean_voxels": self.error_mean,
                "error_p95_voxels": self.error_p95, "error_max_voxels": self.error_max,
                "overlap_fraction": self.overlap_fraction,
                "meaning": "inverse_displacement.nii.gz: on the moving grid, LPS mm, maps "
                           "moving points to fixed points"}


def _points(geometry: Geometry, start: int, stop: int) -> torch.Tensor:
    """World points (3, n) of the flat voxel range [start, stop) of ``geometry``."""
    flat = torch.arange(start, stop, dtype=torch.int64)
    _, j_size, k_size = geometry.shape
    index = torch.stack([flat // (j_size * k_size), (flat // k_size) % j_size, flat % k_size])
    affine = torch.from_numpy(geometry.affine.astype(np.float64))
    return (affine[:3, :3] @ index.double() + affine[:3, 3:4]).float()


def invert(residual: Sampler, point_map: np.ndarray, fixed: Geometry, moving: Geometry,
           inverse_residual: Sampler | None = None) -> Inverse:
    """The inverse (module docstring) of ``phi(p) = P(p + d(p))``: ``residual(points)``
    gives ``d`` (mm) at world points (3, n); ``inverse_residual`` gives ``e`` when the
    transform is ``exp(v)`` (svf)."""
    inverse_map = torch.from_numpy(np.linalg.inv(point_map).astype(np.float32))
    forward_map = torch.from_numpy(np.asarray(point_map, dtype=np.float32))
    to_moving = torch.from_numpy(np.linalg.inv(moving.affine).astype(np.float32))
    to_fixed = torch.from_numpy(np.linalg.inv(fixed.affine).astype(np.float32))
    size = int(np.prod(moving.shape))
    out = np.empty((3, size), dtype=np.float32)
    errors, inside_total = [], 0
    for start in range(0, size, CHUNK):
        stop = min(start + CHUNK, size)
        q = _points(moving, start, stop)
        y = inverse_map[:3, :3] @ q + inverse_map[:3, 3:4]
        if inverse_residual is not None:
            p = y + inverse_residual(y)
        else:
            p = y - residual(y)
            for _ in range(ITERATIONS):
                updated = y - residual(p)
                change = float((updated - p).abs().mean())
                p = updated
                if change < TOLERANCE_MM:
                    break
        out[:, start:stop] = (p - q).numpy()
        index = to_fixed[:3, :3] @ p + to_fixed[:3, 3:4]
        inside = torch.ones(p.shape[1], dtype=torch.bool)
        for axis, n in enumerate(fixed.shape):
            inside &= (index[axis] >= -0.5) & (index[axis] <= n - 0.5)
        inside_total += int(inside.sum())
        if inside.any():
            mapped = forward_map[:3, :3] @ (p[:, inside] + residual(p[:, inside])) \
                + forward_map[:3, 3:4]
            error = (to_moving[:3, :3] @ (mapped - q[:, inside])).norm(dim=0)
            errors.append(error.numpy())
    error = np.concatenate(errors) if errors else np.array([np.nan])
    error = error[np.isfinite(error)]
    stats = ((float(error.mean()), float(np.percentile(error, 95)), float(error.max()))
             if error.size else (float("nan"),) * 3)
    return Inverse(out.reshape(3, *moving.shape),
                   "exp(-v)" if inverse_residual is not None else "fixed point", *stats,
                   inside_total / size)
