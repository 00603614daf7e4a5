"""A few-line Adam for the per-pair optimisations (the affine stages).

It performs ``torch.optim.Adam``'s update with its defaults, on a handful of tensors with
a learning rate each. Written out because the first ``torch.optim`` optimiser of a
process imports ``torch._dynamo``: 2-3 s of start-up, more than a whole affine stage or
a small pair's registration.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Adam:
    """Adam (Kingma & Ba; beta 0.9/0.999, eps 1e-8) on ``parameters``, ``rates[k]`` the
    learning rate of ``parameters[k]``. ``step(gradients)`` uses the given gradients, or
    each parameter's ``.grad`` when ``None``."""

    def __init__(self, parameters: Sequence[torch.Tensor], rates: Sequence[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if len(parameters) != len(rates):
            raise ValueError("one learning rate per parameter is needed")
        self.parameters, self.rates = list(parameters), [float(r) for r in rates]
        self.betas, self.eps, self.steps = betas, eps, 0
        self.first = [torch.zeros_like(p) for p in self.parameters]
        self.second = [torch.zeros_like(p) for p in self.parameters]

    @torch.no_grad()
    def step(self, gradients: Sequence[torch.Tensor] | None = None) -> None:
        beta1, beta2 = self.betas
        self.steps += 1
        correction1 = 1 - beta1 ** self.steps
        correction2 = 1 - beta2 ** self.steps
        if gradients is None:
            gradients = [p.grad for p in self.parameters]
        for p, rate, gradient, m, v in zip(self.parameters, self.rates, gradients,
                                           self.first, self.second, strict=True):
            m.mul_(beta1).add_(gradient, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
            denominator = (v / correction2).sqrt_().add_(self.eps)
            p.addcdiv_(m, denominator, value=-rate / correction1)
