"""The world-space affine stage: each image in its own world, no header agreement needed.

1. **Starts**: the headers as they are (the identity map), then, from the moments
   (:mod:`ddmr.registration.moments`), the foreground centres matched with the isotropic
   scale of the two foreground volumes and a linear part that is either the headers' own
   orientation or one of the four rotations between the principal axes; the guided
   labels' centroids matched, where guided (:mod:`ddmr.registration.guidance`); and, for a
   partial field of view (one foreground 1.5 times longer than the other along an RAS
   axis, such as a CT slab against an abdomen), the best translations along that axis,
   searched (:func:`cut_axis`).
2. **Candidates**: each start is optimised briefly on the coarsest level; the best by
   similarity goes on (the first in that order unless a later one beats it clearly).
3. **Pyramid**: the point map ``P(p) = c_m + t + A (p - c_f)`` (fixed world -> moving
   world, RAS mm; ``c`` the foreground centres) is optimised with Adam on a similarity
   between the fixed image and the moving image sampled at ``P(p)``, coarse to fine: the
   global NCC, or (``lncc``) the engine's local squared NCC
   (:class:`ddmr.registration.similarity.LocalNCC`), which on whole heads follows the
   brain's outline where the global NCC trades it for the scalp and the neck.
   Both images are resampled, with anti-aliasing, onto grids over their own foreground
   boxes at each level's voxel size, so the moving image is sampled through its own
   geometry, wherever its header puts it. The gradient comes in closed form from one
   compiled pass (the samples and their spatial derivatives,
   :func:`ddmr.spatial.kernels.sample_gradient`) where the kernels run and no weights
   or labels join the similarity, else by autograd through ``grid_sample``. For a
   partial field of view the global NCC counts only where both scans have data
   (:func:`weighted_ncc`) and the linear part is a rotation times one scale (the slab
   does not show the scale across it). Where guided, the guided labels' soft Dice is
   added to the similarity.
4. **Never worse than the start**: the result is kept only if its similarity on the
   finest level is at least that of the start.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ddmr.losses.ncc import global_ncc
from ddmr.optim import Adam
from ddmr.registration.guidance import AFFINE_WEIGHT, Guide, centroid_shift, soft_dice
from ddmr.registration.levels import object_grid, scaled_on
from ddmr.registration.moments import (
    Moments,
    Scale,
    candidate_linear_maps,
    foreground_mask,
    intensity_scale,
    moments,
    point_map,
)
from ddmr.spatial import kernels
from ddmr.spatial.grid import Geometry, sampling_scale

#: A candidate start must beat every start preferred to it by this much NCC.
CANDIDATE_MARGIN = 0.02
#: The name of the start that trusts the headers as they are (the identity point map).
HEADERS_AS_THEY_ARE = "headers as they are"
#: The global NCC is penalised where less than this fraction of the smaller level's
#: points fall inside the other scan (:func:`weighted_ncc`).
MIN_OVERLAP = 0.5
#: Two foregrounds whose extents along an RAS axis differ by this factor are a partial
#: field of view (:func:`cut_axis`): translations along that axis are searched as starts.
PARTIAL_EXTENT = 1.5
#: The search keeps placements where the shorter foreground overlaps the longer by at
#: least this fraction of its extent, and its best ones as starts.
SEARCH_OVERLAP = 0.9
SEARCH_STARTS = 3


@dataclass(frozen=True)
class AffineSettings:
    """levels_mm: voxel size of each pyramid level (mm), coarse to fine (never finer than
    the images themselves); iterations: Adam steps per level; candidate_iterations: steps
    each start gets on the coarsest level; learning_rate: Adam step of the translation
    (mm); linear_rate: of the linear part (dimensionless); margin_mm: background kept
    around each foreground box; rotations: try the principal-axes starts too;
    similarities: per level, ``ncc`` (global) or ``lncc`` (local, ``window`` voxels): the
    default, local NCC over 3^3 voxels at the finest level, was chosen on the training
    pairs of ``benchmarks/bench_affine.py`` (benchmarks/RESULTS.md, issue 29);
    reverse_anisotropy: a result more anisotropic than this
    (:func:`~ddmr.registration.qc.affine_anisotropy`) is fitted the other way round too
    (the moving image as the fixed one) and the better of the two by the similarity of
    both directions is kept (``math.inf``: never). Between heads whose fields of view
    differ (one cut below the cerebellum) one direction's pyramid can squeeze the head
    along z where the other does not (RESULTS.md, issue 29)."""

    levels_mm: tuple[float, ...] = (8.0, 4.0)
    iterations: tuple[int, ...] = (60, 40)
    candidate_iterations: int = 25
    learning_rate: float = 1.0
    linear_rate: float = 0.01
    margin_mm: float = 10.0
    rotations: bool = True
    similarities: tuple[str, ...] = ("ncc", "lncc")
    window: int = 3
    reverse_anisotropy: float = 1.25

    def __post_init__(self) -> None:
        if len(self.levels_mm) != len(self.iterations) or not self.levels_mm:
            raise ValueError("one iteration count per pyramid level is needed")
        if len(self.similarities) != len(self.levels_mm) or not set(self.similarities) <= {
                "ncc", "lncc"}:
            raise ValueError("one similarity per pyramid level is needed: ncc or lncc")


@dataclass
class AffineResult:
    """point_map: (4, 4) RAS mm, fixed world point -> moving world point. start: the
    start chosen; similarity_start / similarity: global NCC on the finest level at the
    start and at the result (``similarity >= similarity_start``); candidates: NCC of each
    start after its brief optimisation; kept_start: the optimisation did not improve on
    the start, which is returned; reverse_tried / reversed: the fit the other way round
    was tried / kept; partial_field_of_view: one foreground was cut short
    (:func:`cut_axis`)."""

    point_map: np.ndarray
    start: str
    similarity_start: float
    similarity: float
    candidates: dict[str, float] = field(default_factory=dict)
    kept_start: bool = False
    reverse_tried: bool = False
    reversed: bool = False
    partial_field_of_view: bool = False

    def summary(self) -> dict[str, Any]:
        return {"matrix_ras": self.point_map.tolist(), "start": self.start,
                "similarity_start": self.similarity_start, "similarity": self.similarity,
                "candidates": self.candidates, "kept_start": self.kept_start,
                "reverse_tried": self.reverse_tried, "reversed": self.reversed,
                "partial_field_of_view": self.partial_field_of_view,
                "linear_part": "rotation and one scale" if self.partial_field_of_view
                else "affine"}


@dataclass(frozen=True)
class _Level:
    """One pyramid level of one image: values (1, 1, D, H, W) in [0, 1] on ``grid``, the
    image's own grid ``source`` (where it has data), and the guided labels' fractions
    (1, K, D, H, W) when guided."""

    values: torch.Tensor
    grid: Geometry
    source: Geometry
    labels: torch.Tensor | None = None


def _level(array: np.ndarray, geometry: Geometry, mask: np.ndarray, spacing: float,
           margin: float, scale: tuple[float, float],
           label_fractions: Callable[[Geometry, Geometry], np.ndarray] | None = None
           ) -> _Level:
    """The level of ``spacing`` mm; ``label_fractions(geometry, grid)`` the guided labels'
    fractions on its grid (:meth:`~ddmr.registration.guidance.Guide.fixed_on` or
    ``moving_on``), where guided."""
    grid = object_grid(mask, geometry, max(spacing, min(geometry.spacing)), margin, 2)
    fractions = None if label_fractions is None else torch.from_numpy(
        label_fractions(geometry, grid))[None]
    return _Level(torch.from_numpy(scaled_on(array, geometry, grid, scale))[None, None], grid,
                  geometry, fractions)


def weighted_ncc(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, reference: int
                 ) -> torch.Tensor:
    """Pearson correlation of ``a`` and ``b`` (N,) with the weights ``weight`` (N,) (where
    both scans have data), minus a penalty that grows from 0 to 1 as the weights' sum
    falls from :data:`MIN_OVERLAP` of ``reference`` points (the smaller scan's) to 0: a
    scalar."""
    total = weight.sum().clamp_min(1e-6)
    mean_a = (weight * a).sum() / total
    mean_b = (weight * b).sum() / total
    da, db = a - mean_a, b - mean_b
    covariance = (weight * da * db).sum()
    variance = (weight * da * da).sum() * (weight * db * db).sum()
    penalty = torch.relu(MIN_OVERLAP - total / reference) / MIN_OVERLAP
    return covariance / torch.sqrt(variance + 1e-12) - penalty


class _LocalValue(torch.autograd.Function):
    """The local squared NCC of warped values (D, H, W) against bound fixed values, with
    its closed-form gradient (:class:`~ddmr.registration.similarity.LocalNCC`)."""

    @staticmethod
    def forward(ctx, warped: torch.Tensor, evaluate) -> torch.Tensor:
        value, gradient = evaluate(warped.detach().contiguous()[None])
        ctx.save_for_backward(gradient[0])
        return warped.new_tensor(value)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (gradient,) = ctx.saved_tensors
        return grad_output * gradient, None


class _Problem:
    """The fixed level's points and values and the moving level, for one level;
    ``similarity``: ``ncc`` (global; with ``partial``, a partial field of view, only where
    both scans have data: :func:`weighted_ncc`) or ``lncc`` (local, ``window`` voxels);
    plus the guided labels' soft Dice where guided."""

    def __init__(self, fixed: _Level, moving: _Level, fixed_centre: np.ndarray,
                 similarity: str = "ncc", window: int = 5, partial: bool = False) -> None:
        from ddmr.registration.similarity import LocalNCC

        shape = fixed.grid.shape
        self.shape = shape
        self.local = (LocalNCC(window).bind(fixed.values[0].contiguous())
                      if similarity == "lncc" else None)
        points = fixed.grid.points(channels_last=True, dtype=torch.float64).reshape(-1, 3)
        self.points = (points - torch.as_tensor(fixed_centre, dtype=torch.float64)).float()
        self.values = fixed.values.reshape(-1)
        # the moving image and the guided labels' fractions, sampled together
        self.moving = (moving.values if moving.labels is None
                       else torch.cat([moving.values, moving.labels], dim=1))
        # world -> the moving image's own voxels, and its bounds: where it has data
        source = moving.source.matrix("world", "index")
        self.to_source = torch.from_numpy(source[:3, :3].astype(np.float32))
        self.to_source_offset = torch.from_numpy(source[:3, 3].astype(np.float32))
        self.source_limit = torch.tensor(moving.source.shape, dtype=torch.float32) - 0.5
        self.labels = None if fixed.labels is None else fixed.labels.reshape(
            fixed.labels.shape[1], -1)
        self.reference = min(self.values.numel(), moving.values.numel())
        self.partial = partial
        # world -> index -> sampling in two float32 steps (one fused matrix rounds
        # differently, and the optimisation's end point follows the rounding)
        to_index = moving.grid.matrix("world", "index")
        self.to_index = torch.from_numpy(to_index[:3, :3].astype(np.float32))
        self.to_index_offset = torch.from_numpy(to_index[:3, 3].astype(np.float32))
        self.scale = torch.tensor(sampling_scale(moving.grid.shape))
        # the compiled path (:meth:`value_and_gradient`): the plain similarities, without
        # the weights of a partial view or the guided labels
        self.compiled = kernels.available() and not partial and self.labels is None
        if self.compiled:
            self.fixed_affine = fixed.grid.affine
            self.fixed_centre = np.asarray(fixed_centre, dtype=np.float64)
            self.moving_index = to_index
            self.moving_values = moving.values[0, 0].contiguous().numpy()
            values = self.values.numpy().astype(np.float64)
            self.centred = values - values.mean()

    def similarity(self, centre: torch.Tensor, translation: torch.Tensor,
                   linear: torch.Tensor) -> torch.Tensor:
        """The similarity of the fixed values and the moving level at ``P(p)``."""
        world = self.points @ linear.T + (centre + translation)
        index = world @ self.to_index.T + self.to_index_offset
        grid = (index * self.scale - 1.0).flip(-1).view(1, 1, 1, -1, 3)
        sampled = F.grid_sample(self.moving, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=True).reshape(self.moving.shape[1], -1)
        weight = None  # where the moving image has data: 1, else 0
        if self.partial or self.labels is not None:
            with torch.no_grad():
                voxel = world @ self.to_source.T + self.to_source_offset
                weight = ((voxel >= -0.5) & (voxel <= self.source_limit)).all(dim=1).float()
        image = sampled[0]
        if self.local is not None:
            value = _LocalValue.apply(image.view(self.shape), self.local)
        elif self.partial:
            value = weighted_ncc(self.values, image, weight, self.reference)
        else:
            value = global_ncc(self.values[None], image[None], eps=1e-12)[0]
        if self.labels is not None:
            value = value + AFFINE_WEIGHT * soft_dice(self.labels, sampled[1:], weight)
        return value

    def value_and_gradient(self, centre: torch.Tensor, translation: torch.Tensor,
                           linear: torch.Tensor, gradient: bool = True
                           ) -> tuple[float, torch.Tensor | None, torch.Tensor | None]:
        """The similarity (:meth:`similarity`) and, with ``gradient``, its derivatives
        with respect to ``translation`` (3,) and ``linear`` (3, 3): in closed form from
        one compiled pass (the samples and their spatial derivatives) for the plain
        similarities, else by autograd through :meth:`similarity`."""
        if not self.compiled:
            with torch.enable_grad():
                t = translation.detach().requires_grad_(gradient)
                a = linear.detach().requires_grad_(gradient)
                value = self.similarity(centre, t, a)
                if not gradient:
                    return float(value.detach()), None, None
                d_t, d_a = torch.autograd.grad(value, (t, a))
            return float(value.detach()), d_t, d_a
        a = linear.detach().double().numpy()
        offset = centre.detach().double().numpy() + translation.detach().double().numpy()
        # moving voxel of fixed voxel x: W (A (F x - c_f) + c_m + t), W world -> moving index
        to_world = np.eye(4)
        to_world[:3, :3] = a @ self.fixed_affine[:3, :3]
        to_world[:3, 3] = a @ (self.fixed_affine[:3, 3] - self.fixed_centre) + offset
        samples, derivatives = kernels.sample_gradient(
            self.moving_values, self.moving_index @ to_world, self.shape)
        if self.local is not None:
            value, by_sample = self.local(torch.from_numpy(samples)[None])
            weights = by_sample[0].numpy()
        else:  # Pearson correlation, and its derivative with respect to each sample
            b = samples.reshape(-1).astype(np.float64)
            b -= b.mean()
            covariance, sa, sb = self.centred @ b, self.centred @ self.centred, b @ b
            norm = math.sqrt(sa * sb + 1e-12)
            value = covariance / norm
            weights = (self.centred / norm - covariance * sa * b / norm ** 3).reshape(
                self.shape)
        if not gradient:
            return float(value), None, None
        sums = kernels.weighted_index_sums(derivatives, weights)  # dS/dq (x, 1)^T: (3, 4)
        by_index, by_coordinate = sums[:, :3], sums[:, 3]
        # dq/dt = W, dq/dA = W (.) (F x - c_f)^T
        to_index = self.moving_index[:3, :3]
        by_point = (by_index @ self.fixed_affine[:3, :3].T
                    + np.outer(by_coordinate, self.fixed_affine[:3, 3] - self.fixed_centre))
        d_t = torch.from_numpy((to_index.T @ by_coordinate).astype(np.float32))
        d_a = torch.from_numpy((to_index.T @ by_point).astype(np.float32))
        return float(value), d_t, d_a


def _nearest_similarity(linear: torch.Tensor) -> torch.Tensor:
    """The rotation times one scale (3, 3) nearest to ``linear`` (3, 3): ``U V^T`` times
    the mean singular value."""
    u, singular, vt = torch.linalg.svd(linear)
    rotation = u @ vt
    if float(torch.det(rotation)) < 0:
        rotation = u @ torch.diag(torch.tensor([1.0, 1.0, -1.0])) @ vt
    return rotation * singular.mean()


def _optimise(problem: _Problem, centre: np.ndarray, linear: np.ndarray,
              translation: np.ndarray, iterations: int, settings: AffineSettings,
              similarity_only: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Adam on (translation, linear part) for ``iterations`` steps; the best iterate.
    ``similarity_only``: the linear part is brought back to a rotation times one scale
    after every step (a partial field of view does not show the scale across its cut)."""
    centre_t = torch.from_numpy(centre.astype(np.float32))
    t = torch.tensor(translation, dtype=torch.float32)
    a = torch.tensor(linear, dtype=torch.float32)
    optimiser = Adam([t, a], [settings.learning_rate, settings.learning_rate
                              * settings.linear_rate])
    best = (translation, linear, -math.inf)
    for step in range(iterations + 1):
        score, d_t, d_a = problem.value_and_gradient(centre_t, t, a, step < iterations)
        if score > best[2]:
            best = (t.double().numpy().copy(), a.double().numpy().copy(), score)
        if step == iterations:
            break
        optimiser.step([-d_t, -d_a])  # ascent
        if similarity_only:
            with torch.no_grad():
                a.copy_(_nearest_similarity(a))
    return best


class _Fit:
    """The pyramid of one direction, optimised (module docstring, steps 1-4): ``result``,
    and :meth:`score` of any point map on its finest level."""

    def __init__(self, levels: list[tuple[_Level, _Level]], fixed_moments: Moments,
                 moving_moments: Moments, settings: AffineSettings,
                 label_shift: np.ndarray | None = None) -> None:
        c_f, c_m = fixed_moments.centre, moving_moments.centre
        self.centres = c_f, c_m
        self.cut_axis = cut_axis(levels[0])
        self.partial = self.cut_axis is not None
        problems = [_Problem(fixed_level, moving_level, c_f, similarity, settings.window,
                             self.partial)
                    for (fixed_level, moving_level), similarity
                    in zip(levels, settings.similarities, strict=True)]
        self.finest = problems[-1]
        # (name, linear part, translation): the headers as they are (the identity map),
        # then the starts from the moments, in order of preference
        starts = [(HEADERS_AS_THEY_ARE, np.eye(3), c_f - c_m)]
        starts += [(name, linear, np.zeros(3)) for name, linear
                   in candidate_linear_maps(fixed_moments, moving_moments)]
        if not settings.rotations:
            starts = starts[:2]
        if label_shift is not None:  # P(p) = p + shift
            starts.insert(1, ("guided labels' centroids", np.eye(3), label_shift - c_m + c_f))
        if self.cut_axis is not None:
            starts += _cut_axis_starts(problems[0], levels[0], self.cut_axis, c_f, c_m)
        candidates: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
        for name, linear, translation in starts:
            candidates[name] = _optimise(problems[0], c_m, linear, translation,
                                         settings.candidate_iterations, settings,
                                         self.partial)
        best = max(score for _, _, score in candidates.values())
        chosen = next(name for name, _, _ in starts
                      if candidates[name][2] >= best - CANDIDATE_MARGIN)
        _, start_linear, start_translation = next(s for s in starts if s[0] == chosen)
        start_score = self._similarity(start_translation, start_linear)
        translation, linear, _ = candidates[chosen]
        score = -math.inf
        for problem, iterations in zip(problems, settings.iterations, strict=True):
            translation, linear, score = _optimise(problem, c_m, linear, translation,
                                                   iterations, settings, self.partial)
        kept_start = not score >= start_score
        if kept_start:
            translation, linear, score = start_translation, start_linear, start_score
        self.result = AffineResult(point_map(c_f, c_m + translation, linear), chosen,
                                   start_score, score,
                                   {k: v[2] for k, v in candidates.items()}, kept_start,
                                   partial_field_of_view=self.partial)

    def _similarity(self, translation: np.ndarray, linear: np.ndarray) -> float:
        return self.finest.value_and_gradient(
            torch.from_numpy(self.centres[1].astype(np.float32)),
            torch.from_numpy(np.asarray(translation).astype(np.float32)),
            torch.from_numpy(np.asarray(linear).astype(np.float32)), gradient=False)[0]

    def score(self, point_map: np.ndarray) -> float:
        """The finest level's similarity of a (4, 4) point map (fixed -> moving world)."""
        c_f, c_m = self.centres
        linear = point_map[:3, :3]
        return self._similarity(point_map[:3, 3] + linear @ c_f - c_m, linear)


#: The RAS axes by name (the starts of :func:`_cut_axis_starts` are named with them).
AXES = "RAS"


def cut_axis(level: tuple[_Level, _Level]) -> int | None:
    """The RAS axis along which one foreground (its level grid) is
    :data:`PARTIAL_EXTENT` times longer than the other (where several are, the one of
    the largest ratio): a partial field of view, cut across that axis (the body axis for
    a CT slab); None where no axis is."""
    corners = [side.grid.world_corners() for side in level]
    lengths = np.array([c.max(axis=0) - c.min(axis=0) for c in corners])  # (2, 3) mm
    ratio = lengths.max(axis=0) / np.maximum(lengths.min(axis=0), 1e-6)
    axis = int(np.argmax(ratio))
    return axis if ratio[axis] >= PARTIAL_EXTENT else None


def _cut_axis_starts(problem: _Problem, level: tuple[_Level, _Level], axis: int,
                     c_f: np.ndarray, c_m: np.ndarray
                     ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """For a partial field of view cut across ``axis`` (:func:`cut_axis`), wherever the
    headers place it: the translations along that axis (the centres matched across it,
    the headers' orientation) that overlap the shorter foreground by
    :data:`SEARCH_OVERLAP`, one per level voxel, scored by the coarsest level's
    similarity; the best :data:`SEARCH_STARTS`, at least two voxels apart, as named
    starts."""
    (f0, f1), (m0, m1) = [(float(c[:, axis].min()), float(c[:, axis].max()))
                          for c in (side.grid.world_corners() for side in level)]
    shorter = min(f1 - f0, m1 - m0)
    spacing = level[0].grid.spacing[axis]
    shifts = np.arange(m0 - f1 + SEARCH_OVERLAP * shorter,
                       m1 - f0 - SEARCH_OVERLAP * shorter + spacing / 2, spacing)
    centre = torch.from_numpy(c_m.astype(np.float32))
    linear = torch.eye(3)
    scored = []
    with torch.no_grad():
        for shift in shifts:  # P(p) = p + (c_m - c_f across the axis, shift along it)
            translation = np.zeros(3)
            translation[axis] = shift - (c_m[axis] - c_f[axis])
            value = float(problem.similarity(centre, torch.from_numpy(
                translation.astype(np.float32)), linear))
            scored.append((value, float(shift), translation))
    chosen: list[tuple[float, float, np.ndarray]] = []
    for value, shift, translation in sorted(scored, key=lambda s: -s[0]):
        if all(abs(shift - other) >= 2 * spacing for _, other, _ in chosen):
            chosen.append((value, shift, translation))
        if len(chosen) == SEARCH_STARTS:
            break
    return [(f"along {AXES[axis]} {shift:+.0f} mm", np.eye(3), translation)
            for _, shift, translation in chosen]


def world_affine(fixed: np.ndarray, fixed_geometry: Geometry, moving: np.ndarray,
                 moving_geometry: Geometry, settings: AffineSettings | None = None,
                 masks: tuple[np.ndarray, np.ndarray] | None = None,
                 scales: tuple[Scale, Scale] | None = None, guide: Guide | None = None
                 ) -> AffineResult:
    """The affine point map from the fixed to the moving world (module docstring) of
    two images (I, J, K) on their own grids; ``masks`` their foregrounds and ``scales``
    their :func:`~ddmr.registration.moments.intensity_scale` when already known;
    ``guide`` the guided labels (:mod:`ddmr.registration.guidance`): their soft Dice is
    added to the similarity, and their centroids make one more start."""
    from ddmr.registration.qc import affine_anisotropy

    settings = settings or AffineSettings()
    fixed_mask, moving_mask = masks or (foreground_mask(fixed), foreground_mask(moving))
    fixed_moments: Moments = moments(fixed_mask, fixed_geometry)
    moving_moments: Moments = moments(moving_mask, moving_geometry)
    scales = scales or (intensity_scale(fixed, fixed_mask),
                        intensity_scale(moving, moving_mask))
    levels = [(_level(fixed, fixed_geometry, fixed_mask, s, settings.margin_mm, scales[0],
                      None if guide is None else guide.fixed_on),
               _level(moving, moving_geometry, moving_mask, s, settings.margin_mm, scales[1],
                      None if guide is None else guide.moving_on))
              for s in settings.levels_mm]  # resampled on every thread
    shift = None if guide is None else centroid_shift(guide, fixed_geometry, moving_geometry)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small problems: one thread is faster than several here
    try:
        with torch.inference_mode(False), torch.enable_grad():
            forward = _Fit(levels, fixed_moments, moving_moments, settings, shift)
            result = forward.result
            if affine_anisotropy(result.point_map) > settings.reverse_anisotropy:
                backward = _Fit([(m, f) for f, m in levels], moving_moments, fixed_moments,
                                settings, None if shift is None else -shift)
                reverse = np.linalg.inv(backward.result.point_map)

                def both(point_map: np.ndarray) -> float:
                    return forward.score(point_map) + backward.score(np.linalg.inv(point_map))

                result.reverse_tried = True
                if both(reverse) > both(result.point_map):
                    result = AffineResult(reverse, result.start, result.similarity_start,
                                          forward.score(reverse), result.candidates,
                                          result.kept_start, reverse_tried=True,
                                          reversed=True,
                                          partial_field_of_view=result.partial_field_of_view)
    finally:
        torch.set_num_threads(threads)
    return result
