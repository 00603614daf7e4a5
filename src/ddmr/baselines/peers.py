"""The registration methods users pick instead of ddmr, each behind one function that
takes and returns the same things, for ``benchmarks/bench_peers.py`` (issue 21).

Every peer takes the fixed and the moving image as ``(array (I, J, K), Geometry)`` on
their own native grids (different subjects, different headers) and returns a
:class:`PeerResult` whose ``displacement_mm`` (3, I, J, K) float32 lives on the FIXED
grid, in RAS millimetres: the fixed voxel at world point ``p`` shows the moving image at
``p + displacement_mm`` (the whole transform, affine part included; the convention of
:class:`ddmr.registration.native.NativeResult`). :func:`warp` applies it.

=============  ===========================  =====================================================
name           package (``pip``)            what runs
=============  ===========================  =====================================================
``syn``        ``antspyx``                  ``ants.registration(type_of_transform="SyN")``,
                                            antspyx defaults; warp and affine composed by
                                            ``ants.apply_transforms(compose=...)``
``greedy``     ``picsl-greedy``             moments (centre of mass), affine (NCC 2x2x2,
                                            100x50x10), deformable (WNCC 2x2x2, 100x50x10);
                                            composed by greedy's ``-rc``
``elastix``    ``itk-elastix``              its default ``affine`` + ``bspline`` parameter maps
                                            (affine started from the centres of gravity, see
                                            :func:`elastix`); transformix's deformation field
``convexadam`` ``convexadam``               centre-of-mass translation, moving resampled onto
                                            the fixed grid, ``convex_adam_pt`` (package
                                            defaults); composed here
=============  ===========================  =====================================================

``seconds`` is the wall time of the peer's own registration call(s), without our
conversions, the composition of its transforms or its warped output (those are in
``details``). Threads: every peer follows ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` /
``OMP_NUM_THREADS`` (torch's thread count for ConvexAdam); greedy and elastix also take
``threads``. Fields from ITK-based peers are ITK displacement fields (LPS vectors on the
fixed grid), converted with :func:`itk_vectors_to_ras`.

The packages are an optional extra (``pip install ddmr[bench]``); :func:`available`
says which are installed. Nothing here prints: the peers' own logs are captured into
``details["log"]`` where the package allows it.
"""

from __future__ import annotations

import importlib.metadata
import io
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddmr.errors import ConfigError
from ddmr.io.convert import to_ants, to_sitk
from ddmr.spatial.grid import LPS_FLIP, Geometry

logger = logging.getLogger(__name__)

#: An image on its own grid.
Image = tuple[np.ndarray, Geometry]

#: Peer name -> the distribution that provides it (``pip install`` name).
PACKAGES = {"syn": "antspyx", "greedy": "picsl-greedy", "elastix": "itk-elastix",
            "convexadam": "convexadam"}

#: Display names.
NAMES = {"syn": "ANTs SyN", "greedy": "greedy", "elastix": "elastix",
         "convexadam": "ConvexAdam"}


@dataclass
class PeerResult:
    """One peer's answer for one pair.

    name: the peer (a key of :data:`PACKAGES`).
    displacement_mm: (3, I, J, K) float32 on the fixed grid, RAS mm: fixed voxel at world
        point p shows the moving image at p + displacement_mm.
    seconds: wall time of the peer's own registration call(s).
    warped: (I, J, K) float32, the moving image warped by the peer itself (its own
        resampler), for checking the convention; None if it gives none.
    details: peer-specific extras (settings, the time to compose, logs ...).
    """

    name: str
    displacement_mm: np.ndarray
    seconds: float
    warped: np.ndarray | None = None
    details: dict[str, Any] = field(default_factory=dict)


def version(name: str) -> str | None:
    """The installed version of peer ``name``'s package, or None if it is not installed."""
    try:
        return importlib.metadata.version(PACKAGES[name])
    except importlib.metadata.PackageNotFoundError:
        return None


def available() -> list[str]:
    """The peers whose packages are installed."""
    return [name for name in PACKAGES if version(name) is not None]


