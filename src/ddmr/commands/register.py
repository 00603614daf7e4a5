"""``ddmr register``: register a moving image to a fixed image (or a CSV of pairs) in
world space with a trained model.

Exit status: 0 registered and QC passed; 2 bad input; 3 registered but QC failed (the
outputs are written, and the failed checks are printed in one line), unless ``--no-qc``.
"""

from __future__ import annotations

import argparse

from ddmr.config import SIMILARITIES

#: Exit status of a registration whose QC verdict failed.
QC_FAILED = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fixed", help="fixed image (NIfTI, NRRD, MHA; required unless --pairs)")
    parser.add_argument("--moving", help="moving image (any orientation, spacing, field of "
                        "view and world position; required unless --pairs)")
    parser.add_argument("--fixed-seg", help="fixed label map (with --moving-seg: DSC, HD95, "
                        "TRE; default none)")
    parser.add_argument("--moving-seg", help="moving label map, warped to warped_seg.nii.gz "
                        "(default none)")
    parser.add_argument("--pairs", help="CSV with columns fixed,moving[,fixed_seg,moving_seg]"
                        "[,id]: one output subfolder per pair (default: one pair from "
                        "--fixed/--moving)")
    parser.add_argument("--model", help="shipped model name, model file or training run "
                        "folder (default: the first shipped model; see `ddmr models`)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="threads for torch, scipy and BLAS (default: the cores this "
                        "process may use, or OMP_NUM_THREADS if smaller)")
    parser.add_argument("--affine", nargs="?", const="ants", default="world",
                        choices=("world", "ants", "none"),
                        help="the affine part: world (DDMR's world-space stage, then the "
                        "model's own where it helps), ants (ANTs' affine registration, kept "
                        "as it is; --affine alone) or none (trust the headers) "
                        "(default: world)")
    parser.add_argument("--refine", type=int, default=0, metavar="N",
                        help="refine the network's field on the pair itself for N "
                        "iterations (default: 0, the network alone)")
    parser.add_argument("--refine-similarity", choices=SIMILARITIES,
                        help="similarity of the refinement (default: the model design's "
                        "NCC; lncc local NCC, gncc global NCC, mi mutual information)")
    parser.add_argument("--refine-spacing", type=float, metavar="MM",
                        help="voxel size (mm) of the grid refinement runs on (default: the "
                        "model's preparation spacing, i.e. its prepared grid)")
    parser.add_argument("--refine-labels", action="store_true",
                        help="add a Dice term on --fixed-seg/--moving-seg to the refinement "
                        "(the reported DSC/TRE then no longer measure it independently; "
                        "default: off)")
    parser.add_argument("--no-qc", action="store_true",
                        help="exit 0 even when the QC verdict fails (default: exit 3)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUT (default: refuse)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar with --pairs (default: shown)")
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


def _print_result(summary: dict, qc_line: str, output: str) -> None:
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
    print(qc_line)
    print(f"outputs in {output}")


def run(args: argparse.Namespace) -> int:
    import sys

    from ddmr.errors import ConfigError
    from ddmr.threads import use_threads

    refine = _refine_options(args)
    use_threads(args.threads)
    if args.pairs:
        if args.fixed or args.moving or args.fixed_seg or args.moving_seg:
            raise ConfigError("--pairs replaces --fixed/--moving/--fixed-seg/--moving-seg")
        from ddmr.registration.batch import register_pairs

        rows = register_pairs(args.pairs, args.output, args.model, args.device, args.affine,
                              args.overwrite, progress=not args.no_progress, **refine)
        failed = [row["id"] for row in rows if row["qc"] != "pass"]
        print(f"{len(rows)} pairs registered into {args.output}; QC failed for "
              f"{len(failed)}" + (f": {', '.join(failed)}" if failed else ""))
        return QC_FAILED if failed and not args.no_qc else 0
    if not args.fixed or not args.moving:
        raise ConfigError("give --fixed and --moving (or --pairs PAIRS.csv)")
    from ddmr.io.files import check_output_folder
    from ddmr.registration.pipeline import register

    check_output_folder(args.output, args.overwrite)
    result = register(args.fixed, args.moving, args.fixed_seg, args.moving_seg,
                      args.model, args.device, args.affine, **refine)
    result.save(args.output, overwrite=args.overwrite)
    _print_result(result.summary, result.qc.line(), args.output)
    if not result.qc.passed:
        print(f"ddmr register: {result.qc.line()}", file=sys.stderr)
        return 0 if args.no_qc else QC_FAILED
    return 0
