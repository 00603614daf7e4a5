"""Report figures (matplotlib, Agg): box plots of per-pair metrics across methods and
slice overlays of registered pairs (fixed, warped, difference, Jacobian determinant).

Slices are axial, through the centre of the fixed image's world box, cut on a plane
aligned with the world axes whatever the voxel orientation
(:func:`ddmr.overlay.slice_geometries`), and shown in radiological convention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ddmr.evaluate.tables import COLUMNS, shown_metrics
from ddmr.io.files import atomic_path
from ddmr.metrics import HIGHER_IS_BETTER, UNITS
from ddmr.spatial.grid import Geometry
from ddmr.spatial.resample import resample_to

#: The display convention stated in every report (and tested).
CONVENTION = ("Axial slices through the centre of the fixed image, in radiological "
              "convention: the patient's right on the image's left, anterior at the top.")

_AXIS_UNITS = {**UNITS, "seconds": "s"}
_UNITLESS = {"dsc": "ratio", "dsc_shared": "ratio", "ncc": "unitless", "ssim": "unitless",
             "sdlogj": "unitless"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path, dpi: int = 90) -> Path:
    plt = _pyplot()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi, format="png", bbox_inches="tight", pad_inches=0.1)
    plt.close(figure)
    return path


def metric_label(metric: str) -> str:
    """Axis label with the unit, e.g. ``"TRE (mm), lower is better"``."""
    unit = _AXIS_UNITS.get(metric) or _UNITLESS.get(metric, "unitless")
    better = "higher" if HIGHER_IS_BETTER.get(metric, False) else "lower"
    return f"{COLUMNS.get(metric, metric)} ({unit}), {better} is better"


def boxplot_metrics(results: pd.DataFrame, path: str | Path,
                    metrics: Sequence[str] | None = None) -> Path | None:
    """One box plot per metric (methods on the x axis, all pairs as points); None when no
    metric has finite values."""
    plt = _pyplot()
    candidates = metrics or shown_metrics(results)
    shown = [m for m in candidates
             if np.isfinite(results[m].to_numpy(dtype=np.float64)).any()]
    if not shown:
        return None
    methods = list(dict.fromkeys(results["method"]))
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    width = max(4.0, 0.7 * len(methods) + 1.5)
    figure, axes = plt.subplots(rows, cols, figsize=(width * cols, 3.4 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, shown, strict=False):
        data = []
        for method in methods:
            values = results.loc[results["method"] == method, metric].to_numpy(np.float64)
            data.append(values[np.isfinite(values)])
        ax.boxplot(data, showfliers=False)
        for k, values in enumerate(data, start=1):
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else 0.0
            if len(values):  # a method may have no finite value (e.g. no overlap at all)
                ax.plot(k + jitter, values, "o", ms=3, alpha=0.6, color="tab:blue")
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(metric_label(metric), fontsize=8)
        ax.set_title(COLUMNS.get(metric, metric), fontsize=10)
        if metric == "seconds":
            _time_axis(ax, data)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    figure.tight_layout()
    return _save(figure, Path(path))


def _time_axis(ax, data: Sequence[np.ndarray]) -> None:
    """Times on a log axis in every section (they span orders of magnitude: no
    registration against ANTs); a symmetric-log axis, linear below the smallest positive
    time, when some time is 0 (results that did not count warping)."""
    positive = [float(v[v > 0].min()) for v in data if (v > 0).any()]
    if not positive:
        return
    if any((v <= 0).any() for v in data):
        ax.set_yscale("symlog", linthresh=min(positive))
    else:
        ax.set_yscale("log")


def axial_slice(volume: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The axial slice through the centre of ``geometry``'s world box, (rows, columns),
    radiological (see :data:`CONVENTION`); NaN outside the volume."""
    from ddmr.overlay import slice_geometries

    planes = dict(slice_geometries(geometry))
    plane = planes["axial"]
    return resample_to(np.asarray(volume, dtype=np.float32), geometry, plane, order=1,
                       cval=np.nan)[:, :, 0]


@dataclass
class OverlayRow:
    """One method's result on a pair: (D, H, W) arrays on the pair's grid."""

    method: str
    warped: np.ndarray
    jacobian: np.ndarray


def overlay_figure(path: str | Path, fixed: np.ndarray, geometry: Geometry,
                   rows: Sequence[OverlayRow], title: str) -> Path:
    """Rows of methods; columns fixed, warped, warped - fixed, Jacobian determinant, with
    shared colour bars (intensities are the pair's normalised [0, 1] values)."""
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm

    f = axial_slice(fixed, geometry)
    warped = [axial_slice(r.warped, geometry) for r in rows]
    jac = [axial_slice(r.jacobian, geometry) for r in rows]
    diffs = [w - f for w in warped]
    limit = max([float(np.nanmax(np.abs(d))) for d in diffs if np.isfinite(d).any()] + [0.05])
    low = min([float(np.nanmin(j)) for j in jac if np.isfinite(j).any()] + [0.5])
    high = max([float(np.nanmax(j)) for j in jac if np.isfinite(j).any()] + [1.5])
    low = min(low, 0.999)
    norm = TwoSlopeNorm(vmin=low, vcenter=1.0, vmax=max(high, 1.001))
    grey = plt.get_cmap("gray").with_extremes(bad="black")
    diverging = plt.get_cmap("RdBu_r").with_extremes(bad="black")
    aspect = f.shape[1] / f.shape[0]
    figure, axes = plt.subplots(len(rows), 4, squeeze=False, layout="constrained",
                                figsize=(4 * 2.4 * aspect + 0.4, 2.4 * len(rows) + 1.4))
    titles = ("fixed", "warped moving", "warped − fixed", "Jacobian determinant")
    bars = ("intensity (normalised, 0-1)", "intensity (normalised, 0-1)",
            "warped − fixed (normalised intensity)", "det J (volume ratio, unitless)")
    shown = []
    for i, row in enumerate(rows):
        panels = [(f, dict(cmap=grey, vmin=0, vmax=1)),
                  (warped[i], dict(cmap=grey, vmin=0, vmax=1)),
                  (diffs[i], dict(cmap=diverging, vmin=-limit, vmax=limit)),
                  (jac[i], dict(cmap=diverging, norm=norm))]
        shown = []
        for j, (image, style) in enumerate(panels):
            ax = axes[i, j]
            shown.append(ax.imshow(image, interpolation="nearest", **style))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
        axes[i, 0].set_ylabel(row.method, fontsize=10)
        for x, text, align in ((0.03, "R", "left"), (0.97, "L", "right")):
            axes[i, 0].text(x, 0.5, text, color="yellow", fontsize=8, va="center", ha=align,
                            transform=axes[i, 0].transAxes)
    for j, label in enumerate(bars):
        bar = figure.colorbar(shown[j], ax=axes[:, j], location="bottom", shrink=0.9,
                              aspect=15)
        if j == 3:  # evenly spaced on the two-slope bar: no crowded labels
            low_tick, high_tick = norm.vmin, norm.vmax
            bar.set_ticks([low_tick, (low_tick + 1) / 2, 1.0, (1 + high_tick) / 2, high_tick])
            bar.ax.xaxis.set_major_formatter("{x:.2f}")
        bar.set_label(label, fontsize=7)
        bar.ax.tick_params(labelsize=7)
    figure.suptitle(title, fontsize=10)
    return _save(figure, Path(path))
