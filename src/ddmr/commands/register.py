"""``ddmr register``: register a moving image to a fixed image (or a CSV of pairs) in
world space with a trained model.

Exit status: 0 registered and QC passed; 2 bad input; 3 registered but QC failed (the
outputs are written, and the failed checks are printed in one line), unless ``--no-qc``.
"""

from __future__ import annotations

import argparse

from ddmr.commands.renamed import add_renamed
from ddmr.registration.outputs import OUTPUTS
from ddmr.registration.settings import MODES, SIMILARITY_NAMES, EngineSettings

#: Exit status of a registration whose QC verdict failed.
QC_FAILED = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fixed", help="fixed image (NIfTI, NRRD, MHA; required unless --pairs)")
    parser.add_argument("--moving", help="moving image (any orientation, spacing, field of "
                        "view and world position; required unless --pairs)")
    fixed_labels = parser.add_argument(
        "--fixed-labels", metavar="FILE", help="fixed label map (with --moving-labels: DSC, "
        "HD95, TRE; default none)")
    moving_labels = parser.add_argument(
        "--moving-labels", metavar="FILE", help="moving label map, warped to "
        "warped_seg.nii.gz (default none)")
    parser.add_argument("--guide", metavar="LABELS",
                        help="label values (such as 5,1,2,3) that guide the registration: "
                        "their overlap joins the similarity of the affine stage and of the "
                        "engine; needs both label maps, each showing every guided label; "
                        "DSC is then reported for the guided labels and the held-out "
                        "others apart (default: none, the label maps only score)")
    parser.add_argument("--guide-weight", type=float, metavar="W",
                        help="the weight of the guided labels' overlap in the engine "
                        "(default: 0.3; dense tissue classes of brains did better with 1)")
    parser.add_argument("--pairs", metavar="CSV", help="CSV with columns fixed,moving"
                        "[,fixed_labels,moving_labels][,id]: one output subfolder per pair "
                        "(default: one pair from --fixed/--moving)")
    parser.add_argument("--model", help="shipped model name, model file or training run "
                        "folder: the engine starts from its field; none for no network "
                        "(default: none, and the first shipped model with --fast; see "
                        "`ddmr models`)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="threads for torch, scipy and BLAS, at most 4 per logical "
                        "CPU (default: the cores this process may use, or OMP_NUM_THREADS "
                        "if smaller)")
    parser.add_argument("--affine", nargs="?", const="ants", default="world",
                        choices=("world", "ants", "none"),
                        help="the affine part: world (DDMR's world-space stage, then the "
                        "model's own where it helps), ants (ANTs' affine registration, kept "
                        "as it is; --affine alone) or none (trust the headers) "
                        "(default: world)")
    parser.add_argument("--fast", action="store_true",
                        help="the network alone, without the registration engine "
                        "(default: the engine runs after the network)")
    parser.add_argument("--engine-iterations", metavar="N,N,N",
                        help="the most engine steps per level, coarse to fine (default: "
                        f"{','.join(map(str, EngineSettings().iterations))})")
    parser.add_argument("--engine-spacing", type=float, metavar="MM",
                        help="the engine's finest voxel size in mm (default: the fixed "
                        "image's smallest, at least "
                        f"{EngineSettings().min_spacing:g} mm)")
    parser.add_argument("--similarity", choices=SIMILARITY_NAMES,
                        help="the engine's similarity: lncc local NCC, mi mutual "
                        "information, mind MIND-SSC descriptors (default: lncc)")
    update = parser.add_argument(
        "--update", choices=MODES, help="the engine's updates: compositive, additive, or "
        "svf (stationary velocity, diffeomorphic) (default: compositive)")
    parser.add_argument("--no-qc", action="store_true",
                        help="exit 0 even when the QC verdict fails (default: exit 3)")
    parser.add_argument("--outputs", metavar="NAME,NAME",
                        help="the files to write, by name: " + ", ".join(OUTPUTS)
                        + " (summary.json is always written; default: all)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUT (default: refuse)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar with --pairs (default: shown)")
    parser.add_argument("--shard", metavar="I/N",
                        help="with --pairs: register every N-th pair from the I-th (a job "
                        "array of N processes; default: 1/1, all pairs); done pairs are "
                        "skipped, so a batch resumes")
    parser.add_argument("--merge", metavar="OUT",
                        help="join the shards of the batch folder OUT into OUT/batch.csv "
                        "once every pair is done (default: no merge)")
    parser.add_argument("-o", "--output", help="output folder (required unless --merge)")
    for old, new in (("--fixed-seg", fixed_labels), ("--moving-seg", moving_labels),
                     ("--mode", update)):
        add_renamed(parser, old, new)


