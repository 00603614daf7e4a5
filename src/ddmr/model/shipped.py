"""Shipped models: the ``*.safetensors`` files of this package (``ddmr.model``), and
resolving and loading ``--model NAME|PATH``.

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

    def card(self):
        """The :class:`ddmr.model.card.ModelCard` (read from the file header; raises
        :class:`InputError`)."""
        from ddmr.model.card import ModelCard
        from ddmr.model.file import read_card

        return ModelCard(read_card(self.path))


def shipped_models() -> list[ShippedModel]:
    """The shipped models, sorted by name (empty while none ships)."""
    folder = resources.files("ddmr.model")
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


def load(model: Any = None, device: str = "cpu"):
    """Load ``model`` (a shipped model's name, a model file, a training run folder,
    ``None`` for the default shipped model, or an already loaded
    :class:`ddmr.model.file.LoadedModel`, whose weights must be finite) on ``device``
    (checked to exist)."""
    from ddmr.model.file import LoadedModel, check_finite_weights, load_model

    check_device(device)
    if isinstance(model, LoadedModel):
        check_finite_weights(model.network.state_dict(), model.path)
        model.network.to(device).eval()
        return model
    _, path = resolve_model(model)
    return load_model(path, device)


def check_device(device: str) -> None:
    """Raise :class:`InputError` for a CUDA device on a machine without one."""
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
