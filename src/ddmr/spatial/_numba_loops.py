"""The compiled loops of :mod:`ddmr.spatial.kernels` (numba, imported only there, and only
when numba is installed). Each kernel writes into ``out``; shapes are (C, D, H, W) float32
unless stated. Compiled once and cached on disk by numba."""

import math

import numba
import numpy as np
from numba import prange

jit = numba.njit(parallel=True, cache=True, nogil=True)
inline = numba.njit(cache=True, inline="always")


@jit
def gauss_last(src, out, weights, scale):
    """Gaussian taps along the last axis of (C, D, H, W), border voxels rescaled: each row
    copied between zeros (``radius`` each side), then one pass per tap over the whole row
    (vectorised; zero beyond the grid, as the inside taps alone)."""
    c_, d_, h_, w_ = src.shape
    radius = weights.shape[0] - 1
    taps = np.empty(2 * radius + 1, dtype=np.float32)
    for t in range(-radius, radius + 1):
        taps[t + radius] = weights[abs(t)]
    for row in prange(c_ * d_ * h_):
        c, rest = divmod(np.int64(row), d_ * h_)
        d, h = divmod(np.int64(rest), h_)
        line = src[c, d, h]
        target = out[c, d, h]
        padded = np.zeros(w_ + 2 * radius, dtype=np.float32)
        total = np.zeros(w_, dtype=np.float32)
        for k in range(w_):
            padded[k + radius] = line[k]
        for t in range(2 * radius + 1):
            weight = taps[t]
            for k in range(w_):
                total[k] += weight * padded[k + t]
        for k in range(w_):
            target[k] = total[k]
        for k in range(min(radius, w_)):
            target[k] *= scale[k]
        for k in range(max(radius, w_ - radius), w_):
            target[k] *= scale[k]

@jit
def gauss_middle(src, out, weights, scale):
    """Gaussian taps along axis 2 of (C, D, H, W), border rows rescaled."""
    c_, d_, h_, w_ = src.shape
    radius = weights.shape[0] - 1
    for slab in prange(c_ * d_):
        c, d = divmod(np.int64(slab), d_)
        plane = src[c, d]
        target = out[c, d]
        for j in range(h_):
            weight = np.float32(weights[0])
            for k in range(w_):
                target[j, k] = weight * plane[j, k]
            for t in range(1, radius + 1):
                weight = np.float32(weights[t])
                if j - t >= 0:
                    for k in range(w_):
                        target[j, k] += weight * plane[j - t, k]
                if j + t < h_:
                    for k in range(w_):
                        target[j, k] += weight * plane[j + t, k]
            if j < radius or j >= h_ - radius:
                rescale = np.float32(scale[j])
                for k in range(w_):
                    target[j, k] *= rescale

@jit
def gauss_first(src, out, weights, scale):
    """Gaussian taps along axis 1 of (C, D, H, W), border slabs rescaled."""
    c_, d_, h_, w_ = src.shape
    radius = weights.shape[0] - 1
    for column in prange(c_ * h_):
        c, h = divmod(np.int64(column), h_)
        for i in range(d_):
            weight = np.float32(weights[0])
            for k in range(w_):
                out[c, i, h, k] = weight * src[c, i, h, k]
            for t in range(1, radius + 1):
                weight = np.float32(weights[t])
                if i - t >= 0:
                    for k in range(w_):
                        out[c, i, h, k] += weight * src[c, i - t, h, k]
                if i + t < d_:
                    for k in range(w_):
                        out[c, i, h, k] += weight * src[c, i + t, h, k]
            if i < radius or i >= d_ - radius:
                rescale = np.float32(scale[i])
                for k in range(w_):
                    out[c, i, h, k] *= rescale

@inline
def corner(position, size):
    """Border-clamped trilinear corner along one axis: (low index, high index,
    weight of the high one)."""
    if position <= 0.0:
        return 0, 0, 0.0
    top = size - 1
    if position >= top:
        return top, top, 0.0
    low = int(position)  # (position > 0: truncation is the floor)
    return low, low + 1, position - low


@inline
def trilinear(volume, p0, p1, p2, out, n):
    """Write volume[c] at the voxel coordinates (p0, p1, p2) into out[c, n] for every
    channel c (trilinear, border values)."""
    channels, md, mh, mw = volume.shape
    x0, x1, fx = corner(p0, md)
    y0, y1, fy = corner(p1, mh)
    z0, z1, fz = corner(p2, mw)
    gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
    w000, w001, w010, w011 = gx * gy * gz, gx * gy * fz, gx * fy * gz, gx * fy * fz
    w100, w101, w110, w111 = fx * gy * gz, fx * gy * fz, fx * fy * gz, fx * fy * fz
    for channel in range(channels):
        v = volume[channel]
        out[channel, n] = (w000 * v[x0, y0, z0] + w001 * v[x0, y0, z1]
                           + w010 * v[x0, y1, z0] + w011 * v[x0, y1, z1]
                           + w100 * v[x1, y0, z0] + w101 * v[x1, y0, z1]
                           + w110 * v[x1, y1, z0] + w111 * v[x1, y1, z1])


