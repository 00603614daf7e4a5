"""What the registration engine (:mod:`ddmr.registration.engine`) does, as settings: a
module without heavy imports, so the command line can state the defaults."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ddmr.errors import ConfigError

#: Similarities of the engine (:mod:`ddmr.registration.similarity`).
SIMILARITY_NAMES = ("lncc", "mi", "mind")
#: Those that compare intensities directly, so need two images of one kind (QC checks it).
SAME_KIND_SIMILARITIES = ("lncc",)

#: Update modes of :class:`EngineSettings`.
MODES = ("compositive", "additive", "svf")


@dataclass(frozen=True)
class EngineSettings:
    """levels: each level's voxel size as a multiple of the finest (coarse to fine);
    iterations: the most steps per level (the coarsest 50: on whole heads a longer
    coarsest level drifted, pulled by scalp and neck; the middle 20: as accurate on the
    training pairs as 50, and faster; benchmarks/RESULTS.md, issue 29);
    similarity: ``lncc``, ``mi`` or ``mind``;
    window: LNCC window (voxels); step: the largest update per step (voxels);
    fluid_sigma: Gaussian (voxels) on each update; diffusion_sigma: on the whole field;
    finest_fluid_sigma, finest_diffusion_sigma: the same at the finest level (None: as at
    the others; lighter there than at the coarser levels, as chosen on the training
    pairs: tissue DSC up by ~0.03 with no other score lower, where the lighter smoothing at
    every level let 2 mm whole heads drift at the coarse levels, pulled by scalp and neck;
    a window of 11 scored higher still but moved a partial view of the same brain by 2.5
    mm from the network's start; benchmarks/RESULTS.md, issue 29, tenth session);
    fluid_mm, diffusion_mm: the same at least this wide in mm (0: off; a width in mm
    makes finer levels as regular in physical terms, but smoothing the whole field by
    several voxels each step also shrinks it, so a 1 mm level then cannot improve:
    benchmarks/RESULTS.md, issue 21);
    mode: ``compositive``, ``additive`` or ``svf``; tolerance, patience, min_step: the
    convergence rule (module docstring); spacing: the finest voxel size in mm (None: the
    fixed image's smallest, at least ``min_spacing``); margin_mm: background kept around
    the fixed foreground box; integration_steps: scaling-and-squaring steps (``svf``)."""

    levels: tuple[int, ...] = (4, 2, 1)
    iterations: tuple[int, ...] = (50, 20, 10)
    similarity: str = "lncc"
    window: int = 9
    step: float = 2.0
    fluid_sigma: float = 1.0
    diffusion_sigma: float = 1.0
    finest_fluid_sigma: float | None = 0.75
    finest_diffusion_sigma: float | None = 0.45
    fluid_mm: float = 0.0
    diffusion_mm: float = 0.0
    mode: str = "compositive"
    tolerance: float = 5e-4
    patience: int = 6
    min_step: float = 0.3
    spacing: float | None = None
    min_spacing: float = 1.0
    margin_mm: float = 8.0
    integration_steps: int = 6

    def __post_init__(self) -> None:
        if len(self.levels) != len(self.iterations) or not self.levels:
            raise ConfigError("engine: one iteration count per level is needed")
        if any(f < 1 for f in self.levels) or any(n < 0 for n in self.iterations):
            raise ConfigError("engine: level factors must be >= 1 and iterations >= 0")
        if self.similarity not in SIMILARITY_NAMES:
            raise ConfigError(f"engine: unknown similarity {self.similarity!r}; choose one of "
                              f"{', '.join(SIMILARITY_NAMES)}")
        if self.mode not in MODES:
            raise ConfigError(f"engine: unknown mode {self.mode!r}; choose one of "
                              f"{', '.join(MODES)}")
        if self.window < 1 or self.window % 2 != 1:
            raise ConfigError(f"engine: window must be an odd number >= 1, got {self.window}")
        for name in ("fluid_sigma", "diffusion_sigma", "finest_fluid_sigma",
                     "finest_diffusion_sigma"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < math.inf:
                raise ConfigError(f"engine: {name} must be >= 0, got {value}")
        for name in ("step", "min_step", "min_spacing"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"engine: {name} must be > 0")
        if self.spacing is not None and not 0 < self.spacing < math.inf:
            raise ConfigError(f"engine: spacing must be > 0 mm, got {self.spacing}")

    def smoothing(self, finest: bool, unit: float) -> tuple[float, float]:
        """The fluid and diffusion sigmas (voxels) of a level whose voxels are ``unit``
        mm (``finest``: the finest level's), each at least ``fluid_mm`` / ``diffusion_mm``
        wide in mm."""
        fluid, diffusion = self.fluid_sigma, self.diffusion_sigma
        if finest:
            fluid = fluid if self.finest_fluid_sigma is None else self.finest_fluid_sigma
            diffusion = (diffusion if self.finest_diffusion_sigma is None
                         else self.finest_diffusion_sigma)
        return max(fluid, self.fluid_mm / unit), max(diffusion, self.diffusion_mm / unit)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
