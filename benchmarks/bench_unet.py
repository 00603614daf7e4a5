"""Forward time and peak memory of the U-Net on this CPU.

Each configuration runs in its own Python process (so that peak resident memory is its
own): build the model, one warm-up pass, then the median of ``--repeats`` forward passes
under ``torch.inference_mode``. Prints one line per configuration and a Markdown table.

    python benchmarks/bench_unet.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

CONFIGS = {
    "paper 64^3": ({}, 64),
    "paper 128^3": ({}, 128),
    "small (16,32,32,32 / head 16) 64^3": ({"encoder": [16, 32, 32, 32], "head": [16]}, 64),
    "small (16,32,32,32 / head 16) 128^3": ({"encoder": [16, 32, 32, 32], "head": [16]}, 128),
}

CHILD = r"""
import json, resource, statistics, sys, time
import torch
from ddmr.nn import UNet, UNetConfig
threads, repeats, size = (int(a) for a in sys.argv[1:4])
kwargs = json.loads(sys.argv[4])
torch.set_num_threads(threads)
model = UNet(UNetConfig.from_dict(kwargs) if kwargs else UNetConfig()).eval()
x = torch.rand(1, 1, size, size, size)
times = []
with torch.inference_mode():
    model(x, x)
    for _ in range(repeats):
        t = time.perf_counter(); model(x, x); times.append(time.perf_counter() - t)
print(json.dumps({"median_s": statistics.median(times), "params": model.parameter_count(),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads")
    rows = []
    for name, (kwargs, size) in CONFIGS.items():
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(args.threads), str(args.repeats), str(size),
             json.dumps(kwargs)], capture_output=True, text=True, check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((name, result))
        print(f"{name}: {result['median_s']:.3f} s, {result['peak_rss_mb']:.0f} MB peak RSS, "
              f"{result['params']:,} parameters", flush=True)
    print("\n| configuration | parameters | forward (median) | peak RSS |")
    print("|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['params']:,} | {r['median_s']:.2f} s | {r['peak_rss_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
