"""Registration metrics for one (fixed, warped) pair, in physical units.

Arrays are one volume each: images (D, H, W) float, label maps (D, H, W) integer with
0 = background, displacements (3, D, H, W) in voxels of the fixed grid (pull-back, see
:mod:`ddmr.spatial.field`). ``spacing`` is the voxel size in mm along D, H, W. Numpy arrays
and torch tensors are both accepted.

Definitions
-----------
* NCC: global Pearson correlation of the two images (:func:`ddmr.losses.global_ncc`).
* SSIM: 3D SSIM, Gaussian window sigma 1.5, data range 1 (:func:`ddmr.losses.ssim3d`).
* DSC per label: ``2|A n B| / (|A| + |B|)`` of the binary masks of that label in the
  fixed and the warped map; NaN when the label is absent from both. The mean skips NaN.
  Background (0) is never scored. ``dsc`` is the mean over the fixed map's labels (the
  scored labels); ``dsc_shared`` (:func:`shared_labels`) the mean over those the moving map
  has too: a label the moving map lacks scores 0 whatever the registration does, so
  when the two maps label different structures (a 61-label CT against a 31-label one)
  ``dsc`` mixes the registration's quality with the maps' difference.
* Surfaces: a mask's surface is the set of its voxels that a 6-connected binary
  erosion removes (voxels on the array border count as surface). The distance from a
  surface voxel of A to surface B is the Euclidean distance in mm (voxel centres scaled
  by ``spacing``) to the nearest surface voxel of B.
* HD: the larger of the two directed maxima (A->B and B->A), in mm.
* HD95: the larger of the two directed 95th percentiles (linear interpolation between
  order statistics, as ``numpy.percentile``), in mm. This is MONAI's convention
  (``compute_hausdorff_distance(percentile=95)``), not the percentile of the pooled
  distances of both directions that some packages use. NaN when either mask is empty.
* TRE (centroids): for each label present in both maps, the distance in mm between its
  centroid in the fixed and in the warped map; the mean over those labels. Centroids are
  in voxel indices, scaled by ``spacing`` (the grid's direction is a rotation, so it does
  not change the distance).
* Dense TRE: mean over ``mask`` of ``|(u_pred - u_true) * spacing|`` (Euclidean, mm).
* Folding: percentage of voxels whose Jacobian determinant of ``x -> x + u(x)`` is <= 0.
* SDlogJ: standard deviation over voxels of ``log(max(det J, 1e-9))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

#: Metric names of :func:`pair_metrics`, with their units (for table headers).
UNITS: dict[str, str] = {
    "ncc": "", "ssim": "", "dsc": "", "dsc_shared": "", "hd": "mm", "hd95": "mm",
    "tre": "mm", "dense_tre": "mm", "folding": "%", "sdlogj": "",
}
#: Whether a larger value is better, per metric.
HIGHER_IS_BETTER: dict[str, bool] = {
    "ncc": True, "ssim": True, "dsc": True, "dsc_shared": True, "hd": False, "hd95": False,
    "tre": False, "dense_tre": False, "folding": False, "sdlogj": False,
}


def _numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _volume(array: Any, name: str) -> np.ndarray:
    array = _numpy(array)
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"{name} must be one (D, H, W) volume, got shape {array.shape}")
    return array


def _field(displacement: Any) -> torch.Tensor:
    u = torch.as_tensor(_numpy(displacement), dtype=torch.float64)
    if u.ndim == 4:
        u = u[None]
    if u.ndim != 5 or u.shape[:2] != (1, 3):
        raise ValueError(f"displacement must be (3, D, H, W), got {tuple(u.shape)}")
    return u


def _spacing(spacing: Sequence[float]) -> np.ndarray:
    spacing = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing}")
    return spacing


def _label_counts(labels: np.ndarray) -> np.ndarray | None:
    """Voxel count per label value (``np.bincount``) of an integer map with values in
    0..65535, else None (then callers take the per-label path)."""
    if labels.dtype.kind not in "biu" or labels.size == 0:
        return None
    if int(labels.min()) < 0 or int(labels.max()) > 65535:
        return None
    return np.bincount(labels.ravel())


def _dense_codes(maps: Sequence[np.ndarray], values: Sequence[int]
                 ) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Label maps as flat int64 codes 0..size-1 for ``np.bincount``, the codes of
    ``values`` and ``size``: the values shifted by the smallest one when their range is
    small (<= 65536), else ranks among the distinct values (``np.unique``). Float maps
    are truncated to integers, as elsewhere in this module."""
    maps = [np.asarray(m).astype(np.int64).ravel() for m in maps]
    wanted = np.asarray(values, dtype=np.int64)
    low = min(int(wanted.min()), *(int(m.min()) for m in maps if m.size))
    high = max(int(wanted.max()), *(int(m.max()) for m in maps if m.size))
    if high - low < 65536:
        return [m - low for m in maps], wanted - low, high - low + 1
    distinct, codes = np.unique(np.concatenate([*maps, wanted]), return_inverse=True)
    pieces = np.split(codes, np.cumsum([m.size for m in maps]))
    return pieces[:-1], pieces[-1], distinct.size


