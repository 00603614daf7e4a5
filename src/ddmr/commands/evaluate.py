"""``ddmr evaluate``: score models and ANTs baselines on the same stored pairs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddmr.commands.renamed import add_renamed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    stored = parser.add_argument("--stored-pairs", type=Path, metavar="DIR",
                                 help="the pairs folder made by ddmr pairs (required)")
    parser.add_argument("--models", nargs="*", default=[],
                        help="model files, training run folders or shipped models' names")
    parser.add_argument("--baselines", default="syn,syncc,none",
                        help="comma-separated subset of syn,syncc,none,affine,engine ('' for "
                        "none; engine: DDMR's affine stage, then the engine) (default: "
                        "syn,syncc,none)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="results folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    parser.add_argument("--device", default="cpu", help="device for the models (cpu, cuda)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--engine", action="store_true",
                        help="also score every model after the registration engine refines "
                        "its field on the pair (methods <model>+engine; default: off)")
    parser.add_argument("--engine-iterations", metavar="N,N,N",
                        help="the most engine steps per level, coarse to fine (default: the "
                        "engine's own)")
    parser.add_argument("--landmarks", type=Path, metavar="FOLDER",
                        help="landmark files FOLDER/<subject>.csv (id and coordinates, as "
                        "ddmr apply --points reads them) for landmark TRE on inter-subject "
                        "pairs (default: none; label centroids give TRE)")
    parser.add_argument("--ants-iterations", metavar="AFFINE/SYN",
                        help="ANTs iterations per level, e.g. 100x50/20x10, for every "
                        "kind of pairs (default: 2100x1200x1200x10 affine; SyN 40x20x0, "
                        "SyNCC 100x70x50x20; on inter-subject pairs antspyx's one-call "
                        "defaults)")
    add_renamed(parser, "--pairs", stored)


def run(args: argparse.Namespace) -> int:
    if args.stored_pairs is None:  # (not required by argparse: its old name may give it)
        from ddmr.errors import ConfigError

        raise ConfigError("--stored-pairs DIR is required: the pairs folder made by ddmr "
                          "pairs")
    from ddmr.baselines.ants import parse_methods, settings_from_iterations
    from ddmr.commands.register import engine_settings
    from ddmr.errors import ConfigError, InputError
    from ddmr.evaluate.engine_method import ENGINE
    from ddmr.evaluate.runner import SUMMARY_MD, baseline_notes, evaluate, write_results
    from ddmr.io.files import check_output_folder
    from ddmr.model.shipped import resolve_model

    names = [m.strip().lower() for m in args.baselines.split(",") if m.strip()]
    baselines = [*parse_methods([m for m in names if m != ENGINE]),
                 *([ENGINE] if ENGINE in names else [])]
    if args.engine and not args.models:
        raise ConfigError("--engine refines models' fields: give --models (the engine alone "
                          "is the baseline 'engine')")
    settings = settings_from_iterations(args.ants_iterations, baselines)
    engine = engine_settings(argparse.Namespace(fast=False, similarity=None, update=None,
                                                engine_iterations=args.engine_iterations,
                                                engine_spacing=None))
    # checked before hours of registrations: the output can be written, the models exist
    check_output_folder(args.output, args.overwrite)
    if not args.output.absolute().parent.is_dir():
        raise InputError(f"{args.output}: folder {args.output.parent} does not exist")
    models = [resolve_model(model)[1] for model in args.models]
    results = evaluate(args.stored_pairs, models, baselines, settings,
                       progress=not args.no_progress, device=args.device,
                       engine=args.engine, engine_settings=engine, landmarks=args.landmarks)
    write_results(results, args.output, overwrite=args.overwrite,
                  title=f"Evaluation on {args.stored_pairs} ({results['pair'].nunique()} "
                  "pairs)", baselines=baseline_notes(args.stored_pairs, baselines, settings))
    print((args.output / SUMMARY_MD).read_text(), end="")
    print(f"results -> {args.output}")
    return 0
