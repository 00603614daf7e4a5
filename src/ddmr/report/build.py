"""Assemble a report from evaluation results folders (``ddmr evaluate``, ``ddmr stats``)
and training run folders: ``report.html`` (self-contained) and ``report.md`` beside it,
with the PNG figures in ``<stem>_files/``."""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ddmr.errors import InputError, WriteError
from ddmr.report.document import (
    Document,
    Figure,
    Heading,
    Paragraph,
    Table,
    parse_markdown,
    to_html,
    to_markdown,
)

logger = logging.getLogger(__name__)

_TITLE = re.compile(r"^Evaluation on (.+) \(\d+ pairs\)\s*$")


@dataclass
class ResultsSection:
    """One evaluation to report.

    results: folder with per_pair.csv (and summary.md, stats_*.md when present).
    title: section heading. pairs: the stored pairs that were evaluated (for overlays;
    default: the path named in summary.md's title, when it exists). models: method name
    -> model file, to recompute model fields for the overlays. notes: paragraphs shown
    under the heading. ants_settings: the ANTs settings of this evaluation (default: the
    report's), used when SyN/SyNCC are re-run for the overlays. overlays: False leaves
    them out (pairs on their own grids, e.g. inter-subject pairs).
    """

    results: Path
    title: str = "Evaluation"
    pairs: Path | None = None
    models: Mapping[str, Path] = field(default_factory=dict)
    notes: Sequence[str] = ()
    ants_settings: Mapping[str, Any] | None = None
    overlays: bool = True


@dataclass
class ReportOptions:
    """overlay_pairs: pairs shown per section (0: no overlays). ants_settings: settings
    of the ANTs baselines when their fields are recomputed for the overlays."""

    overlay_pairs: int = 1
    ants_settings: Mapping[str, Any] | None = None
    title: str = "DDMR report"
    introduction: Sequence[str] = ()


def read_results(folder: Path) -> pd.DataFrame:
    from ddmr.evaluate.tables import read_per_pair

    return read_per_pair(folder)[0]


def baselines_as_run(folder: Path) -> dict[str, str]:
    """How the ANTs baselines of a results folder ran (``baselines.json``, written by
    :func:`ddmr.evaluate.runner.write_results`); {} when it was not recorded."""
    import json

    from ddmr.evaluate.runner import BASELINES_JSON

    path = folder / BASELINES_JSON
    if not path.is_file():
        return {}
    try:
        notes = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read: {error}") from None
    if not isinstance(notes, dict):
        raise InputError(f"{path}: expected an object of method names and descriptions")
    return {str(k): str(v) for k, v in notes.items()}


def pairs_from_summary(folder: Path) -> Path | None:
    """The pairs folder named in summary.md's title by ``ddmr evaluate``, if it exists."""
    summary = folder / "summary.md"
    if not summary.is_file():
        return None
    first = summary.read_text().splitlines()[:1]
    match = _TITLE.match(first[0]) if first else None
    if not match:
        return None
    path = Path(match.group(1))
    if not path.is_absolute():
        path = Path.cwd() / path
    return path if (path / "pairs.json").is_file() else None


def _summary_table(results: pd.DataFrame) -> str:
    from ddmr.evaluate.tables import summarise, summary_markdown

    return summary_markdown(summarise(results)).strip()


def _labels_note(results: pd.DataFrame) -> str | None:
    """Which labels DSC and DSC shared are means over, when the two differ."""
    from ddmr.evaluate.tables import shown_metrics

    if "dsc_shared" not in shown_metrics(results):
        return None

    def counts(column: str) -> str:
        values = sorted({int(v) for v in results[column].dropna()})
        return " to ".join(str(v) for v in (values[0], values[-1])) if len(values) > 1 \
            else str(values[0])

    return (f"DSC is the mean over the fixed map's labels ({counts('labels_scored')} per "
            f"pair); DSC shared over those of them the moving map has too "
            f"({counts('labels_shared')}): a label the moving map lacks scores 0 whatever "
            "the registration does. Per-label DSC: the `dsc_<label>` columns of "
            "per_pair.csv.")


