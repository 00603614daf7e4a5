"""The augmentation layer end to end: identity, translation, rotation, the ground truth
against the closed form, the inverse that makes the moving image, bounds, determinism,
labels, preprocessing and devices."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial.transform import Rotation

from conftest import smooth_volume
from ddmr.augment import AugmentationConfig, AugmentationLayer
from ddmr.augment.spline import sample
from ddmr.errors import ConfigError
from ddmr.spatial.field import compose, identity_grid, jacobian_determinant
from ddmr.spatial.warp import warp_image, warp_labels

F64 = torch.float64
GEOMETRY_ONLY = AugmentationConfig(intensity=False, normalise=False)
# ~150 x 130 x 140 mm, the size of a head, on a small anisotropic grid
SHAPE, SPACING = (48, 44, 40), (3.2, 3.0, 3.6)


def physical_points(shape, spacing) -> torch.Tensor:
    """Voxel centres (N, 3) in mm, float64."""
    grid = identity_grid(shape, dtype=F64)[0].reshape(3, -1).T
    return grid * torch.tensor(spacing, dtype=F64)


def source_inside(u: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """(B, 1, D, H, W) mask of voxels whose point x + u(x) lies inside the volume."""
    size = torch.tensor(u.shape[2:], dtype=u.dtype).view(1, 3, 1, 1, 1)
    pos = identity_grid(u.shape[2:], dtype=u.dtype) + u
    return ((pos >= margin) & (pos <= size - 1 - margin)).all(dim=1, keepdim=True)


def ncc(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def rigid_and_tps_parts(layer, pair, spacing):
    """Closed form of the ground truth at every voxel: rigid part (N, 3) and TPS part
    R w(p) (N, 3), in mm, with w evaluated at scattered points (not the dense path)."""
    shape = pair.fixed.shape[2:]
    plan = layer.plan(shape, spacing)
    params = pair.parameters
    rot = torch.from_numpy(Rotation.from_euler("XYZ", params.rotation[0].numpy(),
                                               degrees=True).as_matrix())
    p = physical_points(shape, spacing)
    centre = (torch.tensor(shape, dtype=F64) - 1) * torch.tensor(spacing, dtype=F64) / 2
    rigid = (p - centre) @ (rot - torch.eye(3, dtype=F64)).T + params.translation[0]
    tps = torch.zeros_like(p)
    if params.tps_displacements is not None:
        coef = plan.tps_coefficients(params.tps_displacements[0])
        tps = sample(coef, plan.tps_grid.index(p))[0] @ rot.T
    return rigid, tps, rot, centre


def field_mm(u: torch.Tensor, spacing) -> torch.Tensor:
    """(1, 3, D, H, W) voxels -> (N, 3) mm float64."""
    return u[0].double().reshape(3, -1).T * torch.tensor(spacing, dtype=F64)


# ----- identity ----------------------------------------------------------------------
def test_all_parts_off_gives_the_fixed_image_and_a_zero_field():
    fixed = smooth_volume((20, 22, 24))
    labels = (fixed > 0.5).to(torch.uint8)
    config = AugmentationConfig(intensity=False, rigid=False, nonrigid=False)
    pair = AugmentationLayer(config, seed=0)(fixed, labels, (1.0, 1.5, 2.0))
    assert torch.equal(pair.moving, pair.fixed) and torch.equal(pair.fixed, fixed)
    assert torch.equal(pair.moving_labels, labels)
    assert not pair.displacement.any()


def test_zero_bounds_give_the_identity_through_the_full_pipeline():
    fixed = smooth_volume((20, 22, 24))
    config = AugmentationConfig(intensity=False, max_rotation=0, max_translation=0, max_tps=0)
    pair = AugmentationLayer(config, seed=0)(fixed, None, (1.0, 1.5, 2.0))
    assert pair.displacement.abs().max() < 1e-5
    assert (pair.moving - fixed).abs().max() < 1e-5


# ----- rigid -------------------------------------------------------------------------
def test_pure_translation_gives_t_over_spacing_everywhere():
    fixed = smooth_volume(SHAPE, blobs=8)
    config = AugmentationConfig(intensity=False, normalise=False, nonrigid=False,
                                max_rotation=0.0, max_translation=20.0)
    pair = AugmentationLayer(config, seed=4)(fixed, None, SPACING)
    t = pair.parameters.translation[0]
    assert t.abs().min() > 1.0  # a real translation along every axis
    expected = (t / torch.tensor(SPACING, dtype=F64)).float().view(1, 3, 1, 1, 1)
    assert torch.allclose(pair.displacement, expected.expand_as(pair.displacement), atol=1e-4)
    # the moving image is the fixed one shifted by t (scipy, linear interpolation)
    shift = (t / torch.tensor(SPACING, dtype=F64)).numpy()
    ref = ndimage.shift(fixed[0, 0].double().numpy(), shift, order=1, mode="constant")
    inner = tuple(slice(math.ceil(abs(s)) + 1, n - math.ceil(abs(s)) - 1)
                  for s, n in zip(shift, SHAPE, strict=True))
    np.testing.assert_allclose(pair.moving[0, 0].numpy()[inner], ref[inner], atol=1e-5)


def test_pure_rotation_matches_the_closed_form_about_the_centre():
    fixed = smooth_volume(SHAPE, blobs=8)
    config = AugmentationConfig(intensity=False, normalise=False, nonrigid=False,
                                max_translation=0.0)
    layer = AugmentationLayer(config, seed=5)
    pair = layer(fixed, None, SPACING)
    assert pair.parameters.rotation.abs().min() > 1.0
    rigid, _, _, _ = rigid_and_tps_parts(layer, pair, SPACING)
    assert (field_mm(pair.displacement, SPACING) - rigid).abs().max() < 1e-3
    # the centre of the volume does not move
    centre = tuple((n - 1) // 2 for n in SHAPE)
    exact_centre = all(n % 2 == 1 for n in SHAPE)
    if exact_centre:
        assert pair.displacement[0, :, centre[0], centre[1], centre[2]].abs().max() < 1e-4


# ----- the full transform ------------------------------------------------------------
@pytest.fixture(scope="module")
def full_pair():
    """All geometric parts on at the paper's bounds, on a smooth volume."""
    fixed = smooth_volume(SHAPE, seed=1, blobs=10)
    layer = AugmentationLayer(GEOMETRY_ONLY, seed=11)
    return layer, fixed, layer(fixed, None, SPACING, )