def foreground_labels(*label_maps: Any) -> list[int]:
    """Sorted non-zero values present in any of the maps."""
    values: set[int] = set()
    for labels in label_maps:
        labels = _numpy(labels)
        counts = _label_counts(labels)
        present = np.nonzero(counts)[0] if counts is not None else np.unique(labels)
        values.update(int(v) for v in present)
    values.discard(0)
    return sorted(values)


# -- image similarity ------------------------------------------------------------------


def ncc(fixed: Any, warped: Any) -> float:
    """Global normalised cross-correlation of two (D, H, W) images, in [-1, 1]."""
    from ddmr.losses.ncc import global_ncc

    a = torch.as_tensor(_volume(fixed, "fixed"), dtype=torch.float64)[None, None]
    b = torch.as_tensor(_volume(warped, "warped"), dtype=torch.float64)[None, None]
    return float(global_ncc(a, b)[0])


def ssim(fixed: Any, warped: Any, data_range: float = 1.0) -> float:
    """3D SSIM of two (D, H, W) images in [0, ``data_range``] (Gaussian window)."""
    from ddmr.losses.ssim import ssim3d

    a = torch.as_tensor(_volume(fixed, "fixed"), dtype=torch.float64)[None, None]
    b = torch.as_tensor(_volume(warped, "warped"), dtype=torch.float64)[None, None]
    return float(ssim3d(a, b, data_range=data_range)[0])


# -- overlap -----------------------------------------------------------------------------


def dice_per_label(fixed_labels: Any, warped_labels: Any,
                   labels: Sequence[int] | None = None) -> np.ndarray:
    """Dice (K,) per label value (background excluded); NaN for a label absent from both.
    One pass of ``np.bincount`` over the voxels (all labels at once)."""
    a = _volume(fixed_labels, "fixed labels")
    b = _volume(warped_labels, "warped labels")
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    values = [v for v in (labels if labels is not None else foreground_labels(a, b)) if v != 0]
    if not values:
        return np.zeros(0)
    (a, b), index, size = _dense_codes([a, b], values)
    inter = np.bincount(a[a == b], minlength=size)[index].astype(np.float64)
    total = (np.bincount(a, minlength=size) + np.bincount(b, minlength=size))[index]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * inter / np.maximum(total, 1), np.nan)


def shared_labels(scored: Sequence[int], moving_labels: Any) -> list[int]:
    """The labels of ``scored`` (the fixed map's) that the moving map has too."""
    present = set(foreground_labels(moving_labels))
    return [v for v in scored if v in present]


def mean_over(per_label: np.ndarray, values: Sequence[int], subset: Sequence[int]) -> float:
    """The mean of ``per_label`` (one value per label of ``values``) over the labels of
    ``subset``, NaN values skipped; NaN when none is finite."""
    wanted = set(subset)
    chosen = np.asarray([x for v, x in zip(values, per_label, strict=True) if v in wanted],
                        dtype=np.float64)
    finite = chosen[np.isfinite(chosen)]
    return float(finite.mean()) if finite.size else math.nan


