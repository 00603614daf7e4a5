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

from ddmr.io.files import atomic_path
from ddmr.spatial.grid import Geometry, image_box
from ddmr.spatial.resample import resample_to

#: Longest side of a displayed slice, in pixels.
MAX_PIXELS = 192

ORIENTATION = ("radiological: patient right on image left (axial, coronal), anterior on "
               "the left (sagittal), superior/anterior up")

# view name, world axis of the rows, of the columns, of the slice normal (RAS 0, 1, 2)
VIEWS = (("axial", 1, 0, 2), ("coronal", 2, 0, 1), ("sagittal", 2, 1, 0))


def slice_geometries(geometry: Geometry, centre: np.ndarray | None = None,
                     max_pixels: int = MAX_PIXELS) -> list[tuple[str, Geometry]]:
    """One 2D grid (rows, columns, 1) per view over the world box of ``geometry``, at
    most ``max_pixels`` along a side, through the world point ``centre`` (RAS mm;
    default the box's centre); rows and columns run from the box's high corner down
    (radiological, see module doc)."""
    low, high = image_box(geometry)
    extent = high - low
    step = max(min(geometry.spacing), float(extent.max()) / max_pixels)
    centre = (low + high) / 2.0 if centre is None else np.asarray(centre, dtype=np.float64)
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


