"""Label merging: a user map from old label values to new ones (e.g. 29 -> 17 regions).

The map is a JSON object ``{"old": new, ...}`` (or a list of ``[old, new]`` pairs) or a
CSV file with two columns ``old,new`` (a header line is optional). Values not in the map
become background (0), so the map lists exactly the labels to keep.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from ddmr.errors import InputError

logger = logging.getLogger(__name__)


def _pairs_from_json(path: Path) -> list[tuple[object, object]]:
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        return list(data.items())
    if isinstance(data, list) and all(isinstance(p, list) and len(p) == 2 for p in data):
        return [tuple(p) for p in data]
    raise ValueError('expected {"old": new, ...} or [[old, new], ...]')


def _pairs_from_csv(path: Path) -> list[tuple[object, object]]:
    from ddmr.io.files import read_csv

    rows = [r for r in read_csv(path) if r and any(c.strip() for c in r)]
    if rows and not rows[0][0].strip().lstrip("-").isdigit():
        rows = rows[1:]  # header
    if any(len(r) < 2 for r in rows):
        raise ValueError("expected two columns old,new")
    return [(r[0], r[1]) for r in rows]


def read_label_map(path: str | Path) -> dict[int, int]:
    """Read a label merging map; raise :class:`InputError` naming the file if unusable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: label map file does not exist")
    try:
        pairs = (_pairs_from_json(path) if path.suffix.lower() == ".json"
                 else _pairs_from_csv(path))
        mapping = {int(str(old).strip()): int(str(new).strip()) for old, new in pairs}
    except (OSError, UnicodeDecodeError, ValueError, TypeError, csv.Error) as error:
        raise InputError(f"{path}: cannot read label map: {error}") from None
    bad = [v for pair in mapping.items() for v in pair if not 0 <= v <= 255]
    if bad:
        raise InputError(f"{path}: label values must be 0..255, found {bad[0]}")
    if not mapping:
        raise InputError(f"{path}: label map is empty")
    return mapping


def apply_label_map(labels: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Relabel a uint8 label map (any shape); values missing from ``mapping`` become 0."""
    table = np.zeros(256, dtype=np.uint8)
    for old, new in mapping.items():
        table[old] = new
    dropped = sorted(set(np.unique(labels).tolist()) - set(mapping) - {0})
    if dropped:
        logger.info("label map drops labels %s (set to background)", dropped)
    return table[labels]
