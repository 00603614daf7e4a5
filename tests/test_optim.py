"""The few-line Adam equals torch.optim.Adam step for step."""

from __future__ import annotations

import torch

from ddmr.optim import Adam


def test_matches_torch_adam_with_a_rate_per_parameter():
    torch.manual_seed(0)
    ours = [torch.randn(3, 4, requires_grad=True), torch.randn(5, requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_(True) for p in ours]
    target = [torch.randn(3, 4), torch.randn(5)]
    mine = Adam(ours, [0.1, 0.01])
    reference = torch.optim.Adam([{"params": [theirs[0]], "lr": 0.1},
                                  {"params": [theirs[1]], "lr": 0.01}])
    for _ in range(20):
        for params in (ours, theirs):
            for p in params:
                p.grad = None
            sum(((p - t) ** 3).abs().sum() for p, t in zip(params, target, strict=True)).backward()
        mine.step()
        reference.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
