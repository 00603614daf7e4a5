"""Grids in world space: :class:`Geometry` and every frame a point can be given in.

* **index** (i, j, k): voxel indices of an array ``array[i, j, k]`` in the file's voxel
  order; ddmr tensors (B, C, D, H, W) use D, H, W = i, j, k.
* **world** (RAS mm): ``Geometry.affine`` maps an index to a world point, nibabel's
  convention. SimpleITK and ANTs describe the same grid in **LPS** (origin, spacing,
  direction): :meth:`Geometry.to_itk` / :meth:`Geometry.from_itk` convert.
* **normalised** ([-1, 1], last axis first): what ``torch.nn.functional.grid_sample``
  takes with ``align_corners=True`` (:func:`normalised`).

Every frame-to-frame matrix of a grid comes from one method, :meth:`Geometry.matrix`
(``"index"``, ``"world"``, ``"itk"``, ``"sampling"``); the inverse of the affine is
computed once per grid.

Grids derived from others: :func:`resized_grid` (the same extent with another number of
voxels, first and last voxel centres kept: "aligned corners"), :func:`target_grid` (an
RAS-aligned isotropic grid over a world box: how ``ddmr prepare`` places its volumes).

The prepared grid (:func:`target_grid`) is an axis-aligned (RAS), isotropic grid placed
over a world box, so volumes from scanners with different orientations (oblique, LPS,
...) all look the same way round to a network. The box is the whole image or a crop
around a label plus a margin; the resize mode picks the spacing:

``fit`` (default)
    ``max(spacing, longest box side / size)``: the requested spacing unless the box would
    not fit in ``size`` voxels, then coarser, so nothing inside the box is lost.
``scale``
    ``longest box side / size``: the box fills the grid along its longest side (as the
    paper resized every volume to 128^3), whatever ``spacing`` says.
``pad``
    exactly ``spacing``: the grid is centred on the box and crops or pads it.

Shorter box sides are padded symmetrically in all modes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ddmr.errors import InputError

Box = tuple[np.ndarray, np.ndarray]  # (low corner, high corner), RAS mm

if TYPE_CHECKING:
    import torch

PathLike = str | os.PathLike[str]


#: RAS <-> LPS: flip the first two world axes.
LPS_FLIP = np.diag([-1.0, -1.0, 1.0])

#: The frames of :meth:`Geometry.matrix`.
FRAMES = ("index", "world", "itk", "sampling")

#: Default tolerance (mm) when comparing two geometries' affines.
AFFINE_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Geometry:
    """A voxel grid in world space.

    ``affine`` (4, 4) float64 maps a voxel index (i, j, k, 1) to RAS world mm (nibabel
    convention); ``shape`` is the grid size (I, J, K).
    """

    affine: np.ndarray
    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        affine = np.array(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {affine.shape}")
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 3:
            raise ValueError(f"shape must have 3 entries, got {shape}")
        affine.setflags(write=False)
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "shape", shape)

    # -- frames -------------------------------------------------------------------------
    @cached_property
    def _from_index(self) -> dict[str, np.ndarray]:
        """(4, 4) float64 maps from a voxel index to each frame of :data:`FRAMES`."""
        lps = np.eye(4)
        lps[:3, :3] = LPS_FLIP
        matrices = {"index": np.eye(4), "world": self.affine, "itk": lps @ self.affine,
                    "sampling": sampling_matrix(self.shape)}
        return {frame: _frozen(matrix) for frame, matrix in matrices.items()}

    @cached_property
    def _to_index(self) -> dict[str, np.ndarray]:
        """The inverses of :attr:`_from_index`, each computed once."""
        return {frame: _frozen(np.linalg.inv(matrix))
                for frame, matrix in self._from_index.items()}

    def matrix(self, source: str, target: str) -> np.ndarray:
        """(4, 4) float64 (read-only): a point of this grid given in frame ``source`` ->
        the same point in frame ``target``; frames are ``index`` (i, j, k), ``world`` (RAS
        mm), ``itk`` (LPS mm) and ``sampling`` (``grid_sample``'s [-1, 1], x = k first)."""
        for frame in (source, target):
            if frame not in FRAMES:
                raise ValueError(f"unknown frame {frame!r}; frames are {', '.join(FRAMES)}")
        if source == "index":
            return self._from_index[target]
        if target == "index":
            return self._to_index[source]
        return _frozen(self._from_index[target] @ self._to_index[source])

    def points(self, frame: str = "world", channels_last: bool = False,
               dtype: torch.dtype | None = None, rows: slice | None = None) -> torch.Tensor:
        """The voxel centres of this grid in ``frame`` (:meth:`matrix`): (3, I, J, K)
        (``channels_last``: (I, J, K, 3)), float32 unless ``dtype``, computed in float64;
        only the first axis' ``rows`` when given."""
        return affine_volume(self.matrix("index", frame), self.shape, channels_last, dtype,
                             rows)

    # -- derived quantities (RAS) ------------------------------------------------------
    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along i, j, k."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def direction(self) -> np.ndarray:
        """(3, 3) unit column vectors of the i, j, k axes in RAS."""
        return self.affine[:3, :3] / np.asarray(self.spacing)[None, :]

    @property
    def origin(self) -> np.ndarray:
        """RAS world position (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        return self.shape == other.shape and np.array_equal(self.affine, other.affine)

    def __hash__(self) -> int:
        return hash((self.shape, self.affine.tobytes()))

    def __repr__(self) -> str:
        spacing = ", ".join(f"{s:.4g}" for s in self.spacing)
        return f"Geometry(shape={self.shape}, spacing=({spacing}))"

    def isclose(self, other: Geometry, tolerance: float = AFFINE_TOLERANCE) -> bool:
        """Same shape and affines equal within ``tolerance`` (mm, elementwise)."""
        return self.shape == other.shape and bool(
            np.max(np.abs(self.affine - other.affine)) <= tolerance
        )

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """Map voxel indices (..., 3) to RAS world points (..., 3) in mm."""
        index = np.asarray(index, dtype=np.float64)
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """Map RAS world points (..., 3) in mm to (fractional) voxel indices (..., 3)."""
        inverse = self.matrix("world", "index")
        points = np.asarray(points, dtype=np.float64)
        return points @ inverse[:3, :3].T + inverse[:3, 3]

    def world_corners(self) -> np.ndarray:
        """(8, 3) RAS positions of the grid's outer corners (voxel edges, not centres)."""
        lo = np.full(3, -0.5)
        hi = np.asarray(self.shape, dtype=np.float64) - 0.5
        corners = np.array(
            [[(hi if b else lo)[a] for a, b in enumerate(bits)]
             for bits in np.ndindex(2, 2, 2)]
        )
        return self.index_to_world(corners)

    # -- ITK / ANTs (LPS) ----------------------------------------------------------------
    def to_itk(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        """``(origin, spacing, direction)`` in ITK's LPS convention.

        ``direction`` is the row-major flattening of the (3, 3) matrix whose columns are
        the i, j, k axes in LPS, as ``SimpleITK.Image.SetDirection`` expects.
        """
        origin = LPS_FLIP @ self.affine[:3, 3]
        direction = LPS_FLIP @ self.direction
        return (tuple(float(v) for v in origin), self.spacing,
                tuple(float(v) for v in direction.ravel()))

    @classmethod
    def from_itk(cls, origin: Sequence[float], spacing: Sequence[float],
                 direction: Sequence[float], shape: Sequence[int]) -> Geometry:
        """Build from ITK's LPS ``origin``, ``spacing``, flat row-major ``direction`` and
        grid size (I, J, K)."""
        matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = LPS_FLIP @ matrix @ np.diag(np.asarray(spacing, dtype=np.float64))
        affine[:3, 3] = LPS_FLIP @ np.asarray(origin, dtype=np.float64)
        return cls(affine, tuple(int(n) for n in shape))


def _frozen(matrix: np.ndarray) -> np.ndarray:
    matrix.setflags(write=False)
    return matrix


def check_geometry(geometry: Geometry, path: PathLike) -> None:
    """Raise :class:`InputError` if the grid has non-finite or non-positive spacing."""
    if not np.all(np.isfinite(geometry.affine)):
        raise InputError(f"{path}: the affine (voxel-to-world matrix) has NaN or Inf entries")
    spacing = np.asarray(geometry.spacing)
    if np.any(spacing <= 0) or abs(np.linalg.det(geometry.affine[:3, :3])) <= 1e-12:
        raise InputError(
            f"{path}: voxel spacing must be positive, got "
            f"({', '.join(f'{s:g}' for s in spacing)}) mm"
        )
    if any(n < 1 for n in geometry.shape):
        raise InputError(f"{path}: empty image of shape {geometry.shape}")


def check_same_geometry(a: Geometry, b: Geometry, names: Sequence[PathLike],
                        tolerance: float = AFFINE_TOLERANCE) -> None:
    """Raise :class:`InputError` unless ``a`` and ``b`` are the same grid.

    ``names`` are the two files (image, labels); the message names the second.
    Affines may differ elementwise by ``tolerance`` (mm).
    """
    first, second = (str(n) for n in names)
    if a.shape != b.shape:
        raise InputError(
            f"{second}: shape {b.shape} differs from {first} shape {a.shape}"
        )
    difference = float(np.max(np.abs(a.affine - b.affine)))
    if not difference <= tolerance:
        raise InputError(
            f"{second}: voxel-to-world affine differs from {first} "
            f"(largest difference {difference:.3g} mm)"
        )


RESIZE_MODES = ("fit", "scale", "pad")




def image_box(geometry: Geometry) -> Box:
    """World bounding box (RAS mm) of the whole grid, to the outer voxel edges."""
    corners = geometry.world_corners()
    return corners.min(axis=0), corners.max(axis=0)


def index_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The index bounding box of the voxels where ``mask`` (I, J, K) is true, one slice
    per axis, from the mask's projections (no array of indices); ``None`` when empty."""
    box = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim)
                                                     if a != axis)))
        if present.size == 0:
            return None
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def mask_box(mask: np.ndarray, geometry: Geometry, margin: float = 0.0) -> Box | None:
    """World bounding box of the voxels where ``mask`` (I, J, K) is true, grown by
    ``margin`` mm on every side; ``None`` for an empty mask."""
    box = index_box(mask)
    if box is None:
        return None
    lo = np.array([b.start for b in box], dtype=np.float64) - 0.5
    hi = np.array([b.stop - 1 for b in box], dtype=np.float64) + 0.5
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


