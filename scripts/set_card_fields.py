"""Set fields of a model file's card (JSON values, dotted keys for nested fields),
changing the safetensors header only: the weights stay byte for byte
(:func:`ddmr.model.file.rewrite_card`).

    python scripts/set_card_fields.py src/ddmr/model/brain-t1-cpu.safetensors \\
        'expects={"anatomy": "brain", "skull_stripped": true, "modality": "T1"}'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ddmr.model.file import rewrite_card


def set_fields(path: Path, assignments: list[str]) -> None:
    changes = []
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        changes.append((key.split("."), json.loads(value)))

    def update(card: dict) -> None:
        for keys, value in changes:
            target = card
            for key in keys[:-1]:
                target = target.setdefault(key, {})
            target[keys[-1]] = value

    rewrite_card(path, update)


if __name__ == "__main__":
    set_fields(Path(sys.argv[1]), sys.argv[2:])
    print(f"{sys.argv[1]}: card updated")
