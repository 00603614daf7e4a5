"""ANTs baselines: the returned field, applied by DDMR, reproduces ANTs' warped image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddmr.baselines.ants import AntsSettings, parse_methods, register_ants, run_baseline
from ddmr.errors import ConfigError
from ddmr.spatial.grid import Geometry
from ddmr.spatial.warp import warp_image

N = 26


def blobs(shift):
    g = np.indices((N,) * 3).astype(np.float32)
    c = np.array([12.0, 13.0, 12.0]) + shift
    out = np.exp(-sum((g[k] - c[k]) ** 2 for k in range(3)) / (2 * 4.0**2))
    out += 0.6 * np.exp(-sum((g[k] - c[k] - (5, -4, 3)[k]) ** 2 for k in range(3)) / 8.0)
    return out.astype(np.float32)


FAST = {"affine_iterations": (20, 10), "affine_shrink_factors": (2, 1),
        "affine_smoothing_sigmas": (1, 0), "syn_iterations": (10, 5)}
OBLIQUE = np.array([[0.0, 0.0, -2.0, 30.0], [1.2, 0.0, 0.0, -10.0], [0.0, 0.9, 0.0, 5.0],
                    [0.0, 0.0, 0.0, 1.0]])


@pytest.mark.parametrize(("method", "sampling", "affine"), [
    ("syn", 32, np.diag([1.5, 1.0, 2.0, 1.0])), ("syncc", 2, OBLIQUE)])
def test_field_reproduces_ants_warped_image(method, sampling, affine):
    fixed, moving = blobs(0.0), blobs(np.array([2.0, -1.0, 1.0]))
    geometry = Geometry(affine, (N,) * 3)
    result = register_ants(fixed, moving, geometry, method, AntsSettings(sampling=sampling, **FAST))
    assert result.displacement.shape == (3, N, N, N) and result.seconds > 0
    ours = warp_image(torch.from_numpy(moving)[None, None],
                      torch.from_numpy(result.displacement)[None])[0, 0].numpy()
    assert np.corrcoef(ours.ravel(), result.warped.ravel())[0, 1] >= 0.99
    # and it registers: closer to the fixed image than the moving image was
    before = np.abs(moving - fixed).mean()
    assert np.abs(ours - fixed).mean() < 0.5 * before


def test_none_and_method_names():
    fixed = blobs(0.0)
    geometry = Geometry(np.eye(4), (N,) * 3)
    result = run_baseline("none", fixed, fixed, geometry)
    assert not result.displacement.any() and result.warped is None
    assert parse_methods("SyN, syncc,none,syn") == ["syn", "syncc", "none"]
    assert parse_methods("") == []
    with pytest.raises(ConfigError):
        parse_methods("syn,elastix")
    with pytest.raises(ConfigError):  # ANTs would silently treat seed 0 as unseeded
        AntsSettings(seed=0)


def test_affine_baseline_recovers_a_shift():
    """The 'affine' method (DDMR's affine stage alone) finds a known translation."""
    fixed, moving = blobs(0.0), blobs(np.array([2.0, -1.0, 1.0]))
    geometry = Geometry(np.diag([2.0, 2.0, 2.0, 1.0]), (N,) * 3)
    result = run_baseline("affine", fixed, moving, geometry)
    centre = result.displacement[:, 10:16, 10:16, 10:16].reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(centre, [2.0, -1.0, 1.0], atol=0.3)
    assert "affine" in parse_methods("syn,affine")