def test_ground_truth_equals_the_closed_form(full_pair):
    layer, _, pair = full_pair
    rigid, tps, _, _ = rigid_and_tps_parts(layer, pair, SPACING)
    assert tps.norm(dim=1).max() > 2.0  # the non-rigid part is really there
    err = (field_mm(pair.displacement, SPACING) - rigid - tps).norm(dim=1)
    assert err.max() < 1e-3


def test_moving_image_is_made_by_the_exact_inverse(full_pair):
    """For every voxel q of the moving image, the source point p = q + v(q) maps back
    onto q through the ground-truth map phi (evaluated exactly, not interpolated)."""
    layer, _, pair = full_pair
    plan = layer.plan(SHAPE, SPACING)
    params = pair.parameters
    rot = torch.from_numpy(Rotation.from_euler("XYZ", params.rotation[0].numpy(),
                                               degrees=True).as_matrix())
    q = physical_points(SHAPE, SPACING)
    p = q + field_mm(pair.generating_displacement, SPACING)
    inside = ((p >= 0) & (p <= plan.extent)).all(dim=1)
    coef = plan.tps_coefficients(params.tps_displacements[0])
    w = sample(coef, plan.tps_grid.index(p))[0]
    phi = (p + w - plan.centre) @ rot.T + plan.centre + params.translation[0]
    err = (phi - q).norm(dim=1)[inside]
    assert inside.double().mean() > 0.4
    # a small fraction of a voxel (3 mm here); the negated forward map is off by mm
    assert err.mean() < 0.06 and torch.quantile(err, 0.99) < 0.4
    negated = q - field_mm(pair.generating_displacement, SPACING)
    neg_err = (negated - (q + field_mm(pair.displacement, SPACING))).norm(dim=1)[inside]
    assert neg_err.mean() > 20 * err.mean()


