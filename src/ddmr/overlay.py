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


def _grey(image: np.ndarray) -> np.ndarray:
    """[0, 1] image (NaN outside) -> (rows, cols, 3) uint8, NaN black."""
    values = np.nan_to_num(image, nan=0.0)
    return np.repeat((values * 255 + 0.5).astype(np.uint8)[:, :, None], 3, axis=2)


def _diverging(jacobian: np.ndarray, low: float, high: float) -> np.ndarray:
    """Jacobian determinants -> RGB uint8: white at 1, towards blue down to ``low``,
    towards red up to ``high``; NaN black."""
    j = np.nan_to_num(jacobian, nan=1.0)
    below = np.clip((1.0 - j) / max(1.0 - low, 1e-6), 0, 1)
    above = np.clip((j - 1.0) / max(high - 1.0, 1e-6), 0, 1)
    red = 1.0 - 0.75 * below
    green = 1.0 - 0.75 * below - 0.85 * above
    blue = 1.0 - 0.85 * above
    rgb = (np.stack([red, green, blue], axis=2) * 255 + 0.5).astype(np.uint8)
    rgb[np.isnan(jacobian)] = 0
    return rgb


def save_overlay(path: str | Path, fixed: np.ndarray, fixed_geometry: Geometry,
                 moving: np.ndarray, moving_geometry: Geometry, warped: np.ndarray,
                 jacobian: np.ndarray, title: str = "ddmr register") -> Path:
    """Write the overlay figure (PNG) atomically. ``fixed``, ``warped`` and ``jacobian``
    are (I, J, K) on ``fixed_geometry``; ``moving`` (I', J', K') on its own grid, shown
    through world coordinates (the moving image resampled to the fixed grid). Drawn with
    Pillow (no matplotlib: it is a third of a registration's start-up)."""
    from PIL import Image, ImageDraw

    fixed_window, moving_window = _window(fixed), _window(moving)
    low = min(float(np.min(jacobian)), 0.5)
    high = max(float(np.max(jacobian)), 1.5)
    columns = ("fixed", "moving (world)", "warped", "checkerboard", "det J")
    rows = []
    for view, plane in slice_geometries(fixed_geometry):
        f = _scaled(_cut(fixed, fixed_geometry, plane), fixed_window)
        m = _scaled(_cut(moving, moving_geometry, plane), moving_window)
        m[np.isnan(f)] = np.nan  # the moving image as resampled onto the fixed grid
        w = _scaled(_cut(warped, fixed_geometry, plane), moving_window)
        j = _cut(jacobian, fixed_geometry, plane)
        panels = [_grey(f), _grey(m), _grey(w), _grey(checkerboard(f, w)),
                  _diverging(j, low, high)]
        rows.append((view, panels))
    cell = max(max(p.shape[0], p.shape[1]) for _, panels in rows for p in panels)
    left, top, gap = 70, 56, 4
    width = left + 5 * (cell + gap)
    height = top + 3 * (cell + gap) + 18
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), title, fill="black")
    draw.text((4, 16), ORIENTATION, fill="black")
    for col, name in enumerate(columns):
        draw.text((left + col * (cell + gap), 38), name, fill="black")
    for row, (view, panels) in enumerate(rows):
        y = top + row * (cell + gap)
        draw.text((4, y + cell // 2), view, fill="black")
        for col, panel in enumerate(panels):
            canvas.paste(Image.fromarray(panel), (left + col * (cell + gap), y))
    draw.text((left + 4 * (cell + gap), top + 3 * (cell + gap)),
              f"blue {low:.2f} - white 1 - red {high:.2f}", fill="black")
    path = Path(path)
    with atomic_path(path) as temporary:
        canvas.save(temporary, format="PNG")
    return path
