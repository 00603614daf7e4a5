"""Rewrite a format-1 model file's card as format 2 (with ``card_sha256``, issue 19),
changing the safetensors header only (:func:`ddmr.model.file.rewrite_card`).

    python scripts/upgrade_model_card.py src/ddmr/model/brain-t1-cpu.safetensors

(how the shipped model's card was upgraded)."""

from __future__ import annotations

import sys
from pathlib import Path

from ddmr.model.file import CARD_CHECKSUM, read_card, rewrite_card


def upgrade(path: Path) -> str:
    """Upgrade ``path`` in place; returns the new card checksum."""
    version = read_card(path).get("format_version", 1)
    if version != 1:
        raise SystemExit(f"{path}: format {version}, not 1: nothing to do")
    return rewrite_card(path, lambda card: None)[CARD_CHECKSUM]


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"{name}: format 2, card_sha256 {upgrade(Path(name))}")
