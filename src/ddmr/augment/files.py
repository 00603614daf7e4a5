"""Synthetic pairs from image files: what ``ddmr augment`` does.

Reads an image (and optionally its label map), min-max normalises it, runs the
augmentation layer on its own grid (spacing from the file) and writes, into a new
folder, ``fixed.nii.gz``, ``moving.nii.gz``, ``fixed_seg.nii.gz``/``moving_seg.nii.gz``,
``displacement.nii.gz`` (ITK/ANTs convention, mm, see :func:`ddmr.io.fields.save_displacement`),
``preview.png`` and ``parameters.json``. The folder is written under a temporary name
and renamed at the end, so nothing half-written is left behind.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from ddmr.augment.config import AugmentationConfig
from ddmr.errors import InputError

logger = logging.getLogger(__name__)

OUTPUTS = ("fixed.nii.gz", "moving.nii.gz", "displacement.nii.gz", "preview.png",
           "parameters.json")
LABEL_OUTPUTS = ("fixed_seg.nii.gz", "moving_seg.nii.gz")


def check_output_folder(folder: str | Path, overwrite: bool) -> Path:
    """Refuse an existing non-empty folder (unless ``overwrite``), a file in its place and a
    place that cannot be written (:func:`ddmr.io.files.check_output_folder`)."""
    from ddmr.io.files import check_output_folder as check_writable

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise InputError(f"{folder}: folder exists and is not empty (use --overwrite)")
    return check_writable(folder, overwrite=True)


#: peak bytes of building the TPS evaluation operator, per float64 entry of it (measured:
#: 5.1-5.2 for 8 and 12 control points per axis; the float64 distances, the kernel's
#: temporaries and the float32 copy)
TPS_OPERATOR_FACTOR = 5.5
#: the same for the (M + 4)^2 float64 system matrix (distances, kernel, system, LU)
TPS_SYSTEM_FACTOR = 4.0


def tps_memory_bytes(shape: Sequence[int], spacing: Sequence[float],
                     config: AugmentationConfig) -> int:
    """Peak bytes the augmentation's thin-plate spline takes to set up for an image of
    ``shape`` voxels of ``spacing`` mm (0 without the non-rigid part): its (M + 4)^2 system
    for M = tps_grid^3 control points and its (P, M + 4) evaluation operator on the padded
    node grid of P nodes (the grid of :class:`ddmr.augment.transform.TransformPlan`)."""
    from ddmr.augment.grid import regular_grid

    if not config.nonrigid:
        return 0
    per_axis = (config.tps_grid - 1) * config.tps_samples_per_cell + 1
    grid = regular_grid(shape, spacing, (per_axis,) * 3, config.max_tps + max(spacing),
                        extra=2, max_margin=per_axis // 4 + 2)
    nodes = math.prod(int(n) for n in grid.padded_shape)
    unknowns = config.tps_grid ** 3 + 4
    return int(8 * (TPS_OPERATOR_FACTOR * nodes * unknowns
                    + TPS_SYSTEM_FACTOR * unknowns * unknowns))


def check_tps_memory(shape: Sequence[int], spacing: Sequence[float],
                     config: AugmentationConfig, option: str = "--tps-grid") -> None:
    """Raise :class:`ConfigError` naming ``option`` when the thin-plate spline of ``config``
    would need more memory than this process can allocate (:func:`ddmr.memory.available_memory`),
    before anything is allocated."""
    from ddmr.errors import ConfigError
    from ddmr.memory import available_memory

    needed = tps_memory_bytes(shape, spacing, config)
    available = available_memory()
    if needed > available:
        raise ConfigError(
            f"{option} {config.tps_grid}: a thin-plate spline of {config.tps_grid}^3 control "
            f"points on a {'x'.join(str(int(n)) for n in shape)} image needs about "
            f"{needed / 1e9:.3g} GB of memory, {available / 1e9:.3g} GB is available; use "
            "fewer control points per axis (default 8)")


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
    from ddmr.io.fields import save_displacement
    from ddmr.io.files import atomic_directory
    from ddmr.io.images import load_image, load_labels, save_image, save_labels
    from ddmr.spatial.grid import check_same_geometry

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
    check_tps_memory(geometry.shape, geometry.spacing, config)
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
    with atomic_directory(output, overwrite) as folder:
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
