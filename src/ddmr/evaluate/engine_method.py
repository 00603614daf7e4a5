"""The registration engine as an evaluation method on stored pairs: ``engine`` (DDMR's
world-space affine stage, then the engine) and ``<model>+engine`` (the engine started
from a model's field), scored by the same code as every other method."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

#: Method name of the engine alone, and the suffix of a model refined by the engine.
ENGINE = "engine"
ENGINE_SUFFIX = "+engine"


def engine_method_name(model: str) -> str:
    """``UW-NSD`` -> ``UW-NSD+engine``."""
    return f"{model}{ENGINE_SUFFIX}"


def split_engine_name(method: str) -> tuple[str, bool]:
    """``"UW-NSD+engine"`` -> ``("UW-NSD", True)``; other names -> (name, False)."""
    if method.endswith(ENGINE_SUFFIX) and len(method) > len(ENGINE_SUFFIX):
        return method[: -len(ENGINE_SUFFIX)], True
    return method, False


def engine_field(pair: Any, start: np.ndarray | None = None, settings: Any = None
                 ) -> tuple[np.ndarray, float, Any]:
    """The engine on a stored pair (both images on the pair's grid): from ``start`` (a
    model's field (3, D, H, W), voxels of that grid, its affine part included), or from
    DDMR's world-space affine stage. Returns the whole field (3, D, H, W) in voxels of
    the pair's grid, the seconds the engine (and the affine stage) took, and the
    :class:`ddmr.registration.engine.EngineResult`."""
    from ddmr.registration.affine import world_affine
    from ddmr.registration.engine import register_deformable
    from ddmr.registration.moments import foreground_mask
    from ddmr.registration.native import to_native
    from ddmr.spatial.displacement import Displacement, Transform
    from ddmr.spatial.field import mm_to_voxels
    from ddmr.spatial.grid import Geometry

    geometry = Geometry(pair.affine, pair.fixed.shape)
    started = time.perf_counter()
    masks = (foreground_mask(pair.fixed), foreground_mask(pair.moving))
    initial = None
    if start is None:
        point_map = world_affine(pair.fixed, geometry, pair.moving, geometry,
                                 masks=masks).point_map
    else:
        point_map = np.eye(4)
        initial = Displacement.from_voxels(start, geometry)

    result = register_deformable(pair.fixed, geometry, masks[0], pair.moving, geometry,
                                 masks[1], point_map, settings, initial)
    native = to_native(Transform(point_map, result.displacement()), geometry, pair.moving,
                       geometry)
    seconds = time.perf_counter() - started
    return mm_to_voxels(native.displacement_mm, geometry), seconds, result
