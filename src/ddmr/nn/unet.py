"""The paper's modified VoxelMorph U-Net that predicts a dense displacement field.

Encoder level k: 3x3x3 convolution + LeakyReLU, then max-pooling (stride 2). Decoder
level k (deepest first): convolution + LeakyReLU, nearest-neighbour upsampling, then
concatenation with the encoder output of the same resolution. Head: convolutions +
LeakyReLU at full (or half) resolution, then a 3-filter output convolution initialised
near zero so that training starts from the identity transform.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ddmr.errors import ConfigError
from ddmr.nn.conv import Conv3d
from ddmr.spatial.field import integrate_velocity, resize_displacement


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet`.

    encoder: filters per encoder level (one pooling per level).
    decoder: filters per decoder level, deepest first; ``None`` mirrors the encoder.
    head: filters of the convolutions before the output convolution.
    flow_resolution: ``"full"`` or ``"half"`` (field predicted at half resolution and
        upsampled; the last decoder upsampling and its skip are skipped).
    diffeomorphic: treat the output as a stationary velocity and integrate it.
    pad_input: pad sizes the depth cannot pool evenly and crop back (else refuse).
    fast_cpu_conv: keep CPU convolutions on oneDNN (see :mod:`ddmr.nn.conv`); same results.
    input_features: ``"images"`` (the two images, as in the paper) or ``"demons"`` (also
        the optical-flow force ``(fixed - moving) * grad`` per axis and ``|grad|^2`` of the
        mean image, each scaled to unit RMS): the products a concatenating network must
        otherwise learn to form, which makes small networks learn much sooner.
    match_histograms: show the network the moving image with its intensities mapped onto
        the fixed image's (quantile matching, :func:`match_histogram`), which undoes
        monotone contrast changes such as the augmentation's gamma and brightness; the
        displacement still warps the original moving image.
    """

    in_channels: int = 2
    encoder: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
    decoder: tuple[int, ...] | None = None
    head: tuple[int, ...] = (16, 16)
    negative_slope: float = 0.2
    output_init_std: float = 1e-5
    flow_resolution: Literal["full", "half"] = "full"
    diffeomorphic: bool = False
    integration_steps: int = 7
    pad_input: bool = True
    fast_cpu_conv: bool = True
    input_features: Literal["images", "demons"] = "images"
    match_histograms: bool = False

    def __post_init__(self) -> None:
        if self.input_features not in ("images", "demons"):
            raise ConfigError(f"input_features must be 'images' or 'demons', got "
                              f"{self.input_features!r}")
        if self.in_channels != 2:
            raise ConfigError(f"in_channels is the pair of images (2), got {self.in_channels}")

    def network_channels(self) -> int:
        """Channels the first convolution sees."""
        return 2 if self.input_features == "images" else 6

    def decoder_filters(self) -> tuple[int, ...]:
        return tuple(self.decoder) if self.decoder is not None else tuple(reversed(self.encoder))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> UNetConfig:
        data = dict(data)
        for key in ("encoder", "decoder", "head"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


def match_histogram(source: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``source`` (B, 1, D, H, W) with its values replaced, rank for rank, by the sorted
    values of ``reference`` (same shape): exact quantile matching, ties broken by order."""
    flat = source.flatten(1)
    order = torch.argsort(flat, dim=1)
    matched = torch.empty_like(flat)
    matched.scatter_(1, order, torch.sort(reference.flatten(1), dim=1).values)
    return matched.view_as(source)


def demons_features(fixed: torch.Tensor, moving: torch.Tensor) -> list[torch.Tensor]:
    """Four (B, 1, D, H, W) channels: ``(fixed - moving) * d(mean)/dx_k`` for the three
    axes and ``|grad(mean)|^2`` (central differences of the mean image), each divided by
    its root mean square over the volume."""
    mean = (fixed + moving) / 2
    padded = F.pad(mean, (1, 1, 1, 1, 1, 1), mode="replicate")
    gradients = [
        (padded[:, :, 2:, 1:-1, 1:-1] - padded[:, :, :-2, 1:-1, 1:-1]) / 2,
        (padded[:, :, 1:-1, 2:, 1:-1] - padded[:, :, 1:-1, :-2, 1:-1]) / 2,
        (padded[:, :, 1:-1, 1:-1, 2:] - padded[:, :, 1:-1, 1:-1, :-2]) / 2,
    ]
    difference = fixed - moving
    features = [difference * g for g in gradients]
    features.append(sum(g * g for g in gradients))
    return [f / f.square().mean(dim=(1, 2, 3, 4), keepdim=True).sqrt().clamp_min(1e-6)
            for f in features]


def _conv(in_ch: int, out_ch: int, slope: float, fast: bool) -> nn.Sequential:
    return nn.Sequential(Conv3d(in_ch, out_ch, fast), nn.LeakyReLU(slope, inplace=True))


class UNet(nn.Module):
    """Displacement predictor: ``forward(fixed, moving) -> displacement``.

    fixed, moving: (B, 1, D, H, W) images in [0, 1]. Returns a voxel displacement
    (B, 3, D, H, W) in (D, H, W) channel order that pulls ``moving`` onto ``fixed``.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or UNetConfig()
        decoder = config.decoder_filters()
        if len(decoder) != len(config.encoder):
            raise ConfigError(
                f"decoder has {len(decoder)} levels but the encoder has {len(config.encoder)}"
            )
        if not config.encoder:
            raise ConfigError("the encoder needs at least one level")
        slope = config.negative_slope
        self.encoder = nn.ModuleList()
        channels = config.network_channels()
        for filters in config.encoder:
            self.encoder.append(_conv(channels, filters, slope, config.fast_cpu_conv))
            channels = filters
        self.decoder = nn.ModuleList()
        skips = list(reversed(config.encoder))
        for level, filters in enumerate(decoder):
            self.decoder.append(_conv(channels, filters, slope, config.fast_cpu_conv))
            last = level == len(decoder) - 1
            half_head = last and config.flow_resolution == "half"
            channels = filters if half_head else filters + skips[level]
        self.head = nn.ModuleList()
        for filters in config.head:
            self.head.append(_conv(channels, filters, slope, config.fast_cpu_conv))
            channels = filters
        self.output = Conv3d(channels, 3, config.fast_cpu_conv)
        if not self.output.weight.is_meta:  # (on the meta device this imports torch's
            # compiler, 1.5 s: model files are checked against a meta-device U-Net)
            nn.init.normal_(self.output.weight, std=config.output_init_std)
            nn.init.zeros_(self.output.bias)

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this (2 ** depth)."""
        return 2 ** len(self.config.encoder)

    def layer_groups(self) -> dict[str, list[nn.Module]]:
        """Named parameter groups for freezing schedules (input, encoder, decoder, head)."""
        return {
            "input": [self.encoder[0]],
            "encoder": list(self.encoder[1:]),
            "decoder": list(self.decoder),
            "head": [*self.head, self.output],
        }

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        shape = x.shape[2:]
        m = self.multiple
        if all(n % m == 0 for n in shape):
            return x, tuple(shape)
        if not self.config.pad_input:
            raise ConfigError(
                f"input size {tuple(shape)} is not a multiple of {m} "
                f"({len(self.config.encoder)} encoder levels); resize it or enable pad_input"
            )
        pad = []
        for n in reversed(shape):
            pad += [0, (-n) % m]
        return F.pad(x, pad, mode="replicate"), tuple(shape)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        if fixed.shape != moving.shape:
            raise ValueError(f"fixed {tuple(fixed.shape)} and moving {tuple(moving.shape)} differ")
        if self.config.match_histograms:
            moving = match_histogram(moving, fixed)
        inputs = [fixed, moving]
        if self.config.input_features == "demons":
            inputs += demons_features(fixed, moving)
        x, shape = self._pad(torch.cat(inputs, dim=1))
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool3d(x, 2)
        half = self.config.flow_resolution == "half"
        for level, block in enumerate(self.decoder):
            x = block(x)
            skip = skips[-1 - level]
            if half and level == len(self.decoder) - 1:
                break
            x = F.interpolate(x, size=skip.shape[2:], mode="nearest")
            x = torch.cat([x, skip], dim=1)
        for block in self.head:
            x = block(x)
        flow = self.output(x)
        if self.config.diffeomorphic:
            flow = integrate_velocity(flow, self.config.integration_steps)
        padded_shape = skips[0].shape[2:]
        if half:
            flow = resize_displacement(flow, padded_shape)
        if tuple(padded_shape) != shape:
            flow = flow[:, :, : shape[0], : shape[1], : shape[2]]
        return flow

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
