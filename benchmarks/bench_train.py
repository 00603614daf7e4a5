"""Training steps per second of a profile on this machine (one pair per step).

Times the module's training computation (augmentation on the fly, prediction, warping,
the design's loss, backward, Adam step) on a bundled brain subject (its 16 labelled
structures and background) resampled to ``--size``^3, median over steps after a warm-up;
the augmentation's own share is printed beside it.

    python benchmarks/bench_train.py [--profile cpu] [--design UW-NSD] [--steps 10]
        [--config configs/brain-t1-cpu-hm.yaml] [--supervised-weight 0.1] [--size 64]

``--size`` is the side of the subject (the prepared cohort's 64^3 by default);
the pre-alignment (affine stage, profiles with ``prealign``) is timed apart from the
augmentation layer.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from ddmr.data.cohort import cohort_split, sample_cohort
from ddmr.designs import get_design
from ddmr.train.module import RegistrationModule
from ddmr.train.profiles import get_profile


def subject_batch(size: int = 64) -> dict:
    """The first bundled training subject (96^3, 2 mm), resampled to ``size``^3 over the
    same extent: image trilinearly, labels by nearest neighbour."""
    subject = sample_cohort([cohort_split()["train"][0]])[0]
    image = torch.from_numpy(subject.image).float()[None, None]
    labels = torch.from_numpy(subject.labels)[None, None]
    shape = (size,) * 3
    image = torch.nn.functional.interpolate(image, size=shape, mode="trilinear",
                                            align_corners=False)
    labels = torch.nn.functional.interpolate(labels.float(), size=shape, mode="nearest")
    spacing = 2.0 * subject.image.shape[0] / size
    return {"image": image.clamp(0, 1), "labels": labels.to(torch.uint8),
            "spacing": torch.tensor([[spacing] * 3])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--design", default="UW-NSD")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", help="YAML overriding profile fields (as ddmr train)")
    parser.add_argument("--supervised-weight", type=float, default=None)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    profile = get_profile(args.profile, args.config)
    design = get_design(args.design)
    if args.supervised_weight is not None:
        design = dataclasses.replace(design, supervised_weight=args.supervised_weight)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = subject_batch(args.size)
    values = torch.unique(batch["labels"]).tolist()
    module = RegistrationModule(design.to_dict(), profile.to_dict(), values).to(device)
    optimiser = torch.optim.Adam(module.parameters(), lr=1e-3)
    batch = {k: v.to(device) for k, v in batch.items()}
    generator = torch.Generator().manual_seed(0)
    step_times, augment_times, align_times = [], [], []
    for step in range(args.steps + 2):
        t0 = time.perf_counter()
        pair = module.augment_pair(batch, generator)
        if device == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        pair = module.prealign(pair)
        t2 = time.perf_counter()
        optimiser.zero_grad()
        total, _, _ = module.pair_loss(pair)
        total.backward()
        optimiser.step()
        if device == "cuda":
            torch.cuda.synchronize()
        t3 = time.perf_counter()
        if step >= 2:
            step_times.append(t3 - t0)
            augment_times.append(t1 - t0)
            align_times.append(t2 - t1)
    step = statistics.median(step_times)
    aug = statistics.median(augment_times)
    align = statistics.median(align_times)
    print(f"profile {profile.name}, design {design.name}, input {profile.input_size}, "
          f"device {device}, {args.threads} threads, {len(values)} label values")
    print(f"step: {step:.3f} s median ({1 / step:.2f} steps/s); augmentation {aug:.3f} s "
          f"= {100 * aug / step:.1f} % of a step; affine pre-alignment {align:.3f} s "
          f"= {100 * align / step:.1f} %")


if __name__ == "__main__":
    main()
