"""``ddmr finetune``: transfer a trained model to new data (whole, or encoder frozen first)."""

from __future__ import annotations

import argparse

from ddmr.commands.renamed import add_renamed
from ddmr.commands.train import add_run_arguments, profile_overrides, run_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True,
                        help="model to start from: a model file, a run folder holding "
                        "model.safetensors, or a shipped model's name")
    strategy = parser.add_argument(
        "--strategy", default="two-step", choices=["full", "two-step"],
        help="full: everything at once; two-step: encoder frozen first (default: two-step)")
    parser.add_argument("--design", help="loss design (default: the source model's)")
    parser.add_argument("--frozen-steps", type=int,
                        help="two-step: optimiser steps with the encoder frozen (default half)")
    add_run_arguments(parser)
    add_renamed(parser, "--mode", strategy)


def run(args: argparse.Namespace) -> int:
    from ddmr.model.shipped import resolve_model
    from ddmr.train.finetune import finetune

    _, source = resolve_model(args.source)  # a model file, a run folder or a shipped name
    model = finetune(source, args.data, run_options(args), strategy=args.strategy,
                     design_name=args.design, frozen_steps=args.frozen_steps,
                     overrides=profile_overrides(args))
    if model is not None:
        print(f"model written to {model}")
    return 0
