"""Preview figure of a synthetic pair: three orthogonal slices of the fixed image, the
moving image, their overlay and the ground-truth displacement magnitude (mm)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _slices(volume: np.ndarray) -> list[np.ndarray]:
    """Middle slices across axes 0, 1 and 2 of a (I, J, K) volume."""
    i, j, k = (n // 2 for n in volume.shape)
    return [volume[i], volume[:, j], volume[:, :, k]]


def _aspects(spacing: Sequence[float]) -> list[float]:
    """imshow aspect (row size / column size in mm) of each slice of :func:`_slices`."""
    si, sj, sk = spacing
    return [sj / sk, si / sk, si / sj]


def pair_preview(path: str | Path, fixed: np.ndarray, moving: np.ndarray,
                 displacement_vox: np.ndarray, spacing: Sequence[float]) -> Path:
    """Write a PNG: rows are the slices across i, j, k; columns fixed, moving, overlay
    (fixed magenta, moving green) and ``|u|`` in mm with a colour bar.

    fixed, moving: (I, J, K) in [0, 1]; displacement_vox: (3, I, J, K) voxels.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    spacing = [float(s) for s in spacing]
    magnitude = np.sqrt(sum((displacement_vox[a] * spacing[a]) ** 2 for a in range(3)))
    top = max(float(magnitude.max()), 1e-6)
    figure, axes = plt.subplots(3, 4, figsize=(12, 9), layout="constrained", squeeze=False)
    image = None
    for row, (f, m, d, aspect) in enumerate(zip(_slices(fixed), _slices(moving),
                                                _slices(magnitude), _aspects(spacing),
                                                strict=True)):
        overlay = np.clip(np.stack([f, m, f], axis=-1), 0, 1)
        panels = [(f, "gray", "fixed"), (m, "gray", "moving"), (overlay, None, "overlay")]
        for col, (data, cmap, title) in enumerate(panels):
            axes[row, col].imshow(data, cmap=cmap, vmin=0, vmax=1, aspect=aspect,
                                  interpolation="nearest")
            axes[row, col].set_title(f"{title} (axis {row} middle)", fontsize=9)
        image = axes[row, 3].imshow(d, cmap="viridis", vmin=0, vmax=top, aspect=aspect,
                                    interpolation="nearest")
        axes[row, 3].set_title(f"|u| (axis {row} middle)", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.colorbar(image, ax=axes[:, 3], label="ground-truth displacement (mm)", shrink=0.8)
    path = Path(path)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
