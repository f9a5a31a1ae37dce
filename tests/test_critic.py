"""Adversary critic (spec §2): the unrolled training attack A_f, the critic, its defense, and the two baselines."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustlab.attacks.critic_unrolled as unrolled_module
from robustlab.attacks.critic_unrolled import (RunningConfidence, straight_through_step, training_target,
                                               unrolled_high_confidence_attack)
from robustlab.checkpoint import load_checkpoint
from robustlab.defenses import Batch, TrainContext, build_defense
from robustlab.defenses.critic_losses import critic_loss, cycle_distance, gradient_penalty, hidden_weight_decay
from robustlab.defenses.margin import margin_normal_penalty
from robustlab.defenses.vat import kl_from_logits, virtual_adversarial_direction
from robustlab.engine import Trainer
from robustlab.errors import ConfigError
from robustlab.experiment import config_from_dict
from robustlab.models import build_model
from robustlab.models.critic import AdversaryCritic


def tiny_smooth_model(seed: int = 0) -> nn.Module:
    """4 → 6 (tanh) → 3 in float64: smooth, so finite differences are exact to ~1e-8."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


# --- the straight-through stopping indicator -------------------------------------------------------------------
def test_straight_through_forward_is_the_hard_step_and_backward_is_the_sigmoid_derivative():
    a = torch.tensor([-2.0, -1e-9, 0.0, 1e-9, 0.3, 0.7, 5.0], dtype=torch.float64, requires_grad=True)
    s = straight_through_step(a)
    assert torch.equal(s, torch.tensor([0.0, 0, 0, 1, 1, 1, 1], dtype=torch.float64))  # exact, round(σ(0)) = 0
    assert torch.equal(s, torch.round(torch.sigmoid(a.detach())))
    (g,) = torch.autograd.grad((s * torch.arange(7.0, dtype=torch.float64)).sum(), a)
    sig = torch.sigmoid(a.detach())
    assert torch.allclose(g, torch.arange(7.0, dtype=torch.float64) * sig * (1 - sig), atol=0, rtol=1e-12)


# --- A_f: finite-difference check of the gradient through the unrolled attack ----------------------------------
def _attack_loss(model, x, target, confidence, probe):
    x_hat = unrolled_high_confidence_attack(model, x, target, confidence, steps=3, overshoot=0.05)
    return (x_hat * probe).sum() + x_hat.square().sum()


def test_gradient_through_the_unrolled_attack_matches_finite_differences(monkeypatch):
    """d loss(A_f(x))/dW (second order through g and δ, plus the STE's σ' path) equals central differences of
    the function the spec differentiates: each step's point x̃_j frozen at its value under W₀ (x̃ = stopgrad(...))
    and the indicator s_j(W) = hard_j(W₀) + σ(a_j(W)) − σ(a_j(W₀)) (value: the hard step; derivative: σ')."""
    model = tiny_smooth_model()
    torch.manual_seed(1)
    x = torch.randn(6, 4, dtype=torch.float64)
    target, _ = training_target(model, x)
    confidence = torch.tensor([0.9, 0.2, 0.6, 0.95, 0.4, 0.7], dtype=torch.float64)
    probe = torch.randn(6, 4, dtype=torch.float64)
    params = list(model.parameters())

    recorded: list[torch.Tensor] = []
    points: list[torch.Tensor] = []
    real_step, real_hc_step = unrolled_module.straight_through_step, unrolled_module.high_confidence_step

    def recording(a):
        recorded.append(a.detach().clone())
        return real_step(a)

    def recording_point(model_, x_tilde, *args, **kwargs):
        points.append(x_tilde.detach().clone())
        return real_hc_step(model_, x_tilde, *args, **kwargs)

    monkeypatch.setattr(unrolled_module, "straight_through_step", recording)
    monkeypatch.setattr(unrolled_module, "high_confidence_step", recording_point)
    loss = _attack_loss(model, x, target, confidence, probe)
    grads = torch.autograd.grad(loss, params)
    hard = [(a > 0).double() for a in recorded]
    assert any(h.min() == 0 for h in hard) and hard[0].max() == 1  # some examples stop, some keep going
    assert all(g.abs().sum() > 0 for g in grads)

    calls = iter(range(10 ** 6))

    def surrogate(a):
        j = next(calls) % len(recorded)
        return hard[j] + torch.sigmoid(a) - torch.sigmoid(recorded[j])

    def frozen_point(model_, _x_tilde, *args, **kwargs):
        return real_hc_step(model_, points[next(point_calls) % len(points)], *args, **kwargs)

    point_calls = iter(range(10 ** 6))
    monkeypatch.setattr(unrolled_module, "straight_through_step", surrogate)
    monkeypatch.setattr(unrolled_module, "high_confidence_step", frozen_point)
    torch.manual_seed(2)
    direction = [torch.randn_like(p) for p in params]
    h = 1e-6
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * h * d)
        values.append(_attack_loss(model, x, target, confidence, probe).item())
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(sign * h * d)
    numeric = (values[0] - values[1]) / (2 * h)
    analytic = float(sum((g * d).sum() for g, d in zip(grads, direction)))
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_unrolled_attack_detached_version_has_the_same_value_and_moves_toward_the_target():
    model = tiny_smooth_model(3)
    torch.manual_seed(4)
    x = torch.randn(16, 4, dtype=torch.float64)
    target, logits = training_target(model, x)
    assert target.ne(logits.argmax(1)).all()
    conf = torch.full((16,), 0.8, dtype=torch.float64)
    with_graph = unrolled_high_confidence_attack(model, x, target, conf, steps=5)
    without = unrolled_high_confidence_attack(model, x, target, conf, steps=5, differentiable=False)
    assert with_graph.requires_grad and not without.requires_grad
    assert torch.allclose(with_graph.detach(), without, atol=1e-12)
    with torch.no_grad():
        before = F.softmax(model(x), 1).gather(1, target[:, None])
        after = F.softmax(model(without), 1).gather(1, target[:, None])
    assert (after > before).float().mean() > 0.9
    with pytest.raises(ValueError):
        unrolled_high_confidence_attack(model, x, target, conf, steps=0)


