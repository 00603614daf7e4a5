"""Where an image's object is in its own world: foreground, centre and principal axes.

The affine stage starts from these, so that two images whose headers place them far
apart (scanner origins hundreds of mm away, other axis orders) are found before anything
is resampled. Everything is in RAS mm of each image's own world space.

Foreground: a threshold (Otsu's on the intensity histogram, or a tenth of the way from
the minimum to the 99th percentile where that is lower, so dark tissue such as CSF counts),
then the connected components of at least a twentieth of the largest (the brain and the
scalp around a dark skull are two; background specks are dropped) with their holes filled,
in 3D and slice by slice
along each axis (a head cut open by the field of view is still filled), so that dark
structures enclosed by the object (ventricles, the skull, bowel gas) count and background
specks do not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddmr.spatial.grid import Geometry, index_box

#: Histogram bins of :func:`otsu_threshold`.
OTSU_BINS = 256
#: Largest number of foreground voxels used for the moments (a regular subsample beyond).
MOMENT_POINTS = 200_000
#: An image of more voxels than this has its foreground found on every second voxel along
#: each axis and carried back to its own grid (each coarse voxel's verdict to the 2x2x2
#: voxels it stands for): on a 1 mm head (16.8 M voxels) the labelling and hole filling
#: then take ~0.2 s instead of ~1 s (benchmarks/RESULTS.md, issue 28, round five).
DECIMATE_ABOVE = 4_000_000


def otsu_threshold(values: np.ndarray, bins: int = OTSU_BINS) -> float:
    """Otsu's threshold of ``values`` (any shape): the level that maximises the
    between-class variance of the histogram; values above it are foreground."""
    values = np.ravel(values, order="K")  # (a view in the array's own order: no copy)
    if values.dtype.kind != "f":
        values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def foreground_mask(array: np.ndarray) -> np.ndarray:
    """(I, J, K) bool: the object of an image (see module docstring). An image whose
    threshold keeps nothing connected falls back to every voxel above it. Above
    :data:`DECIMATE_ABOVE` voxels, found on every second voxel (2-voxel steps at its
    border)."""
    from scipy import ndimage

    if array.size > DECIMATE_ABOVE:
        coarse = foreground_mask(array[::2, ::2, ::2])
        whole = coarse.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
        return np.ascontiguousarray(whole[:array.shape[0], :array.shape[1], :array.shape[2]])

    low = float(array.min())
    in_order = np.ravel(array, order="K")  # a view: percentile then copies once, in order
    level = min(otsu_threshold(array), low + 0.1 * (float(np.percentile(in_order, 99)) - low))
    labelled, count = ndimage.label(array > level)
    if count == 0:
        return np.ones(array.shape, dtype=bool)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    mask = (sizes >= sizes.max() / 20)[labelled]  # the components kept, by lookup
    # the holes are filled inside the mask's box grown by a voxel: the background shell
    # around the box reaches the array's border, so the same voxels are holes (tested)
    box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in index_box(mask))
    inner = fill_holes(mask[box])
    for axis in range(3):
        inner = fill_holes(inner, axis)
    mask[box] = inner
    return mask


def fill_holes(mask: np.ndarray, slice_axis: int | None = None) -> np.ndarray:
    """(I, J, K) bool ``mask`` with its holes filled: the background components
    (face-connected) that do not reach the border of the array, in 3D, or with
    ``slice_axis`` in each slice across that axis on its own (``binary_fill_holes`` of
    every slice, from one labelling of the whole volume)."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(3, 1)
    if slice_axis is not None:  # no connections across slices
        structure = structure & (np.abs(np.indices((3, 3, 3))[slice_axis] - 1) == 0)
    labelled, count = ndimage.label(~mask, structure)
    outside = np.zeros(count + 1, dtype=bool)
    for axis in range(3):
        if axis != slice_axis:
            outside[labelled.take(0, axis)] = True
            outside[labelled.take(-1, axis)] = True
    outside[0] = False  # label 0: the mask itself
    return ~outside[labelled]


#: (low, high) intensities mapped to 0 and 1.
Scale = tuple[float, float]


def intensity_scale(array: np.ndarray, mask: np.ndarray) -> Scale:
    """(low, high) mapped to 0 and 1 by the affine stage and the engine: the image
    minimum and the 99.5th percentile inside the foreground ``mask`` (bright outliers do
    not compress the rest)."""
    inside = array[mask] if mask.any() else array.ravel()
    low = float(array.min())
    high = float(np.percentile(inside, 99.5))
    return low, high if high > low else float(array.max())


