"""The six loss designs of the paper's Table 1 (BL-N ... UW-NSDH) as named presets.

Image terms: ``ncc`` (local, 9^3 window by default; ``ncc_window=None`` for the paper's
global form), ``ssim``. Segmentation terms: ``dice`` (soft, background excluded),
``hausdorff`` (distance-transform loss). Every design adds a regulariser of the
displacement (gradient L2 by default) with weight 5e-3, the paper's initial value.
``supervised_weight`` > 0 adds a fixed-weight term on the known field of synthetic pairs
(mean squared end-point error in mm^2), an option beyond the paper.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from ddmr.errors import ConfigError

#: Similarities a per-pair optimisation can use: the design's NCC, local NCC, global NCC,
#: mutual information.
SIMILARITIES = ("ncc", "lncc", "gncc", "mi")

IMAGE_TERMS = ("ncc", "ssim")
SEGMENTATION_TERMS = ("dice", "hausdorff")
TERM_NAMES = {"ncc": "NCC", "ssim": "SSIM", "dice": "DSC", "hausdorff": "HD"}


@dataclass(frozen=True)
class Design:
    """A loss design: which terms, how they are weighted, and the regulariser."""

    name: str
    model: str
    losses: tuple[str, ...]
    weighting: Literal["fixed", "uncertainty"] = "fixed"
    weighting_mode: Literal["kendall", "simplex"] = "kendall"
    loss_weights: tuple[float, ...] | None = None
    regulariser: Literal["grad_l2", "bending"] = "grad_l2"
    regulariser_weight: float = 5e-3
    ncc_window: int | None = 9
    supervised_weight: float = 0.0

    def __post_init__(self) -> None:
        unknown = [t for t in self.losses if t not in IMAGE_TERMS + SEGMENTATION_TERMS]
        if unknown:
            raise ConfigError(f"design {self.name}: unknown loss terms {unknown}")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.losses):
            raise ConfigError(f"design {self.name}: {len(self.losses)} losses but "
                              f"{len(self.loss_weights)} weights")
        if self.regulariser_weight < 0 or self.supervised_weight < 0:
            raise ConfigError(f"design {self.name}: negative regulariser or supervised weight")

    @property
    def needs_segmentations(self) -> bool:
        return any(t in SEGMENTATION_TERMS for t in self.losses)

    def fixed_weights(self) -> tuple[float, ...]:
        return self.loss_weights if self.loss_weights is not None else (1.0,) * len(self.losses)

    def replace(self, **changes) -> Design:
        """A copy with some fields changed (e.g. ``ncc_window=None``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Design:
        data = dict(data)
        data["losses"] = tuple(data["losses"])
        if data.get("loss_weights") is not None:
            data["loss_weights"] = tuple(data["loss_weights"])
        return cls(**data)


DESIGNS: dict[str, Design] = {
    d.name: d
    for d in (
        Design("BL-N", "Baseline", ("ncc",)),
        Design("BL-NS", "Baseline", ("ncc", "ssim")),
        Design("SG-ND", "Segmentation-guided", ("ncc", "dice")),
        Design("SG-NSD", "Segmentation-guided", ("ncc", "ssim", "dice")),
        Design("UW-NSD", "Uncertainty weighting", ("ncc", "ssim", "dice"), weighting="uncertainty"),
        Design("UW-NSDH", "Uncertainty weighting", ("ncc", "ssim", "dice", "hausdorff"),
               weighting="uncertainty"),
    )
}


def get_design(name: str) -> Design:
    """The preset called ``name`` (case-insensitive)."""
    for key, design in DESIGNS.items():
        if key.lower() == name.lower():
            return design
    raise ConfigError(f"unknown design {name!r}; choose one of {', '.join(DESIGNS)}")


def design_rows() -> list[dict[str, str]]:
    """One row per design: name, model, losses, weighting, regulariser, needs segmentations."""
    rows = []
    for d in DESIGNS.values():
        weighting = "learned (uncertainty)" if d.weighting == "uncertainty" else "fixed, equal"
        rows.append({
            "design": d.name,
            "model": d.model,
            "losses": ", ".join(TERM_NAMES[t] for t in d.losses),
            "weighting": weighting,
            "regulariser": f"{d.regulariser} ({d.regulariser_weight:g})",
            "segmentations": "yes" if d.needs_segmentations else "no",
        })
    return rows
