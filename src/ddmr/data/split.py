"""Seeded, subject-level train/validation/test splits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ddmr.errors import ConfigError, InputError

SPLITS = ("train", "val", "test")


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``".7,.15,.15"`` -> (0.7, 0.15, 0.15); they must be >= 0 and sum to 1."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--split {text!r}: expected three numbers like .7,.15,.15") from None
    if len(values) != 3:
        raise ConfigError(f"--split {text!r}: expected three numbers like .7,.15,.15")
    check_fractions(values)
    return values  # type: ignore[return-value]


def check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or any(not np.isfinite(f) or f < 0 for f in fractions):
        raise ConfigError(f"split fractions must be three numbers >= 0, got {list(fractions)}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must sum to 1, got {list(fractions)}")


def _set_sizes(count: int, fractions: Sequence[float]) -> list[int]:
    """Subjects per set: rounded fractions; with >= 3 subjects every set whose fraction is
    positive gets at least one; train takes the rest."""
    sizes = [0, round(fractions[1] * count), round(fractions[2] * count)]
    if count >= 3:
        sizes = [max(s, 1) if f > 0 else s for s, f in zip(sizes, fractions, strict=True)]
    while sizes[1] + sizes[2] > count - (1 if fractions[0] > 0 and count >= 1 else 0):
        larger = 1 if sizes[1] >= sizes[2] else 2
        sizes[larger] -= 1
    sizes[0] = count - sizes[1] - sizes[2]
    return sizes


def split_subjects(subject_of: Mapping[str, str], fractions: Sequence[float] = (0.7, 0.15, 0.15),
                   seed: int = 0) -> dict[str, list[str]]:
    """Assign each id to train/val/test so that all ids of one subject share a set.

    ``subject_of`` maps id -> subject. Subjects are shuffled with ``seed`` (same seed and
    ids -> same split) and cut by ``fractions``. Returns ``{"train": [ids], "val": [...],
    "test": [...]}`` with sorted ids.
    """
    check_fractions(fractions)
    subjects = sorted(set(subject_of.values()))
    order = np.random.default_rng(seed).permutation(len(subjects))
    shuffled = [subjects[i] for i in order]
    sizes = _set_sizes(len(subjects), fractions)
    assignment: dict[str, str] = {}
    start = 0
    for name, size in zip(SPLITS, sizes, strict=True):
        for subject in shuffled[start:start + size]:
            assignment[subject] = name
        start += size
    return {name: sorted(i for i, s in subject_of.items() if assignment[s] == name)
            for name in SPLITS}


def read_split_file(path: str | Path, ids: Sequence[str]) -> dict[str, list[str]]:
    """A fixed split from a JSON file ``{"train": [...], "val": [...], "test": [...]}``.

    Every id of the dataset must be in exactly one set; ids the file names but the
    dataset lacks are an error too (a typo would silently shrink a set).
    """
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read the split file ({error})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: the split file must map train/val/test to lists of ids")
    split = {name: sorted(str(i) for i in data.get(name, [])) for name in SPLITS}
    named = [i for name in SPLITS for i in split[name]]
    duplicated = sorted({i for i in named if named.count(i) > 1})
    unknown = sorted(set(named) - set(ids))
    missing = sorted(set(ids) - set(named))
    for problem, found in (("in two sets", duplicated), ("not in the dataset", unknown),
                           ("in no set", missing)):
        if found:
            raise InputError(f"{path}: ids {problem}: {', '.join(found[:5])}")
    return split
