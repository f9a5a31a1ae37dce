"""Learn2Perturb and PNI training (spec §4): regulariser, τ, θ_min, separate optimisers, variants, warm-ups,
EOT evaluation of the randomised model, and the checkpoint → CLI evaluation round trip."""

from __future__ import annotations

import json

import pytest
import torch

from robustlab.attacks.losses import loss_gradient
from robustlab.cli import main
from robustlab.defenses import Batch, TrainContext, build_defense
from robustlab.defenses.l2p import harmonic_number, regulariser_loss, tau_at
from robustlab.engine import Trainer
from robustlab.errors import ConfigError
from robustlab.experiment import config_from_dict
from robustlab.models import build_model
from robustlab.models.noise import alpha_parameters, noise_enabled, theta_parameters
from robustlab.runs import load_trained_model

SMALL = {"name": "noisy", "base": "resnet_v1", "base_options": {"depth": 8, "width": 0.25}}


def raw_config(tmp_path, defense, model=None, epochs=2, **data):
    return {
        "run": {"seed": 0, "epochs": epochs, "progress": False, "out_dir": str(tmp_path / "run"), "device": "cpu"},
        "data": {"name": "digits", "batch_size": 64, "train_subset": 256, "test_subset": 100, **data},
        "model": dict(model or SMALL),
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
        "defense": defense,
        "eval": {"eps": [0.1], "pgd_steps": 3, "subset": 50},
    }


def defense_and_ctx(defense_options, epoch=0):
    config_from_dict({"model": SMALL, "optim": {"lr": 0.1}, "defense": defense_options, "run": {"epochs": 10}})
    model = build_model("noisy", in_shape=(1, 8, 8), num_classes=10, base="resnet_v1",
                        base_options={"depth": 8, "width": 0.25})
    defense = build_defense(defense_options["name"], {k: v for k, v in defense_options.items() if k != "name"})
    ctx = TrainContext(device=torch.device("cpu"), dataset=None, epoch=epoch, base_lr=0.1)
    defense.setup_all(model, ctx)
    defense.on_epoch_start_all(model, ctx)
    return model, defense, ctx


def test_tau_is_the_harmonic_number_from_the_first_noise_epoch():
    assert harmonic_number(1) == 1.0 and harmonic_number(3) == pytest.approx(1 + 1 / 2 + 1 / 3)
    assert tau_at(10, 10) == 1.0
    assert tau_at(13, 10) == pytest.approx(harmonic_number(4))
    assert tau_at(13, 10, "linear") == 4.0 and tau_at(13, 10, "constant") == 1.0
    with pytest.raises(ValueError):
        tau_at(9, 10)


def test_regulariser_gradient_is_minus_gamma_over_two_tau_sqrt_theta():
    thetas = [torch.rand(3, 4, 4).add(0.05).requires_grad_(True), torch.rand(7).add(0.05).requires_grad_(True)]
    gamma, tau = 0.3, harmonic_number(3)
    regulariser_loss(thetas, gamma, tau).backward()
    for t in thetas:
        assert torch.allclose(t.grad, -gamma / (2 * tau * t.detach().sqrt()), rtol=1e-5)
    value = regulariser_loss([t.detach() for t in thetas], gamma, tau)
    assert value.item() == pytest.approx(-(gamma / tau) * sum(t.detach().sqrt().sum().item() for t in thetas),
                                         rel=1e-5)


