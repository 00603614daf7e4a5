"""The engine's schedule (iterations per level) against accuracy and time, on the training
and test pairs of ``bench_speed.py`` (issue 28: fewer iterations to the same objective).

Each variant is ``ddmr.register`` in-process with ``model=False`` and an
:class:`~ddmr.registration.settings.EngineSettings` whose iterations per level are the
variant's (``100,50,10`` is the default; ``200,200,10`` was, before 2026-12-07); a variant
written ``network+100,50,10`` starts the engine from the shipped model's field
(:data:`SHIPPED`, issue 30) instead of the affine part alone, ``model=ARM+0,50,10`` from the
field of ``bench_training.py``'s model of that arm (``benchmarks/training/models``), and
``window=5+100,50,10``
(also ``fluid=``, ``diffusion=``, ``step=``, ``finest-fluid=``, ``finest-diffusion=``
(``none``: as at the other levels): :data:`SETTINGS`) changes one engine setting (issue 29;
a variant is relative to the defaults of its day: rows made before the tenth session's
default, 2026-12-08, ran window 9 and no finest-level sigmas, which
``window=9+finest-fluid=none+finest-diffusion=none+...`` runs again);
``tissue=W+100,50,10`` guides the registration (``guide``, weight W in the engine) with
each image's own three intensity classes inside its foreground (:func:`intensity_classes`:
no labels from outside; issue 29). Rows are scored as
``bench_peers.score`` scores (tissue and subcortical DSC apart, HD95). Settings are chosen
on ``train`` (pairs of the cohort's training people) and reported on ``test``. Rows go to
``OUT/rows.jsonl`` (resumable)::

    python benchmarks/bench_schedule.py run --kind 1mm --variants 200,200,10:100,50,3
    python benchmarks/bench_schedule.py table --out benchmarks/schedule
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_peers
from bench_affine import _pairs, split_means

#: the shipped model a ``network+`` variant starts from
SHIPPED = "brain-t1-cpu"
#: a variant's ``name=value`` options -> the :class:`EngineSettings` fields they set
SETTINGS = {"window": "window", "fluid": "fluid_sigma", "diffusion": "diffusion_sigma",
            "step": "step", "finest-fluid": "finest_fluid_sigma",
            "finest-diffusion": "finest_diffusion_sigma"}


def intensity_classes(array: np.ndarray, mask: np.ndarray, k: int = 3) -> np.ndarray:
    """(I, J, K) uint8: the voxels of ``mask`` labelled 1..k by a k-means of their
    intensities (on a regular subsample of at most ~200 000; centres started at evenly
    spaced percentiles, 30 Lloyd steps), darkest first; 0 outside."""
    values = array[mask].astype(np.float64)
    sample = values[:: max(1, values.size // 200_000)]
    centres = np.percentile(sample, np.linspace(100 / (k + 1), 100 * k / (k + 1), k))
    for _ in range(30):
        nearest = np.argmin(np.abs(sample[:, None] - centres[None]), axis=1)
        centres = np.array([sample[nearest == i].mean() if (nearest == i).any() else c
                            for i, c in enumerate(centres)])
    out = np.zeros(array.shape, np.uint8)
    out[mask] = np.argmin(np.abs(values[:, None] - centres[None]), axis=1) + 1
    return out


def _row(pair: dict, variant: str) -> dict:
    import ddmr
    from ddmr.io.images import load_image
    from ddmr.registration.moments import foreground_mask
    from ddmr.registration.settings import EngineSettings

    *options, steps = variant.split("+")
    settings = {"iterations": tuple(int(n) for n in steps.split(","))}
    guidance: dict = {}
    model = SHIPPED if "network" in options else False
    for option in options:
        name, _, value = option.partition("=")
        if name == "tissue":
            images = [load_image(pair[side]) for side in ("fixed", "moving")]
            labels = [(intensity_classes(a, foreground_mask(a)), g) for a, g in images]
            guidance = {"fixed": images[0], "moving": images[1], "fixed_labels": labels[0],
                        "moving_labels": labels[1], "guide": (1, 2, 3),
                        "guide_weight": float(value)}
        elif name == "model":
            model = str(Path(__file__).resolve().parent / "training" / "models"
                        / f"{value}.safetensors")
        elif name != "network":
            field = SETTINGS[name]
            settings[field] = None if value == "none" else (int if field == "window"
                                                             else float)(value)
    started = time.perf_counter()
    result = ddmr.register(**{"fixed": pair["fixed"], "moving": pair["moving"], **guidance},
                           model=model,
                           engine=EngineSettings(**settings))
    seconds = time.perf_counter() - started
    scored = _score(pair, result.displacement_mm)
    engine = result.summary["engine"]
    return {"pair": pair["id"], "split": pair["split"], "variant": variant, **scored,
            "seconds": round(seconds, 3), "engine_s": engine["seconds"],
            "steps": [level["steps"] for level in engine["levels"]],
            "started_from": engine["started_from"],
            "load": os.getloadavg()[0]}


def _score(pair: dict, displacement) -> dict:
    from ddmr.io.images import load_image, load_labels

    sides = {"truth": None}
    for side in ("fixed", "moving"):
        sides[side] = load_image(pair[side])
        sides[f"{side}_labels"] = load_labels(pair[f"{side}_labels"])[0]
    return bench_peers.score(sides, displacement)


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / "rows.jsonl"
    done = {(r["kind"], r["pair"], r["variant"]) for r in map(
        json.loads, rows_file.read_text().splitlines())} if rows_file.is_file() else set()
    for pair in _pairs(args.kind):
        if args.split != "all" and pair["split"] != args.split:
            continue
        for variant in args.variants.split(":"):
            if (args.kind, pair["id"], variant) in done:
                continue
            row = {"kind": args.kind, **_row(pair, variant)}
            print(json.dumps(row), flush=True)
            with rows_file.open("a") as handle:
                handle.write(json.dumps(row) + "\n")


def table(args: argparse.Namespace) -> None:
    _, summary = split_means(args.out, ["dsc", "dsc_tissue", "dsc_subcortical", "hd95",
                                        "folding", "seconds", "engine_s"])
    print(summary.to_markdown(index=False, floatfmt=".4f"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    go = commands.add_parser("run")
    go.add_argument("--kind", choices=("2mm", "1mm"), required=True)
    go.add_argument("--split", choices=("train", "test", "all"), default="train")
    go.add_argument("--variants", default="100,50,10",
                    help="iterations per level, variants separated by ':'")
    go.add_argument("--out", default="benchmarks/schedule")
    show = commands.add_parser("table")
    show.add_argument("--out", default="benchmarks/schedule")
    args = parser.parse_args()
    {"run": run, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
