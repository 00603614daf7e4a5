"""Every registration method on the same pairs, timed in one run and scored by the same
code (issue 21): ANTs SyN, greedy, elastix, ConvexAdam and DDMR's variants.

    python benchmarks/bench_peers.py run --kind inter [--pairs test|all] [--methods ...]
    python benchmarks/bench_peers.py run --kind same [--pairs test|all]
    python benchmarks/bench_peers.py run --kind heads-2mm --pairs all --methods none,syn,greedy,ddmr
    python benchmarks/bench_peers.py process            # whole processes: ddmr and SyN
    python benchmarks/bench_peers.py table [--kind inter]   # the tables and Pareto plot
    python benchmarks/bench_peers.py write-same FOLDER   # the first 1 mm pair as files

Pair kinds:

``inter``
    different people: the ordered pairs of the bundled cohort's six heads (96^3, 2 mm,
    skull-stripped, their own headers), ``test`` = the two test subjects both ways.
``heads``
    different people's whole heads, not skull-stripped (1 mm, each on its own header: the
    four individuals of ``speed_pairs.py``, the bundled brains' own sources, with the
    bundled labels carried to each head's grid), ``test`` = the two test subjects both
    ways, ``all`` = every ordered pair of the four (each row says its split);
``heads-2mm``
    the same heads and labels on a 2 mm grid of their own orientation (images linear with
    anti-aliasing, labels nearest);
``same``
    same-subject synthetic pairs of a 1 mm whole head (pydeface's mean head, 176 x 256
    x 256; fetched once from PyPI with ``pip download`` into ``~/.cache/ddmr-bench``): the
    augmentation layer's rigid + thin-plate-spline deformation with its ground truth.

Every method returns a world displacement on the fixed grid (RAS mm, fixed point ``p``
shows the moving image at ``p + d``); the moving labels are warped through it label-
exactly (:func:`ddmr.baselines.peers.warp`) and scored with :mod:`ddmr.metrics`:
mean DSC over the labels (and over the tissue classes CSF/GM/WM and the atlas-propagated
subcortical structures apart), HD95 (mm), centroid TRE (mm), dense TRE against the
ground truth (``same``), folding (%). ``seconds`` is each method's own registration call
in this process (DDMR: ``ddmr.register`` on arrays with the model loaded, without its
metrics); the ``process`` command times whole processes. Rows go to a JSON-lines file
(``benchmarks/peers/KIND.jsonl``), one per pair and method; a rerun skips those done.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "peers"
CACHE = Path.home() / ".cache" / "ddmr-bench"
THREADS = 2
TISSUE = (1, 2, 3)  # the bundled cohort's CSF, grey and white matter (Atropos classes)

#: DDMR's variants: name -> (model, engine settings changes or None for --fast); the model
#: ``"default"`` is ``ddmr.register``'s own default (no network since 2026-12-07), ``None``
#: the shipped model. (Rows named ``ddmr`` written before 2026-12-07 ran the shipped model
#: and the engine; they were renamed ``ddmr-network`` in ``peers/inter.jsonl``.)
DDMR = {"ddmr": ("default", {}), "ddmr-network": (None, {}), "ddmr-fast": (None, None),
        # the default before 2026-12-07's eighth session, up to 100 steps on the coarsest
        # level: rows named ``ddmr`` in peers/heads-2mm.jsonl and inter.jsonl made then were
        # renamed so; ``ddmr-engine`` (the engine alone, now the default) rows were dropped
        "ddmr-coarse100": (False, {"iterations": (100, 50, 10)}),
        # 50/50/10, the default for part of that session (rows named ``ddmr`` made then
        # were renamed so)
        "ddmr-50-50-10": (False, {"iterations": (50, 50, 10)}),
        # rows named ``ddmr`` made before the affine stage's closed-form gradient (issue 28,
        # ninth session; the same default otherwise) were renamed ``ddmr-autograd-affine``
        "ddmr-engine-short": (False, {"iterations": (60, 40, 0)}),
        "ddmr-engine-long": (False, {"iterations": (400, 400, 40), "tolerance": 1e-4,
                                     "min_step": 0.15}),
        # the engine's default before issue 21's 1 mm finding: the whole field smoothed by
        # at least 4 mm each step
        "ddmr-engine-diff4": (False, {"diffusion_mm": 4.0}),
        # issue 29, tenth session: the engine regularised less and its window wider, best on
        # the training pairs of skull-stripped brains and 1 mm whole heads, but drifting on
        # the 2 mm whole heads with robex-ref (benchmarks/RESULTS.md); not the default
        "ddmr-w13-f0.75-d0.45": (False, {"window": 13, "fluid_sigma": 0.75,
                                         "diffusion_sigma": 0.45, "finest_fluid_sigma": None,
                                         "finest_diffusion_sigma": None}),
        # the default before the tenth session's (issue 29): window 9, fluid and diffusion
        # sigmas 1 at every level; rows named ``ddmr`` made before were renamed so
        "ddmr-w9-f1-d1": (False, {"window": 9, "finest_fluid_sigma": None,
                                  "finest_diffusion_sigma": None}),
        # the default for part of the tenth session: window 11, the finest level smoothed
        # less (rows named ``ddmr`` made then were renamed so)
        "ddmr-w11": (False, {"window": 11})}
PEERS = ("syn", "greedy", "elastix", "convexadam")
#: pair kinds (module docstring)
KINDS = ("inter", "heads", "heads-2mm", "same")
METHODS = ("none", *PEERS, *DDMR)


def set_threads() -> None:
    for name in ("OMP_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        os.environ[name] = str(THREADS)
    import torch

    torch.set_num_threads(THREADS)


# -- pairs ----------------------------------------------------------------------------------


def inter_pairs(which: str) -> list[dict]:
    """The bundled cohort's ordered pairs of different people, on their own grids."""
    from ddmr.data.cohort import cohort_split, sample_cohort_dir
    from ddmr.io.images import load_image, load_labels

    root = sample_cohort_dir()
    split = cohort_split()
    test = split["test"]
    subjects = sorted(itertools.chain.from_iterable(split.values()))
    order = [(test[0], test[1]), (test[1], test[0])]
    if which == "all":
        order += [p for p in itertools.permutations(subjects, 2) if p not in order]

    def side(name: str):
        image, geometry = load_image(root / "images" / f"{name}.nii.gz")
        labels, _ = load_labels(root / "labels" / f"{name}.nii.gz")
        return image, labels, geometry

    pairs = []
    for fixed, moving in order:
        f, fl, fg = side(fixed)
        m, ml, mg = side(moving)
        pairs.append({"id": f"{fixed}<-{moving}", "fixed": (f, fg), "moving": (m, mg),
                      "fixed_labels": fl, "moving_labels": ml, "truth": None})
    return pairs


