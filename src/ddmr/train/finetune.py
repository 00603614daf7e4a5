"""Fine-tuning a trained model on new data: the whole network at once, or in two steps
(the input and encoder layer groups frozen first), at the paper's learning rate 1e-4."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddmr.deprecated import renamed_keywords
from ddmr.errors import ConfigError, InputError
from ddmr.train.profiles import TrainingProfile
from ddmr.train.run import RunOptions, fit

logger = logging.getLogger(__name__)


def finetune_profile(card, overrides: dict[str, Any]) -> TrainingProfile:
    """The source model's profile (its :class:`ddmr.model.card.ModelCard`) with the
    fine-tuning learning rate (1e-4) and overrides."""
    profile = TrainingProfile.from_dict(card.profile_fields).replace(learning_rate=1e-4)
    return profile.replace(**{k: v for k, v in overrides.items() if v is not None})


def check_strategy(strategy: str) -> None:
    if strategy not in ("full", "two-step"):
        raise ConfigError(f"--strategy {strategy}: choose full or two-step")


@renamed_keywords(mode="strategy")
def finetune(model: str | Path, data: str | Path, options: RunOptions, strategy: str = "full",
             design_name: str | None = None, frozen_steps: int | None = None,
             overrides: dict[str, Any] | None = None,
             extra_callbacks: Sequence[Any] = ()) -> Path | None:
    """Fine-tune a model file on new data with a ``strategy``: ``full`` trains everything
    at once; ``two-step`` first trains with the input and encoder groups frozen for
    ``frozen_steps`` optimiser steps (default half of ``max_steps``), then everything.
    (``strategy`` was ``mode``; ``mode=`` still works for one release, with a
    :class:`DeprecationWarning`.)"""
    from ddmr.designs import get_design
    from ddmr.model.file import load_model

    check_strategy(strategy)
    # the card's training profile is checked too; NaN or Inf weights are refused
    loaded = load_model(model, profile=TrainingProfile.from_dict)
    if loaded.card.profile_fields is None:
        raise InputError(f"{model}: the model card has no training profile to fine-tune with")
    design = get_design(design_name) if design_name else loaded.card.design
    profile = finetune_profile(loaded.card, overrides or {})
    freeze_until = 0
    if strategy == "two-step":
        freeze_until = frozen_steps if frozen_steps is not None else profile.max_steps // 2
        if not 0 < freeze_until < profile.max_steps:
            raise ConfigError(f"--frozen-steps {freeze_until}: must be between 1 and "
                              f"max_steps - 1 ({profile.max_steps - 1})")
    extra = {"finetuned_from": {"path": str(Path(model).resolve()),
                                "sha256": loaded.card.weights_sha256,
                                "design": loaded.card.design_name},
             "finetune": {"mode": strategy, "frozen_steps": freeze_until,
                          "frozen_groups": ["input", "encoder"] if freeze_until else []}}
    return fit(design, profile, data, options, initial_state=loaded.network.state_dict(),
               freeze_until=freeze_until, card_extra=extra, extra_callbacks=extra_callbacks)
