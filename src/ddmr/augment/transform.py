"""The random spatial transform and its two displacement fields.

Points are in physical coordinates (mm, ``p = index * spacing``, see
:mod:`ddmr.augment.grid`); ``c`` is the centre of the volume. With a non-rigid
displacement ``w`` (mm), a rotation ``R`` and a translation ``t`` (mm), the ground-truth
point map, from the fixed image into the moving image, is

    phi(p) = R (p + w(p) - c) + c + t,

so the ground-truth displacement is ``u(p) = phi(p) - p = (R - I)(p - c) + t + R w(p)``,
computed directly (no inversion), and ``fixed(p) = moving(phi(p))``. The moving image is
made by pulling the fixed image back through the inverse map

    phi^-1(q) = p  with  p + w(p) = r,   r = R^T (q - c - t) + c,

the rigid part inverted analytically and the non-rigid part by Newton's method on the
exact spline ``w`` (a few iterations per node of a coarse grid).

``w`` is the thin plate spline through the control-point displacements, sampled on a
coarse node grid (control points fall on nodes) and interpolated by cubic B-splines
(:mod:`ddmr.augment.spline`): smooth (C2), cheap to evaluate densely, and bounded by its
coefficients. ``u`` is interpolated from the same grid (exact for its affine part);
the generating field ``v(q) = phi^-1(q) - q`` from its Newton solutions at the nodes of
a second, finer grid. The only approximation left is that cubic interpolation of ``v``
between those nodes; the tests measure it.

Bounds: the control displacements are scaled so that the Bezier control net of the spline
over the field of view has norms at most ``max_tps``, hence ``|w(p)| <= max_tps``
everywhere in the field of view (convex hull property, :mod:`ddmr.augment.spline`), hence
``|u(p) - (R - I)(p - c) - t| <= max_tps`` and ``|u(p)| <= |(R - I)(p - c)| + |t| + max_tps``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ddmr.augment.config import AugmentationConfig
from ddmr.augment.grid import NodeGrid, regular_grid
from ddmr.augment.rigid import rotation_matrix
from ddmr.augment.spline import (
    basis_matrix,
    bezier_matrix,
    interpolation_matrix,
    prefilter_matrix,
    sample,
    separable,
)
from ddmr.augment.tps import ThinPlateSpline, border_mask, control_grid

logger = logging.getLogger(__name__)

# Newton stops after the step taken from a residual below this; with its quadratic
# convergence the residual left is far smaller (about 1e-5 mm at the paper's bounds)
NEWTON_TOLERANCE_MM = 1e-2


def _solve3(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve (P, 3, 3) x = (P, 3) by the adjugate; near-singular determinants are clamped
    (keeping their sign) so that the result stays finite."""
    a = matrix
    cof = torch.stack([
        torch.cross(a[:, 1], a[:, 2], dim=-1),
        torch.cross(a[:, 2], a[:, 0], dim=-1),
        torch.cross(a[:, 0], a[:, 1], dim=-1),
    ], dim=-1)  # columns are the cofactor rows: inverse = cof / det
    det = (a[:, 0] * cof[:, :, 0]).sum(-1)
    sign = torch.where(det >= 0, 1.0, -1.0).to(det.dtype)
    det = torch.where(det.abs() < 1e-6, sign * 1e-6, det)
    return (cof @ rhs.unsqueeze(-1)).squeeze(-1) / det.unsqueeze(-1)


