"""The affine part alone, between people (issue 29): DDMR's world affine stage with each
candidate setting, scored as ``bench_peers.py`` scores a whole registration, on the
training pairs (to choose) and the test pairs (to report).

    python benchmarks/bench_affine.py run [--kind 2mm|1mm] [--variants ncc,lncc5,...] [--out DIR]
    python benchmarks/bench_affine.py table [--out DIR]

Pairs (:mod:`speed_pairs`, ``all``): ``2mm`` every ordered pair of the bundled cohort's six
skull-stripped heads; ``1mm`` every ordered pair of the four whole heads. A pair is
``train`` when neither person is one of the cohort's test subjects (the cohort's train and
validation people), ``test`` otherwise: settings are chosen on ``train`` alone.

Variants (:data:`VARIANTS`): the affine stage's similarity per pyramid level (8 mm, 4 mm),
``ncc`` the global NCC, ``lncc<w>`` the engine's local squared NCC over ``w^3`` voxels;
``-reverse`` (:data:`REVERSE`): a result more anisotropic than 1.25 is fitted the other way
round too (``AffineSettings.reverse_anisotropy``).
Rows (one per pair and variant: DSC over all labels, tissue and subcortical apart, HD95,
seconds of the affine stage) go to ``benchmarks/affine/rows.jsonl``; a rerun skips rows
already there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

OUT = Path(__file__).resolve().parent / "affine"

#: name -> (similarity per level, window)
VARIANTS = {"ncc": (("ncc", "ncc"), 5), "lncc3": (("ncc", "lncc"), 3),
            "lncc5": (("ncc", "lncc"), 5), "lncc9": (("ncc", "lncc"), 9),
            "lncc5-both": (("lncc", "lncc"), 5)}
#: variant -> ``reverse_anisotropy`` (default: never, as before 2026-12-07)
REVERSE = {"lncc3-reverse": 1.25}


def _pairs(kind: str) -> list[dict]:
    import speed_pairs

    return [{**pair, "split": speed_pairs.split_of(pair["id"])}
            for pair in speed_pairs.pairs(kind, "all")]


def _load(pair: dict) -> dict:
    from ddmr.io.images import load_image, load_labels
    from ddmr.spatial.resample import resample_to

    fixed, fixed_geometry = load_image(pair["fixed"])
    moving, moving_geometry = load_image(pair["moving"])
    labels = []
    for key, geometry in (("fixed_labels", fixed_geometry), ("moving_labels", moving_geometry)):
        values, label_geometry = load_labels(pair[key])
        if not label_geometry.isclose(geometry):
            values = resample_to(values, label_geometry, geometry, order=0)
        labels.append(values)
    return {"id": pair["id"], "fixed": (fixed, fixed_geometry),
            "moving": (moving, moving_geometry), "fixed_labels": labels[0],
            "moving_labels": labels[1], "truth": None}


def _displacement(point_map: np.ndarray, geometry) -> np.ndarray:
    """``P(p) - p`` (3, *shape) RAS mm at the fixed grid's points."""
    from ddmr.spatial.grid import affine_volume

    return affine_volume(point_map @ geometry.affine - geometry.affine, geometry.shape).numpy()


def run(args: argparse.Namespace) -> None:
    import bench_peers
    from ddmr.registration.affine import AffineSettings, world_affine
    from ddmr.registration.moments import foreground_mask, intensity_scale

    bench_peers.set_threads()
    out = Path(args.out)
    out.mkdir(exist_ok=True, parents=True)
    rows_file = out / "rows.jsonl"
    done = set()
    if rows_file.exists():
        done = {(r["kind"], r["pair"], r["variant"])
                for r in map(json.loads, rows_file.read_text().splitlines())}
    variants = args.variants.split(",")
    for pair in _pairs(args.kind):
        if all((args.kind, pair["id"], v) in done for v in variants):
            continue
        data = _load(pair)
        (fixed, fixed_geometry), (moving, moving_geometry) = data["fixed"], data["moving"]
        masks = (foreground_mask(fixed), foreground_mask(moving))
        scales = (intensity_scale(fixed, masks[0]), intensity_scale(moving, masks[1]))
        for variant in variants:
            if (args.kind, pair["id"], variant) in done:
                continue
            similarities, window = VARIANTS[variant.split("-reverse")[0]]
            settings = AffineSettings(similarities=similarities, window=window,
                                      reverse_anisotropy=REVERSE.get(variant, math.inf))
            started = time.perf_counter()
            result = world_affine(fixed, fixed_geometry, moving, moving_geometry, settings,
                                  masks=masks, scales=scales)
            seconds = time.perf_counter() - started
            scores = bench_peers.score(data, _displacement(result.point_map, fixed_geometry))
            row = {"kind": args.kind, "pair": pair["id"], "split": pair["split"],
                   "variant": variant, "seconds": seconds, "start": result.start,
                   "reversed": result.reversed, "reverse_tried": result.reverse_tried,
                   **scores}
            print(json.dumps(row), flush=True)
            with rows_file.open("a") as handle:
                handle.write(json.dumps(row) + "\n")


def split_means(out: Path, columns: list[str]):
    """The rows of ``out/rows.jsonl`` (a DataFrame) and the means of ``columns`` per kind,
    split and variant, with the number of pairs (a DataFrame): the tables of this bench
    and ``bench_schedule.py``."""
    import pandas as pd

    rows = pd.DataFrame([json.loads(line) for line in
                         (Path(out) / "rows.jsonl").read_text().splitlines()])
    summary = rows.groupby(["kind", "split", "variant"])[columns].mean().reset_index()
    summary.insert(3, "pairs", rows.groupby(["kind", "split", "variant"]).size().values)
    return rows, summary


def table(args: argparse.Namespace) -> None:
    rows, summary = split_means(args.out, ["dsc", "dsc_tissue", "dsc_subcortical", "hd95",
                                           "seconds"])
    print(summary.to_markdown(index=False, floatfmt=".3f"))
    worst = rows.groupby(["kind", "split", "variant"])["dsc"].min().rename("worst pair dsc")
    print()
    print(worst.reset_index().to_markdown(index=False, floatfmt=".3f"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run")
    run_parser.add_argument("--kind", choices=("2mm", "1mm"), default="2mm")
    run_parser.add_argument("--variants", default=",".join(VARIANTS))
    table_parser = commands.add_parser("table")
    for command in (run_parser, table_parser):
        command.add_argument("--out", default=str(OUT), help="folder of rows.jsonl")
    args = parser.parse_args()
    {"run": run, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
