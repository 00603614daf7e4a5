"""``ddmr demo``: prepare the bundled data, train, store test pairs, evaluate against
ANTs, run the statistics and write the report, printing where each step is."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="two designs, few steps and pairs: a few minutes on 2 cores")
    parser.add_argument("--experiment", choices=("brain", "transfer"), default="brain",
                        help="brain: the designs on the bundled cohort (default); transfer: "
                        "brain model fine-tuned on synthetic CT phantoms")
    parser.add_argument("-o", "--output", type=Path, default=Path("ddmr-demo"),
                        help="demo folder (default ./ddmr-demo); finished steps of an earlier "
                        "demo there are reused")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the folder first and start from scratch")


def run(args: argparse.Namespace) -> int:
    import shlex
    import time

    from ddmr.demo import FULL, QUICK, Demo

    settings = QUICK if args.quick else FULL
    print(f"ddmr demo ({'quick' if args.quick else 'full'}, {args.experiment}) in "
          f"{args.output.resolve()}", flush=True)
    start = time.perf_counter()
    again = shlex.join(["ddmr", "demo", *(["--quick"] if args.quick else []),
                        *(["--experiment", args.experiment]
                          if args.experiment != "brain" else []), "-o", str(args.output)])
    demo = Demo(args.output, settings, progress=lambda text: print(text, flush=True),
                overwrite=args.overwrite, command=again)
    report = demo.run(args.experiment)
    print(f"done in {time.perf_counter() - start:.0f} s")
    print(f"report -> {report.resolve()}")
    print(f"markdown -> {report.with_suffix('.md').resolve()}")
    return 0
