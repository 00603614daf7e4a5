"""The registration overlay figure (``overlay.png``): fixed, moving, warped, a
fixed/warped checkerboard and the Jacobian determinant, on three orthogonal slices.

Slices are cut through the centre of the fixed image's world box on planes aligned with
the world (RAS) axes, whatever the images' voxel orientation, and shown in radiological
orientation: the patient's right on the image's left (axial, coronal), anterior on the
left (sagittal), superior (coronal, sagittal) or anterior (axial) at the top.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddmr.data.grid import image_box
from ddmr.io import Geometry, atomic_path, resample_to

#: Longest side of a displayed slice, in pixels.
MAX_PIXELS = 192

ORIENTATION = ("radiological: patient right on image left (axial, coronal), anterior on "
               "the left (sagittal), superior/anterior up")

# view name, world axis of the rows, of the columns, of the slice normal (RAS 0, 1, 2)
VIEWS = (("axial", 1, 0, 2), ("coronal", 2, 0, 1), ("sagittal", 2, 1, 0))


def slice_geometries(geometry: Geometry) -> list[tuple[str, Geometry]]:
    """One 2D grid (rows, columns, 1) per view over the world box of ``geometry``; rows
    and columns run from the box's high corner down (radiological, see module doc)."""
    low, high = image_box(geometry)
    extent = high - low
    step = max(min(geometry.spacing), float(extent.max()) / MAX_PIXELS)
    centre = (low + high) / 2.0
    out = []
    for name, row_axis, col_axis, normal in VIEWS:
        affine = np.zeros((4, 4))
        affine[row_axis, 0] = -step
        affine[col_axis, 1] = -step
        affine[normal, 2] = step
        affine[3, 3] = 1.0
        affine[row_axis, 3] = high[row_axis] - step / 2
        affine[col_axis, 3] = high[col_axis] - step / 2
        affine[normal, 3] = centre[normal]
        shape = (max(1, int(extent[row_axis] // step)), max(1, int(extent[col_axis] // step)), 1)
        out.append((name, Geometry(affine, shape)))
    return out


def _cut(array: np.ndarray, geometry: Geometry, plane: Geometry) -> np.ndarray:
    return resample_to(array.astype(np.float32, copy=False), geometry, plane, order=1,
                       cval=np.nan)[:, :, 0]


def _window(array: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(array, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _scaled(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    return np.clip((image - window[0]) / (window[1] - window[0]), 0.0, 1.0)


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Alternate square tiles of two 2D images of the same shape (``tiles`` along the
    longer side)."""
    size = max(1, max(a.shape) // tiles)
    rows, cols = np.indices(a.shape)
    return np.where(((rows // size) + (cols // size)) % 2 == 0, a, b)


def save_overlay(path: str | Path, fixed: np.ndarray, fixed_geometry: Geometry,
                 moving: np.ndarray, moving_geometry: Geometry, warped: np.ndarray,
                 jacobian: np.ndarray, title: str = "ddmr register") -> Path:
    """Write the overlay figure (PNG) atomically. ``fixed``, ``warped`` and ``jacobian``
    are (I, J, K) on ``fixed_geometry``; ``moving`` (I', J', K') on its own grid, shown
    through world coordinates (the moving image resampled to the fixed grid)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    fixed_window, moving_window = _window(fixed), _window(moving)
    low = min(float(np.min(jacobian)), 0.5)
    high = max(float(np.max(jacobian)), 1.5)
    norm = TwoSlopeNorm(vmin=low, vcenter=1.0, vmax=high)
    grey = plt.get_cmap("gray").with_extremes(bad="black")
    diverging = plt.get_cmap("RdBu_r").with_extremes(bad="black")
    columns = ("fixed", "moving (world, fixed grid)", "warped", "checkerboard fixed/warped",
               "Jacobian determinant")
    figure, axes = plt.subplots(3, 5, figsize=(16, 10), squeeze=False)
    for row, (view, plane) in enumerate(slice_geometries(fixed_geometry)):
        f = _scaled(_cut(fixed, fixed_geometry, plane), fixed_window)
        m = _scaled(_cut(moving, moving_geometry, plane), moving_window)
        m[np.isnan(f)] = np.nan  # the moving image as resampled onto the fixed grid
        w = _scaled(_cut(warped, fixed_geometry, plane), moving_window)
        j = _cut(jacobian, fixed_geometry, plane)
        panels = (f, m, w, checkerboard(f, w))
        for col, image in enumerate(panels):
            axes[row, col].imshow(image, cmap=grey, vmin=0, vmax=1, interpolation="nearest")
        shown = axes[row, 4].imshow(j, cmap=diverging, norm=norm, interpolation="nearest")
        figure.colorbar(shown, ax=axes[row, 4], fraction=0.046, pad=0.04)
        axes[row, 0].set_ylabel(view)
        for col in range(5):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if row == 0:
                axes[row, col].set_title(columns[col], fontsize=10)
    figure.suptitle(f"{title}\n{ORIENTATION}", fontsize=11)
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=80, format="png")
    plt.close(figure)
    return path
