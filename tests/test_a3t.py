"""A3T (spec §5): the encoder/residual split, where each loss's gradient goes, the four variants, composition."""

from __future__ import annotations

import copy
import json
import types

import pytest
import torch
import torch.nn.functional as F

from robustlab.checkpoint import load_checkpoint
from robustlab.defenses import Batch, TrainContext, build_defense
from robustlab.defenses.feature_discriminator import (Discriminator, FeatureDiscriminatorOptions,
                                                      FeatureDiscriminatorTerm)
from robustlab.engine import Trainer
from robustlab.errors import ConfigError
from robustlab.experiment import config_from_dict
from robustlab.models import build_model
from robustlab.models.split import FeatureSplit


# α and β of the paper's four variants (Table 1)
VARIANTS = {"simple": {"alpha": 1.0, "beta": 0.0}, "at": {"alpha": 0.5, "beta": 0.0},
            "a2t": {"alpha": 1.0, "beta": 1.0}, "a3t": {"alpha": 0.5, "beta": 1.0}}


def ctx_for(dataset, epoch=0):
    return TrainContext(device=torch.device("cpu"), dataset=dataset, epoch=epoch)


def fgsm(model, x, y, eps):
    x_req = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x_req), y, reduction="sum"), x_req)
    return (x + eps * g.sign()).clamp(0, 1)


def grads(module):
    return {name: p.grad for name, p in module.named_parameters()}


@pytest.fixture
def mlp(trained_digits_mlp):
    model = copy.deepcopy(trained_digits_mlp)
    model.zero_grad(set_to_none=True)
    return model


@pytest.mark.parametrize("layer, encoder_params, residual_params", [
    ("encoder", ("fc1", "fc2"), ("fc3", "fc4")),
    ("features", ("fc1", "fc2", "fc3"), ("fc4",)),
    ("fc2", ("fc1", "fc2"), ("fc3", "fc4")),  # a named submodule: its output, before the activation
])
def test_encoder_term_gradient_reaches_the_encoder_only(mlp, digits, layer, encoder_params, residual_params):
    x, y = digits.test_x[:32], digits.test_y[:32]
    term = FeatureDiscriminatorTerm(FeatureDiscriminatorOptions(layer=layer))
    term.setup(mlp, ctx_for(digits))
    z_adv = FeatureSplit(mlp, layer).encoder(fgsm(mlp, x, y, 0.25))
    term.encoder_loss(z_adv).backward()
    g = grads(mlp)
    for name in encoder_params:
        assert g[f"{name}.weight"] is not None and g[f"{name}.weight"].abs().sum() > 0, name
    for name in residual_params:
        assert g[f"{name}.weight"] is None and g[f"{name}.bias"] is None, name
    assert all(v is None for v in grads(term.disc).values())  # D is not trained by the encoder's term


def test_discriminator_loss_does_not_reach_the_encoder(mlp, digits):
    x, y = digits.test_x[:32], digits.test_y[:32]
    term = FeatureDiscriminatorTerm(FeatureDiscriminatorOptions(layer="encoder"))
    term.setup(mlp, ctx_for(digits))
    split = FeatureSplit(mlp, "encoder")
    z, _ = split.forward(x)  # with the graph to the encoder: the D step must detach it
    z_adv, _ = split.forward(fgsm(mlp, x, y, 0.25))
    before = copy.deepcopy(term.disc.state_dict())
    metrics = term.discriminator_step(z, z_adv)
    assert all(v is None for v in grads(mlp).values())
    assert all(v is not None for v in grads(term.disc).values())
    assert any(not torch.equal(before[k], v) for k, v in term.disc.state_dict().items())  # D took a step
    assert set(metrics) == {"d_loss", "d_acc_clean", "d_acc_adv"}


def test_main_backward_leaves_discriminator_gradients_alone(mlp, digits):
    """The engine zeroes only the main optimiser: the classifier's backward must not add to D's .grad."""
    x, y = digits.test_x[:32], digits.test_y[:32]
    defense = build_defense("a3t", {"alpha": 0.5, "beta": 1.0, "layer": "encoder"})
    defense.setup_all(mlp, ctx_for(digits))
    out = defense.step(mlp, Batch(x, y), ctx_for(digits))
    d_grads = {k: v.clone() for k, v in grads(defense.discriminator.disc).items()}
    out.loss.backward()
    for k, v in grads(defense.discriminator.disc).items():
        assert torch.equal(v, d_grads[k]), k