def _results_blocks(section: ResultsSection, results: pd.DataFrame, ants: dict[str, str],
                    files: Path, stem: str, options: ReportOptions) -> list:
    from ddmr.report.figures import CONVENTION, boxplot_metrics, metric_label

    methods = list(dict.fromkeys(results["method"]))
    n_pairs = results["pair"].nunique() if "pair" in results else len(results)
    blocks: list = [Heading(section.title, 2)]
    blocks += [Paragraph(note) for note in section.notes]
    blocks.append(Paragraph(f"Methods: {', '.join(methods)}; {n_pairs} stored test pairs; "
                            f"results from `{section.results}`."))
    shown = [text for name, text in ants.items() if name in methods]
    if shown:
        blocks.append(Paragraph("ANTs as run in this section: " + "; ".join(shown) + "."))
    blocks += [Heading("Summary (mean ± standard deviation over pairs)", 3),
               Paragraph("Units in the headers; ↑ higher is better, ↓ lower is better; the "
                         "best mean of each column in bold. TRE is the mean distance between "
                         "label centroids; time covers prediction (or registration) and "
                         "applying the field."),
               Table(_summary_table(results))]
    blocks += [Paragraph(text) for text in [_labels_note(results)] if text]
    box = boxplot_metrics(results, files / f"{stem}_boxplots.png")
    if box is not None:
        blocks += [Heading("Distributions over pairs", 3),
                   Figure(box, "Per-pair metrics by method (boxes: quartiles and median; "
                          "points: pairs). Units on the axes.")]
    pairs = section.pairs or pairs_from_summary(section.results)
    if options.overlay_pairs > 0 and section.overlays:
        blocks.append(Heading("Example registrations", 3))
        if pairs is None or not (Path(pairs) / "pairs.json").is_file():
            blocks.append(Paragraph("No overlays: the stored pairs were not found (give "
                                    "--stored-pairs)."))
        else:
            from ddmr.report.overlays import overlay_figures

            figures, missing = overlay_figures(pairs, methods, section.models, files, stem,
                                               options.overlay_pairs,
                                               section.ants_settings or options.ants_settings)
            blocks.append(Paragraph(CONVENTION + " Intensities are the pair's normalised "
                                    "values; the difference and the Jacobian determinant use "
                                    "diverging colour maps centred on 0 and 1. "
                                    "Black: outside the image."))
            if missing:
                blocks.append(Paragraph(f"Not shown (no model file given or found): "
                                        f"{', '.join(missing)}."))
            blocks += [Figure(path, caption) for path, caption in figures]
    for stats_file in sorted(section.results.glob("stats_*.md")):
        parsed = parse_markdown(stats_file.read_text(), shift=2)
        if parsed and isinstance(parsed[0], Heading):
            parsed[0] = Heading(parsed[0].text.split(" (")[0], 3)
        else:
            parsed.insert(0, Heading(f"Statistics ({stats_file.stem})", 3))
        metric = stats_file.stem.removeprefix("stats_")
        tested = any(isinstance(block, Table) for block in parsed)
        parsed.insert(1, Paragraph(f"Metric: {metric_label(metric)}." + (
            " Mean differences and confidence intervals are in the metric's unit; "
            "p-values in bold are significant." if tested else "")))
        blocks += parsed
    return blocks


def _run_name(rundir: Path) -> str:
    import json

    card = rundir / "model.json"
    if card.is_file():
        try:
            design = json.loads(card.read_text()).get("design", {}).get("name")
        except (OSError, ValueError):
            design = None
        if design:
            return f"{rundir.name} ({design})" if design != rundir.name else design
    return rundir.name


