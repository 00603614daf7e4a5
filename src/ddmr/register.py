"""Native-space registration with a trained model: ``ddmr.register`` / ``ddmr register``.

Steps (all geometry in world coordinates, see :mod:`ddmr.registration.world`):

1. the fixed image goes onto the model's grid the way the training data were prepared
   (:mod:`ddmr.registration.space`, options from the model card);
2. the moving image is resampled onto the same grid through world coordinates (after an
   optional ANTs affine pre-alignment, :mod:`ddmr.registration.affine`, and the model's
   own affine stage when it was trained with one, :mod:`ddmr.registration.align`);
3. the network predicts a pull-back displacement on that grid (inference mode);
3b. optionally (``refine=N``) the field is resized to a finer grid over the same extent
   (default: the prepared grid of the model card's preparation options) and optimised
   there on the pair itself for N iterations (:mod:`ddmr.registration.refine`);
4. the field is brought back to the fixed image's native grid as a world displacement in
   mm, composed with the pre-alignment: the full transform;
5. the native moving image (and labels) are warped with it onto the fixed grid.

Outputs (:meth:`RegistrationResult.save`): ``warped.nii.gz``, ``warped_seg.nii.gz``,
``displacement.nii.gz`` (ITK/ANTs displacement field, LPS mm, fixed grid, so that
``antsApplyTransforms`` / SimpleITK reproduce ``warped.nii.gz``), ``jacobian.nii.gz``,
``overlay.png`` and ``summary.json``, written into a temporary folder and renamed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import sys
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddmr.errors import InputError
from ddmr.io import (
    Geometry,
    atomic_directory,
    check_geometry,
    check_same_geometry,
    load_image,
    load_labels,
)

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
ImageInput = PathLike | tuple[np.ndarray, Geometry]

OUTPUT_FILES = ("warped.nii.gz", "warped_seg.nii.gz", "displacement.nii.gz",
                "jacobian.nii.gz", "overlay.png", "summary.json")


# -- inputs ------------------------------------------------------------------------------


def _from_array(value: tuple[Any, Geometry], name: str, labels: bool
                ) -> tuple[np.ndarray, Geometry]:
    if len(value) != 2 or not isinstance(value[1], Geometry):
        raise InputError(f"{name}: expected a path or an (array, Geometry) tuple")
    array = np.asarray(value[0])
    geometry = value[1]
    if array.ndim != 3:
        raise InputError(f"{name}: array has shape {array.shape}, expected a 3D volume")
    if tuple(array.shape) != geometry.shape:
        raise InputError(f"{name}: array shape {array.shape} differs from its grid "
                         f"{geometry.shape}")
    check_geometry(geometry, name)
    if array.dtype.kind not in "biuf":
        raise InputError(f"{name}: voxel type {array.dtype} is not numeric")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name}: {'label map' if labels else 'image'} contains NaN or Inf")
    if labels:
        if not np.array_equal(array, np.round(array)):
            raise InputError(f"{name}: label map has non-integer values")
        if array.size and (array.min() < 0 or array.max() > 255):
            raise InputError(f"{name}: label values must be 0..255")
        return array.astype(np.uint8), geometry
    array = array.astype(np.float32)
    if float(array.max()) == float(array.min()):
        raise InputError(f"{name}: image is constant")
    return array, geometry


def read_input(value: ImageInput, name: str, labels: bool = False
               ) -> tuple[np.ndarray, Geometry, str]:
    """``(array, geometry, description)`` of a path or an ``(array, Geometry)`` tuple,
    validated as :func:`ddmr.io.load_image` / :func:`ddmr.io.load_labels` do."""
    if isinstance(value, tuple):
        array, geometry = _from_array(value, name, labels)
        return array, geometry, f"<{name} array>"
    array, geometry = (load_labels if labels else load_image)(value)
    return array, geometry, str(Path(value).resolve())


# -- model ------------------------------------------------------------------------------


def file_sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load(model: Any = None, device: str = "cpu"):
    """Load ``model`` (a shipped model's name, a path, ``None`` for the default shipped
    model, or an already loaded :class:`ddmr.model_file.LoadedModel`) on ``device``."""
    from ddmr.model_file import LoadedModel, load_model
    from ddmr.models import resolve_model

    if isinstance(model, LoadedModel):
        model.network.to(device).eval()
        return model
    _, path = resolve_model(model)
    return load_model(path, device)


def _check_device(device: str) -> None:
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")


# -- result -----------------------------------------------------------------------------


@dataclass
class RegistrationResult:
    """Outputs of :func:`register`, on the fixed image's grid ``geometry``.

    warped: (I, J, K) float32, the moving image warped onto the fixed grid.
    warped_seg: (I, J, K) uint8 or None, the moving labels warped label-exactly.
    displacement_mm: (3, I, J, K) float32, RAS mm: fixed voxel at world p shows the
        moving image at world ``p + displacement_mm`` (the full transform, including an
        affine pre-alignment). Written in LPS (ITK convention) by :meth:`save`.
    jacobian: (I, J, K) float32, determinant of the transform's Jacobian (physical space).
    summary: what ``summary.json`` holds: inputs, model (name, file SHA-256, weights
        checksum), affine pre-alignment, grids, ``runtime_s`` (``load``: read images and
        model; ``preprocess``: affine pre-alignment and mapping into the model's space;
        ``predict``: network plus the field's trip to the native grid, warping and
        Jacobian, of which ``network`` is the forward pass; ``refine``: the per-pair
        refinement, with its resampling onto the refinement grid, 0 without one;
        ``metrics``; ``write``, set by :meth:`write`; ``total``), ``refinement`` (None, or
        iterations, similarity, grid spacing, objective before/after, seconds, folding:
        see :meth:`ddmr.registration.refine.RefineResult.summary`) and ``metrics``
        (folding %, SDlogJ, Jacobian range, largest displacement in mm; DSC, HD95 mm,
        centroid TRE mm with both label maps).
    """

    geometry: Geometry
    warped: np.ndarray
    warped_seg: np.ndarray | None
    displacement_mm: np.ndarray
    jacobian: np.ndarray
    summary: dict[str, Any]
    fixed: np.ndarray = field(repr=False)
    moving: np.ndarray = field(repr=False)
    moving_geometry: Geometry = field(repr=False)

    def displacement_voxels(self) -> np.ndarray:
        """The displacement (3, I, J, K) in voxels of the fixed grid (ddmr convention)."""
        from ddmr.registration.world import mm_to_voxels

        return mm_to_voxels(self.displacement_mm, self.geometry)

    def write(self, folder: PathLike) -> None:
        """Write every output file into the existing ``folder`` (summary.json last). The
        files are compressed on parallel threads (zlib releases the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        from ddmr.io import GZIP_LEVEL_FIELDS, save_displacement, save_image, save_labels
        from ddmr.overlay import save_overlay

        folder = Path(folder)
        started = time.perf_counter()
        jobs = [(save_displacement, folder / "displacement.nii.gz", self.displacement_voxels(),
                 self.geometry),
                (save_image, folder / "warped.nii.gz", self.warped, self.geometry),
                (save_image, folder / "jacobian.nii.gz", self.jacobian, self.geometry,
                 GZIP_LEVEL_FIELDS)]
        if self.warped_seg is not None:
            jobs.append((save_labels, folder / "warped_seg.nii.gz", self.warped_seg,
                         self.geometry))
        with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
            pending = [pool.submit(job, *arguments) for job, *arguments in jobs]
            save_overlay(folder / "overlay.png", self.fixed, self.geometry, self.moving,
                         self.moving_geometry, self.warped, self.jacobian,
                         title=f"ddmr register, model {self.summary['model']['name']}")
            for job in pending:
                job.result()
        runtime = self.summary["runtime_s"]
        runtime["write"] = round(time.perf_counter() - started, 3)
        runtime["total"] = round(sum(runtime.get(k, 0.0) for k in
                                     ("load", "preprocess", "predict", "refine", "metrics",
                                      "write")), 3)
        (folder / "summary.json").write_text(json.dumps(_json_safe(self.summary), indent=2)
                                             + "\n")

    def save(self, outdir: PathLike, overwrite: bool = False) -> Path:
        """Write the outputs into ``outdir`` (built in a temporary folder, then renamed);
        an existing ``outdir`` is refused unless ``overwrite``."""
        with output_folder(outdir, overwrite) as folder:
            self.write(folder)
        return Path(outdir)


def _json_safe(value: Any) -> Any:
    """NaN/Inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def check_output(outdir: PathLike, overwrite: bool) -> Path:
    """Raise :class:`InputError` if ``outdir`` exists (and may not be replaced) or is a
    file."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir}: exists and is not a folder")
    if outdir.exists() and not overwrite:
        raise InputError(f"{outdir}: output folder already exists (pass --overwrite to replace)")
    return outdir


