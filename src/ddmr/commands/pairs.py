"""``ddmr pairs``: make and store test pairs from held-out subjects, once, so that every
method is scored on the same pairs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddmr.commands.renamed import add_renamed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path,
                        help="prepared dataset (ddmr prepare output)")
    parser.add_argument("--split", default="test",
                        help="the part of the train/val/test split to draw subjects "
                        "from: train, val, test, or all with --pairing inter-subject "
                        "(default: test)")
    pairing = parser.add_argument(
        "--pairing", choices=("same-subject", "inter-subject"), default="same-subject",
        help="the pairs: same-subject: a subject and an augmented copy of itself (the "
        "augmentation layer's synthetic pairs, with their ground truth); inter-subject: "
        "every ordered pair of different subjects of the split, on their own grids "
        "(default: same-subject)")
    parser.add_argument("--n", type=int, help="number of pairs (same-subject; required there)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("-o", "--output", required=True, type=Path, help="pairs folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    parser.add_argument("--max-rotation", type=float, help="degrees about each axis")
    parser.add_argument("--max-translation", type=float, help="mm along each axis")
    parser.add_argument("--max-tps", type=float, help="mm, thin-plate-spline displacement bound")
    parser.add_argument("--tps-grid", type=int, help="TPS control points per axis")
    parser.add_argument("--no-intensity", action="store_true",
                        help="no gamma/brightness augmentation")
    parser.add_argument("--no-tps", action="store_true",
                        help="rigid moving images only (no thin-plate-spline deformation)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_renamed(parser, "--mode", pairing)


def run(args: argparse.Namespace) -> int:
    from ddmr.augment import AugmentationConfig
    from ddmr.evaluate.pairs import make_pairs

    changes = {key: getattr(args, key) for key in
               ("max_rotation", "max_translation", "max_tps", "tps_grid")
               if getattr(args, key) is not None}
    if args.no_intensity:
        changes["intensity"] = False
    if args.no_tps:
        changes["nonrigid"] = False
    config = AugmentationConfig(**changes)
    if args.pairing == "same-subject" and args.n is None:
        from ddmr.errors import ConfigError

        raise ConfigError("--n N: how many same-subject pairs to make")
    index = make_pairs(args.data, args.output, args.n or 0, args.seed, args.split, config,
                       overwrite=args.overwrite, progress=not args.no_progress,
                       pairing=args.pairing)
    subjects = sorted({p["subject"] for p in index["pairs"]})
    print(f"{len(index['pairs'])} pairs from {len(subjects)} subjects of split "
          f"{args.split!r} -> {args.output}")
    return 0
