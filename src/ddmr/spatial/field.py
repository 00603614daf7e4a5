"""What a displacement means, and the algebra of displacement fields.

**The convention** (the one home of it; everything else in ddmr refers here):

* A displacement ``u`` is a tensor (B, 3, D, H, W) (or an array (3, I, J, K)) **in voxels
  of the grid it lives on**, channels in (D, H, W) = (i, j, k) order.
* It **pulls back**: the warped image at voxel ``x`` is the moving image at ``x + u(x)``,
  ``warped(x) = moving(x + u(x))`` (:func:`ddmr.spatial.warp.warp_image`); points beyond
  the moving grid take the padding value.
* In world space (:mod:`ddmr.spatial.grid`) a displacement ``d`` in **mm, RAS**, on a
  grid with affine ``A`` is ``d = A[:3, :3] u``: the fixed voxel at world ``p`` shows the
  moving image at world ``p + d(p)``. :func:`mm_to_voxels` converts.
* On disk it is an ITK/ANTs displacement field: **LPS mm** vectors
  ``diag(-1, -1, 1) d`` on the fixed grid (:mod:`ddmr.io.fields`,
  :func:`displacement_to_lps_mm`), the transform that maps fixed points to moving
  points, so ``antsApplyTransforms`` and SimpleITK reproduce ddmr's warped image.

**The Jacobian**: :func:`jacobian_determinant` (central differences inside, one-sided at
the border; the determinant does not depend on voxel size) for batches of voxel fields,
and :func:`jacobian_determinant_mm` for a world displacement on a native grid, computed
slab by slab with the same differences. :func:`folding_percent` and :func:`sdlogj` read a
determinant.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ddmr.spatial.grid import LPS_FLIP, Geometry, corner_scale

#: Fixed-grid voxels handled per slab by :func:`jacobian_determinant_mm`.
SLAB_VOXELS = 1 << 19

@lru_cache(maxsize=16)
def _identity_grid_cached(shape: tuple[int, int, int], device: str, dtype: torch.dtype):
    axes = [torch.arange(n, dtype=dtype, device=device) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


def identity_grid(shape: Sequence[int], device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Voxel coordinates (1, 3, D, H, W) of a grid: channel k holds the index along axis k."""
    return _identity_grid_cached(tuple(int(n) for n in shape), str(device), dtype)

def compose(first: torch.Tensor, then: torch.Tensor) -> torch.Tensor:
    """Displacement of the point map ``x -> y + then(y)`` with ``y = x + first(x)``.

    Warping by the result equals warping by ``then`` and then by ``first``:
    ``warp(m, compose(a, b)) == warp(warp(m, b), a)``. Shapes (B, 3, D, H, W).
    """
    from ddmr.spatial.warp import warp_image

    return first + warp_image(then, first, padding="border")

def invert(displacement: torch.Tensor, iterations: int = 40) -> torch.Tensor:
    """Numerical inverse ``v`` of ``u`` such that ``compose(v, u) ~ 0`` (fixed-point iteration).

    Solves ``v(x) = -u(x + v(x))``; converges for fields whose Jacobian is close to the
    identity (no folding). Shape (B, 3, D, H, W).
    """
    from ddmr.spatial.warp import warp_image

    inverse = -displacement
    for _ in range(iterations):
        inverse = -warp_image(displacement, inverse, padding="border")
    return inverse

def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring of a stationary velocity field (B, 3, D, H, W) into a
    diffeomorphic displacement of the same shape."""
    displacement = velocity / (2**steps)
    for _ in range(steps):
        displacement = compose(displacement, displacement)
    return displacement

def resize_displacement(displacement: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample a voxel displacement to another grid covering the same extent.

    Trilinear interpolation (corners aligned), then each component is rescaled by the
    ratio of voxel sizes so that it stays in voxels of the new grid.
    """
    resized = F.interpolate(displacement, size=tuple(shape), mode="trilinear", align_corners=True)
    scale = torch.tensor(corner_scale(shape, displacement.shape[2:]),
                         device=displacement.device, dtype=displacement.dtype)
    return resized * scale.view(1, 3, 1, 1, 1)

