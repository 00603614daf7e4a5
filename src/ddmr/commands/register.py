"""``ddmr register``: register a moving image to a fixed image (or a CSV of pairs) in
world space with a trained model."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fixed", help="fixed image (NIfTI, NRRD, MHA)")
    parser.add_argument("--moving", help="moving image")
    parser.add_argument("--fixed-seg", help="fixed label map (for DSC, HD95, TRE)")
    parser.add_argument("--moving-seg", help="moving label map (warped to warped_seg.nii.gz)")
    parser.add_argument("--pairs", help="CSV with columns fixed,moving[,fixed_seg,moving_seg]"
                        "[,id]: one output subfolder per pair")
    parser.add_argument("--model", help="shipped model name or model file path "
                        "(default: the first shipped model; see `ddmr models`)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--affine", action="store_true",
                        help="affine pre-alignment (ANTs) composed with the network's field")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (--pairs)")
    parser.add_argument("-o", "--output", required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    from ddmr.errors import ConfigError

    if args.pairs:
        if args.fixed or args.moving or args.fixed_seg or args.moving_seg:
            raise ConfigError("--pairs replaces --fixed/--moving/--fixed-seg/--moving-seg")
        from ddmr.register import register_pairs

        rows = register_pairs(args.pairs, args.output, args.model, args.device, args.affine,
                              args.overwrite, progress=not args.no_progress)
        print(f"{len(rows)} pairs registered into {args.output}")
        return 0
    if not args.fixed or not args.moving:
        raise ConfigError("give --fixed and --moving (or --pairs PAIRS.csv)")
    from ddmr.register import check_output, register

    check_output(args.output, args.overwrite)
    result = register(args.fixed, args.moving, args.fixed_seg, args.moving_seg,
                      args.model, args.device, args.affine)
    result.save(args.output, overwrite=args.overwrite)
    summary = result.summary
    metrics = summary["metrics"]
    line = (f"registered in {summary['runtime_s']['total']:.1f} s with model "
            f"{summary['model']['name']}; folding {metrics['folding_percent']:.3f} %")
    if metrics.get("dsc") is not None:
        line += f"; DSC {metrics['dsc']:.3f}"
    print(line)
    print(f"outputs in {args.output}")
    return 0
