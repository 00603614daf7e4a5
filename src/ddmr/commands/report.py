"""``ddmr report RESULTS... -o report.html``: a self-contained HTML report (and a Markdown
file beside it) from ``ddmr evaluate`` results, ``ddmr stats`` tables and training runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddmr.commands.renamed import add_renamed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="*", type=Path,
                        help="results folders written by ddmr evaluate (one section each)")
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="report file (.html); report.md and report_files/ go beside it")
    stored = parser.add_argument(
        "--stored-pairs", nargs="*", type=Path, default=[], metavar="DIR",
        help="the pairs folder (made by ddmr pairs) of each results folder, in order "
        "(default: the one named in its summary.md)")
    parser.add_argument("--models", nargs="*", default=[],
                        help="model files (or run folders, shipped models' names) that were "
                        "evaluated (to draw their overlays)")
    parser.add_argument("--runs", nargs="*", type=Path, default=[],
                        help="training run folders (training and weight curves)")
    parser.add_argument("--overlay-pairs", type=int, default=1,
                        help="example pairs drawn per results folder (0: none; default 1)")
    parser.add_argument("--ants-iterations", metavar="AFFINE/SYN",
                        help="ANTs iterations when SyN/SyNCC are re-run for the overlays, "
                        "e.g. 100x50/20x10 (default: as ddmr evaluate)")
    parser.add_argument("--title", default="DDMR report", help="report title")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing report (and its .md and _files/)")
    add_renamed(parser, "--pairs", stored)


def run(args: argparse.Namespace) -> int:
    from ddmr.baselines.ants import settings_from_iterations
    from ddmr.errors import ConfigError, InputError
    from ddmr.evaluate.runner import load_methods
    from ddmr.report import ReportOptions, ResultsSection, build_report

    output = args.output
    existing = [p for p in (output, output.with_suffix(".md"),
                            output.with_name(output.stem + "_files")) if p.exists()]
    if existing and not args.overwrite:
        raise InputError(f"{existing[0]}: exists; choose another -o or pass --overwrite")
    if len(args.stored_pairs) > len(args.results):
        raise ConfigError("--stored-pairs: give at most one pairs folder per results folder")
    if args.overlay_pairs < 0:
        raise ConfigError("--overlay-pairs must be >= 0")
    models = {m.name: m.path for m in load_methods(args.models)} if args.models else {}
    sections = [ResultsSection(folder, title=f"Evaluation: {folder.name}",
                               pairs=args.stored_pairs[k] if k < len(args.stored_pairs)
                               else None,
                               models=models)
                for k, folder in enumerate(args.results)]
    options = ReportOptions(overlay_pairs=args.overlay_pairs, title=args.title,
                            ants_settings=settings_from_iterations(args.ants_iterations,
                                                         ["syn", "syncc"]))
    html, markdown = build_report(args.output, sections, args.runs, options)
    print(f"report -> {html}")
    print(f"markdown -> {markdown}")
    return 0
