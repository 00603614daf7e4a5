"""``ddmr.register``: register a moving image to a fixed image in world space.

The steps, each in its own module:

1. **inputs** (:mod:`~ddmr.registration.inputs`): images and label maps in any form,
   validated; their foregrounds (:mod:`~ddmr.registration.moments`).
2. **affine** (:mod:`~ddmr.registration.affine`): a point map from the fixed world to
   the moving world found from each image in its own world (or ANTs', kept as it is:
   :mod:`~ddmr.registration.ants_affine`; or none, the headers as they are).
3. **network** (:mod:`~ddmr.registration.network`): the pair in the model's space, the
   model's own affine stage when it helps, the network's field (skipped with
   ``model=False``).
4. **engine** (:mod:`~ddmr.registration.engine`): the deformable optimiser at the
   images' own resolution, started from the network's field (skipped with
   ``engine=False``, the network alone).
5. **native** (:mod:`~ddmr.registration.native`): the field on the fixed image's grid as
   a world displacement in mm, composed with the point map; the moving image and labels
   warped there.
6. **scores and QC** (:mod:`~ddmr.registration.scores`, :mod:`~ddmr.registration.qc`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ddmr.deprecated import renamed_keywords
from ddmr.errors import ConfigError
from ddmr.registration.inputs import ImageInput, Volume, read_pair_side
from ddmr.registration.modality import Modality
from ddmr.registration.qc import QCLimits
from ddmr.registration.result import RegistrationResult
from ddmr.registration.settings import SAME_KIND_SIMILARITIES, EngineSettings
from ddmr.threads import on_both

if TYPE_CHECKING:
    from ddmr.spatial.displacement import Displacement

logger = logging.getLogger(__name__)

#: The affine stages :func:`register` offers: DDMR's world-space stage or ANTs' affine
#: registration (``affine=False``: none, the headers are trusted as they are).
AFFINE_STAGES = ("world", "ants")

#: The word that names a skipped step in records (``summary.json``, a batch's settings)
#: and on the command line (``--model none``, ``--affine none``); the API takes False.
NO_MODEL = "none"


class _Timer:
    """Seconds spent in named steps (``with timer("load"): ...``); the memory each step
    freed goes back to the system when it ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        from ddmr.memory import release_free_memory

        started = time.perf_counter()
        try:
            yield
        finally:
            release_free_memory()  # what the step freed, before the next one allocates
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
                       "DSC/HD95/TRE (give --moving-labels too)")
    if moving.labels is not None and fixed.labels is None:
        logger.warning("only a moving label map was given: warped_seg.nii.gz is written, "
                       "but DSC/HD95/TRE need --fixed-labels too")


def _check_model_input(card, volumes: tuple[Volume, Volume],
                       masks: tuple[np.ndarray, np.ndarray]) -> list[str]:
    """One warning line per image that does not look like what the model was trained on:
    a foreground too large for a skull-stripped brain where the card says the model
    expects one (a whole head, or another body part), else a foreground beyond
    :data:`~ddmr.registration.moments.FOREGROUND_RATIO` times the range of the training
    images' (the card's ``expects.foreground_ml``, written by training); the lines, for
    ``summary.json``."""
    from ddmr.registration.moments import (
        FOREGROUND_RATIO,
        foreground_ml,
        looks_like_whole_head,
        outside_trained_range,
    )

    lines = []
    trained = card.expects.get("foreground_ml")
    for volume, mask, side in zip(volumes, masks, ("fixed", "moving"), strict=True):
        if card.expects.get("skull_stripped"):
            whole, millilitres = looks_like_whole_head(mask, volume.geometry)
            if whole:
                lines.append(f"{volume.name}: the {side} image is not a skull-stripped "
                             f"brain (foreground {millilitres:.0f} mL; a skull-stripped brain "
                             "is 1100-1900 mL) but the model was trained on skull-stripped "
                             "brains: skull-strip it, or use --model none (the engine "
                             "starts from the affine part wherever the network is worse)")
        elif trained:
            millilitres = foreground_ml(mask, volume.geometry)
            if outside_trained_range(millilitres, tuple(trained)):
                lines.append(f"{volume.name}: the {side} image's foreground is "
                             f"{millilitres:.0f} mL, more than {FOREGROUND_RATIO:g} times "
                             f"beyond the model's training images ({trained[0]:.0f}-"
                             f"{trained[1]:.0f} mL; a whole head given to a model of "
                             "skull-stripped brains, say): its field may be wrong there, so "
                             "its own affine stage is left out; use --model none, or give "
                             "images like its training data")
    for line in lines:
        logger.warning("%s", line)
    return lines