def head_pairs(which: str, spacing: float) -> list[dict]:
    """Whole heads of different people (the ``heads`` kinds): ``spacing`` 1 (as built) or
    2 mm (their grids coarsened by two along each axis)."""
    import speed_pairs
    from ddmr.io.images import load_image, load_labels
    from ddmr.spatial.grid import Geometry
    from ddmr.spatial.resample import resample_to

    def side(path: Path, labels_path: Path):
        image, geometry = load_image(path)
        labels, label_geometry = load_labels(labels_path)
        if not label_geometry.isclose(geometry):
            labels = resample_to(labels, label_geometry, geometry, order=0)
        if spacing != 1:
            factor = spacing / min(geometry.spacing)
            coarse = Geometry(geometry.affine @ np.diag([factor, factor, factor, 1.0]),
                              tuple(int(np.ceil(n / factor)) for n in geometry.shape))
            image = resample_to(image, geometry, coarse, order=1, antialias=True)
            labels = resample_to(labels, geometry, coarse, order=0)
            geometry = coarse
        return image, labels, geometry

    pairs = []
    for pair in speed_pairs.pairs("1mm", which):
        f, fl, fg = side(pair["fixed"], pair["fixed_labels"])
        m, ml, mg = side(pair["moving"], pair["moving_labels"])
        pairs.append({"id": pair["id"], "split": speed_pairs.split_of(pair["id"]),
                      "fixed": (f, fg), "moving": (m, mg), "fixed_labels": fl,
                      "moving_labels": ml, "truth": None})
    return pairs


