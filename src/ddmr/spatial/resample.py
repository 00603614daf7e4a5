"""Resampling images from one grid onto another through world space.

Cubic B-spline interpolation (scipy.ndimage) with Gaussian anti-aliasing for grids that
get coarser; a :class:`SplineSource` keeps an image's spline coefficients for repeated
resampling; grids that share their axes with the source take three dense matrix
products instead. The scipy work runs on DDMR's threads (:mod:`ddmr.threads`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ddmr.spatial.grid import Geometry

if TYPE_CHECKING:
    pass



#: Edge padding (voxels) around an image before its spline coefficients are computed,
#: as scipy does for ``mode="nearest"``.
SPLINE_PAD = 12


@dataclass(frozen=True, eq=False)
class SplineSource:
    """An image prepared once for repeated spline resampling in world space (e.g. the
    moving image, resampled before and after an affine pre-alignment).

    coefficients: B-spline coefficients of the image (after anti-aliasing), edge-padded
        by :data:`SPLINE_PAD` voxels on every side; float32 (relative error ~1e-7 against
        scipy's float64, at 60 % of the time).
    sigma: the anti-aliasing Gaussian applied first (source voxels, per axis).
    geometry: the image's grid; ``low``/``high``: its value range (results are clipped
        to it, no spline overshoot); ``order``: spline order (2-5).
    """

    coefficients: np.ndarray
    geometry: Geometry
    low: float
    high: float
    order: int
    sigma: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _index_map(geometry_from: Geometry, geometry_to: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(3, 3) matrix and (3,) offset with ``index_from = matrix @ index_to + offset``."""
    transform = geometry_from.matrix("world", "index") @ geometry_to.affine
    return transform[:3, :3], transform[:3, 3]


def antialias_sigma(geometry_from: Geometry, geometry_to: Geometry) -> np.ndarray:
    """Gaussian sigma (3,) in source voxels that suppresses aliasing when resampling from
    ``geometry_from`` onto the coarser ``geometry_to``: half of (output step - 1), the
    output step measured in source voxels along each source axis."""
    matrix, _ = _index_map(geometry_from, geometry_to)
    return np.maximum(np.linalg.norm(matrix, axis=1) - 1.0, 0.0) / 2.0


def _workers() -> int:
    """Threads for scipy.ndimage work (its filters and interpolation release the GIL):
    :func:`ddmr.threads.workers`, at most 4."""
    from ddmr.threads import workers

    return max(1, min(4, workers()))


def _in_slabs(shape: tuple[int, ...], axis: int, job: Callable[[tuple[slice, ...]], None]
              ) -> None:
    """Run ``job(index)`` on slabs of ``shape`` cut along ``axis``, one per thread."""
    from concurrent.futures import ThreadPoolExecutor

    workers = min(_workers(), shape[axis])
    bounds = np.linspace(0, shape[axis], workers + 1).astype(int)
    slabs = []
    for start, stop in itertools.pairwise(bounds):
        index = [slice(None)] * len(shape)
        index[axis] = slice(int(start), int(stop))
        slabs.append(tuple(index))
    if workers == 1:
        job(slabs[0])
        return
    with ThreadPoolExecutor(workers) as pool:
        for done in [pool.submit(job, index) for index in slabs]:
            done.result()


def _filter_axes(array: np.ndarray, dtype: type, apply: Callable[[np.ndarray, int], np.ndarray],
                 axes: Sequence[int]) -> np.ndarray:
    """``apply(volume, axis)`` (a 1D filter along ``axis``) for each of ``axes`` in turn,
    each pass on threads that split the volume along another axis; ``dtype`` output."""
    result = np.asarray(array, dtype=dtype)
    for axis in axes:
        source, out = result, np.empty(result.shape, dtype=dtype)

        def job(index: tuple[slice, ...], source=source, out=out, axis=axis) -> None:
            out[index] = apply(source[index], axis)

        _in_slabs(source.shape, 1 if axis == 0 else 0, job)
        result = out
    return result


def _axis_sigmas(sigma: np.ndarray | None) -> list[float | None]:
    """Per axis, the Gaussian (source voxels) that smoothing by ``sigma`` applies: none at
    all unless some axis exceeds 0.1 voxel, and none along axes of (near) zero sigma."""
    if sigma is None or not np.any(np.asarray(sigma) > 0.1):
        return [None, None, None]
    sigmas = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (3,))
    return [float(value) if value > 1e-15 else None for value in sigmas]