@inline
def row_start(matrix, i, j):
    """``matrix @ (i, j, 0, 1)`` of a (3, 4) map: where row (i, j) of a grid starts."""
    return (matrix[0, 0] * i + matrix[0, 1] * j + matrix[0, 3],
            matrix[1, 0] * i + matrix[1, 1] * j + matrix[1, 3],
            matrix[2, 0] * i + matrix[2, 1] * j + matrix[2, 3])


@jit
def sample(volume, displacement, linear, base, out, addend, add):
    """out[c, x] = volume[c] at ``linear @ displacement[:, x] + base @ (x, 1)``
    (voxel coordinates of ``volume``; trilinear, border values), plus addend[c, x]
    when ``add``; rows of ``out`` are (C, W) views. Each voxel's displacement and addend
    are read before its output is written, so ``out`` may be ``displacement`` or
    ``addend`` (not ``volume``)."""
    _, d_, h_, w_ = displacement.shape
    channels = out.shape[0]
    for slab in prange(d_ * h_):
        i, j = divmod(np.int64(slab), h_)
        r0, r1, r2 = row_start(base, i, j)
        row = out[:, i, j, :]
        saved = np.empty(channels, dtype=np.float32)
        for k in range(w_):
            u0 = displacement[0, i, j, k]
            u1 = displacement[1, i, j, k]
            u2 = displacement[2, i, j, k]
            if add:
                for c in range(channels):
                    saved[c] = addend[c, i, j, k]
            p0 = r0 + base[0, 2] * k + linear[0, 0] * u0 + linear[0, 1] * u1 + linear[0, 2] * u2
            p1 = r1 + base[1, 2] * k + linear[1, 0] * u0 + linear[1, 1] * u1 + linear[1, 2] * u2
            p2 = r2 + base[2, 2] * k + linear[2, 0] * u0 + linear[2, 1] * u1 + linear[2, 2] * u2
            trilinear(volume, p0, p1, p2, row, k)
            if add:
                for c in range(channels):
                    row[c, k] += saved[c]


@jit
def sample_grid(volume, matrix, out):
    """out[c, x] = volume[c] at the voxel coordinates ``matrix @ (x, 1)`` of every voxel x
    of ``out`` (C, D, H, W) (trilinear, border values)."""
    _, d_, h_, w_ = out.shape
    for slab in prange(d_ * h_):
        i, j = divmod(np.int64(slab), h_)
        r0, r1, r2 = row_start(matrix, i, j)
        row = out[:, i, j, :]
        for k in range(w_):
            trilinear(volume, r0 + matrix[0, 2] * k, r1 + matrix[1, 2] * k,
                      r2 + matrix[2, 2] * k, row, k)


@inline
def zero_beyond(volume, x, y, z):
    """volume[x, y, z], or 0 beyond the volume (``grid_sample``'s zeros padding)."""
    d_, h_, w_ = volume.shape
    if 0 <= x < d_ and 0 <= y < h_ and 0 <= z < w_:
        return volume[x, y, z]
    return np.float32(0.0)


@jit
def sample_gradient(volume, matrix, values, gradient):
    """values[x] = volume (D', H', W') at the voxel coordinates ``matrix @ (x, 1)`` of every
    voxel x of ``values`` (D, H, W) (trilinear, zero beyond the volume), and gradient[:, x]
    (3, D, H, W) the derivative of that sample with respect to the three coordinates."""
    d_, h_, w_ = values.shape
    for slab in prange(d_ * h_):
        i, j = divmod(np.int64(slab), h_)
        r0, r1, r2 = row_start(matrix, i, j)
        for k in range(w_):
            p0 = r0 + matrix[0, 2] * k
            p1 = r1 + matrix[1, 2] * k
            p2 = r2 + matrix[2, 2] * k
            x0, y0, z0 = math.floor(p0), math.floor(p1), math.floor(p2)
            fx, fy, fz = p0 - x0, p1 - y0, p2 - z0
            gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
            x, y, z = int(x0), int(y0), int(z0)
            c000 = zero_beyond(volume, x, y, z)
            c001 = zero_beyond(volume, x, y, z + 1)
            c010 = zero_beyond(volume, x, y + 1, z)
            c011 = zero_beyond(volume, x, y + 1, z + 1)
            c100 = zero_beyond(volume, x + 1, y, z)
            c101 = zero_beyond(volume, x + 1, y, z + 1)
            c110 = zero_beyond(volume, x + 1, y + 1, z)
            c111 = zero_beyond(volume, x + 1, y + 1, z + 1)
            low_x = gy * (gz * c000 + fz * c001) + fy * (gz * c010 + fz * c011)
            high_x = gy * (gz * c100 + fz * c101) + fy * (gz * c110 + fz * c111)
            values[i, j, k] = gx * low_x + fx * high_x
            gradient[0, i, j, k] = high_x - low_x
            gradient[1, i, j, k] = (gx * (gz * (c010 - c000) + fz * (c011 - c001))
                                    + fx * (gz * (c110 - c100) + fz * (c111 - c101)))
            gradient[2, i, j, k] = (gx * (gy * (c001 - c000) + fy * (c011 - c010))
                                    + fx * (gy * (c101 - c100) + fy * (c111 - c110)))


