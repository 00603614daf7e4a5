"""The QC page of one registration, ``qc.html``: one self-contained file (images as
``data:`` URIs, inline CSS and script, no network) for a person to judge the result.

On three planes through the fixed image's foreground (axial, coronal, sagittal; cut as
``overlay.png`` cuts them, :func:`ddmr.overlay.slice_geometries`): the fixed image
flickered against the moving image (registered, after the affine part alone, or as the
headers place it), the label contours on the fixed image, and the Jacobian determinant
with its legend (folding marked); then the QC verdict, every check with its value, limit
and outcome, and the summary's main metrics. Only 2D slices are cut and encoded, so the
page costs a fraction of a second on a 1 mm head.

The page's ``<head>`` carries a small colour-fusion thumbnail (``<meta
name="ddmr-thumbnail">``), which the batch index (:mod:`ddmr.registration.batch_index`)
reads without loading the page's images (:func:`read_thumbnail`).
"""

from __future__ import annotations

import colorsys
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddmr.io.embed import data_uri, encode_image, image_uri
from ddmr.io.files import atomic_path
from ddmr.overlay import (
    ORIENTATION,
    cut_slice,
    display_window,
    diverging_rgb,
    headers_gap,
    missing_note,
    scaled_grey,
    slice_geometries,
)
from ddmr.registration.qc import QCLimits, Verdict
from ddmr.spatial.grid import Geometry, image_box

#: Longest side of a cut slice, in pixels (1 mm on a 256 mm head).
PAGE_PIXELS = 256
#: Longest side of a slice as shown on the page, in CSS pixels.
SHOWN_PIXELS = 360
#: Longest side of the batch index's thumbnail, in pixels.
THUMBNAIL_PIXELS = 128
#: Voxels each display window is taken from (a regular subsample).
WINDOW_VOXELS = 1 << 18
#: Name of the ``<meta>`` element that holds the thumbnail.
THUMBNAIL_META = "ddmr-thumbnail"
#: Colour of folded voxels (det J <= 0) on the Jacobian panels.
FOLDING_RGB = (0, 190, 0)
#: Flicker period, milliseconds.
FLICKER_MS = 700

#: What the moving layer of the flicker shows, per stage.
STAGES = {"warped": "warped (registered)", "affine": "moving, affine part only",
          "headers": "moving, as the headers place it"}


@dataclass
class PlaneView:
    """One plane's panels: uint8 images, or a note where the moving image is absent."""

    name: str
    position: str
    fixed: np.ndarray
    moving: dict[str, np.ndarray | str] = field(default_factory=dict)
    contours: np.ndarray | None = None
    labels_shown: set[int] = field(default_factory=set)
    jacobian: np.ndarray | None = None
    folded: int = 0


def write_qc_page(path: str | Path, result: Any, limits: QCLimits | None = None,
                  fixed_labels: np.ndarray | None = None) -> Path:
    """Write the QC page of ``result`` (a :class:`~ddmr.registration.result.
    RegistrationResult`) to ``path`` atomically. ``limits``: the QC limits the verdict
    was made with (default: ``summary["qc"]["limits"]`` where recorded, else ddmr's
    defaults); ``fixed_labels``: the fixed label map (I, J, K), drawn as white contours
    under the warped ones."""
    page = qc_page_html(result, limits, fixed_labels)
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return path


