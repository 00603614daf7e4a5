"""Shared fixtures: small smooth volumes and fields, deterministic seeds."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `import ddmr` does (ddmr/__init__)

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


def smooth_volume(shape=(24, 28, 32), seed: int = 0, blobs: int = 6) -> torch.Tensor:
    """A (1, 1, D, H, W) sum of Gaussian blobs in [0, 1]."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    vol = np.zeros(shape, np.float32)
    for _ in range(blobs):
        centre = [rng.uniform(0.25, 0.75) * n for n in shape]
        width = rng.uniform(0.12, 0.25) * min(shape)
        r2 = sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True))
        vol += np.exp(-r2 / (2 * width**2)).astype(np.float32)
    vol = (vol - vol.min()) / (vol.max() - vol.min())
    return torch.from_numpy(vol)[None, None]


def smooth_field(shape=(24, 28, 32), amplitude: float = 1.5, seed: int = 0) -> torch.Tensor:
    """A smooth random displacement (1, 3, D, H, W) in voxels with max |u| = amplitude:
    a sum of low-frequency sinusoids (one period or less across the volume)."""
    gen = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) / n
                                        for n in shape], indexing="ij"))
    field = torch.zeros(3, *shape)
    for c in range(3):
        for _ in range(3):
            freq = torch.rand(3, generator=gen) * 2 - 1
            phase = torch.rand(1, generator=gen) * 6.283
            field[c] += torch.sin(6.283 * torch.einsum("k,kdhw->dhw", freq, grid) + phase)
    return (field / field.abs().max() * amplitude)[None]


@pytest.fixture
def volume() -> torch.Tensor:
    return smooth_volume()


@pytest.fixture
def field() -> torch.Tensor:
    return smooth_field()
