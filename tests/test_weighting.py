import math

import pytest
import torch

from ddmr.errors import ConfigError
from ddmr.losses import UncertaintyWeighting


def _toy_problem(mode: str, steps: int = 1500):
    """Two conflicting losses and a regulariser on a 3-vector; returns weight history."""
    torch.manual_seed(0)
    x = torch.nn.Parameter(torch.zeros(3))
    a, b = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([-1.0, 0.5, 2.0])
    uw = UncertaintyWeighting(["l1", "l2"], ["reg"], mode=mode)
    opt = torch.optim.Adam([x, *uw.parameters()], lr=1e-2)
    history = [uw.weights()]
    for _ in range(steps):
        opt.zero_grad()
        losses = {"l1": ((x - a) ** 2).sum() + 0.1, "l2": ((x - b) ** 2).sum() + 0.1}
        total = uw(losses, {"reg": (x**2).sum()})
        total.backward()
        opt.step()
        history.append(uw.weights())
    return history


def test_initial_weights_equal_and_regulariser_at_5e_3():
    for mode in ("kendall", "simplex"):
        w = UncertaintyWeighting(["ncc", "ssim", "dice"], ["reg"], mode=mode).weights()
        assert w["ncc"] == pytest.approx(w["ssim"]) == pytest.approx(w["dice"])
        assert w["reg"] == pytest.approx(5e-3)
    simplex = UncertaintyWeighting(["a", "b"], mode="simplex").weights()
    assert simplex["a"] + simplex["b"] == pytest.approx(1.0)


def test_kendall_weights_move_stay_finite_and_do_not_collapse():
    history = _toy_problem("kendall")
    start, end = history[0], history[-1]
    for name in start:
        assert math.isfinite(end[name])
        assert abs(end[name] - start[name]) > 1e-3, f"{name} did not move"
        assert end[name] > 0.05 * start[name], f"{name} collapsed"
    # the regulariser weight grows from its small start towards 1 / (2 R)
    assert end["reg"] > start["reg"]


def test_simplex_form_lets_the_regulariser_fade():
    """The paper's form (as its code had it) drives exp(r) down: the reason it is not the
    default."""
    history = _toy_problem("simplex")
    assert history[-1]["reg"] < 0.5 * history[0]["reg"]
    assert history[-1]["l1"] + history[-1]["l2"] == pytest.approx(1.0)


def test_missing_term_and_bad_mode():
    uw = UncertaintyWeighting(["a"], ["r"])
    with pytest.raises(KeyError):
        uw({"a": torch.tensor(1.0)})
    with pytest.raises(ConfigError):
        UncertaintyWeighting(["a"], mode="softmax")