@contextmanager
def _captured_output() -> Iterator[io.StringIO]:
    """Send what native code writes to the process's stdout and stderr (file descriptors
    1 and 2) to a temporary file for the duration; its text is in the yielded buffer
    afterwards (greedy prints some of its log from C++, past its ``out=`` argument)."""
    text = io.StringIO()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield text
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            text.write(sink.read().decode(errors="replace"))


# --------------------------------------------------------------------------------------
# Conventions: ITK fields, world-space warping
# --------------------------------------------------------------------------------------


def itk_vectors_to_ras(vectors_lps: np.ndarray) -> np.ndarray:
    """ITK displacement vectors (I, J, K, 3), LPS mm, -> (3, I, J, K) float32 RAS mm.

    An ITK displacement field maps a point x of its grid (LPS) to x + v(x); in RAS the
    same map is p -> p + diag(-1, -1, 1) v."""
    vectors = np.asarray(vectors_lps, dtype=np.float64)
    return np.einsum("ab,ijkb->aijk", LPS_FLIP, vectors).astype(np.float32)


def ras_to_itk_vectors(displacement_mm: np.ndarray) -> np.ndarray:
    """The inverse of :func:`itk_vectors_to_ras`: (3, I, J, K) RAS -> (I, J, K, 3) LPS."""
    return np.einsum("ab,bijk->ijka", LPS_FLIP,
                     np.asarray(displacement_mm, dtype=np.float64))


def _sitk_field_to_ras(image, fixed: Geometry) -> np.ndarray:
    """A SimpleITK vector image (an ITK displacement field) on the fixed grid -> RAS."""
    import SimpleITK as sitk  # noqa: N813

    geometry = Geometry.from_itk(image.GetOrigin(), image.GetSpacing(),
                                 image.GetDirection(), image.GetSize())
    if not geometry.isclose(fixed):
        raise RuntimeError(f"the peer returned a field on {geometry}, expected {fixed}")
    vectors = sitk.GetArrayFromImage(image).transpose(2, 1, 0, 3)  # (I, J, K, 3)
    return itk_vectors_to_ras(vectors)


def displacement_transform(displacement_mm: np.ndarray, fixed: Geometry):
    """A ``SimpleITK.DisplacementFieldTransform`` equal to the RAS field
    ``displacement_mm`` on ``fixed``: ``sitk.Resample(moving, fixed_image, transform)``
    warps a moving image as :func:`warp` does."""
    import SimpleITK as sitk  # noqa: N813

    vectors = ras_to_itk_vectors(displacement_mm).transpose(2, 1, 0, 3)  # (K, J, I, 3)
    image = sitk.GetImageFromArray(np.ascontiguousarray(vectors, dtype=np.float64),
                                   isVector=True)
    origin, spacing, direction = fixed.to_itk()
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return sitk.DisplacementFieldTransform(image)


def warp(moving: Image, displacement_mm: np.ndarray, fixed: Geometry,
         labels: bool = False) -> np.ndarray:
    """The moving image (or label map, ``labels=True``) sampled at ``p + displacement_mm``
    for every fixed voxel ``p``: linear interpolation (labels: label-exact, see
    :func:`ddmr.spatial.warp.sample_labels`), 0 outside the moving grid."""
    import torch

    from ddmr.spatial import warp as world

    array, geometry = moving
    points = fixed.points(dtype=torch.float64).numpy() + np.asarray(displacement_mm,
                                                                 dtype=np.float64)
    to_index = geometry.matrix("world", "index")
    index = np.einsum("ab,bijk->aijk", to_index[:3, :3], points)
    index += to_index[:3, 3, None, None, None]
    index_t = torch.from_numpy(index.astype(np.float32))
    if labels:
        source = torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))[None, None]
        values = torch.nonzero(torch.bincount(source.reshape(-1)))[:, 0].tolist()
        out = world.sample_labels(source, index_t.reshape(3, -1), values)
        return out.reshape(fixed.shape).numpy()
    source = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    return world.sample_image(source, index_t).numpy()