@pytest.mark.parametrize("variant", ["simple", "at", "a2t", "a3t"])
def test_four_variants_loss_by_hand(mlp, digits, variant):
    """L = α CE(x) + (1−α) CE(x_adv) − β log D'(E(x_adv)), D' = D after one Adam step on L_D (dropout 0)."""
    x, y = digits.test_x[:32], digits.test_y[:32]
    ab = dict(VARIANTS[variant])
    eps = 0.25
    defense = build_defense("a3t", {**ab, "layer": "encoder", "dropout": 0.0, "attack": {"eps": eps}})
    ctx = ctx_for(digits)
    defense.setup_all(mlp, ctx)
    d0 = copy.deepcopy(defense.discriminator.disc)
    out = defense.step(mlp, Batch(x, y), ctx)

    x_adv = fgsm(mlp, x, y, eps)
    assert torch.allclose(out.x_adv, x_adv)
    with torch.no_grad():
        z, z_adv = mlp.encoder(x), mlp.encoder(x_adv)
    l_d = -torch.log(torch.sigmoid(d0(z))).mean() - torch.log(1 - torch.sigmoid(d0(z_adv))).mean()
    assert torch.allclose(out.metrics["feature_discriminator_d_loss"], l_d, atol=1e-5)
    opt = torch.optim.Adam(d0.parameters(), lr=1e-3)
    opt.zero_grad()
    l_d.backward()
    opt.step()
    d1 = defense.discriminator.disc
    for k, v in d0.state_dict().items():
        # Adam's first step is lr·g/(|g| + 1e-8): where |g| ~ 1e-8 rounding moves it, so compare the bulk.
        diff = (v - d1.state_dict()[k]).abs()
        assert diff.max() <= 2e-3 and (diff > 1e-6).float().mean() < 0.01, k
    with torch.no_grad():
        expected = (ab["alpha"] * F.cross_entropy(mlp(x), y) + (1 - ab["alpha"]) * F.cross_entropy(mlp(x_adv), y)
                    - ab["beta"] * torch.log(torch.sigmoid(d1(z_adv))).mean())
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert ("feature_discriminator_enc_loss" in out.metrics) == (ab["beta"] > 0)


def test_a3t_trains_and_logs_discriminator_accuracies(tmp_path):
    config = config_from_dict({
        "run": {"seed": 1, "epochs": 2, "progress": False, "out_dir": str(tmp_path / "run")},
        "data": {"name": "digits", "batch_size": 128, "train_subset": 512, "test_subset": 200},
        "model": {"name": "mlp_a3t"},
        "optim": {"name": "adam", "lr": 0.001},
        "defense": {"name": "a3t", "layer": "encoder", "eval_subset": 100, "attack": {"eps": 0.1}},
    })
    trainer = Trainer(config, log=lambda _: None)
    history = trainer.fit().history
    assert len(history) == 2
    for row in history:
        assert {"train_feature_discriminator_d_acc_clean", "train_feature_discriminator_d_acc_adv"} <= set(row)
        assert row["train_feature_discriminator_enc_loss"] > 0 and "train_acc_adv" in row
    assert history[-1]["test_acc"] > 0.3
    # the logged test-data accuracies of D, recomputed independently from the trained model and D
    model, disc = trainer.model.eval(), trainer.defense.discriminator.disc.eval()
    x, y = trainer.dataset.test_x[:100], trainer.dataset.test_y[:100]
    x_adv = fgsm(model, x, y, 0.1)
    with torch.no_grad():
        clean = (disc(model.encoder(x)) > 0).float().mean().item()
        adv = (disc(model.encoder(x_adv)) < 0).float().mean().item()
    assert history[-1]["feature_discriminator_val_d_acc_clean"] == pytest.approx(clean, abs=1e-6)
    assert history[-1]["feature_discriminator_val_d_acc_adv"] == pytest.approx(adv, abs=1e-6)


