"""Property-based tests (hypothesis) of invariants that hold for any input (issue 10):
warping with a zero field, composition with the inverse, metric symmetries and ranges.
Dice/Hausdorff symmetry and ranges are in test_metrics.py, augmentation bounds in
test_augment_layer.py; these add what those do not cover."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conftest import smooth_field, smooth_volume
from ddmr import metrics
from ddmr.spatial.field import compose, invert, jacobian_determinant
from ddmr.spatial.warp import warp_image, warp_labels

QUICK = settings(max_examples=20, deadline=None)
FEW = settings(max_examples=8, deadline=None)  # for the examples that take ~0.3 s each

shapes = st.tuples(*[st.integers(2, 12)] * 3)
seeds = st.integers(0, 2**31 - 1)
spacings = st.tuples(*[st.floats(0.3, 4.0)] * 3)


def random_image(shape, seed, batch=1, channels=1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, *shape, generator=generator)


def random_labels(shape, seed, values: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, values, (1, 1, *shape), generator=generator, dtype=torch.uint8)


def interior(x: torch.Tensor, margin: int = 3) -> torch.Tensor:
    return x[..., margin:-margin, margin:-margin, margin:-margin]


# -- warping ---------------------------------------------------------------------------------


@QUICK
@given(shape=shapes, seed=seeds, batch=st.integers(1, 2), channels=st.integers(1, 3),
       padding=st.sampled_from(["zeros", "border", "reflection"]))
def test_zero_displacement_warps_any_image_to_itself(shape, seed, batch, channels, padding):
    image = random_image(shape, seed, batch, channels)
    zero = torch.zeros(batch, 3, *shape)
    assert torch.allclose(warp_image(image, zero, padding=padding), image, atol=1e-5)
    assert torch.equal(warp_image(image, zero, mode="nearest"), image)


@QUICK
@given(shape=shapes, seed=seeds, method=st.sampled_from(["onehot", "nearest"]),
       values=st.integers(1, 6))
def test_zero_displacement_keeps_any_label_map_exactly(shape, seed, method, values):
    labels = random_labels(shape, seed, values)
    zero = torch.zeros(1, 3, *shape)
    warped = warp_labels(labels, zero, method=method)
    assert warped.dtype == labels.dtype and torch.equal(warped, labels)


@QUICK
@given(shape=shapes, seed=seeds, value=st.floats(-100, 100), amplitude=st.floats(0, 20))
def test_a_constant_image_stays_constant_under_any_field_with_border_padding(
        shape, seed, value, amplitude):
    image = torch.full((1, 1, *shape), value)
    field = (random_image(shape, seed, channels=3) * 2 - 1) * amplitude
    warped = warp_image(image, field, padding="border")
    assert torch.allclose(warped, image, atol=1e-4 * max(1.0, abs(value)))


@QUICK
@given(shape=shapes, seed=seeds, method=st.sampled_from(["onehot", "nearest"]),
       amplitude=st.floats(0, 5))
def test_warped_labels_only_take_values_of_the_map_or_background(shape, seed, method,
                                                                 amplitude):
    labels = random_labels(shape, seed, 5)
    field = (random_image(shape, seed + 1, channels=3) * 2 - 1) * amplitude
    warped = warp_labels(labels, field, method=method)
    assert set(warped.unique().tolist()) <= set(labels.unique().tolist()) | {0}


# -- composition and inversion ------------------------------------------------------------------


@FEW
@given(shape=st.tuples(*[st.integers(16, 20)] * 3), seed=seeds, amplitude=st.floats(0.1, 1.5))
def test_composing_with_the_numerical_inverse_is_near_identity(shape, seed, amplitude):
    """For smooth fields without folding (det J >= 0.5), ``invert`` gives ``v`` with
    ``compose(v, u) ~ 0`` and ``compose(u, v) ~ 0`` away from the border, to within a tenth
    of the field's amplitude (about 0.05 at most here, see test_fields.py)."""
    u = smooth_field(shape, amplitude, seed=seed % 10_000)
    assume(float(jacobian_determinant(u).min()) >= 0.5)
    v = invert(u)
    tolerance = 0.1 * amplitude
    assert float(interior(compose(v, u)).abs().max()) <= tolerance
    assert float(interior(compose(u, v)).abs().max()) <= tolerance