def test_warping_the_moving_image_with_the_ground_truth_gives_the_fixed_image(full_pair):
    _, fixed, pair = full_pair
    u, v = pair.displacement, pair.generating_displacement
    mask = source_inside(u)
    back = warp_image(pair.moving, u)
    good = ncc(back[mask], fixed[mask])
    assert good >= 0.99
    # the original code's ground truth, the negated forward map, does clearly worse
    neg_mask = mask & source_inside(-v)
    bad = ncc(warp_image(pair.moving, -v)[neg_mask], fixed[neg_mask])
    assert (1 - bad) > 10 * (1 - good)
    # and so do the displacement residuals: compose(g, v) = 0 for the true inverse g
    residual = compose(u, v).norm(dim=1, keepdim=True)[mask]
    neg_residual = compose(-v, v).norm(dim=1, keepdim=True)[neg_mask]
    assert residual.mean() < 0.05 and neg_residual.mean() > 10 * residual.mean()


def test_displacements_respect_the_bounds(full_pair):
    layer, _, pair = full_pair
    rigid, _, _, centre = rigid_and_tps_parts(layer, pair, SPACING)
    u = field_mm(pair.displacement, SPACING)
    config = layer.config
    assert ((u - rigid).norm(dim=1).max()) <= config.max_tps + 1e-3
    assert pair.parameters.rotation.abs().max() <= config.max_rotation
    assert pair.parameters.translation.abs().max() <= config.max_translation
    assert pair.parameters.tps_displacements.norm(dim=-1).max() <= config.max_tps + 1e-9
    p = physical_points(SHAPE, SPACING)
    bound = (2 * math.sin(math.radians(3 * config.max_rotation) / 2) * (p - centre).norm(dim=1)
             + math.sqrt(3) * config.max_translation + config.max_tps)
    assert (u.norm(dim=1) <= bound + 1e-3).all()


def test_the_spline_passes_through_the_drawn_control_displacements():
    """Control points fall on nodes of the TPS grid, where the dense field equals the
    drawn (limited) displacement exactly."""
    shape, spacing = (29, 29, 29), (4.0, 4.0, 4.0)  # 7 cells of 4 voxels per control cell
    config = AugmentationConfig(intensity=False, rigid=False, tps_grid=8,
                                tps_samples_per_cell=4)
    layer = AugmentationLayer(config, seed=2)
    pair = layer(smooth_volume(shape), None, spacing)
    values = pair.parameters.tps_displacements[0]
    idx = (pair.parameters.control_points / (4.0 * 4)).round().long()  # control index
    u = pair.displacement[0].double() * 4.0  # mm
    at_controls = u[:, idx[:, 0] * 4, idx[:, 1] * 4, idx[:, 2] * 4].T
    assert torch.allclose(at_controls, values, atol=1e-3)
    assert values.norm(dim=1).max() > 1.0


def test_fixed_border_keeps_the_outer_control_ring_still():
    config = AugmentationConfig(intensity=False, rigid=False, tps_grid=5, tps_fix_border=True)
    pair = AugmentationLayer(config, seed=3)(smooth_volume((24, 24, 24)), None, (5.0,) * 3)
    values = pair.parameters.tps_displacements[0].view(5, 5, 5, 3)
    assert not values[0].any() and not values[-1].any() and not values[:, 0].any()
    assert values[1:-1, 1:-1, 1:-1].norm(dim=-1).max() > 1.0
    corners = pair.displacement[0, :, [0, -1], [0, -1], [0, -1]]
    assert corners.abs().max() < 1e-4