@jit
def weighted_index_sums(vectors, weights, out):
    """out[c] (4,) = sum over the voxels x of ``weights[x] * vectors[c, x] * (x, 1)`` for
    vectors (3, D, H, W) and weights (D, H, W): out (3, 4) float64."""
    _, d_, h_, w_ = vectors.shape
    partial = np.zeros((d_ * h_, 3, 4))
    for slab in prange(d_ * h_):
        i, j = divmod(np.int64(slab), h_)
        for c in range(3):
            by_k, total = 0.0, 0.0
            for k in range(w_):
                value = np.float64(weights[i, j, k]) * vectors[c, i, j, k]
                total += value
                by_k += value * k
            partial[slab, c, 0] = total * i
            partial[slab, c, 1] = total * j
            partial[slab, c, 2] = by_k
            partial[slab, c, 3] = total
    out[:] = partial.sum(axis=0)


@jit
def lncc_products(a, b, out):
    """out = (b, b*b, a*b): the warped statistics before their window sums."""
    d_, h_, w_ = b.shape
    for slab in prange(d_ * h_):
        i, j = divmod(np.int64(slab), h_)
        for k in range(w_):
            v = b[i, j, k]
            out[0, i, j, k] = v
            out[1, i, j, k] = v * v
            out[2, i, j, k] = a[i, j, k] * v

@jit
def lncc_centres(sums, sum_a, var_a, count, eps, out):
    """The squared correlation's sum and the four window statistics of its gradient
    (alpha, alpha mean_a, beta, beta mean_b) from the warped window sums (float32
    arithmetic, one reciprocal per voxel; the sum in float64)."""
    _, d_, h_, w_ = sums.shape
    eps32 = np.float32(eps)
    one, two, zero = np.float32(1.0), np.float32(2.0), np.float32(0.0)
    total = 0.0
    for slab in prange(d_ * h_):
        i, j = divmod(np.int64(slab), h_)
        for k in range(w_):
            inverse_n = one / count[i, j, k]
            sa = sum_a[i, j, k]
            sb = sums[0, i, j, k]
            mean_b = sb * inverse_n
            cov = sums[2, i, j, k] - sa * mean_b
            var_b = sums[1, i, j, k] - sb * mean_b
            if var_b < zero:
                var_b = zero
            va = var_a[i, j, k]
            inverse = one / (var_b * va + eps32)
            alpha = two * cov * inverse
            cc = cov * alpha / two
            total += cc
            beta = two * cc * va * inverse
            out[0, i, j, k] = alpha
            out[1, i, j, k] = alpha * (sa * inverse_n)
            out[2, i, j, k] = beta
            out[3, i, j, k] = beta * mean_b
    return total

@jit
def lncc_force(a, b, centres, scale, spacing, out):
    """out[axis] = dS/dW * dW/dx_axis / spacing[axis]: the gradient of the squared
    correlation ``(a c0 - c1 - b c2 + c3) * scale`` times the warped image's central
    differences (one-sided at the borders)."""
    d_, h_, w_ = b.shape
    for slab in prange(d_ * h_):
        i, j = divmod(np.int64(slab), h_)
        for k in range(w_):
            g = (a[i, j, k] * centres[0, i, j, k] - centres[1, i, j, k]
                 - b[i, j, k] * centres[2, i, j, k] + centres[3, i, j, k]) * scale
            if d_ == 1:
                gx = 0.0
            elif i == 0:
                gx = b[1, j, k] - b[0, j, k]
            elif i == d_ - 1:
                gx = b[i, j, k] - b[i - 1, j, k]
            else:
                gx = 0.5 * (b[i + 1, j, k] - b[i - 1, j, k])
            if h_ == 1:
                gy = 0.0
            elif j == 0:
                gy = b[i, 1, k] - b[i, 0, k]
            elif j == h_ - 1:
                gy = b[i, j, k] - b[i, j - 1, k]
            else:
                gy = 0.5 * (b[i, j + 1, k] - b[i, j - 1, k])
            if w_ == 1:
                gz = 0.0
            elif k == 0:
                gz = b[i, j, 1] - b[i, j, 0]
            elif k == w_ - 1:
                gz = b[i, j, k] - b[i, j, k - 1]
            else:
                gz = 0.5 * (b[i, j, k + 1] - b[i, j, k - 1])
            out[0, i, j, k] = g * gx / spacing[0]
            out[1, i, j, k] = g * gy / spacing[1]
            out[2, i, j, k] = g * gz / spacing[2]