def test_running_confidence_by_hand():
    m = RunningConfidence(3, momentum=0.5)
    # rows 0–2 predicted 0 (confidences ≈1, ≈1, 1/3: a tie goes to the first class); row 3 predicted 1 (p = 3/5)
    logits = torch.tensor([[50.0, 0, 0], [50.0, 0, 0], [0, 0, 0], [0, math.log(3.0), 0]])
    probs = F.softmax(logits.double(), 1)
    pred, conf = probs.argmax(1), probs.amax(1)
    b = torch.ones(3, dtype=torch.float64)
    for c in range(3):
        if (pred == c).any():
            b[c] = conf[pred == c].mean()
    m.update(logits)
    assert torch.allclose(m.mean, 0.5 + 0.5 * b)
    assert m.mean[2] == 1.0  # no example predicted as class 2: m_2 unchanged
    assert m.mean[1] == pytest.approx(0.5 + 0.5 * 0.6)
    assert torch.equal(m[torch.tensor([1, 1, 2])], m.mean[[1, 1, 2]])
    restored = RunningConfidence(3)
    restored.load_state_dict(m.state_dict())
    assert torch.equal(restored.mean, m.mean)
    with pytest.raises(ValueError):
        restored.load_state_dict({"mean": torch.ones(4)})


def test_running_confidence_reduced_over_processes_equals_the_global_batch():
    """Under torchrun each process sees half the batch; summing the per-class statistics gives the global m."""
    torch.manual_seed(0)
    logits = torch.randn(40, 4) * 3
    first, second = logits[:20], logits[20:]
    seen = {}
    RunningConfidence(4).update(second, reduce=lambda t: seen.setdefault("other", t.clone()))
    split = RunningConfidence(4)
    split.update(first, reduce=lambda t: t + seen["other"])  # what all_reduce(sum) returns on process 0
    whole = RunningConfidence(4)
    whole.update(logits)
    assert torch.allclose(split.mean, whole.mean)
    alone = RunningConfidence(4)
    alone.update(first)
    assert not torch.allclose(alone.mean, whole.mean)  # without the reduction the processes would disagree


# --- critic, gradient penalty, cycle term ------------------------------------------------------------------------
def test_gradient_penalty_by_hand():
    w = torch.tensor([0.0, 3.0, 4.0])  # ‖w‖ = 5
    x = torch.randn(7, 3)
    _, penalty = gradient_penalty(lambda v: v @ w, x)
    assert penalty.item() == pytest.approx(16.0)  # (5 − 1)²
    x = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
    _, penalty = gradient_penalty(lambda v: 0.5 * v.square().sum(1), x)  # ∇ = x: norms 5 and 2
    assert penalty.item() == pytest.approx((16.0 + 1.0) / 2)