def jacobian_determinant(displacement: torch.Tensor) -> torch.Tensor:
    """Determinant (B, 1, D, H, W) of the Jacobian of ``x -> x + u(x)``.

    Central differences inside, one-sided at the border. The determinant does not depend
    on voxel spacing, so the voxel field is enough. Values <= 0 mark folding.
    """
    grads = []
    for axis in range(3):
        grads.append(torch.gradient(displacement, dim=axis + 2)[0])
    # J[i][j] = d u_i / d x_j + delta_ij
    J = torch.stack(grads, dim=2)  # (B, 3 (i), 3 (j), D, H, W)
    eye = torch.eye(3, device=displacement.device, dtype=displacement.dtype)
    J = J + eye.view(1, 3, 3, 1, 1, 1)
    det = (
        J[:, 0, 0] * (J[:, 1, 1] * J[:, 2, 2] - J[:, 1, 2] * J[:, 2, 1])
        - J[:, 0, 1] * (J[:, 1, 0] * J[:, 2, 2] - J[:, 1, 2] * J[:, 2, 0])
        + J[:, 0, 2] * (J[:, 1, 0] * J[:, 2, 1] - J[:, 1, 1] * J[:, 2, 0])
    )
    return det.unsqueeze(1)

def forward_jacobian_determinant(displacement: torch.Tensor) -> torch.Tensor:
    """Determinant (B, D-1, H-1, W-1) of the Jacobian of ``x -> x + u(x)`` from forward
    differences (cheaper than :func:`jacobian_determinant`; for the
    folding penalty)."""
    u = displacement
    d = [u[:, :, 1:, :-1, :-1] - u[:, :, :-1, :-1, :-1],
         u[:, :, :-1, 1:, :-1] - u[:, :, :-1, :-1, :-1],
         u[:, :, :-1, :-1, 1:] - u[:, :, :-1, :-1, :-1]]
    j = [[d[b][:, a] + (1.0 if a == b else 0.0) for b in range(3)] for a in range(3)]
    return (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
            - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
            + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))

def _differences(u: torch.Tensor, axis: int, out: torch.Tensor) -> None:
    """Derivative of ``u`` along ``axis`` into ``out`` (same shape): central differences
    inside, one-sided at the two ends (``torch.gradient``'s first-order edges)."""
    n = u.shape[axis]
    if n < 2:
        out.zero_()
        return
    if n > 2:
        torch.sub(u.narrow(axis, 2, n - 2), u.narrow(axis, 0, n - 2),
                  out=out.narrow(axis, 1, n - 2))
        out.narrow(axis, 1, n - 2).mul_(0.5)
    torch.sub(u.narrow(axis, 1, 1), u.narrow(axis, 0, 1), out=out.narrow(axis, 0, 1))
    torch.sub(u.narrow(axis, n - 1, 1), u.narrow(axis, n - 2, 1), out=out.narrow(axis, n - 1, 1))

def _voxel_determinant(u: torch.Tensor) -> torch.Tensor:
    """Determinant (D, H, W) of the Jacobian of ``x -> x + u(x)`` for a voxel field
    ``u`` (3, D, H, W) float32; the same finite differences as
    :func:`jacobian_determinant`, in place (no autograd, a third of its
    memory traffic)."""
    g = torch.empty((3, *u.shape), dtype=u.dtype)  # g[j][i] = d u_i / d x_j
    for axis in range(3):
        _differences(u, axis + 1, g[axis])
    for axis in range(3):
        g[axis, axis] += 1.0
    j = [[g[col, row] for col in range(3)] for row in range(3)]  # j[i][k] = J_ik
    minor = torch.mul(j[1][1], j[2][2]).addcmul_(j[1][2], j[2][1], value=-1.0)
    det = torch.mul(j[0][0], minor)
    torch.mul(j[1][0], j[2][2], out=minor).addcmul_(j[1][2], j[2][0], value=-1.0)
    det.addcmul_(j[0][1], minor, value=-1.0)
    torch.mul(j[1][0], j[2][1], out=minor).addcmul_(j[1][1], j[2][0], value=-1.0)
    return det.addcmul_(j[0][2], minor)

