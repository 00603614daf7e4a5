"""Self-describing model files: safetensors weights with the model card in the header.

A model file holds the U-Net's weights and, in the safetensors metadata, a JSON card
(design, architecture, input size and spacing, normalisation, data summary, validation
metrics, the command that made it), the SHA-256 of the weights (``sha256``) and, from
format version 2, the SHA-256 of the card itself (``card_sha256``: every other field,
``sha256`` included, so a changed input size, design or architecture is refused like
changed weights). Loading never unpickles anything, checks the card's fields and the
weights' shapes against its architecture before it builds or allocates anything, and
refuses a file whose checksums do not match or whose weights are NaN or infinite. A
copy of the card is written beside it as ``<name>.json`` for people. Reading a card
(:func:`read_card`) imports no torch, so a command can check a model file before it
loads the heavy modules.

A checksum is not a signature: it catches a file changed by accident or by hand, not
one rewritten by someone who recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddmr.errors import DDMRError, InputError
from ddmr.model.card import ModelCard

if TYPE_CHECKING:
    import torch

    from ddmr.nn.unet import UNet, UNetConfig

logger = logging.getLogger(__name__)

FORMAT = "ddmr-model"
#: 2: the card carries ``card_sha256``; 1: the weights' checksum only (still read)
FORMAT_VERSION = 2
#: the card fields that are not covered by ``card_sha256`` (it, itself)
CARD_CHECKSUM = "card_sha256"


def weights_checksum(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def card_checksum(card: dict[str, Any]) -> str:
    """SHA-256 of the card without its ``card_sha256`` field, as canonical JSON (sorted
    keys, no spaces, ASCII): the same card gives the same checksum after a JSON round
    trip."""
    fields = {k: v for k, v in card.items() if k != CARD_CHECKSUM}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes (a model file as a whole, for ``summary.json``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_finite_weights(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Raise :class:`InputError` naming ``path`` when a weight is NaN or infinite."""
    import torch

    bad = [name for name, tensor in state.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise InputError(f"{path}: the weights have NaN or Inf values ({len(bad)} of "
                         f"{len(state)} tensors, e.g. {bad[0]}): the training diverged; "
                         "this model cannot be used")


@dataclass
class LoadedModel:
    """A network ready to run, its card and its file."""

    network: UNet
    card: ModelCard
    path: Path


def save_model(path: str | Path, network: UNet, card: dict[str, Any]) -> Path:
    """Write ``network`` and ``card`` to ``path`` (.safetensors) atomically, plus a JSON copy.
    Refuses a network with NaN or Inf weights and a name without ``.safetensors``."""
    from safetensors.torch import save

    from ddmr.io.files import atomic_path, write_errors

    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: a model file's name must end in .safetensors (it is a "
                         "safetensors file, not a pickle)")
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    check_finite_weights(state, path)
    full_card = dict(card)
    full_card.update({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": network.config.to_dict(),
        "sha256": weights_checksum(state),
        "parameters": network.parameter_count(),
    })
    full_card.pop(CARD_CHECKSUM, None)
    full_card = json.loads(json.dumps(full_card))  # what a reader will see (lists, not tuples)
    full_card[CARD_CHECKSUM] = card_checksum(full_card)
    with write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    # both files are written before either is renamed into place, and through Python's
    # own writes (safetensors' writer raises its own error type for a full disk): a write
    # that fails leaves neither, one line naming the model file
    with atomic_path(path) as temporary, atomic_path(path.with_suffix(".json")) as copy:
        temporary.write_bytes(save(state, metadata={"ddmr_card": json.dumps(full_card)}))
        copy.write_text(json.dumps(full_card, indent=2) + "\n")
    return path


