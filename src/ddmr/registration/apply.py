"""Using a saved registration (the folder ``ddmr register`` writes, or one ITK/ANTs
transform file) on other images, label maps and landmark points: ``ddmr apply``.

* Forward (the default): an image on the moving image's side is warped onto the fixed
  grid (or ``reference``) through ``displacement.nii.gz``, as ``warped.nii.gz`` was; a
  point of the moving image goes to the fixed image's space through
  ``inverse_displacement.nii.gz`` (points travel the other way than images).
* Inverse: an image on the fixed side is warped onto the moving grid through
  ``inverse_displacement.nii.gz``; a point of the fixed image goes to the moving space
  through ``displacement.nii.gz``.

A transform file (:class:`TransformFile`: DDMR's ``transform.h5`` or
``inverse_transform.h5``, ANTs' ``Composite.h5``, an ``affine.mat``; read with SimpleITK)
is one direction, as ANTs uses it: it maps points of its fixed space to its moving space,
so an image is pulled through it onto a reference grid (which must be given: the file does
not say which grid), and points are pushed through it, fixed-space points to the moving
space, as ``ants.apply_transforms_to_points`` does. The other direction is the other file
(``inverse_transform.h5``, ANTs' ``InverseComposite.h5``), not ``inverse=True``.

Displacement fields are read as ANTs and ITK read them: outside the field's own grid a
point does not move. Label maps are warped label-exactly
(:func:`ddmr.spatial.warp.sample_labels`). Point files are CSV with columns naming the
convention: ``x_ras,y_ras,z_ras`` (or ``R,A,S``) or ``x_lps,y_lps,z_lps`` (or ``L,P,S``),
in mm; or ANTs' ``x,y,z`` (and ``t``), whose convention the caller names (``space``: ANTs
writes LPS); other columns are kept. A file with several sets of coordinate columns is
mapped in each when they give the same points, and refused when they do not.

What cannot be a registration is refused (:class:`InputError`), never applied: a field
whose displacements vary across its grid by more than :data:`MAX_FIELD_SPREAD` fields of
view (a damaged file), a forward and an inverse field that are not each other's inverse
(:data:`MAX_ROUND_TRIP_VOXELS`; one of them from another run), a reference grid or an
image that the transform does not reach (the result would be empty or untransformed),
and points none of which lies where the field is defined.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddmr.errors import InputError
from ddmr.spatial.displacement import Displacement
from ddmr.spatial.grid import LPS_FLIP, Geometry

PathLike = str | os.PathLike[str]

#: Point-file column names per convention (every triple that the header holds is used).
POINT_COLUMNS = {"ras": (("x_ras", "y_ras", "z_ras"), ("r", "a", "s")),
                 "lps": (("x_lps", "y_lps", "z_lps"), ("l", "p", "s"))}

#: ANTs' point columns (``ants.apply_transforms_to_points``; a 4th, ``t``, is kept as it
#: is): they do not name the convention, so the caller must (``space``, a key of
#: :data:`POINT_COLUMNS`; ANTs' points are LPS).
PLAIN_POINT_COLUMNS = ("x", "y", "z")

#: Two coordinate column sets of one point file may differ by this much (mm) and still be
#: the same points (rounding of the text).
POINT_TOLERANCE_MM = 0.01

#: A field's displacement along one axis may vary across its grid by at most this many
#: times its field of view (the grid's diagonal): an affine part within QC's scale range
#: (0.5-2) varies it by at most 1.5 times, so more is a damaged file, not a registration.
MAX_FIELD_SPREAD = 2.0

#: No displacement may be longer than this many fields of view: 2.8 m for a 16^3 image of
#: 1 mm voxels, more than any scanner's room; headers that put two scans farther apart
#: than that are not from one place.
MAX_FIELD_LENGTH = 100.0

#: Forward then inverse must bring the fixed-grid points that the forward field takes into
#: the moving grid back within this many voxels (of the coarser grid; the median). A
#: registration's own pair: 0.004 mm at 2 mm voxels; another run's inverse: 40 mm and more.
MAX_ROUND_TRIP_VOXELS = 1.0

#: About how many fixed-grid points the round trip is measured on.
ROUND_TRIP_POINTS = 32_768


@dataclass(frozen=True)
class SavedTransform:
    """The two fields of a ``ddmr register`` folder: ``forward`` (3, *fixed.shape) RAS mm
    on ``fixed`` (a fixed point p goes to p + forward(p)) and ``inverse`` on ``moving``."""

    folder: Path
    forward: Displacement
    inverse: Displacement | None

    @property
    def fixed(self) -> Geometry:
        return self.forward.grid

    @property
    def moving(self) -> Geometry | None:
        return None if self.inverse is None else self.inverse.grid

    @classmethod
    def load(cls, folder: PathLike, need_inverse: bool = False) -> SavedTransform:
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"{folder}: not a folder (expected the output folder of ddmr "
                             "register)")
        if not (folder / "displacement.nii.gz").is_file():
            raise InputError(f"{folder}: no displacement.nii.gz (is it the output folder of "
                             "ddmr register?)")
        forward = _field_file(folder / "displacement.nii.gz")
        inverse = None
        inverse_path = folder / "inverse_displacement.nii.gz"
        if inverse_path.is_file():
            inverse = _field_file(inverse_path)
        elif need_inverse:
            raise InputError(f"{folder}: no inverse_displacement.nii.gz (written by ddmr "
                             "register from version 0.2)")
        transform = cls(folder, forward, inverse)
        if inverse is not None:
            transform.check_round_trip()
        return transform

    def field(self, inverse: bool) -> Displacement:
        """The forward field on the fixed grid, or with ``inverse`` the inverse's."""
        return self.inverse if inverse else self.forward

    def check_round_trip(self) -> float:
        """:class:`InputError` unless the inverse field undoes the forward one: fixed-grid
        points that the forward field takes into the moving grid must come back within
        :data:`MAX_ROUND_TRIP_VOXELS` (median), as a pair that one run wrote does. Returns
        that median distance (mm)."""
        stride = max(1, round((np.prod(self.fixed.shape) / ROUND_TRIP_POINTS) ** (1 / 3)))
        points = grid_points(self.fixed, stride)
        there = self.forward.moved(points)
        landed = inside(self.moving, there)
        pair = ("displacement.nii.gz and inverse_displacement.nii.gz are not one "
                "registration's pair")
        if not landed.any():
            raise InputError(f"{self.folder}: {pair}: displacement.nii.gz takes no point of "
                             "its grid into the grid of inverse_displacement.nii.gz (the "
                             f"nearest lands {gap(self.moving, there):.4g} mm from it)")
        back = self.inverse.moved(there[landed])
        error = float(np.median(np.linalg.norm(back - points[landed], axis=1)))
        limit = MAX_ROUND_TRIP_VOXELS * max(*self.fixed.spacing, *self.moving.spacing)
        if not error <= limit:
            raise InputError(f"{self.folder}: {pair}: forward then inverse moves points by "
                             f"{error:.3g} mm (median), over {limit:.3g} mm "
                             f"({MAX_ROUND_TRIP_VOXELS:g} voxel); was one of them replaced "
                             "by another run's?")
        return error


