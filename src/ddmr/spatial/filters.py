"""Smoothing filters on voxel grids, separable along the three axes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddmr.spatial.kernels import gaussian_taps


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


# -- separable filters on (C, D, H, W) volumes, one channel and one axis at a time ---------
# A box sum along an axis is a difference of two cumulative sums (two passes whatever the
# window); a truncated Gaussian is a sum of shifted, weighted copies (2 * 4 sigma + 1
# passes). Both read and write whole volumes a few times, where a dense (n, n) matrix
# product along the axis costs n multiply-adds per voxel (benchmarks/RESULTS.md, issue 28).


def _box_axis(source: torch.Tensor, dim: int, radius: int, out: torch.Tensor,
              scratch: torch.Tensor) -> None:
    """``out`` = the sum of ``source`` over ``i - radius .. i + radius`` along ``dim``
    (zero beyond the grid); ``scratch`` (same shape) holds the cumulative sums."""
    n = source.shape[dim]
    torch.cumsum(source, dim, out=scratch)
    if n <= 2 * radius + 1:  # every window reaches a border: index the sums
        index = torch.arange(n, device=source.device)
        high = scratch.index_select(dim, torch.clamp(index + radius, max=n - 1))
        low_index = index - radius - 1
        low = scratch.index_select(dim, low_index.clamp(min=0))
        low.mul_((low_index >= 0).to(low.dtype).view([-1 if d == dim else 1
                                                      for d in range(low.dim())]))
        torch.sub(high, low, out=out)
        return
    window = 2 * radius + 1
    # interior: c[i + r] - c[i - r - 1]; head: c[i + r]; tail: c[n - 1] - c[i - r - 1]
    torch.sub(scratch.narrow(dim, window, n - window), scratch.narrow(dim, 0, n - window),
              out=out.narrow(dim, radius + 1, n - window))
    out.narrow(dim, 0, radius + 1).copy_(scratch.narrow(dim, radius, radius + 1))
    torch.sub(scratch.narrow(dim, n - 1, 1), scratch.narrow(dim, n - window, radius),
              out=out.narrow(dim, n - radius, radius))


def _gaussian_axis(source: torch.Tensor, dim: int, sigma: float, out: torch.Tensor) -> None:
    """``out`` = ``source`` smoothed along ``dim`` by a Gaussian of ``sigma`` voxels cut
    at 4 sigma, each voxel divided by the weight of its taps inside the grid."""
    n = source.shape[dim]
    weights, scale = gaussian_taps(sigma, n)
    torch.mul(source, weights[0], out=out)
    for shift, weight in enumerate(weights[1:], start=1):
        length = n - shift
        out.narrow(dim, shift, length).add_(source.narrow(dim, 0, length), alpha=weight)
        out.narrow(dim, 0, length).add_(source.narrow(dim, shift, length), alpha=weight)
    edge = len(weights) - 1  # the voxels whose taps reach beyond either end
    shape = [-1 if d == dim else 1 for d in range(source.dim())]
    factor = scale.to(out.dtype)
    if 2 * edge >= n:
        out.mul_(factor.view(shape))
    elif edge:
        out.narrow(dim, 0, edge).mul_(factor[:edge].view(shape))
        out.narrow(dim, n - edge, edge).mul_(factor[n - edge:].view(shape))


def _per_channel(volume: torch.Tensor, axis_filters: list, out: torch.Tensor | None
                 ) -> torch.Tensor:
    """Apply ``axis_filters[a](source, dim, target, scratch)`` (None: skip) along each
    spatial axis of every channel of (C, D, H, W); into ``out`` (may be ``volume``) or a
    new tensor. Two volumes of one channel as temporaries, whatever C."""
    result = torch.empty_like(volume) if out is None else out
    active = [(axis, apply) for axis, apply in enumerate(axis_filters) if apply is not None]
    if not active:
        return result if result is volume else result.copy_(volume)
    spares = [torch.empty_like(volume[0]), torch.empty_like(volume[0])]
    for channel in range(volume.shape[0]):
        source, final = volume[channel], result[channel]
        for index, (axis, apply) in enumerate(active):
            last = index == len(active) - 1
            target = final if last and source.data_ptr() != final.data_ptr() \
                else spares[index % 2]
            # the scratch: a buffer that is neither read nor written by this pass (the
            # channel's own slot once its input has been read)
            used = {source.data_ptr(), target.data_ptr()}
            scratch = next(b for b in (*spares, final) if b.data_ptr() not in used)
            apply(source, axis, target, scratch)
            source = target
        if source.data_ptr() != final.data_ptr():  # one pass in place: copied back
            final.copy_(source)
    return result


def box_sum(volume: torch.Tensor, window: int, out: torch.Tensor | None = None
            ) -> torch.Tensor:
    """Sum of (C, D, H, W) over a cubic ``window`` (odd, voxels) around each voxel, zero
    beyond the grid (so only voxels inside it count). With ``out`` (C, D, H, W; may be
    ``volume`` itself) the result is written there, one channel at a time. Runs the
    compiled kernel (:mod:`ddmr.spatial.kernels`) where it can, else torch."""
    if _compiled(volume, out):
        from ddmr.spatial import kernels

        return _as_tensor(kernels.box_sum(volume.numpy(), window,
                                          None if out is None else out.numpy()), out)
    radius = window // 2

    def along(source, dim, target, scratch):
        _box_axis(source, dim, radius, target, scratch)

    return _per_channel(volume, [along if radius > 0 else None] * 3, out)


def _compiled(volume: torch.Tensor, out: torch.Tensor | None) -> bool:
    """Whether the compiled kernels take this call: float32 (C, D, H, W) CPU tensors,
    contiguous, outside autograd, and the kernels available."""
    from ddmr.spatial import kernels

    return (kernels.available() and volume.dim() == 4 and volume.dtype == torch.float32
            and volume.device.type == "cpu" and volume.is_contiguous()
            and not volume.requires_grad
            and (out is None or (out.dtype == torch.float32 and out.is_contiguous()
                                 and out.shape == volume.shape and not out.requires_grad)))


def _as_tensor(result, out: torch.Tensor | None) -> torch.Tensor:
    return out if out is not None else torch.from_numpy(result)


def gaussian_smooth(volume: torch.Tensor, sigma: float | tuple[float, float, float],
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """(C, D, H, W) smoothed by a Gaussian of ``sigma`` voxels (per axis; 0: none),
    truncated at 4 sigma and renormalised at the borders (a constant stays constant);
    ``out``: as :func:`box_sum`."""
    sigmas = (sigma,) * 3 if isinstance(sigma, int | float) else tuple(sigma)
    if _compiled(volume, out):
        from ddmr.spatial import kernels

        return _as_tensor(kernels.gaussian_smooth(volume.numpy(), sigmas,
                                                  None if out is None else out.numpy()), out)

    def along(s):
        return lambda source, dim, target, scratch: _gaussian_axis(source, dim, s, target)

    return _per_channel(volume, [along(float(s)) if s > 0 and n > 1 else None
                                 for s, n in zip(sigmas, volume.shape[1:], strict=True)], out)