def read_card(path: str | Path) -> dict[str, Any]:
    """The card stored in a model file's header (no weights are read), its checksum
    verified (format version 2 and later)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="numpy") as f:  # (no torch)
            metadata = f.metadata() or {}
    except Exception as error:  # safetensors raises several types for a corrupt header
        raise InputError(f"{path}: not a readable safetensors model file ({error})") from None
    if "ddmr_card" not in metadata:
        raise InputError(f"{path}: not a DDMR model file (no card in its header)")
    try:
        card = json.loads(metadata["ddmr_card"])
    except json.JSONDecodeError:
        raise InputError(f"{path}: the model card is not valid JSON") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise InputError(f"{path}: not a DDMR model file")
    version = card.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(f"{path}: the card's format_version {version!r} is not a number")
    if version > FORMAT_VERSION:
        raise InputError(f"{path}: model file format {version} is newer than this ddmr reads "
                         f"({FORMAT_VERSION}); update ddmr")
    if version >= 2 and card.get(CARD_CHECKSUM) != card_checksum(card):
        raise InputError(f"{path}: card checksum mismatch: the model card was changed after "
                         "the model was written (file modified or corrupt)")
    if version < 2:
        logger.info("%s: format version 1: its card is not covered by a checksum", path)
    return card


def _positive_ints(value: Any, count: int | None = None) -> bool:
    return (isinstance(value, list | tuple) and len(value) > 0
            and (count is None or len(value) == count)
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def smallest_input_size(config: UNetConfig, prealigns: bool) -> int:
    """The fewest voxels per axis a model takes: one voxel at the U-Net's deepest level
    (each encoder level halves the grid: ``UNet.multiple``) and, for a model with its own
    affine stage, one block of that stage's coarsest pyramid level."""
    from ddmr.model.align import AlignSettings

    smallest = 2 ** len(config.encoder)
    return max(smallest, *AlignSettings().levels) if prealigns else smallest


def input_size_problem(size: Sequence[int], config: UNetConfig,
                       prealigns: bool) -> str | None:
    """What makes ``input_size`` one that the network ``config`` cannot take (None when it
    can): below :func:`smallest_input_size`, or not a multiple of ``UNet.multiple``
    without ``pad_input``. Model cards and training profiles are checked with it."""
    levels = len(config.encoder)
    multiple = 2 ** levels
    smallest = smallest_input_size(config, prealigns)
    stage = " and its own affine stage" if smallest > multiple else ""
    if min(size) < smallest:
        return (f"input_size {list(size)!r} is too small for its network ({levels} encoder "
                f"levels, each halving the grid{stage}): each size must be at least "
                f"{smallest}")
    if not config.pad_input and any(n % multiple for n in size):
        return (f"input_size {list(size)!r} is not a multiple of {multiple} ({levels} encoder "
                "levels, each halving the grid) and its architecture has pad_input false")
    return None


def check_input_size(card: dict[str, Any], config: UNetConfig, path: str | Path) -> None:
    """Raise :class:`InputError` naming ``path`` and the field for a card's ``input_size``
    (checked by :func:`check_card`) that its network cannot take
    (:func:`input_size_problem`)."""
    problem = input_size_problem(card["input_size"], config, ModelCard(card).prealigns)
    if problem is not None:
        raise InputError(f"{path}: the card's {problem}")