def _check_kinds(fixed: Modality, moving: Modality, affine: str | bool) -> list[str]:
    """A warning line (logged, and for ``summary.json``) when a CT meets another kind of
    image in DDMR's affine stage, which compares intensities (NCC); QC fails the pair
    where the engine's similarity does too (its ``image_kind`` check)."""
    if fixed.kind == moving.kind or affine != "world":
        return []
    line = ("one image is a CT in Hounsfield units and the other is not: DDMR's affine "
            "stage compares intensities (NCC); for CT against MR use --affine ants (mutual "
            "information) with --similarity mi or mind")
    logger.warning("%s", line)
    return [line]


def _affine_part(fixed: Volume, moving: Volume, masks: tuple[np.ndarray, np.ndarray],
                 stage: str | bool, scales, guide) -> _Alignment:
    if stage is False:
        return _Alignment(np.eye(4), ["none (headers as they are)"])
    if stage == "ants":
        from ddmr.registration.ants_affine import affine_prealign

        point_map = affine_prealign(fixed.array, fixed.geometry, moving.array,
                                    moving.geometry)
        return _Alignment(point_map, ["ANTs Affine (--affine ants)"])
    from ddmr.registration.affine import world_affine

    result = world_affine(fixed.array, fixed.geometry, moving.array, moving.geometry,
                          masks=masks, scales=scales, guide=guide)
    return _Alignment(result.point_map, ["world affine"], world=result.summary())


def _scored_labels(fixed: Volume, moving: Volume, native) -> tuple[np.ndarray, str]:
    """The fixed labels to score against the warped ones, and where: the whole fixed grid,
    or, where the moving image shows less than
    :data:`~ddmr.registration.qc.SEEN_WHOLE` of the fixed foreground's labels (a partial
    field of view), only the voxels it shows (a label cut off by its field of view is not
    a registration error)."""
    from ddmr.registration.native import seen_by_moving
    from ddmr.registration.qc import SEEN_WHOLE

    seen = seen_by_moving(native.displacement_mm, fixed.geometry, moving.geometry)
    labelled = fixed.labels > 0
    shown = np.count_nonzero(labelled & seen)
    if shown >= SEEN_WHOLE * np.count_nonzero(labelled):
        return fixed.labels, "the fixed grid"
    share = 100.0 * shown / max(np.count_nonzero(labelled), 1)
    return np.where(seen, fixed.labels, 0).astype(fixed.labels.dtype), (
        f"where the moving image has data (partial field of view: {share:.0f} % of the "
        "fixed labels' voxels)")


def _engine_settings(engine: Any) -> EngineSettings | None:
    if engine is False or engine is None:
        return None
    if engine is True:
        return EngineSettings()
    if isinstance(engine, EngineSettings):
        return engine
    raise ConfigError(f"engine: expected True, False or EngineSettings, got {engine!r}")


def _inverse_start(engine) -> tuple[Displacement | None, str]:
    """The start of the inverse and the name of its method: ``exp(-v)`` in svf mode, the
    inverse on every other voxel of the engine's grid otherwise, none without the engine
    (:mod:`ddmr.registration.inverse`)."""
    from ddmr.memory import release_free_memory
    from ddmr.registration.inverse import start_inverse
    from ddmr.spatial.displacement import Displacement

    if engine is None:
        return None, "fixed point"
    if engine.inverse_mm is not None:
        return Displacement(engine.inverse_mm.contiguous(), engine.grid), "exp(-v)"
    start = start_inverse(engine.displacement_mm, engine.grid)
    release_free_memory()  # the grid iteration's volumes, before the moving grid's
    return start, "fixed point"


def check_skips(model: Any, affine: Any, engine: Any = True, stacklevel: int = 2
                ) -> tuple[Any, str | bool]:
    """``model`` and ``affine`` with the old ``"none"`` (deprecated) as ``False``, the
    affine stage checked. ``model`` None (the default) becomes the default shipped model
    for the network alone (``engine`` False) and ``False`` (no network) when the engine
    runs: between people the engine from the network's field ended no better than from
    the affine part (benchmarks/RESULTS.md, issue 30)."""
    from ddmr.deprecated import skip_word

    model = skip_word(model, "model", stacklevel + 1)
    affine = skip_word(affine, "affine", stacklevel + 1)
    if affine is not False and affine not in AFFINE_STAGES:
        raise ConfigError(f"--affine {affine!r}: choose one of "
                          f"{', '.join(AFFINE_STAGES)} or none (False in Python)")
    if model is None and engine is not False:
        model = False
    return model, affine


