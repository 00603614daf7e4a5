import pytest
import torch

from conftest import smooth_field, smooth_volume
from ddmr.designs import DESIGNS, Design, get_design
from ddmr.errors import ConfigError
from ddmr.losses import DesignLoss, one_hot
from ddmr.spatial.warp import warp_image


def test_six_designs_of_table_1():
    assert list(DESIGNS) == ["BL-N", "BL-NS", "SG-ND", "SG-NSD", "UW-NSD", "UW-NSDH"]
    assert get_design("uw-nsdh").losses == ("ncc", "ssim", "dice", "hausdorff")
    assert not get_design("BL-NS").needs_segmentations
    assert get_design("SG-ND").needs_segmentations
    assert get_design("UW-NSD").weighting == "uncertainty"
    with pytest.raises(ConfigError, match="unknown design"):
        get_design("XX")
    with pytest.raises(ConfigError):
        Design("bad", "Baseline", ("mse",))


def test_design_round_trip():
    d = get_design("UW-NSDH").replace(ncc_window=None)
    assert Design.from_dict(d.to_dict()) == d


@pytest.mark.parametrize("name", list(DESIGNS))
def test_design_loss_runs_and_has_gradient(name):
    shape = (16, 16, 16)
    fixed = smooth_volume(shape, seed=1)
    labels = (fixed > 0.5).to(torch.uint8)
    u = smooth_field(shape, 1.0, seed=2).requires_grad_(True)
    warped = warp_image(fixed, u)
    loss = DesignLoss(get_design(name))
    total, terms = loss(fixed, warped, u, one_hot(labels, [0, 1]),
                        warp_image(one_hot(labels, [0, 1]), u))
    total.backward()
    assert torch.isfinite(total) and u.grad.abs().max() > 0
    assert set(terms) == {*get_design(name).losses, "regulariser"}
    assert set(loss.weights()) == set(terms)


def test_segmentation_designs_need_labels():
    fixed = smooth_volume((16, 16, 16))
    u = torch.zeros(1, 3, 16, 16, 16)
    with pytest.raises(ConfigError, match="needs label maps"):
        DesignLoss(get_design("SG-ND"))(fixed, fixed, u)
