"""FGSM and PGD-L∞: the threat model is respected, the model is left as found, and the attacks work."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.attacks import FGSM, PGD, build_attack, model_mode
from robustlab.errors import ConfigError
from robustlab.evaluation.outcome import accuracy, attack_outcome


@pytest.fixture
def batch(digits):
    return digits.test_x[:200], digits.test_y[:200]


@pytest.mark.parametrize("attack", [FGSM(0.1), PGD(0.1, steps=10, step_size=0.02), PGD(0.1, steps=5, restarts=2)])
def test_perturbation_within_budget_and_box(trained_digits_mlp, batch, attack):
    x, y = batch
    x_adv = attack(trained_digits_mlp, x, y)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= attack.eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_attack_restores_each_module_mode_and_leaves_no_parameter_gradients(trained_digits_mlp, batch):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.5), nn.Linear(32, 10))
    model.train()
    model[2].eval()  # a mixed state must come back exactly
    x, y = batch
    PGD(0.1, steps=3)(model, x, y)
    assert [m.training for m in model] == [True, True, False, True]
    assert all(p.grad is None for p in model.parameters())


def test_attacks_run_with_parameters_frozen_and_restore_each_flag(batch):
    from robustlab.attacks import DeepFool
    from robustlab.modes import parameters_frozen

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    model[3].bias.requires_grad_(False)  # a deliberately frozen parameter stays frozen
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(any(p.requires_grad for p in m.parameters())))
    x, y = batch
    PGD(0.1, steps=2)(model, x, y)
    DeepFool(max_iter=2)(model, x, y)
    assert seen and not any(seen)  # no forward pass inside an attack records parameter gradients
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, False]
    with pytest.raises(RuntimeError):
        with parameters_frozen(model):
            raise RuntimeError("boom")
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, False]  # restored on errors too


def test_model_mode_context_sets_and_restores():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    with model_mode(model, "eval"):
        assert not model.training and not model[1].training
    assert model.training
    with pytest.raises(ValueError):
        with model_mode(model, "sideways"):
            pass


def test_fgsm_is_exactly_one_signed_gradient_step(trained_digits_mlp, batch):
    x, y = batch
    x = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(trained_digits_mlp(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    expected = (x.detach() + 0.05 * grad.sign()).clamp(0, 1)
    assert torch.allclose(FGSM(0.05)(trained_digits_mlp, x.detach(), y), expected)


def test_attacks_reduce_accuracy_and_pgd_is_stronger_than_fgsm(trained_digits_mlp, digits):
    x, y = digits.test_x, digits.test_y
    clean = accuracy(trained_digits_mlp, x, y)
    fgsm = accuracy(trained_digits_mlp, x, y, attack=FGSM(0.1))
    pgd = accuracy(trained_digits_mlp, x, y, attack=PGD(0.1, steps=20, step_size=0.01))
    assert clean > 0.9
    assert fgsm < clean - 0.2
    assert pgd <= fgsm and pgd < 0.5 * clean


def test_targeted_pgd_reaches_the_target(trained_digits_mlp, batch):
    x, y = batch
    target = (y + 1) % 10
    x_adv = PGD(0.3, steps=30, step_size=0.02, targeted=True)(trained_digits_mlp, x, target)
    hit = trained_digits_mlp(x_adv).argmax(1).eq(target).float().mean().item()
    assert hit > 0.8


def test_restarts_keep_the_first_success(trained_digits_mlp, batch):
    """Same seed: the first of five restarts is the single run, so every example it fooled stays fooled, and the
    four further random starts fool strictly more (a restart that did nothing would leave them equal)."""
    x, y = batch
    torch.manual_seed(0)
    one = attack_outcome(trained_digits_mlp, x, y, PGD(0.05, steps=3, step_size=0.02)).correct
    torch.manual_seed(0)
    five = attack_outcome(trained_digits_mlp, x, y, PGD(0.05, steps=3, step_size=0.02, restarts=5)).correct
    assert not (five & ~one).any()  # fooled once, fooled still
    assert five.sum() < one.sum()


def test_zero_epsilon_changes_nothing(trained_digits_mlp, batch):
    x, y = batch
    assert torch.equal(PGD(0.0, steps=3)(trained_digits_mlp, x, y), x)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="epsilon"):
        PGD(-0.1)
    with pytest.raises(ValueError, match="steps"):
        PGD(0.1, steps=0)
    with pytest.raises(ConfigError, match="did you mean 'pgd'"):
        build_attack("pdg", 0.1)
    with pytest.raises(ValueError, match="one label per example"):
        FGSM(0.1)(nn.Linear(64, 10), torch.zeros(3, 64), torch.zeros(2, dtype=torch.long))