def test_jacobian_guard_keeps_the_map_far_from_folding():
    config = AugmentationConfig(intensity=False, rigid=False, max_tps=8.0, tps_min_jacobian=0.6)
    pair = AugmentationLayer(config, seed=0)(smooth_volume((32, 32, 32)), None, (3.0,) * 3)
    assert jacobian_determinant(pair.displacement).min() > 0.5


# ----- determinism, labels, intensity ------------------------------------------------
def test_same_seed_gives_bit_identical_pairs_and_another_seed_does_not():
    fixed = smooth_volume((24, 26, 28))
    labels = (fixed * 4).to(torch.uint8)
    layer = AugmentationLayer(seed=7)
    a = layer(fixed, labels, (4.0, 5.0, 4.5))
    b = AugmentationLayer(seed=7)(fixed, labels, (4.0, 5.0, 4.5))  # a fresh layer, fresh plan
    for name in ("fixed", "moving", "displacement", "generating_displacement", "moving_labels"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    # an explicit generator is the same as the seed; another seed gives another pair
    gen = torch.Generator().manual_seed(7)
    assert torch.equal(layer(fixed, labels, (4.0, 5.0, 4.5), generator=gen).moving, a.moving)
    c = layer(fixed, labels, (4.0, 5.0, 4.5), generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a.displacement, c.displacement)
    # the layer's own generator moves on: its next pair differs
    assert not torch.equal(layer(fixed, labels, (4.0, 5.0, 4.5)).displacement, a.displacement)


def test_labels_keep_their_label_set_and_follow_the_generating_field():
    fixed = smooth_volume((28, 28, 28), blobs=6)
    values = torch.tensor([0, 3, 7, 200], dtype=torch.uint8)
    labels = values[(fixed * 3.999).long()]
    for method in ("onehot", "nearest"):
        config = AugmentationConfig(label_method=method)
        pair = AugmentationLayer(config, seed=1)(fixed, labels, (5.0, 5.0, 5.0))
        assert pair.moving_labels.dtype == torch.uint8
        assert set(pair.moving_labels.unique().tolist()) <= {0, 3, 7, 200}
        assert len(pair.moving_labels.unique()) >= 3
        assert torch.equal(pair.fixed_labels, labels)
        assert torch.equal(pair.moving_labels,
                           warp_labels(labels, pair.generating_displacement, method))


def test_intensity_augmentation_is_independent_for_fixed_and_moving():
    fixed = smooth_volume((20, 20, 20))
    config = AugmentationConfig(rigid=False, nonrigid=False)
    pair = AugmentationLayer(config, seed=3)(fixed, None, (1.0, 1.0, 1.0))
    gamma = pair.parameters.gamma[0]
    assert gamma[0] != gamma[1]
    for image in (pair.fixed, pair.moving):
        assert image.min() == 0 and image.max() == 1
    assert (pair.fixed - pair.moving).abs().max() > 0.01


def test_batches_are_augmented_sample_by_sample():
    fixed = torch.cat([smooth_volume((20, 20, 20), seed=s) for s in range(3)])
    pair = AugmentationLayer(seed=0)(fixed, None, (6.0, 6.0, 6.0))
    assert pair.moving.shape == (3, 1, 20, 20, 20) and pair.displacement.shape == (3, 3, 20, 20,
                                                                                    20)
    assert pair.parameters.rotation.shape == (3, 3)
    assert not torch.equal(pair.displacement[0], pair.displacement[1])


def test_output_shape_resizes_first_and_reports_the_new_spacing():
    fixed = smooth_volume((30, 40, 20)) * 80 + 10
    layer = AugmentationLayer(AugmentationConfig(intensity=False), seed=0, output_shape=(16,) * 3)
    pair = layer(fixed, None, (1.0, 1.0, 2.0))
    assert pair.fixed.shape == (1, 1, 16, 16, 16)
    assert pair.spacing == pytest.approx((29 / 15, 39 / 15, 38 / 15))
    assert pair.fixed.min() == 0 and pair.fixed.max() == 1


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="Generator or a seed"):
        AugmentationLayer()(torch.rand(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        AugmentationLayer(seed=0)(torch.rand(8, 8, 8))
    with pytest.raises(ValueError, match="integer"):
        AugmentationLayer(seed=0)(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8))
    with pytest.raises(ConfigError, match="gamma_range"):
        AugmentationConfig(gamma_range=(2.0, 0.5))
    with pytest.raises(ConfigError, match="max_tps"):
        AugmentationConfig(max_tps=-1)


# ----- property test over draws and bounds ------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1),
       shape=st.tuples(*[st.integers(6, 16)] * 3),
       spacing=st.tuples(*[st.floats(0.5, 8.0)] * 3),
       rotation=st.floats(0.0, 30.0), translation=st.floats(0.0, 50.0),
       tps=st.floats(0.0, 12.0), grid=st.integers(2, 8),
       kernel=st.sampled_from(["r2logr", "r"]), guard=st.sampled_from([0.0, 0.2, 0.5]))
