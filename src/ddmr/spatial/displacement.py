"""A displacement field as a value: RAS mm vectors on a grid, read at world points.

:class:`Displacement` holds ``field_mm`` (3, *grid.shape) float32, RAS mm, on ``grid``
(:class:`~ddmr.spatial.grid.Geometry`): a world point ``p`` of the grid goes to ``p +
d(p)`` (:mod:`ddmr.spatial.field` states the convention). It is read at any world points
with trilinear interpolation and the rule beyond the grid that the value states
(``beyond``):

* ``"border"``: the border values continue (the engine, its start and its inverse);
* ``"zero"``: the edge values up to half a voxel beyond the grid, no displacement
  further out, as ITK's and ANTs' displacement field transforms read a field file
  (``ddmr apply`` and the evaluation of saved fields).

Fields change units only at the edges: :meth:`Displacement.from_voxels` takes a field in
voxels of its grid (a network's output, a file's), and everything after it works in mm.

:class:`Transform` is a whole registration, ``phi(p) = P(p + d(p))``: the affine part
``P`` (4, 4) RAS, fixed world -> moving world, after the displacement ``d`` (or none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ddmr.spatial import kernels
from ddmr.spatial.grid import Geometry, affine_volume

Beyond = Literal["border", "zero"]


@dataclass(frozen=True)
class Displacement:
    """``field_mm`` (3, *grid.shape) float32 RAS mm on ``grid`` (an array is taken as a
    tensor), read at world points with the rule ``beyond`` the grid (module docstring)."""

    field_mm: torch.Tensor
    grid: Geometry
    beyond: Beyond = "border"

    def __post_init__(self) -> None:
        if isinstance(self.field_mm, np.ndarray):
            object.__setattr__(self, "field_mm", torch.from_numpy(
                np.ascontiguousarray(self.field_mm, dtype=np.float32)))
        if tuple(self.field_mm.shape) != (3, *self.grid.shape):
            raise ValueError(f"field must be (3, {', '.join(map(str, self.grid.shape))}), "
                             f"got {tuple(self.field_mm.shape)}")
        if self.beyond not in ("border", "zero"):
            raise ValueError(f"beyond must be 'border' or 'zero', got {self.beyond!r}")

    @classmethod
    def from_voxels(cls, voxels: torch.Tensor | np.ndarray, grid: Geometry,
                    beyond: Beyond = "border") -> Displacement:
        """A field (3, *grid.shape) in voxels of ``grid`` (channels i, j, k) as mm."""
        from ddmr.spatial.field import voxels_to_mm

        if isinstance(voxels, np.ndarray):
            voxels = torch.from_numpy(np.ascontiguousarray(voxels, dtype=np.float32))
        return cls(voxels_to_mm(voxels, grid).contiguous(), grid, beyond)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """``d`` at world points (3, ...) RAS mm: (3, ...) float32 (a float64 ``points``
        is mapped to the grid in float64)."""
        if self.beyond == "zero":
            return self._zero_beyond(points)
        if kernels.available() and plain(self.field_mm) and plain(points):
            return torch.from_numpy(kernels.sample_points(
                self.field_mm.numpy(), points.reshape(3, -1).numpy(),
                self.grid.matrix("world", "index"))).reshape(3, *points.shape[1:])
        from ddmr.spatial.warp import grid_sample_3d

        to_sampling = self.grid.matrix("world", "sampling")
        linear = torch.from_numpy(to_sampling[:3, :3].astype(np.float32))
        offset = torch.from_numpy(to_sampling[:3, 3].astype(np.float32))
        where = channels_last_product(linear, points.reshape(3, 1, 1, -1).float())
        out = grid_sample_3d(self.field_mm[None], where.add_(offset)[None])
        return out.reshape(3, *points.shape[1:])

    def moved(self, points: np.ndarray) -> np.ndarray:
        """Where world points (n, 3) RAS mm go, ``p + d(p)``: (n, 3) float64."""
        points = np.asarray(points, dtype=np.float64)
        return points + self(torch.from_numpy(np.ascontiguousarray(points.T))).numpy().T

    def _zero_beyond(self, points: torch.Tensor) -> torch.Tensor:
        from ddmr.spatial.warp import sample_image

        flat = points.reshape(3, -1).to(torch.float64).numpy()
        to_index = self.grid.matrix("world", "index")
        index = torch.from_numpy((to_index[:3, :3] @ flat + to_index[:3, 3:4])
                                 .astype(np.float32))
        out = torch.empty((3, flat.shape[1]), dtype=torch.float32)
        for axis in range(3):
            out[axis] = sample_image(self.field_mm[axis][None, None].float(), index)
        return out.reshape(3, *points.shape[1:])

    def on(self, target: Geometry) -> torch.Tensor:
        """The field at the voxels of ``target`` (border values beyond the grid):
        (3, *target.shape) mm, without a volume of world points."""
        from ddmr.spatial.warp import grid_sample_3d

        if self.beyond != "border":
            raise ValueError("Displacement.on reads the border rule only")
        if kernels.available() and plain(self.field_mm):
            to_index = self.grid.matrix("world", "index") @ target.affine
            return torch.from_numpy(kernels.sample_grid(
                self.field_mm.contiguous().numpy(), to_index, target.shape))
        to_sampling = self.grid.matrix("world", "sampling") @ target.affine
        coordinates = affine_volume(to_sampling, target.shape, channels_last=True)
        return grid_sample_3d(self.field_mm[None], coordinates[None])[0]


@dataclass(frozen=True)
class Transform:
    """``phi(p) = P(p + d(p))``: ``point_map`` ``P`` (4, 4) float64 RAS mm (fixed world ->
    moving world) after ``residual`` ``d`` (None: the affine part alone)."""

    point_map: np.ndarray
    residual: Displacement | None = None

    def __post_init__(self) -> None:
        matrix = np.array(self.point_map, dtype=np.float64)
        if matrix.shape != (4, 4):
            raise ValueError(f"point_map must be 4x4, got {matrix.shape}")
        matrix.setflags(write=False)
        object.__setattr__(self, "point_map", matrix)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """``phi`` at world points (3, ...) RAS mm: (3, ...) float32."""
        flat = points.reshape(3, -1).float()
        if self.residual is not None:
            flat = flat + self.residual(flat)
        linear = torch.from_numpy(self.point_map[:3, :3].astype(np.float32))
        offset = torch.from_numpy(self.point_map[:3, 3:].astype(np.float32))
        return (linear @ flat + offset).reshape(points.shape)


def plain(tensor: torch.Tensor) -> bool:
    """Whether the compiled kernels can read ``tensor``: on the CPU, outside autograd."""
    return tensor.device.type == "cpu" and not tensor.requires_grad


def channels_last_product(linear: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``linear`` (3, 3) applied to vectors (3, *S): (*S, 3), channels last (the layout
    ``grid_sample`` takes), in one matrix product without copies of ``vectors``."""
    return (vectors.reshape(3, -1).T @ linear.T).reshape(*vectors.shape[1:], 3)