# -- surface distances ---------------------------------------------------------------------


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels (bool, same shape) of a binary mask: the mask minus its 6-connected
    erosion, with the array border counted as outside."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(3, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(a: Any, b: Any, spacing: Sequence[float]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (from each surface voxel of A to surface B,
    from each surface voxel of B to surface A), in the order of ``np.argwhere``. Masks
    (D, H, W) bool; empty arrays when either mask is empty.

    Each distance is to the nearest surface voxel of the other mask (voxel centres, mm),
    found with a k-d tree over the surface points: what a Euclidean distance transform of
    the other surface gives, for the surface voxels only.
    """
    from scipy.spatial import cKDTree

    a = _volume(a, "mask").astype(bool)
    b = _volume(b, "mask").astype(bool)
    spacing = np.asarray(_spacing(spacing), dtype=np.float64)
    if not a.any() or not b.any():
        return np.zeros(0), np.zeros(0)
    points_a = np.argwhere(surface(a)) * spacing
    points_b = np.argwhere(surface(b)) * spacing
    to_b, _ = cKDTree(points_b).query(points_a, k=1)
    to_a, _ = cKDTree(points_a).query(points_b, k=1)
    return np.asarray(to_b, dtype=np.float64), np.asarray(to_a, dtype=np.float64)


def hausdorff(a: Any, b: Any, spacing: Sequence[float], percentile: float | None = None
              ) -> float:
    """Symmetric Hausdorff distance (mm) of two masks: the larger of the two directed
    maxima, or of the two directed ``percentile``-th percentiles. NaN if either is empty."""
    d_ab, d_ba = surface_distances(a, b, spacing)
    if d_ab.size == 0 or d_ba.size == 0:
        return math.nan
    if percentile is None:
        return float(max(d_ab.max(), d_ba.max()))
    return float(max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile)))


def hausdorff_per_label(fixed_labels: Any, warped_labels: Any, spacing: Sequence[float],
                        labels: Sequence[int] | None = None,
                        percentile: float | None = None) -> np.ndarray:
    """:func:`hausdorff` (K,) per label value (background excluded)."""
    a = _volume(fixed_labels, "fixed labels")
    b = _volume(warped_labels, "warped labels")
    values = [v for v in (labels if labels is not None else foreground_labels(a, b)) if v != 0]
    return np.array([hausdorff(a == v, b == v, spacing, percentile) for v in values],
                    dtype=np.float64)


# -- target registration error ---------------------------------------------------------------


def centroids(labels: Any, values: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Centroids (K, 3) in mm (voxel index times spacing) per label value; NaN rows for
    absent labels. Per-slice label histograms along each axis (``np.bincount``), one
    pass per axis for all labels."""
    labels = _volume(labels, "labels")
    spacing = _spacing(spacing)
    out = np.full((len(values), 3), np.nan)
    if not len(values):
        return out
    (flat,), index, size = _dense_codes([labels], values)
    flat = flat.reshape(labels.shape)
    counts = np.bincount(flat.ravel(), minlength=size)[index].astype(np.float64)
    present = counts > 0
    for axis, n in enumerate(flat.shape):
        moved = np.moveaxis(flat, axis, 0).reshape(n, -1)
        # histogram[l, i]: voxels of label l in slice i along this axis
        histogram = np.stack([np.bincount(row, minlength=size) for row in moved], axis=1)
        sums = histogram[index] @ np.arange(n, dtype=np.float64)
        out[present, axis] = sums[present] / counts[present] * spacing[axis]
    return out


def centroid_tre_per_label(fixed_labels: Any, warped_labels: Any, spacing: Sequence[float],
                           labels: Sequence[int] | None = None) -> np.ndarray:
    """Centroid distance (K,) in mm per label; NaN where the label is missing in either map."""
    values = [v for v in (labels if labels is not None
                          else foreground_labels(fixed_labels, warped_labels)) if v != 0]
    a = centroids(fixed_labels, values, spacing)
    b = centroids(warped_labels, values, spacing)
    return np.linalg.norm(a - b, axis=1)


def centroid_tre(fixed_labels: Any, warped_labels: Any, spacing: Sequence[float],
                 labels: Sequence[int] | None = None) -> float:
    """The paper's TRE (mm): mean over labels present in both maps of the distance between
    the label's centroids. NaN if no label is present in both."""
    per_label = centroid_tre_per_label(fixed_labels, warped_labels, spacing, labels)
    present = per_label[np.isfinite(per_label)]
    return float(present.mean()) if present.size else math.nan