def test_any_draw_is_finite_and_within_bounds(seed, shape, spacing, rotation, translation,
                                              tps, grid, kernel, guard):
    config = AugmentationConfig(max_rotation=rotation, max_translation=translation,
                                max_tps=tps, tps_grid=grid, tps_kernel=kernel,
                                tps_min_jacobian=guard)
    fixed = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(seed))
    labels = (fixed * 3).to(torch.uint8)
    layer = AugmentationLayer(config, seed=seed)
    pair = layer(fixed, labels, spacing)
    for tensor in (pair.fixed, pair.moving, pair.displacement, pair.generating_displacement):
        assert torch.isfinite(tensor).all()
    assert pair.fixed.min() >= 0 and pair.fixed.max() <= 1
    assert pair.moving.min() >= 0 and pair.moving.max() <= 1
    assert set(pair.moving_labels.unique().tolist()) <= set(labels.unique().tolist())
    params = pair.parameters
    assert params.tps_displacements.norm(dim=-1).max() <= tps + 1e-9
    rigid, _, _, centre = rigid_and_tps_parts(layer, pair, spacing)
    u = field_mm(pair.displacement, spacing)
    scale = 1 + max(spacing)  # float32 rounding of fields of up to ~100 mm
    assert (u - rigid).norm(dim=1).max() <= tps + 1e-4 * scale
    p = physical_points(shape, spacing)
    bound = (2 * math.sin(math.radians(min(3 * rotation, 180.0)) / 2) * (p - centre).norm(dim=1)
             + math.sqrt(3) * translation + tps)
    assert (u.norm(dim=1) <= bound + 1e-4 * scale).all()


# ----- devices -----------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_gives_the_cpu_result():
    fixed = smooth_volume((32, 32, 32))
    labels = (fixed * 3).to(torch.uint8)
    cpu = AugmentationLayer(seed=1)(fixed, labels, (4.0, 4.0, 4.0))
    gpu = AugmentationLayer(seed=1)(fixed.cuda(), labels.cuda(), (4.0, 4.0, 4.0))
    assert gpu.moving.is_cuda and gpu.displacement.is_cuda and gpu.moving_labels.is_cuda
    assert torch.allclose(gpu.displacement.cpu(), cpu.displacement, atol=1e-4)
    assert torch.allclose(gpu.moving.cpu(), cpu.moving, atol=1e-3)
    assert (gpu.moving_labels.cpu() != cpu.moving_labels).float().mean() < 1e-3