def whole_head() -> Path:
    """pydeface's mean head (1 mm whole head), fetched once from PyPI."""
    target = CACHE / "mean_reg2mean.nii.gz"
    if not target.is_file():
        import zipfile

        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                        "pydeface==2.1.0", "-d", str(CACHE)], check=True)
        wheel = next(CACHE.glob("pydeface-2.1.0*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            target.write_bytes(archive.read("pydeface/data/mean_reg2mean.nii.gz"))
    return target


def same_pairs(which: str) -> list[dict]:
    """Same-subject synthetic 1 mm whole-head pairs: the augmentation layer's deformation
    (the paper's bounds) of pydeface's mean head, with the bundled labels of that head
    (2 mm, the same world) brought to its 1 mm grid, and the ground-truth field."""
    import torch

    from ddmr.augment import AugmentationConfig, AugmentationLayer
    from ddmr.data.cohort import sample_cohort_dir
    from ddmr.io.images import load_image, load_labels
    from ddmr.spatial.field import voxels_to_mm
    from ddmr.spatial.resample import resample_to

    image, geometry = load_image(whole_head())
    labels, label_geometry = load_labels(sample_cohort_dir() / "labels" / "pydeface-mean.nii.gz")
    labels = resample_to(labels, label_geometry, geometry, order=0)
    image = (image - image.min()) / (np.percentile(image, 99.5) - image.min())
    layer = AugmentationLayer(AugmentationConfig(intensity=False))
    pairs = []
    for seed in range(2 if which == "test" else 5):
        pair = layer(torch.from_numpy(np.clip(image, 0, 1).astype(np.float32))[None, None],
                     torch.from_numpy(labels)[None, None], geometry.spacing,
                     generator=torch.Generator().manual_seed(seed))
        truth = voxels_to_mm(pair.displacement[0].numpy(), geometry)
        pairs.append({"id": f"pydeface-mean-seed{seed}",
                      "fixed": (pair.fixed[0, 0].numpy(), geometry),
                      "moving": (pair.moving[0, 0].numpy(), geometry),
                      "fixed_labels": pair.fixed_labels[0, 0].numpy(),
                      "moving_labels": pair.moving_labels[0, 0].numpy(), "truth": truth})
    return pairs


# -- methods ----------------------------------------------------------------------------------


class Ddmr:
    """DDMR's variants on arrays, the shipped model loaded once, when a variant needs it."""

    def __init__(self) -> None:
        self.model = None

    def shipped(self):
        if self.model is None:
            from ddmr.model.shipped import load

            self.model = load(None)
        return self.model

    def __call__(self, name: str, fixed, moving) -> tuple[np.ndarray, float, dict]:
        from dataclasses import replace

        import ddmr
        from ddmr.registration.settings import EngineSettings

        model, changes = DDMR[name]
        engine = False if changes is None else replace(EngineSettings(), **changes)
        chosen = {} if model == "default" else {
            "model": self.shipped() if model is None else model}
        result = ddmr.register(fixed, moving, engine=engine, **chosen)
        runtime = result.summary["runtime_s"]
        seconds = runtime["total"] - runtime["metrics"] - runtime["qc"] - runtime["load"]
        engine_summary = result.summary.get("engine") or {}
        details = {"runtime_s": runtime, "qc": result.qc.passed,
                   "engine_steps": [level["steps"] for level in engine_summary.get("levels", [])]}
        return result.displacement_mm, seconds, details


def run_method(name: str, pair: dict, ddmr_runner: Ddmr | None):
    from ddmr.baselines import peers

    if name == "none":
        shape = pair["fixed"][1].shape
        return np.zeros((3, *shape), np.float32), 0.0, {}
    if name in DDMR:
        return ddmr_runner(name, pair["fixed"], pair["moving"])
    options = {"greedy": {"threads": THREADS}, "elastix": {"threads": THREADS}}.get(name, {})
    result = peers.run_peer(name, pair["fixed"], pair["moving"], **options)
    return result.displacement_mm, result.seconds, {k: v for k, v in result.details.items()
                                                     if k != "log"}


def score(pair: dict, displacement: np.ndarray) -> dict:
    from ddmr import metrics
    from ddmr.baselines import peers
    from ddmr.spatial.field import folding_percent, jacobian_determinant_mm

    geometry = pair["fixed"][1]
    warped = peers.warp((pair["moving_labels"], pair["moving"][1]), displacement, geometry,
                        labels=True)
    fixed_labels = pair["fixed_labels"]
    values = metrics.foreground_labels(fixed_labels)
    dice = metrics.dice_per_label(fixed_labels, warped, values)
    hd95 = [metrics.hausdorff(fixed_labels == v, warped == v, geometry.spacing, 95)
            if (warped == v).any() else np.nan for v in values]
    out = {"dsc": float(np.nanmean(dice)),
           "dsc_tissue": float(np.nanmean([d for v, d in zip(values, dice, strict=True)
                                           if v in TISSUE])),
           "dsc_subcortical": float(np.nanmean([d for v, d in zip(values, dice, strict=True)
                                                if v not in TISSUE])),
           "hd95": float(np.nanmean(hd95)),
           "tre": metrics.centroid_tre(fixed_labels, warped, geometry.spacing, values),
           "folding": folding_percent(jacobian_determinant_mm(displacement, geometry))}
    if pair["truth"] is not None:
        error = np.linalg.norm(displacement - pair["truth"], axis=0)
        out["dense_tre"] = float(error[fixed_labels > 0].mean())
    return out


def run(args: argparse.Namespace) -> None:
    set_threads()
    out = OUT / f"{args.kind}.jsonl"
    OUT.mkdir(exist_ok=True)
    done = set()
    if out.exists():
        done = {(r["pair"], r["method"]) for r in map(json.loads, out.read_text().splitlines())}
    pairs = {"inter": lambda: inter_pairs(args.pairs), "same": lambda: same_pairs(args.pairs),
             "heads": lambda: head_pairs(args.pairs, 1.0),
             "heads-2mm": lambda: head_pairs(args.pairs, 2.0)}[args.kind]()
    methods = args.methods.split(",")
    ddmr_runner = Ddmr() if any(m in DDMR for m in methods) else None
    for pair in pairs:
        for method in methods:
            if (pair["id"], method) in done:
                continue
            row = {"pair": pair["id"], "method": method, "load_before": os.getloadavg()[0],
                   **({"split": pair["split"]} if "split" in pair else {})}
            try:
                displacement, seconds, details = run_method(method, pair, ddmr_runner)
                row.update(seconds=seconds, **score(pair, displacement), details=details)
            except Exception as error:  # a finding: record why
                row["error"] = f"{type(error).__name__}: {error}"
            row["load_after"] = os.getloadavg()[0]
            with open(out, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(pair["id"], method, {k: row.get(k) for k in ("dsc", "hd95", "seconds",
                                                               "error")}, flush=True)


# -- whole processes ---------------------------------------------------------------------------

SYN_PROCESS = """
import sys, ants
f, m = ants.image_read(sys.argv[1]), ants.image_read(sys.argv[2])
r = ants.registration(f, m, type_of_transform="SyN")
ants.image_write(ants.apply_transforms(f, m, r["fwdtransforms"]), sys.argv[3])
"""


def process(args: argparse.Namespace) -> None:
    """Whole processes on the test pairs: ``ddmr register`` (default, the shipped model's
    start, --fast) and a Python process running antspyx SyN and writing its warped image;
    medians."""
    from ddmr.data.cohort import cohort_split, sample_cohort_dir

    root = sample_cohort_dir() / "images"
    test = cohort_split()["test"]
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS),
               ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(THREADS))
    commands = {"ddmr": [], "ddmr-network": ["--model", "brain-t1-cpu"],
                "ddmr-fast": ["--fast"]}
    times: dict[str, list[float]] = {name: [] for name in [*commands, "syn"]}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for fixed, moving in ((test[0], test[1]), (test[1], test[0])):
                f, m = root / f"{fixed}.nii.gz", root / f"{moving}.nii.gz"
                for name, extra in commands.items():
                    target = Path(folder) / f"{name}-{repeat}-{fixed}"
                    start = time.perf_counter()
                    subprocess.run(["ddmr", "register", "--fixed", str(f), "--moving", str(m),
                                    "-o", str(target), "--no-qc", *extra], check=True,
                                   env=env, capture_output=True)
                    times[name].append(time.perf_counter() - start)
                start = time.perf_counter()
                subprocess.run([sys.executable, "-c", SYN_PROCESS, str(f), str(m),
                                str(Path(folder) / f"syn-{repeat}-{fixed}.nii.gz")],
                               check=True, env=env, capture_output=True)
                times["syn"].append(time.perf_counter() - start)
    syn = float(np.median(times["syn"]))
    for name, values in times.items():
        median = float(np.median(values))
        print(f"{name:12s} whole process median {median:6.2f} s over {len(values)} runs "
              f"(min {min(values):.2f}); SyN / it = {syn / median:.2f}x")


# -- tables ---------------------------------------------------------------------------------


def table(args: argparse.Namespace) -> None:
    import pandas as pd

    rows = [json.loads(line) for line in (OUT / f"{args.kind}.jsonl").read_text().splitlines()]
    if args.split != "all":  # rows that say their split (the heads kinds)
        rows = [r for r in rows if r.get("split", args.split) == args.split]
    frame = pd.DataFrame([r for r in rows if "error" not in r])
    errors = [r for r in rows if "error" in r]
    columns = ["dsc", "dsc_tissue", "dsc_subcortical", "hd95", "tre", "folding", "seconds"]
    if "dense_tre" in frame:
        columns.insert(5, "dense_tre")
    summary = frame.groupby("method")[columns].agg(args.statistic)
    summary["pairs"] = frame.groupby("method").size()
    syn = summary.loc["syn", "seconds"] if "syn" in summary.index else np.nan
    summary["x SyN time"] = syn / summary["seconds"]
    both = frame.pivot_table(index="pair", columns="method", values="dsc")
    for peer, name in (("syn", "SyN"), ("greedy", "greedy")):
        if peer in summary.index:  # paired with the peer on the pairs both have
            difference = both.sub(both[peer], axis=0)
            summary[f"dDSC vs {name}"] = difference.median()
            summary[f"better than {name}"] = [
                f"{int((difference[m] > 0).sum())}/{int(difference[m].notna().sum())}"
                for m in summary.index]
    summary["load"] = frame.groupby("method")["load_before"].median()
    order = [m for m in METHODS if m in summary.index]
    print(f"{args.kind}, {args.split} pairs: {args.statistic}s over pairs "
          f"({frame['pair'].nunique()} "
          "pairs; dDSC: median of the per-pair difference to the peer; load: 1-minute load "
          "average before each run)\n")
    print(summary.loc[order].to_markdown(floatfmt=".3f"))
    for row in errors:
        print(f"error: {row['pair']} {row['method']}: {row['error']}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    shown = [m for m in order if m != "none"]  # far below: in the title, not on the axis
    ours = sorted((m for m in shown if m.startswith("ddmr")),
                  key=lambda m: summary.loc[m, "seconds"])
    axis.plot([summary.loc[m, "seconds"] for m in ours], [summary.loc[m, "dsc"] for m in ours],
              "-", color="tab:red", alpha=0.4, label="ddmr (network and engine budgets)")
    for k, method in enumerate(shown):
        seconds, dsc = summary.loc[method, "seconds"], summary.loc[method, "dsc"]
        mine = method.startswith("ddmr")
        axis.scatter(seconds, dsc, marker="o" if mine else "s", s=40,
                     color="tab:red" if mine else "tab:blue")
        axis.annotate(method, (seconds, dsc), fontsize=8, textcoords="offset points",
                      xytext=(5, 6 if k % 2 else -11))
    axis.set_xscale("log")
    axis.set_xlabel(f"seconds per pair ({args.statistic}, registration call, 2 threads)")
    axis.set_ylabel(f"DSC ({args.statistic} over pairs)")
    none = summary.loc["none", "dsc"] if "none" in summary.index else float("nan")
    axis.set_title(f"DSC against time, {args.kind} pairs ({frame['pair'].nunique()} pairs; "
                   f"no registration: DSC {none:.2f})", fontsize=10)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    name = f"pareto-{args.kind}" + ("" if args.split == "all" else f"-{args.split}")
    figure.savefig(OUT / f"{name}.png", dpi=110)
    print(f"\nplot: {OUT / f'{name}.png'}")


def write_same(args: argparse.Namespace) -> None:
    """The first same-subject 1 mm pair as files (fixed, moving and their labels), for
    measuring whole ``ddmr register`` processes on it (memory: RESULTS.md)."""
    from ddmr.io.images import save_image, save_labels

    pair = same_pairs("test")[0]
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    for side in ("fixed", "moving"):
        save_image(folder / f"{side}.nii.gz", pair[side][0], pair[side][1])
        save_labels(folder / f"{side}-seg.nii.gz", pair[f"{side}_labels"], pair[side][1])
    print(f"{pair['id']} -> {folder}/{{fixed,moving}}{{,-seg}}.nii.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run")
    run_parser.add_argument("--kind", choices=KINDS, default="inter")
    run_parser.add_argument("--pairs", choices=("test", "all"), default="test")
    run_parser.add_argument("--methods", default=",".join(METHODS))
    process_parser = sub.add_parser("process")
    process_parser.add_argument("--repeats", type=int, default=2)
    table_parser = sub.add_parser("table")
    table_parser.add_argument("--kind", choices=KINDS, default="inter")
    table_parser.add_argument("--split", choices=("train", "test", "all"), default="all",
                              help="only the pairs of this split (kinds whose rows say it)")
    table_parser.add_argument("--statistic", choices=("median", "mean"), default="median")
    write_parser = sub.add_parser("write-same")
    write_parser.add_argument("folder")
    args = parser.parse_args()
    {"run": run, "process": process, "table": table, "write-same": write_same}[
        args.command](args)


if __name__ == "__main__":
    main()