@jit
def affine_field(field, linear, position, out):
    """out[:, x] = ``linear @ field[:, x] + position @ (x, 1)`` ((3, 3) and (3, 4)) at every
    voxel x of a field (3, I, J, K), in float64, cast to float32; ``out`` may be
    ``field``."""
    _, i_, j_, k_ = field.shape
    for row in prange(i_ * j_):
        i, j = divmod(np.int64(row), j_)
        r0, r1, r2 = row_start(position, i, j)
        for k in range(k_):
            u0 = np.float64(field[0, i, j, k])
            u1 = np.float64(field[1, i, j, k])
            u2 = np.float64(field[2, i, j, k])
            out[0, i, j, k] = (linear[0, 0] * u0 + linear[0, 1] * u1 + linear[0, 2] * u2
                               + position[0, 2] * k + r0)
            out[1, i, j, k] = (linear[1, 0] * u0 + linear[1, 1] * u1 + linear[1, 2] * u2
                               + position[1, 2] * k + r1)
            out[2, i, j, k] = (linear[2, 0] * u0 + linear[2, 1] * u1 + linear[2, 2] * u2
                               + position[2, 2] * k + r2)


@inline
def difference(field, c, i, j, k, axis, n):
    """d field[c] / d index ``axis`` at (i, j, k): central inside, one-sided at the two
    ends, 0 where the axis has one voxel (``torch.gradient``'s first-order edges)."""
    if n < 2:
        return 0.0
    at = (i, j, k)[axis]
    low = max(at - 1, 0)
    high = min(at + 1, n - 1)
    if axis == 0:
        value = field[c, high, j, k] - field[c, low, j, k]
    elif axis == 1:
        value = field[c, i, high, k] - field[c, i, low, k]
    else:
        value = field[c, i, j, high] - field[c, i, j, low]
    return value / (high - low)


@jit
def jacobian_determinant(field, to_voxels, out):
    """out[x] = det(I + to_voxels @ D(x)) of a field (3, I, J, K) (mm), ``D[c, a]`` the
    derivative of component c along index axis a (:func:`difference`) and ``to_voxels``
    (3, 3) its vectors in voxels: the determinant of ``p -> p + d(p)`` (float64
    arithmetic)."""
    _, i_, j_, k_ = field.shape
    shape = (i_, j_, k_)
    for row in prange(i_ * j_):
        i, j = divmod(np.int64(row), j_)
        derivative = np.empty((3, 3))
        jacobian = np.empty((3, 3))
        for k in range(k_):
            for c in range(3):
                for a in range(3):
                    derivative[c, a] = difference(field, c, i, j, k, a, shape[a])
            for r in range(3):
                for a in range(3):
                    jacobian[r, a] = (to_voxels[r, 0] * derivative[0, a]
                                      + to_voxels[r, 1] * derivative[1, a]
                                      + to_voxels[r, 2] * derivative[2, a])
                jacobian[r, r] += 1.0
            out[i, j, k] = (jacobian[0, 0] * (jacobian[1, 1] * jacobian[2, 2]
                                              - jacobian[1, 2] * jacobian[2, 1])
                            - jacobian[0, 1] * (jacobian[1, 0] * jacobian[2, 2]
                                                - jacobian[1, 2] * jacobian[2, 0])
                            + jacobian[0, 2] * (jacobian[1, 0] * jacobian[2, 1]
                                                - jacobian[1, 1] * jacobian[2, 0]))


