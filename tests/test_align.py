"""The PyTorch affine pre-alignment: recovers known affine maps on a bundled head, and its
field algebra (compose_after, residual) is exact."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ddmr.data.cohort import sample_cohort
from ddmr.model.align import AffineAlignment, align_affine
from ddmr.spatial.field import identity_grid
from ddmr.spatial.warp import warp_image

SPACING = (4.0, 4.0, 4.0)


@pytest.fixture(scope="module")
def head() -> torch.Tensor:
    image = torch.from_numpy(sample_cohort(["itk-kmeans"])[0].image)[None, None]
    return F.interpolate(image, size=(48, 48, 48), mode="trilinear", align_corners=True)


def _rotation(degrees: tuple[float, float, float]) -> torch.Tensor:
    out = torch.eye(3)
    for axis, angle in enumerate(degrees):
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        i, j = [k for k in range(3) if k != axis]
        r = torch.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


def _known(matrix: torch.Tensor, translation_mm: tuple[float, float, float],
           shape=(48, 48, 48)) -> AffineAlignment:
    spacing = torch.tensor(SPACING)
    centre = (torch.tensor(shape, dtype=torch.float32) - 1) / 2 * spacing
    return AffineAlignment(matrix[None], torch.tensor([translation_mm]), centre, spacing)


@pytest.mark.parametrize("degrees, shift", [((8.0, -6.0, 5.0), (12.0, -20.0, 9.0)),
                                            ((0.0, 0.0, 0.0), (-25.0, 0.0, 18.0))])
def test_recovers_a_known_rigid_map(head, degrees, shift):
    truth = _known(_rotation(degrees), shift)
    true_field = truth.displacement(head.shape[2:])
    moving = warp_image(head, -true_field)  # roughly the inverse map, for a test image
    # the exact pull-back that aligns `moving` to `head` is the inverse of -true_field;
    # compare instead where it matters: the aligned image against the fixed one
    found = align_affine(head, moving, SPACING)
    aligned = warp_image(moving, found.displacement(head.shape[2:]))
    before = F.l1_loss(moving, head)
    after = F.l1_loss(aligned, head)
    assert after < 0.25 * before
    composed = warp_image(-true_field, found.displacement(head.shape[2:]), padding="border") \
        + found.displacement(head.shape[2:])
    brain = head[0, 0] > 0.1
    error_mm = (composed[0] * torch.tensor(SPACING).view(3, 1, 1, 1)).norm(dim=0)[brain]
    assert error_mm.median() < 1.5  # 1.5 mm on 4 mm voxels


def test_recovers_a_known_map_exactly_generated(head):
    """Moving made by warping with the inverse of an affine map P (so that moving(P x) =
    head(x)): the field found equals P's."""
    truth = _known(_rotation((6.0, 4.0, -7.0)) * 1.05, (10.0, -8.0, 15.0))
    field = truth.displacement(head.shape[2:])
    inverse = truth.residual(torch.zeros_like(field))
    padded = F.pad(head, (8,) * 6)  # the head with room to move, so nothing leaves the box
    moving = F.grid_sample(padded, _normalised(inverse + 8, padded.shape[2:]),
                           align_corners=True)
    found = align_affine(head, moving, SPACING).displacement(head.shape[2:])
    brain = head[0, 0] > 0.1
    error_mm = ((found - field)[0] * torch.tensor(SPACING).view(3, 1, 1, 1)).norm(dim=0)[brain]
    assert error_mm.mean() < 1.0


def _normalised(points: torch.Tensor, shape) -> torch.Tensor:
    grid = identity_grid(points.shape[2:]) + points
    scale = torch.tensor([2 / (n - 1) for n in shape]).view(1, 3, 1, 1, 1)
    return (grid * scale - 1).permute(0, 2, 3, 4, 1).flip(-1)


def test_compose_after_and_residual_are_inverse_operations():
    alignment = _known(_rotation((5.0, -3.0, 2.0)), (4.0, 2.0, -6.0), shape=(10, 12, 14))
    torch.manual_seed(0)
    network = torch.randn(1, 3, 10, 12, 14)
    full = alignment.compose_after(network)
    assert torch.allclose(alignment.residual(full), network, atol=1e-4)
    assert torch.allclose(alignment.compose_after(torch.zeros_like(network)),
                          alignment.displacement((10, 12, 14)), atol=1e-4)


def test_works_inside_inference_mode(head):
    with torch.inference_mode():
        found = align_affine(head, head.roll(3, dims=2), SPACING)
    assert found.translation[0, 0] == pytest.approx(3 * SPACING[0], abs=1.5)


def test_refuses_pairs_of_different_shapes(head):
    with pytest.raises(ValueError, match="must"):
        align_affine(head, head[:, :, 1:], SPACING)
