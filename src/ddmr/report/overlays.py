"""Recompute each method's field on a few stored pairs for the report's overlay figures
(``ddmr evaluate`` stores scores, not fields): models by their forward pass, ANTs
baselines by running them again (with the settings given, so a quick setting keeps the
report cheap), "none" as the zero field."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddmr.report.figures import OverlayRow, overlay_figure

logger = logging.getLogger(__name__)


def _jacobian(displacement: np.ndarray) -> np.ndarray:
    from ddmr.spatial.field import jacobian_determinant

    u = torch.from_numpy(np.ascontiguousarray(displacement, dtype=np.float32))[None]
    return jacobian_determinant(u)[0, 0].numpy()


def _warp(moving: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    from ddmr.spatial.warp import warp_image

    u = torch.from_numpy(np.ascontiguousarray(displacement, dtype=np.float32))[None]
    return warp_image(torch.from_numpy(moving)[None, None], u)[0, 0].numpy()


def pair_overlay_rows(pair: Any, methods: Sequence[str], models: Mapping[str, Any],
                      ants_settings: Mapping[str, Any] | None = None,
                      ) -> tuple[list[OverlayRow], list[str]]:
    """Rows for the methods that can be recomputed, and the names of those that cannot
    (a model method without a loaded model in ``models``: name -> ModelMethod).
    ``<model>+engine`` methods are the model's field refined by the registration engine
    with its default settings, ``engine`` the engine alone (``ddmr evaluate``'s)."""
    from ddmr.baselines.ants import NAMES, run_baseline
    from ddmr.evaluate.engine_method import ENGINE, engine_field, split_engine_name

    baselines = {name: key for key, name in NAMES.items()}
    geometry = _geometry(pair)
    rows, missing = [], []
    for method in methods:
        model_name, refined = split_engine_name(method)
        if method == ENGINE:
            displacement = engine_field(pair)[0]
        elif method in baselines:
            key = baselines[method]
            settings = (ants_settings or {}).get(key)
            displacement = run_baseline(key, pair.fixed, pair.moving, geometry,
                                        settings).displacement
        elif model_name in models:
            model = models[model_name]
            displacement = model.predict(pair.fixed, pair.moving, pair.spacing)
            if refined:
                displacement = engine_field(pair, displacement)[0]
        else:
            missing.append(method)
            continue
        rows.append(OverlayRow(method, _warp(pair.moving, displacement),
                               _jacobian(displacement)))
    return rows, missing


def overlay_figures(pairs_path: str | Path, methods: Sequence[str],
                    models: Mapping[str, Path], folder: Path, stem: str, n_pairs: int = 1,
                    ants_settings: Mapping[str, Any] | None = None,
                    ) -> tuple[list[tuple[Path, str]], list[str]]:
    """Overlay PNGs for the first ``n_pairs`` stored pairs -> [(path, caption)] and the
    methods left out (no model file given, or the file is missing)."""
    from ddmr.evaluate.engine_method import split_engine_name
    from ddmr.evaluate.pairs import PairSet
    from ddmr.evaluate.runner import load_methods

    pairs = PairSet(pairs_path)
    wanted = {split_engine_name(m)[0] for m in methods}
    loaded = {name: load_methods([path])[0] for name, path in models.items()
              if name in wanted and Path(path).is_file()}
    out: list[tuple[Path, str]] = []
    missing = [m for m in methods if split_engine_name(m)[0] in models
               and split_engine_name(m)[0] not in loaded]
    for i in range(min(n_pairs, len(pairs))):
        pair = pairs[i]
        rows, missing = pair_overlay_rows(pair, methods, loaded, ants_settings)
        if not rows:
            break
        spacing = " x ".join(f"{s:.3g}" for s in pair.spacing)
        title = f"pair {pair.name} (subject {pair.subject}), voxels {spacing} mm"
        path = overlay_figure(folder / f"{stem}_overlay_{pair.name}.png", pair.fixed,
                              _geometry(pair), rows, title)
        caption = (f"Pair {pair.name} (held-out subject {pair.subject}): each method's "
                   "result, fields recomputed for this figure.")
        out.append((path, caption))
        logger.info("overlay for pair %s written", pair.name)
    return out, missing


def _geometry(pair: Any):
    from ddmr.spatial.grid import Geometry

    return Geometry(pair.affine, pair.fixed.shape)