def qc_page_html(result: Any, limits: QCLimits | None = None,
                 fixed_labels: np.ndarray | None = None) -> str:
    """The QC page of ``result`` as one HTML string (see :func:`write_qc_page`)."""
    limits, limits_source = _limits(result, limits)
    views, thumbnail, jacobian_range = _views(result, fixed_labels)
    gap = headers_gap(result.geometry, result.moving_geometry)
    summary = result.summary
    title = f"QC: {_short(summary.get('fixed'))} \u2190 {_short(summary.get('moving'))}"
    verdict: Verdict = result.qc
    state = "pass" if verdict.passed else "fail"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f'<meta name="{THUMBNAIL_META}" content="{thumbnail}">',
             f'<meta name="ddmr-qc" content="{state}">',
             f"<title>{html.escape(title)}</title>", f"<style>{_STYLE}</style></head>",
             f'<body data-mode="warped" data-show="fixed" data-playing="no" '
             f'data-flicker-ms="{FLICKER_MS}">',
             _header(title, result, verdict),
             _metrics_section(summary),
             _compare_section(views, gap, result.point_map is not None),
             _labels_section(views, result, fixed_labels is not None),
             _jacobian_section(views, jacobian_range, verdict.measures),
             _verdict_section(verdict, limits, limits_source),
             _footer(summary, views),
             f"<script>{_SCRIPT}</script>", "</body></html>"]
    return "\n".join(part for part in parts if part) + "\n"


def read_thumbnail(path: str | Path) -> str | None:
    """The thumbnail ``data:`` URI of a QC page (None: no page, or none in it); reads
    only the page's head."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            head = handle.read(1 << 16)
    except OSError:
        return None
    found = re.search(rf'<meta name="{THUMBNAIL_META}" content="(data:image/[a-z]+;base64,'
                      r'[A-Za-z0-9+/=]+)">', head)
    return found.group(1) if found else None


# --- the slices ---------------------------------------------------------------------------

def _limits(result: Any, limits: QCLimits | None) -> tuple[QCLimits, str]:
    """The limits to show, and where they come from."""
    if limits is not None:
        return limits, "the limits this registration was checked with"
    recorded = (result.summary.get("qc") or {}).get("limits")
    if isinstance(recorded, dict):
        try:
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()}
            return QCLimits(**values), "the limits recorded in summary.json"
        except TypeError:
            pass
    return QCLimits(), "ddmr's default limits (ddmr.registration.qc.QCLimits)"


def _foreground_centre(array: np.ndarray, geometry: Geometry,
                       window: tuple[float, float]) -> np.ndarray:
    """World centre (RAS mm) of the voxels brighter than a fifth of the display window
    (a regular subsample of about 2^18 voxels); the box's centre when there are none."""
    step = max(1, math.ceil((array.size / (1 << 18)) ** (1 / 3)))
    sample = array[::step, ::step, ::step]
    index = np.argwhere(sample > window[0] + 0.2 * (window[1] - window[0]))
    if not len(index):
        low, high = image_box(geometry)
        return (low + high) / 2.0
    return geometry.index_to_world(index.mean(axis=0) * step)


def _grey(image: np.ndarray) -> np.ndarray:
    """[0, 1] image (NaN outside) -> uint8, NaN black."""
    return (np.nan_to_num(image, nan=0.0) * 255 + 0.5).astype(np.uint8)


def _label_colours(values: np.ndarray) -> np.ndarray:
    """(n, 3) uint8 colours of label values: hues a golden angle apart."""
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb((v * 0.618034) % 1.0,
                                                                  0.85, 1.0)]
                     for v in values], dtype=np.uint8).reshape(-1, 3)


def _edges(labels: np.ndarray) -> np.ndarray:
    """Pixels of a label (> 0) that touch another value (4-neighbours)."""
    edge = np.zeros(labels.shape, dtype=bool)
    differs = labels[1:] != labels[:-1]
    edge[1:] |= differs
    edge[:-1] |= differs
    differs = labels[:, 1:] != labels[:, :-1]
    edge[:, 1:] |= differs
    edge[:, :-1] |= differs
    return edge & (labels > 0)


