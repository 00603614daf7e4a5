"""The registration engine's inner loops as compiled kernels (numba), each a fused pass
over whole volumes in place of a chain of torch operations (issue 28: an engine step at
1 mm was ~25 torch passes, each reading and writing whole volumes).

Every kernel computes exactly what its torch counterpart computes (the same definitions,
to float32 rounding; tested against them):

* :func:`box_sum` - :func:`ddmr.spatial.filters.box_sum` (running sums in float64);
* :func:`gaussian_smooth` - :func:`ddmr.spatial.filters.gaussian_smooth`;
* :func:`sample_points` - ``grid_sample`` (the same) at voxel coordinates of given points,
  and :func:`sample_grid` at those of a grid's voxels through an affine map;
* :func:`sample_gradient` - ``grid_sample`` (zeros padding) through an affine index map,
  with the derivatives ``grid_sample``'s backward pass takes for its coordinates, and
  :func:`weighted_index_sums` - their weighted sums, the derivative with respect to the map;
* :func:`fixed_point` - the inverse's fixed-point iteration
  (:func:`ddmr.registration.inverse.invert`), each point until it settles;
* :func:`invert_grid` - the same iteration at every voxel of a grid, with the errors of
  :func:`ddmr.registration.inverse.invert`;
* :func:`resample_linear` - :func:`ddmr.spatial.resample.resample_to`'s trilinear
  resampling (ITK's half-voxel rule) through an affine index map;
* :func:`lps_component_f_order`, :func:`itk_chunk_shuffled` - a field's components in
  the layouts of :mod:`ddmr.io.fields` and :mod:`ddmr.io.composite`, rounded as they round;
* :func:`sample_affine` - ``grid_sample`` (trilinear, aligned corners, border values) at
  voxel coordinates ``L u(x) + B x + c`` made on the fly, plus an optional addend;
* :class:`LNCCKernel` - :class:`ddmr.registration.similarity.LocalNCC`'s value and, from
  its gradient, the engine's force (central differences, one-sided at the borders, as
  :func:`ddmr.registration.similarity.force_from_gradient`);
* :func:`largest_norm` - the largest vector length of a field;
* :func:`affine_field` - an affine map of a field's vectors and positions
  (:func:`ddmr.spatial.field.residual_of`);
* :func:`jacobian_determinant` - :func:`ddmr.spatial.field.jacobian_determinant_mm`;
* :func:`log_spread` - the standard deviation of ``log(max(v, floor))``
  (:func:`ddmr.spatial.field.sdlogj`);
* :func:`native_rows` - :func:`ddmr.registration.native.to_native`'s displacement, moving
  indices and warped image (``sample_image``) on rows of the fixed grid.

Arrays are C-contiguous float32 numpy arrays (torch CPU tensors share their memory through
``.numpy()``), channels first: (C, D, H, W). Compiled code is cached on disk (the first
process compiles, ~10-20 s once; later ones load it in well under a second).

:func:`available` says whether the kernels can run: numba installed and importable, and
``DDMR_KERNELS`` not set to ``torch`` (the torch path, the reference, runs otherwise).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

#: ``DDMR_KERNELS=torch`` turns the compiled kernels off (the torch path runs).
SWITCH = "DDMR_KERNELS"


@lru_cache(maxsize=1)
def _numba():
    """numba, its pool set to DDMR's thread count (:func:`ddmr.threads.workers`); None
    where it cannot be loaded (the torch path runs)."""
    try:
        import numba
    except Exception:  # any failure to load numba means the torch path
        return None
    from ddmr.threads import workers

    numba.set_num_threads(max(1, min(workers(), numba.config.NUMBA_NUM_THREADS)))
    return numba


def available() -> bool:
    """True when the compiled kernels run (numba importable, not switched off)."""
    return os.environ.get(SWITCH, "").strip().lower() != "torch" and _numba() is not None


@lru_cache(maxsize=1)
def _compiled():
    """The kernels (:mod:`ddmr.spatial._numba_loops`), compiled or loaded from numba's
    cache on first use."""
    from ddmr.spatial import _numba_loops as loops

    return {"box_volume": loops.box_volume,
            "gauss": (loops.gauss_first, loops.gauss_middle, loops.gauss_last),
            "sample": loops.sample, "sample_points": loops.sample_points,
            "sample_gradient": loops.sample_gradient, "sample_grid": loops.sample_grid,
            "weighted_index_sums": loops.weighted_index_sums,
            "fixed_point": loops.fixed_point, "native_rows": loops.native_rows,
            "invert_grid": loops.invert_grid, "resample_linear": loops.resample_linear,
            "lps_component_f_order": loops.lps_component_f_order,
            "itk_chunk_shuffled": loops.itk_chunk_shuffled,
            "lncc_products": loops.lncc_products,
            "lncc_centres": loops.lncc_centres, "lncc_force": loops.lncc_force,
            "largest_norm": loops.largest_norm, "affine_field": loops.affine_field,
            "jacobian_determinant": loops.jacobian_determinant,
            "log_statistics": loops.log_statistics}


class _Arena(threading.local):
    """The memory :func:`reusing_scratch` lends to the kernels' temporaries, per thread:
    ``memory`` (float32, grown to the largest request), ``top`` the first element in use
    by no open :func:`_temporaries` block, ``depth`` the open :func:`reusing_scratch`
    blocks."""

    depth = 0
    top = 0

    def __init__(self) -> None:
        self.memory = np.empty(0, dtype=np.float32)


_ARENA = _Arena()


@contextmanager
def reusing_scratch() -> Iterator[None]:
    """Within the block the kernels' internal temporaries (a Gaussian's spare channels,
    a box sum's scratch, local NCC's statistics) share one piece of memory, made once
    (as large as the largest of them) and freed when the outermost block ends: the steps
    of an engine level touch the same memory instead of fresh pages, and no more of it
    than the largest step needs (each fresh page is a page fault; on a virtual machine
    that hands freed memory back to its host, an expensive one: benchmarks/RESULTS.md,
    issue 28)."""
    _ARENA.depth += 1
    try:
        yield
    finally:
        _ARENA.depth -= 1
        if _ARENA.depth == 0:
            _ARENA.memory, _ARENA.top = np.empty(0, dtype=np.float32), 0


@contextmanager
def _temporaries(*shapes: tuple[int, ...]) -> Iterator[list[np.ndarray]]:
    """Uninitialised float32 arrays of ``shapes``, valid within the block: carved from
    :func:`reusing_scratch`'s memory when one is open, else new."""
    if _ARENA.depth == 0:
        yield [np.empty(shape, dtype=np.float32) for shape in shapes]
        return
    sizes = [math.prod(shape) for shape in shapes]
    start = _ARENA.top
    if start + sum(sizes) > _ARENA.memory.size:  # grown (the views of open blocks keep
        _ARENA.memory = np.empty(start + sum(sizes), dtype=np.float32)  # the old memory)
    offsets = np.cumsum([start, *sizes])
    _ARENA.top = int(offsets[-1])
    try:
        yield [_ARENA.memory[a:b].reshape(shape)
               for a, b, shape in zip(offsets[:-1], offsets[1:], shapes, strict=True)]
    finally:
        _ARENA.top = start


