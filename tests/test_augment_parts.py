"""The augmentation layer's building blocks against independent references: thin plate
splines (scipy), cubic B-splines, rotations (scipy), intensity formulas, preprocessing."""

import numpy as np
import pytest
import torch
from scipy.interpolate import RBFInterpolator
from scipy.spatial.transform import Rotation

from ddmr.augment import adjust_intensity, control_grid, rotation_matrix, thin_plate_spline
from ddmr.augment.intensity import draw_brightness, draw_gamma
from ddmr.augment.spline import (
    basis_matrix,
    bezier_matrix,
    interpolation_matrix,
    prefilter_matrix,
    sample,
    separable,
)
from ddmr.augment.tps import border_mask, draw_control_displacements
from ddmr.prepare.recipe import minmax_normalise, preprocess, resize_labels

F64 = torch.float64


# ----- thin plate splines ------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["r2logr", "r"])
def test_tps_interpolates_the_control_displacements(kernel):
    centres = control_grid((120.0, 90.0, 150.0), 5)
    values = draw_control_displacements(1, len(centres), 6.0, torch.Generator().manual_seed(1))[0]
    at_centres = thin_plate_spline(centres, values, centres, kernel)
    assert torch.allclose(at_centres, values, atol=1e-9)
    assert values.abs().max() > 1.0  # a real displacement, not zeros


@pytest.mark.parametrize(("kernel", "scipy_kernel"), [("r2logr", "thin_plate_spline"),
                                                     ("r", "linear")])
def test_tps_matches_scipy_rbf_interpolator(kernel, scipy_kernel):
    rng = np.random.default_rng(0)
    centres = control_grid((100.0, 100.0, 100.0), 4)
    values = torch.from_numpy(rng.uniform(-6, 6, (len(centres), 3)))
    points = torch.from_numpy(rng.uniform(-10, 110, (200, 3)))
    ours = thin_plate_spline(centres, values, points, kernel).numpy()
    # scipy's "linear" kernel is -r; with the degree-1 polynomial the interpolant is the same
    ref = RBFInterpolator(centres.numpy(), values.numpy(), kernel=scipy_kernel, degree=1)(
        points.numpy())
    np.testing.assert_allclose(ours, ref, atol=1e-7)


def test_tps_reproduces_affine_maps():
    centres = control_grid((80.0, 60.0, 70.0), 4)
    matrix = torch.tensor([[0.1, 0.0, -0.05], [0.02, -0.1, 0.0], [0.0, 0.03, 0.07]], dtype=F64)
    values = centres @ matrix.T + torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    points = torch.rand(50, 3, dtype=F64) * 80
    expected = points @ matrix.T + torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    assert torch.allclose(thin_plate_spline(centres, values, points), expected, atol=1e-9)


def test_control_grid_and_border_mask():
    grid = control_grid((10.0, 20.0, 30.0), 8)
    assert grid.shape == (512, 3)
    assert torch.equal(grid[0], torch.zeros(3, dtype=F64))
    assert torch.allclose(grid[-1], torch.tensor([10.0, 20.0, 30.0], dtype=F64))
    assert int(border_mask(8).sum()) == 8**3 - 6**3


def test_control_displacements_lie_in_the_ball():
    values = draw_control_displacements(4, 300, 6.0, torch.Generator().manual_seed(0))
    norms = values.norm(dim=-1)
    assert norms.max() <= 6.0 + 1e-12
    # uniform in the ball: P(|x| < r/2) = 1/8
    assert 0.08 < float((norms < 3.0).double().mean()) < 0.17


# ----- cubic B-splines ---------------------------------------------------------------
def test_spline_interpolates_nodes_and_reproduces_affine_functions():
    n = 9
    nodes = torch.arange(n, dtype=F64)
    assert torch.allclose(interpolation_matrix(nodes, n), torch.eye(n, dtype=F64), atol=1e-12)
    x = torch.linspace(0, n - 1, 101, dtype=F64)
    line = 2.5 * nodes - 4
    assert torch.allclose(interpolation_matrix(x, n) @ line, 2.5 * x - 4, atol=1e-12)
    assert torch.allclose(interpolation_matrix(x, n, derivative=True) @ line,
                          torch.full_like(x, 2.5), atol=1e-12)


def test_spline_interpolates_a_smooth_function_accurately():
    n = 12
    nodes = torch.arange(n, dtype=F64)
    x = torch.linspace(2, n - 3, 200, dtype=F64)
    values = torch.sin(nodes * 0.5)
    err = (interpolation_matrix(x, n) @ values - torch.sin(x * 0.5)).abs().max()
    assert err < 2e-3  # fourth order: (0.5)^4 / 384 ~ 1.6e-4 plus end effects


def test_scattered_sampling_matches_separable_evaluation_and_finite_differences():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(2, 6, 7, 8, generator=gen, dtype=F64)
    coef = separable(values, [prefilter_matrix(s) for s in values.shape[1:]])
    points = torch.rand(60, 3, generator=gen, dtype=F64) * torch.tensor([3.0, 4.0, 5.0],
                                                                        dtype=F64) + 1
    got, jac = sample(coef, points, derivatives=True)
    ref = torch.stack([
        separable(coef, [basis_matrix(p[a:a + 1], coef.shape[a + 1]) for a in range(3)])
        .reshape(2) for p in points])
    assert torch.allclose(got, ref, atol=1e-12)
    for axis in range(3):
        h = torch.zeros(3, dtype=F64)
        h[axis] = 1e-6
        fd = (sample(coef, points + h)[0] - sample(coef, points - h)[0]) / 2e-6
        assert torch.allclose(jac[:, :, axis], fd, atol=1e-7)
    # at the nodes the spline returns the node values
    inner = torch.tensor([[2.0, 3.0, 4.0], [1.0, 1.0, 1.0]], dtype=F64)
    at_nodes = sample(coef, inner)[0]
    assert torch.allclose(at_nodes[0], values[:, 2, 3, 4], atol=1e-12)
    assert torch.allclose(at_nodes[1], values[:, 1, 1, 1], atol=1e-12)