@pytest.mark.parametrize("variant", ["l2p", "l2p_r"])
def test_one_iteration_regulariser_step_then_loss_step_only_for_l2p(variant):
    gamma, lr = 0.5, 0.1
    model, defense, ctx = defense_and_ctx({"name": "l2p", "variant": variant, "gamma": gamma, "noise_lr": lr,
                                           "noise_momentum": 0.0, "noise_start_epoch": 2, "warmup_epochs": 5,
                                           "theta_min": 1e-4}, epoch=3)
    assert defense.tau == pytest.approx(harmonic_number(2))  # second noise epoch
    theta0 = [t.detach().clone() for t in defense.noise_params]
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    batch = Batch(x, y)
    batch.x_adv = defense.craft(model, batch, ctx)  # a warm-up epoch: none
    defense.update_auxiliaries(model, batch, ctx)
    after_reg = [t.detach().clone() for t in defense.noise_params]
    for t0, t1 in zip(theta0, after_reg):  # SGD step on −(γ/τ)Σ√θ: θ + lr·γ/(2τ√θ)
        assert torch.allclose(t1, t0 + lr * gamma / (2 * defense.tau * t0.sqrt()), rtol=1e-5)
    assert all(t.grad is None for t in defense.noise_params)  # the main backward starts from empty θ gradients
    out = defense.total_loss(model, batch, ctx)
    out.loss.backward()
    loss_grads = [t.grad.clone() for t in defense.noise_params]
    defense.after_backward_all(ctx)
    defense.after_step_all(model, ctx)
    for t1, g, t2 in zip(after_reg, loss_grads, defense.noise_params):
        expected = (t1 - lr * g) if variant == "l2p" else t1  # L2P-R: θ is moved by the regulariser only
        assert torch.allclose(t2.detach(), expected.clamp(min=1e-4), atol=1e-6)


@pytest.mark.slow
def test_theta_never_falls_below_theta_min_and_weights_and_theta_have_separate_optimisers(tmp_path):
    defense = {"name": "l2p", "gamma": 0.0, "noise_lr": 50.0, "theta_min": 0.05, "noise_start_epoch": 0,
               "warmup_epochs": 1,
               "attack": {"eps": 0.1, "steps": 2, "step_size": 0.01}}
    trainer = Trainer(config_from_dict(raw_config(tmp_path, defense)), log=lambda _: None)
    thetas = {id(t) for t in theta_parameters(trainer.model)}
    assert thetas and not thetas & {id(p) for p in trainer.main_params}  # W optimiser: no θ
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 1e-4
    noise_opt = trainer.defense.noise_opt
    assert {id(p) for g in noise_opt.param_groups for p in g["params"]} == thetas
    assert noise_opt.param_groups[0]["weight_decay"] == 0.0 and noise_opt.param_groups[0]["nesterov"]
    seen = []
    original = trainer.defense.after_step

    def record(model, ctx):
        original(model, ctx)
        seen.append(min(t.min().item() for t in theta_parameters(model)))

    trainer.defense.after_step = record
    history = trainer.fit().history
    assert min(seen) >= 0.05 and min(seen) == pytest.approx(0.05)  # the huge lr pushes θ onto the clamp
    assert history[-1]["theta_min"] >= 0.05 and "theta_mean" in history[-1] and "tau" in history[-1]


def test_warmups_noise_off_then_on_then_pgd_at(tmp_path):
    defense = {"name": "l2p", "noise_start_epoch": 1, "warmup_epochs": 2, "gamma": 0.01,
               "attack": {"eps": 0.1, "steps": 2, "step_size": 0.01}}
    history = Trainer(config_from_dict(raw_config(tmp_path, defense, epochs=3)), log=lambda _: None).fit().history
    first, second, third = history
    assert first["noise_on"] == 0 and first["theta_mean"] == pytest.approx(0.25)  # θ untouched without noise
    assert second["noise_on"] == 1 and second["theta_mean"] != pytest.approx(0.25, abs=1e-6)
    layers = sorted(k for k in first if k.startswith("theta_") and k.endswith("_std"))
    assert layers and all(first[k] == 0 for k in layers)  # θ₀ everywhere: no spread before the noise is on
    assert any(second[k] > 0 for k in layers)  # learned per element once on
    assert "train_ce_adv" not in second and third["train_eps"] == 0.1 and "train_ce_adv" in third