@contextmanager
def output_folder(outdir: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``outdir``; on success it replaces ``outdir``, on
    failure it is removed and ``outdir`` is left as it was."""
    outdir = check_output(outdir, overwrite)
    with atomic_directory(outdir) as temporary:
        yield temporary


# -- metrics ----------------------------------------------------------------------------


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
                  spacing: tuple[float, float, float]) -> dict[str, Any]:
    """DSC, HD95 (mm) and centroid TRE (mm) of the warped labels against the fixed labels
    (:mod:`ddmr.evaluate.metrics`): means over the fixed map's foreground labels, and DSC
    per label. HD95 is computed on each label's bounding box (same value, less work)."""
    from ddmr.evaluate import metrics

    values = metrics.foreground_labels(fixed_seg)
    if not values:
        return {"dsc": None, "hd95": None, "tre": None, "dsc_per_label": {}}
    dice = metrics.dice_per_label(fixed_seg, warped_seg, values)
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
            "hd95": float(np.nanmean(hd95)) if np.isfinite(hd95).any() else None,
            "tre": metrics.centroid_tre(fixed_seg, warped_seg, spacing, values),
            "dsc_per_label": {str(v): float(d) for v, d in zip(values, dice, strict=True)},
        }


def field_metrics(jacobian: np.ndarray, displacement_mm: np.ndarray) -> dict[str, float]:
    """Folding (% of voxels with det J <= 0) and SDlogJ (std of log max(det J, 1e-9)), the
    definitions of :mod:`ddmr.evaluate.metrics`, from the Jacobian determinant already
    computed; extreme determinants and the largest displacement (mm)."""
    return {
        "folding_percent": float(100.0 * np.mean(jacobian <= 0)),
        "sdlogj": float(np.std(np.log(np.maximum(jacobian, 1e-9)))),
        "jacobian_min": float(jacobian.min()),
        "jacobian_max": float(jacobian.max()),
        "displacement_max_mm": float(np.sqrt((displacement_mm.astype(np.float64) ** 2)
                                             .sum(axis=0)).max()),
    }


