"""``ddmr.register``: register a moving image to a fixed image in world space.

The steps, each in its own module:

1. **inputs** (:mod:`~ddmr.registration.inputs`): images and label maps in any form,
   validated; foregrounds found (:mod:`~ddmr.registration.moments`).
2. **affine** (:mod:`~ddmr.registration.affine`): a point map from the fixed world to
   the moving world found from each image in its own world (or ANTs' with
   ``affine=True``, :mod:`~ddmr.registration.ants_affine`, which is then kept as it is).
3. **model space** (:mod:`~ddmr.registration.space`): the fixed image on the model's
   grid as the training data were prepared, the moving image resampled there through
   the point map; the model's own affine stage, when it was trained with one, refines
   the point map if that raises the similarity on the model's grid.
4. **network**: a pull-back displacement on that grid; optionally refined on the pair
   (:mod:`~ddmr.registration.refine`).
5. **native** (:mod:`~ddmr.registration.native`): the field on the fixed image's grid as
   a world displacement in mm, composed with the point map; the moving image and labels
   warped there.
6. **scores and QC** (:mod:`~ddmr.registration.scores`, :mod:`~ddmr.registration.qc`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddmr.errors import InputError
from ddmr.registration.inputs import ImageInput, Volume, read_pair_side
from ddmr.registration.qc import QCLimits, Verdict
from ddmr.registration.result import RegistrationResult
from ddmr.spatial.grid import Geometry

logger = logging.getLogger(__name__)


class _Timer:
    """Seconds spent in named steps (``with timer("load"): ...``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


@dataclass
class _Alignment:
    """The affine part so far: ``point_map`` (4, 4) RAS fixed -> moving world, and what
    made it (for ``summary.json``)."""

    point_map: np.ndarray
    stages: list[str]
    world: dict[str, Any] | None = None
    model_stage: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        return {"matrix_ras": self.point_map.tolist(), "stages": self.stages,
                "world_affine": self.world, "model_stage": self.model_stage,
                "meaning": "4x4, RAS mm: fixed world point -> moving world point"}


def _warn_about_labels(fixed: Volume, moving: Volume) -> None:
    if fixed.labels is not None and moving.labels is None:
        logger.warning("only a fixed label map was given: no warped_seg.nii.gz and no "
                       "DSC/HD95/TRE (give --moving-seg too)")
    if moving.labels is not None and fixed.labels is None:
        logger.warning("only a moving label map was given: warped_seg.nii.gz is written, "
                       "but DSC/HD95/TRE need --fixed-seg too")


#: The affine stages :func:`register` offers: DDMR's world-space stage, ANTs' affine
#: registration, or none (the headers are trusted as they are).
AFFINE_STAGES = ("world", "ants", "none")


def _initial_alignment(fixed: Volume, moving: Volume, masks: tuple[np.ndarray, np.ndarray],
                       stage: str) -> _Alignment:
    if stage == "none":
        return _Alignment(np.eye(4), ["none (headers as they are)"])
    if stage == "ants":
        from ddmr.registration.ants_affine import affine_prealign

        point_map = affine_prealign(fixed.array, fixed.geometry, moving.array,
                                    moving.geometry)
        return _Alignment(point_map, ["ANTs Affine (--affine)"])
    from ddmr.registration.affine import world_affine

    result = world_affine(fixed.array, fixed.geometry, moving.array, moving.geometry,
                          masks=masks)
    return _Alignment(result.point_map, ["world affine"], world=result.summary())


def _model_stage(alignment: _Alignment, fixed_input, moving: Volume, space, source):
    """The model's own affine stage on its grid, on top of ``alignment``; kept only when
    it raises global NCC there. Returns (alignment, moving input, moving source)."""
    from ddmr.losses.ncc import global_ncc
    from ddmr.model.predictor import own_alignment
    from ddmr.registration.space import model_source, source_fits, to_model_space

    moving_input = to_model_space(source, moving.geometry, space, moving.name,
                                  alignment.point_map)
    stage = own_alignment(fixed_input, moving_input, space.grid.spacing)
    candidate = alignment.point_map @ stage.world_map(space.grid)
    candidate_source = source
    if not source_fits(source, space, candidate):  # e.g. anisotropic, rotated
        candidate_source = model_source(moving.array, moving.geometry, space, candidate)
    candidate_input = to_model_space(candidate_source, moving.geometry, space, moving.name,
                                     candidate)
    before = float(global_ncc(fixed_input, moving_input)[0])
    after = float(global_ncc(fixed_input, candidate_input)[0])
    kept = after >= before
    alignment.model_stage = {"used": kept, "ncc_before": before, "ncc_after": after}
    if not kept:
        logger.info("the model's affine stage lowered NCC (%.4f -> %.4f); not used",
                    before, after)
        return alignment, moving_input, source
    alignment.point_map = candidate
    alignment.stages.append("model's own affine stage")
    return alignment, candidate_input, candidate_source


def _qc(fixed: Volume, moving: Volume, masks: tuple[np.ndarray, np.ndarray], native,
        jacobian: np.ndarray, point_map: np.ndarray, limits: QCLimits | None) -> Verdict:
    from ddmr.registration.qc import QCInputs, assess, sample_points, subsample

    where = subsample(fixed.geometry.shape)
    index = np.stack(np.meshgrid(*[np.arange(n)[s] for n, s in
                                   zip(fixed.geometry.shape, where, strict=True)],
                                 indexing="ij"), -1)
    shape = index.shape[:3]
    points = fixed.geometry.index_to_world(index.reshape(-1, 3))
    moved = points + native.displacement_mm[(slice(None), *where)].reshape(3, -1).T
    moved = np.where(np.isfinite(moved), moved, 1e9)
    inputs = QCInputs(
        fixed.array[where], masks[0][where],
        sample_points(moving.array, moving.geometry, points).reshape(shape),
        sample_points(masks[1], moving.geometry, points, nearest=True).reshape(shape),
        native.warped[where],
        sample_points(masks[1], moving.geometry, moved, nearest=True).reshape(shape))
    return assess(inputs, native.displacement_mm, jacobian, point_map, limits)


def register(fixed: ImageInput, moving: ImageInput, fixed_seg: ImageInput | None = None,
             moving_seg: ImageInput | None = None, model: Any = None, device: str = "cpu",
             affine: str = "world", refine: Any = 0, refine_similarity: str | None = None,
             refine_spacing: float | None = None, refine_labels: bool = False,
             qc_limits: QCLimits | None = None) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` in world space.

    fixed, moving: images in any orientation, spacing, field of view and world position
        (their headers need not agree): a path (NIfTI, NRRD, MHA), a nibabel or
        SimpleITK image, or an ``(array (I, J, K), Geometry | affine (4, 4) RAS)`` tuple.
    fixed_seg, moving_seg: label maps on their image's grid (uint8 values 0..255): the
        moving one is warped to ``warped_seg``; both give DSC, HD95 (mm), TRE (mm).
    model: a shipped model's name, a model file path, a loaded model, or None for the
        default shipped model (``ddmr models``).
    device: ``cpu`` or ``cuda``.
    affine: the affine part: ``world`` (DDMR's world-space stage, then the model's own
        stage where it has one and it helps), ``ants`` (ANTs' affine registration, kept as
        it is) or ``none`` (the headers are trusted as they are).
    refine: iterations (or a :class:`ddmr.registration.refine.RefineSettings`) of
        per-pair refinement of the network's field (0: the network alone); on a grid of
        ``refine_spacing`` mm (default: the model's prepared grid), with
        ``refine_similarity`` (``ncc``, ``lncc``, ``gncc``, ``mi``; default the design's
        NCC) and, with ``refine_labels``, a Dice term on both label maps.
    qc_limits: the limits of the QC verdict (:class:`ddmr.registration.qc.QCLimits`).

    Returns a :class:`~ddmr.registration.result.RegistrationResult` (fields on the fixed
    grid, ``qc`` verdict, ``summary``). A failed QC does not raise: check
    ``result.qc.passed``. Bad input raises :class:`ddmr.DDMRError` with a one-line message.
    """
    import torch

    from ddmr.model.file import file_sha256
    from ddmr.model.shipped import check_device, load
    from ddmr.registration.moments import foreground_mask
    from ddmr.registration.native import to_native
    from ddmr.registration.scores import field_metrics, label_metrics
    from ddmr.registration.space import model_source, model_space, to_model_space
    from ddmr.spatial.field import jacobian_determinant_mm

    if affine not in AFFINE_STAGES:
        raise InputError(f"--affine {affine!r}: choose one of {', '.join(AFFINE_STAGES)}")
    timer = _Timer()
    check_device(device)
    with timer("load"):
        loaded = load(model, device)  # first: a wrong model fails before images are read
        card = loaded.card
        settings = refinement_settings(card, refine, refine_similarity, refine_labels)
        if settings is not None and settings.dice_weight > 0 \
                and (fixed_seg is None or moving_seg is None):
            raise InputError("--refine-labels needs both label maps (--fixed-seg and "
                             "--moving-seg)")
        if refine_spacing is not None and not (refine_spacing > 0
                                               and math.isfinite(refine_spacing)):
            raise InputError(f"--refine-spacing {refine_spacing}: expected a positive size "
                             "in mm")
        fixed_volume = read_pair_side(fixed, fixed_seg, "fixed")
        moving_volume = read_pair_side(moving, moving_seg, "moving")
        _warn_about_labels(fixed_volume, moving_volume)

    with timer("preprocess"):
        masks = (foreground_mask(fixed_volume.array), foreground_mask(moving_volume.array))
        alignment = _initial_alignment(fixed_volume, moving_volume, masks, affine)
        space = model_space(fixed_volume.geometry, card, fixed_volume.labels)
        fixed_input = to_model_space(fixed_volume.array, fixed_volume.geometry, space,
                                     fixed_volume.name)
        source = model_source(moving_volume.array, moving_volume.geometry, space,
                              alignment.point_map)
        if card.prealigns and affine == "world":  # the network learnt the residual of it
            alignment, moving_input, source = _model_stage(alignment, fixed_input,
                                                           moving_volume, space, source)
        else:
            moving_input = to_model_space(source, moving_volume.geometry, space,
                                          moving_volume.name, alignment.point_map)

    with timer("network"), torch.inference_mode():
        displacement = loaded.network(fixed_input.to(device), moving_input.to(device))
        displacement = displacement.float().cpu()

    refinement, field_grid = None, space.grid
    if settings is not None:
        with timer("refine"):
            refine_grid = refinement_grid(space, refine_spacing)
            result = _refine(fixed_volume, moving_volume, displacement, space, refine_grid,
                             alignment.point_map, settings, device)
            displacement, field_grid = result.displacement.float().cpu(), refine_grid
        refinement = {**result.summary(settings),
                      "labels_used": settings.dice_weight > 0,
                      "grid": {"shape": list(refine_grid.shape),
                               "spacing_mm": list(refine_grid.spacing)},
                      "seconds_with_resampling": round(timer.seconds["refine"], 3)}

    with timer("native"):
        native = to_native(displacement, field_grid, fixed_volume.geometry,
                           moving_volume.array, moving_volume.geometry, moving_volume.labels,
                           alignment.point_map)
        jacobian = jacobian_determinant_mm(native.displacement_mm, fixed_volume.geometry)

    with timer("metrics"):
        metrics: dict[str, Any] = field_metrics(jacobian, native.displacement_mm)
        if fixed_volume.labels is not None and native.warped_labels is not None:
            metrics.update(label_metrics(fixed_volume.labels, native.warped_labels,
                                         fixed_volume.geometry.spacing))

    with timer("qc"):
        verdict = _qc(fixed_volume, moving_volume, masks, native, jacobian,
                      alignment.point_map, qc_limits)

    from ddmr import __version__

    seconds = {k: round(v, 3) for k, v in timer.seconds.items()}
    runtime = {"load": seconds["load"], "preprocess": seconds["preprocess"],
               "predict": round(timer.seconds["network"] + timer.seconds["native"], 3),
               "network": seconds["network"], "refine": seconds.get("refine", 0.0),
               "metrics": seconds["metrics"], "qc": seconds["qc"]}
    runtime["total"] = round(sum(v for k, v in runtime.items() if k != "network"), 3)
    summary = {
        "ddmr_version": __version__,
        "fixed": fixed_volume.name, "moving": moving_volume.name,
        "fixed_seg": fixed_volume.labels_name, "moving_seg": moving_volume.labels_name,
        "model": {
            "name": loaded.path.name.removesuffix(".safetensors"),
            "path": str(Path(loaded.path).resolve()),
            "sha256": file_sha256(loaded.path),
            "weights_sha256": card.weights_sha256,
            "design": card.design_name,
            "input_size": list(space.grid.shape),
        },
        "device": str(device),
        "affine_prealignment": alignment.summary(),
        "fixed_grid": {"shape": list(fixed_volume.geometry.shape),
                       "spacing_mm": list(fixed_volume.geometry.spacing)},
        "model_grid": {"shape": list(space.grid.shape), "spacing_mm": list(space.grid.spacing),
                       "affine": space.grid.affine.tolist()},
        "displacement": "displacement.nii.gz: ITK/ANTs displacement field on the fixed grid, "
                        "LPS mm, maps fixed points to moving points (full transform)",
        "runtime_s": runtime,
        "refinement": refinement,
        "metrics": metrics,
        "qc": verdict.to_dict(),
    }
    return RegistrationResult(fixed_volume.geometry, native.warped, native.warped_labels,
                              native.displacement_mm, jacobian.astype(np.float32), verdict,
                              summary, fixed_volume.array, moving_volume.array,
                              moving_volume.geometry, alignment.point_map)


# -- refinement ---------------------------------------------------------------------------


def refinement_settings(card, refine: Any, similarity: str | None = None,
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
    return settings_for(card.design_fields, int(refine), similarity, labels=labels)


def refinement_grid(space: Any, spacing: float | None = None) -> Geometry:
    """The grid refinement runs on: the prepared grid (``spacing`` None), or the same
    extent (first and last voxel centres kept) with voxels of about ``spacing`` mm."""
    from ddmr.spatial.grid import resized_grid

    prepared = space.prepared
    if spacing is None:
        return prepared
    shape = tuple(max(2, round((n - 1) * s / spacing) + 1)
                  for n, s in zip(prepared.shape, prepared.spacing, strict=True))
    if int(np.prod(shape, dtype=np.int64)) > 512 ** 3:
        raise InputError(f"--refine-spacing {spacing}: a grid of {shape} voxels is too large")
    return resized_grid(prepared, shape)


def _refine(fixed: Volume, moving: Volume, displacement, space, grid: Geometry,
            point_map: np.ndarray, settings, device: str):
    """Resample the pair (and labels) onto ``grid`` as the model's space does, resize the
    network's field there and refine it."""
    import torch

    from ddmr.registration.refine import refine
    from ddmr.registration.space import ModelSpace, to_model_space
    from ddmr.spatial.field import resize_displacement
    from ddmr.spatial.resample import resample_to

    target = ModelSpace(grid, grid, space.options)
    fixed_t = to_model_space(fixed.array, fixed.geometry, target, fixed.name)
    moving_t = to_model_space(moving.array, moving.geometry, target, moving.name, point_map)
    labels = [None, None]
    if settings.dice_weight > 0 and fixed.labels is not None and moving.labels is not None:
        moving_target = Geometry(point_map @ grid.affine, grid.shape)
        labels = [torch.from_numpy(resample_to(array, geometry, where, order=0))[None, None]
                  .to(device)
                  for array, geometry, where in ((fixed.labels, fixed.geometry, grid),
                                                 (moving.labels, moving.geometry,
                                                  moving_target))]
    start = displacement.to(device)
    if tuple(start.shape[2:]) != tuple(grid.shape):
        start = resize_displacement(start, grid.shape)
    return refine(fixed_t.to(device), moving_t.to(device), start, grid.spacing, settings,
                  *labels)