def model_option(text: str | None):
    """``--model``'s value for the Python API: ``none`` (no network) is ``False``."""
    return False if text == "none" else text


def affine_option(text: str):
    """``--affine``'s value for the Python API: ``none`` (the headers) is ``False``."""
    return False if text == "none" else text


def engine_settings(args: argparse.Namespace):
    """The engine's :class:`EngineSettings` from the options (False with ``--fast``)."""
    from dataclasses import replace

    from ddmr.errors import ConfigError

    if args.fast:
        if args.engine_iterations or args.engine_spacing or args.similarity or args.update:
            raise ConfigError("--fast runs no engine: --engine-iterations, --engine-spacing, "
                              "--similarity and --update need it")
        return False
    settings = EngineSettings()
    changes = {}
    if args.engine_iterations:
        try:
            iterations = tuple(int(v) for v in args.engine_iterations.split(","))
        except ValueError:
            raise ConfigError(f"--engine-iterations {args.engine_iterations!r}: expected "
                              "counts such as 200,100,40") from None
        if len(iterations) != len(settings.levels) or min(iterations) < 0:
            raise ConfigError(f"--engine-iterations {args.engine_iterations!r}: expected "
                              f"{len(settings.levels)} counts >= 0, one per level")
        changes["iterations"] = iterations
    if args.engine_spacing is not None:
        changes["spacing"] = args.engine_spacing  # (checked by EngineSettings)
    if args.similarity:
        changes["similarity"] = args.similarity
    if args.update:
        changes["mode"] = args.update
    return replace(settings, **changes)


def _check_inputs(args: argparse.Namespace) -> None:
    """What can be checked of one pair before torch and the numeric modules load (1-2 s):
    the model file's card, then the headers of the images and label maps, in the order
    :func:`ddmr.registration.pipeline.register` reads them (which checks them all)."""
    from ddmr.io.images import load_geometry
    from ddmr.model.file import read_card
    from ddmr.model.shipped import resolve_model

    network = model_option(args.model)  # None: the default model only with --fast
    if network is not False and (network is not None or args.fast):
        read_card(resolve_model(network)[1])
    for path in (args.fixed, args.fixed_labels, args.moving, args.moving_labels):
        if path:
            load_geometry(path)


def _dsc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_result(summary: dict, method: str, qc_line: str, output: str) -> None:
    metrics = summary["metrics"]
    line = (f"registered in {summary['runtime_s']['total']:.1f} s ({method}); folding "
            f"{metrics['folding_percent']:.3f} %")
    if metrics.get("dsc") is not None:
        line += f"; DSC {metrics['dsc']:.3f}"
        scored, shared = metrics.get("labels_scored", []), metrics.get("labels_shared", [])
        if len(shared) < len(scored) and metrics.get("dsc_shared") is not None:
            line += (f" over the fixed map's {len(scored)} labels, {metrics['dsc_shared']:.3f} "
                     f"over the {len(shared)} both maps have")
        for key, name in (("hd95", "HD95"), ("tre", "TRE")):
            if metrics.get(key) is not None:
                line += f"; {name} {metrics[key]:.2f} mm"
        guidance = metrics.get("guidance")
        if guidance:
            line += "; DSC guided " + _dsc(guidance["dsc_guided"]) + ", held out " + _dsc(
                guidance["dsc_held_out"]) + f" ({len(guidance['labels_held_out'])} labels)"
    print(line)
    engine = summary.get("engine")
    if engine:
        steps = "/".join(str(level["steps"]) for level in engine["levels"])
        print(f"engine: {steps} steps in {engine['seconds']:.1f} s; {engine['similarity']} "
              f"{engine['objective_start']:.4f} -> {engine['objective']:.4f}"
              + (" (the start was better and is kept)" if engine["kept_start"] else ""))
    print(qc_line)
    print(f"outputs in {output}")


