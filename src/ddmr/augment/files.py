"""Synthetic pairs from image files: what ``ddmr augment`` does.

Reads an image (and optionally its label map), min-max normalises it, runs the
augmentation layer on its own grid (spacing from the file) and writes, into a new
folder, ``fixed.nii.gz``, ``moving.nii.gz``, ``fixed_seg.nii.gz``/``moving_seg.nii.gz``,
``displacement.nii.gz`` (ITK/ANTs convention, mm, see :func:`ddmr.io.save_displacement`),
``preview.png`` and ``parameters.json``. The folder is written under a temporary name
and renamed at the end, so nothing half-written is left behind.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ddmr.augment.config import AugmentationConfig
from ddmr.errors import InputError

logger = logging.getLogger(__name__)

OUTPUTS = ("fixed.nii.gz", "moving.nii.gz", "displacement.nii.gz", "preview.png",
           "parameters.json")
LABEL_OUTPUTS = ("fixed_seg.nii.gz", "moving_seg.nii.gz")


def check_output_folder(folder: str | Path, overwrite: bool) -> Path:
    """Refuse an existing non-empty folder (unless ``overwrite``) or a file in its place."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise InputError(f"{folder}: folder exists and is not empty (use --overwrite)")
    return folder


def augment_files(image_path: str | Path, output: str | Path,
                  labels_path: str | Path | None = None,
                  config: AugmentationConfig | None = None, seed: int = 0,
                  overwrite: bool = False) -> dict:
    """Make one synthetic pair from ``image_path`` and write it into ``output``.

    Returns the content of ``parameters.json`` (drawn parameters, configuration, seed,
    spacing and the input files).
    """
    import torch

    from ddmr.augment.layer import AugmentationLayer
    from ddmr.augment.preview import pair_preview
    from ddmr.io import (
        atomic_directory,
        check_same_geometry,
        load_image,
        load_labels,
        save_displacement,
        save_image,
        save_labels,
    )

    config = config or AugmentationConfig()
    output = check_output_folder(output, overwrite)
    array, geometry = load_image(image_path)
    if any(n < 2 for n in geometry.shape):
        raise InputError(f"{image_path}: every axis needs at least 2 voxels, got shape "
                         f"{geometry.shape}")
    labels = None
    if labels_path is not None:
        label_array, label_geometry = load_labels(labels_path)
        check_same_geometry(geometry, label_geometry, (image_path, labels_path))
        labels = torch.from_numpy(label_array)[None, None]
    low, high = float(array.min()), float(array.max())
    image = torch.from_numpy((array - low) / (high - low))[None, None].float()
    spacing = geometry.spacing
    logger.info("augmenting %s: shape %s, spacing %s mm", image_path, geometry.shape, spacing)
    pair = AugmentationLayer(config, seed=seed)(image, labels, spacing)
    record = {
        "image": str(Path(image_path).resolve()),
        "labels": None if labels_path is None else str(Path(labels_path).resolve()),
        "seed": seed, "spacing_mm": list(spacing), "shape": list(geometry.shape),
        "config": config.to_dict(), "parameters": pair.parameters.to_dict(),
        "displacement": "ground truth on the fixed grid, ITK/ANTs convention (LPS mm): "
                        "antsApplyTransforms -r fixed -i moving -t displacement.nii.gz "
                        "gives the fixed image",
    }
    with atomic_directory(output) as folder:
        save_image(folder / "fixed.nii.gz", pair.fixed[0, 0].numpy(), geometry)
        save_image(folder / "moving.nii.gz", pair.moving[0, 0].numpy(), geometry)
        if labels is not None:
            save_labels(folder / "fixed_seg.nii.gz", pair.fixed_labels[0, 0].numpy(), geometry)
            save_labels(folder / "moving_seg.nii.gz", pair.moving_labels[0, 0].numpy(),
                        geometry)
        save_displacement(folder / "displacement.nii.gz", pair.displacement[0].numpy(),
                          geometry)
        pair_preview(folder / "preview.png", pair.fixed[0, 0].numpy(),
                     pair.moving[0, 0].numpy(), pair.displacement[0].numpy(), spacing)
        (folder / "parameters.json").write_text(json.dumps(record, indent=2))
    return record
