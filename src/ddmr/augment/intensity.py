"""Intensity augmentation: gamma, brightness and min-max normalisation.

Images are (B, C, D, H, W) float tensors in [0, 1]. Per sample ``b`` the transform is

    y = minmax( clip( clip(x, 0, 1) ** gamma[b] + brightness[b], 0, 1 ) )

Brightness is an *additive* shift of the [0, 1] range followed by clipping. A purely
linear brightness change (additive or multiplicative, unclipped) would be cancelled
exactly by the min-max normalisation that follows, so it would do nothing; with the
clip, a positive shift saturates the brightest intensities and a negative one crushes
the darkest, as a brightness change under a fixed display window does. With
``normalise=False`` the shifted, clipped image is returned as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddmr.prepare.recipe import minmax_normalise


def draw_gamma(batch: int, gamma_range: Sequence[float], generator: torch.Generator
               ) -> torch.Tensor:
    """Log-uniform gamma values (batch,) float64 in ``gamma_range``: ``2**U(log2 lo, log2 hi)``."""
    low, high = (float(g) for g in gamma_range)
    u = torch.rand(batch, generator=generator, dtype=torch.float64, device=generator.device).cpu()
    log_low, log_high = torch.log2(torch.tensor(low, dtype=torch.float64)), torch.log2(
        torch.tensor(high, dtype=torch.float64))
    return torch.exp2(log_low + (log_high - log_low) * u)


def draw_brightness(batch: int, max_brightness: float, generator: torch.Generator
                    ) -> torch.Tensor:
    """Additive brightness shifts (batch,) float64, uniform in [-max, max]."""
    u = torch.rand(batch, generator=generator, dtype=torch.float64, device=generator.device).cpu()
    return (2 * u - 1) * max_brightness


def adjust_intensity(image: torch.Tensor, gamma: torch.Tensor, brightness: torch.Tensor,
                     normalise: bool = True) -> torch.Tensor:
    """Apply per-sample ``gamma`` and additive ``brightness`` (both (B,)) to ``image``
    (B, C, D, H, W) in [0, 1], then (optionally) min-max normalise. Returns a new tensor."""
    shape = (-1,) + (1,) * (image.ndim - 1)
    gamma = gamma.to(image.device, image.dtype).view(shape)
    brightness = brightness.to(image.device, image.dtype).view(shape)
    out = image.clamp(0.0, 1.0).pow_(gamma).add_(brightness).clamp_(0.0, 1.0)
    return minmax_normalise(out) if normalise else out
