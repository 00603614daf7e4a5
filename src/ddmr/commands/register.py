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
    parser.add_argument("--refine", type=int, default=0, metavar="N",
                        help="refine the network's field on the pair itself for N "
                        "iterations (a few seconds; 0 = the network alone, the default)")
    parser.add_argument("--refine-similarity", choices=("ncc", "lncc", "gncc", "mi"),
                        help="similarity of the refinement (default: the model design's "
                        "NCC; lncc local NCC, gncc global NCC, mi mutual information)")
    parser.add_argument("--refine-spacing", type=float, metavar="MM",
                        help="voxel size (mm) of the grid refinement runs on (default: the "
                        "model's preparation spacing, i.e. its prepared grid)")
    parser.add_argument("--refine-labels", action="store_true",
                        help="add a Dice term on --fixed-seg/--moving-seg to the refinement "
                        "(the reported DSC/TRE then no longer measure it independently)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (--pairs)")
    parser.add_argument("-o", "--output", required=True, help="output folder")


def _refine_options(args: argparse.Namespace) -> dict:
    from ddmr.errors import ConfigError

    if args.refine < 0:
        raise ConfigError(f"--refine {args.refine}: the number of iterations must be >= 0")
    if args.refine == 0 and (args.refine_similarity or args.refine_spacing is not None
                             or args.refine_labels):
        raise ConfigError("--refine-similarity/--refine-spacing/--refine-labels need "
                          "--refine N (N > 0)")
    return {"refine": args.refine, "refine_similarity": args.refine_similarity,
            "refine_spacing": args.refine_spacing, "refine_labels": args.refine_labels}


def run(args: argparse.Namespace) -> int:
    from ddmr.errors import ConfigError

    refine = _refine_options(args)
    if args.pairs:
        if args.fixed or args.moving or args.fixed_seg or args.moving_seg:
            raise ConfigError("--pairs replaces --fixed/--moving/--fixed-seg/--moving-seg")
        from ddmr.register import register_pairs

        rows = register_pairs(args.pairs, args.output, args.model, args.device, args.affine,
                              args.overwrite, progress=not args.no_progress, **refine)
        print(f"{len(rows)} pairs registered into {args.output}")
        return 0
    if not args.fixed or not args.moving:
        raise ConfigError("give --fixed and --moving (or --pairs PAIRS.csv)")
    from ddmr.register import check_output, register

    check_output(args.output, args.overwrite)
    result = register(args.fixed, args.moving, args.fixed_seg, args.moving_seg,
                      args.model, args.device, args.affine, **refine)
    result.save(args.output, overwrite=args.overwrite)
    summary = result.summary
    metrics = summary["metrics"]
    line = (f"registered in {summary['runtime_s']['total']:.1f} s with model "
            f"{summary['model']['name']}; folding {metrics['folding_percent']:.3f} %")
    if metrics.get("dsc") is not None:
        line += f"; DSC {metrics['dsc']:.3f}"
    print(line)
    refinement = summary.get("refinement")
    if refinement:
        print(f"refined {refinement['iterations']} iterations in {refinement['seconds']:.1f} s "
              f"({refinement['similarity']}, {refinement['grid']['spacing_mm'][0]:.3g} mm "
              f"grid): objective {refinement['objective_before']:.4f} -> "
              f"{refinement['objective_after']:.4f}")
    print(f"outputs in {args.output}")
    return 0
