"""The model a registration uses: loading it by name, path or object, and its device."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from ddmr.errors import InputError

PathLike = str | os.PathLike[str]


def file_sha256(path: PathLike) -> str:
    """SHA-256 (hex) of a file's bytes."""
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


def check_device(device: str) -> None:
    """Raise :class:`InputError` for a CUDA device on a machine without one."""
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
