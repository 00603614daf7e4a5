"""``ddmr augment``: one synthetic (fixed, moving) pair with its ground-truth field from
an image (and its label map), as the augmentation layer makes them during training."""

from __future__ import annotations

import argparse

from ddmr.commands.renamed import add_renamed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="intensity image (NIfTI, NRRD, MHA)")
    labels = parser.add_argument("--labels", metavar="FILE", help="the image's label map, on "
                                 "its grid (warped with the image; default none)")
    parser.add_argument("-o", "--output", required=True, help="output folder (must not exist "
                        "or be empty, unless --overwrite)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--max-rotation", type=float, default=10.0,
                        help="degrees about each axis (default 10)")
    parser.add_argument("--max-translation", type=float, default=30.0,
                        help="mm along each axis (default 30)")
    parser.add_argument("--max-tps", type=float, default=6.0,
                        help="mm, bound of the non-rigid (TPS) displacement (default 6)")
    parser.add_argument("--tps-grid", type=int, default=8,
                        help="TPS control points per axis (default 8)")
    parser.add_argument("--fix-border", action="store_true",
                        help="keep the outer ring of TPS control points still")
    parser.add_argument("--max-gamma", type=float, default=2.0,
                        help="gamma is drawn log-uniformly in [1/G, G] (default 2)")
    parser.add_argument("--max-brightness", type=float, default=0.2,
                        help="additive brightness shift, fraction of the range (default 0.2)")
    parser.add_argument("--no-intensity", action="store_true", help="no gamma or brightness")
    parser.add_argument("--no-rigid", action="store_true", help="no rotation or translation")
    parser.add_argument("--no-nonrigid", action="store_true", help="no TPS deformation")
    parser.add_argument("--label-method", choices=("onehot", "nearest"), default="onehot",
                        help="how label maps are warped (default onehot)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output")
    add_renamed(parser, "--seg", labels)


def run(args: argparse.Namespace) -> int:
    from ddmr.augment.config import AugmentationConfig
    from ddmr.augment.files import augment_files
    from ddmr.errors import ConfigError

    if not args.max_gamma >= 1:
        raise ConfigError(f"--max-gamma must be at least 1, got {args.max_gamma}")
    config = AugmentationConfig(
        intensity=not args.no_intensity, gamma_range=(1 / args.max_gamma, args.max_gamma),
        max_brightness=args.max_brightness, rigid=not args.no_rigid,
        max_rotation=args.max_rotation, max_translation=args.max_translation,
        nonrigid=not args.no_nonrigid, tps_grid=args.tps_grid, max_tps=args.max_tps,
        tps_fix_border=args.fix_border, label_method=args.label_method)
    augment_files(args.image, args.output, args.labels, config, args.seed, args.overwrite)
    print(f"synthetic pair written to {args.output}")
    return 0
