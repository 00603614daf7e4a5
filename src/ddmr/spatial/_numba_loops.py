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
def box_last(src, out, radius):
    """Window sums along the last axis of (C, D, H, W), zero beyond the grid."""
    c_, d_, h_, w_ = src.shape
    for row in prange(c_ * d_ * h_):
        c, rest = divmod(np.int64(row), d_ * h_)
        d, h = divmod(np.int64(rest), h_)
        line = src[c, d, h]
        target = out[c, d, h]
        total = 0.0
        for k in range(min(radius, w_ - 1) + 1):
            total += line[k]
        target[0] = total
        for k in range(1, w_):
            if k + radius < w_:
                total += line[k + radius]
            if k - radius - 1 >= 0:
                total -= line[k - radius - 1]
            target[k] = total

@jit
def box_middle(src, out, radius):
    """Window sums along axis 2 of (C, D, H, W) (running rows of W in float64)."""
    c_, d_, h_, w_ = src.shape
    for slab in prange(c_ * d_):
        c, d = divmod(np.int64(slab), d_)
        plane = src[c, d]
        target = out[c, d]
        total = np.zeros(w_, dtype=np.float64)
        for j in range(min(radius, h_ - 1) + 1):
            for k in range(w_):
                total[k] += plane[j, k]
        for j in range(h_):
            if j > 0 and j + radius < h_:
                for k in range(w_):
                    total[k] += plane[j + radius, k]
            if j - radius - 1 >= 0:
                for k in range(w_):
                    total[k] -= plane[j - radius - 1, k]
            for k in range(w_):
                target[j, k] = total[k]

@jit
def box_first(src, out, radius):
    """Window sums along axis 1 of (C, D, H, W) (running rows of W in float64)."""
    c_, d_, h_, w_ = src.shape
    for column in prange(c_ * h_):
        c, h = divmod(np.int64(column), h_)
        total = np.zeros(w_, dtype=np.float64)
        for i in range(min(radius, d_ - 1) + 1):
            for k in range(w_):
                total[k] += src[c, i, h, k]
        for i in range(d_):
            if i > 0 and i + radius < d_:
                for k in range(w_):
                    total[k] += src[c, i + radius, h, k]
            if i - radius - 1 >= 0:
                for k in range(w_):
                    total[k] -= src[c, i - radius - 1, h, k]
            for k in range(w_):
                out[c, i, h, k] = total[k]

@jit
def gauss_last(src, out, weights, scale):
    """Gaussian taps along the last axis of (C, D, H, W), border voxels rescaled."""
    c_, d_, h_, w_ = src.shape
    radius = weights.shape[0] - 1
    for row in prange(c_ * d_ * h_):
        c, rest = divmod(np.int64(row), d_ * h_)
        d, h = divmod(np.int64(rest), h_)
        line = src[c, d, h]
        target = out[c, d, h]
        for k in range(w_):
            target[k] = weights[0] * line[k]
        for t in range(1, radius + 1):
            weight = np.float32(weights[t])
            for k in range(t, w_):
                target[k] += weight * line[k - t]
            for k in range(w_ - t):
                target[k] += weight * line[k + t]
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


@jit
def sample(volume, displacement, linear, base, out, addend, add):
    """out[c, x] = volume[c] at ``linear @ displacement[:, x] + base @ (x, 1)``
    (voxel coordinates of ``volume``; trilinear, border values), plus addend[c, x]
    when ``add``; rows of ``out`` are (C, W) views."""
    _, d_, h_, w_ = displacement.shape
    for slab in prange(d_ * h_):
        i, j = divmod(np.int64(slab), h_)
        r0 = base[0, 0] * i + base[0, 1] * j + base[0, 3]
        r1 = base[1, 0] * i + base[1, 1] * j + base[1, 3]
        r2 = base[2, 0] * i + base[2, 1] * j + base[2, 3]
        row = out[:, i, j, :]
        for k in range(w_):
            u0 = displacement[0, i, j, k]
            u1 = displacement[1, i, j, k]
            u2 = displacement[2, i, j, k]
            p0 = r0 + base[0, 2] * k + linear[0, 0] * u0 + linear[0, 1] * u1 + linear[0, 2] * u2
            p1 = r1 + base[1, 2] * k + linear[1, 0] * u0 + linear[1, 1] * u1 + linear[1, 2] * u2
            p2 = r2 + base[2, 2] * k + linear[2, 0] * u0 + linear[2, 1] * u1 + linear[2, 2] * u2
            trilinear(volume, p0, p1, p2, row, k)
        if add:
            for c in range(out.shape[0]):
                for k in range(w_):
                    row[c, k] += addend[c, i, j, k]


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
