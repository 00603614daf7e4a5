"""The registration engine: a multi-resolution, smooth, greedy deformable optimiser at the
images' own resolution, started from the network's field (or from the affine part alone).

The transform it refines is the pipeline's: a fixed world point ``p`` shows the moving
image at ``P(p + d(p))``, ``P`` the affine point map (fixed world -> moving world, RAS
mm) and ``d`` a world displacement in mm on a grid over the fixed image's foreground.

Per level, coarse to fine (voxels of ``factor x`` the finest spacing, on RAS-aligned
grids over each image's own foreground box, both images smoothed against aliasing):

1. warp: the moving level image sampled at ``P(p + d(p))`` (trilinear);
2. similarity and its gradient with respect to the warped image
   (:mod:`ddmr.registration.similarity`; local NCC by default), and the force
   ``f = dS/dW grad W``;
3. update (the greedy/SyN manner): ``s = G_fluid * f`` scaled so that its largest
   vector is ``step`` voxels, then ``d <- s + d o (id + s)`` (compositive, default),
   ``d <- d + s`` (additive), or, in ``svf`` mode, ``v <- v + s`` with ``d = exp(v) - id``
   (scaling and squaring: diffeomorphic, with the inverse ``exp(-v)``); then
   ``d <- G_diffusion * d`` (``v`` in ``svf`` mode);
4. convergence: when the similarity has not risen by ``tolerance`` (relative) for
   ``patience`` iterations the step halves; the level ends when the step falls below
   ``min_step`` voxels or after ``iterations`` steps. The best iterate of each level is
   kept, so a level never ends worse than it started.

At the end the result is compared with the start (the initial field on the finest
level) by the same similarity and the start is returned if it was better: the engine is
never worse than its start by its own objective.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ddmr.memory import release_free_memory
from ddmr.registration.guidance import Guide, dice_gradient
from ddmr.registration.levels import object_grid, scaled_on
from ddmr.registration.moments import Scale, intensity_scale
from ddmr.registration.native import inside_grid
from ddmr.registration.settings import EngineSettings
from ddmr.registration.similarity import Objective, force_from_gradient, make_similarity
from ddmr.spatial import kernels
from ddmr.spatial.displacement import Displacement, channels_last_product, plain
from ddmr.spatial.filters import gaussian_smooth
from ddmr.spatial.grid import (
    Geometry,
    affine_volume,
    sampling_matrix,
)
from ddmr.spatial.warp import grid_sample_3d

#: The fewest voxels along an axis of a level's grid.
MIN_LEVEL_SIZE = 4


@dataclass
class EngineResult:
    """grid: the finest level's grid (RAS-aligned, over the fixed foreground);
    displacement_mm: (3, *grid.shape) world mm, ``d`` of the module docstring;
    inverse_mm: ``exp(-v)`` on the same grid in ``svf`` mode (None otherwise); objective_start
    / objective: the similarity of the start and of the result on the finest level;
    kept_start: the start was better and is returned; levels: per level its spacing,
    steps taken, whether it converged, its best similarity and seconds; seconds: total;
    started_from: ``network`` (the initial field) or ``affine`` (the zero field, when it
    scored better on the coarsest level than the initial field, or with none)."""

    grid: Geometry
    displacement_mm: torch.Tensor
    objective_start: float
    objective: float
    kept_start: bool
    levels: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    inverse_mm: torch.Tensor | None = None
    started_from: str = "affine"

    def displacement(self) -> Displacement:
        """``d`` as a value (border values beyond the grid)."""
        return Displacement(self.displacement_mm, self.grid)

    def summary(self, settings: EngineSettings) -> dict[str, Any]:
        return {"similarity": settings.similarity, "mode": settings.mode,
                "objective_start": self.objective_start, "objective": self.objective,
                "kept_start": self.kept_start, "started_from": self.started_from,
                "seconds": round(self.seconds, 3),
                "levels": self.levels, "grid": {"shape": list(self.grid.shape),
                                                "spacing_mm": list(self.grid.spacing)},
                "settings": settings.to_dict()}


# -- one level ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Side:
    """One image as the levels see it: ``image`` (I, J, K) on ``geometry`` with the
    intensities ``scale`` maps to 0 and 1, and the foreground ``mask`` on
    ``mask_geometry`` (the image's own grid) that places each level's grid."""

    image: np.ndarray
    geometry: Geometry
    scale: tuple[float, float]
    mask: np.ndarray
    mask_geometry: Geometry

    def on(self, grid: Geometry) -> torch.Tensor:
        """The image on ``grid`` (trilinear, smoothed first where ``grid`` is coarser),
        its intensities mapped to [0, 1]: (*grid.shape) float32."""
        if self.geometry.isclose(grid) and self.scale == (0.0, 1.0):
            return torch.from_numpy(self.image)  # already in [0, 1] (:meth:`at`): shared
        return torch.from_numpy(scaled_on(self.image, self.geometry, grid, self.scale))

    def level_grid(self, spacing: float, margin: float) -> Geometry:
        return object_grid(self.mask, self.mask_geometry, spacing, margin, MIN_LEVEL_SIZE)

    def at(self, spacing: float, margin: float) -> _Side:
        """The same side with its image resampled once onto its grid of ``spacing`` mm,
        the source of every coarser level (a smaller volume to smooth than the scan)."""
        grid = self.level_grid(spacing, margin)
        return _Side(self.on(grid).numpy(), grid, (0.0, 1.0), self.mask, self.mask_geometry)


class _Level:
    """One level: the fixed features on ``grid``, the moving features on their own grid,
    and the map from a displacement on ``grid`` to moving-grid sampling coordinates; for a
    partial field of view (``partial``), the points that map beyond the moving level's
    grid (``overlap``, None where none does or the view is whole:
    the moving foreground's box and margin, within its image) get no force, so the
    moving object is not stretched where the moving image does not show it (a field of
    view cut short, or zero-filled); the guided labels' fractions on both grids where
    guided."""

    def __init__(self, fixed: _Side, moving: _Side, point_map: np.ndarray, spacing: float,
                 settings: EngineSettings, similarity, guide: Guide | None = None,
                 partial: bool = False) -> None:
        self.grid = fixed.level_grid(spacing, settings.margin_mm)
        moving_grid = moving.level_grid(spacing, settings.margin_mm)
        self.fixed = similarity.features(fixed.on(self.grid))
        self.moving = similarity.features(moving.on(moving_grid))[None]
        self.guide_fixed = self.guide_moving = None
        self.guide_weight = 0.0 if guide is None else guide.engine_weight
        if guide is not None:
            self.guide_fixed = torch.from_numpy(guide.fixed_on(fixed.mask_geometry, self.grid))
            self.guide_moving = torch.from_numpy(
                guide.moving_on(moving.mask_geometry, moving_grid))[None]
        self.spacing = torch.tensor(self.grid.spacing, dtype=torch.float32).view(3, 1, 1, 1)
        self.objective = Objective(similarity, self.fixed, self.grid.spacing)
        # moving voxel of P(p + d) = A d + B x, p the world point of grid voxel x
        to_voxels = moving_grid.matrix("world", "index") @ point_map
        self.compiled = kernels.available()
        if self.compiled:  # A (3, 3) and B (3, 4), the coordinates made in the kernel
            self.linear = to_voxels[:3, :3]
            self.base = (to_voxels @ self.grid.affine)[:3]
        else:  # grid_sample coordinates: A (3, 3) and q0 (*grid.shape, 3)
            to_moving = moving_grid.matrix("index", "sampling") @ to_voxels
            self.linear = torch.from_numpy(to_moving[:3, :3].astype(np.float32))
            self.q0 = affine_volume(to_moving @ self.grid.affine, self.grid.shape,
                                     channels_last=True)
        self.overlap = None
        if partial:
            inside = inside_grid(to_voxels @ self.grid.affine, self.grid.shape,
                                 moving_grid.shape)
            if not inside.all():
                self.overlap = torch.from_numpy(inside.astype(np.float32))
        self.displaced = GridComposition(self.grid)
        self._warped: np.ndarray | None = None  # the warped features, reused every step

    def points(self) -> torch.Tensor:
        """World points p (3, *grid.shape) of this level's grid (RAS mm): made when asked
        (a full-size grid at the finest level)."""
        return self.grid.points()

    def warp(self, displacement_mm: torch.Tensor, volume: torch.Tensor | None = None
             ) -> torch.Tensor:
        """Moving features (or ``volume`` (1, C, ...) on the moving level's grid) at
        ``P(p + d(p))``: (C, *grid.shape); the features in a buffer the next call
        overwrites."""
        features = volume is None
        volume = self.moving if features else volume
        if self.compiled:
            warped = kernels.sample_affine(
                volume[0].numpy(), displacement_mm.contiguous().numpy(), self.linear,
                self.base, out=self._warped if features else None)
            if features:
                self._warped = warped
            return torch.from_numpy(warped)
        grid = channels_last_product(self.linear, displacement_mm).add_(self.q0)
        return grid_sample_3d(volume, grid[None])[0]

    def value(self, displacement_mm: torch.Tensor) -> float:
        """The objective at ``d``: the similarity, plus the guidance term where guided."""
        value = self.objective.value(self.warp(displacement_mm))
        if self.guide_fixed is not None:
            labels = self.warp(displacement_mm, self.guide_moving)
            value += self.guide_weight * dice_gradient(self.guide_fixed, labels,
                                                       self.overlap)[0]
        return value

    def force(self, displacement_mm: torch.Tensor, out: torch.Tensor | None = None
              ) -> tuple[float, torch.Tensor]:
        """The objective at ``d`` (:meth:`value`) and its force (3, *grid.shape): none
        where the points map beyond the moving level's grid; written into ``out`` (a
        field no longer used, not ``d``) where given and the compiled kernels run."""
        value, force = self.objective.force(self.warp(displacement_mm), out=out)
        if self.overlap is not None:
            force.mul_(self.overlap)
        if self.guide_fixed is not None:
            labels = self.warp(displacement_mm, self.guide_moving)
            dice, gradient = dice_gradient(self.guide_fixed, labels, self.overlap)
            value += self.guide_weight * dice
            force.add_(force_from_gradient(gradient, labels, self.objective.spacing),
                       alpha=self.guide_weight)
        return value, force


class GridComposition:
    """``field o (id + u)`` for fields on one grid: a field (3, *shape) interpolated at
    ``p + u(p)`` for the grid's points p, ``u`` a displacement (3, *shape) mm (trilinear,
    border values beyond the grid), without a grid of world points."""

    def __init__(self, grid: Geometry) -> None:
        # p + u(p) as voxel coordinates on this grid: x + M u, M mm -> voxels
        self.to_voxels = grid.matrix("world", "index")[:3, :3]
        self.identity_base = np.eye(3, 4)
        # the same as grid_sample coordinates: L u + (the identity's)
        to_own = grid.matrix("world", "sampling")
        self.linear = torch.from_numpy(to_own[:3, :3].astype(np.float32))
        self.identity = _identity_axes(grid.shape)

    def __call__(self, field_mm: torch.Tensor, displacement_mm: torch.Tensor,
                 addend: torch.Tensor | None = None, in_place: bool = False
                 ) -> torch.Tensor:
        """``field o (id + u)``, plus ``addend`` (3, *shape) when given; with
        ``in_place`` written into ``addend`` where the compiled kernels run (the
        engine's update, used once)."""
        if kernels.available() and plain(field_mm) and plain(displacement_mm):
            addend = None if addend is None else addend.contiguous()
            out = addend.numpy() if in_place and addend is not None else None
            return torch.from_numpy(kernels.sample_affine(
                field_mm.contiguous().numpy(), displacement_mm.contiguous().numpy(),
                self.to_voxels, self.identity_base,
                None if addend is None else addend.numpy(), out=out))
        # the coordinates passed as a temporary: freed before the samples are copied
        out = grid_sample_3d(field_mm[None], self._coordinates(displacement_mm))[0]
        return out if addend is None else out.add_(addend)

    def _coordinates(self, displacement_mm: torch.Tensor) -> torch.Tensor:
        """(1, *shape, 3) ``grid_sample`` coordinates of ``p + u(p)``."""
        where = channels_last_product(self.linear, displacement_mm)
        for channel, axis in enumerate(self.identity):
            where[..., channel] += axis
        return where[None]


def _identity_axes(shape: tuple[int, int, int]) -> list[torch.Tensor]:
    """The grid_sample coordinates (x, y, z) of a grid's own voxels, each as a
    broadcastable (D, H, W)-shaped axis vector (x varies along the last axis)."""
    matrix = sampling_matrix(shape)
    axes = []
    for channel in range(3):
        axis = 2 - channel
        values = torch.arange(shape[axis], dtype=torch.float64) * matrix[channel, axis] \
            + matrix[channel, 3]
        axes.append(values.to(torch.float32).view([-1 if a == axis else 1 for a in range(3)]))
    return axes


def _largest_norm(field_mm: torch.Tensor) -> float:
    """The largest vector length of a field (3, *S)."""
    if kernels.available() and field_mm.is_contiguous() and plain(field_mm):
        return kernels.largest_norm(field_mm.numpy())
    squared = field_mm[0] * field_mm[0]
    squared.addcmul_(field_mm[1], field_mm[1]).addcmul_(field_mm[2], field_mm[2])
    return float(squared.max().sqrt())  # (norm(dim=0) is slow)


def _exp(velocity: torch.Tensor, level: _Level, steps: int) -> torch.Tensor:
    """``exp(v) - id`` (world mm) of a stationary velocity (3, *S) by scaling and
    squaring on the level's grid."""
    displacement = velocity / (2 ** steps)
    for _ in range(steps):
        displacement = displacement + level.displaced(displacement, displacement)
    return displacement


def _run_level(level: _Level, start: torch.Tensor, settings: EngineSettings,
               iterations: int, finest: bool) -> tuple[torch.Tensor, float, dict[str, Any]]:
    """Optimise one level (``finest``: the finest) from ``start`` (``d``, or ``v`` in
    ``svf`` mode)."""
    started = time.perf_counter()
    variable = start.clone()
    unit = float(level.spacing.min())  # mm per voxel of the level (isotropic grid)
    fluid, diffusion = settings.smoothing(finest, unit)
    step = settings.step
    best_value, best_variable, since = -math.inf, variable, 0
    taken = 0
    converged = False
    spare = None  # a field no longer used: the memory of the next force (no fresh pages)
    for taken in range(iterations + 1):
        displacement = (_exp(variable, level, settings.integration_steps)
                        if settings.mode == "svf" else variable)
        # the force, which becomes the update (after the last step, the value alone)
        value, update = ((level.value(displacement), None) if taken == iterations
                         else level.force(displacement, out=spare))
        spare = None
        if not math.isfinite(best_value) or value > best_value + settings.tolerance * abs(
                best_value):
            if best_variable is not variable:  # the best it replaces is no longer used
                spare = best_variable
            best_value, best_variable, since = value, variable, 0
        else:
            since += 1
            if since >= settings.patience:
                step, since = step / 2.0, 0
                spare = update
                variable = best_variable  # go on from the best iterate, with a smaller step
                if step < settings.min_step:
                    converged = True
                    break
                continue
        if taken == iterations:
            break
        # in place wherever a volume is used once (memory: benchmarks/RESULTS.md)
        gaussian_smooth(update, fluid, out=update)
        largest = _largest_norm(update)
        if not largest > 0:
            converged = True
            break
        update.mul_(step * unit / largest)
        previous = variable
        if settings.mode == "compositive":
            # d o (id + s) + s written over s: no new field (memory: the level's peak)
            variable = level.displaced(variable, update, addend=update, in_place=True)
        else:
            variable = variable + update
        if previous is not best_variable:
            spare = previous
        del update, previous
        if diffusion > 0:  # variable is a new tensor here, never best_variable
            gaussian_smooth(variable, diffusion, out=variable)
    record = {"spacing_mm": round(unit, 4), "steps": taken, "converged": converged,
              "similarity": best_value, "seconds": round(time.perf_counter() - started, 3)}
    return best_variable, best_value, record


# -- the whole engine -----------------------------------------------------------------------


#: Float32 volumes of the finest level the engine holds at once, an upper bound (images,
#: the map to the moving grid, the field, its update, LNCC's statistics and box sums:
#: measured 32 on a 1 mm whole head, benchmarks/RESULTS.md), plus four per feature
#: channel beyond the first.
ENGINE_VOLUMES = 40


def check_engine_memory(fixed_geometry: Geometry, fixed_mask: np.ndarray,
                        settings: EngineSettings) -> None:
    """Raise :class:`ddmr.errors.InputError` before anything is allocated when the
    engine's finest level would need more memory than this process can have."""
    from ddmr.errors import InputError
    from ddmr.memory import available_memory

    grid = object_grid(fixed_mask, fixed_geometry, finest_spacing(fixed_geometry, settings),
                       settings.margin_mm, MIN_LEVEL_SIZE)
    channels = 12 if settings.similarity == "mind" else 1
    needed = int(np.prod(grid.shape)) * 4 * (ENGINE_VOLUMES + 4 * (channels - 1))
    available = available_memory()
    if needed > available:
        raise InputError(
            f"the registration engine needs about {needed / 1e9:.1f} GB for its finest grid "
            f"of {'x'.join(map(str, grid.shape))} voxels of {grid.spacing[0]:g} mm, "
            f"{available / 1e9:.1f} GB is available; use --fast (the network alone), or "
            "images of coarser voxels")


def finest_spacing(geometry: Geometry, settings: EngineSettings) -> float:
    """The finest level's voxel size (mm)."""
    if settings.spacing is not None:
        return float(settings.spacing)
    return max(min(geometry.spacing), settings.min_spacing)


def register_deformable(fixed: np.ndarray, fixed_geometry: Geometry, fixed_mask: np.ndarray,
                        moving: np.ndarray, moving_geometry: Geometry,
                        moving_mask: np.ndarray, point_map: np.ndarray,
                        settings: EngineSettings | None = None,
                        initial: Displacement | None = None,
                        scales: tuple[Scale, Scale] | None = None,
                        guide: Guide | None = None, partial: bool = False) -> EngineResult:
    """Run the engine (module docstring) on two images (I, J, K) on their own grids with
    their foreground masks, after the affine ``point_map`` (4, 4, RAS, fixed world ->
    moving world). ``initial(points)`` gives the starting ``d`` (mm) at world points
    (3, ...) (None: zero, the affine part alone). ``scales``: the images'
    :func:`~ddmr.registration.moments.intensity_scale` when already known; ``guide`` the
    guided labels (:mod:`ddmr.registration.guidance`), whose soft Dice joins the
    similarity; ``partial``: a partial field of view (the affine stage's finding), where
    the force counts only where the moving image shows its object."""
    settings = settings or EngineSettings()
    check_engine_memory(fixed_geometry, fixed_mask, settings)
    started = time.perf_counter()
    similarity = make_similarity(settings.similarity, settings.window)
    finest = finest_spacing(fixed_geometry, settings)
    # both images on their finest level's grid first: the coarser levels are made from
    # them (a smaller volume to smooth and resample than the scans)
    scales = scales or (intensity_scale(fixed, fixed_mask),
                        intensity_scale(moving, moving_mask))
    sides = [_Side(array, geometry, scale, mask, geometry).at(finest, settings.margin_mm)
             for array, geometry, mask, scale in ((fixed, fixed_geometry, fixed_mask,
                                                   scales[0]),
                                                  (moving, moving_geometry, moving_mask,
                                                   scales[1]))]
    with torch.inference_mode(False), torch.no_grad():
        variable, records, previous = None, [], None
        started_from = "affine"
        last = len(settings.levels) - 1
        for index, (factor, iterations) in enumerate(zip(settings.levels, settings.iterations,
                                                         strict=True)):
            # each level built when it starts, the one before it freed when it ends
            level = _Level(*sides, point_map, finest * factor, settings, similarity, guide,
                           partial)
            if variable is None:
                variable = torch.zeros((3, *level.grid.shape))
                if initial is not None:  # the network's start, unless the affine part's
                    given = initial(level.points())  # is better by the engine's similarity
                    if level.value(given) >= level.value(variable):
                        variable, started_from = given, "network"
            else:
                variable = Displacement(variable, previous.grid).on(level.grid)
            with kernels.reusing_scratch():  # the steps' temporaries made once
                variable, value, record = _run_level(level, variable, settings, iterations,
                                                     index == last)
            records.append(record)
            previous = level
            release_free_memory()
        finest_level = level
        start = (initial(finest_level.points()) if started_from == "network"
                 else torch.zeros((3, *finest_level.grid.shape)))
        start_value = finest_level.value(start)
        displacement = (_exp(variable, finest_level, settings.integration_steps)
                        if settings.mode == "svf" else variable)
        inverse = (_exp(-variable, finest_level, settings.integration_steps)
                   if settings.mode == "svf" else None)
        kept_start = value < start_value
        if kept_start:
            displacement, value, inverse = start, start_value, None
    return EngineResult(finest_level.grid, displacement, float(start_value), float(value),
                        kept_start, records, time.perf_counter() - started, inverse,
                        started_from)
