"""Training images drawn from label maps (the idea of SynthMorph, Hoffmann et al. 2022):
each label gets a random intensity, then the image gets noise, blur and a smooth
multiplicative bias field, so that a network sees far more appearances than the cohort's
few heads. Used by training when ``TrainingProfile.synthesis`` > 0.

Intensities are fractions of the [0, 1] range; ``blur`` and the bias field's grid are in
voxels of the label map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ddmr.spatial.filters import gaussian_smooth

#: the most standard deviation of the noise within a label (fraction of [0, 1])
MAX_NOISE = 0.08
#: the most Gaussian blur, sigma in voxels
MAX_BLUR = 1.0
#: standard deviation of the log bias field at its control points
BIAS_STD = 0.3
#: control points of the bias field per axis
BIAS_GRID = 4


def label_intensities(values: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """A lookup table (max(values) + 1,) float32: an intensity U(0, 1) for each of
    ``values``; 0 for values not listed."""
    table = torch.zeros(max(int(v) for v in values) + 1)
    table[torch.as_tensor([int(v) for v in values])] = torch.rand(len(values),
                                                                  generator=generator)
    return table


def synthesise(labels: torch.Tensor, table: torch.Tensor,
               generator: torch.Generator) -> torch.Tensor:
    """An image (B, 1, D, H, W) float32 in [0, 1] from label maps (B, 1, D, H, W) integer:
    ``table[label]`` plus Gaussian noise (std up to :data:`MAX_NOISE` per image), blurred
    (sigma up to :data:`MAX_BLUR` voxels), times ``exp`` of a smooth random field
    (:data:`BIAS_GRID` control points per axis, std :data:`BIAS_STD`), min-max normalised.
    Label values beyond the table are refused."""
    if labels.ndim != 5 or labels.shape[1] != 1 or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor (B, 1, D, H, W), got "
                         f"{tuple(labels.shape)} {labels.dtype}")
    indices = labels.long()
    if int(indices.max()) >= table.numel() or int(indices.min()) < 0:
        raise ValueError(f"label values {int(indices.min())}..{int(indices.max())} are not "
                         f"all in the intensity table (0..{table.numel() - 1})")
    batch, shape = labels.shape[0], labels.shape[2:]
    images = []
    for b in range(batch):
        image = table[indices[b]]
        noise = float(torch.rand(1, generator=generator)) * MAX_NOISE
        image = image + noise * torch.randn(image.shape, generator=generator)
        sigma = float(torch.rand(1, generator=generator)) * MAX_BLUR
        if sigma > 0.05:
            image = gaussian_smooth(image.contiguous(), sigma)
        control = BIAS_STD * torch.randn((1, 1, BIAS_GRID, BIAS_GRID, BIAS_GRID),
                                         generator=generator)
        bias = F.interpolate(control, size=tuple(shape), mode="trilinear", align_corners=True)
        images.append(image * bias[0].exp())
    out = torch.stack(images)
    low = out.amin(dim=(1, 2, 3, 4), keepdim=True)
    high = out.amax(dim=(1, 2, 3, 4), keepdim=True)
    return (out - low) / (high - low).clamp_min(1e-6)
