"""Learned weighting of N losses and M regularisers (the paper's Eq. 1).

Two forms:

- ``"kendall"`` (default): Kendall, Gal and Cipolla (2018). Each term k has a learned
  log-variance ``s_k``; it contributes ``0.5 * exp(-s_k) * L_k + 0.5 * s_k``. The penalty
  keeps every weight ``0.5 * exp(-s_k)`` away from zero (its optimum is ``1 / (2 L_k)``),
  so no term can be switched off. Terms must be non-negative.
- ``"simplex"``: the paper's normalised form as its code had it, for reproduction: loss
  weights ``softmax(logits)`` (sum to one), regulariser weights ``exp(r_j)``, no penalty.
  Gradient descent drives ``exp(r_j)`` towards zero and favours the smallest loss.

Loss weights start equal; regulariser weights start at ``regulariser_init`` (5e-3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from ddmr.errors import ConfigError


class UncertaintyWeighting(nn.Module):
    """Combine named loss and regulariser values into one scalar with learned weights."""

    def __init__(
        self,
        loss_names: Sequence[str],
        regulariser_names: Sequence[str] = (),
        mode: Literal["kendall", "simplex"] = "kendall",
        regulariser_init: float = 5e-3,
    ) -> None:
        super().__init__()
        if not loss_names:
            raise ConfigError("uncertainty weighting needs at least one loss")
        if mode not in ("kendall", "simplex"):
            raise ConfigError(f"unknown weighting mode {mode!r}; use 'kendall' or 'simplex'")
        if regulariser_init <= 0:
            raise ConfigError(f"regulariser_init must be positive, got {regulariser_init}")
        self.loss_names = list(loss_names)
        self.regulariser_names = list(regulariser_names)
        self.mode = mode
        n, m = len(self.loss_names), len(self.regulariser_names)
        if mode == "kendall":
            # weight = 0.5 * exp(-s): s = 0 gives 0.5 for every loss.
            reg_s = -math.log(2 * regulariser_init)
            self.loss_params = nn.Parameter(torch.zeros(n))
            self.regulariser_params = nn.Parameter(torch.full((m,), reg_s))
        else:
            self.loss_params = nn.Parameter(torch.zeros(n))
            self.regulariser_params = nn.Parameter(torch.full((m,), math.log(regulariser_init)))

    def loss_weights(self) -> torch.Tensor:
        if self.mode == "kendall":
            return 0.5 * torch.exp(-self.loss_params)
        return torch.softmax(self.loss_params, dim=0)

    def regulariser_weights(self) -> torch.Tensor:
        if self.mode == "kendall":
            return 0.5 * torch.exp(-self.regulariser_params)
        return torch.exp(self.regulariser_params)

    def forward(self, losses: Mapping[str, torch.Tensor],
                regularisers: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Weighted sum (plus the Kendall penalty) of scalar terms given by name."""
        regularisers = regularisers or {}
        missing = [k for k in self.loss_names if k not in losses]
        missing += [k for k in self.regulariser_names if k not in regularisers]
        if missing:
            raise KeyError(f"missing terms for uncertainty weighting: {missing}")
        values = torch.stack([losses[k] for k in self.loss_names])
        total = (self.loss_weights() * values).sum()
        if self.regulariser_names:
            reg = torch.stack([regularisers[k] for k in self.regulariser_names])
            total = total + (self.regulariser_weights() * reg).sum()
        if self.mode == "kendall":
            penalty = self.loss_params.sum() + self.regulariser_params.sum()
            total = total + 0.5 * penalty
        return total

    def weights(self) -> dict[str, float]:
        """Current effective weights by term name (for logging)."""
        out = dict(zip(self.loss_names, self.loss_weights().tolist(), strict=True))
        out.update(zip(self.regulariser_names, self.regulariser_weights().tolist(), strict=True))
        return out
