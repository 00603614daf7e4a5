"""Batch registration: a CSV of pairs registered with one loaded model, in shards.

A pairs CSV has columns ``fixed,moving[,fixed_seg,moving_seg][,id]`` (UTF-8; relative
paths are relative to the CSV's folder). Ids are checked before any work: safe file names
of at most :data:`MAX_ID_LENGTH` characters, unique, and not the name of a file DDMR
writes there.

The batch folder ``OUT`` holds one complete output folder per pair, ``OUT/<id>/``
(written atomically: a pair is done when its folder exists), and ``OUT/batch.csv``, one
row per pair (timings, metrics, QC verdict). With ``shard=(I, N)`` a process registers
every N-th pair from the I-th (1-based), so N processes (a SLURM or any job array) share
a cohort; each writes ``OUT/batch-I-of-N.csv`` and :func:`merge` (``ddmr register
--merge OUT``) joins them into ``OUT/batch.csv`` once all pairs are done. A rerun
registers only the pairs whose folder is missing (a batch resumes where it stopped).
``.ddmr-batch.json`` records the pairs CSV's ids, so a rerun with another CSV is refused.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddmr.errors import DDMRError, InputError

PathLike = str | os.PathLike[str]

#: Longest pair id (it names a folder; file systems allow 255 bytes per name).
MAX_ID_LENGTH = 100
#: What a pair id may be made of: letters, digits, and ``.-_`` after the first.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: Names in the batch folder that ids may not take.
RESERVED_IDS = ("batch.csv",)
#: The marker of a batch folder: the pairs' ids and the CSV they came from.
MARKER = ".ddmr-batch.json"
#: The per-pair columns of ``batch.csv``.
COLUMNS = ("id", "fixed", "moving", "seconds", "folding_percent", "dsc", "hd95", "tre", "qc",
           "qc_failed")


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
    if ident.lower() in RESERVED_IDS or re.fullmatch(r"batch-\d+-of-\d+\.csv", ident.lower()):
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


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"2/8"`` -> (2, 8): shard I of N, 1 <= I <= N; None -> (1, 1)."""
    if not text:
        return 1, 1
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise InputError(f"--shard {text!r}: expected I/N with 1 <= I <= N, e.g. 3/8")
    return int(match.group(1)), int(match.group(2))


def _row(pair_id: str, summary: dict[str, Any]) -> dict[str, Any]:
    metrics, qc = summary["metrics"], summary["qc"]
    return {"id": pair_id, "fixed": summary["fixed"], "moving": summary["moving"],
            "seconds": summary["runtime_s"]["total"],
            **{k: metrics.get(k) for k in ("folding_percent", "dsc", "hd95", "tre")},
            "qc": "pass" if qc["passed"] else "fail", "qc_failed": " ".join(qc["failed"])}


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    from ddmr.io.files import atomic_path

    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


def _open_batch(outdir: Path, pairs: list[Pair], pairs_csv: Path, overwrite: bool) -> None:
    """Create ``outdir`` as a batch folder, or check that it is this batch's."""
    import json
    import shutil

    from ddmr.io.files import atomic_path, check_output_folder

    ids = [pair.id for pair in pairs]
    marker = outdir / MARKER
    if outdir.exists() and overwrite and marker.is_file():
        shutil.rmtree(outdir)
    if outdir.exists() and marker.is_file():
        recorded = json.loads(marker.read_text()).get("ids")
        if recorded != ids:
            raise InputError(f"{outdir}: a batch folder of other pairs (its {MARKER} lists "
                             f"{len(recorded or [])} ids); choose another output, or pass "
                             "--overwrite to start this batch afresh")
        return
    check_output_folder(outdir, overwrite, allow_empty=True)
    outdir.mkdir(parents=True, exist_ok=True)
    with atomic_path(marker) as temporary:
        temporary.write_text(json.dumps({"pairs_csv": str(pairs_csv.resolve()), "ids": ids},
                                        indent=2) + "\n")


def register_pairs(pairs_csv: PathLike, outdir: PathLike, model: Any = None,
                   device: str = "cpu", affine: str = "world", overwrite: bool = False,
                   progress: bool = True, shard: tuple[int, int] = (1, 1), **options: Any
                   ) -> list[dict[str, Any]]:
    """Register the pairs of a pairs CSV (this process's ``shard``) into ``outdir/<id>/``
    (module docstring; the model is loaded once), skipping pairs already done; a pair
    that fails QC is recorded and the batch goes on. Writes ``outdir/batch.csv`` (one
    shard) or ``outdir/batch-I-of-N.csv``. A pair whose input is bad gets a row with
    ``qc`` ``error`` and the message, and no folder (a rerun tries it again). ``options``
    go to :func:`ddmr.register`. Returns this shard's rows."""
    import json

    from tqdm.auto import tqdm

    from ddmr.model.shipped import check_device, load
    from ddmr.registration.pipeline import register

    outdir = Path(outdir)
    pairs = read_pairs(pairs_csv)
    index, count = shard
    check_device(device)
    loaded = load(model, device)
    _open_batch(outdir, pairs, Path(pairs_csv), overwrite)
    rows = []
    for pair in tqdm(pairs[index - 1::count], desc="ddmr register", unit="pair",
                     disable=not progress):
        done = outdir / pair.id / "summary.json"
        if done.is_file():
            rows.append(_row(pair.id, json.loads(done.read_text())))
            continue
        try:
            result = register(pair.fixed, pair.moving, pair.fixed_seg, pair.moving_seg,
                              loaded, device, affine, **options)
        except DDMRError as error:  # this pair's input: recorded, the batch goes on
            rows.append({"id": pair.id, "fixed": str(pair.fixed), "moving": str(pair.moving),
                         "qc": "error", "qc_failed": " ".join(str(error).split())})
            continue
        result.save(outdir / pair.id, overwrite=True)
        rows.append(_row(pair.id, result.summary))
    _write_rows(outdir / ("batch.csv" if count == 1 else f"batch-{index}-of-{count}.csv"),
                rows)
    return rows


def merge(outdir: PathLike) -> list[dict[str, Any]]:
    """Join a batch folder's pairs into ``outdir/batch.csv`` (in the pairs CSV's order),
    from each pair's ``summary.json``; :class:`InputError` naming the pairs not done yet."""
    import json

    outdir = Path(outdir)
    marker = outdir / MARKER
    if not marker.is_file():
        raise InputError(f"{outdir}: not a batch folder of ddmr register --pairs (no {MARKER})")
    ids = json.loads(marker.read_text())["ids"]
    missing = [i for i in ids if not (outdir / i / "summary.json").is_file()]
    if missing:
        raise InputError(f"{outdir}: {len(missing)} of {len(ids)} pairs are not done yet "
                         f"(e.g. {', '.join(missing[:3])}); run the remaining shards first")
    rows = [_row(i, json.loads((outdir / i / "summary.json").read_text())) for i in ids]
    _write_rows(outdir / "batch.csv", rows)
    return rows
