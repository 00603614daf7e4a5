"""A tiny network must overfit one synthetic pair within 40 steps: the whole core (U-Net, warping,
losses, weighting) learns together."""

import pytest
import torch

from conftest import smooth_field, smooth_volume
from ddmr.designs import get_design
from ddmr.losses import DesignLoss, dice_score, one_hot
from ddmr.nn import UNet, UNetConfig
from ddmr.spatial.warp import warp_image, warp_labels


def _pair(shape=(32, 32, 32)):
    fixed = smooth_volume(shape, seed=21, blobs=8)
    labels = (fixed > 0.45).to(torch.uint8) + (fixed > 0.7).to(torch.uint8)
    true = smooth_field(shape, 3.0, seed=22)
    return fixed, labels, warp_image(fixed, true), warp_labels(labels, true)


def _mean_dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return dice_score(one_hot(a, [1, 2]), one_hot(b, [1, 2])).mean().item()


@pytest.mark.parametrize("design", ["UW-NSD"])
def test_tiny_design_overfits_one_pair(design):
    torch.manual_seed(0)
    fixed, labels, moving, moving_labels = _pair()
    model = UNet(UNetConfig(encoder=(8, 16, 16, 16), head=(8,)))
    loss_fn = DesignLoss(get_design(design))
    opt = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=3e-3)
    moving_oh, fixed_oh = one_hot(moving_labels, [0, 1, 2]), one_hot(labels, [0, 1, 2])
    before = _mean_dice(moving_labels, labels)
    for _ in range(40):
        opt.zero_grad()
        u = model(fixed, moving)
        total, _ = loss_fn(fixed, warp_image(moving, u), u, fixed_oh, warp_image(moving_oh, u))
        total.backward()
        opt.step()
    with torch.no_grad():
        after = _mean_dice(warp_labels(moving_labels, model(fixed, moving)), labels)
    assert after > before + 0.2, (before, after)