# -- registration -----------------------------------------------------------------------


def register(fixed: ImageInput, moving: ImageInput, fixed_seg: ImageInput | None = None,
             moving_seg: ImageInput | None = None, model: Any = None, device: str = "cpu",
             affine: bool = False, refine: Any = 0, refine_similarity: str | None = None,
             refine_spacing: float | None = None, refine_labels: bool = False
             ) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with a trained model, in world space.

    Images are paths (NIfTI, NRRD, MHA) or ``(array (I, J, K), Geometry)`` tuples, in any
    orientation, spacing and field of view. ``fixed_seg``/``moving_seg`` are label maps
    on their image's grid (for ``warped_seg`` and DSC/HD95/TRE). ``model`` is a shipped
    model's name, a model file path, a loaded model, or ``None`` for the default shipped
    model. ``affine`` adds an ANTs affine pre-alignment.

    ``refine`` (iterations, or a :class:`ddmr.registration.refine.RefineSettings`)
    optimises the network's field on the pair itself before it is applied: on a grid of
    ``refine_spacing`` mm over the model's field of view (default: the prepared grid of
    the model card, e.g. 3 mm where the network sees 4 mm), with the similarity of the
    model's design (NCC) or ``refine_similarity`` (``ncc``, ``lncc``, ``gncc``, ``mi``),
    plus the design's regulariser; ``refine_labels`` adds a Dice term on both label maps
    (then DSC/TRE in ``metrics`` are no longer independent of the optimisation). ``0``
    (the default) leaves the network's result exactly as it is.

    Raises :class:`DDMRError` subclasses with one-line messages for bad input. See the
    module docstring.
    """
    import torch

    from ddmr.registration.align import grid_point_map, model_prealigns
    from ddmr.registration.space import (
        model_source,
        model_space,
        source_fits,
        to_model_space,
    )
    from ddmr.registration.world import jacobian_determinant, to_native

    _check_device(device)
    started = time.perf_counter()
    loaded = load(model, device)  # first: a wrong --model fails before images are read
    card = loaded.card
    refine_settings = refinement_settings(card, refine, refine_similarity, refine_labels)
    if refine_settings is not None and refine_settings.dice_weight > 0 \
            and (fixed_seg is None or moving_seg is None):
        raise InputError("--refine-labels needs both label maps (--fixed-seg and --moving-seg)")
    if refine_spacing is not None and not (refine_spacing > 0 and math.isfinite(refine_spacing)):
        raise InputError(f"--refine-spacing {refine_spacing}: expected a positive size in mm")
    fixed_array, fixed_geometry, fixed_name = read_input(fixed, "fixed")
    moving_array, moving_geometry, moving_name = read_input(moving, "moving")
    fixed_labels = moving_labels = None
    fixed_seg_name = moving_seg_name = None
    if fixed_seg is not None:
        fixed_labels, geometry, fixed_seg_name = read_input(fixed_seg, "fixed_seg", True)
        check_same_geometry(fixed_geometry, geometry, [fixed_name, fixed_seg_name])
    if moving_seg is not None:
        moving_labels, geometry, moving_seg_name = read_input(moving_seg, "moving_seg", True)
        check_same_geometry(moving_geometry, geometry, [moving_name, moving_seg_name])
    load_seconds = time.perf_counter() - started

    started = time.perf_counter()
    point_map = None
    if affine:
        from ddmr.registration.affine import affine_prealign

        point_map = affine_prealign(fixed_array, fixed_geometry, moving_array, moving_geometry)
    space = model_space(fixed_geometry, card, fixed_labels)
    fixed_input = to_model_space(fixed_array, fixed_geometry, space, fixed_name)
    moving_source = model_source(moving_array, moving_geometry, space, point_map)
    moving_input = to_model_space(moving_source, moving_geometry, space, moving_name, point_map)
    ants_point_map = point_map
    if model_prealigns(card):  # the model learnt the residual of its own affine stage
        network_map = grid_point_map(fixed_input, moving_input, space.grid)
        point_map = network_map if point_map is None else point_map @ network_map
        if not source_fits(moving_source, space, point_map):  # e.g. anisotropic, rotated
            moving_source = model_source(moving_array, moving_geometry, space, point_map)
        moving_input = to_model_space(moving_source, moving_geometry, space, moving_name,
                                      point_map)
    preprocess_seconds = time.perf_counter() - started

    started = time.perf_counter()
    with torch.inference_mode():
        displacement = loaded.network(fixed_input.to(device), moving_input.to(device))
    displacement = displacement.float().cpu()
    predict_seconds = time.perf_counter() - started

    refinement, refine_seconds = None, 0.0
    field_grid = space.grid
    if refine_settings is not None:
        started = time.perf_counter()
        refine_grid = refinement_grid(space, refine_spacing)
        result = _refine(fixed_array, fixed_geometry, fixed_name, fixed_labels, moving_array,
                         moving_geometry, moving_name, moving_labels, displacement, space,
                         refine_grid, point_map, refine_settings, device)
        displacement, field_grid = result.displacement.float().cpu(), refine_grid
        refine_seconds = time.perf_counter() - started
        refinement = {**result.summary(refine_settings),
                      "labels_used": refine_settings.dice_weight > 0,
                      "grid": {"shape": list(refine_grid.shape),
                               "spacing_mm": list(refine_grid.spacing)},
                      "seconds_with_resampling": round(refine_seconds, 3)}

    started = time.perf_counter()
    native = to_native(displacement, field_grid, fixed_geometry, moving_array, moving_geometry,
                       moving_labels, point_map)
    jacobian = jacobian_determinant(native.displacement_mm, fixed_geometry)
    resample_seconds = time.perf_counter() - started

    started = time.perf_counter()
    metrics: dict[str, Any] = field_metrics(jacobian, native.displacement_mm)
    if fixed_labels is not None and native.warped_labels is not None:
        metrics.update(label_metrics(fixed_labels, native.warped_labels,
                                     fixed_geometry.spacing))
    metrics_seconds = time.perf_counter() - started

    from ddmr import __version__

    summary = {
        "ddmr_version": __version__,
        "fixed": fixed_name, "moving": moving_name,
        "fixed_seg": fixed_seg_name, "moving_seg": moving_seg_name,
        "model": {
            "name": loaded.path.name.removesuffix(".safetensors"),
            "path": str(Path(loaded.path).resolve()),
            "sha256": file_sha256(loaded.path),
            "weights_sha256": card.get("sha256"),
            "design": (card.get("design") or {}).get("name"),
            "input_size": list(space.grid.shape),
        },
        "device": str(device),
        "affine_prealignment": (
            None if point_map is None else
            {"matrix_ras": point_map.tolist(),
             "stages": [name for name, used in (("ANTs Affine (--affine)", ants_point_map),
                                                ("model's own affine stage",
                                                 model_prealigns(card) or None))
                        if used is not None],
             "meaning": "4x4, RAS mm: fixed world point -> moving world point"}),
        "fixed_grid": {"shape": list(fixed_geometry.shape),
                       "spacing_mm": list(fixed_geometry.spacing)},
        "model_grid": {"shape": list(space.grid.shape), "spacing_mm": list(space.grid.spacing),
                       "affine": space.grid.affine.tolist()},
        "displacement": "displacement.nii.gz: ITK/ANTs displacement field on the fixed grid, "
                        "LPS mm, maps fixed points to moving points (full transform)",
        "runtime_s": {"load": round(load_seconds, 3),
                      "preprocess": round(preprocess_seconds, 3),
                      "predict": round(predict_seconds + resample_seconds, 3),
                      "network": round(predict_seconds, 3),
                      "refine": round(refine_seconds, 3),
                      "metrics": round(metrics_seconds, 3),
                      "total": round(load_seconds + preprocess_seconds + predict_seconds
                                     + resample_seconds + refine_seconds + metrics_seconds,
                                     3)},
        "refinement": refinement,
        "metrics": metrics,
    }
    return RegistrationResult(fixed_geometry, native.warped, native.warped_labels,
                              native.displacement_mm, jacobian.astype(np.float32), summary,
                              fixed_array, moving_array, moving_geometry)


# -- refinement ---------------------------------------------------------------------------


def refinement_settings(card: dict[str, Any], refine: Any, similarity: str | None = None,
                        labels: bool = False):
    """The :class:`ddmr.registration.refine.RefineSettings` of ``register(refine=...)``
    (None for no refinement): an iteration count follows the model's design."""
    from ddmr.registration.refine import RefineSettings, settings_for

    if refine is None or refine is False:
        return None
    if isinstance(refine, RefineSettings):
        return refine if refine.iterations > 0 else None
    if isinstance(refine, bool) or not isinstance(refine, int | np.integer):
        raise InputError(f"refine: expected a number of iterations, got {refine!r}")
    if refine < 0:
        raise InputError(f"--refine {refine}: the number of iterations must be >= 0")
    if refine == 0:
        return None
    return settings_for(card.get("design"), int(refine), similarity, labels=labels)