def jacobian_determinant_mm(displacement_mm: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Determinant (I, J, K) of the Jacobian of ``p -> p + d(p)`` in physical space, for a
    RAS mm displacement (3, I, J, K) on ``geometry``. It equals the determinant of the
    voxel-space Jacobian (``det(A^-1 J A) = det J``), with the central differences of
    :func:`jacobian_determinant`, in slabs of slices (each with one slice
    of overlap on either side, so the differences are those of the whole volume), or
    compiled in one pass."""
    from ddmr.spatial import kernels

    if kernels.available():
        return kernels.jacobian_determinant(displacement_mm,
                                            geometry.matrix("world", "index")[:3, :3])
    inverse = torch.from_numpy(geometry.matrix("world", "index")[:3, :3].astype(np.float32))
    mm = torch.from_numpy(np.ascontiguousarray(displacement_mm, dtype=np.float32))
    depth = mm.shape[1]
    out = np.empty(mm.shape[1:], dtype=np.float32)
    step = max(1, SLAB_VOXELS // max(mm.shape[2] * mm.shape[3], 1))
    for start in range(0, depth, step):
        stop = min(start + step, depth)
        low, high = max(start - 1, 0), min(stop + 1, depth)
        if high - low < 2:  # a single slice: no neighbours to differentiate along i
            low, high = max(low - 1, 0), min(high + 1, depth)
        block = mm[:, low:high]
        voxels = torch.mm(inverse, block.reshape(3, -1)).reshape(block.shape)
        out[start:stop] = _voxel_determinant(voxels)[start - low:stop - low].numpy()
    return out



def folding_percent(determinant: np.ndarray | torch.Tensor) -> float:
    """Percentage (0-100) of voxels whose Jacobian determinant is <= 0 (folding)."""
    return float(100.0 * np.mean(np.asarray(determinant) <= 0))


def sdlogj(determinant: np.ndarray | torch.Tensor) -> float:
    """Standard deviation of ``log(max(det J, 1e-9))`` over the voxels (compiled for a
    float32 array: in float64, one pass per statistic)."""
    from ddmr.spatial import kernels

    determinant = np.asarray(determinant)
    if kernels.available() and determinant.dtype == np.float32 and determinant.size:
        return kernels.log_spread(determinant, 1e-9)
    return float(np.std(np.log(np.maximum(determinant, 1e-9))))


def _apply_row(row: np.ndarray, field: np.ndarray, channels_last_in: bool = False,
               out: np.ndarray | None = None) -> np.ndarray:
    """One output component of a (3, 3) matrix applied to a field: ``sum_b row[b]
    field_b`` (*S) float32 (into ``out`` when given), exact for a row that is a sign,
    otherwise summed in float64."""
    shape = field.shape[:-1] if channels_last_in else field.shape[1:]
    out = np.empty(shape, dtype=np.float32) if out is None else out
    columns = np.flatnonzero(row)
    if len(columns) == 1 and abs(row[columns[0]]) == 1:  # a sign: exact
        column = int(columns[0])
        source = field[..., column] if channels_last_in else field[column]
        np.multiply(source, row[column], out=out, casting="unsafe")
        return out
    total = np.zeros(shape, dtype=np.float64)
    for column in range(3):
        if row[column] != 0:
            total += row[column] * (field[..., column] if channels_last_in else field[column])
    out[...] = total
    return out


def _apply_matrix(matrix: np.ndarray, field: np.ndarray, channels_last_in: bool = False,
                  channels_last_out: bool = False) -> np.ndarray:
    """The (3, 3) ``matrix`` applied to the vectors of a field (3, *S) (or (*S, 3) with
    ``channels_last_in``): float32 (3, *S) (or (*S, 3)), summed in float64 one component
    at a time, so a 1 mm head's field needs no float64 copy of itself."""
    shape = field.shape[:-1] if channels_last_in else field.shape[1:]
    out = np.empty((*shape, 3) if channels_last_out else (3, *shape), dtype=np.float32)
    for row in range(3):
        _apply_row(matrix[row], field, channels_last_in,
                   out[..., row] if channels_last_out else out[row])
    return out


def voxels_to_mm(displacement: np.ndarray | torch.Tensor, geometry: Geometry
                 ) -> np.ndarray | torch.Tensor:
    """Voxel displacement (3, I, J, K) on ``geometry`` -> RAS mm (3, I, J, K) float32, of
    the same kind as given: an array summed in float64 a component at a time, a tensor
    by one float32 product (as the network's and the engine's fields are)."""
    if isinstance(displacement, np.ndarray):
        return _apply_matrix(geometry.affine[:3, :3], displacement)
    linear = torch.from_numpy(geometry.affine[:3, :3].astype(np.float32))
    return torch.einsum("ab,b...->a...", linear.to(displacement.device), displacement.float())


def mm_to_voxels(displacement_mm: np.ndarray, geometry: Geometry) -> np.ndarray:
    """RAS mm displacement (3, I, J, K) -> voxels of ``geometry`` (3, I, J, K) float32."""
    return _apply_matrix(geometry.matrix("world", "index")[:3, :3], displacement_mm)


def residual_parts(geometry: Geometry, point_map: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The two maps of :func:`residual_of`, float64: ``linear`` (3, 3) on the
    displacement and ``position`` (3, 4) on the voxel index (i, j, k, 1), so that ``d =
    linear @ disp + position @ (x, 1)`` at voxel x."""
    inverse = np.linalg.inv(np.asarray(point_map, dtype=np.float64))
    linear = inverse[:3, :3]
    position = np.empty((3, 4))
    position[:, :3] = (linear - np.eye(3)) @ geometry.affine[:3, :3]
    position[:, 3] = (linear - np.eye(3)) @ geometry.affine[:3, 3] + inverse[:3, 3]
    return linear, position


def residual_of(displacement_mm: np.ndarray, geometry: Geometry, point_map: np.ndarray
                ) -> np.ndarray:
    """``d`` (3, I, J, K) float32 RAS mm with ``p' = P(p + d(p))``, ``p' = p +
    displacement_mm`` at the points p of ``geometry`` and ``P`` the affine point map
    (4, 4): ``d = P^-1(p') - p = L disp + (L - I) p + t`` (``P^-1 = (L, t)``;
    :func:`residual_parts`), in float64 (compiled, else in numpy slabs; made after the
    inverse, so that it is not held at the process's peak). The non-rigid part of a whole
    transform whose affine part is ``P``."""
    from ddmr.spatial import kernels

    linear, position = residual_parts(geometry, point_map)
    if kernels.available():
        return kernels.affine_field(displacement_mm, linear, position)
    shape = geometry.shape
    out = np.empty((3, *shape), dtype=np.float32)
    step = max(1, SLAB_VOXELS // max(shape[1] * shape[2], 1))
    for start in range(0, shape[0], step):
        sl = slice(start, min(start + step, shape[0]))
        index = np.ix_(np.arange(sl.start, sl.stop, dtype=np.float64),
                       np.arange(shape[1], dtype=np.float64),
                       np.arange(shape[2], dtype=np.float64))
        block = displacement_mm[:, sl]
        for a in range(3):
            out[a, sl] = (linear[a, 0] * block[0] + linear[a, 1] * block[1]
                          + linear[a, 2] * block[2] + position[a, 0] * index[0]
                          + position[a, 1] * index[1] + position[a, 2] * index[2]
                          + position[a, 3])
    return out


def displacement_to_lps_mm(displacement: np.ndarray, geometry: Geometry,
                           units: str = "voxels") -> np.ndarray:
    """A displacement (3, I, J, K), in voxels of ``geometry`` or (``units="mm"``) in RAS
    mm, -> physical LPS vectors in mm (I, J, K, 3) float32."""
    return _apply_matrix(lps_matrix(geometry, units), displacement, channels_last_out=True)


def lps_mm_components(displacement: np.ndarray, geometry: Geometry,
                      units: str = "voxels") -> Iterator[np.ndarray]:
    """The LPS mm components of :func:`displacement_to_lps_mm`, one (I, J, K) float32
    array at a time (a file written from them holds one component in memory, not a
    copy of the whole field)."""
    matrix = lps_matrix(geometry, units)
    for row in matrix:
        yield _apply_row(row, displacement)


def lps_matrix(geometry: Geometry, units: str) -> np.ndarray:
    """(3, 3): a displacement in ``units`` (``voxels`` of ``geometry`` or RAS ``mm``) ->
    LPS mm."""
    if units not in ("voxels", "mm"):
        raise ValueError(f"units must be 'voxels' or 'mm', got {units!r}")
    return LPS_FLIP @ (geometry.affine[:3, :3] if units == "voxels" else np.eye(3))


def lps_mm_to_displacement(vectors_lps: np.ndarray, geometry: Geometry,
                           units: str = "voxels") -> np.ndarray:
    """Physical LPS vectors in mm (I, J, K, 3) -> the displacement (3, I, J, K) float32 in
    voxels of ``geometry`` (``units="mm"``: RAS mm)."""
    if units not in ("voxels", "mm"):
        raise ValueError(f"units must be 'voxels' or 'mm', got {units!r}")
    matrix = geometry.matrix("itk", "index")[:3, :3] if units == "voxels" else LPS_FLIP
    return _apply_matrix(matrix, vectors_lps, channels_last_in=True)