@jit
def log_statistics(values, floor):
    """Mean and standard deviation of ``log(max(v, floor))`` over ``values`` (N,) float32,
    in float64, two passes (mean, then squared deviations)."""
    n = values.shape[0]
    chunks = 64
    sums = np.zeros(chunks)
    for chunk in prange(chunks):
        total = 0.0
        for index in range(chunk * n // chunks, (chunk + 1) * n // chunks):
            total += math.log(max(np.float64(values[index]), floor))
        sums[chunk] = total
    mean = sums.sum() / n
    for chunk in prange(chunks):
        total = 0.0
        for index in range(chunk * n // chunks, (chunk + 1) * n // chunks):
            deviation = math.log(max(np.float64(values[index]), floor)) - mean
            total += deviation * deviation
        sums[chunk] = total
    return mean, math.sqrt(sums.sum() / n)


@jit
def largest_norm(field):
    """The largest vector length of (3, D, H, W)."""
    _, d_, h_, w_ = field.shape
    best = np.zeros(d_)
    for i in prange(d_):
        top = 0.0
        for j in range(h_):
            for k in range(w_):
                s = (field[0, i, j, k] * field[0, i, j, k]
                     + field[1, i, j, k] * field[1, i, j, k]
                     + field[2, i, j, k] * field[2, i, j, k])
                if s > top:
                    top = s
        best[i] = top
    return math.sqrt(best.max())



@jit
def sample_points(volume, points, matrix, out):
    """out[c, n] = volume[c] at the voxel coordinates ``matrix @ (points[:, n], 1)`` of
    points (3, N) (trilinear, border values); out (C, N)."""
    for n in prange(points.shape[1]):
        x, y, z = points[0, n], points[1, n], points[2, n]
        p0 = matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2] * z + matrix[0, 3]
        p1 = matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2] * z + matrix[1, 3]
        p2 = matrix[2, 0] * x + matrix[2, 1] * y + matrix[2, 2] * z + matrix[2, 3]
        trilinear(volume, p0, p1, p2, out, n)


@jit
def fixed_point(field, matrix, y, p, mismatch, iterations, tolerance):
    """Per point n of y (3, N) (world mm): ``p <- y - d(p)`` from the start ``p`` (3, N,
    updated in place), ``d`` the field (3, ...) at the voxel coordinates ``matrix @ (p,
    1)`` (trilinear, border values), until every component of ``p + d(p) - y`` is below
    ``tolerance`` (mm) or after ``iterations`` updates; ``mismatch`` (3, N) receives
    ``p + d(p) - y`` of the final ``p``."""
    for n in prange(y.shape[1]):
        for iteration in range(iterations + 1):
            x0, x1, x2 = p[0, n], p[1, n], p[2, n]
            c0 = matrix[0, 0] * x0 + matrix[0, 1] * x1 + matrix[0, 2] * x2 + matrix[0, 3]
            c1 = matrix[1, 0] * x0 + matrix[1, 1] * x1 + matrix[1, 2] * x2 + matrix[1, 3]
            c2 = matrix[2, 0] * x0 + matrix[2, 1] * x1 + matrix[2, 2] * x2 + matrix[2, 3]
            trilinear(field, c0, c1, c2, mismatch, n)  # d(p)
            m0 = mismatch[0, n] + x0 - y[0, n]
            m1 = mismatch[1, n] + x1 - y[1, n]
            m2 = mismatch[2, n] + x2 - y[2, n]
            mismatch[0, n], mismatch[1, n], mismatch[2, n] = m0, m1, m2
            if (abs(m0) < tolerance and abs(m1) < tolerance and abs(m2) < tolerance) \
                    or iteration == iterations:
                break
            p[0, n], p[1, n], p[2, n] = x0 - m0, x1 - m1, x2 - m2


@jit
def native_rows(field, to_field, offset_map, field_to_world, to_moving, field_to_moving,
                image, start, stop, displacement, warped, index):
    """The final transform on rows ``start:stop`` of the fixed grid (I, J, K): per fixed
    voxel x, ``d`` = ``field`` (3, ...) at the voxel coordinates ``to_field @ (x, 1)``
    (trilinear, border values; no field when ``field`` has one voxel of zeros and the
    matrices are zero), then ``displacement[:, x] = offset_map @ (x, 1) + field_to_world
    @ d`` (mm), the moving index ``m = to_moving @ (x, 1) + field_to_moving @ d`` into
    ``index[:, x - start]`` (3, stop - start, J, K), and ``warped[x]`` = ``image`` at m
    (trilinear, edge values up to half a voxel beyond the grid, 0 further out: ITK's
    linear interpolator). Matrices are (3, 4) or (3, 3) float64."""
    _, j_, k_ = warped.shape
    md, mh, mw = image.shape
    image4 = image.reshape((1, md, mh, mw))
    for row in prange((stop - start) * j_):
        i, j = divmod(np.int64(row), j_)
        x = start + i
        d = np.empty((3, 1), dtype=np.float32)
        v = np.empty((1, 1), dtype=np.float32)
        for k in range(k_):
            q0 = to_field[0, 0] * x + to_field[0, 1] * j + to_field[0, 2] * k + to_field[0, 3]
            q1 = to_field[1, 0] * x + to_field[1, 1] * j + to_field[1, 2] * k + to_field[1, 3]
            q2 = to_field[2, 0] * x + to_field[2, 1] * j + to_field[2, 2] * k + to_field[2, 3]
            trilinear(field, q0, q1, q2, d, 0)
            d0, d1, d2 = d[0, 0], d[1, 0], d[2, 0]
            for a in range(3):
                displacement[a, x, j, k] = (
                    offset_map[a, 0] * x + offset_map[a, 1] * j + offset_map[a, 2] * k
                    + offset_map[a, 3] + field_to_world[a, 0] * d0
                    + field_to_world[a, 1] * d1 + field_to_world[a, 2] * d2)
            m0 = (to_moving[0, 0] * x + to_moving[0, 1] * j + to_moving[0, 2] * k
                  + to_moving[0, 3] + field_to_moving[0, 0] * d0
                  + field_to_moving[0, 1] * d1 + field_to_moving[0, 2] * d2)
            m1 = (to_moving[1, 0] * x + to_moving[1, 1] * j + to_moving[1, 2] * k
                  + to_moving[1, 3] + field_to_moving[1, 0] * d0
                  + field_to_moving[1, 1] * d1 + field_to_moving[1, 2] * d2)
            m2 = (to_moving[2, 0] * x + to_moving[2, 1] * j + to_moving[2, 2] * k
                  + to_moving[2, 3] + field_to_moving[2, 0] * d0
                  + field_to_moving[2, 1] * d1 + field_to_moving[2, 2] * d2)
            index[0, i, j, k] = m0
            index[1, i, j, k] = m1
            index[2, i, j, k] = m2
            if (m0 < -0.5 or m0 > md - 0.5 or m1 < -0.5 or m1 > mh - 0.5
                    or m2 < -0.5 or m2 > mw - 0.5):
                warped[x, j, k] = 0.0
            else:
                trilinear(image4, m0, m1, m2, v, 0)
                warped[x, j, k] = v[0, 0]


