"""Node grids on which the augmentation's smooth fields are computed.

Physical coordinates: a voxel with index ``x`` (D, H, W order) of an image with spacing
``s`` (mm) is at ``p = x * s``; the field of view spans ``[0, (n - 1) * s]`` per axis.
A :class:`NodeGrid` has ``shape`` nodes spanning exactly that extent, ``step`` mm apart,
plus ``margin`` extra nodes beyond each end (padding), so that fields needed slightly
outside the field of view (for the TPS inversion) are defined there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NodeGrid:
    """``shape`` nodes per axis over the field of view, ``step`` mm apart, and ``margin``
    extra nodes before the first and after the last on each axis."""

    shape: tuple[int, int, int]
    step: tuple[float, float, float]
    margin: tuple[int, int, int] = (0, 0, 0)

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        return tuple(n + 2 * m for n, m in zip(self.shape, self.margin, strict=True))

    def step_tensor(self) -> torch.Tensor:
        return torch.tensor(self.step, dtype=torch.float64)

    def points(self, padded: bool = False) -> torch.Tensor:
        """Node positions (P, 3) mm float64, ``meshgrid(indexing="ij")`` order."""
        axes = []
        for n, h, m in zip(self.shape, self.step, self.margin, strict=True):
            first, count = (-m, n + 2 * m) if padded else (0, n)
            axes.append((torch.arange(count, dtype=torch.float64) + first) * h)
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)

    def index(self, points_mm: torch.Tensor) -> torch.Tensor:
        """Positions (..., 3) mm -> padded node-index units."""
        margin = torch.tensor(self.margin, dtype=points_mm.dtype)
        return points_mm / self.step_tensor().to(points_mm.dtype) + margin

    def axis_positions(self, image_shape: Sequence[int], spacing: Sequence[float]
                       ) -> list[torch.Tensor]:
        """Per axis, the image's voxel centres in padded node-index units."""
        return [torch.arange(n, dtype=torch.float64) * s / h + m
                for n, s, h, m in zip(image_shape, spacing, self.step, self.margin, strict=True)]


def _check(shape: Sequence[int], spacing: Sequence[float]) -> None:
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError(f"shape and spacing need 3 entries, got {shape} and {spacing}")
    if any(int(n) < 2 for n in shape):
        raise ValueError(f"every axis needs at least 2 voxels, got {tuple(shape)}")
    if any(not (float(s) > 0 and math.isfinite(float(s))) for s in spacing):
        raise ValueError(f"spacing must be positive and finite, got {tuple(spacing)}")


def regular_grid(shape: Sequence[int], spacing: Sequence[float], nodes: Sequence[int],
                 margin_mm: float = 0.0, extra: int = 0, max_margin: int | None = None
                 ) -> NodeGrid:
    """``nodes`` per axis over the field of view of an image (``shape`` voxels of
    ``spacing`` mm), with ``ceil(margin_mm / step) + extra`` padding nodes (at most
    ``max_margin``) when ``margin_mm > 0`` or ``extra > 0``."""
    _check(shape, spacing)
    steps, margins = [], []
    for n, s, k in zip(shape, spacing, nodes, strict=True):
        if k < 2:
            raise ValueError("a node grid needs at least 2 nodes per axis")
        step = (int(n) - 1) * float(s) / (k - 1)
        steps.append(step)
        margin = math.ceil(margin_mm / step) + extra if (margin_mm > 0 or extra) else 0
        margins.append(margin if max_margin is None else min(margin, max_margin))
    return NodeGrid(tuple(int(k) for k in nodes), tuple(steps), tuple(margins))
