"""Minimal-perturbation attacks (C&W L2, DeepFool, the adversary-critic attack, few-pixel) and ρ_adv.

Cross-checked against torchattacks on the trained digits MLP where torchattacks has the same algorithm; the
contract checks (box, failures unchanged, exact success mask, model mode, no parameter gradients) run on every
minimal attack.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import (CarliniWagnerL2, DeepFool, FewPixel, HighConfidenceAttack, MinimalAttack,
                               build_attack, high_confidence_step, perturbation_ratio)
from robustlab.attacks.deepfool import closest_boundary_target
from robustlab.attacks.perturbation import MinimalResult

import torchattacks  # noqa: E402  (a test dependency: make test installs it)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    # On the shared 2-core machine, 2 intra-op threads of a tiny MLP spin against other processes and run ~50×
    # slower than 1 thread. Session scope + autouse puts this before the session fixtures this module triggers
    # (the trained model); the module fixture below gives the thread count back when the module is done.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield saved
    torch.set_num_threads(saved)


@pytest.fixture(scope="module", autouse=True)
def _threads_back_after_module(_one_torch_thread):
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(_one_torch_thread)


@pytest.fixture
def batch(digits):
    return digits.test_x[:100], digits.test_y[:100]


@pytest.fixture
def squeezed(batch):
    # torchattacks.CW starts from atanh(2x − 1): pixels at exactly 0 or 1 (most of the digits background) start at
    # ±inf with a zero gradient and can never move. Squeezing into [0.01, 0.99] lets both implementations use
    # every pixel, so they solve the same problem.
    x, y = batch
    return x * 0.98 + 0.01, y


def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1)


def clear_grads(model: nn.Module) -> None:
    # torchattacks calls .backward(), which leaves gradients on the parameters; ours must not.
    for p in model.parameters():
        p.grad = None


# --- C&W L2 -------------------------------------------------------------------------------------------------------


def test_cw_equals_torchattacks_at_a_fixed_constant(trained_digits_mlp, squeezed):
    x, y = squeezed
    model = trained_digits_mlp
    ref = torchattacks.CW(model, c=1.0, kappa=0, steps=100, lr=0.01)(x, y)
    clear_grads(model)
    ref_success = model(ref).argmax(1).ne(y)
    for abort_early, tol in ((False, 0.05), (True, 0.25)):
        res = CarliniWagnerL2(binary_search_steps=1, initial_const=1.0, max_iter=100, lr=0.01,
                              abort_early=abort_early).run(model, x, y)
        assert abs(res.success.float().mean() - ref_success.float().mean()) <= 0.03
        both = res.success & ref_success
        assert both.sum() >= 80
        ours, theirs = l2(res.x_adv, x)[both].mean(), l2(ref, x)[both].mean()
        assert abs(ours - theirs) <= tol * theirs, (abort_early, float(ours), float(theirs))


def test_cw_binary_search_beats_a_large_fixed_constant(trained_digits_mlp, batch):
    x, y = batch
    fixed = CarliniWagnerL2(binary_search_steps=1, initial_const=10.0, max_iter=100).run(trained_digits_mlp, x, y)
    searched = CarliniWagnerL2(binary_search_steps=4, initial_const=0.1, max_iter=100).run(trained_digits_mlp, x, y)
    assert searched.success.float().mean() >= 0.95
    both = fixed.success & searched.success
    assert l2(searched.x_adv, x)[both].mean() < 0.9 * l2(fixed.x_adv, x)[both].mean()
    # Each example keeps its smallest successful perturbation: never worse than its own fixed-c run at c = 0.1.
    first = CarliniWagnerL2(binary_search_steps=1, initial_const=0.1, max_iter=100).run(trained_digits_mlp, x, y)
    both = first.success & searched.success
    assert (l2(searched.x_adv, x)[both] <= l2(first.x_adv, x)[both] + 1e-5).all()


def test_cw_targeted_with_confidence_margin(trained_digits_mlp, batch):
    x, y = batch[0][:40], batch[1][:40]
    target = (y + 1) % 10
    kappa = 1.0
    # lr 0.05: with 1e-2, 100 iterations cannot move the saturated pixels (tanh-space w ≈ ±7.25) far enough.
    res = CarliniWagnerL2(kappa=kappa, binary_search_steps=2, initial_const=1.0, max_iter=100, lr=0.05,
                          targeted=True).run(trained_digits_mlp, x, target)
    assert res.success.float().mean() >= 0.9
    with torch.no_grad():
        logits = trained_digits_mlp(res.x_adv[res.success])
    t = target[res.success]
    other = logits.scatter(1, t[:, None], float("-inf")).amax(1)
    assert (logits.argmax(1) == t).all()
    assert (logits.gather(1, t[:, None]).squeeze(1) - other >= kappa - 1e-4).all()


# --- DeepFool -----------------------------------------------------------------------------------------------------


def test_deepfool_comparable_to_torchattacks(trained_digits_mlp, batch):
    x, y = batch[0][:25], batch[1][:25]
    model = trained_digits_mlp
    ref = torchattacks.DeepFool(model, steps=50, overshoot=0.02)(x, y)
    clear_grads(model)
    ref_success = model(ref).argmax(1).ne(y)
    res = DeepFool(max_iter=50).run(model, x, y)
    # torchattacks applies the overshoot per step, so box clipping can stall it just short of the boundary; the
    # original DeepFool (ours) overshoots the total perturbation and crosses. Ours must not be weaker.
    assert res.success.float().mean() >= ref_success.float().mean() - 0.04
    assert res.success.float().mean() >= 0.95
    both = res.success & ref_success
    assert both.sum() >= 8
    ours, theirs = l2(res.x_adv, x)[both].median(), l2(ref, x)[both].median()
    assert abs(ours - theirs) <= 0.25 * theirs, (float(ours), float(theirs))


def test_deepfool_step_clip_topk_and_batch_independence(trained_digits_mlp, batch):
    x, y = batch
    steps = 3
    res = DeepFool(max_iter=steps, max_step=0.1).run(trained_digits_mlp, x, y)
    assert (l2(res.x_last, x) <= steps * 0.1 * 1.02 + 1e-5).all()
    full = DeepFool(max_iter=50, max_step=0.1).run(trained_digits_mlp, x, y)
    assert full.success.float().mean() >= 0.95
    topk = DeepFool(max_iter=50, candidates=3).run(trained_digits_mlp, x, y)
    assert topk.success.float().mean() >= 0.95
    # Vectorised over the batch: an example's result does not depend on the rest of the batch.
    part = DeepFool(max_iter=50, max_step=0.1).run(trained_digits_mlp, x[:7], y[:7])
    assert torch.allclose(part.x_adv, full.x_adv[:7], atol=1e-5)


def test_deepfool_leaves_already_misclassified_examples_unchanged(trained_digits_mlp, batch):
    x, y = batch[0][:20], batch[1][:20]
    with torch.no_grad():
        pred = trained_digits_mlp(x).argmax(1)
    wrong = torch.arange(20) % 3 == 0
    labels = torch.where(wrong, (pred + 1) % 10, y)
    res = DeepFool(max_iter=50).run(trained_digits_mlp, x, labels)
    assert res.success[wrong].all()
    assert torch.equal(res.x_adv[wrong], x[wrong])
    assert (l2(res.x_adv, x)[~wrong & res.success] > 0).all()


def test_closest_boundary_target_matches_a_per_example_jacobian(trained_digits_mlp, batch):
    x, y = batch[0][:6], batch[1][:6]
    target, _ = closest_boundary_target(trained_digits_mlp, x, y)
    for i in range(6):
        xi = x[i:i + 1]
        jac = torch.autograd.functional.jacobian(lambda v: trained_digits_mlp(v)[0], xi).flatten(1)
        z = trained_digits_mlp(xi)[0].detach()
        dist = (z - z[y[i]]).abs() / (jac - jac[y[i]]).norm(dim=1)
        dist[y[i]] = float("inf")
        assert int(target[i]) == int(dist.argmin())
    assert all(p.grad is None for p in trained_digits_mlp.parameters())


# --- adversary-critic high-confidence attack ----------------------------------------------------------------------


def test_high_confidence_attack_reaches_target_with_clean_confidence(trained_digits_mlp, batch):
    x, y = batch
    res = HighConfidenceAttack(max_iter=150).run(trained_digits_mlp, x, y)
    assert res.success.float().mean() >= 0.6
    assert (res.target != y).all()
    with torch.no_grad():
        clean = F.softmax(trained_digits_mlp(x), dim=1).amax(1)
        probs = F.softmax(trained_digits_mlp(res.x_adv), dim=1)
    assert torch.allclose(res.confidence, clean)
    s = res.success
    assert (probs[s].argmax(1) == res.target[s]).all()
    assert (probs[s].gather(1, res.target[s][:, None]).squeeze(1) >= res.confidence[s] - 1e-6).all()
    assert res.x_last.min() >= 0 and res.x_last.max() <= 1
    # Higher confidence than DeepFool's boundary points needs a larger perturbation.
    df = DeepFool(max_iter=50, max_step=0.1).run(trained_digits_mlp, x, y)
    assert res.rho(x)["rho"] > df.rho(x)["rho"]


def test_high_confidence_steps_are_clipped(trained_digits_mlp, batch):
    x, y = batch[0][:30], batch[1][:30]
    target, _ = closest_boundary_target(trained_digits_mlp, x, y)
    conf = torch.full((30,), 0.9)
    r_i, logits, log_p_t = high_confidence_step(trained_digits_mlp, x, target, conf, max_step=0.1)
    assert not r_i.requires_grad and (l2(r_i, 0 * r_i) <= 0.1 + 1e-6).all()
    unclipped, _, _ = high_confidence_step(trained_digits_mlp, x, target, conf)
    assert (l2(unclipped, 0 * unclipped) > 0.1).any()  # the clip is active somewhere
    for steps in (1, 4):
        res = HighConfidenceAttack(max_iter=steps).run(trained_digits_mlp, x, y)
        assert (l2(res.x_last, x) <= steps * 0.1 * 1.02 + 1e-5).all()
    assert all(p.grad is None for p in trained_digits_mlp.parameters())


def test_high_confidence_step_keeps_the_graph_when_asked():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    x = torch.rand(8, 1, 8, 8)
    target = torch.randint(0, 10, (8,))
    r_i, _, _ = high_confidence_step(model, x, target, torch.full((8,), 0.9), create_graph=True)
    assert r_i.requires_grad
    r_i.pow(2).sum().backward()  # second order: ∂r/∂W goes through ∇ₓ log p_t
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# --- few-pixel ----------------------------------------------------------------------------------------------------


def count_changed_pixels(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    return (x_adv != x).any(dim=1).flatten(1).sum(1)


def test_few_pixel_comparable_to_torchattacks_one_pixel(trained_digits_mlp, batch):
    x, y = batch[0][:20], batch[1][:20]
    np.random.seed(0)
    ref = torchattacks.OnePixel(trained_digits_mlp, pixels=1, steps=10, popsize=100)(x, y)
    ref_rate = trained_digits_mlp(ref).argmax(1).ne(y).float().mean()
    res = FewPixel(pixels=1, population=100, iterations=10, seed=0).run(trained_digits_mlp, x, y)
    assert abs(res.success.float().mean() - ref_rate) <= 0.2
    assert (count_changed_pixels(x, ref) <= 1).all()


@pytest.mark.parametrize("pixels", [1, 2, 3])
def test_few_pixel_changes_at_most_the_allowed_pixels(trained_digits_mlp, batch, pixels):
    x, y = batch[0][:30], batch[1][:30]
    res = FewPixel(pixels=pixels, population=40, iterations=5, seed=1).run(trained_digits_mlp, x, y)
    assert (count_changed_pixels(x, res.x_adv) <= pixels).all()
    assert (count_changed_pixels(x, res.x_last) <= pixels).all()
    assert (count_changed_pixels(x, res.x_adv)[~res.success] == 0).all()


def test_few_pixel_three_pixels_drop_accuracy(trained_digits_mlp, batch):
    x, y = batch[0][:50], batch[1][:50]
    with torch.no_grad():
        clean = trained_digits_mlp(x).argmax(1).eq(y).float().mean()
    attack = FewPixel(pixels=3, population=100, iterations=20, seed=0, max_images=1000)  # several chunks
    x_adv = attack(trained_digits_mlp, x, y)
    with torch.no_grad():
        adv = trained_digits_mlp(x_adv).argmax(1).eq(y).float().mean()
    assert adv <= clean - 0.3


# --- the contract for every minimal attack ------------------------------------------------------------------------

FAST = {
    "cw": lambda: CarliniWagnerL2(binary_search_steps=1, initial_const=1.0, max_iter=100),
    "deepfool": lambda: DeepFool(max_iter=20, max_step=0.1),
    "critic": lambda: HighConfidenceAttack(max_iter=30),
    "few_pixel": lambda: FewPixel(pixels=2, population=30, iterations=20, seed=0),
}
WEAK = {  # budgets too small to fool everything, so that failures exist
    "cw": lambda: CarliniWagnerL2(binary_search_steps=1, initial_const=0.1, max_iter=10),
    "deepfool": lambda: DeepFool(max_iter=2, max_step=0.1),
    "critic": lambda: HighConfidenceAttack(max_iter=20),
    "few_pixel": lambda: FewPixel(pixels=1, population=8, iterations=2, seed=0),
}


@pytest.mark.parametrize("name", sorted(FAST))
@pytest.mark.parametrize("budget", ["fast", "weak"])
def test_minimal_attack_contract(trained_digits_mlp, batch, name, budget):
    x, y = batch[0][:60], batch[1][:60]
    attack = (FAST if budget == "fast" else WEAK)[name]()
    assert isinstance(attack, MinimalAttack) and attack.bounded is False
    res = attack.run(trained_digits_mlp, x, y)
    assert isinstance(res, MinimalResult)
    for t in (res.x_adv, res.x_last):
        assert t.shape == x.shape and not t.requires_grad
        assert t.min() >= 0 and t.max() <= 1
    assert res.success.dtype == torch.bool and res.success.shape == y.shape
    with torch.no_grad():
        pred = trained_digits_mlp(res.x_adv).argmax(1)
    assert (pred[res.success] != y[res.success]).all()
    assert torch.equal(res.x_adv[~res.success], x[~res.success])
    assert torch.equal(res.x_last[res.success], res.x_adv[res.success])
    if budget == "weak":
        assert 0 < int(res.success.sum()) < len(y), "the weak budget should leave both successes and failures"
    else:
        assert res.success.float().mean() >= 0.3
    x_adv, success = attack.perturb_with_success(trained_digits_mlp, x, y)
    if name != "few_pixel":  # deterministic attacks agree between the entry points
        assert torch.equal(success, res.success) and torch.allclose(x_adv, res.x_adv)
    assert torch.allclose(attack(trained_digits_mlp, x, y), x_adv) or name == "few_pixel"
    assert all(p.grad is None for p in trained_digits_mlp.parameters())
    assert not trained_digits_mlp.training


@pytest.mark.parametrize("name", sorted(FAST))
def test_minimal_attack_restores_each_module_mode(batch, name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
    model.train()
    model[3].eval()
    x, y = batch[0][:10], batch[1][:10]
    FAST[name]()(model, x, y)
    assert [m.training for m in model] == [True, True, True, False, True]
    assert all(p.grad is None for p in model.parameters())


def test_registry_builds_minimal_attacks_without_eps():
    for name, cls in (("cw_l2", CarliniWagnerL2), ("deepfool", DeepFool), ("critic_hc", HighConfidenceAttack),
                      ("few_pixel", FewPixel)):
        assert isinstance(build_attack(name), cls)
    assert build_attack("cw_l2", kappa=5.0, lr=5e-4).kappa == 5.0
    assert build_attack("deepfool", max_iter=500, max_step=0.1).max_iter == 500


# --- ρ_adv --------------------------------------------------------------------------------------------------------


def test_perturbation_ratio_hand_computed():
    x = torch.tensor([[[3.0, 4.0]], [[1.0, 0.0]], [[0.0, 2.0]]])
    r = torch.tensor([[[0.6, 0.8]], [[0.0, 0.5]], [[0.2, 0.0]]])  # ‖r‖/‖x‖ = 1/5, 0.5/1, 0.2/2
    success = torch.tensor([True, True, False])
    out = perturbation_ratio(x, x + r, success)
    assert out["rho"] == pytest.approx((0.2 + 0.5) / 2)
    assert out["rho_with_failures"] == pytest.approx((0.2 + 0.5 + 0.1) / 3)
    assert out["success_rate"] == pytest.approx(2 / 3) and out["n"] == 3
    # MinimalResult.rho counts failures with their last iterate, not with the returned (unchanged) x.
    x_adv = torch.where(success[:, None, None], x + r, x)
    res = MinimalResult(x_adv, success, x + r)
    assert res.rho(x) == out
    assert perturbation_ratio(x, x_adv, success)["rho_with_failures"] == pytest.approx(0.7 / 3)
    assert np.isnan(perturbation_ratio(x, x, torch.zeros(3, dtype=torch.bool))["rho"])