def refinement_grid(space: Any, spacing: float | None = None) -> Geometry:
    """The grid refinement runs on: the prepared grid (``spacing`` None), or the same
    extent (first and last voxel centres kept) with voxels of about ``spacing`` mm."""
    from ddmr.registration.space import resized_grid

    prepared = space.prepared
    if spacing is None:
        return prepared
    shape = tuple(max(2, round((n - 1) * s / spacing) + 1)
                  for n, s in zip(prepared.shape, prepared.spacing, strict=True))
    if int(np.prod(shape, dtype=np.int64)) > 512 ** 3:
        raise InputError(f"--refine-spacing {spacing}: a grid of {shape} voxels is too large")
    return resized_grid(prepared, shape)


def _refine(fixed_array, fixed_geometry, fixed_name, fixed_labels, moving_array,
            moving_geometry, moving_name, moving_labels, displacement, space, grid,
            point_map, settings, device):
    """Resample the pair (and labels) onto ``grid`` as the model's space does, resize the
    network's field there and refine it."""
    import torch

    from ddmr.io import resample_to
    from ddmr.nn.fields import resize_displacement
    from ddmr.registration.refine import refine
    from ddmr.registration.space import ModelSpace, to_model_space

    target = ModelSpace(grid, grid, space.options)
    fixed_t = to_model_space(fixed_array, fixed_geometry, target, fixed_name)
    moving_t = to_model_space(moving_array, moving_geometry, target, moving_name, point_map)
    labels = [None, None]
    if settings.dice_weight > 0 and fixed_labels is not None and moving_labels is not None:
        moving_target = grid if point_map is None else Geometry(point_map @ grid.affine,
                                                                 grid.shape)
        labels = [torch.from_numpy(resample_to(array, geometry, where, order=0))[None, None]
                  .to(device)
                  for array, geometry, where in ((fixed_labels, fixed_geometry, grid),
                                                 (moving_labels, moving_geometry, moving_target))]
    start = displacement.to(device)
    if tuple(start.shape[2:]) != tuple(grid.shape):
        start = resize_displacement(start, grid.shape)
    return refine(fixed_t.to(device), moving_t.to(device), start, grid.spacing, settings,
                  *labels)


