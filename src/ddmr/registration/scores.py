"""Scores of one registration on the fixed grid: label overlap and the field's
regularity (the definitions of :mod:`ddmr.metrics`, on native grids)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _label_boxes(*label_maps: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Per label value, the bounding box of its voxels in all ``label_maps`` (same shape,
    non-negative integers) grown by one voxel and clipped to the array: surfaces and
    distances inside it are those of the whole array. One pass per map
    (``scipy.ndimage.find_objects``)."""
    from scipy import ndimage

    shape = label_maps[0].shape
    low: dict[int, np.ndarray] = {}
    high: dict[int, np.ndarray] = {}
    for labels in label_maps:
        for index, box in enumerate(ndimage.find_objects(np.asarray(labels, dtype=np.int64))):
            if box is None:
                continue
            start = np.array([b.start for b in box])
            stop = np.array([b.stop for b in box])
            value = index + 1
            low[value] = np.minimum(low.get(value, start), start)
            high[value] = np.maximum(high.get(value, stop), stop)
    return {value: tuple(slice(max(int(lo) - 1, 0), min(int(hi) + 1, n))
                         for lo, hi, n in zip(low[value], high[value], shape, strict=True))
            for value in low}


def label_metrics(fixed_seg: np.ndarray, warped_seg: np.ndarray,
                  spacing: tuple[float, float, float],
                  moving_seg: np.ndarray | None = None) -> dict[str, Any]:
    """DSC, HD95 (mm) and centroid TRE (mm) of the warped labels against the fixed labels
    (:mod:`ddmr.metrics`): means over the fixed map's foreground labels
    (``labels_scored``), and DSC per label; ``dsc_shared``, the mean DSC over the labels
    that the moving map (``moving_seg``, default the warped map) has too
    (``labels_shared``). HD95 is computed on each label's bounding box (same value, less
    work)."""
    from ddmr import metrics

    values = metrics.foreground_labels(fixed_seg)
    if not values:
        return {"dsc": None, "dsc_shared": None, "hd95": None, "tre": None,
                "dsc_per_label": {}, "labels_scored": [], "labels_shared": []}
    dice = metrics.dice_per_label(fixed_seg, warped_seg, values)
    shared = metrics.shared_labels(values, warped_seg if moving_seg is None else moving_seg)
    dsc_shared = metrics.mean_over(dice, values, shared)
    hd95 = []
    boxes = _label_boxes(fixed_seg, warped_seg)
    for value in values:
        box = boxes[value]
        a, b = fixed_seg[box] == value, warped_seg[box] == value
        hd95.append(metrics.hausdorff(a, b, spacing, 95) if a.any() and b.any() else math.nan)
    hd95 = np.asarray(hd95, dtype=np.float64)
    with np.errstate(all="ignore"):
        return {
            "dsc": float(np.nanmean(dice)) if np.isfinite(dice).any() else None,
            "dsc_shared": dsc_shared if math.isfinite(dsc_shared) else None,
            "labels_scored": values, "labels_shared": shared,
            "hd95": float(np.nanmean(hd95)) if np.isfinite(hd95).any() else None,
            "tre": metrics.centroid_tre(fixed_seg, warped_seg, spacing, values),
            "dsc_per_label": {str(v): float(d) for v, d in zip(values, dice, strict=True)},
        }


def guided_apart(metrics: dict[str, Any], guided: Sequence[int]) -> dict[str, Any]:
    """The mean DSC of the guided labels and of the others both maps show (held out),
    from :func:`label_metrics`'s ``dsc_per_label`` and ``labels_shared``."""
    per_label = metrics["dsc_per_label"]
    shared = [v for v in metrics["labels_shared"] if str(v) in per_label]
    held_out = [v for v in shared if v not in guided]

    def mean(values: list[int]) -> float | None:
        return float(np.mean([per_label[str(v)] for v in values])) if values else None

    return {"labels": list(guided), "dsc_guided": mean([v for v in shared if v in guided]),
            "labels_held_out": held_out, "dsc_held_out": mean(held_out)}


def field_metrics(jacobian: np.ndarray, displacement_mm: np.ndarray) -> dict[str, float]:
    """Folding (% of voxels with det J <= 0) and SDlogJ (std of log max(det J, 1e-9)), the
    definitions of :mod:`ddmr.metrics`, from the Jacobian determinant already
    computed; extreme determinants and the largest displacement (mm)."""
    from ddmr.spatial.field import folding_percent, sdlogj

    return {
        "folding_percent": folding_percent(jacobian),
        "sdlogj": sdlogj(jacobian),
        "jacobian_min": float(jacobian.min()),
        "jacobian_max": float(jacobian.max()),
        "displacement_max_mm": _largest_vector(displacement_mm),
    }


#: Voxels of a field whose vector lengths :func:`_largest_vector` squares at once.
VECTOR_SLAB = 1 << 20


def _largest_vector(field: np.ndarray) -> float:
    """The largest vector length of a field (3, ...), summed in float64 one component at
    a time, a slab of at most about :data:`VECTOR_SLAB` voxels at a time (a 1 mm native
    grid: no volume of float64 temporaries at the process's peak)."""
    flat = field.reshape(field.shape[0], -1)
    largest = 0.0
    for start in range(0, flat.shape[1], VECTOR_SLAB):
        part = flat[:, start:start + VECTOR_SLAB]
        squared = np.square(part[0], dtype=np.float64)
        for component in part[1:]:
            squared += np.square(component, dtype=np.float64)
        largest = max(largest, float(squared.max()))
    return float(np.sqrt(largest))
