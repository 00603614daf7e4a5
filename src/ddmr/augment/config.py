"""Configuration of the augmentation layer: every bound and every on/off switch.

Units: rotations in degrees, translations and displacements in mm, intensities as a
fraction of the [0, 1] range.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from ddmr.errors import ConfigError


@dataclass(frozen=True)
class AugmentationConfig:
    """Bounds and switches of :class:`ddmr.augment.AugmentationLayer`.

    Defaults are the paper's bounds (gamma 0.5..2, brightness +-20 %, rotation 10 degrees
    per axis, translation 30 mm per axis, TPS on an 8x8x8 grid with at most 6 mm).

    intensity: gamma and brightness, drawn independently for fixed and moving.
    gamma_range: (low, high); gamma is log-uniform, ``2**U(log2 low, log2 high)``.
    max_brightness: additive shift ``U(-b, b)`` of the [0, 1] range, then clipped to
        [0, 1] (see :mod:`ddmr.augment.intensity` for why it is additive and clipped).
    normalise: min-max normalise both output images to [0, 1] at the end.
    rigid: rotation and translation.
    max_rotation: degrees, ``U(-r, r)`` about each of the three axes (volume centre).
    max_translation: mm, ``U(-t, t)`` along each of the three axes.
    nonrigid: thin plate spline (TPS) deformation.
    tps_grid: control points per axis (regular grid spanning the field of view).
    max_tps: mm, bound on the Euclidean norm of the TPS displacement, at the control
        points *and* everywhere in the volume (see :mod:`ddmr.augment.tps`).
    tps_kernel: ``"r2logr"`` (thin-plate kernel, smooth) or ``"r"`` (3D biharmonic,
        cusps at the control points); see :mod:`ddmr.augment.tps`.
    tps_fix_border: give the outer ring of control points zero displacement.
    tps_min_jacobian: shrink the TPS displacement until the Jacobian determinant of
        ``x -> x + w(x)`` is at least this everywhere (keeps the map invertible);
        ``0`` switches the guard off.
    tps_samples_per_cell: nodes per control-grid interval of the grid on which the TPS
        is sampled; the dense field is its cubic B-spline interpolation.
    inverse_samples_per_cell: the same for the grid on which the inverse (the field that
        makes the moving image) is solved for; finer is more accurate and slower.
    inversion_iterations: most Newton iterations of the TPS inversion (it stops when
        the residual is below 1e-4 mm; about 3 are needed at the paper's bounds).
    label_method: ``"onehot"`` or ``"nearest"`` (see :func:`ddmr.spatial.warp.warp_labels`).
    """

    intensity: bool = True
    gamma_range: tuple[float, float] = (0.5, 2.0)
    max_brightness: float = 0.2
    normalise: bool = True
    rigid: bool = True
    max_rotation: float = 10.0
    max_translation: float = 30.0
    nonrigid: bool = True
    tps_grid: int = 8
    max_tps: float = 6.0
    tps_kernel: Literal["r2logr", "r"] = "r2logr"
    tps_fix_border: bool = False
    tps_min_jacobian: float = 0.2
    tps_samples_per_cell: int = 3
    inverse_samples_per_cell: int = 3
    inversion_iterations: int = 8
    label_method: Literal["onehot", "nearest"] = "onehot"

    def __post_init__(self) -> None:
        low, high = self.gamma_range
        if not (0 < low <= high and math.isfinite(high)):
            raise ConfigError(f"gamma_range must satisfy 0 < low <= high, got {self.gamma_range}")
        for name in ("max_brightness", "max_rotation", "max_translation", "max_tps"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
        if self.max_rotation > 90:
            raise ConfigError(f"max_rotation must be at most 90 degrees, got {self.max_rotation}")
        if self.tps_grid < 2:
            raise ConfigError(f"tps_grid must be at least 2, got {self.tps_grid}")
        if self.tps_fix_border and self.tps_grid < 3:
            raise ConfigError("tps_fix_border needs tps_grid >= 3 (else every point is fixed)")
        if not 0 <= self.tps_min_jacobian < 1:
            raise ConfigError(f"tps_min_jacobian must be in [0, 1), got {self.tps_min_jacobian}")
        if self.tps_samples_per_cell < 1 or self.inverse_samples_per_cell < 1:
            raise ConfigError("tps_samples_per_cell and inverse_samples_per_cell must be >= 1")
        if self.inversion_iterations < 1:
            raise ConfigError("inversion_iterations must be at least 1")
        if self.tps_kernel not in ("r2logr", "r"):
            raise ConfigError(f"tps_kernel must be 'r2logr' or 'r', got {self.tps_kernel!r}")
        if self.label_method not in ("onehot", "nearest"):
            raise ConfigError(f"label_method must be 'onehot' or 'nearest', got "
                              f"{self.label_method!r}")

    @property
    def geometric(self) -> bool:
        """Whether any spatial transform is switched on."""
        return self.rigid or self.nonrigid

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AugmentationConfig:
        data = dict(data)
        if "gamma_range" in data:
            data["gamma_range"] = tuple(data["gamma_range"])
        return cls(**data)