@renamed_keywords(fixed_seg="fixed_labels", moving_seg="moving_labels")
def register(fixed: ImageInput, moving: ImageInput, fixed_labels: ImageInput | None = None,
             moving_labels: ImageInput | None = None, model: Any = None, device: str = "cpu",
             affine: str | bool = "world", engine: bool | EngineSettings = True,
             qc_limits: QCLimits | None = None, guide: Sequence[int] | None = None,
             guide_weight: float | None = None) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` in world space.

    fixed, moving: images in any orientation, spacing, field of view and world position
        (their headers need not agree): a path (NIfTI, NRRD, MHA), a nibabel or
        SimpleITK image, or an ``(array (I, J, K), Geometry | affine (4, 4) RAS)`` tuple.
    fixed_labels, moving_labels: label maps on their image's grid (uint8 values 0..255):
        the moving one is warped to ``warped_seg``; both give DSC, HD95 (mm), TRE (mm).
    model: a shipped model's name, a model file or training run folder, or a loaded
        model: the engine starts from its field (or from the affine part alone where that
        scores better); False for no network (the affine part and the engine); None (the
        default): no network when the engine runs, the default shipped model (``ddmr
        models``) for the network alone (``engine=False``).
    device: ``cpu`` or ``cuda`` (for the network).
    affine: the affine part: ``world`` (DDMR's world-space stage, then the model's own
        stage where it has one and it helps), ``ants`` (ANTs' affine registration, kept as
        it is) or False (none: the headers are trusted as they are).
    engine: run the registration engine after the network (True, the default; or its
        :class:`~ddmr.registration.engine.EngineSettings`); False for the network alone.
    qc_limits: the limits of the QC verdict (:class:`~ddmr.registration.qc.QCLimits`).
    guide: label values both label maps show that guide the registration: their soft
        Dice joins the similarity of the affine stage (and their centroids make one more
        start) and of the engine (:mod:`~ddmr.registration.guidance`); scores then report
        the guided labels apart from the others. None (the default): the label maps only
        score.
    guide_weight: the guidance term's weight in the engine (None:
        :data:`~ddmr.registration.guidance.ENGINE_WEIGHT`, 0.3); on the bench, sparse
        organs (CT) did best near it and dense tissue classes (brains) with 1
        (benchmarks/RESULTS.md, issue 32).

    A step is skipped with False (``model=False``, ``affine=False``, ``engine=False``);
    the old ``"none"`` and the keywords ``fixed_seg``/``moving_seg`` still work for one
    release, with a :class:`DeprecationWarning`.

    Returns a :class:`~ddmr.registration.result.RegistrationResult` (fields on the fixed
    grid, ``qc`` verdict, ``summary``). A failed QC does not raise: check
    ``result.qc.passed``. Bad input raises :class:`ddmr.DDMRError` with a one-line message.
    """
    timer = _Timer()
    with timer("imports"):  # torch and the numeric modules, on the first call
        from ddmr.model.file import file_sha256
        from ddmr.model.shipped import check_device, load
        from ddmr.registration.engine import register_deformable
        from ddmr.registration.guidance import make_guide
        from ddmr.registration.inverse import invert
        from ddmr.registration.modality import modality
        from ddmr.registration.moments import foreground_mask, intensity_scale
        from ddmr.registration.native import to_native
        from ddmr.registration.network import predict
        from ddmr.registration.qc import add_guidance, assess_registration
        from ddmr.registration.scores import field_metrics, guided_apart, label_metrics
        from ddmr.spatial.displacement import Transform
        from ddmr.spatial.field import jacobian_determinant_mm, residual_of

    model, affine = check_skips(model, affine, engine, stacklevel=3)  # (blamed: the caller)
    settings = _engine_settings(engine)
    check_device(device)
    with timer("load"):
        loaded = None if model is False else load(model, device)  # before the images
        fixed_volume, moving_volume = on_both(lambda side: read_pair_side(*side),
                                              (fixed, fixed_labels, "fixed"),
                                              (moving, moving_labels, "moving"))
        _warn_about_labels(fixed_volume, moving_volume)
        guided = make_guide(guide, fixed_volume.labels, moving_volume.labels, guide_weight)
    with timer("preprocess"):
        def foreground(volume: Volume) -> tuple[np.ndarray, Modality]:
            """The foreground and the intensities mapped to [0, 1] (a CT's HU window, or
            the image's own percentiles), once for the affine stage and the engine."""
            mask = foreground_mask(volume.array)
            return mask, modality(volume.array, intensity_scale(volume.array, mask))

        (fixed_mask, fixed_kind), (moving_mask, moving_kind) = on_both(
            foreground, fixed_volume, moving_volume)
        warnings = _check_kinds(fixed_kind, moving_kind, affine)
        masks = (fixed_mask, moving_mask)
        scales = (fixed_kind.scale, moving_kind.scale) \
            if affine == "world" or settings is not None else None
        alignment = _affine_part(fixed_volume, moving_volume, masks, affine, scales, guided)
    network = network_record = None
    partial = bool((alignment.world or {}).get("partial_field_of_view"))
    if loaded is not None:
        warnings += _check_model_input(loaded.card, (fixed_volume, moving_volume), masks)
        with timer("network"):
            # the model's own affine stage only on input like its training data's: on a
            # whole head it tilts what the world-space stage found (issue 24), on a partial
            # view it squeezes the half it sees (issue 32)
            network, alignment.point_map, network_record = predict(
                loaded, fixed_volume, moving_volume, alignment.point_map,
                affine == "world" and not warnings and not partial, device)
            alignment.model_stage = network_record.pop("model_stage")
            if alignment.model_stage and alignment.model_stage["used"]:
                alignment.stages.append("model's own affine stage")
    engine_result = None
    if settings is not None:
        with timer("engine"):
            engine_result = register_deformable(
                fixed_volume.array, fixed_volume.geometry, masks[0], moving_volume.array,
                moving_volume.geometry, masks[1], alignment.point_map, settings,
                network, scales, guided, partial)
    with timer("native"):  # the final field: the engine's, else the network's, else none
        transform = Transform(alignment.point_map, network if engine_result is None
                              else engine_result.displacement())
        native = to_native(transform, fixed_volume.geometry, moving_volume.array,
                           moving_volume.geometry, moving_volume.labels)
    with timer("inverse"):
        start, method = _inverse_start(engine_result)
        inverse = invert(transform, fixed_volume.geometry, moving_volume.geometry, start,
                         method)
        # the fields on the engine's grid are no longer needed (a 1 mm head: 0.1-0.3 GB)
        engine_summary = None if engine_result is None else engine_result.summary(settings)
        del transform, start, engine_result
    with timer("native"):  # (after the inverse: one volume less at its peak)
        jacobian = jacobian_determinant_mm(native.displacement_mm, fixed_volume.geometry)
    with timer("metrics"):
        metrics: dict[str, Any] = field_metrics(jacobian, native.displacement_mm)
        if fixed_volume.labels is not None and native.warped_labels is not None:
            fixed_labels, seen = _scored_labels(fixed_volume, moving_volume, native)
            metrics.update(label_metrics(fixed_labels, native.warped_labels,
                                         fixed_volume.geometry.spacing, moving_volume.labels))
            metrics["scored_within"] = seen
            if guided is not None:
                metrics["guidance"] = guided_apart(metrics, guided.labels)
    with timer("qc"):
        verdict = assess_registration(
            fixed_volume, moving_volume, masks, native, jacobian, alignment.point_map,
            qc_limits, inverse.error_mean,
            same_kind=settings is None or settings.similarity in SAME_KIND_SIMILARITIES)
        if "guidance" in metrics:
            add_guidance(verdict, metrics["guidance"], qc_limits)
    with timer("native"):  # the residual, now that the inverse's volumes are gone
        residual = residual_of(native.displacement_mm, fixed_volume.geometry,
                               alignment.point_map)

    from ddmr import __version__
    from ddmr.registration.result import RUNTIME_PARTS

    runtime = {name: round(timer.seconds.get(name, 0.0), 3)
               for name in RUNTIME_PARTS if name != "write"}
    runtime["total"] = round(sum(runtime.values()), 3)
    model_record = None
    if loaded is not None:
        model_record = {"name": loaded.path.name.removesuffix(".safetensors"),
                        "path": str(Path(loaded.path).resolve()),
                        "sha256": file_sha256(loaded.path),
                        "weights_sha256": loaded.card.weights_sha256,
                        "design": loaded.card.design_name, "expects": loaded.card.expects,
                        **network_record}
    summary = {
        "ddmr_version": __version__,
        "fixed": fixed_volume.name, "moving": moving_volume.name,
        "fixed_seg": fixed_volume.labels_name, "moving_seg": moving_volume.labels_name,
        "model": model_record,
        "warnings": warnings,
        "device": str(device),
        "intensities": {"fixed": fixed_kind.summary(), "moving": moving_kind.summary()},
        "guide": None if guided is None else guided.summary(),
        "affine_prealignment": alignment.summary(),
        "engine": engine_summary,
        "fixed_grid": {"shape": list(fixed_volume.geometry.shape),
                       "spacing_mm": list(fixed_volume.geometry.spacing)},
        "displacement": "displacement.nii.gz: ITK/ANTs displacement field on the fixed grid, "
                        "LPS mm, maps fixed points to moving points (full transform)",
        "inverse": inverse.summary(),
        "runtime_s": runtime,
        "metrics": metrics,
        "qc": {**verdict.to_dict(), "limits": asdict(qc_limits or QCLimits())},
    }
    return RegistrationResult(fixed_volume.geometry, native.warped, native.warped_labels,
                              native.displacement_mm, jacobian.astype(np.float32, copy=False),
                              verdict, summary, fixed_volume.array, moving_volume.array,
                              moving_volume.geometry, alignment.point_map, residual,
                              inverse.displacement_mm, fixed_volume.labels)
