"""The one preparation recipe: how an image becomes what a network sees.

``ddmr prepare`` makes training data with it, and registration puts a new pair through
the same steps (nnU-Net's rule: inference runs the preprocessor that prepared the
training data), from the options a model's card stores:

1. clip intensities to the CT window, if one is given (:func:`window`);
2. choose the prepared grid (:func:`prepared_grid`): RAS-aligned, isotropic, ``size``
   voxels, over the whole image or over the box around ``crop_labels`` plus
   ``crop_margin`` mm (:func:`ddmr.spatial.grid.target_grid`);
3. resample in world space: cubic B-spline with Gaussian anti-aliasing where the grid is
   coarser (:mod:`ddmr.spatial.resample`) for the image, nearest neighbour for labels;
   outside the image is the image's minimum and background;
4. normalise to [0, 1]: the CT window's bounds, else the resampled image's min and max
   (:func:`prepare_intensities`);
5. on the way into the network: resize to its ``input_size`` with corners aligned
   (trilinear; labels nearest) and min-max normalise (:func:`preprocess`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ddmr.errors import ConfigError, InputError
from ddmr.spatial.grid import (
    RESIZE_MODES,
    Geometry,
    image_box,
    intersect,
    mask_box,
    resized_spacing,
    target_grid,
)
from ddmr.spatial.resample import (
    SplineSource,
    antialias_sigma,
    resample_spline,
    resample_to,
    spline_source,
)


@dataclass(frozen=True)
class PrepareOptions:
    """Options of ``ddmr prepare`` (see the module docstring for what each step does).

    ``size`` is the prepared grid in voxels, ``spacing`` its voxel size in mm (a lower
    bound in ``resize="fit"`` mode), ``crop_margin`` in mm, ``ct_window`` in the image's
    units (HU for CT). Atlas iterations are per ANTs resolution level.
    """

    layout: str = "auto"
    size: tuple[int, int, int] = (128, 128, 128)
    spacing: float = 1.0
    resize: str = "fit"
    crop_labels: tuple[int, ...] = ()
    crop_margin: float = 10.0
    ct_window: tuple[float, float] | None = None
    merge_labels: str | None = None
    atlas: str | None = None
    atlas_labels: str | None = None
    labels_dir: str | None = None
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_file: str | None = None
    seed: int = 0
    dtype: str = "float32"
    atlas_syn_iterations: tuple[int, ...] = (40, 20, 0)
    atlas_affine_iterations: tuple[int, ...] = (200, 100, 50)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for an impossible option of how an image is made.
        The options about a dataset's files (``layout``, ``split``) are the dataset code's
        to check (:func:`ddmr.prepare.dataset.check_options`, which calls this too): the
        recipe imports nothing of :mod:`ddmr.data`, so a model card's options are checked
        without it."""
        if len(self.size) != 3 or any(int(n) < 2 for n in self.size):
            raise ConfigError(f"--size {self.size}: need three sizes of at least 2 voxels")
        if not np.isfinite(self.spacing) or self.spacing <= 0:
            raise ConfigError(f"--spacing {self.spacing}: must be a positive number of mm")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"--resize {self.resize}: choose one of {', '.join(RESIZE_MODES)}")
        if any(not 0 <= v <= 255 for v in self.crop_labels):
            raise ConfigError(f"--crop-label {self.crop_labels}: labels are 0..255")
        if not np.isfinite(self.crop_margin) or self.crop_margin < 0:
            raise ConfigError(f"--crop-margin {self.crop_margin}: must be >= 0 mm")
        if self.ct_window is not None and not self.ct_window[0] < self.ct_window[1]:
            raise ConfigError(f"--ct-window {self.ct_window}: need LO < HI")
        if (self.atlas is None) != (self.atlas_labels is None):
            raise ConfigError("--atlas and --atlas-labels go together")
        if self.dtype not in ("float32", "float16"):
            raise ConfigError(f"--dtype {self.dtype}: choose float32 or float16")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def window(image: np.ndarray, options: PrepareOptions) -> np.ndarray:
    """Step 1: the image clipped to the CT window (unchanged without one)."""
    return image if options.ct_window is None else np.clip(image, *options.ct_window)


