"""What kind of scan each image is, as the intensity mapping needs it: CT (Hounsfield
units, air at about -1000) or another kind (MR). A CT's intensities reach the affine
stage and the engine through a fixed HU window (:data:`CT_WINDOW_HU`) instead of its own
percentiles, so that two patients' CTs are mapped alike; a CT against an image of another
kind needs a multimodal similarity (MI or MIND) and is refused with local NCC."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ddmr.errors import InputError

#: Hounsfield units mapped to 0 and 1 for a CT (soft tissue and contrast; air and fat
#: below it are 0, bone above it 1).
CT_WINDOW_HU = (-200.0, 300.0)
#: A CT shows air: at least :data:`AIR_FRACTION` of its voxels at or below this (HU).
AIR_HU = -500.0
AIR_FRACTION = 0.01


@dataclass(frozen=True)
class Modality:
    """kind: ``ct`` or ``other``; scale: (low, high) intensities mapped to 0 and 1; how:
    ``window`` (a CT's HU window) or ``percentiles`` (the image's own)."""

    kind: str
    scale: tuple[float, float]
    how: str

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "scale": [float(v) for v in self.scale], "how": self.how}


def looks_like_ct(array: np.ndarray) -> bool:
    """Whether ``array`` (I, J, K) holds Hounsfield units: air (<= :data:`AIR_HU`) in at
    least :data:`AIR_FRACTION` of the voxels, counted on every second voxel, and soft
    tissue values above it (an MR is never negative by hundreds)."""
    sample = array[::2, ::2, ::2]
    if sample.size == 0 or float(sample.max()) <= 0.0:
        return False
    return float(np.count_nonzero(sample <= AIR_HU)) >= AIR_FRACTION * sample.size


def modality(array: np.ndarray, percentile_scale: tuple[float, float]) -> Modality:
    """The :class:`Modality` of an image, given its own percentile scale
    (:func:`~ddmr.registration.moments.intensity_scale`) for images that are not CT."""
    if looks_like_ct(array):
        return Modality("ct", CT_WINDOW_HU, "window")
    return Modality("other", percentile_scale, "percentiles")


def check_pair(fixed: Modality, moving: Modality, similarity: str | None,
               affine: str | bool) -> None:
    """Raise :class:`~ddmr.errors.InputError` for a CT against an image of another kind
    unless both the engine's similarity (``similarity``; None: no engine) and the affine
    stage (``affine``: ``ants``, MI, or False, none) suit two kinds: local NCC and the
    world affine stage's NCC compare intensities of one kind only."""
    if fixed.kind == moving.kind:
        return
    if similarity in ("mi", "mind") and affine in ("ants", False):
        return
    ct_side = "fixed" if fixed.kind == "ct" else "moving"
    raise InputError(
        f"the {ct_side} image is a CT (Hounsfield units) and the other is not: DDMR's "
        "affine stage and local NCC compare intensities of one kind only; use "
        "--similarity mi (or mind) with --affine ants (or --affine none)")
