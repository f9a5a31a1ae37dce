"""TRADES, MART, FGSM-RS fast AT (with the one-cycle schedule) and AWP: losses by hand, their attacks, and short
training runs that beat standard training under PGD."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import PGD
from robustlab.attacks.fgsm import RandomStartFGSM
from robustlab.attacks.kl import KLAttack
from robustlab.attacks.losses import kl_from_clean
from robustlab.config import ScheduleConfig
from robustlab.defenses import Batch, TrainContext, build_defense
from robustlab.defenses.awp import weight_perturbation
from robustlab.defenses.mart import mart_loss
from robustlab.defenses.trades import trades_loss
from robustlab.engine import Trainer
from robustlab.errors import ConfigError
from robustlab.evaluation.outcome import accuracy
from robustlab.experiment import config_from_dict
from robustlab.schedule import lr_factor

LOGITS_CLEAN = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
LOGITS_ADV = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
Y = torch.tensor([0, 1])


def softmax_row(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def kl_by_hand(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_trades_loss_by_hand():
    beta = 6.0
    p = [softmax_row(r) for r in LOGITS_CLEAN.tolist()]
    q = [softmax_row(r) for r in LOGITS_ADV.tolist()]
    ce = -(math.log(p[0][0]) + math.log(p[1][1])) / 2
    kl = (kl_by_hand(p[0], q[0]) + kl_by_hand(p[1], q[1])) / 2
    loss, ce_out, kl_out = trades_loss(LOGITS_CLEAN, LOGITS_ADV, Y, beta)
    assert ce_out.item() == pytest.approx(ce, rel=1e-6)
    assert kl_out.item() == pytest.approx(kl, rel=1e-6)
    assert loss.item() == pytest.approx(ce + beta * kl, rel=1e-6)
    same, _, zero = trades_loss(LOGITS_CLEAN, LOGITS_CLEAN, Y, beta)
    assert zero.item() == pytest.approx(0.0, abs=1e-7) and same.item() == pytest.approx(ce, rel=1e-6)


def test_mart_loss_by_hand():
    lam = 6.0
    p = [softmax_row(r) for r in LOGITS_CLEAN.tolist()]
    q = [softmax_row(r) for r in LOGITS_ADV.tolist()]
    bce = []
    for i, yi in enumerate(Y.tolist()):
        strongest_wrong = max(v for k, v in enumerate(q[i]) if k != yi)
        bce.append(-math.log(q[i][yi]) - math.log(1 - strongest_wrong))
    kl = [kl_by_hand(p[i], q[i]) * (1 - p[i][Y[i]]) for i in range(2)]
    loss, bce_out, kl_out = mart_loss(LOGITS_CLEAN, LOGITS_ADV, Y, lam)
    assert bce_out.item() == pytest.approx(sum(bce) / 2, rel=1e-6)
    assert kl_out.item() == pytest.approx(sum(kl) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(sum(bce) / 2 + lam * sum(kl) / 2, rel=1e-6)


def linear_model(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, classes))


def test_kl_attack_stays_in_the_ball_and_raises_the_kl_from_the_clean_prediction():
    model = linear_model()
    x = torch.rand(32, 1, 4, 4) * 0.6 + 0.2
    y = torch.zeros(32, dtype=torch.long)
    x_adv = KLAttack(0.1, steps=10, step_size=0.025)(model, x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    p_clean = F.softmax(model(x), dim=1).detach()
    noise = (x + 0.1 * torch.randn_like(x).sign()).clamp(0, 1)
    with torch.no_grad():
        kl_adv, kl_noise = kl_from_clean(model(x_adv), p_clean), kl_from_clean(model(noise), p_clean)
    assert kl_adv.mean() > 2 * kl_noise.mean()


def test_fgsm_rs_moves_every_pixel_by_the_gradient_sign_within_the_ball():
    model = linear_model(classes=2)
    x = torch.full((8, 1, 4, 4), 0.5)
    y = torch.zeros(8, dtype=torch.long)
    eps = 0.1
    torch.manual_seed(1)
    x_adv = RandomStartFGSM(eps, step_ratio=1.25)(model, x, y)
    weight = model[1].weight.detach()
    sign = (weight[1] - weight[0]).sign().view(1, 1, 4, 4)  # ∇ₓ CE(·, 0) = p₁ (w₁ − w₀) for two classes
    delta = x_adv - x
    assert delta.abs().max() <= eps + 1e-6
    assert not torch.equal(x_adv[0], x_adv[1])  # the random start differs per example
    # from any start in [−ε, ε], a step of 1.25ε along the sign ends on its side by at least 0.25ε
    assert ((delta * sign) >= 0.25 * eps - 1e-6).all()


def test_one_cycle_rises_to_the_peak_and_falls_to_zero():
    schedule = ScheduleConfig(name="one_cycle", peak=0.4)
    assert lr_factor(schedule, 0.0, 10) == 0.0
    assert lr_factor(schedule, 2.0, 10) == pytest.approx(0.5)
    assert lr_factor(schedule, 4.0, 10) == pytest.approx(1.0)
    assert lr_factor(schedule, 7.0, 10) == pytest.approx(0.5)
    assert lr_factor(schedule, 10.0, 10) == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="schedule.peak"):
        config_from_dict({"schedule": {"name": "one_cycle", "peak": 1.0}})


def test_the_engine_updates_a_one_cycle_rate_every_step(tmp_path):
    config = config_from_dict({
        "run": {"epochs": 2, "progress": False, "out_dir": str(tmp_path / "run")},
        "data": {"name": "digits", "batch_size": 100, "train_subset": 400, "test_subset": 50},
        "model": {"name": "mlp_a3t"}, "optim": {"name": "sgd", "lr": 0.1},
        "schedule": {"name": "one_cycle", "peak": 0.4}})
    history = Trainer(config, log=lambda _: None).fit().history
    # the rate of the last step of each epoch: progress 4/8 then 8/8 of training (an epoch-wise value would be
    # the factor at the epoch's start: 0 and 1.25)
    assert history[0]["lr"] == pytest.approx(0.1 * (1 - 0.5) / 0.6)
    assert history[1]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_awp_perturbs_each_weight_tensor_by_gamma_times_its_norm_along_the_loss_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    x, y = torch.rand(16, 1, 4, 4), torch.randint(0, 3, (16,))
    stats = model[2].running_mean.clone()
    gamma = 0.01

    class CE:
        def __init__(self, loss):
            self.loss = loss

    v = weight_perturbation(model, lambda m: CE(F.cross_entropy(m(x), y)), gamma)
    assert sorted(v) == ["1.weight", "4.weight"]  # weight matrices only: no biases, no batch-norm parameters
    assert torch.equal(model[2].running_mean, stats)  # the extra pass leaves the statistics alone
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), [model[1].weight, model[4].weight])
    for name, grad in zip(["1.weight", "4.weight"], grads):
        weight = dict(model.named_parameters())[name]
        assert v[name].norm().item() == pytest.approx(gamma * weight.norm().item(), rel=1e-5)
        assert F.cosine_similarity(v[name].flatten(), grad.flatten(), dim=0).item() == pytest.approx(1.0, abs=1e-5)


def test_awp_steps_from_the_unperturbed_weights_with_the_gradient_at_the_perturbed_ones():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    defense = build_defense("awp", {"gamma": 0.05, "base_options": {"attack": {"eps": 0.1, "steps": 2,
                                                                                "random_start": False}}})
    ctx = TrainContext(device=torch.device("cpu"), dataset=None, epoch=0)
    defense.on_epoch_start_all(model, ctx)
    before = model[1].weight.detach().clone()
    out = defense.step(model, Batch(x, y), ctx)
    perturbed = model[1].weight.detach().clone()
    assert (perturbed - before).norm().item() == pytest.approx(0.05 * before.norm().item(), rel=1e-5)
    grad = torch.autograd.grad(out.loss, model[1].weight)[0]
    model[1].weight.grad = grad
    with torch.no_grad():
        model[1].weight -= 0.1 * model[1].weight.grad
    defense.after_step(model, ctx)
    assert torch.allclose(model[1].weight.detach(), before - 0.1 * grad, atol=1e-6)


@pytest.mark.parametrize("bad, message", [
    ({"name": "awp", "base": "mart"}, "defense.base must be one of"),
    ({"name": "awp", "base_options": {"stepz": 3}}, "defense.base_options.stepz"),
    ({"name": "trades", "attack": {"steps": 0}}, "steps must be >= 1"),
    ({"name": "trades", "attack": {"stepz": 3}}, "no option 'stepz' \\(did you mean 'steps'\\?\\)"),
    ({"name": "mart", "lam": -1.0}, "defense.lam must be >= 0"),
    ({"name": "fgsm_rs", "attack": {"eps": 1.5}}, "epsilon above 1"),
])
def test_invalid_options_fail_at_load_time(bad, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"defense": bad})


def train(tmp_path, name: str, defense: dict, schedule: dict | None = None):
    config = config_from_dict({
        "run": {"seed": 0, "epochs": 4, "progress": False, "out_dir": str(tmp_path / name)},
        "data": {"name": "mnist5k", "batch_size": 64, "train_subset": 2000, "test_subset": 300},
        "model": {"name": "lenet5"}, "optim": {"name": "adam", "lr": 0.001},
        "schedule": schedule or {}, "defense": defense})
    trainer = Trainer(config, log=lambda _: None)
    trainer.fit()
    return trainer.model.eval(), trainer.dataset


@pytest.fixture(scope="module")
def standard_under_pgd(tmp_path_factory):
    model, data = train(tmp_path_factory.mktemp("standard"), "standard", {"name": "standard"})
    return accuracy(model, data.test_x, data.test_y, attack=PGD(EPS, steps=20)), data


EPS = 0.2


@pytest.mark.slow
@pytest.mark.parametrize("name, defense, schedule", [
    ("trades", {"name": "trades", "attack": {"eps": EPS, "steps": 3}, "beta": 6.0, "eps_ramp_epochs": 2}, None),
    ("mart", {"name": "mart", "attack": {"eps": EPS, "steps": 3}, "lam": 6.0, "eps_ramp_epochs": 2}, None),
    ("fgsm_rs", {"name": "fgsm_rs", "attack": {"eps": EPS}}, {"name": "one_cycle"}),
    ("awp", {"name": "awp", "gamma": 1e-3, "base_options": {"attack": {"eps": EPS, "steps": 3},
                                                              "eps_ramp_epochs": 2}}, None),
])
def test_each_baseline_beats_standard_training_under_pgd(tmp_path, standard_under_pgd, name, defense, schedule):
    pgd_standard, data = standard_under_pgd
    model, _ = train(tmp_path, name, defense, schedule)
    x, y = data.test_x, data.test_y
    assert accuracy(model, x, y) > 0.8
    pgd_defended = accuracy(model, x, y, attack=PGD(EPS, steps=20))
    assert pgd_defended > pgd_standard + 0.2, (name, pgd_defended, pgd_standard)
