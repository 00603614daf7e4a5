"""Smoothing filters on voxel grids, separable along the three axes."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


def box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of (B, C, D, H, W) over a cubic ``window`` (odd, voxels) around each voxel,
    windows cut at the border (the mean over the part inside the grid): separable, from
    cumulative sums along each axis (cost independent of the window)."""
    radius = window // 2
    for dim in (2, 3, 4):
        n = x.shape[dim]
        if n == 1 or radius == 0:
            continue
        pad = [0, 0] * (4 - dim) + [1, 0]
        cumulative = F.pad(x.cumsum(dim), pad)  # a zero before the first voxel
        index = torch.arange(n, device=x.device)
        high = torch.clamp(index + radius + 1, max=n)
        low = torch.clamp(index - radius, min=0)
        count = (high - low).to(x.dtype).view([-1 if d == dim else 1 for d in range(5)])
        x = (cumulative.index_select(dim, high) - cumulative.index_select(dim, low)) / count
    return x


# -- separable filters as matrix products ---------------------------------------------------
# Along one axis of n voxels a box sum or a Gaussian is an (n, n) matrix; applied to a
# (C, D, H, W) volume it is one batched matrix product per axis, which BLAS runs faster on
# a CPU than shifted sums or 1D convolutions for the sizes of registration grids.


@lru_cache(maxsize=64)
def _box_matrix(n: int, radius: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    index = torch.arange(n, device=device)
    return ((index[:, None] - index[None, :]).abs() <= radius).to(dtype)


@lru_cache(maxsize=64)
def _gaussian_matrix(n: int, sigma: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    index = torch.arange(n, dtype=torch.float64, device=device)
    weights = torch.exp(-((index[:, None] - index[None, :]) ** 2) / (2.0 * sigma * sigma))
    weights[(index[:, None] - index[None, :]).abs() > 4.0 * sigma] = 0.0
    return (weights / weights.sum(dim=1, keepdim=True)).to(dtype)


def separable(volume: torch.Tensor, matrices: list[torch.Tensor | None],
              out: torch.Tensor | None = None) -> torch.Tensor:
    """``volume`` (C, D, H, W) with ``matrices[a]`` (n_a, n_a) applied along each spatial
    axis ``a`` (None: that axis untouched): ``out[., i, ., .] = sum_k M[i, k] v[., k, ., .]``.
    With ``out`` (C, D, H, W; may be ``volume`` itself) the channels are filtered one at
    a time into it: two volumes of temporaries instead of two per channel."""
    if out is not None:
        for channel in range(volume.shape[0]):
            out[channel] = separable(volume[channel:channel + 1], matrices)[0]
        return out
    channels, depth, height, width = volume.shape
    result = volume
    if matrices[2] is not None:
        result = result @ matrices[2].T
    if matrices[1] is not None:
        result = torch.matmul(matrices[1], result)
    if matrices[0] is not None:
        result = torch.matmul(matrices[0], result.reshape(channels, depth, height * width))
        result = result.reshape(channels, depth, height, width)
    return result


def box_sum(volume: torch.Tensor, window: int, out: torch.Tensor | None = None
            ) -> torch.Tensor:
    """Sum of (C, D, H, W) over a cubic ``window`` (odd, voxels) around each voxel, zero
    beyond the grid (so only voxels inside it count); ``out``: as :func:`separable`."""
    radius = window // 2
    device = str(volume.device)
    return separable(volume, [_box_matrix(int(n), radius, device, volume.dtype)
                              for n in volume.shape[1:]], out)


def gaussian_smooth(volume: torch.Tensor, sigma: float | tuple[float, float, float],
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """(C, D, H, W) smoothed by a Gaussian of ``sigma`` voxels (per axis; 0: none),
    truncated at 4 sigma and renormalised at the borders (a constant stays constant);
    ``out``: as :func:`separable`."""
    sigmas = (sigma,) * 3 if isinstance(sigma, int | float) else tuple(sigma)
    device = str(volume.device)
    return separable(volume, [_gaussian_matrix(int(n), float(s), device, volume.dtype)
                              if s > 0 else None
                              for n, s in zip(volume.shape[1:], sigmas, strict=True)], out)
