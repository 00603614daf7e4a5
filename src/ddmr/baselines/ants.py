"""ANTs SyN (mutual information) and SyNCC (cross-correlation) through antspyx, "none"
(no registration) and "affine" (DDMR's own affine stage alone,
:mod:`ddmr.model.align`), returning DDMR's displacement convention.

Each registration runs in two stages, an ``Affine`` registration and then ``SyNOnly``
started from its result: in antspyx 0.6.3 the one-call ``type_of_transform="SyN"``
ignores the affine iteration, shrink and smoothing settings and was unstable on small
volumes. ANTs' transforms (affine, then warp) are composed by ``antsApplyTransforms``
into one displacement field on the fixed grid, read back with
:func:`ddmr.io.fields.load_displacement` as a voxel pull-back field (3, D, H, W) such that
``warp_image(moving, u)`` reproduces ANTs' warped image. :func:`register_ants` takes two
images on one grid (as stored test pairs are); :func:`register_ants_world` two images
each on its own grid (inter-subject pairs), with the same stages and settings.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ddmr.errors import ConfigError
from ddmr.spatial.grid import Geometry

logger = logging.getLogger(__name__)

METHODS = ("syn", "syncc", "none", "affine")
#: Display names of the methods (the ``method`` column of evaluation results).
NAMES = {"syn": "SyN", "syncc": "SyNCC", "none": "none", "affine": "affine"}


@dataclass(frozen=True)
class AntsSettings:
    """Iterations and scales of the two stages (coarse to fine). SyN levels use shrink
    factors ``2**k`` and smoothing ``k`` voxels (antspyx's rule); ``sampling`` is the
    number of histogram bins for mutual information or the radius for CC. ``seed`` (> 0;
    ANTs treats 0 as "no seed") makes runs repeatable: bit for bit with one ITK thread
    (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``), to a few hundredths of a voxel with several."""

    affine_iterations: tuple[int, ...] = (2100, 1200, 1200, 10)
    affine_shrink_factors: tuple[int, ...] = (6, 4, 2, 1)
    affine_smoothing_sigmas: tuple[float, ...] = (3, 2, 1, 0)
    syn_iterations: tuple[int, ...] = (40, 20, 0)
    sampling: int | None = None
    grad_step: float = 0.2
    flow_sigma: float = 3.0
    total_sigma: float = 0.0
    seed: int | None = 123
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.seed is not None and self.seed <= 0:
            raise ConfigError(f"ANTs seed must be a positive integer or None, got {self.seed}")


def default_settings(method: str) -> AntsSettings:
    """The settings of ``syn`` (Mattes MI, 32 bins) or ``syncc`` (CC, radius 4, longer)."""
    if method == "syn":
        return AntsSettings(sampling=32)
    if method == "syncc":
        return AntsSettings(syn_iterations=(100, 70, 50, 20), sampling=4)
    raise ConfigError(f"unknown ANTs method {method!r}; choose syn or syncc")


@dataclass
class BaselineResult:
    """A baseline's answer for one pair.

    displacement: (3, D, H, W) float32, voxels of the fixed grid, pull-back.
    warped: (D, H, W) float32, ANTs' own warped moving image (None for "none").
    seconds: wall time of the registration and of composing the field.
    """

    displacement: np.ndarray
    warped: np.ndarray | None
    seconds: float


def _check_grid(fixed: np.ndarray, moving: np.ndarray, geometry: Geometry) -> None:
    if fixed.shape != moving.shape or tuple(fixed.shape) != geometry.shape:
        raise ValueError(f"fixed {fixed.shape}, moving {moving.shape} and grid "
                         f"{geometry.shape} must agree")


def identity(fixed: np.ndarray, moving: np.ndarray, geometry: Geometry) -> BaselineResult:
    """No registration: a zero displacement."""
    _check_grid(fixed, moving, geometry)
    return BaselineResult(np.zeros((3, *fixed.shape), np.float32), None, 0.0)


def affine_only(fixed: np.ndarray, moving: np.ndarray, geometry: Geometry) -> BaselineResult:
    """DDMR's affine stage alone (the pre-alignment of models trained with one), on the
    pair's own grid, images min-max normalised."""
    import torch

    from ddmr.model.align import align_affine

    _check_grid(fixed, moving, geometry)
    start = time.perf_counter()
    images = [torch.from_numpy(np.asarray(a, np.float32))[None, None] for a in (fixed, moving)]
    f, m = [(x - x.min()) / (x.max() - x.min()).clamp_min(1e-12) for x in images]
    field = align_affine(f, m, geometry.spacing).displacement(fixed.shape)
    return BaselineResult(field[0].numpy(), None, time.perf_counter() - start)


def _registration(ants, fixed, moving, method: str, settings: AntsSettings, folder: Path):
    metric = "mattes" if method == "syn" else "CC"
    affine = ants.registration(
        fixed, moving, type_of_transform="Affine", outprefix=str(folder / "affine_"),
        aff_iterations=tuple(settings.affine_iterations),
        aff_shrink_factors=tuple(settings.affine_shrink_factors),
        aff_smoothing_sigmas=tuple(settings.affine_smoothing_sigmas), **settings.extra)
    affine_file = affine["fwdtransforms"][0]
    syn = ants.registration(
        fixed, moving, type_of_transform="SyNOnly", initial_transform=affine_file,
        outprefix=str(folder / "syn_"), syn_metric=metric, syn_sampling=settings.sampling,
        reg_iterations=tuple(settings.syn_iterations), grad_step=settings.grad_step,
        flow_sigma=settings.flow_sigma, total_sigma=settings.total_sigma, **settings.extra)
    transforms = list(syn["fwdtransforms"])
    if not any(t.endswith(".mat") for t in transforms):  # initial transform not collapsed in
        transforms.append(affine_file)
    return transforms, syn["warpedmovout"]


def _run_ants(fixed_image, moving_image, method: str, settings: AntsSettings | None
              ) -> tuple[np.ndarray, Geometry, np.ndarray, float]:
    """The two stages of ``method`` on two ``ants.ANTsImage`` (each on its own grid, in
    world space), seeded -> (voxel displacement (3, I, J, K) on the field's grid, that
    grid, ANTs' warped moving image, seconds)."""
    import ants

    from ddmr.io.fields import load_displacement

    if method not in ("syn", "syncc"):
        raise ConfigError(f"unknown ANTs method {method!r}; choose syn or syncc")
    settings = settings or default_settings(method)
    previous_seed = ants.config._random_seed  # antspyx reads its seed from here
    ants.config._random_seed = settings.seed
    try:
        with tempfile.TemporaryDirectory(prefix="ddmr-ants-") as tmp:
            start = time.perf_counter()
            transforms, warped = _registration(ants, fixed_image, moving_image, method,
                                               settings, Path(tmp))
            composite = ants.apply_transforms(fixed_image, moving_image, transforms,
                                              compose=str(Path(tmp) / "composite_"))
            displacement, field_geometry = load_displacement(composite)
            seconds = time.perf_counter() - start
    finally:
        ants.config._random_seed = previous_seed
    logger.debug("%s took %.2f s", method, seconds)
    return (displacement.astype(np.float32), field_geometry,
            warped.numpy().astype(np.float32), seconds)


def register_ants(fixed: np.ndarray, moving: np.ndarray, geometry: Geometry,
                  method: str = "syn", settings: AntsSettings | None = None
                  ) -> BaselineResult:
    """Register ``moving`` to ``fixed`` (both (D, H, W) on ``geometry``) with ANTs
    ``method`` ("syn" or "syncc"); returns the composed field in DDMR's convention."""
    from ddmr.io.convert import to_ants

    _check_grid(fixed, moving, geometry)
    displacement, field_geometry, warped, seconds = _run_ants(
        to_ants(fixed, geometry), to_ants(moving, geometry), method, settings)
    if not field_geometry.isclose(geometry):
        raise RuntimeError(f"ANTs returned a field on {field_geometry}, expected {geometry}")
    return BaselineResult(displacement, warped, seconds)


def register_ants_world(fixed: tuple[np.ndarray, Geometry], moving: tuple[np.ndarray, Geometry],
                        method: str = "syn", settings: AntsSettings | None = None
                        ) -> tuple[np.ndarray, float]:
    """:func:`register_ants` for two images each on its own grid (array, geometry), in
    world space (ANTs starts from the centres of mass) -> (RAS mm displacement
    (3, I, J, K) on the fixed grid, seconds): the same two stages and ``settings``."""
    from ddmr.io.convert import to_ants
    from ddmr.spatial.field import voxels_to_mm

    displacement, field_geometry, _, seconds = _run_ants(
        to_ants(*fixed), to_ants(*moving), method, settings)
    if not field_geometry.isclose(fixed[1]):
        raise RuntimeError(f"ANTs returned a field on {field_geometry}, expected {fixed[1]}")
    return voxels_to_mm(displacement, field_geometry), seconds


def run_baseline(method: str, fixed: np.ndarray, moving: np.ndarray, geometry: Geometry,
                 settings: AntsSettings | None = None) -> BaselineResult:
    """Dispatch on ``method`` in :data:`METHODS`."""
    if method == "none":
        return identity(fixed, moving, geometry)
    if method == "affine":
        return affine_only(fixed, moving, geometry)
    return register_ants(fixed, moving, geometry, method, settings)


def describe(method: str, settings: AntsSettings | None, same_grid: bool = True) -> str:
    """How ``method`` ("syn", "syncc") runs with ``settings``, in words for reports: the two
    stages' iterations per level, and whether they are fewer than the defaults; with no
    settings on two grids (``same_grid=False``), antspyx's one-call defaults."""
    if settings is None and not same_grid:
        return (f"{NAMES[method]}: antspyx's one-call "
                f"{'SyN' if method == 'syn' else 'SyNCC'} at its own defaults")
    default = default_settings(method)
    settings = settings or default

    def levels(values: Sequence[int]) -> str:
        return "x".join(str(v) for v in values)

    fewer = (sum(settings.affine_iterations) < sum(default.affine_iterations)
             or sum(settings.syn_iterations) < sum(default.syn_iterations))
    return (f"{NAMES[method]}: affine {levels(settings.affine_iterations)} then "
            f"{'Mattes MI' if method == 'syn' else 'CC'} SyN "
            f"{levels(settings.syn_iterations)} iterations per level"
            + (" (reduced from the defaults "
               f"{levels(default.affine_iterations)} / {levels(default.syn_iterations)})"
               if fewer else " (the defaults)" if settings == default else ""))


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"syn,syncc,none"`` -> validated list (empty string -> no baselines)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    methods = [m.strip().lower() for m in items if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown baseline(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def settings_from_iterations(text: str | None, baselines: list[str]) -> dict:
    """:class:`AntsSettings` per baseline (``syn``, ``syncc``) from iterations written
    ``AFFINE/SYN``, each level's count joined by ``x`` (e.g. ``100x50/20x10``, the
    ``--ants-iterations`` option of ``ddmr evaluate`` and ``ddmr report``); {} for None."""
    from dataclasses import replace

    if not text:
        return {}
    try:
        affine_text, syn_text = text.split("/")
        affine = tuple(int(v) for v in affine_text.split("x"))
        syn = tuple(int(v) for v in syn_text.split("x"))
    except ValueError:
        raise ConfigError(f"--ants-iterations {text!r}: expected e.g. 100x50/20x10") from None
    if not affine or not syn or min(affine + syn) < 0:
        raise ConfigError(f"--ants-iterations {text!r}: iterations must be >= 0")
    shrink = tuple(2 ** k for k in reversed(range(len(affine))))
    sigmas = tuple(float(k) for k in reversed(range(len(affine))))
    return {b: replace(default_settings(b), affine_iterations=affine, syn_iterations=syn,
                       affine_shrink_factors=shrink, affine_smoothing_sigmas=sigmas)
            for b in baselines if b in ("syn", "syncc")}
