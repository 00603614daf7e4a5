"""Helpers for the registration tests: analytic images in world space, oblique grids,
tiny model files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ddmr.spatial.grid import Geometry

# Gaussian blobs (centre RAS mm, width mm, weight) of a smooth "head" near the origin.
BLOBS = [((-8.0, 5.0, 2.0), 9.0, 1.0), ((10.0, -6.0, -4.0), 7.0, 0.8),
         ((2.0, 12.0, 8.0), 6.0, 0.6), ((-4.0, -10.0, 10.0), 8.0, 0.9),
         ((6.0, 4.0, -12.0), 5.0, 0.7)]


def scene(points: np.ndarray) -> np.ndarray:
    """Intensity of the analytic scene at RAS points (..., 3) in mm."""
    out = np.zeros(points.shape[:-1])
    for centre, width, weight in BLOBS:
        r2 = np.sum((points - np.asarray(centre)) ** 2, axis=-1)
        out += weight * np.exp(-r2 / (2 * width**2))
    return out


def scene_labels(points: np.ndarray) -> np.ndarray:
    """Two labels: 1 near the first blob, 2 near the second (RAS mm)."""
    out = np.zeros(points.shape[:-1], dtype=np.uint8)
    for value, (centre, width, _) in enumerate(BLOBS[:2], start=1):
        r2 = np.sum((points - np.asarray(centre)) ** 2, axis=-1)
        out[r2 < (1.2 * width) ** 2] = value
    return out


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def grid(shape, spacing, direction, centre) -> Geometry:
    """A grid of ``shape`` voxels of ``spacing`` mm along the columns of ``direction``
    (RAS), centred on ``centre``."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction) @ np.diag(spacing)
    half = (np.asarray(shape, dtype=np.float64) - 1) / 2
    affine[:3, 3] = np.asarray(centre) - affine[:3, :3] @ half
    return Geometry(affine, tuple(shape))


def head(points: np.ndarray) -> np.ndarray:
    """A scene with edges (an ellipsoid "head" with blobs inside) at RAS points (..., 3)."""
    radius = np.sqrt(np.sum((points / np.array([24.0, 28.0, 22.0])) ** 2, axis=-1))
    out = 1.0 / (1.0 + np.exp(np.clip((radius - 1.0) * 20.0, -50, 50)))
    for centre, width, weight in BLOBS:
        distance = np.sqrt(np.sum((points - np.asarray(centre)) ** 2, axis=-1))
        out += weight / (1.0 + np.exp(np.clip(distance - width, -50, 50)))
    return out


def sample_scene(geometry: Geometry, shift=(0.0, 0.0, 0.0), labels: bool = False,
                 sharp: bool = False) -> np.ndarray:
    """The scene (:func:`scene`, or :func:`head` if ``sharp``) seen on ``geometry``, moved
    by ``shift`` mm (the image shows the scene at ``p - shift``)."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), -1)
    points = geometry.index_to_world(index) - np.asarray(shift)
    if labels:
        return scene_labels(points)
    return (100.0 * (head(points) if sharp else scene(points))).astype(np.float32)


def oblique_fixed() -> Geometry:
    """Oblique (rotated direction cosines), anisotropic fixed grid."""
    return grid((30, 26, 18), (1.6, 2.0, 2.6), rotation((1, 1, 0.3), 20), (1.0, -1.0, 0.5))


def other_moving() -> Geometry:
    """A moving grid with another orientation (LPI-like, rotated), spacing and a larger,
    shifted field of view."""
    lpi = np.diag([-1.0, -1.0, -1.0])[:, [1, 0, 2]]
    return grid((36, 40, 34), (1.5, 1.4, 1.7), rotation((0.2, -1, 0.5), -15) @ lpi,
                (3.0, 2.0, -2.0))


def save_tiny_model(path: Path, bias: tuple[float, float, float] | None = None,
                    zero: bool = False, spacing: float = 1.0, size: int = 32) -> Path:
    """A 32^3 untrained U-Net model file; ``bias`` (voxels of the model grid, channels
    i, j, k) makes its output that constant translation; ``zero`` the identity."""
    from ddmr.designs import get_design
    from ddmr.model.file import save_model
    from ddmr.nn import UNet, UNetConfig

    torch.manual_seed(0)
    network = UNet(UNetConfig(encoder=(4, 8), head=(4,)))
    if bias is not None or zero:
        with torch.no_grad():
            network.output.weight.zero_()
            network.output.bias.copy_(torch.tensor(bias or (0.0, 0.0, 0.0)))
    preparation = {"format": "ddmr-prepared",
                   "options": {"size": [size] * 3, "spacing": spacing, "resize": "fit",
                               "ct_window": None, "crop_labels": []}}
    card = {"design": get_design("BL-N").to_dict(), "input_size": [size] * 3,
            "label_values": [0, 1, 2], "preparation": json.dumps(preparation),
            "validation": {"best_val_loss": 0.5, "last": {"val_dsc": 0.7}},
            "training": {"steps": 3}, "command": "ddmr train --design BL-N (test)"}
    return save_model(path, network, card)


def tampered_copy(source, target) -> None:
    """Copy a model file with one weight changed and its card (and checksum) kept."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(source))
    name = sorted(state)[0]
    state[name] = state[name] + 0.01
    save_file(state, str(target), metadata=metadata)


def write_pair(folder: Path, shift=(2.0, -3.0, 1.5)) -> Path:
    """An oblique anisotropic fixed image (:func:`oblique_fixed`) and a moving one on
    another grid (:func:`other_moving`) showing the scene moved by ``shift`` mm, with
    their label maps: ``fixed``, ``moving``, ``fixed_seg``, ``moving_seg`` ``.nii.gz`` in
    ``folder``. Returns ``folder``."""
    from ddmr.io.images import save_image, save_labels

    fixed_geometry, moving_geometry = oblique_fixed(), other_moving()
    save_image(folder / "fixed.nii.gz", sample_scene(fixed_geometry), fixed_geometry)
    save_image(folder / "moving.nii.gz", sample_scene(moving_geometry, shift), moving_geometry)
    save_labels(folder / "fixed_seg.nii.gz", sample_scene(fixed_geometry, labels=True),
                fixed_geometry)
    save_labels(folder / "moving_seg.nii.gz", sample_scene(moving_geometry, shift, labels=True),
                moving_geometry)
    return folder


def refused_by(command: str, argv: list[str], capsys) -> str:
    """Run ``ddmr COMMAND ARGV``: exit status 2 and one line on stderr, returned."""
    from ddmr.cli import main

    status = main([command, *argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"ddmr {command}: error: "), lines[0]
    return lines[0]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    """A CSV file of ``header`` and ``rows``."""
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_batch_images(folder: Path) -> Path:
    """A batch's inputs in ``folder``: ``fixed`` (:func:`oblique_fixed`), ``moving`` and
    ``other`` (:func:`other_moving`, the scene moved two ways) ``.nii.gz``, and
    ``tiny.safetensors`` (:func:`save_tiny_model`). Returns ``folder``."""
    from ddmr.io.images import save_image

    fixed_geometry, moving_geometry = oblique_fixed(), other_moving()
    save_image(folder / "fixed.nii.gz", sample_scene(fixed_geometry), fixed_geometry)
    save_image(folder / "moving.nii.gz", sample_scene(moving_geometry, (1, 2, 0)),
               moving_geometry)
    save_image(folder / "other.nii.gz", sample_scene(moving_geometry, (0, -2, 1)),
               moving_geometry)
    save_tiny_model(folder / "tiny.safetensors")
    return folder

