"""``ddmr apply``: use a saved registration (a ``ddmr register`` folder, or one ITK/ANTs
transform file such as ``transform.h5``) on another image, label map or landmark file
(:mod:`ddmr.registration.apply`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddmr.commands.renamed import add_renamed_flag
from ddmr.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transform", required=True,
                        help="the output folder of ddmr register (its displacement.nii.gz "
                        "and inverse_displacement.nii.gz), or one ITK/ANTs transform file "
                        "(transform.h5, inverse_transform.h5, ANTs' Composite.h5, .mat): "
                        "it maps its fixed points to its moving points, so an image is "
                        "warped onto --reference (required) and points go from its fixed "
                        "space to its moving space, as ANTs applies it")
    parser.add_argument("--moving", metavar="FILE", help="image to warp (linear "
                        "interpolation); one of --moving, --moving-labels or --points")
    parser.add_argument("--moving-labels", metavar="FILE",
                        help="label map to warp, label-exactly (default: none)")
    parser.add_argument("--points", help="landmark CSV to map instead of an image: columns "
                        "x_ras,y_ras,z_ras (or R,A,S) or x_lps,y_lps,z_lps (or L,P,S) in mm, "
                        "or ANTs' x,y,z[,t] with --points-space; with a folder, points of "
                        "the moving image go to the fixed space (default: none)")
    parser.add_argument("--points-space", choices=("lps", "ras"),
                        help="the convention of --points' x,y,z columns, which do not say it "
                        "(ANTs writes LPS); columns that name theirs must agree (default: "
                        "none, x,y,z refused)")
    parser.add_argument("--inverse", action="store_true",
                        help="the other direction: an image on the fixed side onto the "
                        "moving grid, or fixed-space points to the moving space (default: "
                        "off)")
    parser.add_argument("--reference", help="image whose grid the result is written on "
                        "(default: the fixed grid, or the moving grid with --inverse; "
                        "required with a transform file)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output file (default: refuse)")
    parser.add_argument("-o", "--output", required=True, help="output image or CSV file")
    add_renamed_flag(parser, "--labels", "labels_flag",
                     "--moving-labels FILE instead of --moving FILE --labels")


def run(args: argparse.Namespace) -> int:
    from ddmr.errors import ConfigError

    if args.labels_flag:  # the old spelling: --moving FILE --labels
        if args.moving_labels or not args.moving:
            raise ConfigError("--labels (deprecated) marks --moving as a label map: give "
                              "--moving-labels FILE alone")
        args.moving_labels, args.moving = args.moving, None
    if sum(map(bool, (args.moving, args.moving_labels, args.points))) != 1:
        raise ConfigError("give one of --moving IMAGE, --moving-labels FILE or --points CSV")
    if args.points and args.reference:
        raise ConfigError("--reference is for images and label maps, not --points")
    if args.points_space and not args.points:
        raise ConfigError("--points-space is for --points")
    if Path(args.transform).is_file():  # one ITK/ANTs transform: one direction, no grid
        from ddmr.registration.apply import no_grid, one_way

        if args.inverse:
            raise one_way(args.transform)
        if not args.points and not args.reference:
            raise no_grid(args.transform)
    output = _check_output(args)
    from ddmr.io.files import output_lock

    with output_lock(output):  # of two runs into one output, exactly one fails
        if output.exists() and not args.overwrite:
            raise InputError(f"{output}: already exists (written by another process "
                             "meanwhile?); pass --overwrite to replace it")
        return _apply(args)


def _check_output(args: argparse.Namespace) -> Path:
    """-o before any work: a CSV name for --points, an image type for an image, a place
    that can be written, no existing file without --overwrite."""
    from ddmr.io.files import check_output_file
    from ddmr.io.images import _check_writable

    output = Path(args.output)
    if args.points and output.suffix.lower() != ".csv":
        raise InputError(f"{output}: --points writes a CSV file of points; give -o a name "
                         "ending in .csv")
    if not args.points and not output.is_dir():
        _check_writable(output)  # an image file type
    return check_output_file(output, args.overwrite)


def _apply(args: argparse.Namespace) -> int:
    from ddmr.registration.apply import (
        TransformFile,
        apply_to_image,
        apply_to_points,
        load_transform,
        read_points,
        write_points,
    )

    transform = load_transform(args.transform, need_inverse=bool(args.inverse)
                               or bool(args.points and not args.inverse))
    if args.points:
        table = read_points(args.points, space=args.points_space)
        mapped = apply_to_points(transform, table.points_ras, inverse=args.inverse,
                                 name=args.points)
        write_points(args.output, table, mapped)
        if isinstance(transform, TransformFile):
            where = f"through {args.transform} (its fixed space to its moving space)"
        else:
            where = "to the moving space" if args.inverse else "to the fixed space"
        print(f"{len(mapped)} points mapped {where} -> {args.output}")
        return 0
    from ddmr.io.images import load_geometry, load_image, load_labels, save_image, save_labels

    labels = bool(args.moving_labels)
    moving = args.moving_labels or args.moving
    if labels:
        array, geometry = load_labels(moving)
    else:  # a constant image is warped as any other (it stays constant)
        array, geometry = load_image(moving, allow_constant=True)
    reference = load_geometry(args.reference) if args.reference else None  # its grid only
    warped, grid = apply_to_image(transform, array, geometry, labels=labels,
                                  inverse=args.inverse, reference=reference,
                                  image_name=moving, reference_name=args.reference)
    (save_labels if labels else save_image)(args.output, warped, grid)
    print(f"warped {'labels' if labels else 'image'} -> {args.output}")
    return 0