def test_pgd_at_plus_discriminator_term_checkpoints_and_resumes(tmp_path):
    raw = {
        "run": {"seed": 2, "epochs": 1, "progress": False, "out_dir": str(tmp_path / "run")},
        "data": {"name": "digits", "batch_size": 128, "train_subset": 384, "test_subset": 100},
        "model": {"name": "model_d", "hidden": 64, "depth": 2},
        "optim": {"name": "adam", "lr": 0.002},
        "defense": {"name": "pgd_at", "attack": {"eps": 0.1, "steps": 2},
                    "terms": [{"name": "feature_discriminator", "layer": "body.3", "beta": 0.5, "hidden": [16],
                               "eval_subset": 50, "attack": {"name": "pgd", "eps": 0.1, "steps": 2}}]},
    }
    trainer = Trainer(config_from_dict(json.loads(json.dumps(raw))), log=lambda _: None)
    term = trainer.defense.terms[0]
    assert term.disc.net[0].in_features == 64  # sized from the width of body.3 (the second hidden layer)
    trainer.fit()
    row = trainer.history[-1]
    assert {"train_feature_discriminator_d_loss", "train_feature_discriminator_enc_loss",
            "feature_discriminator_val_d_acc_adv"} <= set(row)
    _, state, _ = load_checkpoint(tmp_path / "run")
    saved = state["aux_modules"]["term0_feature_discriminator.disc"]
    assert torch.equal(saved["net.0.weight"], term.disc.net[0].weight)
    assert "term0_feature_discriminator.opt" in state["aux_optimizers"]
    raw["run"]["epochs"] = 2
    resumed = Trainer(config_from_dict(raw), resume=True, log=lambda _: None)
    assert torch.equal(resumed.defense.terms[0].disc.net[0].weight, term.disc.net[0].weight)
    assert resumed.defense.terms[0].opt.state_dict()["state"]  # Adam moments restored


def test_term_crafts_its_own_examples_when_the_host_has_none(mlp, digits):
    x, y = digits.test_x[:32], digits.test_y[:32]
    defense = build_defense("standard", {"terms": [{"name": "feature_discriminator", "attack": {"eps": 0.1}}]})
    defense.setup_all(mlp, ctx_for(digits))
    out = defense.step(mlp, Batch(x, y), ctx_for(digits))
    assert out.x_adv is None and out.metrics["feature_discriminator_enc_loss"] > 0
    out.loss.backward()
    assert mlp.fc4.weight.grad is not None  # the host's CE; the term adds to fc1–fc3 (features split)


@pytest.mark.parametrize("name, layer, encoder_params, residual_params", [
    ("lenet5", "conv.3", ("conv.0", "conv.3"), ("fc1", "fc2")),
    ("model_a", "fc1", ("conv.0", "conv.2", "fc1"), ("fc2",)),
])
def test_split_at_a_named_layer_of_a_cnn(name, layer, encoder_params, residual_params):
    torch.manual_seed(0)
    model = build_model(name, in_shape=(1, 28, 28), num_classes=10).eval()
    x = torch.rand(4, 1, 28, 28)
    split = FeatureSplit(model, layer)
    after = model.fc1 if name == "lenet5" else model.fc2
    calls = []
    handle = after.register_forward_hook(lambda *_: calls.append(1))
    z = split.encoder(x)
    handle.remove()
    assert not calls  # the forward pass stops at the split layer
    z_one, logits = split.forward(x)
    assert torch.allclose(z_one, z) and torch.allclose(logits, model(x))
    assert torch.allclose(split.residual(z, x), model(x), atol=1e-6)
    dataset = types.SimpleNamespace(train_x=x)
    term = FeatureDiscriminatorTerm(FeatureDiscriminatorOptions(layer=layer))
    term.setup(model, ctx_for(dataset))
    assert term.disc.net[0].in_features == z[0].numel()
    term.encoder_loss(z).backward()
    g = grads(model)
    for p in encoder_params:
        assert g[f"{p}.weight"] is not None and g[f"{p}.weight"].abs().sum() > 0, p
    for p in residual_params:
        assert g[f"{p}.weight"] is None, p


def test_discriminator_shape_and_bad_options(mlp):
    d = Discriminator(256)
    assert [type(m).__name__ for m in d.net] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert d.net[0].out_features == 128 and d.net[2].p == 0.5 and d(torch.rand(5, 256)).shape == (5,)
    with pytest.raises(ConfigError, match="did you mean 'fc2'"):
        FeatureSplit(mlp, "fc22")
    with pytest.raises(ConfigError, match="encoder"):
        FeatureSplit(build_model("lenet5", in_shape=(1, 28, 28), num_classes=10), "encoder")
    with pytest.raises(ConfigError, match="alpha"):
        build_defense("a3t", {"alpha": 1.5})
    with pytest.raises(ConfigError, match="beta"):
        build_defense("standard", {"terms": [{"name": "feature_discriminator", "beta": -1.0}]})
    with pytest.raises(ConfigError, match="attack"):
        build_defense("a3t", {"attack": {"name": "cw"}})
