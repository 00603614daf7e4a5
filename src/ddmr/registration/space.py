"""The model's space: where a fixed/moving pair is put before the network sees it.

Registration puts both images through the preparation recipe the model's training data
went through (:mod:`ddmr.prepare.recipe`, options from the model card), with the
prepared grid chosen from the *fixed* image; the moving image is resampled onto the same
grid through world coordinates (and the affine point map found so far), so its own
field of view and orientation are handled by geometry rather than by voxel padding.

The network's grid (:attr:`ModelSpace.grid`) is the prepared grid resized to
``input_size`` with corners aligned (:func:`ddmr.spatial.grid.resized_grid`). A
displacement predicted by the network is in voxels of that grid.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch

from ddmr.model.card import ModelCard
from ddmr.prepare.recipe import (
    PrepareOptions,
    intensity_source,
    prepare_intensities,
    prepared_grid,
    preprocess,
)
from ddmr.spatial.grid import Geometry, resized_grid
from ddmr.spatial.resample import SplineSource, antialias_sigma, applied_sigma

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpace:
    """The prepared grid of one fixed image and the network's grid over it.

    prepared: the grid ``ddmr prepare`` would have made for the fixed image (RAS mm), at
        the voxel size the training data had (a larger field of view is cropped, a
        smaller one padded, rather than the voxels made coarser).
    grid: ``input_size`` voxels over the same extent (corners aligned); the network's
        displacement is in voxels of this grid, channels (i, j, k).
    options: the preparation options (CT window, ...).
    coverage: what ``summary.json`` records: the fixed box's and the grid's extents (mm),
        and how much of the box was cropped or padded along each axis (mm).
    """

    prepared: Geometry
    grid: Geometry
    options: PrepareOptions
    coverage: dict | None = None


def model_space(fixed_geometry: Geometry, card: ModelCard,
                fixed_labels: np.ndarray | None = None) -> ModelSpace:
    """The :class:`ModelSpace` of a fixed image for the model described by ``card``.

    When the model was trained on crops around labels (``crop_labels``) and the fixed
    label map is given, the grid covers the same crop; otherwise the whole image.
    """
    options = card.preparation
    trained = trained_spacing(card, options)
    if options.resize == "fit":  # the spacing training had, the field of view as it comes
        options = dataclasses.replace(options, spacing=trained, resize="pad")
    if options.crop_labels and fixed_labels is None:
        logger.warning("the model was trained on crops around labels %s; without a fixed "
                       "label map the whole fixed image is used", list(options.crop_labels))
    prepared = prepared_grid(fixed_geometry, options, fixed_labels)
    if prepared is None:
        logger.warning("the model was trained on crops around labels %s; the fixed label "
                       "map has none of them, so the whole fixed image is used",
                       list(options.crop_labels))
        prepared = prepared_grid(fixed_geometry, options)
    return ModelSpace(prepared, resized_grid(prepared, card.input_size), options,
                      _coverage(fixed_geometry, options, fixed_labels, prepared))


def trained_spacing(card: ModelCard, options: PrepareOptions) -> float:
    """The prepared voxel size (mm) of the model's training data: the card's data summary
    (``data.spacing_mm``), else the preparation option."""
    spacing = (card.get("data") or {}).get("spacing_mm")
    if isinstance(spacing, list | tuple) and len(spacing) == 3:
        return float(max(spacing))
    return float(options.spacing)


def _coverage(geometry: Geometry, options: PrepareOptions, labels, prepared: Geometry
              ) -> dict:
    from ddmr.spatial.grid import image_box, intersect, mask_box

    box = image_box(geometry)
    if options.crop_labels and labels is not None:
        crop = mask_box(np.isin(labels, options.crop_labels), geometry, options.crop_margin)
        box = box if crop is None else intersect(crop, box)
    extent = box[1] - box[0]
    grid_extent = np.asarray(prepared.shape) * np.asarray(prepared.spacing)
    return {"box_mm": np.round(extent, 2).tolist(),
            "grid_mm": np.round(grid_extent, 2).tolist(),
            "cropped_mm": np.round(np.maximum(extent - grid_extent, 0), 2).tolist(),
            "padded_mm": np.round(np.maximum(grid_extent - extent, 0), 2).tolist(),
            "prepared_spacing_mm": float(prepared.spacing[0])}


#: Largest difference (source voxels) between the anti-aliasing a :class:`SplineSource`
#: had and the one a pre-aligned target grid asks for, before the source is rebuilt.
SIGMA_TOLERANCE = 0.05


def model_source(image: np.ndarray, geometry: Geometry, space: ModelSpace,
                 point_map: np.ndarray | None = None) -> SplineSource:
    """An image (I, J, K) prepared once for :func:`to_model_space` (the recipe's
    :func:`ddmr.prepare.recipe.intensity_source` for the prepared grid mapped by
    ``point_map``)."""
    return intensity_source(image, geometry, _target(space, point_map), space.options)


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
    normalised, _ = prepare_intensities(
        image, geometry, _target(space, point_map), space.options, name,
        "inside the fixed image's field of view (do the two images overlap in world space?)")
    tensor, _, _ = preprocess(torch.from_numpy(normalised)[None, None], space.prepared.spacing,
                              space.grid.shape)
    return tensor
