"""The inverse of a registration: the transform that maps the fixed image onto the moving
one, on the moving image's grid.

The forward transform maps a fixed world point ``p`` to the moving point
``phi(p) = P(p + d(p))`` (:mod:`ddmr.registration.native`). Its inverse takes a moving
point ``q`` to the ``p`` with ``p + d(p) = y``, ``y = P^-1 q``:

by fixed-point iteration ``p <- y - d(p)``, which converges while ``d`` contracts (no
folding, moderate gradients), at each moving voxel until it settles, started from
``p = y + e(y)``:

* in the engine's ``svf`` mode ``id + d = exp(v)``, and ``e = exp(-v) - id``
  (integrated by the engine) is the inverse up to the integration's error;
* otherwise ``e`` comes from the same iteration run on every other voxel of the grid of
  ``d`` (:func:`start_inverse`: fewer points, so most of the iterations cost less; the
  moving grid's pass iterates each voxel until it settles, so a start on the whole grid
  of ``d`` saved it less than it cost: benchmarks/RESULTS.md, issue 28).

The inverse displacement ``p - q`` (RAS mm) is given on the moving grid, with its error:
``|phi(p) - q|`` in voxels of the moving grid, over the moving voxels whose ``p`` falls
inside the fixed grid (the overlap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ddmr.spatial.grid import Geometry

if TYPE_CHECKING:
    from ddmr.spatial.displacement import Displacement, Transform

#: The most fixed-point iterations of the numerical inverse, and the mean change (mm) of
#: an iterate at which it stops (its error is measured, and reported, afterwards).
ITERATIONS = 30
TOLERANCE_MM = 1e-3
#: About how many moving-grid voxels are handled at once (whole rows of the first axis).
CHUNK = 1 << 18



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


def grid_inverse(field_mm: torch.Tensor, grid: Geometry) -> torch.Tensor:
    """The inverse of ``id + d`` on the grid of ``d`` (3, *grid.shape) mm: ``e`` (same
    shape, mm) with ``e(y) = -d(y + e(y))`` at the grid's points, by fixed-point
    iteration on the grid (border values beyond it), started from the same computed on
    every other voxel (recursively, down to 16 voxels an axis; with the compiled
    kernels, each voxel until it settles): a start for
    :func:`invert` that costs a grid's worth of samples per iteration, and few of them,
    instead of a moving image's."""
    from ddmr.registration.engine import GridComposition
    from ddmr.spatial import kernels
    from ddmr.spatial.displacement import Displacement, plain

    coarse = coarse_grid = None
    halved = _every_other_voxel(field_mm, grid)
    if halved is not None:
        coarse_grid = halved[1]
        coarse = grid_inverse(*halved)
    if kernels.available() and plain(field_mm):  # each voxel iterated until it settles
        to_index = grid.matrix("world", "index")
        inverse, _ = kernels.invert_grid(
            field_mm.contiguous().numpy(), to_index,
            None if coarse is None else coarse.numpy(),
            None if coarse is None else coarse_grid.matrix("world", "index"),
            grid.affine, grid.affine, to_index, grid.shape, np.eye(3), grid.shape,
            ITERATIONS, TOLERANCE_MM)
        return torch.from_numpy(inverse)
    inverse = -field_mm if coarse is None else Displacement(coarse, coarse_grid).on(grid)
    compose = GridComposition(grid)
    for _ in range(ITERATIONS):
        updated = compose(field_mm, inverse).neg_()
        change = float(inverse.sub_(updated).abs_().mean())  # (in place: one field less)
        inverse = updated
        if change < TOLERANCE_MM:
            break
    return inverse


def _every_other_voxel(field_mm: torch.Tensor, grid: Geometry
                       ) -> tuple[torch.Tensor, Geometry] | None:
    """A field (3, *grid.shape) on every other voxel of ``grid`` and that grid; None where
    ``grid`` has fewer than 32 voxels along an axis."""
    if min(grid.shape) < 32:
        return None
    halved = field_mm[:, ::2, ::2, ::2].contiguous()
    return halved, Geometry(grid.affine @ np.diag([2.0, 2.0, 2.0, 1.0]),
                            tuple(halved.shape[1:]))


def start_inverse(field_mm: torch.Tensor, grid: Geometry) -> Displacement:
    """A start for :func:`invert` of ``id + d``, ``d`` (3, *grid.shape) mm:
    :func:`grid_inverse` on every other voxel of ``grid`` (on ``grid`` itself where it is
    small)."""
    from ddmr.spatial.displacement import Displacement

    field_mm, grid = _every_other_voxel(field_mm, grid) or (field_mm, grid)
    return Displacement(grid_inverse(field_mm, grid).contiguous(), grid)


