"""The model's space: where a fixed/moving pair is put before the network sees it.

Training data went through ``ddmr prepare`` (an RAS-aligned isotropic grid over the
image's world box, :mod:`ddmr.spatial.grid`; cubic resampling with anti-aliasing; CT window;
normalisation to [0, 1]) and then through :func:`ddmr.augment.preprocess.preprocess`
(trilinear resize to the card's ``input_size`` with corners aligned, min-max
normalisation). Registration repeats both steps from the options stored in the model
card, with the grid chosen from the *fixed* image; the moving image is resampled onto
the same grid through world coordinates, so its own field of view and orientation are
handled by geometry rather than by voxel padding.

The network's grid (:attr:`ModelSpace.grid`) is the prepared grid resized to
``input_size`` with corners aligned: same first and last voxel centres, spacing
``spacing * (n_prepared - 1) / (n_input - 1)``. A displacement predicted by the network
is in voxels of that grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ddmr.data.prepare import PrepareOptions
from ddmr.errors import InputError
from ddmr.model.card import ModelCard
from ddmr.spatial.grid import Geometry, image_box, intersect, mask_box, resized_grid, target_grid
from ddmr.spatial.resample import (
    SplineSource,
    antialias_sigma,
    applied_sigma,
    resample_axis_aligned,
    resample_spline,
    spline_source,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpace:
    """The prepared grid of one fixed image and the network's grid over it.

    prepared: the grid ``ddmr prepare`` would have made for the fixed image (RAS mm).
    grid: ``input_size`` voxels over the same extent (corners aligned); the network's
        displacement is in voxels of this grid, channels (i, j, k).
    options: the preparation options (CT window, ...).
    """

    prepared: Geometry
    grid: Geometry
    options: PrepareOptions


def model_space(fixed_geometry: Geometry, card: ModelCard,
                fixed_labels: np.ndarray | None = None) -> ModelSpace:
    """The :class:`ModelSpace` of a fixed image for the model described by ``card``.

    When the model was trained on crops around labels (``crop_labels``) and the fixed
    label map is given, the grid covers the same crop; otherwise the whole image.
    """
    options = card.preparation
    input_size = card.input_size
    box = image_box(fixed_geometry)
    if options.crop_labels:
        crop = None
        if fixed_labels is not None:
            crop = mask_box(np.isin(fixed_labels, options.crop_labels), fixed_geometry,
                            options.crop_margin)
        if crop is None:
            logger.warning("the model was trained on crops around labels %s; without them in "
                           "a fixed label map the whole fixed image is used",
                           list(options.crop_labels))
        else:
            box = intersect(crop, box)
    prepared = target_grid(box, options.size, options.spacing, options.resize)
    return ModelSpace(prepared, resized_grid(prepared, input_size), options)


#: Largest difference (source voxels) between the anti-aliasing a :class:`SplineSource`
#: had and the one a pre-aligned target grid asks for, before the source is rebuilt.
SIGMA_TOLERANCE = 0.05


def model_source(image: np.ndarray, geometry: Geometry, space: ModelSpace,
                 point_map: np.ndarray | None = None) -> SplineSource:
    """An image (I, J, K) prepared once for :func:`to_model_space`: CT-windowed when the
    model's preparation was, smoothed against aliasing for the prepared grid (mapped by
    ``point_map`` when given), and turned into cubic B-spline coefficients."""
    options = space.options
    if options.ct_window is not None:
        image = np.clip(image, *options.ct_window)
    return spline_source(image, geometry, 3,
                         antialias_sigma(geometry, _target(space, point_map)))


def source_fits(source: SplineSource, space: ModelSpace,
                point_map: np.ndarray | None = None) -> bool:
    """Whether ``source``'s anti-aliasing is the one the prepared grid mapped by
    ``point_map`` asks for (within :data:`SIGMA_TOLERANCE`), so it can be reused there."""
    wanted = applied_sigma(antialias_sigma(source.geometry, _target(space, point_map)))
    return bool(np.abs(np.subtract(source.sigma, wanted)).max() <= SIGMA_TOLERANCE)


def _target(space: ModelSpace, point_map: np.ndarray | None) -> Geometry:
    if point_map is None:
        return space.prepared
    return Geometry(point_map @ space.prepared.affine, space.prepared.shape)


def to_model_space(image: np.ndarray | SplineSource, geometry: Geometry, space: ModelSpace,
                   name: str, point_map: np.ndarray | None = None) -> torch.Tensor:
    """Resample an image (I, J, K), or its :func:`model_source` (when it is resampled
    more than once), onto the network's grid as in training.

    ``point_map`` (4, 4), RAS mm, maps a point of the fixed image's world to the point of
    this image that it shows (an affine pre-alignment); ``None`` is the identity.
    Returns a (1, 1, *input_size) float32 tensor in [0, 1]. Raises :class:`InputError`
    (naming ``name``) when the image is constant over the model's field of view, e.g.
    when it does not overlap the fixed image.
    """
    from ddmr.augment.preprocess import preprocess

    options = space.options
    target = _target(space, point_map)
    resampled = None
    if not isinstance(image, SplineSource):  # resampled once: axis by axis when it can be
        if options.ct_window is not None:
            image = np.clip(image, *options.ct_window)
        resampled = resample_axis_aligned(image, geometry, target, 3,
                                          antialias_sigma(geometry, target),
                                          cval=float(image.min()))
    if resampled is None:
        source = image if isinstance(image, SplineSource) \
            else model_source(image, geometry, space, point_map)
        resampled = resample_spline(source, target, cval=source.low)
    lo, hi = (options.ct_window if options.ct_window is not None
              else (float(resampled.min()), float(resampled.max())))
    if not hi > lo:
        raise InputError(f"{name}: image is constant inside the fixed image's field of view "
                         "(do the two images overlap in world space?)")
    normalised = np.clip((resampled - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    tensor = torch.from_numpy(normalised)[None, None]
    tensor, _, _ = preprocess(tensor, space.prepared.spacing, space.grid.shape)
    return tensor