def dense_tre(predicted: Any, truth: Any, spacing: Sequence[float], mask: Any = None) -> float:
    """Mean Euclidean error (mm) of a predicted voxel displacement (3, D, H, W) against the
    ground truth, over ``mask`` (D, H, W) bool (everywhere if None)."""
    spacing = _spacing(spacing)
    p = _field(predicted)[0].numpy()
    t = _field(truth)[0].numpy()
    if p.shape != t.shape:
        raise ValueError(f"fields differ in shape: {p.shape} vs {t.shape}")
    error = np.sqrt((((p - t) * spacing[:, None, None, None]) ** 2).sum(axis=0))
    if mask is not None:
        mask = _volume(mask, "mask").astype(bool)
        if not mask.any():
            return math.nan
        error = error[mask]
    return float(error.mean())


# -- field regularity -------------------------------------------------------------------------


def _jacobian(displacement: Any) -> np.ndarray:
    from ddmr.spatial.field import jacobian_determinant

    return jacobian_determinant(_field(displacement))[0, 0].numpy()


def folding_percent(displacement: Any) -> float:
    """Percentage (0-100) of voxels with Jacobian determinant <= 0, of a (3, D, H, W) field
    (:func:`ddmr.spatial.field.folding_percent`)."""
    from ddmr.spatial import field

    return field.folding_percent(_jacobian(displacement))


def sdlogj(displacement: Any) -> float:
    """Standard deviation of ``log(max(det J, 1e-9))`` over the voxels of a (3, D, H, W)
    field (:func:`ddmr.spatial.field.sdlogj`)."""
    from ddmr.spatial import field

    return field.sdlogj(_jacobian(displacement))


# -- everything for one pair -------------------------------------------------------------------


def pair_metrics(fixed: Any, warped: Any, spacing: Sequence[float], displacement: Any,
                 fixed_labels: Any = None, warped_labels: Any = None,
                 labels: Sequence[int] | None = None, true_displacement: Any = None,
                 mask: Any = None, moving_labels: Any = None) -> dict[str, float]:
    """Every metric of one pair -> {name: value} (names in :data:`UNITS`, plus
    ``dsc_<label>`` per label and ``labels_scored`` / ``labels_shared``, how many labels
    ``dsc`` and ``dsc_shared`` are means over). ``dsc``, ``hd`` and ``hd95`` are means
    over the labels (NaN labels skipped); ``dsc_shared`` over those of them that
    ``moving_labels`` (the moving map before warping; default: the warped map) has too.
    Label metrics are NaN without label maps, ``dense_tre`` is NaN without a ground-truth
    field; its mask defaults to the fixed foreground."""
    out = {"ncc": ncc(fixed, warped), "ssim": ssim(fixed, warped)}
    if fixed_labels is not None and warped_labels is not None:
        values = [v for v in (labels if labels is not None
                              else foreground_labels(fixed_labels)) if v != 0]
        dice = dice_per_label(fixed_labels, warped_labels, values)
        with np.errstate(all="ignore"):
            out["dsc"] = float(np.nanmean(dice)) if np.isfinite(dice).any() else math.nan
            hd = hausdorff_per_label(fixed_labels, warped_labels, spacing, values)
            hd95 = hausdorff_per_label(fixed_labels, warped_labels, spacing, values, 95)
            out["hd"] = float(np.nanmean(hd)) if np.isfinite(hd).any() else math.nan
            out["hd95"] = float(np.nanmean(hd95)) if np.isfinite(hd95).any() else math.nan
        out["tre"] = centroid_tre(fixed_labels, warped_labels, spacing, values)
        shared = shared_labels(values, warped_labels if moving_labels is None
                               else moving_labels)
        out["dsc_shared"] = mean_over(dice, values, shared)
        out["labels_scored"], out["labels_shared"] = len(values), len(shared)
        for value, score in zip(values, dice, strict=True):
            out[f"dsc_{value}"] = float(score)
    else:
        out.update(dsc=math.nan, dsc_shared=math.nan, hd=math.nan, hd95=math.nan,
                   tre=math.nan)
    if true_displacement is not None:
        if mask is None and fixed_labels is not None:
            mask = _volume(fixed_labels, "fixed labels") > 0
        out["dense_tre"] = dense_tre(displacement, true_displacement, spacing, mask)
    else:
        out["dense_tre"] = math.nan
    out["folding"] = folding_percent(displacement)
    out["sdlogj"] = sdlogj(displacement)
    return out