def centre_of_mass(image: Image) -> np.ndarray:
    """The intensity-weighted centre (3,) RAS mm of an image (negative values count 0)."""
    array, geometry = image
    weights = np.clip(np.asarray(array, dtype=np.float64), 0, None)
    total = weights.sum()
    if total <= 0:
        raise ValueError("centre of mass of an image without positive values")
    index = [np.tensordot(weights.sum(axis=tuple(b for b in range(3) if b != a)),
                          np.arange(n), axes=1) / total
             for a, n in enumerate(geometry.shape)]
    return geometry.index_to_world(np.asarray(index))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / max(np.sqrt((a @ a) * (b @ b)), 1e-300))


def agreement(result: PeerResult, moving: Image, fixed: Image) -> float:
    """Correlation, inside the fixed image's foreground (> 5 % of its maximum), between the
    peer's own warped image and :func:`warp` of the moving image through the returned
    displacement: 1 when the conversion to ddmr's convention is right."""
    if result.warped is None:
        raise ValueError(f"{result.name} gives no warped image to compare with")
    ours = warp(moving, result.displacement_mm, fixed[1])
    mask = fixed[0] > 0.05 * float(np.max(fixed[0]))
    return _correlation(ours[mask], result.warped[mask])


# --------------------------------------------------------------------------------------
# ANTs SyN
# --------------------------------------------------------------------------------------


def syn(fixed: Image, moving: Image, seed: int | None = None, type_of_transform: str = "SyN",
        **options: Any) -> PeerResult:
    """ANTs SyN with antspyx's defaults (``ants.registration(type_of_transform="SyN")``:
    centre-of-mass start, affine with Mattes MI, then SyN with Mattes MI, 40x20x0).

    ``options`` go to ``ants.registration`` as they are (e.g. fewer ``reg_iterations``
    in tests); ``seed`` (> 0) fixes ANTs' random sampling (antspyx's global seed, restored
    afterwards). The forward transforms (warp, affine) are composed into one ITK
    displacement field on the fixed grid by ``ants.apply_transforms(compose=...)``."""
    import ants
    import SimpleITK as sitk  # noqa: N813

    fixed_image = to_ants(*fixed)
    moving_image = to_ants(*moving)
    previous_seed = getattr(ants.config, "_random_seed", None)
    if seed is not None:
        ants.config._random_seed = seed
    try:
        with tempfile.TemporaryDirectory(prefix="ddmr-syn-") as tmp:
            start = time.perf_counter()
            output = ants.registration(fixed_image, moving_image,
                                       type_of_transform=type_of_transform,
                                       outprefix=str(Path(tmp) / "syn_"), **options)
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            composite = ants.apply_transforms(fixed_image, moving_image,
                                              output["fwdtransforms"],
                                              compose=str(Path(tmp) / "composite_"))
            displacement = _sitk_field_to_ras(sitk.ReadImage(composite), fixed[1])
            compose_seconds = time.perf_counter() - start
    finally:
        if seed is not None:
            ants.config._random_seed = previous_seed
    warped = output["warpedmovout"].numpy().astype(np.float32)
    return PeerResult("syn", displacement, seconds, warped,
                      {"compose_seconds": compose_seconds, "options": dict(options),
                       "seed": seed, "version": version("syn")})


# --------------------------------------------------------------------------------------
# greedy
# --------------------------------------------------------------------------------------


def _levels(iterations: tuple[int, ...] | str) -> str:
    return iterations if isinstance(iterations, str) else "x".join(str(int(n)) for n in
                                                                    iterations)