def _four(volume: np.ndarray) -> np.ndarray:
    """An input (C, D, H, W) as the kernels read it: C-contiguous float32 (a copy only
    where it is not)."""
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    if volume.ndim != 4:
        raise ValueError(f"kernels take (C, D, H, W) volumes, got shape {volume.shape}")
    return volume


def _output(out: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """``out`` checked (:func:`_target`), or a new float32 array of ``shape``."""
    out = _target(out, shape)
    return np.empty(shape, dtype=np.float32) if out is None else out


def _target(out: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """``out`` checked as a place to write a result of ``shape`` (None: a new array)."""
    if out is not None and (out.dtype != np.float32 or not out.flags.c_contiguous
                            or out.shape != shape):
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}")
    return out


def _separable(volume: np.ndarray, passes, out: np.ndarray | None) -> np.ndarray:
    """Apply ``passes`` [(kernel, *arguments)] one after the other to each channel of
    ``volume`` (C, D, H, W), each pass from the last one's result, the last into ``out``
    (may be ``volume``) or a new array. Into a new array or another ``out`` the passes
    alternate between the output's channel and one spare channel; in place, two spares
    take the passes before the last: one or two volumes of one channel as temporaries,
    whatever C (each a fresh volume outside :func:`reusing_scratch`)."""
    result = np.empty_like(volume) if out is None else out
    if not passes:
        if not _same(result, volume):
            result[...] = volume
        return result
    in_place = _same(result, volume)
    with _temporaries(*[volume[:1].shape] * (2 if in_place else 1)) as spares:
        for channel in range(volume.shape[0]):
            _separable_channel(volume[channel:channel + 1], passes,
                               result[channel:channel + 1], spares)
    return result


def _separable_channel(source: np.ndarray, passes, final: np.ndarray,
                       spares: list[np.ndarray]) -> None:
    """:func:`_separable`'s passes on one channel (1, D, H, W) into ``final``: a pass
    never writes the array it reads, and the last one writes ``final``."""
    in_place = _same(final, source)
    for n, (kernel, *arguments) in enumerate(passes):
        left = len(passes) - 1 - n  # passes after this one
        if in_place:
            target = final if left == 0 and len(passes) > 1 else \
                next(b for b in spares if not _same(b, source))
        else:  # ping-pong, so that the last pass lands in final
            target = final if left % 2 == 0 else spares[0]
        kernel(source, target, *arguments)
        source = target
    if not _same(source, final):  # one pass in place: copied back
        final[...] = source


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays start at the same address (views of one buffer)."""
    return a.ctypes.data == b.ctypes.data


def box_sum(volume: np.ndarray, window: int, out: np.ndarray | None = None) -> np.ndarray:
    """Sums of (C, D, H, W) over a cubic ``window`` (odd, voxels), zero beyond the grid:
    :func:`ddmr.spatial.filters.box_sum`. One pass over each channel (three axes fused);
    in place (``out`` is ``volume``) through one channel of scratch."""
    kernel = _compiled()["box_volume"]
    radius = window // 2
    volume = _four(volume)
    result = np.empty_like(volume) if out is None else _target(out, volume.shape)
    in_place = _same(result, volume)
    chunks = max(1, min(_numba().get_num_threads(), volume.shape[1]))
    scratch_shapes = [volume[0].shape] if in_place else []
    with _temporaries(*scratch_shapes) as scratch:
        for channel in range(volume.shape[0]):
            target = scratch[0] if in_place else result[channel]
            kernel(volume[channel], target, radius, chunks)
            if in_place:
                result[channel] = target
    return result


def box_sum_down(buffer: np.ndarray, window: int) -> np.ndarray:
    """Window sums of the C volumes in ``buffer[1:]`` ((C + 1, D, H, W) float32,
    C-contiguous), each written one slot down (channel c of ``buffer[1:]`` into slot c):
    the sums as ``buffer[:C]``, in place without copies."""
    kernel = _compiled()["box_volume"]
    chunks = max(1, min(_numba().get_num_threads(), buffer.shape[1]))
    for channel in range(buffer.shape[0] - 1):
        kernel(buffer[channel + 1], buffer[channel], window // 2, chunks)
    return buffer[:-1]


@lru_cache(maxsize=64)
def gaussian_taps(sigma: float, n: int) -> tuple[tuple[float, ...], torch.Tensor]:
    """Weights of taps 0..R (R = floor(4 sigma), at most n - 1; symmetric, summing to 1
    over -R..R) and, per voxel of the axis, one over the weight of its taps inside the
    grid (n,) float64 (1 but within R of either end). The Gaussian of both paths: the
    torch one (:func:`ddmr.spatial.filters.gaussian_smooth`) and the compiled one."""
    import torch

    radius = min(math.floor(4.0 * sigma), n - 1)
    weights = [math.exp(-k * k / (2.0 * sigma * sigma)) for k in range(radius + 1)]
    total = weights[0] + 2.0 * sum(weights[1:])
    weights = [w / total for w in weights]
    scale = torch.ones(n, dtype=torch.float64)
    for i in [*range(min(radius, n)), *range(max(radius, n - radius), n)]:
        scale[i] = 1.0 / sum(weights[abs(k)]
                             for k in range(-min(i, radius), min(n - 1 - i, radius) + 1))
    return tuple(weights), scale


def gaussian_smooth(volume: np.ndarray, sigma: float | tuple[float, float, float],
                    out: np.ndarray | None = None) -> np.ndarray:
    """(C, D, H, W) smoothed by a Gaussian of ``sigma`` voxels (per axis; 0: none),
    truncated at 4 sigma and renormalised at the borders:
    :func:`ddmr.spatial.filters.gaussian_smooth`."""
    kernels = _compiled()["gauss"]
    volume = _four(volume)
    out = _target(out, volume.shape)
    sigmas = (sigma,) * 3 if isinstance(sigma, int | float) else tuple(sigma)
    passes = []
    for axis, s in enumerate(sigmas):
        n = volume.shape[axis + 1]
        if s > 0 and n > 1:
            weights, scale = gaussian_taps(float(s), n)
            passes.append((kernels[axis], np.asarray(weights, dtype=np.float64),
                           scale.numpy()))
    return _separable(volume, passes, out)


def sample_affine(volume: np.ndarray, displacement: np.ndarray, linear: np.ndarray,
                  base: np.ndarray, addend: np.ndarray | None = None,
                  out: np.ndarray | None = None) -> np.ndarray:
    """``volume`` (C, ...) sampled (trilinear, border values) at the voxel coordinates
    ``linear @ displacement[:, x] + base @ (x, 1)`` of every voxel x of ``displacement``
    (3, D, H, W): (C, D, H, W), plus ``addend`` (C, D, H, W) when given. ``linear`` (3, 3),
    ``base`` (3, 4); ``out``: where to write it (may be ``displacement`` or ``addend``,
    never ``volume``)."""
    volume, displacement = _four(volume), _four(displacement)
    out = _output(out, (volume.shape[0], *displacement.shape[1:]))
    add = addend is not None
    _compiled()["sample"](volume, displacement, np.ascontiguousarray(linear, np.float64),
                          np.ascontiguousarray(base, np.float64), out,
                          _four(addend) if add else out, add)
    return out


def sample_gradient(volume: np.ndarray, matrix: np.ndarray, shape: tuple[int, int, int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``volume`` (D', H', W') sampled (trilinear, zero beyond it: ``grid_sample``'s zeros
    padding) at the voxel coordinates ``matrix @ (x, 1)`` (``matrix`` (3, 4) or (4, 4)) of
    every voxel x of a grid of ``shape``, and the samples' derivatives with respect to
    those coordinates: ((*shape), (3, *shape)) float32."""
    values = np.empty(shape, dtype=np.float32)
    gradient = np.empty((3, *shape), dtype=np.float32)
    _compiled()["sample_gradient"](np.ascontiguousarray(volume, dtype=np.float32),
                                   np.ascontiguousarray(matrix[:3], np.float64), values,
                                   gradient)
    return values, gradient


def weighted_index_sums(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The sum over voxels x of ``weights[x] vectors[:, x] (x, 1)^T`` for vectors (3, D, H,
    W) and weights (D, H, W): (3, 4) float64 (a similarity's derivative with respect to
    an affine index map, from its derivatives at each voxel)."""
    out = np.empty((3, 4), dtype=np.float64)
    _compiled()["weighted_index_sums"](_four(vectors), np.ascontiguousarray(
        weights, dtype=np.float32), out)
    return out


def sample_grid(volume: np.ndarray, matrix: np.ndarray, shape: tuple[int, int, int]
                ) -> np.ndarray:
    """``volume`` (C, ...) sampled (trilinear, border values) at the voxel coordinates
    ``matrix @ (x, 1)`` ((3, 4) or (4, 4)) of every voxel x of a grid of ``shape``:
    (C, *shape) float32."""
    volume = _four(volume)
    out = np.empty((volume.shape[0], *shape), dtype=np.float32)
    _compiled()["sample_grid"](volume, np.ascontiguousarray(np.asarray(matrix)[:3],
                                                            dtype=np.float64), out)
    return out


def sample_points(volume: np.ndarray, points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``volume`` (C, ...) sampled (trilinear, border values) at the voxel coordinates
    ``matrix @ (p, 1)`` of points (3, N) (``matrix`` (3, 4) or (4, 4)): (C, N)."""
    volume = _four(volume)
    points = np.ascontiguousarray(points, dtype=np.float32)
    out = np.empty((volume.shape[0], points.shape[1]), dtype=np.float32)
    _compiled()["sample_points"](volume, points, np.ascontiguousarray(matrix[:3],
                                                                      np.float64), out)
    return out


def fixed_point(field: np.ndarray, matrix: np.ndarray, y: np.ndarray, start: np.ndarray,
                iterations: int, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """The points p (3, N) with ``p + d(p) = y`` for world points y (3, N), ``d`` the
    field (3, ...) at the voxel coordinates ``matrix @ (p, 1)`` (trilinear, border
    values): ``p <- y - d(p)`` from ``start`` per point until each component of the
    mismatch ``p + d(p) - y`` is below ``tolerance`` or after ``iterations`` updates.
    Returns (p, the mismatch of p), both (3, N) float32."""
    p = np.array(start, dtype=np.float32, order="C")
    mismatch = np.empty_like(p)
    _compiled()["fixed_point"](_four(field), np.ascontiguousarray(matrix[:3], np.float64),
                               np.ascontiguousarray(y, dtype=np.float32), p, mismatch,
                               int(iterations), float(tolerance))
    return p, mismatch


def invert_grid(field: np.ndarray, to_field: np.ndarray, start: np.ndarray | None,
                to_start: np.ndarray | None, to_y: np.ndarray, to_q: np.ndarray,
                to_fixed: np.ndarray, fixed_shape: tuple[int, int, int],
                to_error: np.ndarray, shape: tuple[int, int, int], iterations: int,
                tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """At every voxel of a grid of ``shape``: the inverse displacement ``p - q`` (3,
    *shape) and the error of each voxel (*shape; -1 outside the fixed grid); see
    :func:`ddmr.spatial._numba_loops.invert_grid`. Matrices (3, 4) or (4, 4) (``to_error``
    (3, 3)); ``start`` None: the iteration starts from ``y - d(y)``."""
    def matrix(m):
        return np.ascontiguousarray(np.asarray(m)[:3], dtype=np.float64)

    out = np.empty((3, *shape), dtype=np.float32)
    errors = np.empty(shape, dtype=np.float32)
    field = _four(field)
    _compiled()["invert_grid"](
        field, matrix(to_field), field if start is None else _four(start),
        matrix(to_field if to_start is None else to_start), start is not None,
        matrix(to_y), matrix(to_q), matrix(to_fixed),
        np.asarray(fixed_shape, dtype=np.int64), matrix(to_error), int(iterations),
        float(tolerance), out, errors)
    return out, errors


def resample_linear(image: np.ndarray, matrix: np.ndarray, shape: tuple[int, int, int],
                    cval: float) -> np.ndarray:
    """``image`` (I, J, K; float32 of any strides) at the voxel coordinates ``matrix @ (x,
    1)`` ((3, 4) or (4, 4)) of every voxel x of a grid of ``shape``: (*shape) float32."""
    out = np.empty(shape, dtype=np.float32)
    image = np.asarray(image, dtype=np.float32)  # (no copy of a float32 array)
    _compiled()["resample_linear"](image, np.ascontiguousarray(np.asarray(matrix)[:3],
                                                               dtype=np.float64),
                                   float(cval), out)
    return out


def lps_component_f_order(field: np.ndarray, row: np.ndarray, step: float) -> np.ndarray:
    """``row @ field`` of a field (3, I, J, K) rounded to ``step`` (as
    :func:`ddmr.io.fields.rounded_to_step`), as a (K, J, I) float32 array: the component in
    the order a NIfTI file stores it."""
    field = _four(field)
    out = np.empty(field.shape[:0:-1], dtype=np.float32)
    _compiled()["lps_component_f_order"](field, np.asarray(row, dtype=np.float64),
                                         float(step), out)
    return out


def itk_chunk_shuffled(field: np.ndarray, linear: np.ndarray, position: np.ndarray,
                       signs: np.ndarray, step: float, slices: slice,
                       planes: np.ndarray) -> None:
    """Slices ``slices`` (along k) of the field ``linear @ field + position @ (x, 1)``
    (``field`` (3, I, J, K), ``linear`` (3, 3), ``position`` (3, 4)) in ITK's parameter
    order, times ``signs`` (3,) and rounded to ``step``, byte-shuffled into ``planes``
    (4, N) uint8 (zero beyond): :func:`ddmr.io.composite`'s chunks."""
    def matrix(m):
        return np.ascontiguousarray(m, dtype=np.float64)

    _compiled()["itk_chunk_shuffled"](_four(field), matrix(linear), matrix(position),
                                      matrix(signs), float(step), slices.start, slices.stop,
                                      planes)


class LNCCKernel:
    """Local squared NCC (window ``window`` voxels) against the fixed image ``a`` (D, H, W):
    :meth:`force` gives the similarity of a warped image and the force from it, as
    :class:`ddmr.registration.similarity.LocalNCC` and the engine's force do."""

    def __init__(self, a: np.ndarray, window: int, eps: float) -> None:
        self.a = np.ascontiguousarray(a, dtype=np.float32)
        self.window, self.eps = window, float(eps)
        ones = np.ones((1, *a.shape), dtype=np.float32)
        self.count = box_sum(ones, window)[0]
        stats = np.stack([self.a, self.a * self.a])
        sums = box_sum(stats, window)
        self.sum_a = np.ascontiguousarray(sums[0])
        var_a = sums[1] - sums[0] * (sums[0] / self.count)
        self.var_a = np.ascontiguousarray(np.maximum(var_a, 0.0, out=var_a))

    def similarity(self, b: np.ndarray) -> float:
        """The mean squared correlation of the warped image ``b`` (D, H, W)."""
        with _temporaries((5, *b.shape)) as (work,):
            return self._statistics(b, work)

    def _statistics(self, b: np.ndarray, work: np.ndarray) -> float:
        """The mean squared correlation, with ``work`` (5, D, H, W) holding the four
        window statistics of its gradient in ``[1:]``. One buffer of five volumes serves
        every step: the products in slots 2-4, their window sums one slot down (1-3), and
        the statistics over the sums (1-4; the kernel reads a voxel's sums before it
        writes that voxel's statistics)."""
        kernels = _compiled()
        kernels["lncc_products"](self.a, np.ascontiguousarray(b), work[2:])
        sums = box_sum_down(work[1:], self.window)
        total = kernels["lncc_centres"](sums, self.sum_a, self.var_a, self.count, self.eps,
                                        work[1:])
        return total / b.size

    def force(self, b: np.ndarray, spacing: tuple[float, float, float],
              out: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """(similarity, the force (3, D, H, W)) of the warped image ``b`` (D, H, W); the
        force written into ``out`` where given."""
        with _temporaries((5, *b.shape)) as (work,):
            value = self._statistics(b, work)
            return value, self._force(b, spacing, work, out)

    def _force(self, b: np.ndarray, spacing: tuple[float, float, float], centres: np.ndarray,
               out: np.ndarray | None) -> np.ndarray:
        """The force (3, D, H, W) from the statistics in ``centres[1:]``
        (:meth:`_statistics`), into ``out`` where given."""
        sums = box_sum_down(centres, self.window)
        out = _output(out, (3, *b.shape))
        _compiled()["lncc_force"](self.a, b, sums, 1.0 / b.size,
                                  np.asarray(spacing, dtype=np.float64), out)
        return out


def native_rows(field: np.ndarray | None, to_field: np.ndarray, offset_map: np.ndarray,
                field_to_world: np.ndarray, to_moving: np.ndarray,
                field_to_moving: np.ndarray, image: np.ndarray, rows: slice,
                displacement: np.ndarray, warped: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of the fixed grid (I, J, K): writes ``displacement`` (3, I, J, K) mm
    and ``warped`` (I, J, K) there and returns the moving indices (3, rows, J, K) (see
    :func:`ddmr.spatial._numba_loops.native_rows`; ``field`` None: the affine part
    alone). Matrices (3, 4) or (4, 4) and (3, 3), any float dtype."""
    if field is None:
        field = np.zeros((3, 1, 1, 1), dtype=np.float32)
        to_field = np.zeros((3, 4))
        field_to_world = field_to_moving = np.zeros((3, 3))
    index = np.empty((3, rows.stop - rows.start, *warped.shape[1:]), dtype=np.float32)

    def matrix(m):
        return np.ascontiguousarray(np.asarray(m)[:3], dtype=np.float64)

    _compiled()["native_rows"](
        _four(field), matrix(to_field), matrix(offset_map), matrix(field_to_world),
        matrix(to_moving), matrix(field_to_moving),
        np.ascontiguousarray(image, dtype=np.float32), rows.start, rows.stop,
        displacement, warped, index)
    return index


def largest_norm(field: np.ndarray) -> float:
    """The largest vector length of a field (3, D, H, W)."""
    return float(_compiled()["largest_norm"](_four(field)))


def affine_field(field: np.ndarray, linear: np.ndarray, position: np.ndarray) -> np.ndarray:
    """``linear @ field[:, x] + position @ (x, 1)`` at every voxel x of ``field``
    (3, I, J, K) float32, in float64: (3, I, J, K) float32. ``linear`` (3, 3), ``position``
    (3, 4)."""
    field = _four(field)
    out = np.empty(field.shape, dtype=np.float32)
    _compiled()["affine_field"](field, np.ascontiguousarray(linear, np.float64),
                                np.ascontiguousarray(position, np.float64), out)
    return out


def jacobian_determinant(field: np.ndarray, to_voxels: np.ndarray) -> np.ndarray:
    """The Jacobian determinant (I, J, K) float32 of ``p -> p + d(p)``, ``d`` a field
    (3, I, J, K) float32 whose vectors ``to_voxels`` (3, 3) takes to voxels (central
    differences, one-sided at the ends)."""
    field = _four(field)
    out = np.empty(field.shape[1:], dtype=np.float32)
    _compiled()["jacobian_determinant"](field, np.ascontiguousarray(to_voxels, np.float64),
                                        out)
    return out


def log_spread(values: np.ndarray, floor: float) -> float:
    """The standard deviation of ``log(max(v, floor))`` over the values of a float32 array
    (any shape), in float64."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    return float(_compiled()["log_statistics"](flat, float(floor))[1]) if flat.size else \
        float("nan")
