"""What a registration is given: images and label maps in any of the forms users hold.

A :class:`Volume` carries what one side of a pair is made of: its intensity array on its
own grid, the grid (:class:`ddmr.spatial.grid.Geometry`, RAS mm), a name for messages, and an
optional label map on the same grid. :func:`read_volume` accepts

* a path (NIfTI, NRRD, MHA; read by :func:`ddmr.io.images.load_image` / ``load_labels``);
* a nibabel image (anything with ``.affine`` and ``.get_fdata`` / ``.dataobj``);
* a ``SimpleITK.Image`` (LPS origin, spacing and direction, converted to RAS);
* an ``(array, Geometry)`` or ``(array, affine (4, 4) RAS)`` tuple (array (I, J, K)),

and validates each the same way: 3D, finite, positive spacing; images not constant;
labels integers 0..255.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddmr.errors import InputError
from ddmr.io.images import load_image, load_labels
from ddmr.spatial.grid import Geometry, check_geometry, check_same_geometry

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
#: Everything :func:`read_volume` accepts for one image or label map.
ImageInput = Any

#: An intensity image with at most this many distinct integer values looks like a label map.
LABEL_LIKE_VALUES = 64


@dataclass(frozen=True, eq=False)
class Volume:
    """One side of a pair: ``array`` (I, J, K) float32 on ``geometry``, a ``name`` for
    messages (the file's path, or ``<fixed array>``), and optionally ``labels`` (I, J, K)
    uint8 on the same grid with its ``labels_name``."""

    array: np.ndarray
    geometry: Geometry
    name: str
    labels: np.ndarray | None = None
    labels_name: str | None = None

    def with_labels(self, labels: np.ndarray | None, labels_name: str | None) -> Volume:
        """The same volume with a label map (checked to lie on the same grid by the
        caller)."""
        return Volume(self.array, self.geometry, self.name, labels, labels_name)


def _validated(array: Any, geometry: Geometry, name: str, labels: bool) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim > 3 and all(n == 1 for n in array.shape[3:]):
        array = array.reshape(array.shape[:3])
    if array.ndim != 3:
        raise InputError(f"{name}: array has shape {array.shape}, expected a 3D volume")
    if tuple(array.shape) != geometry.shape:
        raise InputError(f"{name}: array shape {array.shape} differs from its grid "
                         f"{geometry.shape}")
    check_geometry(geometry, name)
    if array.dtype.kind not in "biuf":
        raise InputError(f"{name}: voxel type {array.dtype} is not numeric")
    kind = "label map" if labels else "image"
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise InputError(f"{name}: {kind} contains NaN or Inf voxels")
    if labels:
        if not np.array_equal(array, np.round(array)):
            raise InputError(f"{name}: label map has non-integer values")
        if array.size and (array.min() < 0 or array.max() > 255):
            raise InputError(f"{name}: label values must be 0..255")
        return array.astype(np.uint8)
    array = array.astype(np.float32)
    if float(array.max()) == float(array.min()):
        raise InputError(f"{name}: image is constant (every voxel is {array.flat[0]:g})")
    return array


def _from_object(value: Any, name: str) -> tuple[np.ndarray, Geometry] | None:
    """(array, geometry) of a nibabel or SimpleITK image, a tuple; None for a path."""
    if isinstance(value, str | os.PathLike):
        return None
    if isinstance(value, tuple):
        if len(value) != 2:
            raise InputError(f"{name}: expected (array, Geometry) or (array, affine), got a "
                             f"tuple of {len(value)} items")
        array, where = value
        if isinstance(where, Geometry):
            return np.asarray(array), where
        affine = np.asarray(where, dtype=np.float64)
        if affine.shape != (4, 4):
            raise InputError(f"{name}: the second item must be a Geometry or a 4x4 affine, "
                             f"got shape {affine.shape}")
        array = np.asarray(array)
        return array, Geometry(affine, array.shape[:3] if array.ndim >= 3 else (1, 1, 1))
    if hasattr(value, "affine") and hasattr(value, "dataobj"):  # nibabel
        array = np.asanyarray(value.dataobj)
        return array, Geometry(np.asarray(value.affine, dtype=np.float64),
                               array.shape[:3] if array.ndim >= 3 else (1, 1, 1))
    if type(value).__module__.startswith("SimpleITK"):
        from ddmr.io.convert import from_sitk

        if value.GetDimension() != 3 or value.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"{name}: SimpleITK image must be scalar 3D")
        return from_sitk(value)
    raise InputError(f"{name}: expected a file path, a nibabel or SimpleITK image, or an "
                     f"(array, Geometry) / (array, affine) tuple; got {type(value).__name__}")


def read_volume(value: ImageInput, name: str, labels: bool = False
                ) -> tuple[np.ndarray, Geometry, str]:
    """``(array, geometry, description)`` of one image (float32) or label map (uint8,
    ``labels=True``) given in any form of the module docstring; ``name`` (``fixed``,
    ``moving_seg``, ...) names in-memory inputs in messages."""
    converted = _from_object(value, name)
    if converted is None:
        array, geometry = (load_labels if labels else load_image)(value)
        return array, geometry, str(Path(value).resolve())
    array, geometry = converted
    return _validated(array, geometry, name, labels), geometry, f"<{name} array>"


def looks_like_labels(array: np.ndarray) -> bool:
    """Whether an intensity image (I, J, K) holds only a few integer values (a label map
    given where an image was expected)."""
    sample = array.ravel(order="K")[:: max(1, array.size // 200_000)]  # no copy
    if not np.array_equal(sample, np.round(sample)):
        return False
    return np.unique(sample).size <= LABEL_LIKE_VALUES and \
        np.unique(array).size <= LABEL_LIKE_VALUES


def read_pair_side(image: ImageInput, labels: ImageInput | None, name: str) -> Volume:
    """One side of a pair (``name``: ``fixed`` or ``moving``) as a :class:`Volume`; a
    label map is checked to lie on the image's grid. Warns when the image looks like a
    label map."""
    array, geometry, description = read_volume(image, name)
    if looks_like_labels(array):
        logger.warning("%s: the %s image holds only %d integer values; is it a label map? "
                       "(label maps go to --%s-seg)", description, name,
                       np.unique(array).size, name)
    volume = Volume(array, geometry, description)
    if labels is None:
        return volume
    label_array, label_geometry, label_name = read_volume(labels, f"{name}_seg", labels=True)
    check_same_geometry(geometry, label_geometry, [description, label_name])
    return volume.with_labels(label_array, label_name)
