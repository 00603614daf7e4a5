"""The index page of a batch folder, ``OUT/index.html``: every pair of a ``--pairs``
batch, worst QC first, each with a thumbnail and a link to its ``qc.html``
(:mod:`ddmr.registration.qc_page`). One self-contained file (thumbnails embedded).

Order: pairs whose registration raised an error, then those that failed QC, then those
that passed, then those not done yet. Within failed and passed pairs: more failed checks
first, then lower foreground overlap after registration, lower NCC after, more folding
(QC's measures in each pair's ``summary.json``); errors and pairs not done keep the pairs
CSV's order.

The page is built from the folder itself (each pair's ``summary.json`` and the head of
its ``qc.html``), the rows of the batch CSVs for the pairs that raised errors (they have
no folder), and the rows of the process writing it; so any shard, and ``--merge``, write
the whole batch's state as far as it is on disk.
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddmr.io.files import atomic_path

PathLike = str | os.PathLike[str]

#: The index page's name in the batch folder.
INDEX = "index.html"
#: Least seconds between two rewrites of the index while a batch runs (it is also
#: written when the batch ends).
REWRITE_SECONDS = 30.0
#: The order of the QC states on the page.
STATES = ("error", "fail", "pass", "pending")


@dataclass
class Entry:
    """One pair on the index page."""

    id: str
    order: int
    state: str = "pending"
    failed: list[str] = field(default_factory=list)
    message: str = ""
    measures: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None
    thumbnail: str | None = None
    link: str | None = None
    inputs: str = ""


def _number(value: Any, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return default
    return float(value)


def severity(entry: Entry) -> tuple:
    """Sort key, worst first (module docstring)."""
    m = entry.measures
    if entry.state not in ("fail", "pass"):
        return (STATES.index(entry.state), entry.order)
    return (STATES.index(entry.state), -len(entry.failed),
            _number(m.get("foreground_overlap_after"), math.inf),
            _number(m.get("ncc_after"), math.inf), -_number(m.get("folding_percent"), 0.0),
            entry.order)


def _done_entry(outdir: Path, ident: str, order: int) -> Entry | None:
    """The entry of a done pair (its ``summary.json``); None when it is not done."""
    from ddmr.registration.qc_page import read_thumbnail

    folder = outdir / ident
    try:
        summary = json.loads((folder / "summary.json").read_text())
        qc = summary["qc"]
        entry = Entry(ident, order, "pass" if qc["passed"] else "fail",
                      [str(name) for name in qc.get("failed", [])],
                      measures=dict(qc.get("measures") or {}),
                      metrics=dict(summary.get("metrics") or {}),
                      seconds=(summary.get("runtime_s") or {}).get("total"),
                      inputs=_inputs(summary.get("fixed"), summary.get("moving")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return Entry(ident, order, "error", message=f"{folder / 'summary.json'} is not readable")
    if (folder / "qc.html").is_file():
        entry.link = f"{ident}/qc.html"
        entry.thumbnail = read_thumbnail(folder / "qc.html")
    elif (folder / "overlay.png").is_file():
        entry.link = f"{ident}/overlay.png"
    return entry


def _inputs(fixed: Any, moving: Any) -> str:
    """``"fixed.nii.gz ← moving.nii.gz"``: the file names of a pair."""
    return f"{Path(str(fixed or '?')).name} ← {Path(str(moving or '?')).name}"


def _csv_errors(outdir: Path) -> dict[str, dict[str, str]]:
    """Pair id -> row, of the rows with ``qc`` ``error`` in the batch's CSVs."""
    errors = {}
    for path in sorted(outdir.glob("batch*.csv")):
        try:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                for row in csv.DictReader(handle):
                    if row.get("qc") == "error" and row.get("id"):
                        errors[row["id"]] = row
        except (OSError, csv.Error, UnicodeDecodeError):
            continue
    return errors


class BatchIndex:
    """Writes ``OUT/index.html`` for the pairs ``ids`` (the pairs CSV's order), reading
    each done pair once (a pair's entry is read again when its ``summary.json`` changes)."""

    def __init__(self, outdir: PathLike, ids: list[str]) -> None:
        self.outdir = Path(outdir)
        self.ids = list(ids)
        self._done: dict[str, tuple[int, Entry]] = {}
        self._written = -math.inf

    def entries(self, rows: Iterable[dict[str, Any]] = ()) -> list[Entry]:
        """Every pair's entry, worst first; ``rows``: this process's rows (``batch.csv``'s
        columns), whose errors are the newest."""
        errors = _csv_errors(self.outdir)
        errors.update({str(row["id"]): row for row in rows if row.get("qc") == "error"})
        out = []
        for order, ident in enumerate(self.ids):
            entry = self._entry(ident, order)
            if entry is None and ident in errors:
                row = errors[ident]
                entry = Entry(ident, order, "error", message=str(row.get("qc_failed") or ""),
                              inputs=_inputs(row.get("fixed"), row.get("moving")))
            out.append(entry or Entry(ident, order))
        return sorted(out, key=severity)

    def _entry(self, ident: str, order: int) -> Entry | None:
        try:
            stamp = (self.outdir / ident / "summary.json").stat().st_mtime_ns
        except OSError:
            self._done.pop(ident, None)
            return None
        cached = self._done.get(ident)
        if cached is None or cached[0] != stamp:
            entry = _done_entry(self.outdir, ident, order)
            if entry is None:
                return None
            self._done[ident] = (stamp, entry)
        return self._done[ident][1]

    def write(self, rows: Iterable[dict[str, Any]] = ()) -> Path:
        """Write the index now."""
        path = self.outdir / INDEX
        page = index_html(self.entries(rows), self.outdir.name)
        with atomic_path(path) as temporary:
            temporary.write_text(page, encoding="utf-8")
        self._written = time.monotonic()
        return path

    def update(self, rows: Iterable[dict[str, Any]] = ()) -> None:
        """Write the index if :data:`REWRITE_SECONDS` have passed since the last time."""
        if time.monotonic() - self._written >= REWRITE_SECONDS:
            self.write(rows)