@dataclass(frozen=True)
class TransformFile:
    """One ITK/ANTs transform file (module docstring): ``transform`` (SimpleITK) maps
    points of its fixed space to its moving space (LPS, as ITK does)."""

    path: Path
    transform: Any

    @classmethod
    def load(cls, path: PathLike) -> TransformFile:
        from ddmr.io.composite import read_transform

        return cls(Path(path), read_transform(path))

    def on_grid(self, reference: Geometry) -> SavedTransform:
        """The transform sampled on ``reference`` as a forward field (3, *reference.shape,
        RAS mm) there, without inverse; :class:`InputError` for an implausible one
        (:func:`check_field`)."""
        from ddmr.io.composite import displacement_on

        forward = displacement_on(self.transform, reference)
        check_field(forward, reference, self.path)
        return SavedTransform(self.path, Displacement(forward, reference, "zero"), None)


def load_transform(path: PathLike, need_inverse: bool = False
                   ) -> SavedTransform | TransformFile:
    """``path`` as ``ddmr apply --transform`` takes it: a file is one ITK/ANTs transform
    (:class:`TransformFile`), anything else the output folder of ``ddmr register``
    (:meth:`SavedTransform.load`)."""
    if not Path(path).exists():
        raise InputError(f"{path}: no such file or folder (expected the output folder of "
                         "ddmr register, or an ITK transform file such as its transform.h5)")
    if Path(path).is_file():
        return TransformFile.load(path)
    return SavedTransform.load(path, need_inverse=need_inverse)


