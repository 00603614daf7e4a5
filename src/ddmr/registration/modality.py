"""What kind of scan each image is, as the intensity mapping needs it: CT (Hounsfield
units, air at about -1000) or another kind (MR). A CT's intensities reach the affine
stage and the engine through a fixed HU window (:data:`CT_WINDOW_HU`) instead of its own
percentiles, so that two patients' CTs are mapped alike (issue 32). A CT against an image
of another kind fails QC's ``image_kind`` check where the similarity compares
intensities (:mod:`ddmr.registration.qc`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Hounsfield units mapped to 0 and 1 for a CT (soft tissue and contrast; air and fat
#: below it are 0, bone above it 1).
CT_WINDOW_HU = (-200.0, 300.0)
#: Values at or below this (HU) are air in a CT; no MR magnitude image has them.
HOUNSFIELD_AIR = -500.0
#: An image with at least this fraction of its voxels at or below :data:`HOUNSFIELD_AIR`
#: is a CT in Hounsfield units (a brain-sized crop of an abdomen: 0.3 % of bowel gas).
HOUNSFIELD_AIR_FRACTION = 0.001


@dataclass(frozen=True)
class Modality:
    """kind: ``ct`` or ``other``; scale: (low, high) intensities mapped to 0 and 1; how:
    ``window`` (a CT's HU window) or ``percentiles`` (the image's own)."""

    kind: str
    scale: tuple[float, float]
    how: str

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "scale": [float(v) for v in self.scale], "how": self.how}


def looks_like_ct(values: np.ndarray) -> bool:
    """Whether ``values`` (any shape; a regular subsample of an image will do) are a CT's
    in Hounsfield units: at least :data:`HOUNSFIELD_AIR_FRACTION` of them air."""
    return float(np.mean(values <= HOUNSFIELD_AIR)) >= HOUNSFIELD_AIR_FRACTION


def modality(array: np.ndarray, percentile_scale: tuple[float, float]) -> Modality:
    """The :class:`Modality` of an image (I, J, K), given its own percentile scale
    (:func:`~ddmr.registration.moments.intensity_scale`) for images that are not CT."""
    if looks_like_ct(array[::2, ::2, ::2]):
        return Modality("ct", CT_WINDOW_HU, "window")
    return Modality("other", percentile_scale, "percentiles")
