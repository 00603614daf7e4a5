"""A network with its own affine stage: how a model turns a pair on its grid into a field.

A model trained with ``profile.prealign`` learnt the residual left by its own affine
stage (:func:`own_alignment`, :mod:`ddmr.model.align` with its default settings), so
that stage runs in front of it wherever the model is used: on training pairs
(:class:`ddmr.train.module.RegistrationModule`), on stored test pairs
(:mod:`ddmr.evaluate.runner`) and in registration (:mod:`ddmr.registration.pipeline`,
which resamples the native moving image through the stage's point map instead of
warping the model-grid copy).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddmr.model.align import AffineAlignment, align_affine


def own_alignment(fixed: torch.Tensor, moving: torch.Tensor, spacing: Sequence[float]
                  ) -> AffineAlignment:
    """The model's own affine stage on images (B, 1, D, H, W) of one grid (voxels of
    ``spacing`` mm, intensities in [0, 1])."""
    return align_affine(fixed, moving, spacing)


class Predictor:
    """``network`` (a :class:`ddmr.nn.UNet`) with its own affine stage when ``prealign``."""

    def __init__(self, network: torch.nn.Module, prealign: bool) -> None:
        self.network = network
        self.prealign = bool(prealign)

    def field(self, fixed: torch.Tensor, moving: torch.Tensor, spacing: Sequence[float]
              ) -> torch.Tensor:
        """The full pull-back field (B, 3, D, H, W, voxels) for images on the network's
        grid (B, 1, D, H, W, in [0, 1], voxels of ``spacing`` mm): the affine stage, the
        network on the aligned moving image, and the two composed."""
        from ddmr.spatial.warp import warp_image

        if not self.prealign:
            return self.network(fixed, moving)
        alignment = own_alignment(fixed, moving, spacing)
        aligned = warp_image(moving, alignment.displacement(fixed.shape[2:]))
        return alignment.compose_after(self.network(fixed, aligned).float())
