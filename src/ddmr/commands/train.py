"""``ddmr train``: train a design on prepared data (Lightning; one GPU, CPU or many)."""

from __future__ import annotations

import argparse


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``finetune``."""
    parser.add_argument("--data", required=True, help="prepared dataset (ddmr prepare output)")
    parser.add_argument("-o", "--output", required=True, help="run directory")
    parser.add_argument("--config", help="YAML file overriding profile fields")
    parser.add_argument("--max-steps", type=int, help="optimiser steps")
    parser.add_argument("--val-every", type=int, help="optimiser steps between validations")
    parser.add_argument("--accumulate", type=int, help="gradients accumulated per step")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--pairing", choices=("same-subject", "inter-subject", "mixed"),
                        help="training pairs: a subject and an augmented copy of itself (the "
                        "paper's; default), two different training subjects, or either with "
                        "equal odds each step")
    parser.add_argument("--resume", action="store_true", help="continue from last.ckpt")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run")
    parser.add_argument("--devices", type=int, default=1, help="devices per node (DDP if > 1)")
    parser.add_argument("--num-nodes", type=int, default=1, help="nodes (DDP)")
    parser.add_argument("--accelerator", default="auto", help="auto, cpu, gpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def profile_overrides(args: argparse.Namespace) -> dict:
    return {"max_steps": args.max_steps, "val_every": args.val_every,
            "accumulate": args.accumulate, "seed": args.seed, "pairing": args.pairing}


def run_options(args: argparse.Namespace):
    import shlex
    import sys
    from pathlib import Path

    from ddmr.train.run import RunOptions

    return RunOptions(Path(args.output), resume=args.resume, overwrite=args.overwrite,
                      devices=args.devices, num_nodes=args.num_nodes,
                      accelerator=args.accelerator, progress_bar=not args.no_progress,
                      command=shlex.join(["ddmr", *sys.argv[1:]]))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--design", required=True, help="BL-N, BL-NS, SG-ND, SG-NSD, UW-NSD, "
                        "UW-NSDH")
    parser.add_argument("--profile", default="cpu", choices=["cpu", "paper"],
                        help="network and schedule preset (default cpu)")
    parser.add_argument("--supervised-weight", type=float,
                        help="add the known field of the synthetic pairs as a loss term with "
                        "this weight (per mm^2 of mean squared end-point error; default 0)")
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ddmr.designs import get_design
    from ddmr.train.profiles import get_profile
    from ddmr.train.run import fit

    design = get_design(args.design)
    if args.supervised_weight is not None:
        design = design.replace(supervised_weight=args.supervised_weight)
    profile = get_profile(args.profile, args.config, profile_overrides(args))
    model = fit(design, profile, args.data, run_options(args))
    if model is not None:
        print(f"model written to {model}")
    return 0
