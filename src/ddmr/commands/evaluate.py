"""``ddmr evaluate``: score models and ANTs baselines on the same stored pairs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddmr.config import SIMILARITIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", required=True, type=Path, help="folder made by ddmr pairs")
    parser.add_argument("--models", nargs="*", default=[],
                        help="model files, training run folders or shipped models' names")
    parser.add_argument("--baselines", default="syn,syncc,none",
                        help="comma-separated subset of syn,syncc,none,affine ('' for none)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="results folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    parser.add_argument("--device", default="cpu", help="device for the models (cpu, cuda)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--refine", metavar="N[,N...]",
                        help="also score every model after per-pair refinement of its field "
                        "for N iterations, e.g. 0,50,200 (0 = the model alone, always "
                        "scored); methods are named <model>+refine<N>")
    parser.add_argument("--refine-similarity", choices=SIMILARITIES,
                        help="similarity of the refinement (default: the model design's NCC)")
    parser.add_argument("--refine-labels", action="store_true",
                        help="add a Dice term on the pair's label maps to the refinement "
                        "(DSC/TRE then no longer score it independently)")
    parser.add_argument("--ants-iterations", metavar="AFFINE/SYN",
                        help="ANTs iterations per level, e.g. 100x50/20x10 (default: "
                        "2100x1200x1200x10 affine; SyN 40x20x0, SyNCC 100x70x50x20)")


def run(args: argparse.Namespace) -> int:
    from ddmr.baselines.ants import parse_methods, settings_from_iterations
    from ddmr.errors import ConfigError, InputError
    from ddmr.evaluate.runner import SUMMARY_MD, evaluate, parse_refine, write_results
    from ddmr.io.files import check_output_folder
    from ddmr.model.shipped import resolve_model

    baselines = parse_methods(args.baselines)
    refine = parse_refine(args.refine)
    if (args.refine_similarity or args.refine_labels) and not refine:
        raise ConfigError("--refine-similarity/--refine-labels need --refine N (N > 0)")
    if refine and not args.models:
        raise ConfigError("--refine refines models' fields: give --models")
    settings = settings_from_iterations(args.ants_iterations, baselines)
    # checked before hours of registrations: the output can be written, the models exist
    check_output_folder(args.output, args.overwrite)
    if not args.output.absolute().parent.is_dir():
        raise InputError(f"{args.output}: folder {args.output.parent} does not exist")
    models = [resolve_model(model)[1] for model in args.models]
    results = evaluate(args.pairs, models, baselines, settings,
                       progress=not args.no_progress, device=args.device, refine=refine,
                       refine_options={"similarity": args.refine_similarity,
                                       "labels": args.refine_labels})
    write_results(results, args.output, overwrite=args.overwrite,
                  title=f"Evaluation on {args.pairs} ({results['pair'].nunique()} pairs)")
    print((args.output / SUMMARY_MD).read_text(), end="")
    print(f"results -> {args.output}")
    return 0
