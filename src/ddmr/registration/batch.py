"""Batch registration: a CSV of pairs registered with one loaded model.

A pairs CSV has columns ``fixed,moving[,fixed_seg,moving_seg][,id]`` (UTF-8; relative
paths are relative to the CSV's folder). Each pair's outputs go to ``OUT/<id>/`` and one
row per pair (timings, metrics, QC verdict) to ``OUT/summary.csv``. Ids are checked
before any work: safe file names of at most :data:`MAX_ID_LENGTH` characters, unique,
and not the name of a file DDMR writes there.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddmr.errors import InputError
from ddmr.io.files import atomic_directory, check_output_folder

PathLike = str | os.PathLike[str]

#: Longest pair id (it names a folder; file systems allow 255 bytes per name).
MAX_ID_LENGTH = 100
#: What a pair id may be made of: letters, digits, and ``.-_`` after the first.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: Names in the batch folder that ids may not take.
RESERVED_IDS = ("summary.csv",)


@dataclass(frozen=True)
class Pair:
    """One row of a pairs CSV (paths resolved against the CSV's folder)."""

    id: str
    fixed: Path
    moving: Path
    fixed_seg: Path | None = None
    moving_seg: Path | None = None


def check_pair_id(ident: str, where: str) -> str:
    """Return ``ident`` if it can name a pair's output folder; else raise
    :class:`InputError` saying why (``where``: the CSV and row, for the message)."""
    if len(ident) > MAX_ID_LENGTH:
        raise InputError(f"{where}: id of {len(ident)} characters is too long (at most "
                         f"{MAX_ID_LENGTH})")
    if not ID_PATTERN.fullmatch(ident):
        raise InputError(f"{where}: id {ident!r} is not a safe folder name (use letters, "
                         "digits and . - _, starting with a letter or digit)")
    if ident.lower() in RESERVED_IDS:
        raise InputError(f"{where}: id {ident!r} is the name of a file DDMR writes there")
    return ident


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()
                     if isinstance(v, str) or v is None}
                    for row in reader]
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} "
                         f"at offset {error.start})") from None
    except csv.Error as error:
        raise InputError(f"{path}: not a readable CSV ({error})") from None
    return columns, rows


def read_pairs(path: PathLike) -> list[Pair]:
    """Read a pairs CSV (module docstring). Ids default to ``pair-001`` ... Raises
    :class:`InputError` for a missing file or column, a bad or duplicate id, or a listed
    file that does not exist."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    columns, rows = _read_rows(path)
    missing = [c for c in ("fixed", "moving") if c not in columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} "
                         "(expected fixed,moving[,fixed_seg,moving_seg][,id])")
    if not rows:
        raise InputError(f"{path}: no pairs listed")

    def resolve(value: str) -> Path | None:
        if not value:
            return None
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else path.parent / candidate

    pairs = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        if not row.get("fixed") or not row.get("moving"):
            raise InputError(f"{path}: row {number} has no fixed or moving image")
        ident = check_pair_id(row.get("id") or f"pair-{number:03d}", f"{path}: row {number}")
        if ident in seen:
            raise InputError(f"{path}: duplicate id {ident!r}")
        seen.add(ident)
        pairs.append(Pair(ident, resolve(row["fixed"]), resolve(row["moving"]),
                          resolve(row.get("fixed_seg", "")), resolve(row.get("moving_seg", ""))))
    for pair in pairs:
        for name in ("fixed", "moving", "fixed_seg", "moving_seg"):
            file = getattr(pair, name)
            if file is not None and not file.exists():
                raise InputError(f"{file}: no such file ({name} of pair {pair.id})")
    return pairs


def register_pairs(pairs_csv: PathLike, outdir: PathLike, model: Any = None,
                   device: str = "cpu", affine: str = "world", overwrite: bool = False,
                   progress: bool = True, **options: Any) -> list[dict[str, Any]]:
    """Register every pair of a pairs CSV into ``outdir/<id>/`` (the model is loaded
    once) and write ``outdir/summary.csv``, one row per pair with its QC verdict; a pair
    that fails QC is recorded and the batch goes on. The folder is built under a
    temporary name and renamed; a bad input leaves nothing behind. ``options`` go to
    :func:`ddmr.register`. Returns the per-pair rows."""
    from tqdm.auto import tqdm

    from ddmr.model.shipped import check_device, load
    from ddmr.registration.pipeline import register

    check_output_folder(outdir, overwrite)
    pairs = read_pairs(pairs_csv)
    check_device(device)
    loaded = load(model, device)
    rows = []
    with atomic_directory(outdir, overwrite) as folder:
        for pair in tqdm(pairs, desc="ddmr register", unit="pair", disable=not progress):
            result = register(pair.fixed, pair.moving, pair.fixed_seg, pair.moving_seg,
                              loaded, device, affine, **options)
            (folder / pair.id).mkdir()
            result.write(folder / pair.id)
            metrics = result.summary["metrics"]
            rows.append({"id": pair.id, "fixed": str(pair.fixed), "moving": str(pair.moving),
                         "seconds": result.summary["runtime_s"]["total"],
                         **{k: metrics.get(k) for k in ("folding_percent", "dsc", "hd95",
                                                        "tre")},
                         "qc": "pass" if result.qc.passed else "fail",
                         "qc_failed": " ".join(check.name for check in result.qc.failed)})
        with open(folder / "summary.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows
