"""Calibrate the QC verdict (issue 33): every real pair the benchmarks hold must pass, and
every wrong pair must fail.

Real pairs (``ddmr.register`` with its defaults; the 2 mm pairs also with the shipped
model, ``network``):

* ``inter-2mm``: the bundled cohort's 30 ordered pairs of different people;
* ``headers-2mm``: its two test pairs with the moving image stored another way (axes
  permuted and flipped with the header, the origin moved 300 mm) and turned 20 degrees in
  world space;
* ``ct``: the two bundled abdominal CTs of different people, both ways (a 40 mm slab of
  the upper abdomen against an abdomen and pelvis);
* ``ct-same``: each bundled CT against itself deformed by the augmentation layer;
* ``same-1mm``: the two same-subject 1 mm whole-head pairs of ``bench_peers.py``;
* ``heads-1mm``: the 12 ordered pairs of 1 mm whole heads of ``bench_speed.py``.

Wrong pairs (defaults and ``network``): a brain-sized crop of the abdominal CT
against a brain and the brain against it; the whole CT against the brain and back; uniform
noise against the brain; the left half against the right half and the bottom against the
top (no shared voxels). Valid pairs that must pass: the brain against its own copy
flipped left to right, and a brain with its lower half zeroed against the whole brain (a
partial view; the answer is the identity).

    python benchmarks/bench_qc.py run [--sets inter-2mm,ct,...] [--out FILE]   # resumable
    python benchmarks/bench_qc.py table [--out FILE]

Rows go to ``benchmarks/qc/calibration.jsonl`` (one per registration: its QC measures and
verdict); ``table`` prints the pass rates and each measure's range on real and on wrong
pairs beside its limit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
OUT = HERE / "qc" / "calibration.jsonl"
WRONG_DIR = Path.home() / ".cache" / "ddmr-bench" / "qc-wrong"
SETS = ("wrong", "inter-2mm", "headers-2mm", "ct", "ct-same", "same-1mm", "heads-1mm")
#: ``default``: ``ddmr.register``'s own (no network since 2026-12-07; in the rows of
#: ``calibration.jsonl``, from before: the shipped network, and ``none`` no network);
#: ``network``: the shipped model named
MODELS = {"default": None, "network": "brain-t1-cpu"}


def _ct_files() -> list[Path]:
    from ddmr.data.cohort import sample_ct_dir

    return sorted((sample_ct_dir() / "images").glob("*.nii.gz"))


def wrong_pairs() -> list[dict]:
    """``tests/wrong_pairs.py``'s pairs, made once into :data:`WRONG_DIR`."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from wrong_pairs import PAIRS, wrong_pair_files

    files = wrong_pair_files(WRONG_DIR)
    return [{"id": name, "fixed": files[f], "moving": files[m], "real": valid}
            for name, f, m, valid in PAIRS]


def _turned(path: Path, seed: int, degrees: float):
    """The image stored another way (axes permuted and flipped with the header, origin
    moved 300 mm) and turned by ``degrees`` about a random axis in world space."""
    from ddmr.io.images import load_image
    from ddmr.spatial.grid import Geometry

    array, geometry = load_image(path)
    rng = np.random.default_rng(seed)
    order, flips = rng.permutation(3), rng.random(3) < 0.5
    affine = geometry.affine.copy()
    data = np.transpose(array, order)
    affine[:, :3] = affine[:, order]
    for axis in np.nonzero(flips)[0]:
        data = np.flip(data, axis)
        affine[:3, 3] += affine[:3, axis] * (data.shape[axis] - 1)
        affine[:3, axis] *= -1
    affine[:3, 3] += rng.normal(size=3) / np.sqrt(3) * 300.0
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(degrees)
    turn = np.eye(4)
    turn[:3, :3] = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    return np.ascontiguousarray(data), Geometry(turn @ affine, data.shape)


def _deformed_ct(path: Path, seed: int) -> dict:
    """A same-subject CT pair: the CT against itself deformed by the augmentation layer
    (the paper's bounds), its Hounsfield units kept."""
    import torch

    from ddmr.augment import AugmentationConfig, AugmentationLayer
    from ddmr.io.images import load_image

    image, geometry = load_image(path)
    low, high = float(image.min()), float(np.percentile(image, 99.5))
    unit = np.clip((image - low) / (high - low), 0, 1).astype(np.float32)
    pair = AugmentationLayer(AugmentationConfig(intensity=False))(
        torch.from_numpy(unit)[None, None], None, geometry.spacing,
        generator=torch.Generator().manual_seed(seed))
    moving = pair.moving[0, 0].numpy() * (high - low) + low
    return {"id": f"{path.name.split('.')[0]} deformed (seed {seed})",
            "fixed": (pair.fixed[0, 0].numpy() * (high - low) + low, geometry),
            "moving": (moving, geometry), "real": True}


