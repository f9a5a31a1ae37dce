"""Standard training, FGSM-AT (AT²L eq. 1) and PGD-AT losses on hand-checked cases."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from robustlab.defenses import Batch, TrainContext, build_defense
from robustlab.errors import ConfigError


def ctx(epoch=0):
    return TrainContext(device=torch.device("cpu"), dataset=None, epoch=epoch)


def test_fgsm_at_loss_is_equation_1(trained_digits_mlp, digits):
    model, x, y = trained_digits_mlp, digits.test_x[:32], digits.test_y[:32]
    lam, eps = 0.3, 0.1
    defense = build_defense("fgsm_at", {"lam": lam, "attack": {"eps": eps}})
    defense.setup(model, ctx())
    defense.on_epoch_start(model, ctx())
    model.eval()
    out = defense.step(model, Batch(x, y), ctx())
    x_req = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x_req), y, reduction="sum"), x_req)
    x_adv = (x + eps * g.sign()).clamp(0, 1)
    k = len(y)
    expected = (F.cross_entropy(model(x), y, reduction="sum") + lam * F.cross_entropy(model(x_adv), y, reduction="sum")) / ((1 + lam) * k)
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert torch.allclose(out.x_adv, x_adv)


def test_pgd_at_weights_and_adversarial_only_skips_clean_pass(trained_digits_mlp, digits):
    model, x, y = trained_digits_mlp, digits.test_x[:32], digits.test_y[:32]
    madry = build_defense("pgd_at", {"attack": {"eps": 0.1, "steps": 3}})
    madry.setup(model, ctx())
    madry.on_epoch_start(model, ctx())
    out = madry.step(model, Batch(x, y), ctx())
    assert out.logits_clean is None and "ce_clean" not in out.metrics
    assert torch.allclose(out.loss, F.cross_entropy(model(out.x_adv), y))
    mixed = build_defense("pgd_at", {"mix": "weighted", "alpha": 0.25, "beta": 0.75,
                                     "attack": {"eps": 0.1, "steps": 3}})
    mixed.setup(model, ctx())
    mixed.on_epoch_start(model, ctx())
    out = mixed.step(model, Batch(x, y), ctx())
    expected = 0.25 * F.cross_entropy(model(x), y) + 0.75 * F.cross_entropy(model(out.x_adv), y)
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert (out.x_adv - x).abs().max() <= 0.1 + 1e-6


def test_warmup_is_clean_and_eps_ramps_linearly(trained_digits_mlp, digits):
    model, x, y = trained_digits_mlp, digits.test_x[:16], digits.test_y[:16]
    defense = build_defense("pgd_at", {"warmup_epochs": 2, "eps_ramp_epochs": 3, "attack": {"eps": 0.3}})
    assert [round(defense.epoch_eps(e), 6) for e in range(6)] == [0.0, 0.0, 0.1, 0.2, 0.3, 0.3]
    defense.on_epoch_start(model, ctx(epoch=1))
    out = defense.step(model, Batch(x, y), ctx(epoch=1))
    assert out.x_adv is None and torch.allclose(out.loss, F.cross_entropy(model(x), y))


def test_bad_defense_options():
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        build_defense("pgd_at", {"attack": {"steps": 0}})
    with pytest.raises(ConfigError, match=">= 0"):
        build_defense("fgsm_at", {"lam": -1.0})
