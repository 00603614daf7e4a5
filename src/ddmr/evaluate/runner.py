"""Score every method on the same stored pairs: trained models and ANTs baselines.

For each pair and method the field is predicted on the pair's grid, the moving image is
warped (trilinear) and its labels (label-exact, :func:`ddmr.spatial.warp.warp_labels`) by DDMR's
own spatial transformer, and every metric of :mod:`ddmr.metrics` is computed.
Times cover prediction (or registration) plus application of the field.

With ``engine``, every model is also scored after the registration engine
(:mod:`ddmr.registration.engine`) refines its field on the pair, as ``<model>+engine``;
the baseline ``engine`` runs it after DDMR's affine stage alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ddmr.errors import ConfigError, InputError
from ddmr.io.files import atomic_directory, check_output_folder
from ddmr.model.predictor import Predictor
from ddmr.prepare.recipe import minmax_normalise
from ddmr.spatial.grid import resized_spacing

logger = logging.getLogger(__name__)

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
#: How each ANTs baseline of an evaluation ran ({method: words}), for the report.
BASELINES_JSON = "baselines.json"


@dataclass
class ModelMethod:
    """A trained model as an evaluation method."""

    name: str
    predictor: Predictor
    input_size: tuple[int, int, int]
    path: Path
    device: str = "cpu"
    design: dict[str, Any] | None = None
    card: Any = None

    @torch.inference_mode()
    def predict(self, fixed: np.ndarray, moving: np.ndarray,
                spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
        """Field (3, D, H, W) in voxels of the pair's grid for (D, H, W) images with voxels
        of ``spacing`` mm: resize to the model's input size (trilinear), min-max normalise,
        run the model (:meth:`ddmr.model.predictor.Predictor.field`: its own affine stage
        first when it was trained so), bring the field back with
        :func:`ddmr.spatial.field.resize_displacement`."""
        import torch.nn.functional as F

        from ddmr.spatial.field import resize_displacement

        shape = fixed.shape
        images = torch.from_numpy(np.stack([fixed, moving]).astype(np.float32))[:, None]
        images = images.to(self.device)
        if tuple(shape) != self.input_size:
            images = F.interpolate(images, size=self.input_size, mode="trilinear",
                                   align_corners=True)
        f, m = minmax_normalise(images[0:1]), minmax_normalise(images[1:2])
        field = self.predictor.field(f, m, resized_spacing(spacing, shape, self.input_size))
        if tuple(field.shape[2:]) != tuple(shape):
            field = resize_displacement(field, shape)
        return field[0].float().cpu().numpy()


def load_methods(paths: Sequence[str | Path], device: str = "cpu") -> list[ModelMethod]:
    """Load model files (or run folders, or shipped models' names: see
    :func:`ddmr.model.shipped.resolve_model`), refusing weights with NaN or Inf values; a model's
    name is its design's name, or its file stem when two models share a design (with a
    number if the stems collide too)."""
    from ddmr.model.file import load_model
    from ddmr.model.shipped import resolve_model

    loaded = [load_model(resolve_model(p)[1], device) for p in paths]  # NaN/Inf refused
    designs = [str(m.card.design_name or Path(m.path).stem) for m in loaded]
    methods: list[ModelMethod] = []
    used: set[str] = set()
    for model, design in zip(loaded, designs, strict=True):
        name = design if designs.count(design) == 1 else Path(model.path).stem
        base, k = name, 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        methods.append(ModelMethod(name, Predictor(model.network, model.card.prealigns),
                                   model.card.input_size, Path(model.path), device,
                                   model.card.design_fields, model.card))
    return methods


def _apply(pair, displacement: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    from ddmr.spatial.warp import warp_image, warp_labels

    u = torch.from_numpy(np.ascontiguousarray(displacement, dtype=np.float32))[None]
    warped = warp_image(torch.from_numpy(pair.moving)[None, None], u)[0, 0].numpy()
    labels = None
    if pair.moving_labels is not None:
        labels = warp_labels(torch.from_numpy(pair.moving_labels)[None, None], u)[0, 0].numpy()
    return warped, labels


def score_pair(pair, method: str, displacement: np.ndarray, seconds: float) -> dict[str, Any]:
    """One row of results: pair, subject, method, seconds and every metric."""
    from ddmr.metrics import pair_metrics

    start = time.perf_counter()
    warped, warped_labels = _apply(pair, displacement)
    seconds += time.perf_counter() - start
    values = pair_metrics(pair.fixed, warped, pair.spacing, displacement,
                          pair.fixed_labels, warped_labels,
                          true_displacement=pair.displacement,
                          moving_labels=pair.moving_labels)
    return {"pair": pair.name, "subject": pair.subject, "method": method,
            "seconds": seconds, **values}


def evaluate(pairs_path: str | Path, models: Sequence[str | Path] = (),
             baselines: Sequence[str] = ("syn", "syncc", "none"),
             ants_settings: dict[str, Any] | None = None, progress: bool = True,
             device: str = "cpu", engine: bool = False, engine_settings: Any = None,
             landmarks: str | Path | None = None) -> pd.DataFrame:
    """Score every model and baseline on every stored pair -> per-pair results (one row
    per pair and method). ``ants_settings`` maps "syn"/"syncc" to
    :class:`ddmr.baselines.ants.AntsSettings`, for both kinds of pairs (defaults otherwise:
    :func:`ddmr.baselines.ants.default_settings` on same-subject pairs, antspyx's own on
    inter-subject pairs). Models run on ``device``; metrics and baselines on the CPU.

    ``engine`` adds ``<model>+engine`` rows: the registration engine
    (:mod:`ddmr.registration.engine`, ``engine_settings`` or its defaults) started from
    each model's field; the baseline ``engine`` is the engine after DDMR's world-space
    affine stage alone (:mod:`ddmr.evaluate.engine_method`).

    Inter-subject pairs (``ddmr pairs --pairing inter-subject``) are registered in world
    space by every method (:mod:`ddmr.evaluate.inter`), with landmark TRE from the files
    ``landmarks/<subject>.csv`` where given."""
    from tqdm.auto import tqdm

    from ddmr.baselines.ants import NAMES, run_baseline
    from ddmr.evaluate.engine_method import (
        ENGINE,
        engine_field,
        engine_method_name,
    )
    from ddmr.evaluate.pairs import PairSet
    from ddmr.model.file import LoadedModel
    from ddmr.spatial.grid import Geometry

    pairs = PairSet(pairs_path)
    methods = load_methods(models, device)
    names = [m.name for m in methods] + [ENGINE if b == ENGINE else NAMES[b]
                                         for b in baselines]
    names += [engine_method_name(m.name) for m in methods] if engine else []
    if len(set(names)) != len(names):
        raise ConfigError(f"method names collide: {names}")
    if not names:
        raise ConfigError("nothing to evaluate: give --models and/or --baselines")
    ants_settings = ants_settings or {}
    rows = []
    bar = tqdm(total=len(pairs) * len(names), desc="evaluate", disable=not progress)
    try:
        if pairs.mode != "same-subject":
            from ddmr.evaluate.inter import baseline_inter, register_inter, score_inter

            for pair in pairs:
                for model in methods:
                    loaded = LoadedModel(model.predictor.network, model.card, model.path)
                    runs = [(model.name, False)] + ([(engine_method_name(model.name),
                                                      engine_settings or True)]
                                                    if engine else [])
                    for name, engine_option in runs:
                        field, seconds = register_inter(pair, loaded, engine_option)
                        rows.append(score_inter(pair, name, field, seconds, landmarks))
                        bar.update()
                for baseline in baselines:
                    field, seconds = baseline_inter(pair, baseline, engine_settings or True,
                                                    ants_settings.get(baseline))
                    rows.append(score_inter(pair, ENGINE if baseline == ENGINE
                                            else NAMES[baseline], field, seconds, landmarks))
                    bar.update()
            return pd.DataFrame(rows)
        for pair in pairs:
            for model in methods:
                start = time.perf_counter()
                displacement = model.predict(pair.fixed, pair.moving, pair.spacing)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                if not np.isfinite(displacement).all():
                    raise InputError(f"{model.path}: the model predicted a field with NaN or "
                                     f"Inf values on pair {pair.name}; its results would be "
                                     "meaningless")
                rows.append(score_pair(pair, model.name, displacement, seconds))
                bar.update()
                if engine:
                    field, engine_seconds, result = engine_field(pair, displacement,
                                                                 engine_settings)
                    row = score_pair(pair, engine_method_name(model.name), field,
                                     seconds + engine_seconds)
                    row.update(engine_objective_start=result.objective_start,
                               engine_objective=result.objective)
                    rows.append(row)
                    bar.update()
            geometry = Geometry(pair.affine, pair.fixed.shape)
            for baseline in baselines:
                if baseline == ENGINE:
                    field, engine_seconds, _ = engine_field(pair, None, engine_settings)
                    rows.append(score_pair(pair, ENGINE, field, engine_seconds))
                    bar.update()
                    continue
                result = run_baseline(baseline, pair.fixed, pair.moving, geometry,
                                      ants_settings.get(baseline))
                rows.append(score_pair(pair, NAMES[baseline], result.displacement,
                                       result.seconds))
                bar.update()
    finally:
        bar.close()
    return pd.DataFrame(rows)


def baseline_notes(pairs_path: str | Path, baselines: Sequence[str],
                   ants_settings: dict[str, Any] | None = None) -> dict[str, str]:
    """How each ANTs baseline of :func:`evaluate` runs on these pairs with these
    settings, {display name: words} (:func:`ddmr.baselines.ants.describe`)."""
    from ddmr.baselines.ants import NAMES, describe
    from ddmr.evaluate.pairs import PairSet

    same_grid = PairSet(pairs_path).mode == "same-subject"
    settings = ants_settings or {}
    return {NAMES[b]: describe(b, settings.get(b), same_grid) for b in baselines
            if b in ("syn", "syncc")}


def write_results(results: pd.DataFrame, output: str | Path, overwrite: bool = False,
                  title: str | None = None, baselines: dict[str, str] | None = None) -> Path:
    """Write per_pair.csv, summary.csv and summary.md into the folder ``output``
    (built under a temporary name, then renamed; an existing folder only with
    ``overwrite``), and ``baselines.json`` when ``baselines`` (:func:`baseline_notes`) says
    how the ANTs baselines ran."""
    import json

    from ddmr.evaluate.tables import PER_PAIR, summarise, summary_markdown

    output = check_output_folder(output, overwrite)
    if not output.absolute().parent.is_dir():
        raise InputError(f"{output}: folder {output.parent} does not exist")
    with atomic_directory(output, overwrite) as temporary:
        results.to_csv(temporary / PER_PAIR, index=False)
        summary = summarise(results)
        summary.to_csv(temporary / SUMMARY_CSV, index=False)
        (temporary / SUMMARY_MD).write_text(summary_markdown(summary, title=title))
        if baselines:
            (temporary / BASELINES_JSON).write_text(json.dumps(baselines, indent=2) + "\n")
    return output