def test_critic_loss_with_a_zero_critic_is_two_log_two_plus_the_penalty_at_both_points():
    critic = AdversaryCritic(4, 3, hidden=(5,), input_noise=0.1, hidden_noise=0.5)
    for p in critic.parameters():
        nn.init.zeros_(p)
    x, x_adv = torch.rand(8, 4), torch.rand(8, 4)
    y, y_adv = torch.randint(0, 3, (8,)), torch.randint(0, 3, (8,))
    loss, metrics = critic_loss(critic, x, y, x_adv, y_adv, grad_weight=10.0)
    assert loss.item() == pytest.approx(2 * math.log(2) + 10.0 * 2)  # z = 0, ∇z = 0 at real and adversarial
    assert metrics["critic_gp"].item() == pytest.approx(2.0)


def test_critic_reads_the_labelled_logit_and_noise_is_off_in_eval():
    critic = AdversaryCritic(6, 4, hidden=(8, 8))
    x = torch.rand(5, 6)
    labels = torch.tensor([0, 3, 2, 1, 3])
    critic.eval()
    assert torch.equal(critic(x, labels), critic.all_logits(x)[torch.arange(5), labels])
    assert torch.equal(critic(x, labels), critic(x, labels))
    critic.train()
    assert not torch.equal(critic(x, labels), critic(x, labels))


def test_cycle_term_squared_and_unsquared():
    x = torch.zeros(2, 1, 2, 1)
    x_rec = torch.tensor([[3.0, 4.0], [0.0, 1.0]]).view(2, 1, 2, 1)
    assert torch.allclose(cycle_distance(x, x_rec, squared=True), torch.tensor([25.0, 1.0]))
    assert torch.allclose(cycle_distance(x, x_rec, squared=False), torch.tensor([5.0, 1.0]), atol=1e-5)


def test_pretraining_weight_decay_skips_the_output_layer():
    model = build_model("fc1200x3", in_shape=(1, 28, 28), num_classes=10)
    expected = 0.5 * sum(model.body[i].weight.square().sum() for i in (0, 2, 4))  # not model.fc, the output
    assert torch.allclose(hidden_weight_decay(model), expected)


# --- the defense ---------------------------------------------------------------------------------------------------
def _Ctx(dataset, epoch):
    return TrainContext(device=torch.device("cpu"), dataset=dataset, epoch=epoch)


def _adversary_stage(defense, model, x, y, ctx) -> Batch:
    """The engine's order up to the loss: x̂ crafted, then the critic steps."""
    batch = Batch(x, y)
    batch.x_adv = defense.craft(model, batch, ctx)
    defense.update_auxiliaries(model, batch, ctx)
    return batch


def _critic_defense(digits, model, **options):
    defense = build_defense("adversary_critic", {"critic_hidden": [32, 32], **options})
    defense.setup_all(model, _Ctx(digits, 0))
    return defense


def test_empty_fooled_set_leaves_only_the_cross_entropy(digits):
    torch.manual_seed(0)
    model = build_model("mlp_a3t", in_shape=digits.in_shape, num_classes=10)
    defense = _critic_defense(digits, model)
    x, y = digits.train_x[:20], digits.train_y[:20]
    with torch.no_grad():
        predicted = model(x).argmax(1)
    batch = Batch(x, y, x_adv=x.clone().requires_grad_(True), y_adv=predicted)  # x̂ classified as x: M = ∅
    out = defense.loss(model, batch, _Ctx(digits, 1))
    assert torch.allclose(out.loss, F.cross_entropy(model(x), y))
    assert out.metrics["fooled"] == 0 and out.metrics["adv_term"] == 0 and out.metrics["rec_term"] == 0
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_classifier_loss_reaches_the_classifier_through_the_attack_but_not_the_critic(digits):
    torch.manual_seed(0)
    model = build_model("mlp_a3t", in_shape=digits.in_shape, num_classes=10)
    defense = _critic_defense(digits, model, lam=1.0, lam_rec=1.0)
    x, y = digits.train_x[:32], digits.train_y[:32]
    ctx = _Ctx(digits, 1)
    batch = _adversary_stage(defense, model, x, y, ctx)
    critic_before = [p.detach().clone() for p in defense.critic.parameters()]
    for p in defense.critic.parameters():
        p.grad = None
    out = defense.loss(model, batch, ctx)
    assert out.metrics["fooled"] > 0 and out.metrics["adv_term"] > 0 and out.metrics["rec_term"] > 0
    attack_only = out.loss - F.cross_entropy(model(x), y)  # λ·critic term + λ_rec·cycle term
    grads = torch.autograd.grad(attack_only, list(model.parameters()), allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in defense.critic.parameters())
    assert all(torch.equal(a, b) for a, b in zip(critic_before, defense.critic.parameters()))