def one_way(path: PathLike) -> InputError:
    """The refusal of ``inverse`` (``--inverse``) with a transform file."""
    return InputError(f"{path}: a transform file maps one way (its fixed points to its "
                      "moving points) and is not inverted (--inverse); for the other "
                      "direction pass the inverse composite instead (inverse_transform.h5 "
                      "of ddmr register, ANTs' InverseComposite.h5)")


def no_grid(path: PathLike) -> InputError:
    """The refusal of an image warped with a transform file but no reference grid."""
    return InputError(f"{path}: a transform file does not say which grid to warp onto; "
                      "give a reference image (--reference, the fixed image)")


def field_of_view(geometry: Geometry) -> float:
    """The diagonal (mm) of the grid's extent."""
    return float(np.linalg.norm(np.asarray(geometry.shape) * np.asarray(geometry.spacing)))


def check_field(field_mm: np.ndarray, geometry: Geometry, path: PathLike) -> None:
    """:class:`InputError` naming ``path`` when the field (3, *geometry.shape, mm) has a
    displacement longer than :data:`MAX_FIELD_LENGTH` fields of view, or varies along one
    axis by more than :data:`MAX_FIELD_SPREAD` fields of view across its grid."""
    view = field_of_view(geometry)
    low = field_mm.min(axis=(1, 2, 3)).astype(np.float64)
    high = field_mm.max(axis=(1, 2, 3)).astype(np.float64)
    length = float(np.linalg.norm(np.maximum(np.abs(low), np.abs(high))))
    spread = float(np.max(high - low))
    problem = f"{path}: not a plausible registration (the file is damaged?): "
    if not length <= MAX_FIELD_LENGTH * view:
        raise InputError(f"{problem}displacements of up to {length:.4g} mm, over "
                         f"{MAX_FIELD_LENGTH:g} times its field of view ({view:.0f} mm)")
    if not spread <= MAX_FIELD_SPREAD * view:
        raise InputError(f"{problem}its displacements differ by {spread:.4g} mm along one "
                         f"axis, over {MAX_FIELD_SPREAD:g} times its field of view "
                         f"({view:.0f} mm)")


def inside(geometry: Geometry, points: np.ndarray) -> np.ndarray:
    """Which world points (n, 3) lie in the grid (within half a voxel of its centres)."""
    return _within(geometry.world_to_index(points), geometry.shape)