def applied_sigma(sigma: np.ndarray | None) -> tuple[float, float, float]:
    """The anti-aliasing (3,) that :func:`spline_source` records for ``sigma`` (zeros
    where it smooths nothing)."""
    a, b, c = (0.0 if value is None else value for value in _axis_sigmas(sigma))
    return a, b, c


def _smoothed(array: np.ndarray, sigma: np.ndarray | None
              ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``array`` as float32, smoothed by the Gaussian ``sigma`` (source voxels, per axis;
    skipped when no axis exceeds 0.1) on threads, and the sigma applied (zeros if none).
    The numbers of ``scipy.ndimage.gaussian_filter(..., mode="nearest")``."""
    from scipy import ndimage

    source = np.asarray(array, dtype=np.float32)
    sigmas = _axis_sigmas(sigma)
    axes = [axis for axis in range(3) if sigmas[axis] is not None]
    if axes:
        source = _filter_axes(
            source, np.float32, lambda volume, axis: ndimage.gaussian_filter1d(
                volume, sigmas[axis], axis=axis, mode="nearest"), axes)
    return source, applied_sigma(sigma)


def _renormalised_smoothed(array: np.ndarray, sigma: np.ndarray | None) -> np.ndarray:
    """``array`` as float32 smoothed as :func:`_smoothed` smooths it, but by the engine's
    Gaussian, :func:`ddmr.spatial.filters.gaussian_smooth` (renormalised at the borders
    where scipy's repeats the edge; compiled, several times faster at 1 mm). A Fortran-
    ordered scan is smoothed in its own order (no copy; the result is Fortran-ordered)."""
    sigmas = applied_sigma(sigma)
    source = np.asarray(array, dtype=np.float32)
    if not any(sigmas):
        return source
    import torch

    from ddmr.spatial.filters import gaussian_smooth

    if source.flags.f_contiguous and not source.flags.c_contiguous:
        return gaussian_smooth(torch.from_numpy(source.T)[None], sigmas[::-1]).numpy()[0].T
    return gaussian_smooth(torch.from_numpy(np.ascontiguousarray(source))[None],
                           sigmas).numpy()[0]


def spline_source(array: np.ndarray, geometry: Geometry, order: int = 3,
                  sigma: np.ndarray | None = None) -> SplineSource:
    """Smooth ``array`` (I, J, K) by ``sigma`` (source voxels; skipped when all <= 0.1)
    and compute its B-spline coefficients: a :class:`SplineSource`. The numbers of
    ``scipy.ndimage.gaussian_filter`` / ``spline_filter`` (axis by axis; coefficients in
    float32), on threads."""
    from scipy import ndimage

    if tuple(array.shape) != geometry.shape:
        raise ValueError(f"array shape {array.shape} differs from grid {geometry.shape}")
    if not 2 <= order <= 5:
        raise ValueError(f"spline order must be 2..5, got {order}")
    if max(array.shape) <= DENSE_FILTER_LIMIT:  # the same filters as matrices
        sigmas = _axis_sigmas(sigma)
        coefficients = _separable(np.asarray(array, dtype=np.float32), [
            _axis_coefficients(size, order, sigmas[axis]).astype(np.float32)
            for axis, size in enumerate(array.shape)])
        return SplineSource(coefficients, geometry, float(array.min()), float(array.max()),
                            order, applied_sigma(sigma))
    source, applied = _smoothed(array, sigma)
    padded = np.pad(source, SPLINE_PAD, mode="edge")
    coefficients = _filter_axes(
        padded, np.float32, lambda volume, axis: ndimage.spline_filter1d(
            volume, order, axis=axis, output=np.float32, mode="nearest"), range(3))
    return SplineSource(coefficients, geometry, float(array.min()), float(array.max()), order,
                        applied)


def _inside(geometry_from: Geometry, geometry_to: Geometry) -> np.ndarray:
    """(geometry_to.shape) bool: output voxels whose source index lies within half a voxel
    of the source grid (voxel edges, not centres; 1e-4 voxel of tolerance)."""
    matrix, offset = _index_map(geometry_from, geometry_to)
    inside = np.ones(geometry_to.shape, dtype=bool)
    axes = [np.arange(n, dtype=np.float64) for n in geometry_to.shape]
    for row, size in enumerate(geometry_from.shape):
        value = (offset[row] + matrix[row, 0] * axes[0][:, None, None]
                 + matrix[row, 1] * axes[1][None, :, None]
                 + matrix[row, 2] * axes[2][None, None, :])
        inside &= (value >= -0.5 - 1e-4) & (value <= size - 0.5 + 1e-4)
    return inside


def resample_spline(source: SplineSource, geometry_to: Geometry, cval: float = 0.0
                    ) -> np.ndarray:
    """Resample a :class:`SplineSource` onto ``geometry_to`` (world space): float32 array
    of ``geometry_to.shape``, clipped to the source's range, ``cval`` outside it."""
    from scipy import ndimage

    matrix, offset = _index_map(source.geometry, geometry_to)
    output = np.empty(geometry_to.shape, dtype=np.float32)

    def job(index: tuple[slice, ...]) -> None:
        rows = index[0]
        ndimage.affine_transform(
            source.coefficients, matrix, offset + SPLINE_PAD + matrix[:, 0] * rows.start,
            output_shape=output[index].shape, output=output[index], order=source.order,
            mode="nearest", prefilter=False)

    _in_slabs(geometry_to.shape, 0, job)
    output = np.clip(output, source.low, source.high)
    output[~_inside(source.geometry, geometry_to)] = cval
    return output


#: Largest axis (voxels) for which :func:`spline_source` and
#: :func:`resample_axis_aligned` use three dense matrix products rather than scipy's
#: recursive filters: the products cost about ``size`` operations per voxel per axis, yet
#: on 2 cores they were 1.3-4x faster than the filters from 96^3 to 320 x 320 x 200.
DENSE_FILTER_LIMIT = 320


def _axis_coefficients(size: int, order: int, sigma: float | None) -> np.ndarray:
    """(size + 2 SPLINE_PAD, size) float64 matrix of :func:`spline_source` along one axis:
    Gaussian ``sigma`` (``None``: none), edge padding, B-spline prefilter. Built by running
    the same scipy filters on the identity, so the numbers are theirs."""
    from scipy import ndimage

    operator = np.eye(size)
    if sigma is not None:
        operator = ndimage.gaussian_filter1d(operator, sigma, axis=0, mode="nearest")
    operator = np.pad(operator, ((SPLINE_PAD, SPLINE_PAD), (0, 0)), mode="edge")
    return ndimage.spline_filter1d(operator, order, axis=0, mode="nearest")


def _axis_operator(size: int, positions: np.ndarray, order: int, sigma: float | None
                   ) -> np.ndarray:
    """(m, size) float64 matrix of :func:`spline_source` then :func:`resample_spline`
    along one axis: :func:`_axis_coefficients` evaluated at the source ``positions``."""
    from scipy import ndimage

    coefficients = _axis_coefficients(size, order, sigma)
    where = [np.asarray(positions, dtype=np.float64) + SPLINE_PAD]
    return np.stack([ndimage.map_coordinates(coefficients[:, column], where, order=order,
                                             mode="nearest", prefilter=False)
                     for column in range(size)], axis=1)


def _separable(volume: np.ndarray, operators: Sequence[np.ndarray]) -> np.ndarray:
    """``volume`` (I, J, K) float32 with matrix ``operators[a]`` (n_a, size_a) applied
    along each axis a: (n_0, n_1, n_2) float32."""
    size_i, size_j, size_k = volume.shape
    out = (operators[0] @ volume.reshape(size_i, size_j * size_k)).reshape(-1, size_j, size_k)
    return np.ascontiguousarray(np.matmul(np.matmul(operators[1], out), operators[2].T))


def resample_axis_aligned(array: np.ndarray, geometry_from: Geometry, geometry_to: Geometry,
                          order: int = 3, sigma: np.ndarray | None = None, cval: float = 0.0
                          ) -> np.ndarray | None:
    """``resample_spline(spline_source(array, geometry_from, order, sigma), geometry_to,
    cval)`` as three matrix products, when each axis of ``geometry_to`` runs along the
    same axis of ``geometry_from`` (any scale, offset or flip; e.g. the network's grid
    made from the fixed image) and no source axis exceeds :data:`DENSE_FILTER_LIMIT`;
    ``None`` otherwise. Float32 (I', J', K')."""
    if max(geometry_from.shape) > DENSE_FILTER_LIMIT:
        return None
    matrix, offset = _index_map(geometry_from, geometry_to)
    diagonal = np.diag(matrix)
    if not np.allclose(matrix, np.diag(diagonal), rtol=0.0, atol=1e-9 * np.abs(matrix).max()) \
            or np.any(diagonal == 0):
        return None
    if tuple(array.shape) != geometry_from.shape:
        raise ValueError(f"array shape {array.shape} differs from grid {geometry_from.shape}")
    sigmas = _axis_sigmas(sigma)
    operators = [_axis_operator(
        geometry_from.shape[axis], diagonal[axis] * np.arange(geometry_to.shape[axis])
        + offset[axis], order, sigmas[axis]).astype(np.float32) for axis in range(3)]
    volume = np.asarray(array, dtype=np.float32)
    out = np.clip(_separable(volume, operators), float(volume.min()), float(volume.max()))
    out[~_inside(geometry_from, geometry_to)] = cval
    return np.ascontiguousarray(out, dtype=np.float32)


def resample_to(array: np.ndarray, geometry_from: Geometry, geometry_to: Geometry,
                order: int = 3, cval: float = 0.0, antialias: bool = False) -> np.ndarray:
    """Resample ``array`` (I, J, K) from ``geometry_from`` onto ``geometry_to`` in world
    space (scipy spline interpolation through the two affines).

    ``order`` 3 (cubic B-spline) suits images, 0 (nearest) label maps. Points outside the
    source grid (beyond half a voxel from it) take ``cval``. For ``order > 1`` the result
    is clipped to the input's range (no spline overshoot). ``antialias`` first smooths
    with a Gaussian along the axes that get coarser (:func:`antialias_sigma`): for
    ``order`` 1 (the pyramid levels of the affine stage and the engine) the engine's,
    renormalised at the borders; otherwise scipy's, the edge repeated. Returns an
    array of ``geometry_to.shape`` and the input dtype for ``order == 0``, float32
    otherwise.
    """
    from scipy import ndimage

    if tuple(array.shape) != geometry_from.shape:
        raise ValueError(f"array shape {array.shape} differs from grid {geometry_from.shape}")
    if order > 1:
        sigma = antialias_sigma(geometry_from, geometry_to) if antialias else None
        fast = resample_axis_aligned(array, geometry_from, geometry_to, order, sigma, cval)
        if fast is not None:
            return fast
        return resample_spline(spline_source(array, geometry_from, order, sigma),
                               geometry_to, cval)
    if order == 1:
        return _linear(_renormalised_smoothed(array, antialias_sigma(
            geometry_from, geometry_to) if antialias else None), geometry_from, geometry_to,
            cval)
    matrix, offset = _index_map(geometry_from, geometry_to)
    output = ndimage.affine_transform(array, matrix, offset, output_shape=geometry_to.shape,
                                      order=order, mode="nearest")
    output[~_inside(geometry_from, geometry_to)] = cval
    return output


def _linear(source: np.ndarray, geometry_from: Geometry, geometry_to: Geometry, cval: float
            ) -> np.ndarray:
    """Trilinear resampling of the float32 ``source`` (edge values up to half a voxel
    beyond its grid, ``cval`` further out) by ``grid_sample`` on every torch thread: the
    numbers of ``ndimage.affine_transform(order=1, mode="nearest")`` to float32 rounding,
    several times faster."""
    from ddmr.spatial import kernels

    if kernels.available():  # one pass, reading the source in its own order
        return kernels.resample_linear(source, geometry_from.matrix("world", "index")
                                       @ geometry_to.affine, geometry_to.shape, cval)
    import torch

    from ddmr.spatial.grid import affine_volume
    from ddmr.spatial.warp import grid_sample_3d

    to_sampling = geometry_from.matrix("world", "sampling") @ geometry_to.affine
    grid = affine_volume(to_sampling, geometry_to.shape,
                         channels_last=True)
    volume = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))[None, None]
    output = grid_sample_3d(volume, grid[None])[0, 0]
    outside = torch.zeros(geometry_to.shape, dtype=torch.bool)
    for channel, n in enumerate(reversed(source.shape)):  # x, y, z: the last axis first
        unit = 2.0 / max(n - 1, 1)  # grid_sample's unit per voxel (aligned corners)
        low, high = -1.0 - (0.5 + 1e-4) * unit, -1.0 + (n - 0.5 + 1e-4) * unit
        coordinate = grid[..., channel]
        outside |= (coordinate < low) | (coordinate > high)
    output[outside] = cval
    return output.numpy()