def invert(transform: Transform, fixed: Geometry, moving: Geometry,
           start: Displacement | None = None, method: str = "fixed point") -> Inverse:
    """The inverse (module docstring) of ``transform``, ``phi(p) = P(p + d(p))`` (without
    ``d``: the affine part alone, inverted exactly); ``start`` an approximate ``e``
    (``exp(-v)`` in svf mode, :func:`start_inverse` otherwise; None: ``-d``) from which
    the fixed-point iteration goes on until its mean change is below the tolerance (with
    the compiled kernels: until each point's mismatch is)."""
    from ddmr.spatial import kernels
    from ddmr.spatial.displacement import plain

    residual, forward_map = transform.residual, transform.point_map
    compiled = residual is not None and kernels.available() and \
        residual.beyond == "border" and plain(residual.field_mm)
    inverse_map = torch.from_numpy(np.linalg.inv(forward_map).astype(np.float32))
    # phi(p) - q = A (p + d(p) - y), A the point map's linear part: in moving voxels
    to_error = torch.from_numpy((moving.matrix("world", "index")[:3, :3] @ forward_map[:3, :3])
                                .astype(np.float32))
    to_fixed = torch.from_numpy(fixed.matrix("world", "index").astype(np.float32))
    size = int(np.prod(moving.shape))
    if compiled and (start is None or (start.beyond == "border" and plain(start.field_mm))):
        # one pass over the moving grid: each voxel iterated until it settles
        out, errors = kernels.invert_grid(
            residual.field_mm.numpy(), residual.grid.matrix("world", "index"),
            None if start is None else start.field_mm.contiguous().numpy(),
            None if start is None else start.grid.matrix("world", "index"),
            np.linalg.inv(forward_map) @ moving.affine, moving.affine,
            fixed.matrix("world", "index"), fixed.shape, to_error.numpy(), moving.shape,
            ITERATIONS, TOLERANCE_MM)
        inside = errors != -1.0
        return Inverse(out, method, *_error_statistics(errors[inside]),
                       int(np.count_nonzero(inside)) / size)
    out = np.empty((3, size), dtype=np.float32)
    errors = np.empty(size, dtype=np.float32)  # of the voxels inside, in order
    inside_total = 0
    row = moving.shape[1] * moving.shape[2]
    step = max(1, CHUNK // row)
    for first in range(0, moving.shape[0], step):
        rows = slice(first, min(first + step, moving.shape[0]))
        begin, stop = rows.start * row, rows.stop * row
        q = moving.points(rows=rows).reshape(3, -1)  # world points of whole rows
        y = inverse_map[:3, :3] @ q + inverse_map[:3, 3:4]
        if residual is None:  # P^-1 exactly
            p, mismatch = y, torch.zeros_like(y)
        elif compiled:  # each point iterated until it settles, in one pass
            p = y + start(y) if start is not None else y - residual(y)
            p, mismatch = (torch.from_numpy(a) for a in kernels.fixed_point(
                residual.field_mm.numpy(), residual.grid.matrix("world", "index"), y.numpy(),
                p.numpy(), ITERATIONS, TOLERANCE_MM))
        else:
            p = y + start(y) if start is not None else y - residual(y)
            for iteration in range(ITERATIONS + 1):
                moved = residual(p)
                mismatch = moved.add_(p).sub_(y)  # p + d(p) - y: zero at the inverse
                if float(mismatch.abs().mean()) < TOLERANCE_MM or iteration == ITERATIONS:
                    break
                p = p - mismatch  # y - d(p)
        out[:, begin:stop] = (p - q).numpy()
        index = to_fixed[:3, :3] @ p + to_fixed[:3, 3:4]
        inside = torch.ones(p.shape[1], dtype=torch.bool)
        for axis, n in enumerate(fixed.shape):
            inside &= (index[axis] >= -0.5) & (index[axis] <= n - 0.5)
        count = int(inside.sum())
        if count:
            error = to_error @ mismatch[:, inside]
            errors[inside_total:inside_total + count] = \
                error.square_().sum(dim=0).sqrt_().numpy()  # (norm(dim=0): slow)
        inside_total += count
    return Inverse(out.reshape(3, *moving.shape), method,
                   *_error_statistics(errors[:inside_total]), inside_total / size)


def _error_statistics(error: np.ndarray) -> tuple[float, float, float]:
    """Mean, 95th percentile and largest of the finite values of ``error`` (n,) (a
    scratch array: reordered), NaN for none."""
    error = error[np.isfinite(error)] if not np.isfinite(error).all() else error
    if not error.size:
        return (float("nan"),) * 3
    return (float(error.mean(dtype=np.float64)),
            float(np.percentile(error, 95, overwrite_input=True)), float(error.max()))