def _within(index: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    return np.all((index >= -0.5) & (index <= np.asarray(shape) - 0.5), axis=1)


def gap(geometry: Geometry, points: np.ndarray) -> float:
    """How far (mm) the nearest of the world points (n, 3) lies from the grid (0 when one
    lies in it, :func:`inside`)."""
    index = geometry.world_to_index(points)
    nearest = np.clip(index, -0.5, np.asarray(geometry.shape) - 0.5)
    return float(np.min(np.linalg.norm((nearest - index) @ geometry.affine[:3, :3].T, axis=1)))


def _field_file(path: Path) -> Displacement:
    """A displacement field file (ITK/ANTs) as ITK reads it (zero beyond its grid);
    :class:`InputError` for an implausible one (:func:`check_field`)."""
    from ddmr.io.fields import load_displacement

    field_mm, geometry = load_displacement(path, units="mm")  # (the one change of units)
    field = Displacement(field_mm, geometry, "zero")
    check_field(field.field_mm.numpy(), geometry, path)
    return field


def grid_points(geometry: Geometry, stride: int = 1) -> np.ndarray:
    """World points (n, 3) of every voxel of ``geometry`` (C order; every ``stride``-th
    along each axis)."""
    strided = Geometry(geometry.affine @ np.diag([stride, stride, stride, 1.0]),
                       tuple(len(range(0, n, stride)) for n in geometry.shape))
    return strided.points(channels_last=True, dtype=torch.float64).reshape(-1, 3).numpy()


def apply_to_image(transform: SavedTransform | TransformFile, array: np.ndarray,
                   geometry: Geometry, labels: bool = False, inverse: bool = False,
                   reference: Geometry | None = None, image_name: str = "image",
                   reference_name: str = "reference") -> tuple[np.ndarray, Geometry]:
    """Warp an image (or, ``labels``, a label map) on ``geometry`` with the saved
    registration (module docstring) onto ``reference`` (default: the fixed grid, or the
    moving grid with ``inverse``; required for a :class:`TransformFile`, which has no
    ``inverse``). Returns the array (float32, or uint8 labels) and its grid.
    :class:`InputError` naming ``reference_name`` for a reference grid that does not
    overlap the field's grid, or ``image_name`` for an image that the transformed grid
    does not reach, with how far apart they are."""
    from ddmr.spatial.warp import label_cells, sample_image, sample_labels

    if isinstance(transform, TransformFile):
        if inverse:
            raise one_way(transform.path)
        if reference is None:
            raise no_grid(transform.path)
        transform, reference = transform.on_grid(reference), None
    field = transform.field(inverse)
    field_geometry = field.grid
    sides = ("moving", "fixed") if inverse else ("fixed", "moving")
    target = reference or field_geometry
    points = grid_points(target)
    if reference is not None and not inside(field_geometry, points).any():
        raise InputError(f"{reference_name}: does not overlap the transform's {sides[0]} grid, "
                         f"where the registration is defined (they are "
                         f"{gap(field_geometry, points):.4g} mm apart)")
    moved = field.moved(points)
    del points
    index = geometry.world_to_index(moved)
    if not _within(index, geometry.shape).any():
        raise InputError(f"{image_name}: does not overlap where the transform takes the output "
                         f"grid (they are {gap(geometry, moved):.4g} mm apart; the result would "
                         f"be empty): is it an image in the {sides[1]} image's space?")
    del moved
    index = torch.from_numpy(index.T.astype(np.float32))
    if labels:
        source = torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))[None, None]
        values = torch.nonzero(torch.bincount(source.reshape(-1)))[:, 0].tolist()
        out = sample_labels(source, index, values, label_cells(source)).numpy()
    else:
        source = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
        out = sample_image(source, index).numpy()
    return out.reshape(target.shape), target


def apply_to_points(transform: SavedTransform | TransformFile, points_ras: np.ndarray,
                    inverse: bool = False, name: str = "points") -> np.ndarray:
    """Map world points (n, 3, RAS mm) of the moving image into the fixed image's space
    (``inverse``: of the fixed image into the moving space); through a
    :class:`TransformFile`, of its fixed space into its moving space (as ANTs maps points;
    no ``inverse``). :class:`InputError` naming ``name`` when none lies in the field's grid
    of a saved registration (none would move)."""
    if isinstance(transform, TransformFile):
        if inverse:
            raise one_way(transform.path)
        from ddmr.io.composite import transform_points

        return transform_points(transform.transform, points_ras)
    field = transform.field(not inverse)
    geometry = field.grid
    if len(points_ras) and not inside(geometry, points_ras).any():
        side = "fixed" if inverse else "moving"
        raise InputError(f"{name}: no point lies in the transform's {side} grid, where the "
                         f"registration is defined (the nearest is "
                         f"{gap(geometry, points_ras):.4g} mm from it; outside it a point "
                         f"does not move): are they points of the {side} image?")
    return field.moved(points_ras)


@dataclass
class PointTable:
    """A landmark file: the rows as read, the coordinate columns (each set a convention,
    ``ras`` or ``lps``, and the three columns that hold it) and the points (n, 3) in RAS."""

    header: list[str]
    rows: list[list[str]]
    columns: list[tuple[str, tuple[int, int, int]]]
    points_ras: np.ndarray


