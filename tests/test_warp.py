import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from conftest import smooth_field, smooth_volume
from ddmr.spatial.warp import grid_sample_3d, warp_image, warp_labels


def test_zero_displacement_is_identity(volume):
    zero = torch.zeros(1, 3, *volume.shape[2:])
    assert torch.allclose(warp_image(volume, zero), volume, atol=1e-5)


def test_integer_translation_shifts_exactly(volume):
    shift = (2, -3, 1)  # voxels along D, H, W
    u = torch.zeros(1, 3, *volume.shape[2:])
    for axis, s in enumerate(shift):
        u[:, axis] = s
    warped = warp_image(volume, u)
    # warped(x) = moving(x + s): compare the region where x + s stays inside
    D, H, W = volume.shape[2:]
    expected = volume[0, 0, 2:, :H - 3, 1:]
    got = warped[0, 0, : D - 2, 3:, : W - 1]
    assert torch.allclose(got, expected, atol=1e-5)


def test_warp_matches_scipy_map_coordinates(volume, field):
    warped = warp_image(volume, field)[0, 0].numpy()
    coords = np.indices(volume.shape[2:]).astype(np.float32) + field[0].numpy()
    reference = ndimage.map_coordinates(volume[0, 0].numpy(), coords, order=1, mode="grid-constant")
    assert np.abs(warped - reference).max() < 1e-4


@pytest.mark.parametrize("method", ["nearest", "onehot"])
def test_labels_stay_in_label_set(volume, field, method):
    labels = (volume * 4).round().to(torch.uint8) * 3  # values {0, 3, 6, 9, 12}
    warped = warp_labels(labels, field * 2, method=method)
    assert warped.dtype == torch.uint8
    assert set(torch.unique(warped).tolist()) <= set(torch.unique(labels).tolist())


def test_onehot_label_warp_agrees_with_nearest_mostly(volume, field):
    labels = (volume * 4).round().to(torch.uint8)
    a = warp_labels(labels, field, method="nearest")
    b = warp_labels(labels, field, method="onehot")
    assert (a == b).float().mean() > 0.9


def test_label_warp_zero_field_is_exact(volume):
    labels = (volume * 5).round().to(torch.uint8)
    zero = torch.zeros(1, 3, *volume.shape[2:])
    for method in ("nearest", "onehot"):
        assert torch.equal(warp_labels(labels, zero, method=method), labels)


def test_grid_mismatch_is_refused(volume):
    with pytest.raises(ValueError, match="grid"):
        warp_image(volume, torch.zeros(1, 3, 8, 8, 8))


def test_batch_broadcast():
    vol = smooth_volume((16, 16, 16))
    fields = torch.cat([smooth_field((16, 16, 16), seed=s) for s in range(3)])
    out = warp_image(vol, fields)
    assert out.shape == (3, 1, 16, 16, 16)
    assert torch.allclose(out[1:2], warp_image(vol, fields[1:2]))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("padding", ["border", "zeros"])
@pytest.mark.parametrize(("channels", "depth"), [(3, 23), (1, 23), (1, 24), (3, 24)])
def test_grid_sample_split_over_threads_equals_one_call(threads, padding, channels, depth):
    # points split into one batch per thread, with or without a remainder
    generator = torch.Generator().manual_seed(7)
    volume = torch.rand(1, channels, 9, 10, 11, generator=generator)
    grid = torch.rand(1, depth, 19, 31, 3, generator=generator) * 2.4 - 1.2
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = grid_sample_3d(volume, grid, padding)
    finally:
        torch.set_num_threads(previous)
    reference = F.grid_sample(volume, grid, mode="bilinear", padding_mode=padding,
                              align_corners=True)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
