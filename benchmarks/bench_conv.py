"""oneDNN convolution path (``ddmr.nn.conv.Conv3d``) against PyTorch's own dispatch, on the
CPU: single layers of registration-U-Net shapes (forward + backward) and a whole
cpu-profile training step, timed side by side in one process, medians over repeats.

    python benchmarks/bench_conv.py [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ddmr.designs import get_design
from ddmr.nn.conv import Conv3d
from ddmr.train.module import RegistrationModule
from ddmr.train.profiles import get_profile

LAYERS = [(2, 16, 64), (16, 32, 32), (32, 32, 16), (16, 16, 64), (48, 16, 64), (2, 32, 128)]


def interleaved_medians(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Run each function once to warm up, then alternate them ``repeats`` times."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def layer_case(cin: int, cout: int, size: int) -> dict[str, Callable[[], None]]:
    conv = Conv3d(cin, cout)
    x = torch.rand(1, cin, size, size, size, requires_grad=True)

    def plain() -> None:
        F.conv3d(x, conv.weight, conv.bias, padding=1).sum().backward()

    def fast() -> None:
        conv(x).sum().backward()

    return {"plain": plain, "fast": fast}


def step_case() -> dict[str, Callable[[], None]]:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_train import synthetic_batch

    batch = synthetic_batch()
    modules = {}
    for fast in (False, True):
        profile = get_profile("cpu")
        profile = profile.replace(unet=dataclasses.replace(profile.unet, fast_cpu_conv=fast))
        torch.manual_seed(0)
        modules[fast] = RegistrationModule(get_design("UW-NSD").to_dict(), profile.to_dict(),
                                           [0, 1, 2])
    pair = modules[False].make_pair(batch, torch.Generator().manual_seed(0))

    def run(fast: bool) -> None:
        modules[fast].zero_grad()
        total, _, _ = modules[fast].pair_loss(pair)
        total.backward()

    return {"plain": lambda: run(False), "fast": lambda: run(True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads, medians of {args.repeats} interleaved repeats")
    print("| case | PyTorch dispatch | oneDNN path | speed-up |")
    print("|---|---|---|---|")
    cases = {f"conv {c}->{o} at {s}^3, fwd+bwd": layer_case(c, o, s) for c, o, s in LAYERS}
    cases["cpu-profile UW-NSD step (64^3, no augmentation)"] = step_case()
    for name, fns in cases.items():
        t = interleaved_medians(fns, args.repeats)
        print(f"| {name} | {t['plain']:.3f} s | {t['fast']:.3f} s | "
              f"{t['plain'] / t['fast']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
