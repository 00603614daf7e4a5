"""Rewrite a format-1 model file's card as format 2 (with ``card_sha256``, issue 19),
changing the safetensors header only: the tensor bytes stay byte for byte, so the
weights' checksum in the card still holds. The ``.json`` copy beside it is rewritten too.

    python scripts/upgrade_model_card.py src/ddmr/model/brain-t1-cpu.safetensors

(how the shipped model's card was upgraded)."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

from ddmr.model.file import CARD_CHECKSUM, card_checksum, load_model


def upgrade(path: Path) -> str:
    """Upgrade ``path`` in place; returns the new card checksum."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    card = json.loads(header["__metadata__"]["ddmr_card"])
    if card.get("format_version", 1) != 1:
        raise SystemExit(f"{path}: format {card.get('format_version')}, not 1: nothing to do")
    card["format_version"] = 2
    card[CARD_CHECKSUM] = card_checksum(card)
    header["__metadata__"]["ddmr_card"] = json.dumps(card)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the tensor data stays 8-byte aligned
    data = raw[8 + length:]
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    load_model(path)  # both checksums verify
    return card[CARD_CHECKSUM]


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"{name}: format 2, card_sha256 {upgrade(Path(name))}")
