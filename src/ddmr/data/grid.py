"""The prepared grid: an axis-aligned (RAS), isotropic cube placed over a world box.

Every prepared volume lives on a grid whose axes i, j, k run along world R, A, S, so
volumes from scanners with different orientations (oblique, LPS, ...) all look the same
way round to the network. The grid is chosen from a world box (the whole image, or a
crop around a label plus a margin) and a resize mode:

``fit`` (default)
    spacing ``max(spacing, longest box side / size)``: the requested spacing unless the
    box would not fit in ``size`` voxels, then coarser, so nothing inside the box is lost.
``scale``
    spacing ``longest box side / size``: the box fills the grid along its longest side
    (as the paper resized every volume to 128^3), whatever ``spacing`` says.
``pad``
    exactly ``spacing``: the grid is centred on the box and crops or pads it.

Shorter box sides are padded symmetrically in all modes.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ddmr.io import Geometry

RESIZE_MODES = ("fit", "scale", "pad")

Box = tuple[np.ndarray, np.ndarray]  # (low corner, high corner), RAS mm


def image_box(geometry: Geometry) -> Box:
    """World bounding box (RAS mm) of the whole grid, to the outer voxel edges."""
    corners = geometry.world_corners()
    return corners.min(axis=0), corners.max(axis=0)


def mask_box(mask: np.ndarray, geometry: Geometry, margin: float = 0.0) -> Box | None:
    """World bounding box of the voxels where ``mask`` (I, J, K) is true, grown by
    ``margin`` mm on every side; ``None`` for an empty mask."""
    where = np.nonzero(mask)
    if len(where[0]) == 0:
        return None
    lo = np.array([w.min() for w in where], dtype=np.float64) - 0.5
    hi = np.array([w.max() for w in where], dtype=np.float64) + 0.5
    corners = np.array([[(hi if b else lo)[a] for a, b in enumerate(bits)]
                        for bits in np.ndindex(2, 2, 2)])
    world = geometry.index_to_world(corners)
    return world.min(axis=0) - margin, world.max(axis=0) + margin


def intersect(a: Box, b: Box) -> Box:
    return np.maximum(a[0], b[0]), np.minimum(a[1], b[1])


def grid_spacing(box: Box, size: Iterable[int], spacing: float, mode: str = "fit") -> float:
    """Isotropic voxel size (mm) of the prepared grid for ``box`` (see module docstring)."""
    extent = np.maximum(box[1] - box[0], 0.0)
    needed = float(np.max(extent / np.asarray(tuple(size), dtype=np.float64)))
    if mode == "fit":
        return max(float(spacing), needed)
    if mode == "scale":
        return needed if needed > 0 else float(spacing)
    if mode == "pad":
        return float(spacing)
    raise ValueError(f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")


def target_grid(box: Box, size: Iterable[int], spacing: float, mode: str = "fit") -> Geometry:
    """The RAS-aligned grid of ``size`` voxels centred on ``box``."""
    size = tuple(int(n) for n in size)
    step = grid_spacing(box, size, spacing, mode)
    centre = (box[0] + box[1]) / 2.0
    affine = np.diag([step, step, step, 1.0])
    affine[:3, 3] = centre - (np.asarray(size, dtype=np.float64) - 1.0) / 2.0 * step
    return Geometry(affine, size)
