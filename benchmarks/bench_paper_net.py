"""The paper-size network at 128^3 end to end on this CPU, plain and with each speed lever.

    python benchmarks/bench_paper_net.py [--threads 2] [--repeats 3] [--size 128] [--compile]

End to end: a preprocessed pair in memory -> displacement -> warped moving image. Each
variant runs in its own Python process (its own peak memory): one warm-up, then the
median of ``--repeats``. Every variant's field is compared with the plain one's (max
absolute difference, voxels) so that a lever that changes the answer shows. Variants:

- ``eager no_grad``: the baseline (``torch.no_grad``, PyTorch's own conv3d dispatch);
- ``+ oneDNN path``: :class:`ddmr.nn.conv.Conv3d` keeps few-channel batch-1 convolutions
  on oneDNN (``fast_cpu_conv``, the default);
- ``+ inference_mode``;
- ``+ channels_last_3d``: model and inputs in NDHWC memory format;
- ``+ torch.compile`` (``--compile``; inductor, needs a C++ compiler);
- ``half-resolution flow head``: a different model (must be trained to be used), timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

CHILD = r"""
import contextlib, json, resource, statistics, sys, time
import torch
from ddmr.nn import UNet, UNetConfig, warp_image
threads, repeats, size = (int(a) for a in sys.argv[1:4])
options = json.loads(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
config = UNetConfig(fast_cpu_conv=options.get("fast", True),
                    flow_resolution=options.get("flow", "full"))
model = UNet(config).eval()
torch.nn.init.normal_(model.output.weight, std=1e-2)  # a field that is not ~0
g = torch.Generator().manual_seed(1)
fixed = torch.rand(1, 1, size, size, size, generator=g)
moving = torch.rand(1, 1, size, size, size, generator=g)
if options.get("channels_last"):
    model = model.to(memory_format=torch.channels_last_3d)
    fixed = fixed.contiguous(memory_format=torch.channels_last_3d)
    moving = moving.contiguous(memory_format=torch.channels_last_3d)
run = model
if options.get("compile"):
    run = torch.compile(model)
mode = torch.inference_mode if options.get("inference_mode") else torch.no_grad
def once():
    with mode():
        field = run(fixed, moving)
        warped = warp_image(moving, field.contiguous())
    return field, warped
start = time.perf_counter(); field, _ = once(); first = time.perf_counter() - start
times = []
for _ in range(repeats):
    t = time.perf_counter(); field, _ = once(); times.append(time.perf_counter() - t)
torch.save(field.contiguous(), sys.argv[5])
print(json.dumps({"median_s": statistics.median(times), "first_s": first,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

VARIANTS = {
    "eager no_grad": {"fast": False},
    "+ oneDNN path": {"fast": True},
    "+ inference_mode": {"fast": True, "inference_mode": True},
    "+ channels_last_3d": {"fast": True, "inference_mode": True, "channels_last": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    import tempfile
    from pathlib import Path

    import torch

    variants = dict(VARIANTS)
    if args.compile:
        variants["+ torch.compile"] = {"fast": True, "inference_mode": True, "compile": True}
    variants["half-resolution flow head (other model)"] = {"fast": True, "inference_mode": True,
                                                           "flow": "half"}
    print(f"# paper network, {args.size}^3, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, torch {torch.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        for name, options in variants.items():
            out = Path(tmp) / f"{len(rows)}.pt"
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(args.threads), str(args.repeats),
                 str(args.size), json.dumps(options), str(out)],
                capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{name}: failed: {done.stderr.strip().splitlines()[-1]}", flush=True)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            field = torch.load(out, weights_only=True)
            if reference is None:
                reference, base = field, result["median_s"]
            same_model = options.get("flow", "full") == "full"
            diff = float((field - reference).abs().max()) if same_model else float("nan")
            rows.append((name, result, diff, base / result["median_s"]))
            print(f"{name}: {result['median_s']:.2f} s (first {result['first_s']:.1f} s), "
                  f"{result['peak_rss_mb']:.0f} MB, max |diff| {diff:.2e} voxels, "
                  f"{base / result['median_s']:.2f}x", flush=True)
    print("\n| variant | end to end (median) | first call | peak RSS | max abs diff vs eager "
          "(voxels) | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, result, diff, ratio in rows:
        print(f"| {name} | {result['median_s']:.2f} s | {result['first_s']:.1f} s | "
              f"{result['peak_rss_mb']:.0f} MB | {diff:.1e} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