# -- a box sum along three axes in one pass over a volume: planes summed along two axes,
# kept in a ring of the planes a window along the first axis spans (cache-sized), and
# their running sum as the window slides


@inline
def _box_plane(plane, radius, rows, out):
    """Window sums of one (H, W) plane along W then H into ``out`` (H, W) float64
    (``rows`` (H, W) float64 scratch), zero beyond the plane."""
    h_, w_ = plane.shape
    for j in range(h_):
        total = 0.0
        for k in range(min(radius, w_ - 1) + 1):
            total += plane[j, k]
        rows[j, 0] = total
        for k in range(1, w_):
            if k + radius < w_:
                total += plane[j, k + radius]
            if k - radius - 1 >= 0:
                total -= plane[j, k - radius - 1]
            rows[j, k] = total
    for k in range(w_):
        out[0, k] = 0.0
    for j in range(min(radius, h_ - 1) + 1):
        for k in range(w_):
            out[0, k] += rows[j, k]
    for j in range(1, h_):
        for k in range(w_):
            out[j, k] = out[j - 1, k]
        if j + radius < h_:
            for k in range(w_):
                out[j, k] += rows[j + radius, k]
        if j - radius - 1 >= 0:
            for k in range(w_):
                out[j, k] -= rows[j - radius - 1, k]


@jit
def box_volume(src, out, radius, chunks):
    """Window sums of (D, H, W) over a cube of ``2 radius + 1`` voxels (zero beyond the
    grid) into ``out`` (not ``src``), in ``chunks`` slabs along D run in parallel."""
    d_, h_, w_ = src.shape
    slots = 2 * radius + 1
    for chunk in prange(chunks):
        first, stop = chunk * d_ // chunks, (chunk + 1) * d_ // chunks
        if first >= stop:
            continue
        ring = np.empty((slots, h_, w_), dtype=np.float64)
        rows = np.empty((h_, w_), dtype=np.float64)
        running = np.zeros((h_, w_), dtype=np.float64)
        for p in range(max(0, first - radius), min(d_, first + radius + 1)):
            slot = ring[p % slots]
            _box_plane(src[p], radius, rows, slot)
            for j in range(h_):
                for k in range(w_):
                    running[j, k] += slot[j, k]
        for i in range(first, stop):
            for j in range(h_):
                for k in range(w_):
                    out[i, j, k] = running[j, k]
            if i + 1 == stop:
                break
            slot = ring[(i - radius) % slots]  # the plane leaving is the slot entering
            if i - radius >= 0:
                for j in range(h_):
                    for k in range(w_):
                        running[j, k] -= slot[j, k]
            if i + radius + 1 < d_:
                _box_plane(src[i + radius + 1], radius, rows, slot)
                for j in range(h_):
                    for k in range(w_):
                        running[j, k] += slot[j, k]


