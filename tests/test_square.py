"""Square Attack: threat model (budget and [0,1] box), cross-checks against torchattacks.Square on the adversarially
trained digits CNN, early exit and skipping of misclassified examples, targeted mode, seeding, the p schedule and
the L∞ / L2 proposal steps, option validation."""

from __future__ import annotations

import pytest
import torch

import torchattacks  # a test dependency: make test installs it

import robustlab.attacks.square as square_module
from robustlab.attacks import build_attack
from robustlab.attacks.square import Square, meta_pattern, p_schedule
from robustlab.modes import model_mode


class ReferenceOffsetsSquare(Square):
    """Window offsets drawn as the reference code does (never the last offset): like-for-like with torchattacks."""

    reference_offsets = True


def _run_torchattacks(atk, x, y):
    atk.set_model_training_mode(model_training=False)
    return atk(x, y)


def _pred(model, x):
    with torch.no_grad(), model_mode(model, "eval"):
        return model(x).argmax(1)


def _acc(model, x_adv, y):
    return _pred(model, x_adv).eq(y).float().mean().item()


def _linf(x_adv, x):
    return (x_adv - x).flatten(1).abs().amax(1)


def _l2(x_adv, x):
    return (x_adv - x).flatten(1).norm(dim=1)


class CountingModel(torch.nn.Module):
    """Records the batch size of every forward pass (the queries)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(len(x))
        return self.model(x)


# --- (1) budget and box ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.8)])
@pytest.mark.parametrize("restarts", [1, 2])
def test_output_within_budget_and_box(trained_digits_mlp, digits, norm, eps, restarts):
    x, y = digits.test_x, digits.test_y
    x_adv = Square(eps, norm=norm, queries=300, restarts=restarts, seed=0)(trained_digits_mlp, x, y)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    dist = _linf(x_adv, x) if norm == "linf" else _l2(x_adv, x)
    assert dist.max().item() <= eps + 1e-6
    assert _acc(trained_digits_mlp, x_adv, y) < _acc(trained_digits_mlp, x, y) - 0.2  # it attacks


def test_l2_step_keeps_the_full_budget_away_from_the_box(trained_digits_mlp):
    # Inside the box (no clipping) every L2 iterate has ‖δ‖₂ = ε exactly (Algorithm 3 keeps the norm).
    x = torch.full((16, 1, 8, 8), 0.5)
    atk = Square(0.5, norm="l2", seed=0)
    gen = torch.Generator().manual_seed(0)
    x_best = atk._l2_init(x, gen)
    assert torch.allclose(_l2(x_best, x), torch.full((16,), 0.5), atol=1e-5)
    for it in range(50):
        x_best = atk._l2_step(x, x_best, p_schedule(0.3, it, 100), gen)
        assert torch.allclose(_l2(x_best, x), torch.full((16,), 0.5), atol=1e-5)


def test_linf_step_changes_every_point_by_one_window(digits):
    # The paper redraws the window's signs until the point changes: no query is wasted on an unchanged point.
    x = digits.test_x[:64]
    atk = Square(0.1, seed=0)
    gen = torch.Generator().manual_seed(1)
    x_best = atk._linf_init(x, gen)
    assert torch.allclose(_linf(x_best, x).max(), torch.tensor(0.1))
    for p in (0.8, 0.1, 0.8 / 512):
        for _ in range(20):
            x_new = atk._linf_step(x, x_best, p, gen)
            changed = (x_new - x_best).abs().gt(1e-7)
            assert changed.flatten(1).any(1).all()
            s = min(max(round((p * 64) ** 0.5), 1), 7)
            rows, cols = changed[:, 0].any(2), changed[:, 0].any(1)
            assert rows.sum(1).max() <= s and cols.sum(1).max() <= s  # inside one s×s window
            x_best = x_new


def test_zero_epsilon_returns_the_input(trained_digits_mlp, digits):
    x, y = digits.test_x[:20], digits.test_y[:20]
    assert torch.equal(Square(0.0, queries=10)(trained_digits_mlp, x, y), x)


# --- (2) cross-checks against torchattacks ---------------------------------------------------------------------
def test_linf_matches_torchattacks_robust_accuracy(robust_digits_cnn, digits):
    """ε 0.15, 5000 queries, all 360 test images (APGD leaves ~57% here).

    With the reference code's offsets our robust accuracy is within 1 point of torchattacks'; measured over seeds
    0–4 the two differ by 0.8 points on average (ours stronger: it redraws unchanged windows). With the paper's
    offsets (the default) the last row and column of the 8×8 image are reachable and the attack is ~9 points
    stronger.
    """
    x, y = digits.test_x, digits.test_y
    model = robust_digits_cnn
    atk = torchattacks.Square(model, norm="Linf", eps=0.15, n_queries=5000, n_restarts=1, p_init=0.8, loss="margin",
                              seed=0)
    theirs = _acc(model, _run_torchattacks(atk, x, y), y)
    reference = _acc(model, ReferenceOffsetsSquare(0.15, queries=5000, seed=0)(model, x, y), y)
    ours = _acc(model, Square(0.15, queries=5000, seed=0)(model, x, y), y)
    assert 0.4 < theirs < 0.75  # a partly robust model: the comparison is not trivial
    assert abs(reference - theirs) <= 0.01
    assert ours <= theirs + 0.01


def test_l2_matches_torchattacks_robust_accuracy(robust_digits_cnn, digits):
    """L2 ε 1.0, 1000 queries, p_init 0.3, all 360 test images, seeds 0–4: the mean robust accuracy with the
    reference offsets within 1.5 points of torchattacks'.

    The two draw different random windows, so one seed is not comparable at 1 point: over seeds 0–4 either
    implementation's robust accuracy spreads by about 1 point (3 images) around its mean (measured on this model:
    torchattacks 107–115 robust images, the reference offsets 107–117, means 0.4 points apart).
    """
    x, y = digits.test_x, digits.test_y
    model = robust_digits_cnn
    seeds = range(5)
    theirs = sum(_acc(model, _run_torchattacks(torchattacks.Square(
        model, norm="L2", eps=1.0, n_queries=1000, n_restarts=1, p_init=0.3, loss="margin", seed=seed), x, y), y)
        for seed in seeds) / len(seeds)
    reference = sum(_acc(model, ReferenceOffsetsSquare(1.0, norm="l2", queries=1000, seed=seed)(model, x, y), y)
                    for seed in seeds) / len(seeds)
    ours = sum(_acc(model, Square(1.0, norm="l2", queries=1000, seed=seed)(model, x, y), y)
               for seed in seeds) / len(seeds)
    assert 0.2 < theirs < 0.8
    assert abs(reference - theirs) <= 0.015
    assert ours <= theirs + 0.01
