"""``ddmr register`` against ANTs SyN on the same 128^3 pair, side by side (issue 9).

    python benchmarks/bench_register.py [--model NAME|PATH] [--repeats 3] [--syn-repeats 1]

The pair: a held-out bundled head (96^3, 2 mm) resampled to 128^3 voxels of 1.5 mm, and
a copy deformed by the augmentation layer at the paper's bounds (rotation 10 degrees,
translation 30 mm, TPS 6 mm), with label maps. Measured in one run:

- ``ddmr.register`` in-process: the registration itself (read, preprocess, predict, warp;
  the ``runtime_s`` of ``summary.json`` without the metrics), median over repeats;
- the whole ``ddmr register`` process (Python start-up, imports, writing every output)
  and its peak resident memory (``/usr/bin/time``), median over repeats;
- the same per pair when ``--batch`` pairs go through one ``ddmr register --pairs``
  process, and the floor any PyTorch command pays (``python -c "import torch"``);
- ANTs SyN with antspyx defaults (``type_of_transform="SyN"``) plus applying it to the
  image and the labels, in-process; and the same through a fresh Python process;
- DSC, HD95 and centroid TRE of both against the fixed labels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ddmr import register
from ddmr.augment import AugmentationConfig, AugmentationLayer
from ddmr.data.cohort import cohort_split, sample_cohort
from ddmr.io.images import save_image, save_labels
from ddmr.registration.scores import label_metrics
from ddmr.spatial.grid import Geometry

SIZE = 128
SPACING = 1.5

ANTS_SCRIPT = """
import sys, time
start = time.perf_counter()
import ants
f, m = ants.image_read(sys.argv[1]), ants.image_read(sys.argv[2])
ms = ants.image_read(sys.argv[3])
r = ants.registration(f, m, type_of_transform="SyN")
w = ants.apply_transforms(f, m, r["fwdtransforms"])
ws = ants.apply_transforms(f, ms, r["fwdtransforms"], interpolator="genericLabel")
ants.image_write(w, sys.argv[4] + "/warped.nii.gz")
ants.image_write(ws, sys.argv[4] + "/warped_seg.nii.gz")
print(time.perf_counter() - start)
"""


def make_pair(folder: Path, seed: int = 3) -> dict[str, Path]:
    """Write fixed/moving images and labels (128^3, 1.5 mm) into ``folder``."""
    subject = sample_cohort([cohort_split()["test"][-1]])[0]
    zoom = SIZE / subject.image.shape[0]
    image = np.clip(ndimage.zoom(subject.image, zoom, order=3), 0, 1).astype(np.float32)
    labels = ndimage.zoom(subject.labels, zoom, order=0)
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    affine[:3, 3] = subject.affine[:3, 3]
    geometry = Geometry(affine, image.shape)
    pair = AugmentationLayer(AugmentationConfig())(
        torch.from_numpy(image)[None, None], torch.from_numpy(labels)[None, None],
        (SPACING,) * 3, generator=torch.Generator().manual_seed(seed))
    paths = {name: folder / f"{name}.nii.gz" for name in
             ("fixed", "moving", "fixed_seg", "moving_seg")}
    save_image(paths["fixed"], pair.fixed[0, 0].numpy(), geometry)
    save_image(paths["moving"], pair.moving[0, 0].numpy(), geometry)
    save_labels(paths["fixed_seg"], pair.fixed_labels[0, 0].numpy(), geometry)
    save_labels(paths["moving_seg"], pair.moving_labels[0, 0].numpy(), geometry)
    return paths


def timed_process(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of a fresh process (``/usr/bin/time``)."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as report:
        start = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name, *command],
                              capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stderr[-2000:]}")
        peak_kb = float(Path(report.name).read_text().strip().splitlines()[-1])
    return seconds, peak_kb / 1024, done.stdout


def ddmr_in_process(paths: dict[str, Path], model: str | None) -> tuple[float, dict]:
    result = register(paths["fixed"], paths["moving"], paths["fixed_seg"], paths["moving_seg"],
                      model=False if model == "none" else model)
    runtime = result.summary["runtime_s"]
    seconds = runtime["total"] - runtime["metrics"] - runtime["qc"]
    return seconds, result.summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model name or path (default: the shipped model)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--syn-repeats", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4,
                        help="pairs in one `ddmr register --pairs` process (per-pair time)")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="ddmr-bench-") as tmp:
        folder = Path(tmp)
        paths = make_pair(folder)
        import nibabel as nib

        fixed_seg = np.asarray(nib.load(paths["fixed_seg"]).dataobj)
        moving_seg = np.asarray(nib.load(paths["moving_seg"]).dataobj)
        before = label_metrics(fixed_seg, moving_seg, (SPACING,) * 3)

        ddmr_in_process(paths, args.model)  # warm-up (first import of everything)
        api = [ddmr_in_process(paths, args.model) for _ in range(args.repeats)]
        api_seconds = statistics.median(s for s, _ in api)
        summary = api[-1][1]
        cli = []
        for k in range(args.repeats):
            out = folder / f"ddmr-{k}"
            command = [sys.executable, "-m", "ddmr.cli", "register", "--fixed",
                       str(paths["fixed"]), "--moving", str(paths["moving"]),
                       "--moving-labels", str(paths["moving_seg"]), "-o", str(out)]
            if args.model:
                command += ["--model", args.model]
            cli.append(timed_process(command))
        cli_seconds = statistics.median(s for s, _, _ in cli)
        cli_peak = max(m for _, m, _ in cli)
        floor = statistics.median(timed_process([sys.executable, "-c", "import torch"])[0]
                                  for _ in range(args.repeats))
        table = folder / "pairs.csv"
        table.write_text("fixed,moving,moving_labels,id\n" + "".join(
            f"{paths['fixed']},{paths['moving']},{paths['moving_seg']},pair{k}\n"
            for k in range(args.batch)))
        batch_command = [sys.executable, "-m", "ddmr.cli", "register", "--pairs", str(table),
                         "-o", str(folder / "batch"), "--no-progress"]
        if args.model:
            batch_command += ["--model", args.model]
        batch_seconds = timed_process(batch_command)[0] / args.batch

        syn = []
        for k in range(args.syn_repeats):
            out = folder / f"syn-{k}"
            out.mkdir()
            syn.append(timed_process([sys.executable, "-c", ANTS_SCRIPT, str(paths["fixed"]),
                                      str(paths["moving"]), str(paths["moving_seg"]),
                                      str(out)]))
        syn_process = statistics.median(s for s, _, _ in syn)
        syn_inner = statistics.median(float(o.strip().splitlines()[-1]) for _, _, o in syn)
        syn_peak = max(m for _, m, _ in syn)
        syn_seg = np.asarray(nib.load(folder / "syn-0" / "warped_seg.nii.gz").dataobj)
        syn_metrics = label_metrics(fixed_seg, syn_seg.astype(np.uint8), (SPACING,) * 3)

    metrics = summary["metrics"]
    size = "x".join(map(str, summary["model"]["input_size"]))
    ratio = syn_inner / api_seconds
    print(f"## Registration vs ANTs SyN, {SIZE}^3 x {SPACING} mm pair "
          f"({date.today().isoformat()})\n")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {threads} threads. Model: "
          f"{summary['model']['name']} (input {size}).\n")
    print("| | ddmr | ANTs SyN | ratio (SyN / ddmr) |")
    print("|---|---:|---:|---:|")
    print(f"| registration itself, s (median of {args.repeats}; SyN: registration + apply, "
          f"in its process) | {api_seconds:.2f} | {syn_inner:.1f} | {ratio:.1f}x |")
    print(f"| whole process, s (start-up and writing included) | {cli_seconds:.2f} | "
          f"{syn_process:.1f} | {syn_process / cli_seconds:.1f}x |")
    print(f"| whole process per pair, {args.batch} pairs in one `--pairs` process, s | "
          f"{batch_seconds:.2f} | {syn_process:.1f} | {syn_process / batch_seconds:.1f}x |")
    print(f"| floor: `python -c 'import torch'` alone, s | {floor:.2f} | | "
          f"{syn_process / floor:.1f}x |")
    print(f"| peak resident memory, MB | {cli_peak:.0f} | {syn_peak:.0f} | |")
    print(f"| DSC (before: {before['dsc']:.3f}) | {metrics['dsc']:.3f} | "
          f"{syn_metrics['dsc']:.3f} | |")
    print(f"| HD95, mm (before: {before['hd95']:.1f}) | {metrics['hd95']:.2f} | "
          f"{syn_metrics['hd95']:.2f} | |")
    print(f"| centroid TRE, mm (before: {before['tre']:.1f}) | {metrics['tre']:.2f} | "
          f"{syn_metrics['tre']:.2f} | |")
    print(f"\nddmr runtime split (s, last in-process run): "
          f"{json.dumps(summary['runtime_s'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