@dataclass(frozen=True)
class Moments:
    """centre: (3,) RAS mm; covariance: (3, 3) mm^2 of the foreground's world positions;
    volume_ml: the foreground's volume in millilitres."""

    centre: np.ndarray
    covariance: np.ndarray
    volume_ml: float

    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Principal axes: eigenvalues (3,) mm^2, largest first, and their unit vectors
        as the columns of a (3, 3) rotation (det +1)."""
        values, vectors = np.linalg.eigh(self.covariance)
        order = np.argsort(values)[::-1]
        values, vectors = values[order], vectors[:, order]
        if np.linalg.det(vectors) < 0:
            vectors[:, 2] *= -1
        return values, vectors


def foreground_ml(mask: np.ndarray, geometry: Geometry) -> float:
    """The volume (mL) of a mask (I, J, K) on ``geometry``."""
    voxel_ml = abs(float(np.linalg.det(geometry.affine[:3, :3]))) / 1000.0
    return float(mask.sum()) * voxel_ml


def moments(mask: np.ndarray, geometry: Geometry) -> Moments:
    """The :class:`Moments` of the voxels where ``mask`` (I, J, K) is true, in world
    space (at most :data:`MOMENT_POINTS` of them, a regular subsample)."""
    flat = np.flatnonzero(mask)  # (np.argwhere is ~30x slower on a 256^3 mask)
    if len(flat) == 0:
        flat = np.arange(mask.size)
    step = max(1, len(flat) // MOMENT_POINTS)
    index = np.stack(np.unravel_index(flat[::step], mask.shape), axis=1)
    points = geometry.index_to_world(index.astype(np.float64))
    centre = points.mean(axis=0)
    covariance = np.cov(points, rowvar=False) if len(points) > 1 else np.eye(3)
    return Moments(centre, np.atleast_2d(covariance), foreground_ml(mask, geometry))


#: A foreground of more than this (mL) is a whole head, not a skull-stripped brain (a
#: brain with its CSF is about 1100-1900 mL; the bundled heads 1300-1900 mL).
WHOLE_HEAD_ML = 2300.0


#: An image's foreground this many times larger (or smaller) than every training image's
#: is not what a model saw in training (a whole head is 2-3 times a brain's volume).
FOREGROUND_RATIO = 1.5


def looks_like_whole_head(mask: np.ndarray, geometry: Geometry) -> tuple[bool, float]:
    """Whether a head image's foreground is too large for a skull-stripped brain, and its
    volume in mL."""
    volume = foreground_ml(mask, geometry)
    return volume > WHOLE_HEAD_ML, volume


def outside_trained_range(volume_ml: float, trained: tuple[float, float]) -> bool:
    """Whether a foreground of ``volume_ml`` lies beyond :data:`FOREGROUND_RATIO` times
    the range ``(smallest, largest)`` mL of a model's training images."""
    low, high = trained
    return volume_ml > high * FOREGROUND_RATIO or volume_ml < low / FOREGROUND_RATIO


def candidate_linear_maps(fixed: Moments, moving: Moments) -> list[tuple[str, np.ndarray]]:
    """Starting linear parts (3, 3) of the fixed -> moving point map, named: the headers'
    own orientation (identity), then the four proper rotations taking the fixed principal
    axes onto the moving ones (the sign of each axis is unknown from moments alone). All
    carry the isotropic scale of the two foreground volumes."""
    scale = (max(moving.volume_ml, 1e-6) / max(fixed.volume_ml, 1e-6)) ** (1 / 3)
    _, fixed_axes = fixed.axes()
    _, moving_axes = moving.axes()
    out = [("header orientation", scale * np.eye(3))]
    for signs in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
        rotation = moving_axes @ np.diag(signs) @ fixed_axes.T
        out.append((f"principal axes {signs}", scale * rotation))
    return out


def point_map(fixed_centre: np.ndarray, moving_centre: np.ndarray, linear: np.ndarray
              ) -> np.ndarray:
    """(4, 4) RAS point map ``p -> moving_centre + linear (p - fixed_centre)``."""
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = moving_centre - linear @ fixed_centre
    return out
