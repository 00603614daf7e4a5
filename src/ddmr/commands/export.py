"""``ddmr export``: a model file from a training run's best (or last) checkpoint."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a ddmr train / finetune run folder")
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"],
                        help="best (lowest validation loss, default) or last")
    parser.add_argument("--data", help="the prepared data of the run (default: the run's "
                        "run.json)")
    parser.add_argument("-o", "--output", help="model file (default: RUN/model.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")


def run(args: argparse.Namespace) -> int:
    from ddmr.train.run import export_run

    path = export_run(args.run, args.checkpoint, args.data, args.output, args.overwrite)
    print(f"model written to {path}")
    return 0
