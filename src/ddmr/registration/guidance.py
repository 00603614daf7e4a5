"""Label guidance at registration time (issue 32): the labels a user names (``--guide``)
pull the affine stage and the engine towards their overlap, beside the image similarity.

The term is the mean soft Dice over the guided labels, counted only where both scans have
data (a weight ``w`` on the fixed grid: 1 where the point falls inside the moving image,
0 where it does not):

    D_k = 2 sum(w F_k W_k) / (sum(w F_k) + sum(w W_k)),

``F_k`` the fraction of each fixed voxel that is label k (the label map's indicator,
anti-aliased onto the level's grid) and ``W_k`` the moving one's warped. Its gradient
with respect to ``W_k`` is ``w (2 F_k - D_k) / (sum(w F_k) + sum(w W_k))``; the engine
forms its force from it as from the image similarity's. Labels a scan lacks within the
overlap do not count (a field of view that cuts an organ off is not a mismatch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ddmr.errors import InputError

if TYPE_CHECKING:  # (torch is imported by the functions that use it: the command line
    import torch  # parses --guide before torch is loaded)

    from ddmr.spatial.grid import Geometry

#: Weight of the guidance term beside the affine stage's similarity (NCC, in [-1, 1]).
AFFINE_WEIGHT = 1.0
#: Weight of the guidance term beside the engine's similarity: chosen from a curve (0.03-1)
#: on the bench's own pairs, CT and brains (benchmarks/RESULTS.md, issue 32): at 0.3 every
#: CT pair's held-out organs beat greedy's by 0.10 and the brains' held-out structures
#: rise most; more weight matches the guided labels better and the others worse.
ENGINE_WEIGHT = 0.3


@dataclass(frozen=True)
class Guide:
    """The guided label values, the two label maps (I, J, K) on their images' grids, and
    the weight of the guidance term in the engine."""

    labels: tuple[int, ...]
    fixed: np.ndarray
    moving: np.ndarray
    engine_weight: float = ENGINE_WEIGHT

    def fixed_on(self, geometry: Geometry, grid: Geometry) -> np.ndarray:
        """The fixed map's label fractions on ``grid``: (K, *grid.shape) float32."""
        return fractions_on(self.fixed, geometry, grid, self.labels)

    def moving_on(self, geometry: Geometry, grid: Geometry) -> np.ndarray:
        """The moving map's label fractions on ``grid``: (K, *grid.shape) float32."""
        return fractions_on(self.moving, geometry, grid, self.labels)

    def summary(self) -> dict:
        return {"labels": list(self.labels), "affine_weight": AFFINE_WEIGHT,
                "engine_weight": self.engine_weight}


def parse_labels(text: str) -> tuple[int, ...]:
    """``"5,1,2"`` -> (5, 1, 2); :class:`~ddmr.errors.InputError` for anything else."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--guide {text!r}: expected label values such as 5,1,2") from None
    if not values or any(not 0 < v < 256 for v in values):
        raise InputError(f"--guide {text!r}: expected label values 1..255 such as 5,1,2")
    return tuple(dict.fromkeys(values))


def make_guide(labels: Sequence[int] | None, fixed: np.ndarray | None,
               moving: np.ndarray | None, engine_weight: float | None = None
               ) -> Guide | None:
    """The :class:`Guide` of ``labels`` (None: no guidance), checked: both label maps are
    given, each guided label is in both, and ``engine_weight`` (None:
    :data:`ENGINE_WEIGHT`) is a positive number, given only with labels."""
    labels = () if labels is None else tuple(int(v) for v in labels)
    if not labels:
        if engine_weight is not None:
            raise InputError("--guide-weight needs --guide (the labels it weighs)")
        return None
    if fixed is None or moving is None:
        raise InputError("guidance needs both label maps: give --fixed-labels and "
                         "--moving-labels with --guide (in a pairs CSV, the fixed_labels "
                         "and moving_labels columns)")
    present = set(np.unique(fixed).tolist()) & set(np.unique(moving).tolist())
    missing = [v for v in labels if v not in present]
    if missing:
        raise InputError(f"--guide: label(s) {', '.join(map(str, missing))} are not in "
                         "both label maps; guide with labels both scans show")
    weight = ENGINE_WEIGHT if engine_weight is None else float(engine_weight)
    if not 0 < weight < 1e3:
        raise InputError(f"--guide-weight {engine_weight}: expected a positive number such "
                         f"as {ENGINE_WEIGHT:g}")
    return Guide(labels, fixed, moving, weight)


def fractions_on(labels: np.ndarray, geometry: Geometry, grid: Geometry,
                 values: Sequence[int]) -> np.ndarray:
    """Per value, the fraction of each voxel of ``grid`` that ``labels`` (I, J, K) on
    ``geometry`` marks with it (its indicator resampled trilinearly, anti-aliased; 0
    beyond the map): (K, *grid.shape) float32."""
    from ddmr.spatial.resample import resample_to

    out = np.empty((len(values), *grid.shape), dtype=np.float32)
    for k, value in enumerate(values):
        indicator = (labels == value).astype(np.float32)
        out[k] = resample_to(indicator, geometry, grid, order=1, cval=0.0, antialias=True)
    return out


def centroid_shift(guide: Guide, fixed_geometry: Geometry, moving_geometry: Geometry
                   ) -> np.ndarray:
    """The world translation (3,) mm taking the fixed map's guided labels' centroid (all
    guided voxels together) onto the moving map's."""
    def centroid(labels: np.ndarray, geometry: Geometry) -> np.ndarray:
        index = np.argwhere(np.isin(labels, guide.labels))
        return geometry.index_to_world(index.astype(np.float64)).mean(axis=0)

    return centroid(guide.moving, moving_geometry) - centroid(guide.fixed, fixed_geometry)


def soft_dice(fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor | None
              ) -> torch.Tensor:
    """Mean soft Dice (module docstring) of label fractions (K, N) on N points, ``weight``
    (N,) or None (everywhere): a differentiable scalar; labels absent from both within
    the overlap do not count (0 when none counts)."""
    if weight is not None:
        fixed, warped = fixed * weight, warped * weight
    overlap = (fixed * warped).sum(dim=1)
    total = fixed.sum(dim=1) + warped.sum(dim=1)
    counts = total > 1e-3
    if not bool(counts.any()):
        return warped.sum() * 0.0
    return (2.0 * overlap[counts] / total[counts]).mean()


def dice_gradient(fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor | None
                  ) -> tuple[float, torch.Tensor]:
    """The mean soft Dice of label fractions (K, *S) and its gradient with respect to
    ``warped`` (K, *S) (module docstring); ``weight`` (*S) or None."""
    import torch

    weighted = warped if weight is None else warped * weight
    fixed_w = fixed if weight is None else fixed * weight
    gradient = torch.zeros_like(warped)
    values = []
    for k in range(fixed.shape[0]):
        total = float(fixed_w[k].sum()) + float(weighted[k].sum())
        if total <= 1e-3:
            continue
        dice = 2.0 * float((fixed_w[k] * warped[k]).sum()) / total
        values.append(dice)
        gradient[k] = (2.0 * fixed_w[k] - dice * (1.0 if weight is None else weight)) / total
    if not values:
        return 0.0, gradient
    return float(np.mean(values)), gradient.div_(len(values))
