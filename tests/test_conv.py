"""The oneDNN convolution path gives nn.Conv3d's results, forward and backward."""

import pytest
import torch
import torch.nn.functional as F

from ddmr.nn import UNet, UNetConfig
from ddmr.nn.conv import Conv3d, takes_slow_path


@pytest.mark.parametrize("shape,cout", [((1, 2, 16, 18, 20), 8), ((2, 5, 17, 16, 16), 3),
                                        ((1, 16, 24, 24, 24), 16), ((1, 2, 64, 64, 64), 4)])
def test_fast_conv_matches_reference_forward_and_backward(shape, cout):
    torch.manual_seed(0)
    conv = Conv3d(shape[1], cout)
    x = torch.randn(*shape, requires_grad=True)
    assert takes_slow_path(x) == (shape[0] * shape[1] * shape[2] * shape[3] <= 20480)
    y = conv(x)
    reference = F.conv3d(x, conv.weight, conv.bias, padding=1)
    assert torch.allclose(y, reference, atol=1e-5)
    grad_out = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, conv.weight, conv.bias), grad_out)
    expected = torch.autograd.grad(reference, (x, conv.weight, conv.bias), grad_out)
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_fast_conv_accepts_channels_last_and_small_volumes():
    conv = Conv3d(4, 4)
    x = torch.randn(1, 4, 16, 16, 16).to(memory_format=torch.channels_last_3d)
    assert torch.allclose(conv(x), F.conv3d(x, conv.weight, conv.bias, padding=1), atol=1e-5)
    small = torch.randn(1, 4, 6, 6, 6)  # below the threshold: PyTorch's own path
    assert torch.equal(conv(small), F.conv3d(small, conv.weight, conv.bias, padding=1))


def test_unet_fast_and_plain_paths_agree():
    torch.manual_seed(0)
    fast = UNet(UNetConfig(encoder=(8, 16, 16), head=(8,), output_init_std=0.1))
    plain = UNet(UNetConfig(encoder=(8, 16, 16), head=(8,), output_init_std=0.1,
                            fast_cpu_conv=False))
    plain.load_state_dict(fast.state_dict())
    a, b = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    out_fast, out_plain = fast(a, b), plain(a, b)
    assert torch.allclose(out_fast, out_plain, atol=1e-5)
    out_fast.square().sum().backward()
    out_plain.square().sum().backward()
    for p, q in zip(fast.parameters(), plain.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-4 * q.grad.abs().max().item())