class TransformPlan:
    """What depends only on the image grid and the configuration: the node grids, the
    TPS evaluation operator and the spline matrices. Reusable across samples (the layer
    caches one per image shape and spacing).

    shape: (D, H, W) voxels; spacing: (3,) mm.
    """

    def __init__(self, shape: Sequence[int], spacing: Sequence[float],
                 config: AugmentationConfig) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.config = config
        self.extent = torch.tensor([(n - 1) * s for n, s in zip(self.shape, self.spacing,
                                                               strict=True)], dtype=torch.float64)
        self.centre = self.extent / 2
        self.control_points: torch.Tensor | None = None
        self.free_controls: torch.Tensor | None = None
        self.tps_grid: NodeGrid | None = None
        if config.nonrigid:
            per_axis = (config.tps_grid - 1) * config.tps_samples_per_cell + 1
            # margin: pre-images of points up to max_tps + 1 voxel outside the field of
            # view, plus 2 nodes so that every B-spline evaluated there has full support
            # (capped at a quarter of the grid, for bounds that are large for the volume:
            # then only the pre-images of points near the edges are approximate)
            self.tps_grid = regular_grid(self.shape, self.spacing, (per_axis,) * 3,
                                         config.max_tps + max(self.spacing), extra=2,
                                         max_margin=per_axis // 4 + 2)
            inverse_nodes = [min(n, (config.tps_grid - 1) * config.inverse_samples_per_cell + 1)
                             for n in self.shape]
            self.inverse_grid = regular_grid(self.shape, self.spacing, inverse_nodes)
            self.control_points = control_grid(self.extent.tolist(), config.tps_grid)
            self.free_controls = (~border_mask(config.tps_grid) if config.tps_fix_border
                                  else torch.ones(len(self.control_points), dtype=torch.bool))
            self._tps = ThinPlateSpline(self.control_points, self.tps_grid.points(padded=True),
                                        config.tps_kernel, dtype=torch.float32)
            padded = self.tps_grid.padded_shape
            self._prefilter = [prefilter_matrix(n) for n in padded]
            self._bezier = [bezier_matrix(n, m, m + k - 1) for n, m, k in
                            zip(padded, self.tps_grid.margin, self.tps_grid.shape, strict=True)]
            inner = [torch.arange(n, dtype=torch.float64) + m
                     for n, m in zip(self.tps_grid.shape, self.tps_grid.margin, strict=True)]
            self._node_values = [basis_matrix(p, n) for p, n in zip(inner, padded, strict=True)]
            self._node_slopes = [basis_matrix(p, n, derivative=True) / h
                                 for p, n, h in zip(inner, padded, self.tps_grid.step,
                                                    strict=True)]
            self.u_grid = self.tps_grid
        else:  # every field is affine: 2 nodes per axis represent it exactly
            self.inverse_grid = regular_grid(self.shape, self.spacing, (2, 2, 2))
            self.u_grid = self.inverse_grid
        self._dense_cache: dict[tuple, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        # the nodes of the last limited draw, so that applying it does not evaluate again
        self._last_nodes: tuple[torch.Tensor, torch.Tensor] | None = None

    # ----- the non-rigid part -------------------------------------------------------
    def tps_nodes(self, values: torch.Tensor) -> torch.Tensor:
        """The TPS through the control displacements ``values`` (M, 3) mm, sampled at the
        nodes of the padded TPS grid: (3, *padded shape) mm float64."""
        if self.tps_grid is None:
            raise ValueError("the configuration has the non-rigid part switched off")
        values = torch.as_tensor(values, dtype=torch.float64)
        if self._last_nodes is not None and torch.equal(values, self._last_nodes[0]):
            return self._last_nodes[1]
        return self._tps.evaluate(values).T.reshape(3, *self.tps_grid.padded_shape)

    def tps_coefficients(self, values: torch.Tensor) -> torch.Tensor:
        """B-spline coefficients (3, *padded shape) mm float64 of the interpolated TPS."""
        return separable(self.tps_nodes(values), self._prefilter)

    def _peak(self, coefficients: torch.Tensor) -> float:
        """Largest norm of the Bezier control net over the field of view: an upper bound
        of ``|w|`` everywhere in it (convex hull property), reached at the nodes."""
        return float(separable(coefficients, self._bezier).square().sum(0).max().sqrt())

    def tps_gradient(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Gradient (3 components, 3 axes, *inner tps grid) of ``w`` at the inner nodes (mm/mm)."""
        grads = []
        for axis in range(3):
            mats = [self._node_slopes[k] if k == axis else self._node_values[k]
                    for k in range(3)]
            grads.append(separable(coefficients, mats))
        return torch.stack(grads, dim=1)

    def limit_tps(self, values: torch.Tensor) -> torch.Tensor:
        """Scale control displacements (M, 3) mm by one factor <= 1 so that ``|w| <= max_tps``
        everywhere and ``det(I + grad w) >= tps_min_jacobian`` at the nodes. The spline is
        linear in the values, so it still passes through the returned values."""
        values = torch.as_tensor(values, dtype=torch.float64)
        nodes = self.tps_nodes(values)
        coefficients = separable(nodes, self._prefilter)
        peak = self._peak(coefficients)
        scale = 1.0 if peak <= self.config.max_tps else self.config.max_tps / peak
        threshold = self.config.tps_min_jacobian
        if threshold > 0 and peak > 0:
            # det(I + s G) = 1 + s c1 + s^2 c2 + s^3 c3 at every node
            g = self.tps_gradient(coefficients).reshape(3, 3, -1)
            c1 = g[0, 0] + g[1, 1] + g[2, 2]
            c2 = (g[0, 0] * g[1, 1] - g[0, 1] * g[1, 0] + g[0, 0] * g[2, 2]
                  - g[0, 2] * g[2, 0] + g[1, 1] * g[2, 2] - g[1, 2] * g[2, 1])
            c3 = torch.linalg.det(g.permute(2, 0, 1))

            def ok(s: float) -> bool:
                return float((1 + s * (c1 + s * (c2 + s * c3))).min()) >= threshold

            if not ok(scale):
                low, high = 0.0, scale
                for _ in range(40):
                    mid = (low + high) / 2
                    low, high = (mid, high) if ok(mid) else (low, mid)
                scale = low
        limited = values * scale
        self._last_nodes = (limited, nodes * scale)
        return limited

    def _preimages(self, coefficients: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Solve ``p + w(p) = r`` for each target ``r`` (P, 3) mm by Newton's method (float32,
        in node-index units) until the step taken from a largest residual below
        ``NEWTON_TOLERANCE_MM``; returns ``p`` (P, 3) mm float64."""
        grid = self.tps_grid
        step = grid.step_tensor()
        coef_index = (coefficients / step.view(3, 1, 1, 1)).float()  # w in node-index units
        goal = grid.index(targets).float()
        step32 = step.float()
        p = goal.clone()
        eye = torch.eye(3)
        worst = float("inf")
        for _ in range(self.config.inversion_iterations):
            w, jac = sample(coef_index, p, derivatives=True)
            residual = p + w - goal
            worst = float((residual * step32).square().sum(1).max().sqrt()) if len(p) else 0.0
            p = p - _solve3(eye + jac, residual)
            if worst < NEWTON_TOLERANCE_MM:
                break
        else:
            logger.warning("TPS inversion: residual %.3g mm before the last of %d Newton "
                           "steps (is the deformation close to folding?)", worst,
                           self.config.inversion_iterations)
        # the exact pre-image lies within max_tps of its target: keep p there
        offset = (p.double() - grid.index(targets)) * step
        length = offset.norm(dim=1, keepdim=True)
        limit = self.config.max_tps * (1 + 1e-6)
        offset = torch.where(length > limit, offset * limit / length.clamp_min(1e-12), offset)
        return targets + torch.nan_to_num(offset)

    # ----- both fields on their node grids ------------------------------------------
    def node_fields(self, rotation_deg: torch.Tensor, translation_mm: torch.Tensor,
                    tps_values: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Ground truth ``u`` on ``u_grid`` (padded) and generating field ``v`` on
        ``inverse_grid``, each (3, *nodes) float64 in voxels of the image.

        ``u`` pulls the moving image back onto the fixed one; ``v`` pulls the fixed image
        back to make the moving one (``moving(q) = fixed(q + v(q))``).
        """
        rotation = rotation_matrix(torch.as_tensor(rotation_deg, dtype=torch.float64))
        translation = torch.as_tensor(translation_mm, dtype=torch.float64)
        spacing = torch.tensor(self.spacing, dtype=torch.float64)
        eye = torch.eye(3, dtype=torch.float64)
        p = self.u_grid.points(padded=True)
        u = (p - self.centre) @ (rotation - eye).T + translation
        q = self.inverse_grid.points()
        r = (q - self.centre - translation) @ rotation + self.centre  # R^T (q - c - t) + c
        source = r
        if tps_values is not None and self.tps_grid is not None:
            w_nodes = self.tps_nodes(tps_values)
            coefficients = separable(w_nodes, self._prefilter)
            u = u + w_nodes.reshape(3, -1).T @ rotation.T
            source = self._preimages(coefficients, r)
        v = source - q
        u_nodes = (u / spacing).T.reshape(3, *self.u_grid.padded_shape)
        v_nodes = (v / spacing).T.reshape(3, *self.inverse_grid.shape)
        return u_nodes, v_nodes

    # ----- dense fields on the image grid --------------------------------------------
    def _dense_matrices(self, device: torch.device, dtype: torch.dtype):
        key = (str(device), dtype)
        if key not in self._dense_cache:
            u_pos = self.u_grid.axis_positions(self.shape, self.spacing)
            v_pos = self.inverse_grid.axis_positions(self.shape, self.spacing)
            u_mats = [interpolation_matrix(x, n).to(device, dtype)
                      for x, n in zip(u_pos, self.u_grid.padded_shape, strict=True)]
            v_mats = [interpolation_matrix(x, n).to(device, dtype)
                      for x, n in zip(v_pos, self.inverse_grid.shape, strict=True)]
            self._dense_cache[key] = (u_mats, v_mats)
        return self._dense_cache[key]

    def dense(self, u_nodes: torch.Tensor, v_nodes: torch.Tensor, device: torch.device | str,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Interpolate batched node fields (B, 3, *nodes) onto the image grid:
        ``u`` and ``v`` (B, 3, D, H, W) in voxels, on ``device``."""
        u_mats, v_mats = self._dense_matrices(torch.device(device), dtype)
        u = separable(u_nodes.to(device=device, dtype=dtype), u_mats)
        v = separable(v_nodes.to(device=device, dtype=dtype), v_mats)
        return u.contiguous(), v.contiguous()