def prepared_grid(geometry: Geometry, options: PrepareOptions,
                  labels: np.ndarray | None = None) -> Geometry | None:
    """Step 2: the prepared grid of an image on ``geometry``: over its whole world box,
    or, with ``crop_labels`` and a label map, over the box of those labels plus the
    margin (None when no voxel carries them)."""
    box = image_box(geometry)
    if options.crop_labels and labels is not None:
        crop = mask_box(np.isin(labels, options.crop_labels), geometry, options.crop_margin)
        if crop is None:
            return None
        box = intersect(crop, box)
    return target_grid(box, options.size, options.spacing, options.resize)


def intensity_source(image: np.ndarray, geometry: Geometry, target: Geometry,
                     options: PrepareOptions) -> SplineSource:
    """Steps 1 and 3 prepared once for an image resampled more than once: windowed,
    smoothed against aliasing for ``target`` and turned into spline coefficients."""
    image = window(image, options)
    return spline_source(image, geometry, 3, antialias_sigma(geometry, target))


def prepare_intensities(image: np.ndarray | SplineSource, geometry: Geometry,
                        target: Geometry, options: PrepareOptions, name: str,
                        where: str = "inside the prepared region"
                        ) -> tuple[np.ndarray, tuple[float, float]]:
    """Steps 1, 3 and 4: an image (I, J, K) on ``geometry`` (or its
    :func:`intensity_source`) resampled onto ``target`` and normalised to [0, 1].
    Returns the float32 array and the (low, high) values mapped to 0 and 1. Raises
    :class:`InputError` (naming ``name``; ``where`` says where) for an image constant on
    ``target``."""
    if isinstance(image, SplineSource):
        resampled = resample_spline(image, target, cval=image.low)
    else:
        image = window(image, options)
        resampled = resample_to(image, geometry, target, order=3, cval=float(image.min()),
                                antialias=True)
    lo, hi = (options.ct_window if options.ct_window is not None
              else (float(resampled.min()), float(resampled.max())))
    if not hi > lo:
        raise InputError(f"{name}: image is constant {where}")
    return np.clip((resampled - lo) / (hi - lo), 0.0, 1.0).astype(np.float32), (lo, hi)


def prepare_labels(labels: np.ndarray, geometry: Geometry, target: Geometry) -> np.ndarray:
    """Step 3 for a label map: nearest neighbour onto ``target``, background outside."""
    return resample_to(labels, geometry, target, order=0, cval=0).astype(np.uint8)


def minmax_normalise(image: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Map each sample of ``image`` (B, ...) linearly onto [0, 1]; constant samples become 0."""
    flat = image.reshape(image.shape[0], -1)
    low, high = torch.aminmax(flat, dim=1)
    shape = (-1,) + (1,) * (image.ndim - 1)
    low, high = low.view(shape), high.view(shape)
    span = high - low
    varies = span > eps
    # a division (not a multiplication by 1 / span) maps the maximum to exactly 1
    out = (image - low) / torch.where(varies, span, torch.ones_like(span))
    return out * varies.to(out.dtype)


def resize_image(image: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Trilinear resize of (B, C, D, H, W) to (B, C, *shape), corners aligned."""
    if tuple(image.shape[2:]) == tuple(shape):
        return image
    return F.interpolate(image.float(), size=tuple(shape), mode="trilinear", align_corners=True)


def resize_labels(labels: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of integer labels (B, 1, D, H, W) to (B, 1, *shape),
    corners aligned; keeps the dtype and the label values."""
    if tuple(labels.shape[2:]) == tuple(shape):
        return labels
    axes = [torch.linspace(-1.0, 1.0, int(n), device=labels.device) if n > 1
            else torch.zeros(1, device=labels.device) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).flip(-1)
    grid = grid.unsqueeze(0).expand(labels.shape[0], *grid.shape).contiguous()
    out = F.grid_sample(labels.float(), grid, mode="nearest", align_corners=True)
    return out.round().to(labels.dtype)


def preprocess(image: torch.Tensor, spacing: Sequence[float],
               shape: Sequence[int] | None = None, labels: torch.Tensor | None = None,
               normalise: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[float, float, float]]:
    """Resize ``image`` (B, 1, D, H, W) (and ``labels``) to ``shape`` (None keeps it) and
    min-max normalise it per sample. Returns (image, labels, new spacing in mm)."""
    spacing = tuple(float(s) for s in spacing)
    if shape is not None:
        shape = tuple(int(n) for n in shape)
        new_spacing = resized_spacing(spacing, image.shape[2:], shape)
        image = resize_image(image, shape)
        labels = None if labels is None else resize_labels(labels, shape)
        spacing = new_spacing
    image = image.float()
    if normalise:
        image = minmax_normalise(image)
    return image, labels, spacing