def test_bad_options_raise_config_errors():
    for bad in ({"lam": -1}, {"steps": 0}, {"cycle": "cubed"}, {"critic_betas": [0.5]},
                {"confidence_momentum": 1.0}, {"critic_hidden": []}):
        with pytest.raises(ConfigError):
            build_defense("adversary_critic", bad)
    for name, bad in (("vat", {"eps": -1}), ("vat", {"power_iterations": 0}), ("margin", {"lam": -0.1}),
                      ("margin", {"target": "far"})):
        with pytest.raises(ConfigError):
            build_defense(name, bad)


# --- baselines -----------------------------------------------------------------------------------------------------
def test_vat_direction_is_the_top_eigenvector_for_a_linear_model():
    """For z = Wx the KL's Hessian at d = 0 is Wᵀ(diag p − ppᵀ)W; the power method's direction must align with its
    dominant eigenvector (several iterations from a random start)."""
    torch.manual_seed(0)
    lin = nn.Linear(5, 3, bias=False).double()
    x = torch.randn(1, 5, dtype=torch.float64)
    logits = lin(x)
    p = F.softmax(logits, 1)[0]
    hessian = lin.weight.T @ (torch.diag(p) - torch.outer(p, p)) @ lin.weight
    top = torch.linalg.eigh(hessian).eigenvectors[:, -1]
    d = virtual_adversarial_direction(lin, x, logits, xi=1e-4, power_iterations=30)
    assert d.norm().item() == pytest.approx(1.0)
    assert abs(float(d[0].detach() @ top.detach())) == pytest.approx(1.0, abs=1e-5)
    q = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    assert kl_from_logits(q.log(), q.log()).item() == pytest.approx(0.0, abs=1e-12)
    r = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    assert kl_from_logits(q.log(), r.log()).item() == pytest.approx(float((q * (q / r).log()).sum()))


def test_margin_penalty_by_hand_for_a_linear_model_and_its_gradient():
    lin = nn.Linear(3, 3, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [3.0, 0.0, 0.0]]))
    x = torch.rand(2, 3, dtype=torch.float64)
    y, t = torch.tensor([0, 2]), torch.tensor([1, 0])
    _, penalty = margin_normal_penalty(lin, x, y, t)
    # ∇(z_0 − z_1) = (1, 1, −1): ½·3; ∇(z_2 − z_0) = (2, −2, 0): ½·8
    assert penalty.item() == pytest.approx((1.5 + 4.0) / 2)
    (g,) = torch.autograd.grad(penalty, lin.weight)  # d/dW of ½ mean ‖W_y − W_t‖²
    expected = torch.zeros(3, 3, dtype=torch.float64)
    for yi, ti in zip(y.tolist(), t.tolist()):
        diff = lin.weight.detach()[yi] - lin.weight.detach()[ti]
        expected[yi] += diff / 2
        expected[ti] -= diff / 2
    assert torch.allclose(g, expected)


# --- short real training runs through the Trainer ------------------------------------------------------------------
def _raw(tmp_path, name, defense, epochs=2):
    return {"run": {"seed": 3, "epochs": epochs, "progress": False, "out_dir": str(tmp_path / name)},
            "data": {"name": "digits", "batch_size": 100, "train_subset": 400, "test_subset": 200},
            "model": {"name": "mlp_a3t"}, "optim": {"name": "adam", "lr": 0.002, "betas": [0.5, 0.999]},
            "defense": defense}


