"""Network alone, network + per-pair refinement, ANTs SyN: side by side on 128^3 pairs
(issue 11).

    python benchmarks/bench_refine.py [--model NAME|PATH] [--refine 25,50,100,200]
        [--pairs 2] [--size 128] [--baselines syn] [--ants-iterations AFFINE/SYN]
        [--refine-spacing MM] [--similarity ncc|lncc|gncc|mi] [--threads N] [--json OUT]

Pairs: each held-out bundled head (96^3, 2 mm) resampled to ``size``^3 voxels over the
same field of view (1.5 mm at 128), and a copy deformed by the augmentation layer at the
paper's bounds (rotation 10 degrees, translation 30 mm, TPS 6 mm, intensity changes),
with label maps and the exact field. Methods, in one run, on the same pairs:

- ``network``: ``ddmr.register`` with the model (its own affine stage if it has one);
- ``network+refineN``: the same call with ``refine=N`` (refinement on the model card's
  prepared grid, or ``--refine-spacing``);
- ANTs SyN (and SyNCC with ``--baselines syn,syncc``) through
  :func:`ddmr.baselines.ants.register_ants` with ddmr's defaults (affine, then SyN).

Every field (on the pair's grid) is applied by ddmr's own transformer and scored by
:func:`ddmr.evaluate.runner.score_pair`: DSC, centroid TRE (the paper's TRE), dense TRE
against the exact field, HD95, folding. Seconds: for ddmr the registration itself
(``preprocess + predict + refine`` of ``runtime_s``: mapping into the model's space,
affine stage, network, refinement, field to the native grid and warping), for ANTs the
registration plus composing its field. The table gives means over the pairs, and each
method's time and TRE as a fraction of SyN's (the aim: SyN's accuracy at a tenth of
its time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ddmr.augment import AugmentationConfig, AugmentationLayer
from ddmr.data.cohort import cohort_split, sample_cohort
from ddmr.evaluate.pairs import StoredPair
from ddmr.evaluate.runner import score_pair
from ddmr.spatial.grid import Geometry

METRICS = ("dsc", "tre", "dense_tre", "hd95", "folding", "seconds")


def make_pairs(n: int, size: int, seed: int) -> list[tuple[StoredPair, Geometry]]:
    """``n`` pairs from the held-out heads (cycled), resampled to ``size``^3 voxels."""
    subjects = sample_cohort(cohort_split()["test"])
    layer = AugmentationLayer(AugmentationConfig())
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for k in range(n):
        subject = subjects[k % len(subjects)]
        zoom = size / subject.image.shape[0]
        image = np.clip(ndimage.zoom(subject.image, zoom, order=3), 0, 1).astype(np.float32)
        labels = ndimage.zoom(subject.labels, zoom, order=0)
        # same field of view: first and last voxel centres kept
        spacing = [s * (n_old - 1) / (n_new - 1) for s, n_old, n_new
                   in zip(subject.spacing, subject.image.shape, image.shape, strict=True)]
        affine = subject.affine.copy()
        affine[:3, :3] = affine[:3, :3] @ np.diag(np.asarray(spacing) / subject.spacing)
        geometry = Geometry(affine, image.shape)
        with torch.no_grad():
            pair = layer(torch.from_numpy(image)[None, None],
                         torch.from_numpy(labels)[None, None], spacing, generator=generator)
        stored = StoredPair(
            f"{k:04d}", subject.id, pair.fixed[0, 0].numpy(), pair.moving[0, 0].numpy(),
            pair.displacement[0].numpy(), tuple(spacing), affine, {},
            pair.fixed_labels[0, 0].numpy().astype(np.uint8),
            pair.moving_labels[0, 0].numpy().astype(np.uint8))
        pairs.append((stored, geometry))
    return pairs


def run_network(pair: StoredPair, geometry: Geometry, model, refine: int, options: dict
                ) -> tuple[np.ndarray, float, dict]:
    from ddmr import register

    result = register((pair.fixed, geometry), (pair.moving, geometry),
                      (pair.fixed_labels, geometry), (pair.moving_labels, geometry),
                      model=model, refine=refine, **options)
    runtime = result.summary["runtime_s"]
    seconds = runtime["preprocess"] + runtime["predict"] + runtime["refine"]
    return result.displacement_voxels(), seconds, result.summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model name or path (default: the first shipped "
                        "model; required while none ships)")
    parser.add_argument("--refine", default="25,50,100,200",
                        help="refinement iteration counts, comma-separated")
    parser.add_argument("--pairs", type=int, default=2, help="number of pairs (held-out "
                        "heads, cycled)")
    parser.add_argument("--size", type=int, default=128, help="pair grid, voxels per axis")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--baselines", default="syn",
                        help="ANTs methods, comma-separated subset of syn,syncc ('' = none)")
    parser.add_argument("--ants-iterations", metavar="AFFINE/SYN",
                        help="ANTs iterations per level, e.g. 100x50/20x10 (default: ddmr's)")
    parser.add_argument("--refine-spacing", type=float, metavar="MM",
                        help="refinement grid (default: the model's prepared grid)")
    parser.add_argument("--similarity", choices=("ncc", "lncc", "gncc", "mi"),
                        help="refinement similarity (default: the design's NCC)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write every per-pair row here")
    args = parser.parse_args()

    from ddmr.baselines.ants import NAMES, parse_methods, register_ants
    from ddmr.commands.evaluate import ants_settings_from_option
    from ddmr.evaluate.runner import parse_refine
    from ddmr.model.shipped import load, shipped_models

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None and not shipped_models():
        parser.error("no model ships with this version yet: pass --model PATH")
    stops = parse_refine(args.refine)
    baselines = [b for b in parse_methods(args.baselines) if b in ("syn", "syncc")]
    ants_settings = ants_settings_from_option(args.ants_iterations, baselines)
    options = {"refine_spacing": args.refine_spacing, "refine_similarity": args.similarity}
    model = load(args.model)
    name = model.path.name.removesuffix(".safetensors")
    pairs = make_pairs(args.pairs, args.size, args.seed)

    rows, refinements = [], {}
    run_network(*pairs[0], model, 1 if stops else 0, options)  # warm-up: first imports
    for pair, geometry in pairs:
        rows.append(score_pair(pair, "none", np.zeros_like(pair.displacement), 0.0))
        for n in [0, *stops]:
            field, seconds, summary = run_network(pair, geometry, model, n, options)
            method = "network" if n == 0 else f"network+refine{n}"
            rows.append(score_pair(pair, method, field, seconds))
            if summary["refinement"]:
                refinements[method] = summary["refinement"]
        for baseline in baselines:
            result = register_ants(pair.fixed, pair.moving, geometry, baseline,
                                   ants_settings.get(baseline))
            rows.append(score_pair(pair, NAMES[baseline], result.displacement, result.seconds))
        print(f"pair {pair.name} ({pair.subject}) done", flush=True)

    methods = list(dict.fromkeys(r["method"] for r in rows))
    means = {m: {k: statistics.fmean(r[k] for r in rows if r["method"] == m) for k in METRICS}
             for m in methods}
    reference = means.get(NAMES[baselines[0]]) if baselines else None
    spacing = " x ".join(f"{s:.3g}" for s in pairs[0][0].spacing)
    grid = next(iter(refinements.values()), {}).get("grid", {})
    print(f"\n## Network, network + refinement, ANTs: {len(pairs)} pairs of {args.size}^3 x "
          f"{spacing} mm ({date.today().isoformat()})\n")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads. Model: {name} "
          f"(network grid {'x'.join(map(str, model.card['input_size']))}); refinement grid "
          f"{'x'.join(map(str, grid.get('shape', [])))} x "
          f"{', '.join(f'{s:.3g}' for s in grid.get('spacing_mm', [])[:1])} mm, "
          f"{next(iter(refinements.values()), {}).get('similarity', '-')}.\n")
    ratio_header = f" | time / {NAMES[baselines[0]]} | TRE / {NAMES[baselines[0]]}" \
        if reference else ""
    print("| method | DSC | centroid TRE (mm) | dense TRE (mm) | HD95 (mm) | folding (%) | "
          f"seconds{ratio_header} |")
    print("|---|---:|---:|---:|---:|---:|---:" + ("|---:|---:" if reference else "") + "|")
    for method in methods:
        m = means[method]
        line = (f"| {method} | {m['dsc']:.3f} | {m['tre']:.2f} | {m['dense_tre']:.2f} | "
                f"{m['hd95']:.2f} | {m['folding']:.3f} | {m['seconds']:.1f}")
        if reference:
            time_ratio = m["seconds"] / reference["seconds"] if method != "none" else float("nan")
            line += f" | {time_ratio:.2f} | {m['tre'] / reference['tre']:.2f}"
        print(line + " |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "refinement": refinements},
                                        indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    status = main()
    print(f"\n(benchmark wall time {time.perf_counter() - start:.0f} s)")
    raise SystemExit(status)