@jit
def invert_grid(field, to_field, start, to_start, has_start, to_y, to_q, to_fixed,
                fixed_shape, to_error, iterations, tolerance, out, errors):
    """The inverse of ``p -> p + d(p)`` composed with the point maps, at every voxel x of
    a moving grid (I, J, K): ``q = to_q @ (x, 1)`` and ``y = to_y @ (x, 1)`` (world mm),
    ``p`` from ``y + start(y)`` (``has_start``; else ``y - d(y)``) by ``p <- y - d(p)``
    until each component of the mismatch ``p + d(p) - y`` is below ``tolerance`` mm or
    after ``iterations`` updates (``d``: ``field`` at ``to_field @ (p, 1)``, trilinear,
    border values; ``start`` likewise at ``to_start``). Writes ``out[:, x] = p - q`` and
    ``errors[x] = |to_error @ mismatch|``, or -1 where ``to_fixed @ (p, 1)`` lies more
    than half a voxel outside the fixed grid of ``fixed_shape``."""
    _, i_, j_, k_ = out.shape
    for row in prange(i_ * j_):
        i, j = divmod(np.int64(row), j_)
        sampled = np.empty((3, 1), dtype=np.float32)
        for k in range(k_):
            q0 = to_q[0, 0] * i + to_q[0, 1] * j + to_q[0, 2] * k + to_q[0, 3]
            q1 = to_q[1, 0] * i + to_q[1, 1] * j + to_q[1, 2] * k + to_q[1, 3]
            q2 = to_q[2, 0] * i + to_q[2, 1] * j + to_q[2, 2] * k + to_q[2, 3]
            y0 = np.float32(to_y[0, 0] * i + to_y[0, 1] * j + to_y[0, 2] * k + to_y[0, 3])
            y1 = np.float32(to_y[1, 0] * i + to_y[1, 1] * j + to_y[1, 2] * k + to_y[1, 3])
            y2 = np.float32(to_y[2, 0] * i + to_y[2, 1] * j + to_y[2, 2] * k + to_y[2, 3])
            if has_start:
                source, matrix, sign = start, to_start, np.float32(1.0)
            else:
                source, matrix, sign = field, to_field, np.float32(-1.0)
            c0 = matrix[0, 0] * y0 + matrix[0, 1] * y1 + matrix[0, 2] * y2 + matrix[0, 3]
            c1 = matrix[1, 0] * y0 + matrix[1, 1] * y1 + matrix[1, 2] * y2 + matrix[1, 3]
            c2 = matrix[2, 0] * y0 + matrix[2, 1] * y1 + matrix[2, 2] * y2 + matrix[2, 3]
            trilinear(source, c0, c1, c2, sampled, 0)
            x0 = y0 + sign * sampled[0, 0]
            x1 = y1 + sign * sampled[1, 0]
            x2 = y2 + sign * sampled[2, 0]
            m0 = m1 = m2 = np.float32(0.0)
            for iteration in range(iterations + 1):
                c0 = (to_field[0, 0] * x0 + to_field[0, 1] * x1 + to_field[0, 2] * x2
                      + to_field[0, 3])
                c1 = (to_field[1, 0] * x0 + to_field[1, 1] * x1 + to_field[1, 2] * x2
                      + to_field[1, 3])
                c2 = (to_field[2, 0] * x0 + to_field[2, 1] * x1 + to_field[2, 2] * x2
                      + to_field[2, 3])
                trilinear(field, c0, c1, c2, sampled, 0)  # d(p)
                m0 = sampled[0, 0] + x0 - y0
                m1 = sampled[1, 0] + x1 - y1
                m2 = sampled[2, 0] + x2 - y2
                if (abs(m0) < tolerance and abs(m1) < tolerance and abs(m2) < tolerance) \
                        or iteration == iterations:
                    break
                x0, x1, x2 = x0 - m0, x1 - m1, x2 - m2
            out[0, i, j, k] = x0 - q0
            out[1, i, j, k] = x1 - q1
            out[2, i, j, k] = x2 - q2
            f0 = to_fixed[0, 0] * x0 + to_fixed[0, 1] * x1 + to_fixed[0, 2] * x2 + to_fixed[0, 3]
            f1 = to_fixed[1, 0] * x0 + to_fixed[1, 1] * x1 + to_fixed[1, 2] * x2 + to_fixed[1, 3]
            f2 = to_fixed[2, 0] * x0 + to_fixed[2, 1] * x1 + to_fixed[2, 2] * x2 + to_fixed[2, 3]
            if (f0 < -0.5 or f0 > fixed_shape[0] - 0.5 or f1 < -0.5
                    or f1 > fixed_shape[1] - 0.5 or f2 < -0.5 or f2 > fixed_shape[2] - 0.5):
                errors[i, j, k] = -1.0
            else:
                e0 = to_error[0, 0] * m0 + to_error[0, 1] * m1 + to_error[0, 2] * m2
                e1 = to_error[1, 0] * m0 + to_error[1, 1] * m1 + to_error[1, 2] * m2
                e2 = to_error[2, 0] * m0 + to_error[2, 1] * m1 + to_error[2, 2] * m2
                errors[i, j, k] = math.sqrt(e0 * e0 + e1 * e1 + e2 * e2)