def test_critic_defense_trains_checkpoints_and_resumes_exactly(tmp_path):
    raw = _raw(tmp_path, "critic", {"name": "adversary_critic", "critic_hidden": [64, 64], "lam": 0.5})
    trainer = Trainer(config_from_dict(json.loads(json.dumps(raw))), log=lambda _: None)
    history = trainer.fit().history
    assert "train_critic_loss" not in history[0]  # the pretraining epoch is plain CE
    row = history[1]
    for key in ("train_critic_loss", "train_critic_acc_real", "train_adv_term", "train_rec_term", "train_rho_adv"):
        assert math.isfinite(row[key]), key
    assert 0 < row["train_fooled"] <= 1 and 0 < row["confidence_mean"] < 1
    assert row["test_acc"] > 0.5
    _, state, _ = load_checkpoint(tmp_path / "critic")
    assert "critic" in state["aux_modules"] and "critic_opt" in state["aux_optimizers"]
    raw["run"]["epochs"] = 3
    resumed = Trainer(config_from_dict(raw), resume=True, log=lambda _: None)
    assert torch.equal(resumed.defense.confidence.mean, trainer.defense.confidence.mean)
    assert torch.equal(resumed.defense.critic.net[2].weight, trainer.defense.critic.net[2].weight)


@pytest.mark.parametrize("defense", [{"name": "vat", "eps": 2.0}, {"name": "margin", "lam": 0.1}])
def test_baselines_train(tmp_path, defense):
    raw = _raw(tmp_path, defense["name"], defense, epochs=3)
    history = Trainer(config_from_dict(raw), log=lambda _: None).fit().history
    assert history[-1]["test_acc"] > 0.5  # chance is 0.1; VAT's ε 2.0 is large for 8×8 digits
    key = "train_kl" if defense["name"] == "vat" else "train_margin_penalty"
    assert history[-1][key] > 0


def test_critic_starts_he_normal_with_zero_biases_by_default():
    """The authors' code: He-normal weights (std √(2/fan_in)) and zero biases; PyTorch's default is an option."""
    torch.manual_seed(0)
    he = AdversaryCritic(784, 10, hidden=(1200, 1200))
    first = he.net[2]
    assert torch.count_nonzero(first.bias) == 0
    assert first.weight.std().item() == pytest.approx(math.sqrt(2 / 784), rel=0.02)
    default = AdversaryCritic(784, 10, hidden=(1200, 1200), init="torch_default")
    assert default.net[2].weight.std().item() == pytest.approx(1 / math.sqrt(3 * 784), rel=0.02)  # U(±1/√fan_in)
    assert torch.count_nonzero(default.net[2].bias) > 0
    with pytest.raises(ValueError, match="critic init"):
        AdversaryCritic(4, 2, init="xavier")


def test_critic_steps_take_that_many_critic_updates_per_batch(digits):
    model = build_model("mlp_a3t", in_shape=digits.in_shape, num_classes=10)
    x, y = digits.train_x[:16], digits.train_y[:16]
    steps = {}
    for k in (1, 3):
        defense = _critic_defense(digits, model, critic_steps=k)
        _adversary_stage(defense, model, x, y, _Ctx(digits, 1))
        steps[k] = defense.critic_opt.state[defense.critic.net[2].weight]["step"].item()
    assert steps == {1: 1, 3: 3}


@pytest.mark.parametrize("threshold, go", [(0.0, True), (1.01, False)])
def test_go_no_go_line_after_the_check_epoch(digits, threshold, go):
    model = build_model("mlp_a3t", in_shape=digits.in_shape, num_classes=10)
    defense = _critic_defense(digits, model, go_no_go_epoch=2, go_no_go_accuracy=threshold)
    ctx = _Ctx(digits, 1)  # the second epoch: the first after pretraining
    lines: list[str] = []
    ctx.log = lines.append
    _adversary_stage(defense, model, digits.train_x[:16], digits.train_y[:16], ctx)
    assert defense.on_epoch_end(model, ctx)["critic_go"] == float(go)
    assert len(lines) == 1
    if go:
        assert lines[0].startswith("critic go: after epoch 2")
    else:
        assert lines[0].startswith("critic NO-GO: after epoch 2") and "raise defense.critic_steps (now 1)" in lines[0]
    ctx.epoch = 2
    assert "critic_go" not in defense.on_epoch_end(model, ctx)  # only once
