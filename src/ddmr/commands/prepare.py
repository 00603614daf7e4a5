"""``ddmr prepare``: resample, crop, resize and normalise a dataset into HDF5 + split."""

from __future__ import annotations

import argparse

from ddmr.errors import ConfigError


def _numbers(text: str, count: int | None, kind: type, option: str) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected comma-separated numbers") from None
    if count is not None and len(values) != count:
        raise ConfigError(f"{option} {text!r}: expected {count} comma-separated numbers")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT", help="dataset folder (or CSV manifest)")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                        help="output folder: dataset.h5, split.json, prepare.json")
    parser.add_argument("--layout", default="auto",
                        choices=["auto", "folder", "csv", "ixi", "msd", "learn2reg"],
                        help="dataset layout (default: guess from INPUT)")
    parser.add_argument("--labels", metavar="DIR", default=None,
                        help="folder of label maps named like the images (ixi, folder)")
    parser.add_argument("--size", default="128", metavar="N[,N,N]",
                        help="prepared grid in voxels (default 128 = 128^3)")
    parser.add_argument("--spacing", type=float, default=1.0, metavar="MM",
                        help="isotropic voxel size in mm (default 1; see --resize)")
    parser.add_argument("--resize", default="fit", choices=["fit", "scale", "pad"],
                        help="fit: --spacing unless the region does not fit in --size, then "
                             "coarser; scale: region fills --size; pad: exactly --spacing, "
                             "centre crop/pad (default fit)")
    parser.add_argument("--crop-label", default=None, metavar="N[,N...]",
                        help="crop around these label values (e.g. the liver)")
    parser.add_argument("--crop-margin", type=float, default=10.0, metavar="MM",
                        help="margin around the crop label in mm (default 10)")
    parser.add_argument("--ct-window", default=None, metavar="LO,HI",
                        help="clip intensities (HU) to LO,HI before normalising; write "
                             "--ct-window=-200,300 for a negative LO")
    parser.add_argument("--merge-labels", default=None, metavar="FILE",
                        help="JSON or CSV map old->new label values (others become 0)")
    parser.add_argument("--atlas", default=None, metavar="IMAGE",
                        help="atlas image registered to subjects without labels (ANTs SyN)")
    parser.add_argument("--atlas-labels", default=None, metavar="LABELS",
                        help="the atlas' label map")
    parser.add_argument("--split", default=".7,.15,.15", metavar="TRAIN,VAL,TEST",
                        help="the train/val/test split: its subject fractions (default "
                        ".7,.15,.15)")
    parser.add_argument("--split-file", default=None, metavar="JSON",
                        help="fixed split {train: [ids], val: [...], test: [...]} instead of "
                             "--split (the bundled cohort ships one: split.json)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                        help="storage type of prepared images (default float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTDIR")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def options_from_args(args: argparse.Namespace):
    """Build :class:`ddmr.prepare.recipe.PrepareOptions` from parsed arguments."""
    from ddmr.data.split import parse_fractions
    from ddmr.prepare.recipe import PrepareOptions

    size = _numbers(args.size, None, int, "--size")
    if len(size) == 1:
        size = size * 3
    if len(size) != 3:
        raise ConfigError(f"--size {args.size!r}: give one number or three")
    return PrepareOptions(
        layout=args.layout, size=size, spacing=args.spacing, resize=args.resize,
        crop_labels=_numbers(args.crop_label, None, int, "--crop-label")
        if args.crop_label else (),
        crop_margin=args.crop_margin,
        ct_window=_numbers(args.ct_window, 2, float, "--ct-window") if args.ct_window else None,
        merge_labels=args.merge_labels, atlas=args.atlas, atlas_labels=args.atlas_labels,
        labels_dir=args.labels, split=parse_fractions(args.split), split_file=args.split_file,
        seed=args.seed,
        dtype=args.dtype,
    )


def run(args: argparse.Namespace) -> int:
    from ddmr.prepare.dataset import prepare_dataset

    options = options_from_args(args)
    summary = prepare_dataset(args.input, args.output, options, overwrite=args.overwrite,
                              progress=not args.no_progress)
    subjects = summary["subjects"]
    labelled = sum(1 for s in subjects if s["label_source"] != "none")
    print(f"prepared {len(subjects)} images ({labelled} with labels) into {args.output}")
    return 0
