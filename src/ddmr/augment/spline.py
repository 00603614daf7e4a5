"""Cubic B-spline interpolation on regular grids: dense (separable matrices) and at
scattered points (with first derivatives).

A field given by its values ``f_j`` at nodes ``j = 0..n-1`` (per axis) is represented
as ``f(x) = sum_j c_j beta3(x - j)`` (``x`` in node-index units) with coefficients
``c`` chosen so that ``f`` interpolates the values. Beyond the ends the coefficients are
extended linearly (``c_-1 = 2 c_0 - c_1``), which makes the interpolant reproduce every
affine function exactly and gives the end condition ``c_0 = f_0``. The interpolant is
C2, so fields built from it are smooth and their inverses are well approximated on the
same grids (which trilinear interpolation, with its kinks at cell faces, is not).

On each cell the spline is a cubic polynomial whose Bezier control points are fixed
averages of the coefficients (:func:`bezier_matrix`); a polynomial piece lies in the
convex hull of its Bezier control points, so the largest norm over the control net
bounds the field's norm everywhere in those cells, and tightly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _weights(t: torch.Tensor) -> torch.Tensor:
    """Cubic B-spline weights (..., 4) of nodes floor(x)-1 .. floor(x)+2, ``t = x - floor(x)``."""
    s = 1 - t
    return torch.stack([s**3 / 6, 2 / 3 - t**2 + t**3 / 2, 2 / 3 - s**2 + s**3 / 2, t**3 / 6], -1)


def _derivative_weights(t: torch.Tensor) -> torch.Tensor:
    """d/dx of :func:`_weights` (..., 4)."""
    return torch.stack([-(1 - t) ** 2 / 2, (3 * t**2 - 4 * t) / 2,
                        (-3 * t**2 + 2 * t + 1) / 2, t**2 / 2], -1)


def basis_matrix(positions: torch.Tensor, n: int, derivative: bool = False) -> torch.Tensor:
    """(len(positions), n) float64 matrix mapping coefficients to values (or d/dx, per
    index unit) at ``positions`` in [0, n - 1] (node-index units), the two coefficients
    beyond the ends folded in by linear extension."""
    positions = torch.as_tensor(positions, dtype=torch.float64)
    if n < 2:
        raise ValueError("a spline axis needs at least 2 nodes")
    base = positions.floor().clamp(0, n - 2)
    t = positions - base
    w = _derivative_weights(t) if derivative else _weights(t)
    # Extended coefficient vector has indices -1..n; as a matrix over 0..n-1:
    ext = torch.zeros(n + 2, n, dtype=torch.float64)
    ext[1:-1] = torch.eye(n, dtype=torch.float64)
    ext[0, 0], ext[0, 1] = 2.0, -1.0
    ext[-1, -1], ext[-1, -2] = 2.0, -1.0
    rows = torch.zeros(len(positions), n + 2, dtype=torch.float64)
    cols = (base.long().unsqueeze(1) + torch.arange(4)).clamp(0, n + 1)  # extended index + 1
    rows.scatter_add_(1, cols, w)
    return rows @ ext


def prefilter_matrix(n: int) -> torch.Tensor:
    """(n, n) float64 matrix from node values to interpolating coefficients."""
    return torch.linalg.inv(basis_matrix(torch.arange(n, dtype=torch.float64), n))


def interpolation_matrix(positions: torch.Tensor, n: int, derivative: bool = False
                         ) -> torch.Tensor:
    """(len(positions), n) float64 matrix from node values to interpolated values (or
    derivatives per index unit) at ``positions``."""
    return basis_matrix(positions, n, derivative) @ prefilter_matrix(n)


def bezier_matrix(n: int, first: int, last: int) -> torch.Tensor:
    """(3 (last - first) + 1, n) float64 matrix from B-spline coefficients (nodes 0..n-1,
    linearly extended beyond) to the Bezier control points of the cells between nodes
    ``first`` and ``last``: per cell ``i``, ``(c_{i-1} + 4 c_i + c_{i+1}) / 6``,
    ``(2 c_i + c_{i+1}) / 3``, ``(c_i + 2 c_{i+1}) / 3``, then the next cell's first point."""
    if not 0 <= first < last <= n - 1:
        raise ValueError(f"need 0 <= first < last <= {n - 1}, got {first}, {last}")
    ext = torch.zeros(n + 2, n, dtype=torch.float64)  # extended coefficients -1..n
    ext[1:-1] = torch.eye(n, dtype=torch.float64)
    ext[0, 0], ext[0, 1] = 2.0, -1.0
    ext[-1, -1], ext[-1, -2] = 2.0, -1.0
    rows = []
    for i in range(first, last + 1):
        c_prev, c_i, c_next = ext[i], ext[i + 1], ext[i + 2]
        rows.append((c_prev + 4 * c_i + c_next) / 6)
        if i < last:
            rows.append((2 * c_i + c_next) / 3)
            rows.append((c_i + 2 * c_next) / 3)
    return torch.stack(rows)


