"""Using a saved registration (the folder ``ddmr register`` writes) on other images, label
maps and landmark points, in either direction: ``ddmr apply``.

* Forward (the default): an image on the moving image's side is warped onto the fixed
  grid (or ``reference``) through ``displacement.nii.gz``, as ``warped.nii.gz`` was; a
  point of the moving image goes to the fixed image's space through
  ``inverse_displacement.nii.gz`` (points travel the other way than images).
* Inverse: an image on the fixed side is warped onto the moving grid through
  ``inverse_displacement.nii.gz``; a point of the fixed image goes to the moving space
  through ``displacement.nii.gz``.

Displacement fields are read as ANTs and ITK read them: outside the field's own grid a
point does not move. Label maps are warped label-exactly
(:func:`ddmr.spatial.warp.sample_labels`). Point files are CSV with columns naming the
convention: ``x_ras,y_ras,z_ras`` (or ``R,A,S``) or ``x_lps,y_lps,z_lps`` (or ``L,P,S``),
in mm; other columns are kept.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddmr.errors import InputError
from ddmr.spatial.grid import LPS_FLIP, Geometry

PathLike = str | os.PathLike[str]

#: Point-file column names per convention (the first three columns that match).
POINT_COLUMNS = {"ras": (("x_ras", "y_ras", "z_ras"), ("r", "a", "s")),
                 "lps": (("x_lps", "y_lps", "z_lps"), ("l", "p", "s"))}


@dataclass(frozen=True)
class SavedTransform:
    """The two fields of a ``ddmr register`` folder: ``forward`` (3, *fixed.shape) RAS mm
    on ``fixed`` (a fixed point p goes to p + forward(p)) and ``inverse`` on ``moving``."""

    folder: Path
    forward: np.ndarray
    fixed: Geometry
    inverse: np.ndarray | None
    moving: Geometry | None

    @classmethod
    def load(cls, folder: PathLike, need_inverse: bool = False) -> SavedTransform:
        from ddmr.io.fields import load_displacement
        from ddmr.spatial.field import voxels_to_mm

        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"{folder}: not a folder (expected the output folder of ddmr "
                             "register)")
        if not (folder / "displacement.nii.gz").is_file():
            raise InputError(f"{folder}: no displacement.nii.gz (is it the output folder of "
                             "ddmr register?)")
        voxels, fixed = load_displacement(folder / "displacement.nii.gz")
        inverse = moving = None
        inverse_path = folder / "inverse_displacement.nii.gz"
        if inverse_path.is_file():
            inverse_voxels, moving = load_displacement(inverse_path)
            inverse = voxels_to_mm(inverse_voxels, moving)
        elif need_inverse:
            raise InputError(f"{folder}: no inverse_displacement.nii.gz (written by ddmr "
                             "register from version 0.2)")
        return cls(folder, voxels_to_mm(voxels, fixed), fixed, inverse, moving)

    def field(self, inverse: bool) -> tuple[np.ndarray, Geometry]:
        if inverse:
            return self.inverse, self.moving
        return self.forward, self.fixed


def displacement_at(field_mm: np.ndarray, geometry: Geometry, points: np.ndarray
                    ) -> np.ndarray:
    """The field (3, *geometry.shape, RAS mm) at world points (n, 3): trilinear inside the
    grid (within half a voxel), zero beyond it (as ITK's displacement field transform)."""
    from ddmr.spatial.warp import sample_image

    index = torch.from_numpy(geometry.world_to_index(points).T.astype(np.float32))
    out = np.empty((points.shape[0], 3), dtype=np.float64)
    for axis in range(3):
        channel = torch.from_numpy(np.ascontiguousarray(field_mm[axis], np.float32))
        out[:, axis] = sample_image(channel[None, None], index).numpy()
    return out


def grid_points(geometry: Geometry) -> np.ndarray:
    """World points (n, 3) of every voxel of ``geometry`` (C order)."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), -1)
    return geometry.index_to_world(index.reshape(-1, 3).astype(np.float64))


def apply_to_image(transform: SavedTransform, array: np.ndarray, geometry: Geometry,
                   labels: bool = False, inverse: bool = False,
                   reference: Geometry | None = None) -> tuple[np.ndarray, Geometry]:
    """Warp an image (or, ``labels``, a label map) on ``geometry`` with the saved
    registration (module docstring) onto ``reference`` (default: the fixed grid, or the
    moving grid with ``inverse``). Returns the array (float32, or uint8 labels) and its
    grid."""
    from ddmr.spatial.warp import label_cells, sample_image, sample_labels

    field, field_geometry = transform.field(inverse)
    target = reference or field_geometry
    points = grid_points(target)
    moved = points + displacement_at(field, field_geometry, points)
    index = torch.from_numpy(geometry.world_to_index(moved).T.astype(np.float32))
    if labels:
        source = torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))[None, None]
        values = torch.nonzero(torch.bincount(source.reshape(-1)))[:, 0].tolist()
        out = sample_labels(source, index, values, label_cells(source)).numpy()
    else:
        source = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
        out = sample_image(source, index).numpy()
    return out.reshape(target.shape), target


def apply_to_points(transform: SavedTransform, points_ras: np.ndarray, inverse: bool = False
                    ) -> np.ndarray:
    """Map world points (n, 3, RAS mm) of the moving image into the fixed image's space
    (``inverse``: of the fixed image into the moving space)."""
    field, geometry = transform.field(not inverse)
    return points_ras + displacement_at(field, geometry, points_ras)


@dataclass
class PointTable:
    """A landmark file: the rows as read, which columns hold the coordinates, in which
    convention (``ras`` or ``lps``), and the points (n, 3) in RAS."""

    header: list[str]
    rows: list[list[str]]
    columns: tuple[int, int, int]
    convention: str
    points_ras: np.ndarray


def read_points(path: PathLike) -> PointTable:
    """Read a landmark CSV (module docstring); :class:`InputError` when it has no
    coordinate columns of a named convention, or a value that is not a number."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    from ddmr.io.files import read_csv

    table = read_csv(path)  # UTF-8, with or without a byte-order mark
    if not table:
        raise InputError(f"{path}: empty file")
    header = [name.strip() for name in table[0]]
    lower = [name.lower() for name in header]
    found = [(convention, triple) for convention, names in POINT_COLUMNS.items()
             for triple in names if all(name in lower for name in triple)]
    if not found:
        raise InputError(f"{path}: no coordinate columns; name them x_ras,y_ras,z_ras (or "
                         "R,A,S) or x_lps,y_lps,z_lps (or L,P,S) so the convention is known")
    convention, triple = found[0]
    columns = tuple(lower.index(name) for name in triple)
    rows = [row for row in table[1:] if any(cell.strip() for cell in row)]
    try:
        values = np.array([[float(row[c]) for c in columns] for row in rows], dtype=np.float64)
    except (ValueError, IndexError):
        raise InputError(f"{path}: a coordinate is missing or not a number") from None
    values = values.reshape(-1, 3)
    if not np.isfinite(values).all():
        raise InputError(f"{path}: a coordinate is NaN or infinite")
    ras = values if convention == "ras" else values @ LPS_FLIP.T
    return PointTable(header, rows, columns, convention, ras)


def write_points(path: PathLike, table: PointTable, points_ras: np.ndarray) -> None:
    """Write ``table`` with its coordinates replaced by ``points_ras`` (n, 3), in the
    table's own convention, atomically."""
    from ddmr.io.files import atomic_path

    values = points_ras if table.convention == "ras" else points_ras @ LPS_FLIP.T
    rows = [list(row) for row in table.rows]
    for row, point in zip(rows, values, strict=True):
        for column, value in zip(table.columns, point, strict=True):
            row[column] = f"{value:.6f}"
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(table.header)
        writer.writerows(rows)
