"""Tiny prepared datasets and profiles for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddmr.io.images import save_image, save_labels
from ddmr.nn.unet import UNetConfig
from ddmr.prepare.dataset import prepare_dataset
from ddmr.prepare.recipe import PrepareOptions
from ddmr.spatial.grid import Geometry
from ddmr.train.profiles import get_profile

TINY_UNET = UNetConfig(encoder=(4, 8, 8), head=(4,))


def make_dataset(root: Path, n: int = 5, labels: bool = True, size: int = 24) -> Path:
    """Prepare ``n`` smooth synthetic subjects (24^3, 2 mm) into ``root/prep``."""
    rng = np.random.default_rng(0)
    folder = root / "raw"
    (folder / "images").mkdir(parents=True)
    if labels:
        (folder / "labels").mkdir()
    grid = np.indices((size,) * 3).astype(np.float32)
    geometry = Geometry(np.diag([2.0, 2.0, 2.0, 1.0]), (size,) * 3)
    for i in range(n):
        image = np.zeros((size,) * 3, np.float32)
        for _ in range(5):
            centre = rng.uniform(0.3, 0.7, 3) * size
            r2 = sum((grid[k] - centre[k]) ** 2 for k in range(3))
            image += np.exp(-r2 / (2 * (0.15 * size) ** 2))
        image /= image.max()
        save_image(folder / "images" / f"s{i}.nii.gz", image, geometry)
        if labels:
            seg = (image > 0.4).astype(np.uint8) + (image > 0.7).astype(np.uint8)
            save_labels(folder / "labels" / f"s{i}.nii.gz", seg, geometry)
    out = root / "prep"
    prepare_dataset(folder, out, PrepareOptions(size=(size,) * 3, spacing=2.0, seed=0,
                                                layout="folder"), progress=False)
    return out


def tiny_profile(**changes):
    profile = get_profile("cpu").replace(
        unet=TINY_UNET, input_size=(24, 24, 24), val_every=2, val_pairs=1,
        checkpoint_every=1, max_steps=4, accumulate=1)
    return profile.replace(**changes)