def write_batch_index(outdir: PathLike, ids: list[str],
                      rows: Iterable[dict[str, Any]] = ()) -> Path:
    """Write ``outdir/index.html`` for the pairs ``ids`` (see :class:`BatchIndex`)."""
    return BatchIndex(outdir, ids).write(rows)


def _cell(value: Any, digits: int) -> str:
    number = _number(value, math.nan)
    return "\u2014" if math.isnan(number) else f"{number:.{digits}f}"


def _row(rank: int, entry: Entry) -> str:
    ident = html.escape(entry.id)
    name = f'<a href="{html.escape(entry.link)}">{ident}</a>' if entry.link else ident
    if entry.inputs:
        name += f'<div class="inputs">{html.escape(entry.inputs)}</div>'
    thumbnail = (f'<img class="thumb" alt="{ident}" src="{entry.thumbnail}">'
                 if entry.thumbnail else '<span class="nothumb">no image</span>')
    if entry.link and entry.thumbnail:
        thumbnail = f'<a href="{html.escape(entry.link)}">{thumbnail}</a>'
    words = {"error": "ERROR", "fail": "FAIL", "pass": "pass", "pending": "not done"}
    why = entry.message if entry.state == "error" else ", ".join(entry.failed)
    m, metrics = entry.measures, entry.metrics
    cells = [str(rank), thumbnail, name,
             f'<span class="badge">{words[entry.state]}</span>', html.escape(why),
             _cell(metrics.get("dsc"), 3), _cell(metrics.get("hd95"), 2),
             _cell(metrics.get("tre"), 2), _cell(metrics.get("folding_percent"), 3),
             _cell(m.get("foreground_overlap_after"), 2), _cell(m.get("ncc_after"), 3),
             _cell(entry.seconds, 1)]
    return (f'<tr class="{entry.state}" data-id="{ident}" data-state="{entry.state}">'
            + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")


def index_html(entries: list[Entry], name: str) -> str:
    """The index page of ``entries`` (already sorted) of the batch folder ``name``."""
    counts = {state: sum(e.state == state for e in entries) for state in STATES}
    said = {"error": "raised an error", "fail": "failed QC", "pass": "passed QC",
            "pending": "not done yet"}
    tally = ", ".join(f"{counts[s]} {said[s]}" for s in STATES if counts[s])
    header = ("<tr><th>#</th><th>fusion</th><th>pair</th><th>QC</th><th>failed checks / "
              "error</th><th>DSC</th><th>HD95 mm</th><th>TRE mm</th><th>folding %</th>"
              "<th>overlap after</th><th>NCC after</th><th>seconds</th></tr>")
    body = "".join(_row(rank, entry) for rank, entry in enumerate(entries, start=1))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    title = f"DDMR batch {name}"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p id="tally">{len(entries)} pairs: {html.escape(tally)}. Written {stamp}.</p>',
        '<p class="small">Worst first: errors, failed QC, passed QC, not done yet; within '
        "failed and passed pairs, more failed checks, then lower foreground overlap after "
        "registration, lower NCC after, more folding first. Thumbnails: the axial slice, "
        "fixed in magenta and warped in green (grey where they agree). Click a pair for its "
        "QC page.</p>",
        f'<table id="pairs"><thead>{header}</thead><tbody>{body}</tbody></table>',
        "</body></html>"]) + "\n"


_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1200px;
margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.3em}.small{font-size:.85em;color:#555}
table{border-collapse:collapse;font-size:.9em}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:middle}
th{background:#f2f2f2}td{font-variant-numeric:tabular-nums}
img.thumb{height:72px;display:block;background:#000}
.nothumb{font-size:.8em;color:#888}.inputs{font-size:.8em;color:#666}
.badge{font-weight:bold;padding:1px 6px;border-radius:3px}
tr.error .badge{background:#7a1414;color:#fff}tr.fail .badge{background:#c0392b;color:#fff}
tr.pass .badge{background:#2e8b47;color:#fff}tr.pending .badge{background:#bbb}
tr.error td,tr.fail td{background:#fdf1f0}
"""