@QUICK
@given(shape=st.tuples(*[st.integers(4, 12)] * 3), seed=seeds, amplitude=st.floats(0, 3))
def test_composing_with_zero_changes_nothing(shape, seed, amplitude):
    u = (random_image(shape, seed, channels=3) * 2 - 1) * amplitude
    zero = torch.zeros_like(u)
    assert torch.allclose(compose(u, zero), u, atol=1e-6)
    assert torch.allclose(compose(zero, u), u, atol=1e-5)
    assert torch.allclose(invert(zero), zero)


# -- metrics ------------------------------------------------------------------------------------


@FEW
@given(shape=st.tuples(*[st.integers(11, 14)] * 3), seed=seeds, noise=st.floats(0, 1))
def test_ncc_and_ssim_are_symmetric_in_range_and_one_for_equal_images(shape, seed, noise):
    """(The 3D SSIM window is 11 voxels: smaller volumes are refused.)"""
    a = smooth_volume(shape, seed=seed % 10_000)[0, 0].numpy()
    rng = np.random.default_rng(seed)
    b = np.clip(a + noise * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    assume(b.max() > b.min())
    for metric in (metrics.ncc, metrics.ssim):
        ab, ba = metric(a, b), metric(b, a)
        assert -1 - 1e-9 <= ab <= 1 + 1e-9
        assert math.isclose(ab, ba, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(metric(a, a), 1.0, abs_tol=1e-9)


@QUICK
@given(shape=st.tuples(*[st.integers(4, 10)] * 3), seed=seeds, spacing=spacings,
       amplitude=st.floats(0, 6))
def test_field_metrics_are_in_range(shape, seed, spacing, amplitude):
    u = ((random_image(shape, seed, channels=3) * 2 - 1) * amplitude)[0].numpy()
    t = ((random_image(shape, seed + 1, channels=3) * 2 - 1) * amplitude)[0].numpy()
    assert 0.0 <= metrics.folding_percent(u) <= 100.0
    assert metrics.sdlogj(u) >= 0.0
    assert metrics.folding_percent(np.zeros_like(u)) == 0.0
    assert metrics.sdlogj(np.zeros_like(u)) == 0.0
    forward, backward = metrics.dense_tre(u, t, spacing), metrics.dense_tre(t, u, spacing)
    assert forward >= 0.0 and math.isclose(forward, backward, rel_tol=1e-6, abs_tol=1e-9)
    assert metrics.dense_tre(u, u, spacing) == 0.0
    largest = 2 * amplitude * math.sqrt(sum(s * s for s in spacing))
    assert forward <= largest + 1e-4


@QUICK
@given(shape=st.tuples(*[st.integers(6, 12)] * 3), seed=seeds, spacing=spacings)
def test_label_metrics_of_a_map_with_itself_and_symmetry(shape, seed, spacing):
    a = random_labels(shape, seed, 4)[0, 0].numpy()
    b = random_labels(shape, seed + 1, 4)[0, 0].numpy()
    values = metrics.foreground_labels(a)
    assume(values)
    assert np.allclose(metrics.dice_per_label(a, a, values), 1.0)
    assert metrics.hausdorff(a == values[0], a == values[0], spacing) == 0.0
    assert metrics.centroid_tre(a, a, spacing) == 0.0
    dice = metrics.dice_per_label(a, b, values)
    assert np.all((dice >= 0) & (dice <= 1) | np.isnan(dice))
    ab = metrics.centroid_tre(a, b, spacing, values)
    ba = metrics.centroid_tre(b, a, spacing, values)
    assert (math.isnan(ab) and math.isnan(ba)) or math.isclose(ab, ba, rel_tol=1e-9)