def check_card(card: dict[str, Any], path: str | Path,
               profile: Callable[[Any], Any] | None = None) -> UNetConfig:
    """Check the fields of a card that change what a model does (architecture, input
    size, design, label values; with ``profile``, how training reads a profile
    (``TrainingProfile.from_dict``, passed in: this module imports no training code), the
    training profile that fine-tuning goes on with) without building anything; returns
    the architecture. Raises :class:`InputError` naming ``path`` and the field."""
    from ddmr.designs import Design
    from ddmr.nn.unet import UNetConfig

    architecture = card.get("architecture")
    if not isinstance(architecture, dict):
        raise InputError(f"{path}: the card's architecture {architecture!r} is not a U-Net "
                         "configuration (a mapping of UNetConfig fields)")
    try:
        config = UNetConfig.from_dict(architecture)
    except (TypeError, ValueError, DDMRError) as error:
        raise InputError(f"{path}: the card's architecture is not a U-Net configuration "
                         f"({error})") from None
    for key in ("encoder", "head") + (("decoder",) if config.decoder is not None else ()):
        if not _positive_ints(getattr(config, key)):
            raise InputError(f"{path}: the card's architecture has {key} "
                             f"{architecture.get(key)!r}; expected positive filter counts")
    if config.decoder is not None and len(config.decoder) != len(config.encoder):
        raise InputError(f"{path}: the card's architecture has {len(config.decoder)} decoder "
                         f"levels for {len(config.encoder)} encoder levels")
    if config.flow_resolution not in ("full", "half"):
        raise InputError(f"{path}: the card's architecture has flow_resolution "
                         f"{config.flow_resolution!r}; expected 'full' or 'half'")
    size = card.get("input_size")
    if not _positive_ints(size, 3) or min(size) < 2:
        raise InputError(f"{path}: the card's input_size {size!r} is not three voxel counts "
                         "of at least 2")
    labels = card.get("label_values", [])
    if not isinstance(labels, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in labels):
        raise InputError(f"{path}: the card's label_values {labels!r} are not labels 0..255")
    readers: list[tuple[str, Callable[[Any], Any]]] = [("design", Design.from_dict)]
    if profile is not None:
        readers.append(("profile", profile))
    for key, read in readers:
        if card.get(key) is None:
            continue
        try:
            read(card[key])
        except (TypeError, ValueError, KeyError, AttributeError, DDMRError) as error:
            raise InputError(f"{path}: the card's {key} is not valid ({error})") from None
    return config


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors header (no tensor data is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118


def _architecture_shapes(config: UNetConfig, path: Path) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the U-Net ``config`` describes, built on the meta device
    (nothing is allocated, whatever sizes the card claims)."""
    import torch

    from ddmr.nn.unet import UNet

    try:
        with torch.device("meta"):
            network = UNet(config)
    except (TypeError, ValueError, RuntimeError, DDMRError) as error:
        raise InputError(f"{path}: the card's architecture does not describe a U-Net "
                         f"({str(error).splitlines()[0] if str(error) else error})") from None
    return {name: tuple(tensor.shape) for name, tensor in network.state_dict().items()}


def check_weights_match_card(path: str | Path, config: UNetConfig) -> None:
    """Raise :class:`InputError` unless the file's tensors (names and shapes, read from its
    header) are exactly those of the architecture ``config``."""
    path = Path(path)
    try:
        found = _header_shapes(path)
    except Exception as error:  # safetensors raises several types for a corrupt header
        raise InputError(f"{path}: not a readable safetensors model file ({error})") from None
    expected = _architecture_shapes(config, path)
    if found == expected:
        return
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    differ = sorted(n for n in set(found) & set(expected) if found[n] != expected[n])
    if differ:
        name = differ[0]
        detail = (f"{len(differ)} tensors differ in shape, e.g. {name}: the card describes "
                  f"{list(expected[name])}, the file holds {list(found[name])}")
    else:
        detail = (f"missing {missing[:2]}" if missing else "") + (
            f"{'; ' if missing else ''}unexpected {unexpected[:2]}" if unexpected else "")
    raise InputError(f"{path}: the card's architecture does not match the weights ({detail})")


def load_model(path: str | Path, device: str | torch.device = "cpu",
               profile: Callable[[Any], Any] | None = None) -> LoadedModel:
    """Load and verify a model file: the card (checksum, fields; the training profile
    too with ``profile``, how training reads one: :func:`check_card`), the weights' names
    and shapes against its architecture (from the header, before anything is built), the
    input size against the architecture, the weights' checksum, that they are finite,
    then the network."""
    from safetensors.torch import load_file

    from ddmr.nn.unet import UNet

    path = Path(path)
    card = read_card(path)
    config = check_card(card, path, profile)
    check_weights_match_card(path, config)
    check_input_size(card, config, path)
    try:
        state = load_file(str(path))
    except Exception as error:
        raise InputError(f"{path}: cannot read the weights ({error})") from None
    if weights_checksum(state) != card.get("sha256"):
        raise InputError(f"{path}: checksum mismatch: the weights are not the ones the card "
                         "describes (file modified or corrupt)")
    check_finite_weights(state, path)
    try:
        network = UNet(config)
        network.load_state_dict(state, strict=True)
    except (KeyError, TypeError, RuntimeError) as error:
        raise InputError(f"{path}: the card's architecture does not match the weights "
                         f"({str(error).splitlines()[0]})") from None
    network.to(device).eval()
    return LoadedModel(network, ModelCard(card), path)


def rewrite_card(path: str | Path, update: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Change a model file's card in place, the safetensors header only (the tensor bytes
    stay byte for byte, so the weights' checksum still holds): ``update(card)`` edits the
    card dict, then ``format_version`` 2 and ``card_sha256`` are set anew and the ``.json``
    copy rewritten. Returns the new card (the file is verified by loading it)."""
    import struct

    from ddmr.io.files import atomic_path

    path = Path(path)
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    card = json.loads(header["__metadata__"]["ddmr_card"])
    update(card)
    card["format_version"] = FORMAT_VERSION
    card.pop(CARD_CHECKSUM, None)
    card[CARD_CHECKSUM] = card_checksum(card)
    header["__metadata__"]["ddmr_card"] = json.dumps(card)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the tensor data stays 8-byte aligned
    with atomic_path(path) as temporary:
        temporary.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length:])
    with atomic_path(path.with_suffix(".json")) as temporary:
        temporary.write_text(json.dumps(card, indent=2) + "\n")
    load_model(path)  # both checksums verify
    return card
