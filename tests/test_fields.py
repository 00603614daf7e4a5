import numpy as np
import torch

from conftest import smooth_field, smooth_volume
from ddmr.spatial.field import (
    compose,
    identity_grid,
    integrate_velocity,
    invert,
    jacobian_determinant,
    resize_displacement,
)
from ddmr.spatial.warp import warp_image


def interior(x: torch.Tensor, margin: int = 4) -> torch.Tensor:
    return x[..., margin:-margin, margin:-margin, margin:-margin]


def test_identity_grid_holds_indices():
    g = identity_grid((3, 4, 5))
    assert g.shape == (1, 3, 3, 4, 5)
    assert g[0, 0, 2, 1, 1] == 2 and g[0, 1, 0, 3, 0] == 3 and g[0, 2, 0, 0, 4] == 4


def test_compose_equals_sequential_warps():
    shape = (24, 24, 24)
    vol = smooth_volume(shape)
    a, b = smooth_field(shape, 1.5, seed=1), smooth_field(shape, 1.5, seed=2)
    sequential = warp_image(warp_image(vol, b), a)
    composed = warp_image(vol, compose(a, b))
    assert (interior(sequential - composed)).abs().max() < 0.02


def test_compose_with_numerical_inverse_is_near_zero():
    u = smooth_field((32, 32, 32), amplitude=2.0, seed=3)
    v = invert(u)
    residual = compose(v, u)
    assert interior(residual).abs().max() < 0.05
    assert interior(compose(u, v)).abs().max() < 0.05
    # the negation is not the inverse: its residual is much larger
    assert interior(compose(-u, u)).abs().max() > 5 * interior(residual).abs().max()


def test_integrate_velocity_is_invertible_by_negation():
    v = smooth_field((24, 24, 24), amplitude=4.0, seed=4)
    forward = integrate_velocity(v)
    backward = integrate_velocity(-v)
    assert interior(compose(forward, backward)).abs().max() < 0.1
    assert jacobian_determinant(forward).min() > 0


def test_jacobian_of_affine_field_matches_formula():
    shape = (10, 12, 14)
    A = torch.tensor([[0.1, 0.05, 0.0], [0.0, -0.2, 0.1], [0.03, 0.0, 0.15]])
    x = identity_grid(shape)[0]  # (3, D, H, W)
    u = torch.einsum("ij,jdhw->idhw", A, x)[None]
    det = jacobian_determinant(u)
    expected = float(np.linalg.det(np.eye(3) + A.numpy()))
    assert torch.allclose(det, torch.full_like(det, expected), atol=1e-5)


def test_resize_displacement_keeps_physical_translation():
    u = torch.zeros(1, 3, 9, 9, 9)
    u[:, 0] = 2.0  # 2 voxels of the 9-grid = 1/4 of the extent
    up = resize_displacement(u, (17, 17, 17))
    assert torch.allclose(up[:, 0], torch.full_like(up[:, 0], 4.0), atol=1e-5)


def test_field_unit_changes_equal_the_float64_matrix_product():
    """voxels <-> mm <-> LPS go through one lean per-component product; it must equal
    the plain float64 einsum rounded to float32 (any layout, rotations; signs exactly)."""
    from ddmr.spatial.field import (
        displacement_to_lps_mm,
        lps_mm_to_displacement,
        mm_to_voxels,
        voxels_to_mm,
    )
    from ddmr.spatial.grid import LPS_FLIP, Geometry

    rng = np.random.default_rng(0)
    field = rng.normal(size=(3, 5, 6, 7)).astype(np.float32)
    affine = np.eye(4)
    affine[:3, :3] = rng.normal(size=(3, 3))
    geometry = Geometry(affine, (5, 6, 7))

    def reference(matrix, vectors):
        return np.einsum("ab,bijk->aijk", matrix, vectors.astype(np.float64)).astype(np.float32)

    np.testing.assert_allclose(voxels_to_mm(field, geometry), reference(affine[:3, :3], field),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mm_to_voxels(field, geometry),
                               reference(np.linalg.inv(affine[:3, :3]), field), rtol=1e-6,
                               atol=1e-7)
    lps = displacement_to_lps_mm(field, geometry)
    np.testing.assert_allclose(lps, np.moveaxis(reference(LPS_FLIP @ affine[:3, :3], field),
                                                0, -1), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(displacement_to_lps_mm(field, geometry, "mm"),
                                  np.moveaxis(field * np.array([-1, -1, 1], np.float32)[:, None,
                                                                                    None, None],
                                              0, -1))
    np.testing.assert_allclose(lps_mm_to_displacement(lps, geometry), field, atol=1e-4)
