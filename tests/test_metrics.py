"""Evaluation metrics against MONAI, hand computations and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddmr import metrics

SPACING = (0.7, 1.3, 2.1)


def blob(shape, centre, radii, rng=None):
    grid = np.indices(shape).astype(np.float64)
    r = sum(((grid[k] - centre[k]) / radii[k]) ** 2 for k in range(3))
    mask = r <= 1.0
    if rng is not None:  # ragged border
        mask &= ~((r > 0.7) & (rng.random(shape) < 0.3))
    return mask


def random_labels(seed, shape=(20, 18, 16)):
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, np.uint8)
    for value in (1, 2, 3):
        centre = rng.uniform(4, np.array(shape) - 4)
        radii = rng.uniform(2, 6, 3)
        out[blob(shape, centre, radii, rng)] = value
    return out


def onehot(labels, values):
    return torch.from_numpy(np.stack([labels == v for v in (0, *values)])[None].astype(np.float32))


@pytest.mark.parametrize("seed", range(4))
def test_hausdorff_and_dice_match_monai(seed):
    from monai.metrics import DiceMetric, compute_hausdorff_distance

    a, b = random_labels(seed), random_labels(seed + 100)
    values = [v for v in (1, 2, 3) if (a == v).any() and (b == v).any()]
    ya, yb = onehot(a, values), onehot(b, values)
    hd95 = compute_hausdorff_distance(yb, ya, percentile=95, spacing=list(SPACING))[0].numpy()
    hd = compute_hausdorff_distance(yb, ya, spacing=list(SPACING))[0].numpy()
    ours95 = metrics.hausdorff_per_label(a, b, SPACING, values, percentile=95)
    ours = metrics.hausdorff_per_label(a, b, SPACING, values)
    np.testing.assert_allclose(ours95, hd95, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours, hd, rtol=1e-5, atol=1e-5)
    dice = DiceMetric(include_background=False, reduction="none")(yb, ya)[0].numpy()
    np.testing.assert_allclose(metrics.dice_per_label(a, b, values), dice, rtol=1e-6)


def test_hausdorff_of_shifted_box_is_the_shift_in_mm():
    a = np.zeros((20, 20, 20), bool)
    a[5:12, 5:12, 5:12] = True
    b = np.roll(a, 3, axis=2)
    assert metrics.hausdorff(a, b, SPACING) == pytest.approx(3 * SPACING[2])
    assert metrics.hausdorff(a, a, SPACING, 95) == 0.0
    assert math.isnan(metrics.hausdorff(a, np.zeros_like(a), SPACING))


def test_centroid_tre_by_hand_with_anisotropic_spacing():
    fixed = np.zeros((12, 12, 12), np.uint8)
    moved = np.zeros_like(fixed)
    fixed[2:4, 2:4, 2:4] = 1          # centroid (2.5, 2.5, 2.5)
    moved[3:5, 2:4, 6:8] = 1          # centroid (3.5, 2.5, 6.5)
    fixed[8, 8, 8] = 2
    moved[8, 9, 8] = 2
    fixed[0, 0, 0] = 3                # label 3 only in fixed: ignored
    d1 = math.sqrt((1 * SPACING[0]) ** 2 + (4 * SPACING[2]) ** 2)
    d2 = SPACING[1]
    assert metrics.centroid_tre(fixed, moved, SPACING) == pytest.approx((d1 + d2) / 2)
    per = metrics.centroid_tre_per_label(fixed, moved, SPACING, [1, 2, 3])
    assert per[:2] == pytest.approx([d1, d2]) and math.isnan(per[2])


def test_dense_tre_folding_and_sdlogj():
    u = np.zeros((3, 8, 8, 8), np.float32)
    t = u.copy()
    t[1] = 2.0  # 2 voxels along H everywhere
    assert metrics.dense_tre(u, t, SPACING) == pytest.approx(2 * SPACING[1])
    mask = np.zeros((8, 8, 8), bool)
    mask[0] = True
    assert metrics.dense_tre(u, t, SPACING, mask) == pytest.approx(2 * SPACING[1])
    assert metrics.folding_percent(u) == 0.0 and metrics.sdlogj(u) == pytest.approx(0.0)
    fold = u.copy()
    fold[0] = -2.0 * np.indices((8, 8, 8))[0]  # x -> -x along D: det = -1 everywhere
    assert metrics.folding_percent(fold) == 100.0


def test_pair_metrics_identity():
    rng = np.random.default_rng(0)
    image = rng.random((16, 16, 16)).astype(np.float32)
    labels = random_labels(1, (16, 16, 16))
    out = metrics.pair_metrics(image, image, SPACING, np.zeros((3, 16, 16, 16)), labels, labels,
                               true_displacement=np.zeros((3, 16, 16, 16)))
    assert out["ncc"] == pytest.approx(1.0) and out["ssim"] == pytest.approx(1.0)
    assert out["dsc"] == pytest.approx(1.0) and out["hd95"] == 0.0 and out["tre"] == 0.0
    assert out["dense_tre"] == 0.0 and out["folding"] == 0.0
    assert set(metrics.UNITS) <= set(out)


masks = st.builds(lambda seed: random_labels(seed, (10, 9, 8)) == 1,
                  st.integers(0, 10_000))
spacings = st.tuples(*[st.floats(0.3, 3.0)] * 3)


@settings(max_examples=25, deadline=None)
@given(a=masks, b=masks, spacing=spacings)
def test_dice_and_hausdorff_are_symmetric_and_in_range(a, b, spacing):
    d_ab = metrics.dice_per_label(a.astype(np.uint8), b.astype(np.uint8), [1])[0]
    d_ba = metrics.dice_per_label(b.astype(np.uint8), a.astype(np.uint8), [1])[0]
    if a.any() or b.any():
        assert 0.0 <= d_ab <= 1.0 and d_ab == pytest.approx(d_ba)
    for percentile in (None, 95):
        h_ab = metrics.hausdorff(a, b, spacing, percentile)
        h_ba = metrics.hausdorff(b, a, spacing, percentile)
        if a.any() and b.any():
            diagonal = math.dist((0, 0, 0), np.array(a.shape) * spacing)
            assert 0.0 <= h_ab <= diagonal and h_ab == pytest.approx(h_ba)
        else:
            assert math.isnan(h_ab) and math.isnan(h_ba)
    if a.any() and b.any():
        assert metrics.hausdorff(a, b, spacing, 95) <= metrics.hausdorff(a, b, spacing) + 1e-9


def test_masks_touching_the_array_border_match_monai():
    from monai.metrics import compute_hausdorff_distance

    a = np.zeros((12, 10, 9), np.uint8)
    b = np.zeros_like(a)
    a[:6, 2:8, :] = 1       # touches three faces of the array
    b[1:9, 3:10, 2:9] = 1
    y = [torch.from_numpy(np.stack([m == 0, m == 1])[None].astype(np.float32)) for m in (a, b)]
    for percentile in (None, 95):
        reference = compute_hausdorff_distance(y[1], y[0], percentile=percentile,
                                               spacing=list(SPACING))[0, 0].item()
        assert metrics.hausdorff(a == 1, b == 1, SPACING, percentile) == pytest.approx(
            reference, abs=1e-5)


def test_pair_metrics_without_labels_or_truth():
    image = np.random.default_rng(2).random((12, 12, 12)).astype(np.float32)
    out = metrics.pair_metrics(image, image, SPACING, np.zeros((3, 12, 12, 12)))
    assert math.isnan(out["dsc"]) and math.isnan(out["tre"]) and math.isnan(out["dense_tre"])
    assert out["ncc"] == pytest.approx(1.0)