def _contours(fixed: np.ndarray, warped_labels: np.ndarray | None,
              fixed_labels: np.ndarray | None) -> tuple[np.ndarray, set[int]]:
    """The grey fixed slice (uint8) with white fixed-label and coloured warped-label
    contours, enlarged by a whole factor so the lines stay thin on small images."""
    factor = max(1, SHOWN_PIXELS // max(fixed.shape))
    from PIL import Image

    grey = Image.fromarray(fixed).resize((fixed.shape[1] * factor, fixed.shape[0] * factor),
                                         Image.Resampling.BILINEAR)
    rgb = np.repeat(np.asarray(grey)[:, :, None], 3, axis=2)
    shown: set[int] = set()

    def enlarged(labels: np.ndarray) -> np.ndarray:
        values = np.nan_to_num(labels, nan=0.0).astype(np.int64)
        return np.repeat(np.repeat(values, factor, axis=0), factor, axis=1)

    if fixed_labels is not None:
        rgb[_edges(enlarged(fixed_labels))] = 255
    if warped_labels is not None:
        values = enlarged(warped_labels)
        edge = _edges(values)
        present = np.unique(values[edge])
        colours = _label_colours(present)
        rgb[edge] = colours[np.searchsorted(present, values[edge])]
        shown = {int(v) for v in present}
    return rgb, shown


def _jacobian_rgb(jacobian: np.ndarray, low: float, high: float) -> tuple[np.ndarray, int]:
    """det J slice -> RGB (blue below 1, white at 1, red above; folded pixels marked in
    :data:`FOLDING_RGB`, grown by a pixel so they show), and the count of folded pixels."""
    rgb = diverging_rgb(jacobian, low, high)
    folded = np.nan_to_num(jacobian, nan=1.0) <= 0
    grown = folded.copy()
    grown[1:] |= folded[:-1]
    grown[:-1] |= folded[1:]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    rgb[grown] = FOLDING_RGB
    return rgb, int(folded.sum())


def _jacobian_range(result: Any) -> tuple[float, float]:
    """The det J colour range: up to 0.5 below 1 and 1.5 above, further to the 0.1 and
    99.9 percentiles (QC's measures) when they lie beyond; never below 0 (folding has its
    own colour)."""
    measures = result.qc.measures
    low, high = measures.get("jacobian_p0_1"), measures.get("jacobian_p99_9")
    if not (isinstance(low, float | int) and math.isfinite(low)):
        low = float(np.nanmin(result.jacobian)) if result.jacobian.size else 0.5
    if not (isinstance(high, float | int) and math.isfinite(high)):
        high = float(np.nanmax(result.jacobian)) if result.jacobian.size else 1.5
    low = min(max(float(low), 0.0), 0.5) if math.isfinite(low) else 0.0
    high = max(float(high), 1.5) if math.isfinite(high) else 1.5
    return low, high


def _views(result: Any, fixed_labels: np.ndarray | None
           ) -> tuple[list[PlaneView], str, tuple[float, float]]:
    """The panels of the three planes, the thumbnail ``data:`` URI and the det J range."""
    geometry, moving_geometry = result.geometry, result.moving_geometry
    fixed_window = display_window(result.fixed, WINDOW_VOXELS)
    moving_window = display_window(result.moving, WINDOW_VOXELS)
    centre = result.view_centre()  # a partial field of view: where the moving image is
    if centre is None:
        centre = _foreground_centre(result.fixed, geometry, fixed_window)
    low, high = _jacobian_range(result)
    gap = headers_gap(geometry, moving_geometry)
    views, thumbnail = [], ""
    for name, plane in slice_geometries(geometry, centre, PAGE_PIXELS):
        f = scaled_grey(cut_slice(result.fixed, geometry, plane), fixed_window)
        view = PlaneView(name, _position(name, centre), _grey(f))
        w = scaled_grey(cut_slice(result.warped, geometry, plane), moving_window)
        view.moving["warped"] = _grey(w)
        stages = [("headers", plane)]
        if result.point_map is not None:
            stages.insert(0, ("affine", Geometry(np.asarray(result.point_map) @ plane.affine,
                                                 plane.shape)))
        for stage, where in stages:
            m = scaled_grey(cut_slice(result.moving, moving_geometry, where), moving_window)
            m[np.isnan(f)] = np.nan
            view.moving[stage] = _grey(m) if np.isfinite(m).any() else \
                missing_note(stage, gap)
        labels = None if result.warped_seg is None else \
            cut_slice(result.warped_seg, geometry, plane, order=0)
        own = None if fixed_labels is None else cut_slice(fixed_labels, geometry, plane, order=0)
        if labels is not None or own is not None:
            view.contours, view.labels_shown = _contours(view.fixed, labels, own)
        view.jacobian, view.folded = _jacobian_rgb(cut_slice(result.jacobian, geometry, plane),
                                                   low, high)
        if name == "axial":
            thumbnail = _thumbnail(f, w)
        views.append(view)
    return views, thumbnail, (low, high)


def _position(name: str, centre: np.ndarray) -> str:
    axis = {"axial": 2, "coronal": 1, "sagittal": 0}[name]
    return f"{'RAS'[axis]} = {centre[axis]:.1f} mm"


def _thumbnail(fixed: np.ndarray, warped: np.ndarray) -> str:
    """Colour fusion of the axial slices, fixed magenta and warped green (grey where
    they agree), at most :data:`THUMBNAIL_PIXELS` a side, as a JPEG ``data:`` URI."""
    from PIL import Image

    f, w = _grey(fixed), _grey(warped)
    image = Image.fromarray(np.stack([f, w, f], axis=2))
    image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS), Image.Resampling.BILINEAR)
    return data_uri(encode_image(np.asarray(image), "jpeg"), "image/jpeg")