def real_pairs(name: str) -> list[dict]:
    import itertools

    import speed_pairs

    if name == "inter-2mm":
        return [{**p, "real": True} for p in speed_pairs.pairs("2mm", "all")]
    if name == "heads-1mm":
        return [{**p, "real": True} for p in speed_pairs.pairs("1mm", "all")]
    if name == "headers-2mm":
        out = []
        for pair in speed_pairs.pairs("2mm", "test"):
            for seed, degrees in ((1, 0.0), (5, 20.0)):
                out.append({"id": f"{pair['id']} stored another way, turned {degrees:g} deg",
                            "fixed": pair["fixed"],
                            "moving": _turned(pair["moving"], seed, degrees), "real": True})
        return out
    if name == "ct":
        files = _ct_files()
        return [{"id": f"{f.name.split('.')[0]}<-{m.name.split('.')[0]}", "fixed": f,
                 "moving": m, "real": True} for f, m in itertools.permutations(files, 2)]
    if name == "ct-same":
        return [_deformed_ct(path, seed) for seed, path in enumerate(_ct_files())]
    if name == "same-1mm":
        import bench_peers

        return [{"id": p["id"], "fixed": p["fixed"], "moving": p["moving"], "real": True}
                for p in bench_peers.same_pairs("test")]
    raise SystemExit(f"unknown set {name!r}")


def _done(out: Path) -> set[tuple[str, str, str]]:
    if not out.is_file():
        return set()
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return {(r["set"], r["pair"], r["model"]) for r in rows}


def run(args: argparse.Namespace) -> None:
    import ddmr

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done(out)
    for name in args.sets.split(","):
        pairs = wrong_pairs() if name == "wrong" else real_pairs(name)
        models = ["default", "network"] if name in ("wrong", "inter-2mm", "headers-2mm") \
            else ["default"]
        for pair in pairs:
            for model in models:
                if (name, pair["id"], model) in done:
                    continue
                started = time.perf_counter()
                result = ddmr.register(pair["fixed"], pair["moving"], pair.get("fixed_labels"),
                                       pair.get("moving_labels"), model=MODELS[model])
                qc = result.summary["qc"]
                row = {"set": name, "pair": pair["id"], "model": model, "real": pair["real"],
                       "passed": qc["passed"], "failed": qc["failed"],
                       "measures": qc["measures"],
                       "affine_start": (result.summary["affine_prealignment"]["world_affine"]
                                        or {}).get("start"),
                       "dsc": result.summary["metrics"].get("dsc"),
                       "seconds": round(time.perf_counter() - started, 1)}
                with out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(f"{name:12s} {pair['id']:45s} {model:8s} "
                      f"{'pass' if row['passed'] else 'FAIL ' + ','.join(row['failed'])}",
                      flush=True)


#: measure -> (limit name, lower limit?) as QCLimits states it
MEASURES = {"ncc_after": ("min_similarity", True),
            "foreground_overlap_after": ("min_overlap", True),
            "affine_anisotropy": ("max_anisotropy", False),
            "affine_turn_degrees": ("max_turn_degrees", False),
            "affine_shear": ("max_shear", False),
            "folding_percent": ("max_folding_percent", False),
            "structure": ("min_structure", True),
            "compressed_percent": ("max_compressed_percent", False)}


def table(args: argparse.Namespace) -> None:
    from ddmr.registration.qc import QCLimits

    rows = [json.loads(line) for line in Path(args.out).read_text().splitlines()
            if line.strip()]
    for row in rows:
        m = row["measures"]
        m["structure"] = min(m.get("structure_fixed", 1.0), m.get("structure_moving", 1.0))
    print("| set | model | pairs | real | QC pass |")
    print("|---|---|---|---|---|")
    for key in sorted({(r["set"], r["model"], r["real"]) for r in rows}):
        chosen = [r for r in rows if (r["set"], r["model"], r["real"]) == key]
        passed = sum(r["passed"] for r in chosen)
        print(f"| {key[0]} | {key[1]} | {len(chosen)} | {'real' if key[2] else 'wrong'} "
              f"| {passed}/{len(chosen)} |")
    real = [r for r in rows if r["real"]]
    wrong = [r for r in rows if not r["real"]]
    passed = [r for r in real if r["passed"]]
    limits = QCLimits()
    print("\n| measure | limit | real pairs: min..max | real pairs that pass | wrong pairs |")
    print("|---|---|---|---|---|")
    for measure, (limit, _) in MEASURES.items():
        def span(chosen: list[dict], measure: str = measure) -> str:
            values = [r["measures"].get(measure) for r in chosen]
            values = [v for v in values if v is not None]
            return f"{min(values):.3g}..{max(values):.3g}" if values else "-"
        print(f"| {measure} | {getattr(limits, limit)} | {span(real)} | {span(passed)} "
              f"| {span(wrong)} |")
    print("\nreal pairs that failed:", [(r["set"], r["pair"], r["model"], r["failed"])
                                       for r in real if not r["passed"]] or "none")
    print("wrong pairs that passed:", [(r["set"], r["pair"], r["model"])
                                       for r in wrong if r["passed"]] or "none")
    print("\nwrong pairs, the checks that failed them:")
    for r in wrong:
        print(f"  {r['pair']} ({r['model']}): {', '.join(r['failed'])}")


def main() -> None:
    from bench_peers import set_threads

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run")
    go.add_argument("--sets", default=",".join(SETS))
    show = sub.add_parser("table")
    for command in (go, show):
        command.add_argument("--out", default=str(OUT), help="the rows (JSON lines)")
    args = parser.parse_args()
    set_threads()
    {"run": run, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
