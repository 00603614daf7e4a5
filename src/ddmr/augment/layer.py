"""The augmentation layer: a fixed image in, a synthetic (fixed, moving) pair with its
ground-truth displacement out, on the input's device and without touching the disk.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ddmr.augment.config import AugmentationConfig
from ddmr.augment.intensity import adjust_intensity, minmax_normalise
from ddmr.augment.parameters import AugmentationParameters, draw_parameters
from ddmr.augment.transform import TransformPlan
from ddmr.prepare.recipe import preprocess
from ddmr.spatial.warp import warp_image, warp_labels

logger = logging.getLogger(__name__)


@dataclass
class AugmentedPair:
    """One synthetic batch. Images (B, 1, D, H, W) float in [0, 1]; labels (B, 1, D, H, W)
    in the input's integer dtype.

    displacement: ground truth (B, 3, D, H, W) in voxels, (D, H, W) channel order,
        pull-back: ``warp_image(moving, displacement) ~ fixed`` (``fixed(x) ~
        moving(x + u(x))``).
    generating_displacement: the field (same layout) that made the moving image from the
        (un-augmented) fixed one: ``moving = warp_image(fixed, generating_displacement)``.
    spacing: voxel spacing in mm of these tensors (changed by ``output_shape``).
    """

    fixed: torch.Tensor
    moving: torch.Tensor
    displacement: torch.Tensor
    generating_displacement: torch.Tensor
    parameters: AugmentationParameters
    spacing: tuple[float, float, float]
    fixed_labels: torch.Tensor | None = None
    moving_labels: torch.Tensor | None = None


def _check_inputs(fixed: torch.Tensor, labels: torch.Tensor | None) -> None:
    if fixed.ndim != 5 or fixed.shape[1] != 1:
        raise ValueError(f"fixed must be (B, 1, D, H, W), got {tuple(fixed.shape)}")
    if not fixed.is_floating_point():
        raise ValueError(f"fixed must be a floating-point tensor, got {fixed.dtype}")
    if labels is not None:
        if labels.shape != fixed.shape:
            raise ValueError(f"labels {tuple(labels.shape)} differ from the image "
                             f"{tuple(fixed.shape)}")
        if labels.is_floating_point():
            raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")


def apply_parameters(fixed: torch.Tensor, parameters: AugmentationParameters,
                     spacing: Sequence[float], config: AugmentationConfig,
                     labels: torch.Tensor | None = None,
                     plan: TransformPlan | None = None) -> AugmentedPair:
    """Make the pair for given ``parameters`` (deterministic; no randomness).

    fixed: (B, 1, D, H, W) float in [0, 1]; labels: optional (B, 1, D, H, W) integer;
    spacing: (3,) mm of the D, H, W axes.
    """
    _check_inputs(fixed, labels)
    spacing = tuple(float(s) for s in spacing)
    batch, shape = fixed.shape[0], tuple(fixed.shape[2:])
    if parameters.batch != batch:
        raise ValueError(f"parameters are for {parameters.batch} samples, the batch has {batch}")
    if config.geometric:
        if plan is None:
            plan = TransformPlan(shape, spacing, config)
        nodes = [plan.node_fields(
            parameters.rotation[b], parameters.translation[b],
            None if parameters.tps_displacements is None else parameters.tps_displacements[b])
            for b in range(batch)]
        u, v = plan.dense(torch.stack([n[0] for n in nodes]), torch.stack([n[1] for n in nodes]),
                          fixed.device, fixed.dtype)
        moving = warp_image(fixed, v)
        moving_labels = None if labels is None else warp_labels(labels, v, config.label_method)
    else:  # nothing moves: skip the (identity) resampling altogether
        u = fixed.new_zeros((batch, 3, *shape))
        v = u.clone()
        moving = fixed.clone()
        moving_labels = None if labels is None else labels.clone()
    if config.intensity:
        out_fixed = adjust_intensity(fixed, parameters.gamma[:, 0], parameters.brightness[:, 0],
                                     config.normalise)
        moving = adjust_intensity(moving, parameters.gamma[:, 1], parameters.brightness[:, 1],
                                  config.normalise)
    elif config.normalise:
        out_fixed, moving = minmax_normalise(fixed), minmax_normalise(moving)
    else:
        out_fixed = fixed.clone()
    return AugmentedPair(out_fixed, moving, u, v, parameters, spacing,
                         None if labels is None else labels.clone(), moving_labels)


class AugmentationLayer(nn.Module):
    """Synthetic training pairs on the fly (the paper's augmentation layer).

    ``forward(fixed, labels=None, spacing=(1, 1, 1), generator=None) -> AugmentedPair``.
    fixed: (B, 1, D, H, W) float in [0, 1]; labels: optional (B, 1, D, H, W) uint8;
    spacing: mm of the D, H, W axes, shared by the batch. Randomness comes only from
    ``generator``, or from the layer's own generator seeded by ``seed``; one of the two
    is required. If ``output_shape`` is given, inputs are first resized to it and
    min-max normalised (see :func:`ddmr.prepare.recipe.preprocess`).
    """

    def __init__(self, config: AugmentationConfig | None = None, seed: int | None = None,
                 output_shape: Sequence[int] | None = None, max_plans: int = 4) -> None:
        super().__init__()
        self.config = config or AugmentationConfig()
        self.generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        self.output_shape = None if output_shape is None else tuple(int(n) for n in output_shape)
        self._plans: OrderedDict[tuple, TransformPlan] = OrderedDict()
        self._max_plans = max_plans

    def plan(self, shape: Sequence[int], spacing: Sequence[float]) -> TransformPlan:
        """The cached :class:`TransformPlan` for this grid (built on first use)."""
        key = (tuple(int(n) for n in shape), tuple(float(s) for s in spacing))
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        logger.debug("building augmentation plan for shape %s, spacing %s", *key)
        plan = TransformPlan(key[0], key[1], self.config)
        self._plans[key] = plan
        while len(self._plans) > self._max_plans:
            self._plans.popitem(last=False)
        return plan

    @torch.no_grad()
    def forward(self, fixed: torch.Tensor, labels: torch.Tensor | None = None,
                spacing: Sequence[float] = (1.0, 1.0, 1.0),
                generator: torch.Generator | None = None) -> AugmentedPair:
        generator = generator if generator is not None else self.generator
        if generator is None:
            raise ValueError("AugmentationLayer needs a torch.Generator or a seed")
        _check_inputs(fixed, labels)
        if self.output_shape is not None:
            fixed, labels, spacing = preprocess(fixed, spacing, self.output_shape, labels)
        spacing = tuple(float(s) for s in spacing)
        plan = self.plan(fixed.shape[2:], spacing) if self.config.geometric else None
        params = draw_parameters(self.config, plan, fixed.shape[0], generator)
        return apply_parameters(fixed, params, spacing, self.config, labels, plan)


def augment(fixed: torch.Tensor, spacing: Sequence[float], generator: torch.Generator,
            labels: torch.Tensor | None = None,
            config: AugmentationConfig | None = None) -> AugmentedPair:
    """Functional form of :class:`AugmentationLayer` (builds its plan every call)."""
    return AugmentationLayer(config)(fixed, labels, spacing, generator)
