"""Label guidance and partial fields of view (issue 32): DDMR without and with ``guide``
beside greedy and ANTs SyN (which get no labels), guided by some labels and scored on
others.

    python benchmarks/bench_guided.py run --kind ct|brain [--methods ddmr,ddmr-guided,greedy,syn]
    python benchmarks/bench_guided.py table --kind ct|brain

``ddmr-guided@W`` (any W) runs the guided variant with the engine's guidance weight W (a
curve; ``ddmr-guided`` uses :data:`ddmr.registration.guidance.ENGINE_WEIGHT`).

Pairs:

``ct``
    the two bundled CTs of two patients, both directions (``totalseg-abdomen-pelvis``, 3 mm,
    and ``totalseg-upper-abdomen``, a 40 mm slab; their headers a metre apart), and two
    partial fields of view cut from the abdomen-pelvis CT (its upper half, and a 100 mm
    slab through the liver, each with its origin moved 500 mm along z) against the other
    patient's slab, both directions. Guided by liver, spleen and kidneys (those both maps
    show); held out: gallbladder, pancreas, aorta, inferior vena cava, portal vein,
    vertebrae T11-S1.
``brain``
    the bundled cohort's 30 ordered pairs of different people (2 mm). Guided by the tissue
    classes (CSF, grey and white matter); held out: the subcortical structures.

Scores (medians over pairs; a score with no label to score, where a method left no shared
label where the moving image has data, counts 0), on the fixed grid where the moving
image has data
(:func:`ddmr.registration.native.seen_by_moving`, the rule of DDMR's own scores): DSC of
the liver (CT), of the guided labels and of the held-out ones (means over the labels both
maps show there), folding (%), and each method's seconds (its registration call in this
process). Rows go to ``benchmarks/guided/KIND.jsonl``; a rerun skips rows done.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_peers  # noqa: E402

OUT = HERE / "guided"
METHODS = ("ddmr", "ddmr-guided", "greedy", "syn")
LIVER = 5
CT_GUIDE = (5, 1, 2, 3)  # liver, spleen, kidneys
CT_HELD_OUT = (4, 7, 52, 63, 64, 25, 26, 27, 28, 29, 30, 31, 32, 33)
BRAIN_GUIDE = bench_peers.TISSUE


def _ct_side(name: str):
    from ddmr.data.cohort import sample_ct_dir
    from ddmr.io.images import load_image, load_labels

    root = sample_ct_dir()
    image, geometry = load_image(root / "images" / f"{name}.nii.gz")
    labels, _ = load_labels(root / "labels" / f"{name}.nii.gz")
    return image, labels, geometry


def _cut(side, start_mm: float, stop_mm: float, shift_mm: float):
    """The slices of an RAS-aligned scan between two S positions (mm above its first
    slice), its origin moved ``shift_mm`` along S."""
    from ddmr.spatial.grid import Geometry

    image, labels, geometry = side
    spacing = geometry.spacing[2]
    a, b = round(start_mm / spacing), round(stop_mm / spacing)
    affine = geometry.affine.copy()
    affine[:3, 3] = geometry.index_to_world(np.array([[0.0, 0.0, a]]))[0]
    affine[2, 3] += shift_mm
    return (np.ascontiguousarray(image[:, :, a:b]), np.ascontiguousarray(labels[:, :, a:b]),
            Geometry(affine, image[:, :, a:b].shape))


def ct_pairs() -> list[dict]:
    pelvis = _ct_side("totalseg-abdomen-pelvis")
    upper = _ct_side("totalseg-upper-abdomen")
    liver_slices = np.nonzero((pelvis[1] == LIVER).any(axis=(0, 1)))[0]
    centre = float(liver_slices.mean()) * pelvis[2].spacing[2]
    height = pelvis[1].shape[2] * pelvis[2].spacing[2]
    sides = {"abdomen-pelvis": pelvis, "upper-abdomen": upper,
             "pelvis-upper-half": _cut(pelvis, height / 2, height, 500.0),
             "pelvis-liver-100mm": _cut(pelvis, centre - 50.0, centre + 50.0, 500.0)}
    order = [("abdomen-pelvis", "upper-abdomen"), ("upper-abdomen", "abdomen-pelvis")]
    for cut in ("pelvis-upper-half", "pelvis-liver-100mm"):
        order += [(cut, "upper-abdomen"), ("upper-abdomen", cut)]
    return [_pair(f, m, sides[f], sides[m]) for f, m in order]


def brain_pairs() -> list[dict]:
    from ddmr.data.cohort import cohort_split, sample_cohort_dir
    from ddmr.io.images import load_image, load_labels

    root = sample_cohort_dir()
    people = sorted(itertools.chain.from_iterable(cohort_split().values()))

    def side(name: str):
        image, geometry = load_image(root / "images" / f"{name}.nii.gz")
        labels, _ = load_labels(root / "labels" / f"{name}.nii.gz")
        return image, labels, geometry

    sides = {name: side(name) for name in people}
    return [_pair(f, m, sides[f], sides[m]) for f, m in itertools.permutations(people, 2)]


def _pair(fixed: str, moving: str, f, m) -> dict:
    return {"id": f"{fixed}<-{moving}", "fixed": (f[0], f[2]), "moving": (m[0], m[2]),
            "fixed_labels": f[1], "moving_labels": m[1]}


def _guide(kind: str, pair: dict) -> tuple[int, ...]:
    wanted = CT_GUIDE if kind == "ct" else BRAIN_GUIDE
    both = set(np.unique(pair["fixed_labels"])) & set(np.unique(pair["moving_labels"]))
    return tuple(int(v) for v in wanted if v in both)


def score(kind: str, pair: dict, displacement: np.ndarray, guide: tuple[int, ...]) -> dict:
    """Scores on the fixed grid where the moving image has data (module docstring)."""
    from ddmr import metrics
    from ddmr.baselines import peers
    from ddmr.registration.native import seen_by_moving
    from ddmr.spatial.field import folding_percent, jacobian_determinant_mm

    geometry = pair["fixed"][1]
    seen = seen_by_moving(displacement, geometry, pair["moving"][1])
    fixed_labels = np.where(seen, pair["fixed_labels"], 0)
    warped = peers.warp((pair["moving_labels"], pair["moving"][1]), displacement, geometry,
                        labels=True)
    shown = set(np.unique(fixed_labels)) & set(np.unique(pair["moving_labels"])) - {0}
    held_out = [v for v in (CT_HELD_OUT if kind == "ct" else sorted(shown))
                if v in shown and v not in guide]
    values = sorted(shown)
    dice = dict(zip(values, metrics.dice_per_label(fixed_labels, warped, values), strict=True))

    def mean(labels) -> float | None:
        chosen = [dice[v] for v in labels if v in dice]
        return float(np.mean(chosen)) if chosen else None

    return {"dsc_liver": dice.get(LIVER) if kind == "ct" else None,
            "dsc_guided": mean(guide), "dsc_held_out": mean(held_out),
            "held_out": [int(v) for v in held_out], "dsc_shared": mean(values),
            "seen_percent": float(100.0 * seen[pair["fixed_labels"] > 0].mean()),
            "folding": folding_percent(jacobian_determinant_mm(displacement, geometry))}


def _run_method(name: str, kind: str, pair: dict) -> tuple[np.ndarray, float, dict]:
    import time

    import ddmr
    from ddmr.baselines import peers

    if name.startswith("ddmr"):
        # ddmr-guided@W: the engine's guidance weight W (a curve; default ENGINE_WEIGHT)
        weight = float(name.split("@")[1]) if "@" in name else None
        guide = _guide(kind, pair) if name.startswith("ddmr-guided") else None
        started = time.perf_counter()
        result = ddmr.register(pair["fixed"], pair["moving"],
                               (pair["fixed_labels"], pair["fixed"][1]),
                               (pair["moving_labels"], pair["moving"][1]), guide=guide,
                               guide_weight=weight)
        seconds = time.perf_counter() - started
        world = result.summary["affine_prealignment"]["world_affine"] or {}
        return result.displacement_mm, seconds, {
            "qc": result.qc.passed, "qc_failed": [c.name for c in result.qc.failed],
            "start": world.get("start"), "guide": guide}
    result = peers.run_peer(name, pair["fixed"], pair["moving"],
                            **({"threads": bench_peers.THREADS} if name == "greedy" else {}))
    return result.displacement_mm, result.seconds, {}


def run(args: argparse.Namespace) -> None:
    bench_peers.set_threads()
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{args.kind}.jsonl"
    done = set()
    if path.exists():
        done = {(r["pair"], r["method"]) for r in map(json.loads, path.read_text().splitlines())}
    pairs = ct_pairs() if args.kind == "ct" else brain_pairs()
    for pair in pairs:
        for method in args.methods.split(","):
            if (pair["id"], method) in done:
                continue
            try:
                displacement, seconds, details = _run_method(method, args.kind, pair)
                row = {"pair": pair["id"], "method": method, "seconds": round(seconds, 2),
                       **score(args.kind, pair, displacement, _guide(args.kind, pair)),
                       **details}
            except Exception as error:  # a peer that fails is a result too
                row = {"pair": pair["id"], "method": method, "error": str(error)[:300]}
            print(json.dumps(row), flush=True)
            with path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")


def table(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in (OUT / f"{args.kind}.jsonl").read_text().splitlines()]
    keys = ["dsc_liver", "dsc_guided", "dsc_held_out", "dsc_shared", "folding", "seconds"]
    if args.kind != "ct":
        keys.remove("dsc_liver")
    print("| pair | method | " + " | ".join(keys) + " | QC |")
    print("|---|---|" + "---|" * (len(keys) + 1))
    for row in rows:
        cells = ["error" if "error" in row else
                 "-" if row.get(k) is None else f"{row[k]:.3f}" for k in keys]
        qc = {True: "pass", False: "FAIL " + ",".join(row.get("qc_failed", []))}.get(
            row.get("qc"), "")
        if args.kind == "ct" or args.all:
            print(f"| {row['pair']} | {row['method']} | " + " | ".join(cells) + f" | {qc} |")
    print("\nMedians over pairs:\n")
    print("| method | " + " | ".join(keys) + " | QC pass |")
    print("|---|" + "---|" * (len(keys) + 1))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method and "error" not in r]
        cells = []
        for k in keys:  # a label not shown where the moving image has data scores 0
            values = [0.0 if r.get(k) is None else r[k] for r in mine]
            cells.append(f"{np.median(values):.3f}" if values else "-")
        passed = sum(r.get("qc") is True for r in mine)
        qc = f"{passed}/{len(mine)}" if method.startswith("ddmr") else ""
        print(f"| {method} | " + " | ".join(cells) + f" | {qc} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run")
    run_parser.add_argument("--kind", choices=("ct", "brain"), required=True)
    run_parser.add_argument("--methods", default=",".join(METHODS))
    run_parser.set_defaults(func=run)
    table_parser = commands.add_parser("table")
    table_parser.add_argument("--kind", choices=("ct", "brain"), required=True)
    table_parser.add_argument("--all", action="store_true", help="every pair (brain)")
    table_parser.set_defaults(func=table)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
