"""Benchmark of the augmentation layer against one training step of a U-Net.

    python benchmarks/bench_augment.py [--size 128] [--repeats 10] [--threads 2]
        [--network small|paper]

Times one pair (batch 1, all parts on, the paper's bounds) at SIZE^3 and 1 mm: the first
call (builds and caches the plan: TPS operator, spline matrices) and the median of the
following calls, with and without a label map, plus a stage breakdown; then the median
of one training step (forward, backward, optimiser step) of ``UNet(encoder=(16, 32, 32,
32), head=(16,))`` (``--network small``) or of the paper's network (``paper``, the
profile the paper trains at 128^3) with an MSE between the warped moving and the fixed
image at the same size, and the augmentation's share of a step. Prints a Markdown
section.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from ddmr.augment import AugmentationConfig, AugmentationLayer
from ddmr.augment.intensity import adjust_intensity
from ddmr.augment.parameters import draw_parameters
from ddmr.nn import UNet, UNetConfig
from ddmr.spatial.warp import warp_image


def blobs(size: int, seed: int = 0) -> torch.Tensor:
    """(1, 1, n, n, n) sum of Gaussian blobs in [0, 1] (separable, fast to build)."""
    rng = np.random.default_rng(seed)
    axis = np.arange(size, dtype=np.float32)
    vol = np.zeros((size,) * 3, np.float32)
    for _ in range(12):
        c = rng.uniform(0.2, 0.8, 3) * size
        w = rng.uniform(0.08, 0.2) * size
        g = [np.exp(-((axis - ci) ** 2) / (2 * w**2)) for ci in c]
        vol += g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]
    vol = (vol - vol.min()) / (vol.max() - vol.min())
    return torch.from_numpy(vol)[None, None]


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def stages(layer: AugmentationLayer, image: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of each stage of a pair (the layer's own path, timed piecewise)."""
    spacing = (1.0, 1.0, 1.0)
    plan = layer.plan(image.shape[2:], spacing)
    gen = torch.Generator().manual_seed(1)
    out: dict[str, list[float]] = {k: [] for k in ("draw", "node fields", "dense fields",
                                                   "warp image", "intensity")}
    for _ in range(repeats):
        t0 = time.perf_counter()
        p = draw_parameters(layer.config, plan, 1, gen)
        t1 = time.perf_counter()
        un, vn = plan.node_fields(p.rotation[0], p.translation[0], p.tps_displacements[0])
        t2 = time.perf_counter()
        _, v = plan.dense(un[None], vn[None], image.device)
        t3 = time.perf_counter()
        moving = warp_image(image, v)
        t4 = time.perf_counter()
        adjust_intensity(image, p.gamma[:, 0], p.brightness[:, 0])
        adjust_intensity(moving, p.gamma[:, 1], p.brightness[:, 1])
        t5 = time.perf_counter()
        for key, dt in zip(out, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            out[key].append(dt)
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--network", choices=["small", "paper"], default="small")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.size
    image = blobs(n)
    labels = (image * 4).to(torch.uint8)
    spacing = (1.0, 1.0, 1.0)

    layer = AugmentationLayer(AugmentationConfig(), seed=0)
    first = timed(lambda: layer(image, None, spacing), 1)[0]
    plain = timed(lambda: layer(image, None, spacing), args.repeats)
    with_labels = timed(lambda: layer(image, labels, spacing), args.repeats)
    parts = stages(layer, image, args.repeats)

    network = {"small": ("U-Net (16,32,32,32 / 16)", UNetConfig(encoder=(16, 32, 32, 32),
                                                                 head=(16,))),
               "paper": ("paper U-Net", UNetConfig())}[args.network]
    net = UNet(network[1])
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-4)
    pair = layer(image, None, spacing)

    def step() -> None:
        optimiser.zero_grad()
        displacement = net(pair.fixed, pair.moving)
        loss = torch.nn.functional.mse_loss(warp_image(pair.moving, displacement), pair.fixed)
        loss.backward()
        optimiser.step()

    step()  # warm-up
    steps = timed(step, args.step_repeats)
    # interleave once more so that a load change hits both sides
    plain += timed(lambda: layer(image, None, spacing), args.repeats)

    # CPU seconds of one pair on one thread: robust to other jobs sharing the machine
    torch.set_num_threads(1)
    cpu_one = []
    for _ in range(args.repeats):
        start = time.process_time()
        layer(image, None, spacing)
        cpu_one.append(time.process_time() - start)
    torch.set_num_threads(args.threads)

    aug, train = statistics.median(plain), statistics.median(steps)
    load = (Path("/proc/loadavg").read_text().split()[:3]
            if Path("/proc/loadavg").exists() else ["?"])
    print(f"## Augmentation layer ({date.today().isoformat()})\n")
    print(f"`python benchmarks/bench_augment.py --size {n} --repeats {args.repeats} "
          f"--threads {args.threads} --network {args.network}`; "
          f"{platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {args.threads} threads, load average at the end "
          f"{' '.join(load)}.\n")
    print("| what | seconds |\n|---|---|")
    print(f"| first pair (builds the plan) | {first:.3f} |")
    print(f"| pair, all parts on, median of {len(plain)} | {aug:.3f} (min {min(plain):.3f}) |")
    print(f"| pair with a 5-label map, median | {statistics.median(with_labels):.3f} |")
    print(f"| pair, CPU time on 1 thread, median | {statistics.median(cpu_one):.3f} |")
    for key, value in parts.items():
        print(f"| - stage: {key} | {value:.3f} |")
    print(f"| {network[0]} training step, median of {len(steps)} | {train:.3f} |")
    print(f"\nAugmentation / training step: {aug / train:.3f} "
          f"({100 * aug / (aug + train):.1f} % of a step that includes it).")


if __name__ == "__main__":
    main()