# -- batch ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One row of a pairs CSV (paths resolved against the CSV's folder)."""

    id: str
    fixed: Path
    moving: Path
    fixed_seg: Path | None = None
    moving_seg: Path | None = None


def read_pairs(path: PathLike) -> list[Pair]:
    """Read a pairs CSV with columns ``fixed,moving[,fixed_seg,moving_seg][,id]``.
    Relative paths are relative to the CSV's folder; ids default to ``pair-001`` ...
    Raises :class:`InputError` for a missing file or column, or duplicate ids."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("fixed", "moving") if c not in columns]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)} "
                             "(expected fixed,moving[,fixed_seg,moving_seg][,id])")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    if not rows:
        raise InputError(f"{path}: no pairs listed")

    def resolve(value: str) -> Path | None:
        if not value:
            return None
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else path.parent / candidate

    pairs = []
    for number, row in enumerate(rows, start=1):
        if not row.get("fixed") or not row.get("moving"):
            raise InputError(f"{path}: row {number} has no fixed or moving image")
        ident = row.get("id") or f"pair-{number:03d}"
        if "/" in ident or ident in (".", ".."):
            raise InputError(f"{path}: row {number}: id {ident!r} is not a folder name")
        pairs.append(Pair(ident, resolve(row["fixed"]), resolve(row["moving"]),
                          resolve(row.get("fixed_seg", "")),
                          resolve(row.get("moving_seg", ""))))
    seen = set()
    for pair in pairs:
        if pair.id in seen:
            raise InputError(f"{path}: duplicate id {pair.id!r}")
        seen.add(pair.id)
        for name in ("fixed", "moving", "fixed_seg", "moving_seg"):
            file = getattr(pair, name)
            if file is not None and not file.exists():
                raise InputError(f"{file}: no such file ({name} of pair {pair.id})")
    return pairs


def register_pairs(pairs_csv: PathLike, outdir: PathLike, model: Any = None,
                   device: str = "cpu", affine: bool = False, overwrite: bool = False,
                   progress: bool = True, **refine_options: Any) -> list[dict[str, Any]]:
    """Register every pair of a pairs CSV into ``outdir/<id>/`` (the model is loaded
    once); also writes ``outdir/summary.csv`` with one row per pair. The whole folder is
    built in a temporary place and renamed; any bad pair leaves nothing behind.
    ``refine_options`` (``refine``, ``refine_similarity``, ``refine_spacing``,
    ``refine_labels``) go to :func:`register`. Returns the per-pair rows."""
    from tqdm.auto import tqdm

    check_output(outdir, overwrite)
    pairs = read_pairs(pairs_csv)
    _check_device(device)
    loaded = load(model, device)
    rows = []
    with output_folder(outdir, overwrite) as folder:
        for pair in tqdm(pairs, desc="ddmr register", unit="pair", disable=not progress):
            result = register(pair.fixed, pair.moving, pair.fixed_seg, pair.moving_seg,
                              loaded, device, affine, **refine_options)
            (folder / pair.id).mkdir()
            result.write(folder / pair.id)
            metrics = result.summary["metrics"]
            rows.append({"id": pair.id, "fixed": str(pair.fixed), "moving": str(pair.moving),
                         "seconds": result.summary["runtime_s"]["total"],
                         **{k: metrics.get(k) for k in ("folding_percent", "dsc", "hd95",
                                                        "tre")}})
        with open(folder / "summary.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows


# -- `ddmr.register(...)` -----------------------------------------------------------------
# Importing this module sets the attribute ``ddmr.register`` to the module itself, which
# would hide the function that ``ddmr.__getattr__`` returns. Making the module callable
# keeps ``ddmr.register(fixed, moving, ...)`` working whichever of the two it finds.


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> RegistrationResult:
        return register(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
