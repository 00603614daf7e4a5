"""Summary tables of per-pair results: mean ± std per method and metric, best in bold,
as CSV and as Markdown in the layout of the paper's Tables 2-5."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ddmr.errors import InputError
from ddmr.metrics import HIGHER_IS_BETTER, UNITS

PER_PAIR = "per_pair.csv"


def read_per_pair(path: Path) -> tuple[pd.DataFrame, Path]:
    """The per-pair results of ``ddmr evaluate`` (a results folder or its CSV) and the CSV
    path; one-line errors for a missing, unreadable or empty file."""
    csv = path / PER_PAIR if path.is_dir() else path
    if not csv.is_file():
        raise InputError(f"{csv}: not found (run ddmr evaluate first)")
    try:
        results = pd.read_csv(csv, dtype={"pair": str})
    except (OSError, ValueError) as error:
        raise InputError(f"{csv}: cannot read: {error}") from None
    if "method" not in results or results.empty:
        raise InputError(f"{csv}: no results (needs a 'method' column and rows)")
    return results, csv

#: Columns of the Markdown table, in order, with their header labels.
COLUMNS: dict[str, str] = {
    "dsc": "DSC", "dsc_shared": "DSC shared", "hd": "HD", "hd95": "HD95", "tre": "TRE",
    "dense_tre": "dense TRE",
    "ncc": "NCC", "ssim": "SSIM", "folding": "folding", "sdlogj": "SDlogJ", "seconds": "Time",
}
_UNITS = {**UNITS, "seconds": "s"}
_HIGHER = {**HIGHER_IS_BETTER, "seconds": False}


def shown_metrics(results: pd.DataFrame) -> list[str]:
    """The metrics of :data:`COLUMNS` that per-pair ``results`` hold, less ``dsc_shared``
    when it is ``dsc`` on every row (the moving maps have every label that is scored)."""
    metrics = [m for m in COLUMNS if m in results]
    if "dsc_shared" in metrics and {"labels_scored", "labels_shared"} <= set(results):
        scored = results["labels_scored"].to_numpy(np.float64)
        shared = results["labels_shared"].to_numpy(np.float64)
        if np.array_equal(scored, shared):
            metrics.remove("dsc_shared")
    return metrics


def summarise(results: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, standard deviation (ddof 1) and count of finite values per method and metric
    (default: :func:`shown_metrics`).

    Returns one row per method (in order of appearance) with columns ``<metric>_mean``,
    ``<metric>_std``, ``<metric>_n``.
    """
    metrics = list(metrics) if metrics is not None else shown_metrics(results)
    methods = list(dict.fromkeys(results["method"]))
    rows = []
    for method in methods:
        part = results[results["method"] == method]
        row: dict[str, object] = {"method": method}
        for metric in metrics:
            values = part[metric].to_numpy(dtype=np.float64)
            values = values[np.isfinite(values)]
            row[f"{metric}_mean"] = float(values.mean()) if values.size else math.nan
            row[f"{metric}_std"] = float(values.std(ddof=1)) if values.size > 1 else math.nan
            row[f"{metric}_n"] = int(values.size)
        rows.append(row)
    return pd.DataFrame(rows)


def _format(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "-"
    if not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary_markdown(summary: pd.DataFrame, digits: int = 2, title: str | None = None) -> str:
    """Markdown table: one row per method, columns of :data:`COLUMNS` that have values,
    header with units and arrows (↑ higher is better, ↓ lower), best mean in bold (among
    the registration methods: the ``none`` reference is never bold)."""
    columns = [m for m in COLUMNS if f"{m}_mean" in summary
               and np.isfinite(summary[f"{m}_mean"].to_numpy(dtype=np.float64)).any()]
    headers = ["Method"]
    for m in columns:
        unit = f" ({_UNITS[m]})" if _UNITS.get(m) else ""
        headers.append(f"{COLUMNS[m]}{unit} {'↑' if _HIGHER.get(m, False) else '↓'}")
    best = {}
    # "none" (no registration) is the reference, not a competitor: it is never bold
    competing = (summary["method"] != "none").to_numpy()
    for m in columns:
        means = summary[f"{m}_mean"].to_numpy(dtype=np.float64)
        rounded = np.where(competing, np.round(means, digits), np.nan)
        if not np.isfinite(rounded).any():
            best[m] = np.zeros(len(rounded), dtype=bool)
            continue
        target = np.nanmax(rounded) if _HIGHER.get(m, False) else np.nanmin(rounded)
        best[m] = np.isclose(rounded, target)
    lines = [] if title is None else [title, ""]
    lines += ["| " + " | ".join(headers) + " |",
              "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]
    for i, row in enumerate(summary.itertuples(index=False)):
        cells = [str(row.method)]
        for m in columns:
            text = _format(getattr(row, f"{m}_mean"), getattr(row, f"{m}_std"), digits)
            cells.append(f"**{text}**" if best[m][i] and text != "-" else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
