"""Issue 30: the paper's ideas trained and tested between people.

Each *arm* is one ``ddmr train`` run on the bundled cohort (three training heads, one
validation head; :data:`ARMS`), changing one thing against the base arm ``inter``
(UW-NSD, pairs of two different training heads, 48^3, no supervised term):

- ``same``: the paper's same-subject pairs (pairing);
- ``inter-fixed``: SG-NSD, the same terms with fixed weights (uncertainty weighting);
- ``inter-nodice``: BL-NS, no Dice term (segmentation guidance);
- ``inter-3mm`` / ``inter-2mm``: a finer network grid (64^3 at 3 mm, 96^3 at 2 mm; the
  base arm is 48^3 over the 3 mm cohort, about 4 mm);
- ``inter-engine``: a supervised term on the engine's own fields of the training pairs
  (amortised optimisation; ``engine_targets``, weight 0.1 per mm^2);
- ``inter-synth``: half of the training steps on images drawn from the cohort's label
  maps (``synthesis: 0.5``).

Every arm runs for the same number of optimiser steps (600; ``inter-2mm`` 300, for time:
``--steps 300``) and exports its best checkpoint;
the model files are copied to ``benchmarks/training/models/`` (committed: about 1 MB
each), so that evaluation survives the run folders (``runs/study``, git-ignored).
``train`` resumes an arm from its ``last.ckpt``.

Evaluation (``evaluate``) registers every pair of ``bench_affine``'s pairs (``2mm``:
the cohort's skull-stripped heads; ``1mm``: whole heads) with each model alone
(``network``: ``engine=False``) and followed by the default engine (``network+engine``),
and the engine from the affine part alone (arm ``none``), and the shipped model (arm
``shipped``), scored as ``bench_peers`` scores; rows in
``benchmarks/training/rows.jsonl`` (resumable)::

    python benchmarks/bench_training.py train [--arms inter,same] [--steps 600]
    python benchmarks/bench_training.py evaluate --kind 2mm [--arms ...]
    python benchmarks/bench_training.py table
    python benchmarks/bench_training.py curves     # validation curves from the runs' logs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "training"
RUNS = ROOT / "runs" / "study"
SAMPLE = ROOT / "src" / "ddmr" / "data" / "sample" / "brain"
CONFIGS = ROOT / "configs" / "study"

#: prepared cohorts: name -> (grid voxels, spacing mm)
#: the shipped model (arm ``shipped``): 2000 same-subject steps and a supervised term
SHIPPED = "brain-t1-cpu"
COHORTS = {"cohort64": (64, 3.0), "cohort96": (96, 2.0)}

#: arm -> ddmr train options (besides --data, -o, --max-steps, --seed)
ARMS: dict[str, dict] = {
    "inter": {"design": "UW-NSD", "pairing": "inter-subject", "config": "base.yaml"},
    "same": {"design": "UW-NSD", "pairing": "same-subject", "config": "base.yaml"},
    "inter-fixed": {"design": "SG-NSD", "pairing": "inter-subject", "config": "base.yaml"},
    "inter-nodice": {"design": "BL-NS", "pairing": "inter-subject", "config": "base.yaml"},
    "inter-3mm": {"design": "UW-NSD", "pairing": "inter-subject", "config": "3mm.yaml"},
    "inter-2mm": {"design": "UW-NSD", "pairing": "inter-subject", "config": "2mm.yaml",
                  "data": "cohort96"},
    "inter-engine": {"design": "UW-NSD", "pairing": "inter-subject", "config": "engine.yaml",
                     "extra": ["--supervised-weight", "0.1"]},
    "inter-synth": {"design": "UW-NSD", "pairing": "inter-subject", "config": "synth.yaml"},
}


def _cohort(name: str) -> Path:
    """The prepared cohort ``name`` under ``runs/study`` (prepared on first use)."""
    path = RUNS / name
    if not (path / "dataset.h5").is_file():
        size, spacing = COHORTS[name]
        subprocess.run([sys.executable, "-m", "ddmr", "prepare", str(SAMPLE), "-o", str(path),
                        "--size", str(size), "--spacing", str(spacing), "--split-file",
                        str(SAMPLE / "split.json"), "--overwrite"], check=True)
    return path


def train_command(arm: str, steps: int, seed: int) -> list[str]:
    """The ``ddmr train`` command line of ``arm`` (resuming when a checkpoint exists)."""
    spec = ARMS[arm]
    run = RUNS / arm
    command = [sys.executable, "-m", "ddmr", "train", "--design", spec["design"],
               "--data", str(_cohort(spec.get("data", "cohort64"))), "-o", str(run),
               "--config", str(CONFIGS / spec["config"]), "--max-steps", str(steps),
               "--pairing", spec["pairing"], "--seed", str(seed), "--no-progress",
               *spec.get("extra", [])]
    if (run / "checkpoints" / "last.ckpt").is_file():
        command.append("--resume")
    elif run.exists():
        command.append("--overwrite")
    return command


def train(args: argparse.Namespace) -> None:
    (OUT / "models").mkdir(parents=True, exist_ok=True)
    for arm in args.arms.split(","):
        model = OUT / "models" / f"{arm}.safetensors"
        if model.is_file():
            print(f"{arm}: done ({model})", flush=True)
            continue
        command = train_command(arm, args.steps, args.seed)
        print(" ".join(command), flush=True)
        started = time.time()
        subprocess.run(command, check=True)
        shutil.copy(RUNS / arm / "model.safetensors", model)
        shutil.copy(RUNS / arm / "model.json", model.with_suffix(".json"))  # readable card
        print(f"{arm}: {time.time() - started:.0f} s -> {model}", flush=True)


def _row(pair: dict, arm: str, method: str) -> dict:
    import bench_schedule
    import ddmr

    model = {"none": False, "shipped": SHIPPED}.get(
        arm, str(OUT / "models" / f"{arm}.safetensors"))
    started = time.perf_counter()
    result = ddmr.register(pair["fixed"], pair["moving"], model=model,
                           engine=method != "network")
    seconds = time.perf_counter() - started
    return {"pair": pair["id"], "split": pair["split"], "arm": arm, "method": method,
            **bench_schedule._score(pair, result.displacement_mm),
            "seconds": round(seconds, 3), "load": os.getloadavg()[0]}


def evaluate(args: argparse.Namespace) -> None:
    from bench_affine import _pairs

    rows_file = OUT / "rows.jsonl"
    done = {(r["kind"], r["pair"], r["arm"], r["method"]) for r in map(
        json.loads, rows_file.read_text().splitlines())} if rows_file.is_file() else set()
    arms = args.arms.split(",")
    for pair in _pairs(args.kind):
        if args.split != "all" and pair["split"] != args.split:
            continue
        for arm in arms:
            methods = ("engine",) if arm == "none" else ("network", "network+engine")
            for method in methods:
                if (args.kind, pair["id"], arm, method) in done:
                    continue
                row = {"kind": args.kind, **_row(pair, arm, method)}
                print(json.dumps(row), flush=True)
                with rows_file.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")


#: the study's contrasts: (arm expected better, arm it is compared with, what changed)
CONTRASTS = (("inter", "same", "pairs between people"),
             ("inter", "inter-nodice", "segmentation guidance (Dice)"),
             ("inter", "inter-fixed", "uncertainty weighting"),
             ("inter-3mm", "inter", "3 mm grid (64^3) against 48^3"),
             ("inter-2mm", "inter-3mm", "2 mm grid (96^3) against 3 mm"),
             ("inter-engine", "inter", "supervised term on the engine's fields"),
             ("inter-synth", "inter", "label-map synthesis"))


def _rows(split: str):
    import pandas as pd

    rows = pd.DataFrame([json.loads(line) for line in
                         (OUT / "rows.jsonl").read_text().splitlines()])
    return rows[rows["split"] == split]


def _syn(pairs) -> dict:
    """SyN's means on ``pairs`` (2 mm) from ``bench_peers``' rows (same scoring)."""
    rows = [json.loads(line) for line in (HERE / "peers" / "inter.jsonl").read_text()
            .splitlines()]
    syn = [r for r in rows if r["method"] == "syn" and r["pair"] in set(pairs)]
    out = {k: sum(r[k] for r in syn) / len(syn)
           for k in ("dsc", "dsc_tissue", "dsc_subcortical", "hd95")}
    return {**out, "seconds": sorted(r["seconds"] for r in syn)[len(syn) // 2],
            "pairs": len(syn)}


def table(args: argparse.Namespace) -> None:
    from ddmr import stats
    from ddmr.model.file import load_model

    lines = []
    for arm, spec in ARMS.items():
        path = OUT / "models" / f"{arm}.safetensors"
        if path.is_file():
            card = load_model(path).card._fields
            lines.append([arm, spec["design"], spec["pairing"],
                          "x".join(map(str, card["input_size"])),
                          str(card["training"]["steps"]),
                          f"{card['training']['training_hours_total']:.2f}"])
    print("### arms (the exported best checkpoint)\n")
    print(stats.markdown_table(["arm", "design", "pairing", "grid", "step", "hours"], lines))
    rows = _rows(args.split)
    metrics = ["dsc", "dsc_tissue", "dsc_subcortical", "hd95"]
    for kind, group in rows.groupby("kind"):
        # only pairs that every arm and method of this kind has reached (a run stopped
        # part-way leaves the rest out), so that every mean is over the same pairs
        counts = group.groupby("pair").size()
        group = group[group["pair"].isin(counts[counts == counts.max()].index)]
        print(f"\n### {kind}, {args.split} pairs\n")
        summary = group.groupby(["method", "arm"])[metrics].mean()
        summary["seconds (median)"] = group.groupby(["method", "arm"])["seconds"].median()
        summary["pairs"] = group.groupby(["method", "arm"]).size()
        summary = summary.reset_index()
        if kind == "2mm":
            syn = _syn(group["pair"].unique())
            summary.loc[len(summary)] = {"method": "SyN (bench_peers)", "arm": "-",
                                         **{k: syn[k] for k in metrics},
                                         "seconds (median)": syn["seconds"],
                                         "pairs": syn["pairs"]}
        print(summary.to_markdown(index=False, floatfmt=".4f"))
        for method in ("network", "network+engine"):
            chosen = group[group["method"] == method]
            present = set(chosen["arm"])
            contrasts = [c for c in CONTRASTS if c[0] in present and c[1] in present]
            if not contrasts:
                continue
            results = chosen.rename(columns={"method": "kind_of_run", "arm": "method",
                                             "pair": "subject"})
            tests = stats.contrast_tests(results, [stats.Contrast(a, b)
                                                   for a, b, _ in contrasts],
                                         metric="dsc", higher_is_better=True)
            by_pair = chosen.pivot(index="pair", columns="arm", values="dsc")
            lines = []
            for (better, worse, what), test in zip(contrasts, tests.itertuples(), strict=True):
                difference = (by_pair[better] - by_pair[worse]).dropna()
                lines.append([what, f"{better} vs {worse}", f"{difference.median():+.4f}",
                              f"{int((difference > 0).sum())}/{difference.size}",
                              stats.format_p(test.p), stats.format_p(test.p_bh)])
            print(f"\n{method}: DSC contrasts (paired median difference, pairs won; "
                  "one-sided Mann-Whitney U, Benjamini-Hochberg)\n")
            print(stats.markdown_table(["what changed", "arms", "median dDSC", "won", "p",
                                        "p (BH)"], lines))


def curves(args: argparse.Namespace) -> None:
    """Each arm's validation curve (same-subject validation pairs of the validation head:
    Dice, field error, hours) from its run's logs, into ``curves.csv`` and ``curves.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frames = []
    for arm in ARMS:
        logs = sorted((RUNS / arm / "logs").glob("*/metrics.csv"))
        if not logs:
            continue
        log = pd.concat([pd.read_csv(f) for f in logs])
        log = log.dropna(subset=["val/dice"])[["step", "val/dice", "val/field_error_mm",
                                               "time/val_elapsed_h"]]
        frames.append(log.assign(arm=arm))
    table = pd.concat(frames)
    table.to_csv(OUT / "curves.csv", index=False, float_format="%.5g")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, group in table.groupby("arm"):
        axes[0].plot(group["step"], group["val/dice"], label=arm)
        axes[1].plot(group["time/val_elapsed_h"], group["val/dice"], label=arm)
    axes[0].set_xlabel("optimiser step")
    axes[1].set_xlabel("hours on 2 CPU cores (runs side by side with the evaluation)")
    for axis in axes:
        axis.set_ylabel("validation Dice (same-subject pairs)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(OUT / "curves.png", dpi=90)
    print(f"{OUT / 'curves.csv'}, {OUT / 'curves.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    go = commands.add_parser("train")
    go.add_argument("--arms", default=",".join(ARMS))
    go.add_argument("--steps", type=int, default=600)
    go.add_argument("--seed", type=int, default=0)
    score = commands.add_parser("evaluate")
    score.add_argument("--kind", choices=("2mm", "1mm"), required=True)
    score.add_argument("--split", choices=("train", "test", "all"), default="test")
    score.add_argument("--arms", default="none,shipped," + ",".join(ARMS))
    show = commands.add_parser("table")
    show.add_argument("--split", choices=("train", "test"), default="test")
    commands.add_parser("curves")
    args = parser.parse_args()
    {"train": train, "evaluate": evaluate, "table": table, "curves": curves}[args.command](args)


if __name__ == "__main__":
    main()