def greedy(fixed: Image, moving: Image, affine_iterations: tuple[int, ...] = (100, 50, 10),
           iterations: tuple[int, ...] = (100, 50, 10), affine_metric: str = "NCC 2x2x2",
           metric: str = "WNCC 2x2x2", dof: int = 12, threads: int | None = None,
           extra: str = "") -> PeerResult:
    """greedy (``picsl_greedy.Greedy3D``), as its documentation runs it on brains:

    1. ``-moments 1``: centre-of-mass translation (greedy's moments initialisation);
    2. ``-a -dof 12 -ia MOMENTS -m NCC 2x2x2 -n 100x50x10``: affine;
    3. ``-it AFFINE -m WNCC 2x2x2 -n 100x50x10``: deformable, default smoothing
       (``-s 1.732vox 0.7071vox``), ``extra`` appended (e.g. ``-sv``);
    4. ``-r WARP AFFINE -rc COMPOSED``: greedy composes both into one ITK displacement
       field on the fixed grid (``-wp 0``: no quantisation of the warp) and reslices the
       moving image (its own warped output).

    ``seconds`` covers steps 1-3. ``threads`` adds ``-threads N``."""
    from picsl_greedy import Greedy3D

    g = Greedy3D()
    log = io.StringIO()
    common = f" -threads {int(threads)}" if threads else ""
    images = {"fix": to_sitk(np.asarray(fixed[0], np.float32), fixed[1]),
              "mov": to_sitk(np.asarray(moving[0], np.float32), moving[1])}
    with _captured_output() as native:
        start = time.perf_counter()
        g.execute(f"-i fix mov -moments 1 -o moments{common}", out=log, err=log,
                  moments=None, **images)
        g.execute(f"-i fix mov -a -dof {int(dof)} -ia moments -m {affine_metric} "
                  f"-n {_levels(affine_iterations)} -o affine{common}", out=log, err=log,
                  affine=None)
        g.execute(f"-i fix mov -it affine -m {metric} -n {_levels(iterations)} -wp 0 "
                  f"-o warp{common} {extra}".strip(), out=log, err=log, warp=None)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        g.execute(f"-rf fix -rm mov warped -r warp affine -rc composed -wp 0{common}",
                  out=log, err=log, warped=None, composed=None)
        displacement = _sitk_field_to_ras(g["composed"], fixed[1])
        compose_seconds = time.perf_counter() - start
    log.write(native.getvalue())
    import SimpleITK as sitk  # noqa: N813

    warped = sitk.GetArrayFromImage(g["warped"]).transpose(2, 1, 0).astype(np.float32)
    return PeerResult("greedy", displacement, seconds, warped, {
        "compose_seconds": compose_seconds, "affine_ras": np.asarray(g["affine"]).tolist(),
        "affine_iterations": _levels(affine_iterations), "iterations": _levels(iterations),
        "affine_metric": affine_metric, "metric": metric, "extra": extra,
        "threads": threads, "log": log.getvalue()[-4000:], "version": version("greedy")})


# --------------------------------------------------------------------------------------
# elastix
# --------------------------------------------------------------------------------------


def _to_itk(array: np.ndarray, geometry: Geometry):
    """An ``itk.Image[itk.F, 3]`` of a scalar (I, J, K) array on ``geometry``."""
    import itk

    image = itk.image_from_array(np.ascontiguousarray(
        np.asarray(array, dtype=np.float32).transpose(2, 1, 0)))
    origin, spacing, direction = geometry.to_itk()
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(itk.matrix_from_array(np.asarray(direction).reshape(3, 3)))
    return image


def _elastix_error(folder: Path) -> str:
    """The lines of elastix's log in ``folder`` that say what went wrong."""
    lines = []
    for log in folder.glob("*.log"):
        lines += [line.strip() for line in log.read_text(errors="replace").splitlines()
                  if line.strip().startswith(("ERROR", "Description"))]
    return "; ".join(dict.fromkeys(lines)) or "no error in its log"


