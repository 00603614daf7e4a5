import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric
from skimage.metrics import structural_similarity

from conftest import smooth_field, smooth_volume
from ddmr.losses import (
    BendingEnergy,
    DiceLoss,
    GradientL2,
    HausdorffDTLoss,
    MutualInformationLoss,
    NCCLoss,
    SSIMLoss,
    dice_score,
    global_ncc,
    local_ncc,
    mutual_information,
    one_hot,
    ssim3d,
)
from ddmr.spatial.field import identity_grid
from ddmr.spatial.warp import warp_image, warp_labels


def random_volume(shape=(20, 22, 24), seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, *shape, generator=gen)


def test_global_ncc_self_and_negative(volume):
    assert global_ncc(volume, volume).item() == pytest.approx(1.0, abs=1e-5)
    assert global_ncc(volume, -volume).item() == pytest.approx(-1.0, abs=1e-5)
    # invariant to affine intensity changes (the centring the original code forgot)
    assert global_ncc(volume, 3 * volume + 5).item() == pytest.approx(1.0, abs=1e-5)


def test_global_ncc_matches_numpy():
    a, b = random_volume(seed=1), random_volume(seed=2) * 0.3 + random_volume(seed=1)
    expected = np.corrcoef(a.numpy().ravel(), b.numpy().ravel())[0, 1]
    assert global_ncc(a, b).item() == pytest.approx(expected, abs=1e-5)


def test_local_ncc_matches_brute_force():
    a, b = random_volume((9, 10, 11), 3), random_volume((9, 10, 11), 4) + random_volume(
        (9, 10, 11), 3)
    window = 5
    an, bn = a[0, 0].numpy().astype(np.float64), b[0, 0].numpy().astype(np.float64)
    r = window // 2
    values = []
    for idx in np.ndindex(an.shape):
        sl = tuple(slice(max(i - r, 0), i + r + 1) for i in idx)
        x, y = an[sl].ravel(), bn[sl].ravel()
        cov = ((x - x.mean()) * (y - y.mean())).mean()
        values.append((cov + 1e-5) / np.sqrt((x.var() + 1e-5) * (y.var() + 1e-5)))
    assert local_ncc(a, b, window).item() == pytest.approx(np.mean(values), abs=1e-4)
    assert local_ncc(a, a, window).item() == pytest.approx(1.0, abs=1e-3)


def test_ncc_loss_forms(volume):
    assert NCCLoss(None)(volume, volume).item() == pytest.approx(0.0, abs=1e-5)
    assert NCCLoss(9)(volume, volume).item() == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("gaussian", [True, False])
def test_ssim_matches_scikit_image(gaussian):
    a = random_volume((24, 25, 26), 5)
    b = (a + 0.3 * random_volume((24, 25, 26), 6)).clamp(0, 1)
    ours = ssim3d(a, b, window="gaussian" if gaussian else "uniform").item()
    kwargs = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False} \
        if gaussian else {"win_size": 7}
    reference = structural_similarity(a[0, 0].numpy(), b[0, 0].numpy(), data_range=1.0,
                                      **kwargs)
    assert ours == pytest.approx(reference, abs=1e-4)
    assert SSIMLoss()(a, a).item() == pytest.approx(0.0, abs=1e-5)


def test_dice_identical_is_one_and_matches_monai():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (2, 1, 12, 12, 12), generator=gen)
    other = torch.randint(0, 4, (2, 1, 12, 12, 12), generator=gen)
    oh, oh2 = one_hot(labels, range(4)), one_hot(other, range(4))
    assert DiceLoss()(oh, oh).item() == pytest.approx(0.0, abs=1e-6)
    metric = DiceMetric(include_background=False, reduction="none")
    reference = metric(oh2, oh)  # (B, K-1)
    ours = dice_score(oh2[:, 1:], oh[:, 1:])
    assert torch.allclose(ours, reference.float(), atol=1e-5)
    assert DiceLoss()(oh2, oh).item() == pytest.approx(1 - reference.mean().item(), abs=1e-5)
    generalised = DiceLoss(generalised=True)(oh2, oh).item()
    assert 0 < generalised < 1


def test_mutual_information_properties(volume):
    noise = random_volume(volume.shape[2:], 7)
    mi_self = mutual_information(volume, volume).item()
    mi_inverted = mutual_information(volume, 1 - volume).item()
    mi_noise = mutual_information(volume, noise).item()
    assert mi_self > 5 * mi_noise
    assert mi_inverted == pytest.approx(mi_self, rel=0.05)  # multi-modal: any monotone map
    assert MutualInformationLoss()(volume, volume).item() == pytest.approx(-mi_self)


def test_gradient_l2_of_linear_field_matches_formula():
    a = 0.3
    u = torch.zeros(1, 3, 8, 9, 10)
    u[:, 0] = a * identity_grid((8, 9, 10))[0, 0]
    assert GradientL2()(u).item() == pytest.approx(a * a / 9, rel=1e-5)
    assert BendingEnergy()(u).item() == pytest.approx(0.0, abs=1e-10)
    u[:, 1] = 0.1 * identity_grid((8, 9, 10))[0, 2] ** 2
    assert BendingEnergy()(u).item() > 0


def test_hausdorff_loss_zero_when_aligned_and_grows_with_shift():
    labels = torch.zeros(1, 1, 24, 24, 24, dtype=torch.uint8)
    labels[..., 8:16, 8:16, 8:16] = 1
    target = one_hot(labels, [0, 1])
    loss = HausdorffDTLoss()
    assert loss(target, target).item() == 0.0
    values = []
    for s in (1, 2, 4):
        shifted = one_hot(torch.roll(labels, s, dims=2), [0, 1])
        values.append(loss(shifted, target).item())
    assert values[0] < values[1] < values[2]


def _moving_pair(shape=(24, 24, 24)):
    fixed = smooth_volume(shape, seed=11)
    labels = (fixed > 0.5).to(torch.uint8) + (fixed > 0.75).to(torch.uint8)
    true = smooth_field(shape, 2.0, seed=12)
    moving = warp_image(fixed, true)
    moving_labels = warp_labels(labels, true)
    return fixed, labels, moving, moving_labels


@pytest.mark.parametrize("name", ["ncc_global", "ncc_local", "ssim", "mi", "dice", "hausdorff",
                                  "grad_l2", "bending"])
def test_every_loss_passes_a_gradient_to_the_displacement(name):
    fixed, labels, moving, moving_labels = _moving_pair()
    u = (0.5 * smooth_field(fixed.shape[2:], 1.0, seed=13)).requires_grad_(True)
    warped = warp_image(moving, u)
    warped_oh = warp_image(one_hot(moving_labels, [0, 1, 2]), u)
    fixed_oh = one_hot(labels, [0, 1, 2])
    value = {
        "ncc_global": lambda: NCCLoss(None)(warped, fixed),
        "ncc_local": lambda: NCCLoss(9)(warped, fixed),
        "ssim": lambda: SSIMLoss()(warped, fixed),
        "mi": lambda: MutualInformationLoss()(warped, fixed),
        "dice": lambda: DiceLoss()(warped_oh, fixed_oh),
        "hausdorff": lambda: HausdorffDTLoss()(warped_oh, fixed_oh),
        "grad_l2": lambda: GradientL2()(u),
        "bending": lambda: BendingEnergy()(u),
    }[name]()
    value.backward()
    assert torch.isfinite(u.grad).all()
    assert u.grad.abs().max() > 0