@jit
def resample_linear(image, matrix, cval, out):
    """out[x] = ``image`` (any strides) at the voxel coordinates ``matrix @ (x, 1)``
    (trilinear; edge values up to half a voxel beyond the grid, ``cval`` further out: as
    :func:`ddmr.spatial.resample.resample_to`'s torch path) for
    every voxel x of ``out`` (I, J, K)."""
    i_, j_, k_ = out.shape
    md, mh, mw = image.shape
    for row in prange(i_ * j_):
        i, j = divmod(np.int64(row), j_)
        for k in range(k_):
            p0 = matrix[0, 0] * i + matrix[0, 1] * j + matrix[0, 2] * k + matrix[0, 3]
            p1 = matrix[1, 0] * i + matrix[1, 1] * j + matrix[1, 2] * k + matrix[1, 3]
            p2 = matrix[2, 0] * i + matrix[2, 1] * j + matrix[2, 2] * k + matrix[2, 3]
            # (1e-4 voxel of slack: a grid's own edge stays inside after rounding)
            if (p0 < -0.5001 or p0 > md - 0.4999 or p1 < -0.5001 or p1 > mh - 0.4999
                    or p2 < -0.5001 or p2 > mw - 0.4999):
                out[i, j, k] = cval
                continue
            x0, x1, fx = corner(p0, md)
            y0, y1, fy = corner(p1, mh)
            z0, z1, fz = corner(p2, mw)
            gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
            out[i, j, k] = (gx * (gy * (gz * image[x0, y0, z0] + fz * image[x0, y0, z1])
                                  + fy * (gz * image[x0, y1, z0] + fz * image[x0, y1, z1]))
                            + fx * (gy * (gz * image[x1, y0, z0] + fz * image[x1, y0, z1])
                                    + fy * (gz * image[x1, y1, z0] + fz * image[x1, y1, z1])))


# -- fields in the layouts files store them


@jit
def lps_component_f_order(field, row, step, out):
    """``out[k, j, i]`` (K, J, I) = ``row @ field[:, i, j, k]`` of a field (3, I, J, K)
    rounded to ``step`` (float32 arithmetic): one component in NIfTI's order (the first
    axis fastest), blocks of k kept together for locality."""
    _, i_, j_, k_ = field.shape
    scale, inverse = np.float32(step), np.float32(1.0 / step)
    r0, r1, r2 = row[0], row[1], row[2]
    blocks = (k_ + 15) // 16
    for block in prange(blocks * j_):
        kb, j = divmod(np.int64(block), j_)
        k_first, k_stop = kb * 16, min(k_, kb * 16 + 16)
        for i in range(i_):
            for k in range(k_first, k_stop):
                value = np.float32(r0 * field[0, i, j, k] + r1 * field[1, i, j, k]
                                   + r2 * field[2, i, j, k])
                out[k, j, i] = np.rint(value * inverse) * scale


@jit
def itk_chunk_shuffled(field, linear, position, signs, step, k_first, k_stop, planes):
    """Slices ``k_first:k_stop`` of the field ``linear @ field[:, x] + position @ (x, 1)``
    ((3, 3) and (3, 4), float64; ``field`` (3, I, J, K)) as ITK stores a displacement
    field's parameters (the three components fastest, then i, j, k), each component cast
    to float32, times ``signs[component]`` and rounded to ``step`` (float32), written
    byte-shuffled as HDF5's shuffle filter stores them: ``planes[b, n]`` byte b of value
    n ((4, N) uint8, values beyond the slices set to 0)."""
    _, i_, j_, _ = field.shape
    scale, inverse = np.float32(step), np.float32(1.0 / step)
    per_slice = 3 * i_ * j_
    count = k_stop - k_first
    total = planes.shape[1]
    for j in prange(j_):
        values = np.empty((count, 3 * i_), dtype=np.float32)
        for i in range(i_):
            for c in range(3):
                sign = signs[c]
                for kk in range(count):
                    k = k_first + kk
                    value = np.float32(
                        linear[c, 0] * field[0, i, j, k] + linear[c, 1] * field[1, i, j, k]
                        + linear[c, 2] * field[2, i, j, k] + position[c, 0] * i
                        + position[c, 1] * j + position[c, 2] * k + position[c, 3])
                    value = np.float32(sign * value)
                    values[kk, 3 * i + c] = np.rint(value * inverse) * scale
        bits = values.view(np.uint32)
        for kk in range(count):
            base = kk * per_slice + j * 3 * i_
            for n in range(3 * i_):
                word = bits[kk, n]
                planes[0, base + n] = word & 255
                planes[1, base + n] = (word >> 8) & 255
                planes[2, base + n] = (word >> 16) & 255
                planes[3, base + n] = (word >> 24) & 255
    for n in prange(count * per_slice, total):
        for b in range(4):
            planes[b, n] = 0