def elastix(fixed: Image, moving: Image, maps: tuple[str, ...] = ("affine", "bspline"),
            initialise: str | None = "CenterOfGravity",
            overrides: dict[str, Any] | None = None, threads: int | None = None
            ) -> PeerResult:
    """elastix (``itk-elastix``) with its default parameter maps ``maps`` (affine, then
    B-spline: Mattes MI, 4 resolutions, 256 iterations, 10 mm final grid, bending-energy
    penalty), run as one multi-stage ``itk.elastix_registration_method``.

    elastix's default affine map starts from the identity, which between people whose
    headers put their heads hundreds of mm apart finds no overlap at all; ``initialise``
    (default ``"CenterOfGravity"``; ``"GeometricalCenter"``, or None for the bare default)
    sets ``AutomaticTransformInitialization`` on the first map, elastix's own documented
    remedy. ``overrides`` ({parameter: value or list}) apply to every map (e.g. fewer
    ``MaximumNumberOfIterations`` in tests).

    The deformation field comes from ``itk.transformix_deformation_field``: an ITK
    displacement field (LPS, fixed point x -> moving point x + v(x), the transform elastix
    estimates maps fixed to moving points) on the fixed grid. ``warped`` is elastix's own
    result image, resampled linearly (``FinalBSplineInterpolationOrder 1``; this setting
    only concerns that output image).

    ``threads`` sets ITK's global default thread count for the call (restored after):
    itk-elastix 0.25.4 crashes (segmentation fault) when ``number_of_threads`` is passed
    to a run with two parameter maps."""
    import itk

    fixed_image = _to_itk(*fixed)
    moving_image = _to_itk(*moving)
    parameters = itk.ParameterObject.New()
    for position, name in enumerate(maps):
        parameter_map = parameters.GetDefaultParameterMap(name)
        if position == 0 and initialise:
            parameter_map["AutomaticTransformInitialization"] = ["true"]
            parameter_map["AutomaticTransformInitializationMethod"] = [initialise]
        # elastix's own warped output resampled linearly, as the other peers' are (it
        # changes nothing in the registration; the default is cubic B-spline)
        parameter_map["FinalBSplineInterpolationOrder"] = ["1"]
        for key, value in (overrides or {}).items():
            values = value if isinstance(value, list | tuple) else [value]
            parameter_map[key] = [str(v) for v in values]
        parameters.AddParameterMap(parameter_map)
    threader = itk.MultiThreaderBase
    previous_threads = threader.GetGlobalDefaultNumberOfThreads()
    if threads:  # not number_of_threads=: with two maps it crashes itk-elastix 0.25.4
        threader.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        with tempfile.TemporaryDirectory(prefix="ddmr-elastix-") as tmp:
            try:
                start = time.perf_counter()
                result_image, transform = itk.elastix_registration_method(
                    fixed_image, moving_image, parameter_object=parameters,
                    log_to_console=False, log_to_file=True, output_directory=tmp)
                seconds = time.perf_counter() - start
            except RuntimeError as error:
                raise RuntimeError(f"elastix failed: {_elastix_error(Path(tmp))}") from error
    finally:
        threader.SetGlobalDefaultNumberOfThreads(previous_threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ddmr-transformix-") as tmp:
        # without an output folder transformix writes deformationField.nii into the cwd
        deformation = itk.transformix_deformation_field(moving_image, transform,
                                                        output_directory=tmp)
    vectors = np.asarray(itk.array_from_image(deformation)).transpose(2, 1, 0, 3)
    geometry = Geometry.from_itk(tuple(deformation.GetOrigin()),
                                 tuple(deformation.GetSpacing()),
                                 np.asarray(itk.array_from_matrix(deformation.GetDirection()))
                                 .ravel(), vectors.shape[:3])
    if not geometry.isclose(fixed[1]):
        raise RuntimeError(f"transformix returned a field on {geometry}, expected {fixed[1]}")
    displacement = itk_vectors_to_ras(vectors)
    compose_seconds = time.perf_counter() - start
    warped = np.asarray(itk.array_from_image(result_image)).transpose(2, 1, 0)
    return PeerResult("elastix", displacement, seconds, warped.astype(np.float32), {
        "compose_seconds": compose_seconds, "maps": list(maps), "initialise": initialise,
        "overrides": dict(overrides or {}), "threads": threads,
        "version": version("elastix")})


# --------------------------------------------------------------------------------------
# ConvexAdam
# --------------------------------------------------------------------------------------


#: ``convex_adam_pt``'s own defaults (convexAdam 0.2.0), written out so that results
#: record them: MIND-SSC radius 1, dilation 2; coupled convex search on a 6-voxel grid,
#: +-4 grid steps; inverse consistency; 80 Adam steps at half resolution, lambda 1.25.
CONVEXADAM_DEFAULTS = {"mind_r": 1, "mind_d": 2, "lambda_weight": 1.25, "grid_sp": 6,
                       "disp_hw": 4, "selected_niter": 80, "selected_smooth": 0,
                       "grid_sp_adam": 2, "ic": True}


def convexadam(fixed: Image, moving: Image, prealign: str = "moments",
               device: str = "cpu", **settings: Any) -> PeerResult:
    """ConvexAdam (``convexAdam.convex_adam_MIND.convex_adam_pt``; MIND-SSC features,
    coupled convex discrete search, Adam instance optimisation).

    ConvexAdam registers two arrays of the same shape voxel by voxel: it knows no world
    coordinates and no affine stage, and its search reaches +-``disp_hw * grid_sp``
    voxels. So the moving image is first resampled onto the fixed grid in world space
    (linear, 0 outside), shifted by the difference of the two centres of mass
    (``prealign="moments"``; ``"none"``: header alignment alone). Its field ``u`` (voxels
    of the fixed grid, pull-back, ``convexAdam.apply_convex``'s convention) is then
    composed with that translation ``t``: ``displacement_mm = A_f u + t``.

    ``settings`` override :data:`CONVEXADAM_DEFAULTS`. ``seconds`` is the
    ``convex_adam_pt`` call; the resampling is ``details["prealign_seconds"]``."""
    import torch

    from ddmr.spatial.field import voxels_to_mm

    with warnings.catch_warnings():  # convexAdam sets filterwarnings("ignore") on import
        from convexAdam.apply_convex import apply_convex
        from convexAdam.convex_adam_MIND import convex_adam_pt

    unknown = set(settings) - set(CONVEXADAM_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown ConvexAdam setting(s) {', '.join(sorted(unknown))}")
    if prealign not in ("moments", "none"):
        raise ConfigError(f"unknown prealign {prealign!r}; choose moments or none")
    options = {**CONVEXADAM_DEFAULTS, **settings}
    fixed_array, fixed_geometry = fixed
    start = time.perf_counter()
    translation = (centre_of_mass(moving) - centre_of_mass(fixed) if prealign == "moments"
                   else np.zeros(3))
    shift = np.broadcast_to(translation[:, None, None, None], (3, *fixed_geometry.shape))
    resampled = warp(moving, shift, fixed_geometry)
    prealign_seconds = time.perf_counter() - start
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first use imports dynamo
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Default grid_sample and affine_grid")
        field_ijk3 = convex_adam_pt(
            img_fixed=torch.from_numpy(np.ascontiguousarray(fixed_array, np.float32)),
            img_moving=torch.from_numpy(resampled), dtype=torch.float32,
            device=torch.device(device), **options)
    seconds = time.perf_counter() - start
    u = np.asarray(field_ijk3, dtype=np.float64).transpose(3, 0, 1, 2)  # (3, I, J, K) voxels
    displacement = voxels_to_mm(u, fixed_geometry) + translation[:, None, None, None].astype(
        np.float32)
    warped = np.asarray(apply_convex(disp=field_ijk3, moving=resampled.astype(np.float64)),
                        dtype=np.float32)
    return PeerResult("convexadam", displacement, seconds, warped, {
        "prealign": prealign, "translation_mm": translation.tolist(),
        "prealign_seconds": prealign_seconds, "settings": options, "device": device,
        "version": version("convexadam")})


# --------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------


PEERS: dict[str, Callable[..., PeerResult]] = {"syn": syn, "greedy": greedy,
                                               "elastix": elastix, "convexadam": convexadam}


def run_peer(name: str, fixed: Image, moving: Image, **options: Any) -> PeerResult:
    """Run peer ``name`` (a key of :data:`PEERS`) with ``options``; a clear error if its
    package is not installed."""
    if name not in PEERS:
        raise ConfigError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
    if version(name) is None:
        raise ConfigError(f"peer {name!r} needs the package {PACKAGES[name]!r}: "
                          f"pip install 'ddmr[bench]'")
    result = PEERS[name](fixed, moving, **options)
    logger.debug("%s took %.2f s", name, result.seconds)
    return result