def _run_blocks(runs: Sequence[Path], files: Path) -> list:
    from ddmr.train.plots import plot_training

    blocks: list = [Heading("Training", 2),
                    Paragraph("Curves from each run's CSV logs (ddmr.train.plots): training "
                              "loss, unweighted loss terms, validation on fixed pairs and, for "
                              "the uncertainty-weighted designs, the learned loss weights.")]
    names = ("training_loss", "loss_terms", "validation", "weights")
    for k, rundir in enumerate(runs):
        rundir = Path(rundir)
        plots = {p.stem: p for p in (rundir / "plots").glob("*.png")}
        if not plots:
            plots = {p.stem: p for p in plot_training(rundir)}
        blocks.append(Heading(f"Run {_run_name(rundir)}", 3))
        if not plots:
            blocks.append(Paragraph(f"`{rundir}`: no training logs."))
            continue
        for name in [n for n in names if n in plots] + sorted(set(plots) - set(names)):
            copy = files / f"run{k:02d}_{name}.png"
            shutil.copyfile(plots[name], copy)
            blocks.append(Figure(copy, f"{_run_name(rundir)}: {name.replace('_', ' ')}"))
    return blocks


def check_run_folder(rundir: Path) -> Path:
    """Raise :class:`InputError` unless ``rundir`` is a folder that ``ddmr train`` (or
    ``finetune``) wrote: it holds ``logs/``, ``checkpoints/`` or ``run.json``."""
    if not rundir.is_dir():
        raise InputError(f"{rundir}: run directory not found")
    if not any((rundir / name).exists() for name in ("logs", "checkpoints", "run.json")):
        raise InputError(f"{rundir}: not a training run folder (no logs/, checkpoints/ or "
                         "run.json); give a folder that ddmr train wrote")
    return rundir


def build_report(output: str | Path, sections: Sequence[ResultsSection],
                 runs: Sequence[str | Path] = (), options: ReportOptions | None = None,
                 ) -> tuple[Path, Path]:
    """Write ``output`` (.html, self-contained), the Markdown beside it (.md) and the
    figures (``<stem>_files/``); returns (html, markdown). Every input is read before
    anything is written, and the figures are made in a temporary folder that replaces
    ``<stem>_files/`` only once the report is written: a failure leaves nothing behind
    (and an older report as it was)."""
    from ddmr.io.files import check_output_file

    options = options or ReportOptions()
    output = Path(output)
    if output.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"{output}: the report must end in .html")
    if not sections and not runs:
        raise InputError("nothing to report: give a results folder or run folders")
    check_output_file(output, overwrite=True)
    tables = [read_results(section.results) for section in sections]
    ants = [baselines_as_run(section.results) for section in sections]
    runs = [check_run_folder(Path(r)) for r in runs]
    files = output.with_name(output.stem + "_files")
    markdown = output.with_suffix(".md")
    try:
        return _write_report(output, files, markdown, sections, tables, ants, runs, options)
    except WriteError as error:
        raise error.naming(output) from None


def _write_report(output: Path, files: Path, markdown: Path,
                  sections: Sequence[ResultsSection], tables: Sequence[pd.DataFrame],
                  ants: Sequence[dict[str, str]], runs: Sequence[Path],
                  options: ReportOptions) -> tuple[Path, Path]:
    """The writing half of :func:`build_report` (inputs read and checked)."""
    from ddmr.io.files import atomic_directory, atomic_path

    with atomic_directory(files) as staging:
        document = Document(options.title)
        document.add(*[Paragraph(text) for text in options.introduction])
        for k, (section, results, notes) in enumerate(zip(sections, tables, ants,
                                                          strict=True)):
            document.add(*_results_blocks(section, results, notes, staging, f"s{k}", options))
        if runs:
            document.add(*_run_blocks(runs, staging))
        html = to_html(document)  # the figures embedded, read from the staging folder
        for figure in document.figures():
            figure.path = files / Path(figure.path).relative_to(staging)
        with atomic_path(markdown) as temporary:
            temporary.write_text(to_markdown(document, output.parent))
        with atomic_path(output) as temporary:
            temporary.write_text(html)
    return output, markdown