# --- the page's sections ------------------------------------------------------------------

def _short(name: Any) -> str:
    return Path(str(name)).name if name else "?"


def _number(value: Any, digits: int = 2, unit: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "\u2014"
    return f"{value:.{digits}f}{unit}"


def _header(title: str, result: Any, verdict: Verdict) -> str:
    state = "pass" if verdict.passed else "fail"
    words = ("QC passed: every check holds" if verdict.passed else
             "QC FAILED: " + ", ".join(check.name for check in verdict.failed))
    summary = result.summary
    inputs = " ".join(f"<div><b>{side}</b> <code>{html.escape(str(summary.get(side)))}</code>"
                      "</div>" for side in ("fixed", "moving") if summary.get(side))
    return (f'<header class="banner {state}"><h1>{html.escape(title)}</h1>'
            f'<p class="verdict-line" id="verdict">{html.escape(words)}</p>'
            f"<div><b>registered with</b> {html.escape(result.method())}</div>{inputs}"
            "</header>")


def _metrics_section(summary: dict[str, Any]) -> str:
    """The summary's main metrics as a row of figures, the runtime's parts below."""
    metrics = summary.get("metrics") or {}
    runtime = summary.get("runtime_s") or {}
    cards = [("dsc", "DSC", _number(metrics.get("dsc"), 3)),
             ("dsc_shared", "DSC shared", _number(metrics.get("dsc_shared"), 3)),
             ("hd95", "HD95", _number(metrics.get("hd95"), 2, " mm")),
             ("tre", "TRE", _number(metrics.get("tre"), 2, " mm")),
             ("folding_percent", "folding", _number(metrics.get("folding_percent"), 3, " %")),
             ("sdlogj", "SDlogJ", _number(metrics.get("sdlogj"), 3)),
             ("jacobian", "det J range", f"{_number(metrics.get('jacobian_min'))} .. "
                                         f"{_number(metrics.get('jacobian_max'))}"),
             ("displacement_max_mm", "largest displacement",
              _number(metrics.get("displacement_max_mm"), 1, " mm")),
             ("runtime", "runtime", _number(runtime.get("total"), 2, " s"))]
    shown = "".join(f'<div class="card" data-metric="{key}"><div class="k">{html.escape(name)}'
                    f'</div><div class="v">{html.escape(value)}</div></div>'
                    for key, name, value in cards)
    notes = ["DSC: mean over the fixed map's labels; DSC shared: over the labels both maps "
             "have; HD95 and TRE (label centroids) in mm."
             if metrics.get("dsc") is not None else
             "DSC, HD95 and TRE need both label maps (--fixed-labels, --moving-labels)."]
    parts = _runtime_parts(runtime)
    if parts:
        notes.append(f"Runtime by stage (s): {parts}.")
    words = " ".join(html.escape(note) for note in notes)
    return (f'<section id="metrics"><div class="cards">{shown}</div>'
            f'<p class="small">{words}</p></section>')


def _runtime_parts(runtime: dict[str, Any]) -> str:
    """``"load 0.52, engine 30.1, ..."``: the stages that took a measurable time."""
    return ", ".join(f"{name} {value:.2f}" for name, value in runtime.items()
                     if name not in ("total", "process", "process_start")
                     and isinstance(value, int | float) and value >= 0.005)


def _image(pixels: np.ndarray, alt: str, css: str = "", stage: str = "") -> str:
    extra = f' data-stage="{stage}"' if stage else ""
    return f'<img alt="{html.escape(alt)}" class="{css}"{extra} src="{image_uri(pixels)}">'


def _size(view: PlaneView, scale: float) -> str:
    rows, cols = view.fixed.shape
    return f"width:{round(cols * scale)}px;height:{round(rows * scale)}px"


def _scale(views: list[PlaneView]) -> float:
    return SHOWN_PIXELS / max(max(v.fixed.shape) for v in views)


def _compare_section(views: list[PlaneView], gap: float, affine: bool) -> str:
    scale = _scale(views)
    modes = [m for m in STAGES if m != "affine" or affine]
    buttons = "".join(f'<button type="button" data-set-mode="{m}">{html.escape(STAGES[m])}'
                      "</button>" for m in modes)
    figures = []
    for view in views:
        layers = [_image(view.fixed, f"fixed, {view.name}", "layer fixed")]
        for mode in modes:
            content = view.moving[mode]
            if isinstance(content, str):
                layers.append(f'<div class="layer moving note" data-stage="{mode}">'
                              f"{html.escape(content)}</div>")
            else:
                layers.append(_image(content, f"{STAGES[mode]}, {view.name}", "layer moving",
                                     mode))
        figures.append(f'<figure class="viewer" data-plane="{view.name}">'
                       f'<div class="stack" style="{_size(view, scale)}">{"".join(layers)}'
                       '<span class="tag">fixed</span></div>'
                       f"<figcaption>{view.name}, {html.escape(view.position)}</figcaption>"
                       "</figure>")
    apart = ""
    if gap > 0:
        apart = (f'<p class="apart" id="headers-apart">{html.escape(missing_note("headers", gap))}'
                 " The comparison \u201cas the headers place it\u201d shows this note instead "
                 "of an image.</p>")
    return ('<section id="compare"><h2>Fixed and moving, flickered</h2>'
            '<p class="small">The fixed image alternates with the moving image; choose which '
            "moving image, pause, or click an image to step. Each image has its own display "
            "window (1st-99th percentile).</p>"
            f'<div class="controls"><span>compare fixed with:</span> {buttons} '
            '<button type="button" id="play">pause</button> '
            '<button type="button" data-set-show="fixed">show fixed</button>'
            '<button type="button" data-set-show="moving">show moving</button></div>'
            f'{apart}<div class="planes">{"".join(figures)}</div></section>')


def _labels_section(views: list[PlaneView], result: Any, fixed: bool) -> str:
    if all(view.contours is None for view in views):
        return ('<section id="labels"><h2>Labels</h2><p class="small">No label map: give '
                "--moving-labels (and --fixed-labels) to see the warped label contours on the "
                "fixed image.</p></section>")
    scale = _scale(views)
    figures = "".join(
        f'<figure class="contour" data-plane="{v.name}"><div class="stack" '
        f'style="{_size(v, scale)}">{_image(v.contours, f"label contours, {v.name}", "layer")}'
        f"</div><figcaption>{v.name}, {html.escape(v.position)}</figcaption></figure>"
        for v in views if v.contours is not None)
    shown = sorted(set().union(*(v.labels_shown for v in views)))
    per_label = (result.summary.get("metrics") or {}).get("dsc_per_label") or {}
    colours = _label_colours(np.array(shown)) if shown else []
    chips = "".join(
        f'<span class="chip"><i style="background:rgb({c[0]},{c[1]},{c[2]})"></i>{value}'
        + (f" DSC {per_label[str(value)]:.2f}" if str(value) in per_label else "") + "</span>"
        for value, c in zip(shown, colours, strict=True))
    words = ("Coloured lines: the warped moving labels (one colour per label)"
             + ("; white lines: the fixed labels." if fixed else "."))
    return (f'<section id="labels"><h2>Labels on the fixed image</h2><p class="small">{words}'
            f'</p><div class="planes">{figures}</div><div class="chips">{chips}</div></section>')


def _jacobian_section(views: list[PlaneView], limits: tuple[float, float],
                      measures: dict[str, Any]) -> str:
    low, high = limits
    scale = _scale(views)
    figures = "".join(
        f'<figure class="jacobian" data-plane="{v.name}"><div class="stack" '
        f'style="{_size(v, scale)}">{_image(v.jacobian, f"det J, {v.name}", "layer")}</div>'
        f"<figcaption>{v.name}: {v.folded} folded voxel{'s' if v.folded != 1 else ''} on this "
        "slice</figcaption></figure>" for v in views)
    ends = diverging_rgb(np.array([[low, 1.0, high]]), low, high)[0]
    gradient = ", ".join(f"rgb({c[0]},{c[1]},{c[2]})" for c in ends)
    folding = _number(measures.get("folding_percent"), 3, " %")
    swatch = "rgb({},{},{})".format(*FOLDING_RGB)
    legend = (f'<div class="legend" id="jacobian-legend"><span>\u2264 {low:.2f}</span>'
              f'<span class="bar" style="background:linear-gradient(to right, {gradient})">'
              f'</span><span>\u2265 {high:.2f}</span><span class="mid">1 = volume kept; blue '
              "shrinks, red grows</span>"
              f'<span class="chip"><i style="background:{swatch}"></i>det J \u2264 0: folding '
              f"(marked 3 pixels wide); {folding} of the volume</span></div>")
    return ('<section id="jacobian"><h2>Jacobian determinant</h2>'
            f'<div class="planes">{figures}</div>{legend}</section>')


def _check_values(name: str, m: dict[str, Any], limits: QCLimits) -> tuple[str, str]:
    """The value and the limit of one QC check, from the verdict's measures."""
    n = _number
    if name == "finite":
        return ("yes" if m["finite"] else "no"), "every value finite"
    if name == "foreground_overlap":
        return (f"Dice {n(m['foreground_overlap_before'])} \u2192 "
                f"{n(m['foreground_overlap_after'])}", f"after \u2265 {limits.min_overlap:g}")
    if name == "similarity":
        return (f"NCC {n(m['ncc_before'], 3)} \u2192 {n(m['ncc_after'], 3)}",
                f"after \u2265 {limits.min_similarity:g} and \u2265 before \u2212 "
                f"{limits.max_similarity_drop:g}")
    if name == "folding":
        return n(m["folding_percent"], 3, " %"), f"\u2264 {limits.max_folding_percent:g} %"
    if name == "jacobian":
        lo, hi = limits.jacobian_range
        return (f"{n(m['jacobian_p0_1'])} .. {n(m['jacobian_p99_9'])} (0.1-99.9th pct)",
                f"within {lo:g} .. {hi:g}")
    if name == "compressed":
        from ddmr.registration.qc import COMPRESSED_BELOW

        return (n(m["compressed_percent"], 1, " %") + f" of the fixed foreground at det J < "
                f"{COMPRESSED_BELOW:g}", f"\u2264 {limits.max_compressed_percent:g} %")
    if name == "affine_scale":
        lo, hi = limits.scale_range
        scales = [float(s) for s in m["affine_scales"]]
        return f"{min(scales):.2f} .. {max(scales):.2f}", f"within {lo:g} .. {hi:g}"
    if name == "affine_anisotropy":
        return n(m["affine_anisotropy"]), f"\u2264 {limits.max_anisotropy:g}"
    if name == "affine_shear":
        return n(m["affine_shear"]), f"\u2264 {limits.max_shear:g}"
    if name == "affine_turn":
        return n(m["affine_turn_degrees"], 1, "\u00b0"), f"\u2264 {limits.max_turn_degrees:g}\u00b0"
    if name == "inverse":
        return (n(m["inverse_error_voxels"], 3, " voxel"),
                f"\u2264 {limits.max_inverse_error:g} voxel")
    if name == "structure":
        return (f"fixed {n(m['structure_fixed'])}, moving {n(m['structure_moving'])}",
                f"each \u2265 {limits.min_structure:g}")
    if name == "image_kind":
        kind = {True: "CT (HU)", False: "not CT"}
        return (f"fixed {kind[bool(m['hounsfield_fixed'])]}, moving "
                f"{kind[bool(m['hounsfield_moving'])]}", "one kind (both CT in HU or neither)")
    raise KeyError(name)


def _verdict_section(verdict: Verdict, limits: QCLimits, source: str) -> str:
    rows = []
    for check in verdict.checks:
        try:
            value, limit = _check_values(check.name, verdict.measures, limits)
        except (KeyError, TypeError, ValueError):
            value, limit = check.text, "\u2014"
        state = "pass" if check.passed else "fail"
        rows.append(f'<tr class="{state}" data-check="{html.escape(check.name)}">'
                    f"<td>{html.escape(check.name)}</td><td>{html.escape(value)}</td>"
                    f"<td>{html.escape(limit)}</td><td class=\"state\">{state.upper()}</td>"
                    f"<td class=\"small\">{html.escape(check.text)}</td></tr>")
    return ('<section id="qc"><h2>QC verdict</h2><table class="checks"><thead><tr>'
            "<th>check</th><th>value</th><th>limit</th><th>result</th><th>details</th></tr>"
            f'</thead><tbody>{"".join(rows)}</tbody></table>'
            f'<p class="small">Limits: {html.escape(source)}.</p></section>')


def _footer(summary: dict[str, Any], views: list[PlaneView]) -> str:
    planes = "; ".join(f"{v.name} {v.position}" for v in views)
    return (f'<footer class="small"><p>Slices through the centre of the fixed image\'s '
            f"foreground ({html.escape(planes)}, RAS world coordinates), {ORIENTATION}.</p>"
            f"<p>ddmr {html.escape(str(summary.get('ddmr_version', '')))}; the files beside "
            "this page: warped.nii.gz, jacobian.nii.gz, displacement.nii.gz, summary.json "
            "(docs/outputs.md).</p></footer>")


_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1160px;
margin:1em auto;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.3em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.2em 0 .4em}
.banner{padding:.6em 1em;border-radius:6px;border:2px solid}
.banner.pass{background:#e9f7ec;border-color:#2e8b47}
.banner.fail{background:#fdecea;border-color:#c0392b}
.verdict-line{font-weight:bold;font-size:1.1em;margin:.2em 0}
.banner.fail .verdict-line{color:#a02020}.banner.pass .verdict-line{color:#1f6a35}
table{border-collapse:collapse;font-size:.9em}
th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num{font-variant-numeric:tabular-nums}
tr.pass td.state{color:#1f6a35;font-weight:bold}
tr.fail td{background:#fdecea}tr.fail td.state{color:#a02020;font-weight:bold}
.small{font-size:.85em;color:#555}code{background:#f4f4f4;padding:0 .2em}
.planes{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0}figcaption{font-size:.85em;color:#444;margin-top:2px}
.stack{position:relative;background:#000;overflow:hidden}
.stack .layer{position:absolute;left:0;top:0;width:100%;height:100%}
.stack img.layer{image-rendering:auto}
.moving{visibility:hidden}
.note{background:#e8e8e8;color:#7a1414;box-sizing:border-box;padding:28px 10px 10px;
font-size:.9em;
border:1px solid #999}
body[data-show=moving][data-mode=warped] .moving[data-stage=warped],
body[data-show=moving][data-mode=affine] .moving[data-stage=affine],
body[data-show=moving][data-mode=headers] .moving[data-stage=headers]{visibility:visible}
.tag{position:absolute;left:4px;top:4px;background:rgba(0,0,0,.65);color:#fff;
font-size:12px;padding:1px 6px;border-radius:3px;pointer-events:none}
.controls{margin:.4em 0}.controls button{margin:0 2px 4px 0;padding:2px 8px;cursor:pointer}
.controls button[aria-pressed=true]{background:#2b5fa8;color:#fff;border-color:#2b5fa8}
.apart{background:#fff4e0;border:1px solid #d99a2b;padding:.4em .8em;border-radius:4px}
.chips{margin-top:6px}.chip{display:inline-block;margin:0 10px 4px 0;font-size:.85em}
.chip i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle;
border:1px solid #666}
.legend{display:flex;flex-wrap:wrap;align-items:center;gap:8px;margin-top:8px;font-size:.9em}
.legend .bar{display:inline-block;width:260px;height:14px;border:1px solid #888}
.legend .mid{color:#555}
.cards{display:flex;flex-wrap:wrap;gap:8px;margin-top:12px}
.card{border:1px solid #ccc;border-radius:5px;padding:4px 10px;min-width:80px;background:#fafafa}
.card .k{font-size:.8em;color:#555}.card .v{font-size:1.15em;font-variant-numeric:tabular-nums}
"""

_SCRIPT = """
(function () {
  var body = document.body, timer = null;
  var names = {warped: 'warped (registered)', affine: 'moving, affine part only',
               headers: 'moving, as the headers place it'};
  function draw() {
    var text = body.dataset.show === 'moving' ? names[body.dataset.mode] : 'fixed';
    document.querySelectorAll('.tag').forEach(function (t) { t.textContent = text; });
    document.querySelectorAll('[data-set-mode]').forEach(function (b) {
      b.setAttribute('aria-pressed', String(b.dataset.setMode === body.dataset.mode)); });
    document.querySelectorAll('[data-set-show]').forEach(function (b) {
      b.setAttribute('aria-pressed', String(timer === null &&
                                            b.dataset.setShow === body.dataset.show)); });
    document.getElementById('play').textContent = timer === null ? 'play' : 'pause';
  }
  function flip() {
    body.dataset.show = body.dataset.show === 'fixed' ? 'moving' : 'fixed';
    draw();
  }
  function play(on) {
    if (timer !== null) { clearInterval(timer); timer = null; }
    if (on) { timer = setInterval(flip, Number(body.dataset.flickerMs)); }
    body.dataset.playing = on ? 'yes' : 'no';
    draw();
  }
  function fromHash() {
    var wanted = {};
    location.hash.replace(/^#/, '').split('&').forEach(function (pair) {
      var kv = pair.split('='); if (kv.length === 2) { wanted[kv[0]] = kv[1]; } });
    if (wanted.mode && document.querySelector('[data-set-mode="' + wanted.mode + '"]')) {
      body.dataset.mode = wanted.mode; }
    if (wanted.show === 'fixed' || wanted.show === 'moving') {
      body.dataset.show = wanted.show; play(false);
    } else { play(true); }
  }
  document.querySelectorAll('[data-set-mode]').forEach(function (b) {
    b.addEventListener('click', function () { body.dataset.mode = b.dataset.setMode; draw(); }); });
  document.querySelectorAll('[data-set-show]').forEach(function (b) {
    b.addEventListener('click', function () {
      body.dataset.show = b.dataset.setShow; play(false); }); });
  document.getElementById('play').addEventListener('click', function () { play(timer === null); });
  document.querySelectorAll('.viewer .stack').forEach(function (s) {
    s.addEventListener('click', function () { play(false); flip(); }); });
  window.addEventListener('hashchange', fromHash);
  fromHash();
})();
"""