def test_attack_on_predicted_labels_option():
    model, defense, ctx = defense_and_ctx({"name": "l2p", "labels": "predicted", "warmup_epochs": 0,
                                           "noise_start_epoch": 0})
    seen = {}

    def fake_attack(m, x, y):
        seen["y"] = y
        return x

    defense.attack = fake_attack
    x, y = torch.rand(8, 1, 8, 8), torch.full((8,), 3)
    with noise_enabled(model, False), torch.no_grad():
        predicted = model.eval()(x).argmax(1)  # the predictions come from the model in the attack's mode (eval)
        model.train()
        defense.step(model, Batch(x, y), ctx)
    assert torch.equal(seen["y"], predicted)


def test_bad_options_and_models_without_noise(tmp_path):
    for bad in ({"theta_min": 0.0}, {"gamma": -1.0}, {"noise_lr": -0.1}, {"variant": "l2p_x"}, {"tau": "log"}):
        with pytest.raises(ConfigError):
            build_defense("l2p", bad)
    raw = raw_config(tmp_path, {"name": "l2p"}, model={"name": "resnet_v1", "depth": 8, "width": 0.25})
    with pytest.raises(ConfigError, match="noise = 'l2p'"):
        Trainer(config_from_dict(raw), log=lambda _: None)
    raw = raw_config(tmp_path, {"name": "pni"}, model={**SMALL})  # θ modules, but PNI needs weight noise
    with pytest.raises(ConfigError, match="noise = 'pni'"):
        Trainer(config_from_dict(raw), log=lambda _: None)


def test_eot_averaging_reduces_gradient_variance():
    torch.manual_seed(0)
    model = build_model("noisy", in_shape=(1, 8, 8), num_classes=10, base="resnet_v1",
                        base_options={"depth": 8, "width": 0.25}, theta0=1.0).eval()
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))

    def spread(samples):
        grads = torch.stack([loss_gradient(model, x, y, samples=samples).grad for _ in range(12)])
        return grads.var(0).mean().item()

    one, sixteen = spread(1), spread(16)
    assert sixteen < one / 4  # ~1/16 in expectation
    with noise_enabled(model, False):
        assert spread(1) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.slow
def test_pni_trains_logs_alpha_and_loads_back(tmp_path):
    model = {"name": "noisy", "base": "resnet_v1", "base_options": {"depth": 8, "width": 0.25}, "noise": "pni"}
    defense = {"name": "pni", "warmup_epochs": 0, "attack": {"eps": 0.1, "steps": 2, "step_size": 0.01}}
    trainer = Trainer(config_from_dict(raw_config(tmp_path, defense, model=model, epochs=1)), log=lambda _: None)
    assert not {id(a) for a in alpha_parameters(trainer.model)} & {id(p) for p in trainer.main_params}
    row = trainer.fit().history[-1]
    assert row["alpha_mean"] != pytest.approx(0.25, abs=1e-6) and "train_ce_adv" in row
    loaded, *_ = load_trained_model(str(tmp_path / "run"))
    assert all(torch.equal(a, b) for a, b in zip(alpha_parameters(loaded), alpha_parameters(trainer.model)))


@pytest.mark.slow
def test_trained_l2p_model_loads_back_and_evaluates_through_the_cli(tmp_path, capsys):
    defense = {"name": "l2p", "noise_start_epoch": 0, "warmup_epochs": 0, "gamma": 0.01,
               "attack": {"eps": 0.1, "steps": 2, "step_size": 0.01}}
    trainer = Trainer(config_from_dict(raw_config(tmp_path, defense, epochs=1)), log=lambda _: None)
    trainer.fit()
    trained = theta_parameters(trainer.model)
    assert any(not torch.all(t == 0.25) for t in trained)
    model, config, _data, state = load_trained_model(str(tmp_path / "run"))
    loaded = theta_parameters(model)
    assert len(loaded) == len(trained) and all(torch.equal(a, b) for a, b in zip(loaded, trained))
    assert "noise_opt" in state["aux_optimizers"]
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--suite", "quick", "--subset", "30", "--pgd-steps", "2",
                 "--eot-samples", "2", "--attacks", "pgd", "--out", str(tmp_path / "eval.json")]) == 0
    printed = capsys.readouterr().out
    assert "randomised model, adding EOT-PGD" in printed
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["randomised"] is True
