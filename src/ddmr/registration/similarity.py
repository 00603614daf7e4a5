"""Similarities of the registration engine, with their gradients with respect to the warped
image.

Each similarity compares fixed and warped *features* on one grid (C, D, H, W): the
intensities themselves (C = 1) or descriptors computed from them. :meth:`features`
turns an image (D, H, W) into them; :meth:`bind` takes the fixed features once and
returns the function of the warped features that gives the similarity (a float, to be
maximised) and its gradient with respect to them (C, D, H, W), from which the engine
forms its force ``sum_c dS/dW_c grad W_c``; calling the similarity itself binds and
evaluates in one go.

* :class:`LocalNCC`: mean over voxels of the squared correlation in a cubic window (the
  CC of ANTs and the WNCC of greedy), box sums by matrix products, gradient in closed
  form (four more box sums).
* :class:`MutualInformation`: Parzen-window mutual information of the intensities
  (other modalities), gradient by autograd.
* :class:`MindSSC`: the MIND self-similarity context descriptor (Heinrich et al. 2013;
  twelve channels), compared by mean squared difference: robust to intensity
  changes and to other modalities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ddmr.losses.mutual_information import mutual_information
from ddmr.registration.settings import SIMILARITY_NAMES
from ddmr.spatial.filters import box_sum


@dataclass(frozen=True)
class LocalNCC:
    """Local (windowed) squared NCC; ``window`` voxels (odd)."""

    window: int = 5
    eps: float = 1e-5

    name = "lncc"

    def features(self, image: torch.Tensor) -> torch.Tensor:
        return image[None]

    def bind(self, fixed: torch.Tensor):
        a = fixed[0]
        count = box_sum(torch.ones_like(a)[None], self.window)[0]
        stats = torch.stack([a, a * a])
        sum_a, var_a = box_sum(stats, self.window, out=stats)  # var_a: sum_aa, then
        mean_a = sum_a / count
        var_a.sub_(sum_a * mean_a).clamp_min_(0.0)

        def evaluate(warped: torch.Tensor) -> tuple[float, torch.Tensor]:
            # in place where a statistic is used once: the finest level of a 1 mm head
            # holds about ten volumes here instead of thirty (benchmarks/RESULTS.md)
            b = warped[0]
            stats = torch.stack([b, b, a])
            stats[1].mul_(b)
            stats[2].mul_(b)
            sum_b, sum_bb, cov = box_sum(stats, self.window, out=stats)  # cov: sum_ab
            mean_b = sum_b / count
            cov.sub_(sum_a * mean_b)
            denominator = sum_bb.sub_(sum_b.mul_(mean_b)).clamp_min_(0.0)  # var_b
            denominator.mul_(var_a).add_(self.eps)
            cc = (cov * cov).div_(denominator)
            value = float(cc.mean())
            centres = torch.empty((4, *b.shape), dtype=b.dtype, device=b.device)
            alpha = torch.div(cov, denominator, out=centres[0]).mul_(2.0)
            torch.mul(alpha, mean_a, out=centres[1])
            beta = torch.mul(cc, var_a, out=centres[2]).div_(denominator).mul_(2.0)
            torch.mul(beta, mean_b, out=centres[3])
            del stats, sum_b, sum_bb, cov, denominator, cc, mean_b, alpha, beta
            box_sum(centres, self.window, out=centres)
            gradient = a * centres[0]
            gradient.sub_(centres[1]).addcmul_(b, centres[2], value=-1.0).add_(centres[3])
            return value, gradient.div_(a.numel())[None]

        return evaluate

    def __call__(self, fixed: torch.Tensor, warped: torch.Tensor
                 ) -> tuple[float, torch.Tensor]:
        return self.bind(fixed)(warped)


@dataclass(frozen=True)
class MutualInformation:
    """Mutual information of intensities in [0, 1] with ``bins`` Gaussian Parzen bins."""

    bins: int = 32

    name = "mi"

    def features(self, image: torch.Tensor) -> torch.Tensor:
        return image[None]

    def bind(self, fixed: torch.Tensor):
        def evaluate(warped: torch.Tensor) -> tuple[float, torch.Tensor]:
            with torch.enable_grad():
                w = warped.detach().requires_grad_(True)
                value = mutual_information(fixed.reshape(1, -1), w.reshape(1, -1), self.bins,
                                           max_voxels=None)[0]
                (gradient,) = torch.autograd.grad(value, w)
            return float(value.detach()), gradient

        return evaluate

    def __call__(self, fixed: torch.Tensor, warped: torch.Tensor
                 ) -> tuple[float, torch.Tensor]:
        return self.bind(fixed)(warped)


#: The six face neighbours of MIND-SSC's neighbourhood (voxel offsets, radius 1).
_FACES = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))


@dataclass(frozen=True)
class MindSSC:
    """MIND-SSC descriptors with neighbours ``dilation`` voxels away and patches of
    ``patch`` voxels; similarity ``-mean((MIND_f - MIND_w)^2)``."""

    dilation: int = 2
    patch: int = 3

    name = "mind"

    def features(self, image: torch.Tensor) -> torch.Tensor:
        pairs = [(p, q) for i, p in enumerate(_FACES) for q in _FACES[i + 1:]
                 if sum((x - y) ** 2 for x, y in zip(p, q, strict=True)) == 2]
        distances = []
        padded = torch.nn.functional.pad(image[None, None], (self.dilation,) * 6,
                                         mode="replicate")[0, 0]
        for p, q in pairs:
            shifted_p = _shifted(padded, p, self.dilation, image.shape)
            shifted_q = _shifted(padded, q, self.dilation, image.shape)
            distances.append((shifted_p - shifted_q) ** 2)
        count = box_sum(torch.ones_like(image)[None], self.patch)
        distance = box_sum(torch.stack(distances), self.patch) / count
        variance = distance.mean(dim=0, keepdim=True)
        variance = variance.clamp(min=1e-3 * float(variance.mean()) + 1e-12,
                                  max=1e3 * float(variance.mean()) + 1e-12)
        descriptor = torch.exp(-distance / variance)
        return descriptor / descriptor.amax(dim=0, keepdim=True).clamp_min(1e-12)

    def bind(self, fixed: torch.Tensor):
        def evaluate(warped: torch.Tensor) -> tuple[float, torch.Tensor]:
            difference = fixed - warped
            value = -float((difference * difference).mean())
            return value, 2.0 * difference / difference.numel()

        return evaluate

    def __call__(self, fixed: torch.Tensor, warped: torch.Tensor
                 ) -> tuple[float, torch.Tensor]:
        return self.bind(fixed)(warped)


def _shifted(padded: torch.Tensor, offset: tuple[int, int, int], dilation: int,
             shape: tuple[int, ...]) -> torch.Tensor:
    starts = [dilation + o * dilation for o in offset]
    return padded[starts[0]:starts[0] + shape[0], starts[1]:starts[1] + shape[1],
                  starts[2]:starts[2] + shape[2]]


def force_from_gradient(gradient: torch.Tensor, features: torch.Tensor,
                        spacing: tuple[float, float, float]) -> torch.Tensor:
    """The engine's force (3, *S) ``sum_c dS/dW_c grad W_c``: ``gradient`` dS/dW (C, *S)
    times the spatial gradient per mm of the warped features (C, *S) (central
    differences, one-sided at the borders), one axis and channel at a time."""
    force = torch.zeros((3, *features.shape[1:]), dtype=features.dtype,
                        device=features.device)
    for axis in range(3):
        for channel in range(features.shape[0]):
            (derivative,) = torch.gradient(features[channel], dim=axis)
            force[axis].addcmul_(derivative, gradient[channel],
                                 value=1.0 / float(spacing[axis]))
    return force


class Objective:
    """A similarity bound to the fixed features (C, *S) on a grid of ``spacing`` mm, as
    the engine uses it: :meth:`value` of warped features (C, *S), and :meth:`force`,
    (the value, :func:`force_from_gradient`). Local NCC runs as compiled kernels
    (:class:`ddmr.spatial.kernels.LNCCKernel`) where they are available."""

    def __init__(self, similarity, fixed: torch.Tensor,
                 spacing: tuple[float, float, float]) -> None:
        from ddmr.spatial import kernels

        self.spacing = tuple(float(s) for s in spacing)
        self.kernel = (kernels.LNCCKernel(fixed[0].numpy(), similarity.window,
                                          similarity.eps)
                       if isinstance(similarity, LocalNCC) and kernels.available() else None)
        self.evaluate = None if self.kernel is not None else similarity.bind(fixed)

    def value(self, warped: torch.Tensor) -> float:
        if self.kernel is not None:
            return float(self.kernel.similarity(warped[0].contiguous().numpy()))
        return self.evaluate(warped)[0]

    def force(self, warped: torch.Tensor, out: torch.Tensor | None = None
              ) -> tuple[float, torch.Tensor]:
        """(the value, the force (3, *S)); with the compiled kernels the force is written
        into ``out`` where given."""
        if self.kernel is not None:
            value, force = self.kernel.force(warped[0].contiguous().numpy(), self.spacing,
                                             None if out is None else out.numpy())
            return value, torch.from_numpy(force)
        value, gradient = self.evaluate(warped)
        return value, force_from_gradient(gradient, warped, self.spacing)


def make_similarity(name: str, window: int = 5):
    """The similarity called ``name`` (:data:`SIMILARITY_NAMES`); ``window`` for LNCC."""
    if name == "lncc":
        return LocalNCC(window)
    if name == "mi":
        return MutualInformation()
    if name == "mind":
        return MindSSC()
    raise ValueError(f"unknown similarity {name!r}; choose one of "
                     f"{', '.join(SIMILARITY_NAMES)}")


def check_window(window: int) -> int:
    """``window`` if it is an odd number of voxels >= 1."""
    if window < 1 or window % 2 != 1 or not math.isfinite(window):
        raise ValueError(f"the similarity window must be an odd number >= 1, got {window}")
    return int(window)
