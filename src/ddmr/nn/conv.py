"""A 3x3x3 convolution that stays on oneDNN (mkldnn) on the CPU, forward and backward.

PyTorch's CPU dispatcher sends batch-1 3D convolutions with few channels
(``N * C_in * D * H <= 20480``) to a slow im2col path, forward and backward; those are
exactly the shapes of a registration U-Net at batch 1. This module calls oneDNN's
convolution directly and computes both gradients as oneDNN convolutions too:
the input gradient as a convolution of the output gradient with the flipped, transposed
kernel, the weight gradient as a convolution of the padded input (channels as batch)
with the output gradient as kernel. Same parameters and results as ``nn.Conv3d``
(to float rounding). Only inputs that PyTorch would send to its slow path take it (on
shapes PyTorch already sends to oneDNN, its own backward is as fast or faster at large
sizes); other devices, dtypes and small volumes use ``F.conv3d``.
See benchmarks/bench_conv.py for the speed-up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

_ONES = [1, 1, 1]
_ZEROS = [0, 0, 0]
MIN_VOXELS = 16**3  # below this, the weight-gradient convolution is not worth it
# PyTorch's own CPU rule: oneDNN only when N * C_in * D * H exceeds this (else im2col)
DISPATCH_THRESHOLD = 20480


def takes_slow_path(x: torch.Tensor) -> bool:
    """Whether PyTorch would send this (N, C, D, H, W) input to its slow CPU path."""
    n, c, d, h = x.shape[:4]
    return n * c * d * h <= DISPATCH_THRESHOLD


def _onednn_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 padding: list[int]) -> torch.Tensor:
    return torch.ops.aten.mkldnn_convolution(x, weight, bias, padding, _ONES, _ONES, 1)


class _OneDNNConv3d(torch.autograd.Function):
    """Stride 1, dilation 1, one group, 3x3x3 kernel, padding 1."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        x = x.contiguous()
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_conv(x, weight, bias, _ONES)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            flipped = weight.transpose(0, 1).flip(2, 3, 4).contiguous()
            grad_x = _onednn_conv(grad_out, flipped, None, _ONES)
        if ctx.needs_input_grad[1]:
            padded = F.pad(x, (1, 1, 1, 1, 1, 1)).transpose(0, 1).contiguous()
            kernel = grad_out.transpose(0, 1).contiguous()
            grad_w = _onednn_conv(padded, kernel, None, _ZEROS).transpose(0, 1).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3, 4))
        return grad_x, grad_w, grad_b


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (3x3x3, padding 1) with the oneDNN path on the CPU.

    ``fast=False`` always uses PyTorch's own dispatch (the reference the tests compare to).
    """

    def __init__(self, in_channels: int, out_channels: int, fast: bool = True) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)
        self.fast = fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.fast and x.device.type == "cpu" and x.dtype == torch.float32
                and torch.backends.mkldnn.is_available() and x[0, 0].numel() >= MIN_VOXELS
                and takes_slow_path(x)):
            return _OneDNNConv3d.apply(x, self.weight, self.bias)
        return F.conv3d(x, self.weight, self.bias, padding=1)