def test_separable_equals_einsum():
    gen = torch.Generator().manual_seed(1)
    field = torch.randn(2, 3, 4, 5, 6, generator=gen, dtype=F64)
    mats = [torch.randn(k, n, generator=gen, dtype=F64) for k, n in ((7, 4), (3, 5), (2, 6))]
    ref = torch.einsum("bcxyz,ix,jy,kz->bcijk", field, *mats)
    assert torch.allclose(separable(field, mats), ref, atol=1e-12)


def test_bezier_net_bounds_the_spline():
    gen = torch.Generator().manual_seed(2)
    n = 14
    coef = torch.randn(n, generator=gen, dtype=F64)
    net = bezier_matrix(n, 3, 10) @ coef
    x = torch.linspace(3, 10, 5001, dtype=F64)
    curve = basis_matrix(x, n) @ coef
    assert curve.max() <= net.max() + 1e-12 and curve.min() >= net.min() - 1e-12
    # every third net point is the spline at a node: the bound is attained there
    assert torch.allclose(net[::3], basis_matrix(torch.arange(3, 11, dtype=F64), n) @ coef)


# ----- rotations ---------------------------------------------------------------------
def test_rotation_matrix_matches_scipy_intrinsic_xyz():
    angles = torch.tensor([[10.0, -7.0, 3.0], [0.0, 0.0, 90.0], [-25.0, 40.0, 12.0]], dtype=F64)
    ours = rotation_matrix(angles).numpy()
    ref = Rotation.from_euler("XYZ", angles.numpy(), degrees=True).as_matrix()
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    eye = np.eye(3)
    for r in ours:
        np.testing.assert_allclose(r @ r.T, eye, atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)


# ----- intensity ---------------------------------------------------------------------
def test_gamma_and_brightness_draws_respect_their_ranges():
    gen = torch.Generator().manual_seed(0)
    gamma = draw_gamma(2000, (0.5, 2.0), gen)
    assert gamma.min() >= 0.5 and gamma.max() <= 2.0
    # log-uniform: half of the draws below 1
    assert 0.45 < float((gamma < 1).double().mean()) < 0.55
    shift = draw_brightness(2000, 0.2, gen)
    assert shift.abs().max() <= 0.2 and shift.min() < -0.18 and shift.max() > 0.18


def test_adjust_intensity_matches_the_documented_formula():
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(2, 1, 5, 6, 7, generator=gen)
    gamma = torch.tensor([0.6, 1.7], dtype=F64)
    shift = torch.tensor([0.15, -0.1], dtype=F64)
    out = adjust_intensity(image, gamma, shift)
    for b in range(2):
        x = image[b].double().numpy()
        y = np.clip(np.clip(x, 0, 1) ** gamma[b].item() + shift[b].item(), 0, 1)
        y = (y - y.min()) / (y.max() - y.min())
        np.testing.assert_allclose(out[b].numpy(), y, atol=1e-5)
    assert out.min() == 0 and out.max() == 1
    raw = adjust_intensity(image, gamma, shift, normalise=False)
    # a positive shift saturates the brightest voxels, a negative one crushes the darkest
    assert (raw[0] == 1).any() and (raw[1] == 0).any()


def test_minmax_normalise_per_sample_and_constant_images():
    image = torch.stack([torch.full((1, 3, 3, 3), 5.0), torch.arange(27.0).view(1, 3, 3, 3)])
    out = minmax_normalise(image)
    assert torch.equal(out[0], torch.zeros(1, 3, 3, 3))
    assert out[1].min() == 0 and out[1].max() == 1


# ----- preprocessing ----------------------------------------------------------------
def test_preprocess_resizes_keeps_the_extent_and_normalises():
    image = torch.rand(1, 1, 20, 30, 40) * 100 + 5
    labels = torch.randint(0, 4, (1, 1, 20, 30, 40), dtype=torch.uint8)
    out, out_labels, spacing = preprocess(image, (1.0, 2.0, 0.5), (16, 16, 16), labels)
    assert out.shape == (1, 1, 16, 16, 16) and out_labels.shape == (1, 1, 16, 16, 16)
    assert out.min() == 0 and out.max() == 1
    assert spacing == pytest.approx((19 / 15, 58 / 15, 19.5 / 15))
    # corners are kept (align_corners): the corner voxels map onto each other
    assert out_labels[0, 0, 0, 0, 0] == labels[0, 0, 0, 0, 0]
    assert out_labels[0, 0, -1, -1, -1] == labels[0, 0, -1, -1, -1]
    assert set(out_labels.unique().tolist()) <= set(labels.unique().tolist())
    assert out_labels.dtype == torch.uint8


def test_resize_labels_matches_nearest_index_mapping():
    labels = torch.arange(10, dtype=torch.uint8).view(1, 1, 10, 1, 1).expand(1, 1, 10, 2, 2)
    out = resize_labels(labels.contiguous(), (4, 2, 2))
    # new voxel i sits at old index i * 9 / 3 = 0, 3, 6, 9
    assert out[0, 0, :, 0, 0].tolist() == [0, 3, 6, 9]
