"""Shipped models: the ``*.safetensors`` files inside this package, and resolving
``--model NAME|PATH``.

A shipped model's name is its file name without ``.safetensors``. Nothing here imports
torch; cards are read from the safetensors header only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ddmr.errors import ConfigError, InputError

SUFFIX = ".safetensors"


@dataclass(frozen=True)
class ShippedModel:
    """A model file shipped with the package."""

    name: str
    path: Path

    def card(self) -> dict[str, Any]:
        """The model card (read from the file header; raises :class:`InputError`)."""
        from ddmr.model_file import read_card

        return read_card(self.path)


def shipped_models() -> list[ShippedModel]:
    """The shipped models, sorted by name (empty while none ships)."""
    folder = resources.files(__name__)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(SUFFIX) and entry.is_file():
            found.append(ShippedModel(entry.name[: -len(SUFFIX)], Path(str(entry))))
    return sorted(found, key=lambda model: model.name)


def _available() -> str:
    names = [model.name for model in shipped_models()]
    return ", ".join(names) if names else "none is shipped yet"


def default_model() -> ShippedModel:
    """The first shipped model; :class:`ConfigError` when none ships."""
    models = shipped_models()
    if not models:
        raise ConfigError(
            "no model is shipped with this version of ddmr: pass --model PATH to a model file "
            "made by `ddmr train` (model.safetensors)"
        )
    return models[0]


def _looks_like_path(value: str) -> bool:
    return value.endswith(SUFFIX) or os.sep in value or "/" in value or value.startswith(".")


def resolve_model(model: str | os.PathLike[str] | None) -> tuple[str, Path]:
    """``(name, path)`` of ``--model NAME|PATH``; ``None`` gives the default model.

    A value naming an existing file, or a folder holding ``model.safetensors`` (a
    training run), is a path, and so is one that looks like a path; anything else is
    looked up among the shipped models. Raises :class:`InputError` for a missing file, a
    folder without a model or an unknown name (the message lists the shipped models).
    """
    if model is None:
        shipped = default_model()
        return shipped.name, shipped.path
    value = os.fspath(model)
    path = Path(value)
    if path.is_file():
        return path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name, path
    if path.is_dir() and (path / f"model{SUFFIX}").is_file():
        return "model", path / f"model{SUFFIX}"
    as_path = isinstance(model, os.PathLike) or _looks_like_path(value)
    for shipped in shipped_models() if not as_path else ():
        if shipped.name == value:
            return shipped.name, shipped.path
    if path.is_dir():
        raise InputError(f"{path}: is a directory without model{SUFFIX}; expected a model "
                         "file or a training run folder")
    if as_path:
        raise InputError(f"{path}: model file not found")
    raise InputError(
        f"unknown model {value!r}: shipped models: {_available()}; or pass the path of a "
        "model file made by `ddmr train`"
    )


def card_summary(card: dict[str, Any]) -> dict[str, Any]:
    """The fields of a card that ``ddmr models`` shows: design, input size, validation
    loss, training steps and the command that made it."""
    design = card.get("design") or {}
    validation = card.get("validation") or {}
    training = card.get("training") or {}
    return {
        "design": design.get("name", "?") if isinstance(design, dict) else str(design),
        "input_size": "x".join(str(n) for n in card.get("input_size", [])) or "?",
        "parameters": card.get("parameters"),
        "best_val_loss": validation.get("best_val_loss"),
        "validation": validation.get("last", {}),
        "steps": training.get("steps"),
        "hours": training.get("training_hours_total"),
        "evaluation": (card.get("evaluation") or {}).get("methods", {}),
        "command": card.get("command"),
        "created": card.get("created"),
    }