def run(args: argparse.Namespace) -> int:
    import sys

    from ddmr.clock import process_seconds
    from ddmr.errors import ConfigError
    from ddmr.threads import check_threads, use_threads

    if args.merge:
        from ddmr.registration.batch import merge

        if args.pairs or args.fixed or args.moving or args.output:
            raise ConfigError("--merge OUT stands alone: no --pairs, --fixed, --moving or -o")
        rows = merge(args.merge)
        failed = [row["id"] for row in rows if row["qc"] != "pass"]
        print(f"{len(rows)} pairs merged into {args.merge}/batch.csv; QC failed for "
              f"{len(failed)}" + (f": {', '.join(failed)}" if failed else ""))
        return 0
    if not args.output:
        raise ConfigError("-o OUT is required (the output folder)")
    engine = engine_settings(args)
    from ddmr.registration.guidance import parse_labels
    from ddmr.registration.outputs import check_outputs

    guide = None if args.guide is None else parse_labels(args.guide)
    if args.guide_weight is not None and guide is None:
        raise ConfigError("--guide-weight needs --guide (the labels it weighs)")

    outputs = check_outputs(args.outputs)
    threads = check_threads(args.threads)  # (applied once the inputs are checked: torch)
    if args.shard is not None and not args.pairs:
        raise ConfigError("--shard I/N needs --pairs PAIRS.csv")
    if args.pairs:
        if args.fixed or args.moving or args.fixed_labels or args.moving_labels:
            raise ConfigError("--pairs replaces --fixed/--moving/--fixed-labels/"
                              "--moving-labels")
        use_threads(threads)
        from ddmr.registration.batch import parse_shard, register_pairs

        rows = register_pairs(args.pairs, args.output, model_option(args.model), args.device,
                              affine_option(args.affine),
                              args.overwrite, progress=not args.no_progress,
                              shard=parse_shard(args.shard), outputs=outputs,
                              engine=engine, guide=guide, guide_weight=args.guide_weight)
        errors = [row for row in rows if row["qc"] == "error"]
        failed = [row["id"] for row in rows if row["qc"] == "fail"]
        reused = sum(row["reused"] for row in rows)
        print(f"{len(rows) - len(errors)} of {len(rows)} pairs done in {args.output}: "
              f"{len(rows) - len(errors) - reused} registered now, {reused} done before and "
              f"reused; QC failed for {len(failed)}"
              + (f": {', '.join(failed)}" if failed else ""))
        if errors:
            print(f"ddmr register: error: {len(errors)} pair(s) not registered (see "
                  f"{args.output}/batch.csv): " + "; ".join(
                      f"{row['id']}: {row['qc_failed']}" for row in errors[:3])
                  + "; fix them and run the same command again to register them (done pairs "
                  "are skipped)", file=sys.stderr)
            return 2
        return QC_FAILED if failed and not args.no_qc else 0
    if not args.fixed or not args.moving:
        raise ConfigError("give --fixed and --moving (or --pairs PAIRS.csv)")
    from ddmr.io.files import check_output_folder
    from ddmr.registration.pipeline import register

    check_output_folder(args.output, args.overwrite)
    _check_inputs(args)
    use_threads(threads)
    started = process_seconds()  # the interpreter, its start-up and the command's imports
    result = register(args.fixed, args.moving, args.fixed_labels, args.moving_labels,
                      model_option(args.model), args.device, affine_option(args.affine),
                      engine, guide=guide, guide_weight=args.guide_weight)
    result.summary["runtime_s"]["process_start"] = \
        None if started is None else round(started, 3)
    result.save(args.output, overwrite=args.overwrite, outputs=outputs)
    _print_result(result.summary, result.method(), result.qc.line(), args.output)
    if not result.qc.passed:
        print(f"ddmr register: {result.qc.line()}", file=sys.stderr)
        return 0 if args.no_qc else QC_FAILED
    return 0