def separable(field: torch.Tensor, matrices: Sequence[torch.Tensor]) -> torch.Tensor:
    """Apply one matrix per spatial axis: (..., a, b, c) with matrices (A, a), (B, b),
    (Cc, c) -> (..., A, B, Cc), contiguous (three matrix products)."""
    m0, m1, m2 = (m.to(field.dtype) for m in matrices)
    lead = field.shape[:-3]
    a, b, c = field.shape[-3:]
    big_a, big_b, big_c = m0.shape[0], m1.shape[0], m2.shape[0]
    out = m0 @ field.reshape(-1, a, b * c)  # (N, A, b c)
    out = m1 @ out.reshape(-1, b, c)  # (N A, B, c)
    out = out.reshape(-1, c) @ m2.T  # (N A B, Cc)
    return out.reshape(*lead, big_a, big_b, big_c)


def sample(coefficients: torch.Tensor, points: torch.Tensor, derivatives: bool = False
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Evaluate a B-spline with ``coefficients`` (C, a, b, c) at ``points`` (P, 3) in
    node-index units. Returns values (P, C) and, if asked, the Jacobian (P, C, 3) per
    index unit, in the coefficients' dtype. Outside the grid the coefficients are
    extended by their border values.

    Gathers the 4x4x4 coefficients around each point once and contracts them with the
    tensor-product weights (and those of the three partial derivatives).
    """
    channels, sizes, n = coefficients.shape[0], coefficients.shape[1:], points.shape[0]
    dtype = coefficients.dtype
    base = points.floor()
    t = points - base
    base = base.long()
    offsets = torch.arange(-1, 3, device=points.device)
    index = [(base[:, a, None] + offsets).clamp(0, sizes[a] - 1) for a in range(3)]  # (P, 4)
    flat = ((index[0][:, :, None, None] * sizes[1] + index[1][:, None, :, None]) * sizes[2]
            + index[2][:, None, None, :]).reshape(-1)
    gathered = coefficients.reshape(channels, -1).index_select(1, flat)
    gathered = gathered.reshape(channels, n, 64)
    w = _weights(t).to(dtype)  # (P, 3, 4)
    kinds = 4 if derivatives else 1
    weights = torch.empty(kinds, n, 4, 16, dtype=dtype, device=points.device)
    inner = (w[:, 1, :, None] * w[:, 2, None, :]).reshape(n, 1, 16)  # axes 1, 2
    torch.mul(w[:, 0, :, None], inner, out=weights[0])
    if derivatives:
        d = _derivative_weights(t).to(dtype)
        torch.mul(d[:, 0, :, None], inner, out=weights[1])
        torch.mul(w[:, 0, :, None], (d[:, 1, :, None] * w[:, 2, None, :]).reshape(n, 1, 16),
                  out=weights[2])
        torch.mul(w[:, 0, :, None], (w[:, 1, :, None] * d[:, 2, None, :]).reshape(n, 1, 16),
                  out=weights[3])
    weights = weights.view(kinds, n, 64)
    out = torch.einsum("cpj,kpj->kpc", gathered, weights)  # (K, P, C)
    if not derivatives:
        return out[0], None
    return out[0], out[1:].permute(1, 2, 0)