def read_points(path: PathLike, space: str | None = None) -> PointTable:
    """Read a landmark CSV (module docstring); ``space`` (``"lps"`` or ``"ras"``) is the
    convention of ANTs' ``x,y,z`` columns. :class:`InputError` when it has no coordinate
    columns, ``x,y,z`` without ``space``, columns that name another convention than
    ``space``, a value that is not a number, a coordinate column twice, or two sets of
    coordinate columns that give different points."""
    if space is not None and space not in POINT_COLUMNS:
        raise ValueError(f"space must be one of {', '.join(POINT_COLUMNS)}, got {space!r}")
    from ddmr.io.files import read_csv

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a CSV file of points")
    table = read_csv(path)  # UTF-8, with or without a byte-order mark
    if not table:
        raise InputError(f"{path}: empty file (expected a header row naming the coordinate "
                         "columns)")
    header = [name.strip() for name in table[0]]
    lower = [name.lower() for name in header]
    found = [(convention, tuple(lower.index(name) for name in triple))
             for convention, names in POINT_COLUMNS.items()
             for triple in names if all(name in lower for name in triple)]
    other = [(convention, columns) for convention, columns in found if convention != space]
    if space is not None and other:
        names = ",".join(header[c] for c in other[0][1])
        raise InputError(f"{path}: its columns {names} are {other[0][0].upper()} points, "
                         f"but the points were said to be {space.upper()} "
                         "(--points-space); leave that out or make them agree")
    if all(name in lower for name in PLAIN_POINT_COLUMNS):
        if space is None:
            raise InputError(f"{path}: columns x,y,z do not say whether the points are LPS "
                             "or RAS; give --points-space lps (as ANTs writes them) or ras")
        found.append((space, tuple(lower.index(name) for name in PLAIN_POINT_COLUMNS)))
    if not found:
        raise InputError(f"{path}: no coordinate columns; name them x_ras,y_ras,z_ras (or "
                         "R,A,S) or x_lps,y_lps,z_lps (or L,P,S) so the convention is known, "
                         "or x,y,z with --points-space")
    twice = [header[c] for _, columns in found for c in columns if lower.count(lower[c]) > 1]
    if twice:
        raise InputError(f"{path}: coordinate column {twice[0]!r} appears more than once")
    rows = [row for row in table[1:] if any(cell.strip() for cell in row)]
    sets = [_points_ras(path, rows, columns, convention) for convention, columns in found]
    for (_, columns), points in zip(found[1:], sets[1:], strict=True):
        differ = np.max(np.abs(points - sets[0]), axis=1) > POINT_TOLERANCE_MM
        if differ.any():
            k = int(np.argmax(differ))
            names = [",".join(header[c] for c in cols) for cols in (found[0][1], columns)]
            raise InputError(
                f"{path}: columns {names[0]} and {names[1]} give different points (row "
                f"{k + 1}: RAS {_text(sets[0][k])} and {_text(points[k])}), so which to map "
                "is unclear; keep one set of coordinate columns")
    return PointTable(header, rows, found, sets[0])


def _points_ras(path: Path, rows: list[list[str]], columns: tuple[int, int, int],
                convention: str) -> np.ndarray:
    """The points (n, 3) in RAS of one set of coordinate columns."""
    try:
        values = np.array([[float(row[c]) for c in columns] for row in rows], dtype=np.float64)
    except (ValueError, IndexError):
        raise InputError(f"{path}: a coordinate is missing or not a number") from None
    values = values.reshape(-1, 3)
    if not np.isfinite(values).all():
        raise InputError(f"{path}: a coordinate is NaN or infinite")
    return values if convention == "ras" else values @ LPS_FLIP.T


def _text(point: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in point) + ")"


def write_points(path: PathLike, table: PointTable, points_ras: np.ndarray) -> None:
    """Write ``table`` with its coordinates replaced by ``points_ras`` (n, 3), in each of
    the table's coordinate column sets in its own convention, atomically."""
    from ddmr.io.files import atomic_path

    rows = [list(row) for row in table.rows]
    for convention, columns in table.columns:
        values = points_ras if convention == "ras" else points_ras @ LPS_FLIP.T
        for row, point in zip(rows, values, strict=True):
            for column, value in zip(columns, point, strict=True):
                row[column] = f"{value:.6f}"
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(table.header)
        writer.writerows(rows)