def resized_grid(geometry: Geometry, shape: tuple[int, int, int]) -> Geometry:
    """``geometry`` resized to ``shape`` voxels with the first and last voxel centres kept
    (aligned corners, as ``F.interpolate(..., align_corners=True)``)."""
    affine = geometry.affine.copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag(corner_scale(geometry.shape, shape))
    return Geometry(affine, shape)


def corner_scale(old: Sequence[int], new: Sequence[int]) -> list[float]:
    """Per axis, the old grid's voxel size in voxels of the new one, both spanning the
    same extent with aligned corners: ``(old - 1) / (new - 1)`` (1 for a single voxel)."""
    return [(int(o) - 1) / max(int(n) - 1, 1) for o, n in zip(old, new, strict=True)]


def resized_spacing(spacing: Sequence[float], shape: Sequence[int], new_shape: Sequence[int]
                    ) -> tuple[float, float, float]:
    """Voxel size (mm) after resizing a grid of ``shape`` with voxels of ``spacing`` to
    ``new_shape`` over the same extent, corners aligned."""
    return tuple(float(s) * (n - 1) / max(m - 1, 1)
                 for s, n, m in zip(spacing, shape, new_shape, strict=True))


def affine_volume(matrix: np.ndarray, shape: tuple[int, int, int],
                  channels_last: bool = False, dtype: torch.dtype | None = None,
                  rows: slice | None = None) -> torch.Tensor:
    """(3, *shape) ``dtype`` (float32 unless given; ``channels_last``: (*shape, 3)): the
    (4, 4) (or (3, 4)) ``matrix`` applied to every voxel index of a grid of ``shape``
    (only the first axis' ``rows`` when given), in float64 one channel at a time."""
    import torch

    first = range(shape[0]) if rows is None else range(*rows.indices(shape[0]))
    i = torch.arange(first.start, first.stop, dtype=torch.float64)
    j, k = (torch.arange(n, dtype=torch.float64) for n in shape[1:])
    shape = (len(first), *shape[1:])
    m = np.array(matrix, dtype=np.float64)
    out = torch.empty((*shape, 3) if channels_last else (3, *shape),
                      dtype=torch.float32 if dtype is None else dtype)
    for channel in range(3):
        target = out[..., channel] if channels_last else out[channel]
        target.copy_(m[channel, 0] * i[:, None, None] + m[channel, 1] * j[None, :, None]
                     + m[channel, 2] * k[None, None, :] + m[channel, 3])
    return out


def sampling_scale(shape: Sequence[int]) -> list[float]:
    """Per axis, ``grid_sample``'s unit per voxel index (aligned corners)."""
    return [2.0 / max(int(n) - 1, 1) for n in shape]


def normalised(index, shape: Sequence[int]):
    """Voxel indices (3, *S) (torch, channels i, j, k) of a grid of ``shape`` -> the
    ``grid_sample`` coordinates (*S, 3) of the same points: [-1, 1] with aligned corners,
    last axis first (k, j, i)."""
    import torch

    scale = torch.tensor(sampling_scale(shape), dtype=index.dtype,
                         device=index.device).view(3, *([1] * (index.ndim - 1)))
    return (index * scale - 1.0).movedim(0, -1).flip(-1)


def sampling_matrix(shape: Sequence[int]) -> np.ndarray:
    """(4, 4) float64: :func:`normalised` as a matrix, voxel index (i, j, k) of a grid of
    ``shape`` -> ``grid_sample`` coordinates (x, y, z), to be folded into other affine
    maps."""
    matrix = np.diag([*sampling_scale(shape), 1.0])
    matrix[:3, 3] = -1.0
    return matrix[[2, 1, 0, 3]]