def cut_slice(array: np.ndarray, geometry: Geometry, plane: Geometry, order: int = 1
         ) -> np.ndarray:
    """``array`` (I, J, K) on ``geometry`` resampled (trilinear; ``order`` 0: nearest, for
    label maps) onto the one-voxel-thick ``plane``: (rows, columns) float32, NaN beyond
    the array. Only the slab of the array around the plane is read (two voxels of
    margin: the same values as the whole array)."""
    index = geometry.world_to_index(plane.world_corners())
    size = np.array(array.shape)
    low = np.clip(np.floor(index.min(axis=0)).astype(int) - 2, 0, size)
    high = np.clip(np.ceil(index.max(axis=0)).astype(int) + 3, 0, size)
    if (high <= low).any():
        return np.full(plane.shape[:2], np.nan, dtype=np.float32)
    slab = array[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
    shift = np.eye(4)
    shift[:3, 3] = low
    return resample_to(slab.astype(np.float32), Geometry(geometry.affine @ shift, slab.shape),
                       plane, order=order, cval=np.nan)[:, :, 0]


#: Voxels an image's display window is taken from (a regular subsample beyond).
WINDOW_VOXELS = 1 << 21


def display_window(array: np.ndarray, voxels: int = WINDOW_VOXELS) -> tuple[float, float]:
    """The display window: the 1st and 99th percentiles (of a regular subsample of at
    most ``voxels`` voxels)."""
    step = max(1, int(np.ceil((array.size / voxels) ** (1 / 3))))
    lo, hi = np.percentile(array[::step, ::step, ::step], [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def scaled_grey(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
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


def diverging_rgb(jacobian: np.ndarray, low: float, high: float) -> np.ndarray:
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


#: Width of each column of panels, in pixels (the figure is at least 1200 wide).
CELL = 240
#: Font size (pixels) of the figure's text.
FONT_SIZE = 15


def _font(size: int = FONT_SIZE):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _wrapped(draw, text: str, font, width: int) -> list[str]:
    """``text`` cut into lines no wider than ``width`` pixels (at word boundaries)."""
    lines: list[str] = []
    for paragraph in text.splitlines():
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}".strip()
            if line and draw.textlength(trial, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def _colour_bar(width: int, height: int, low: float, high: float) -> np.ndarray:
    """(height, width, 3) uint8: the det J colours from ``low`` (left) through 1 to
    ``high`` (right), 1 at the middle."""
    position = np.linspace(0.0, 1.0, width)
    values = np.where(position < 0.5, low + (1.0 - low) * position * 2,
                      1.0 + (high - 1.0) * (position - 0.5) * 2)
    return np.repeat(diverging_rgb(values[None, :], low, high), height, axis=0)


def headers_gap(fixed_geometry: Geometry, moving_geometry: Geometry) -> float:
    """How far (mm) the moving grid's world box lies from the fixed grid's, as the
    headers place them: 0 when the boxes overlap."""
    fixed_low, fixed_high = image_box(fixed_geometry)
    moving_low, moving_high = image_box(moving_geometry)
    apart = np.maximum(0.0, np.maximum(moving_low - fixed_high, fixed_low - moving_high))
    return float(np.linalg.norm(apart))


def missing_note(stage: str, gap_mm: float = 0.0) -> str:
    """Words for a panel of the moving image with nothing of it on the slice: ``stage``
    ``headers`` (as the headers place it, ``gap_mm`` from :func:`headers_gap`) or
    ``affine`` (after the affine part)."""
    if stage == "headers" and gap_mm > 0:
        return (f"The headers put the images apart: the moving image lies {gap_mm:.0f} mm "
                "outside the fixed image's box, so none of it falls on the fixed grid "
                "(not a rendering failure).")
    if stage == "headers":
        return "As its header places it, the moving image does not reach this slice."
    return "After the affine part, the moving image does not reach this slice."


#: Background of a panel that holds a note instead of an image.
NOTE_GREY = 232


def _note_lines(draw, text: str, font, box: tuple[int, int]) -> list[str]:
    """``text`` wrapped to the panel ``box`` (width, height), cut to the lines that fit."""
    lines = _wrapped(draw, text, font, box[0] - 12)
    fit = max(1, (box[1] - 8) // (font.size + 3))
    return lines[:fit] if len(lines) <= fit else [*lines[:fit - 1], lines[fit - 1] + " ..."]


def save_overlay(path: str | Path, fixed: np.ndarray, fixed_geometry: Geometry,
                 moving: np.ndarray, moving_geometry: Geometry, warped: np.ndarray,
                 jacobian: np.ndarray, title: str = "ddmr register",
                 point_map: np.ndarray | None = None, centre: np.ndarray | None = None
                 ) -> Path:
    """Write the overlay figure (PNG) atomically. ``fixed``, ``warped`` and ``jacobian``
    are (I, J, K) on ``fixed_geometry``; ``moving`` (I', J', K') on its own grid, shown
    through world coordinates as the headers place it and, with ``point_map`` (4, 4, RAS,
    fixed world -> moving world), after the affine part alone; a moving panel with
    nothing of the image on its slice says so in words (:func:`missing_note`). The slices
    cut through ``centre`` (RAS mm; default the fixed box's centre). Drawn with Pillow (no
    matplotlib: it is a third of a registration's start-up)."""
    from PIL import Image, ImageDraw

    fixed_window, moving_window = display_window(fixed), display_window(moving)
    low = min(float(np.nanmin(jacobian)), 0.5)
    high = max(float(np.nanmax(jacobian)), 1.5)
    apart = headers_gap(fixed_geometry, moving_geometry)
    columns = ["fixed", "moving (headers)"] + (["moving (affine)"] if point_map is not None
                                               else []) + ["warped", "checkerboard", "det J"]
    rows, notes = [], {}
    for view, plane in slice_geometries(fixed_geometry, centre):
        f = scaled_grey(cut_slice(fixed, fixed_geometry, plane), fixed_window)
        moved = [("headers", plane)]
        if point_map is not None:
            moved.append(("affine", Geometry(np.asarray(point_map) @ plane.affine,
                                             plane.shape)))
        panels = [_grey(f)]
        for stage, where in moved:
            m = scaled_grey(cut_slice(moving, moving_geometry, where), moving_window)
            m[np.isnan(f)] = np.nan  # the moving image as resampled onto the fixed grid
            if not np.isfinite(m).any():
                notes[len(rows), len(panels)] = missing_note(stage, apart)
                m = np.full(m.shape, NOTE_GREY / 255.0)
            panels.append(_grey(m))
        w = scaled_grey(cut_slice(warped, fixed_geometry, plane), moving_window)
        j = cut_slice(jacobian, fixed_geometry, plane)
        panels += [_grey(w), _grey(checkerboard(f, w)), diverging_rgb(j, low, high)]
        rows.append((view, panels))
    longest = max(max(p.shape[0], p.shape[1]) for _, panels in rows for p in panels)
    scale = CELL / longest
    font, gap, left = _font(), 6, 90
    note_font = _font(12)
    width = left + len(columns) * (CELL + gap)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    header = [*_wrapped(probe, title, font, width - 8), ORIENTATION]
    line = FONT_SIZE + 5
    top = 6 + line * len(header) + line + 4
    height = top + 3 * (CELL + gap) + 3 * line + 8
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for number, text in enumerate(header):
        draw.text((4, 6 + number * line), text, fill="black", font=font)
    for col, name in enumerate(columns):
        draw.text((left + col * (CELL + gap), top - line - 2), name, fill="black", font=font)
    for row, (view, panels) in enumerate(rows):
        y = top + row * (CELL + gap)
        draw.text((4, y + CELL // 2 - FONT_SIZE // 2), view, fill="black", font=font)
        for col, panel in enumerate(panels):
            size = (max(1, round(panel.shape[1] * scale)), max(1, round(panel.shape[0] * scale)))
            image = Image.fromarray(panel).resize(size, Image.Resampling.NEAREST)
            x = left + col * (CELL + gap)
            canvas.paste(image, (x, y))
            if (row, col) in notes:
                draw.rectangle((x, y, x + size[0] - 1, y + size[1] - 1), outline=(150, 150, 150))
                for number, text in enumerate(_note_lines(draw, notes[row, col], note_font,
                                                          size)):
                    draw.text((x + 6, y + 5 + number * 15), text, fill=(120, 20, 20),
                              font=note_font)
    bar_x = left + (len(columns) - 1) * (CELL + gap)
    bar_y = top + 3 * (CELL + gap) + 4
    canvas.paste(Image.fromarray(_colour_bar(CELL, 12, low, high)), (bar_x, bar_y))
    for text, x in ((f"{low:.2f}", bar_x), ("1", bar_x + CELL // 2 - 4),
                    (f"{high:.2f}", bar_x + CELL - draw.textlength(f"{high:.2f}", font=font))):
        draw.text((x, bar_y + 16), text, fill="black", font=font)
    draw.text((bar_x - draw.textlength("det J ", font=font) - 4, bar_y - 2), "det J",
              fill="black", font=font)
    path = Path(path)
    with atomic_path(path) as temporary:
        canvas.save(temporary, format="PNG", compress_level=1)  # fast (as io.embed)
    return path
