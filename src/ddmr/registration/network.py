"""The network's part of a registration: the pair in the model's space, the model's own
affine stage, and the predicted field as a world displacement the engine starts from."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ddmr.registration.inputs import Volume
from ddmr.spatial.displacement import Displacement

logger = logging.getLogger(__name__)

#: The model's own affine stage is kept when it raises global NCC on the model's grid by
#: at least this much: a smaller change is float rounding, and deciding on it made the
#: result depend on how a header stores the same head (benchmarks/RESULTS.md, issue 28).
MODEL_STAGE_GAIN = 1e-3


def _model_stage(point_map: np.ndarray, fixed_input: torch.Tensor, moving: Volume, space,
                 source) -> tuple[np.ndarray, torch.Tensor, dict[str, Any]]:
    """The model's own affine stage on its grid, on top of ``point_map``; kept only when
    it raises global NCC there. Returns (point map, moving input, record)."""
    from ddmr.losses.ncc import global_ncc
    from ddmr.model.predictor import own_alignment
    from ddmr.registration.space import model_source, source_fits, to_model_space

    moving_input = to_model_space(source, moving.geometry, space, moving.name, point_map)
    stage = own_alignment(fixed_input, moving_input, space.grid.spacing)
    candidate = point_map @ stage.world_map(space.grid)
    candidate_source = source
    if not source_fits(source, space, candidate):  # e.g. anisotropic, rotated
        candidate_source = model_source(moving.array, moving.geometry, space, candidate)
    candidate_input = to_model_space(candidate_source, moving.geometry, space, moving.name,
                                     candidate)
    before = float(global_ncc(fixed_input, moving_input)[0])
    after = float(global_ncc(fixed_input, candidate_input)[0])
    used = after >= before + MODEL_STAGE_GAIN
    record = {"used": used, "ncc_before": before, "ncc_after": after}
    if not used:
        logger.info("the model's affine stage did not raise NCC by %g (%.5f -> %.5f); "
                    "not used", MODEL_STAGE_GAIN, before, after)
        return point_map, moving_input, record
    return candidate, candidate_input, record


def predict(loaded, fixed: Volume, moving: Volume, point_map: np.ndarray, own_stage: bool,
            device: str) -> tuple[Displacement, np.ndarray, dict[str, Any]]:
    """Run a loaded model on the pair: both images through the preparation recipe onto
    the model's grid (the moving one through ``point_map``), the model's own affine stage
    when ``own_stage`` and the model was trained with one, then the network. Returns the
    field, the point map after the model's stage, and what ``summary.json`` records."""
    from ddmr.registration.space import model_source, model_space, to_model_space

    card = loaded.card
    space = model_space(fixed.geometry, card, fixed.labels)
    fixed_input = to_model_space(fixed.array, fixed.geometry, space, fixed.name)
    source = model_source(moving.array, moving.geometry, space, point_map)
    stage = None
    if card.prealigns and own_stage:  # the network learnt the residual of that stage
        point_map, moving_input, stage = _model_stage(point_map, fixed_input, moving, space,
                                                      source)
    else:
        moving_input = to_model_space(source, moving.geometry, space, moving.name,
                                      point_map)
    with torch.inference_mode():
        field = loaded.network(fixed_input.to(device), moving_input.to(device))
    record = {"model_stage": stage, "grid": {"shape": list(space.grid.shape),
                                             "spacing_mm": list(space.grid.spacing),
                                             "affine": space.grid.affine.tolist()},
              "coverage": space.coverage}
    # the network's field in voxels of the model's grid, in mm from here on
    return Displacement.from_voxels(field[0].float().cpu(), space.grid), point_map, record
