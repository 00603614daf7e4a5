"""Self-describing model files: safetensors weights with the model card in the header.

A model file holds the U-Net's weights and, in the safetensors metadata, a JSON card
(design, architecture, input size and spacing, normalisation, data summary, validation
metrics, the command that made it) and the SHA-256 of the weights. Loading never
unpickles anything, and refuses a file whose checksum does not match its weights or
whose card does not describe them. A copy of the card is written beside it as
``<name>.json`` for people.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddmr.errors import InputError
from ddmr.nn.unet import UNet, UNetConfig

FORMAT = "ddmr-model"
FORMAT_VERSION = 1


def weights_checksum(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


@dataclass
class LoadedModel:
    """A network ready to run and its card."""

    network: UNet
    card: dict[str, Any]
    path: Path


def save_model(path: str | Path, network: UNet, card: dict[str, Any]) -> Path:
    """Write ``network`` and ``card`` to ``path`` (.safetensors) atomically, plus a JSON copy."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    full_card = dict(card)
    full_card.update({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": network.config.to_dict(),
        "sha256": weights_checksum(state),
        "parameters": network.parameter_count(),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    card_path = path.with_suffix(".json")
    tmp_card = card_path.with_name(f".{card_path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file(state, str(tmp), metadata={"ddmr_card": json.dumps(full_card)})
        tmp.replace(path)
        tmp_card.write_text(json.dumps(full_card, indent=2) + "\n")
        tmp_card.replace(card_path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_card.unlink(missing_ok=True)
    return path


def read_card(path: str | Path) -> dict[str, Any]:
    """The card stored in a model file's header (no weights are read)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as error:  # safetensors raises several types for a corrupt header
        raise InputError(f"{path}: not a readable safetensors model file ({error})") from None
    if "ddmr_card" not in metadata:
        raise InputError(f"{path}: not a DDMR model file (no card in its header)")
    try:
        card = json.loads(metadata["ddmr_card"])
    except json.JSONDecodeError:
        raise InputError(f"{path}: the model card is not valid JSON") from None
    if card.get("format") != FORMAT:
        raise InputError(f"{path}: not a DDMR model file")
    return card


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load and verify a model file: checksum, then architecture against the weights."""
    from safetensors.torch import load_file

    path = Path(path)
    card = read_card(path)
    try:
        state = load_file(str(path))
    except Exception as error:
        raise InputError(f"{path}: cannot read the weights ({error})") from None
    if weights_checksum(state) != card.get("sha256"):
        raise InputError(f"{path}: checksum mismatch: the weights are not the ones the card "
                         "describes (file modified or corrupt)")
    try:
        network = UNet(UNetConfig.from_dict(card["architecture"]))
        network.load_state_dict(state, strict=True)
    except (KeyError, TypeError, RuntimeError) as error:
        raise InputError(f"{path}: the card's architecture does not match the weights "
                         f"({str(error).splitlines()[0]})") from None
    network.to(device).eval()
    return LoadedModel(network, card, path)
