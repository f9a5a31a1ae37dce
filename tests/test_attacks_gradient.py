"""Gradient attacks: cross-checks against torchattacks on the same trained models and batches, the threat model
(budget and [0,1] box) of every attack, and behavioural checks of LL / I-LL, APGD, EOT and transfer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchattacks  # noqa: E402  (a test dependency: make test installs it)

from robustlab.attacks import (APGDCE, APGDDLR, EOTPGD, FGSM, IFGSM, PGD, PGDL2, IterativeLeastLikely,  # noqa: E402
                               LeastLikely, TransferAttack, available_attacks, build_attack, with_eot)
from robustlab.attacks.apgd import apgd_checkpoints  # noqa: E402
from robustlab.attacks.losses import cross_entropy, dlr_loss, loss_gradient, targeted_dlr_loss  # noqa: E402
from robustlab.evaluation.outcome import accuracy, attack_outcome  # noqa: E402
from robustlab.modes import model_mode  # noqa: E402


# --- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dropout_convnet(digits):
    """A tiny conv net with dropout (a randomised model when kept in train mode), trained for a second."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Dropout(0.3), nn.Linear(16 * 16, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(6):
        perm = torch.randperm(len(digits.train_x))
        for start in range(0, len(perm), 128):
            idx = perm[start:start + 128]
            opt.zero_grad()
            F.cross_entropy(net(digits.train_x[idx]), digits.train_y[idx]).backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def testset(digits):
    return digits.test_x, digits.test_y  # 360 images


def _run_torchattacks(atk, x, y, *, dropout=False):
    if dropout:
        atk.set_model_training_mode(model_training=True, dropout_training=True)
    else:
        atk.set_model_training_mode(model_training=False)
    return atk(x, y)


def _acc(model, x_adv, y):
    with torch.no_grad(), model_mode(model, "eval"):
        return model(x_adv).argmax(1).eq(y).float().mean().item()


# --- cross-checks against torchattacks ----------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["mlp", "conv"])
def test_fgsm_equals_torchattacks(trained_digits_mlp, dropout_convnet, testset, which):
    model = trained_digits_mlp if which == "mlp" else dropout_convnet
    x, y = testset
    ours = FGSM(0.1)(model, x, y)
    theirs = _run_torchattacks(torchattacks.FGSM(model, eps=0.1), x, y)
    assert (ours - theirs).abs().max().item() <= 1e-6


@pytest.mark.parametrize("which", ["mlp", "conv"])
def test_pgd_without_random_start_equals_torchattacks(trained_digits_mlp, dropout_convnet, testset, which):
    model = trained_digits_mlp if which == "mlp" else dropout_convnet
    x, y = testset
    ours = PGD(0.1, steps=10, step_size=0.02, random_start=False, early_stop=False)(model, x, y)
    theirs = _run_torchattacks(torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=10, random_start=False), x, y)
    assert (ours - theirs).abs().max().item() <= 1e-6


def test_pgd_with_random_start_matches_torchattacks_robust_accuracy(trained_digits_mlp, testset):
    x, y = testset
    torch.manual_seed(0)
    ours = _acc(trained_digits_mlp, PGD(0.08, steps=10, step_size=0.02)(trained_digits_mlp, x, y), y)
    torch.manual_seed(1)
    atk = torchattacks.PGD(trained_digits_mlp, eps=0.08, alpha=0.02, steps=10, random_start=True)
    theirs = _acc(trained_digits_mlp, _run_torchattacks(atk, x, y), y)
    assert abs(ours - theirs) <= 0.02  # ≤ 7 of 360 examples


def test_pgd_l2_matches_torchattacks(trained_digits_mlp, testset):
    x, y = testset
    model = trained_digits_mlp
    ours = PGDL2(0.8, steps=10, step_size=0.2, random_start=False, early_stop=False)(model, x, y)
    theirs = _run_torchattacks(torchattacks.PGDL2(model, eps=0.8, alpha=0.2, steps=10, random_start=False), x, y)
    # torchattacks normalises the gradient of the batch-*mean* loss by ‖g‖ + 1e-10, which changes the step of
    # examples whose gradient is tiny (true-class probability within ~1e-4 of 1); elsewhere the steps coincide.
    with torch.no_grad():
        p_true = F.softmax(model(x), 1).gather(1, y[:, None]).squeeze(1)
    regular = p_true < 1 - 1e-3
    assert regular.sum() > 50
    assert (ours - theirs)[regular].abs().max().item() <= 1e-5
    assert abs(_acc(model, ours, y) - _acc(model, theirs, y)) <= 2 / len(y)

    torch.manual_seed(0)
    ours_rs = _acc(model, PGDL2(0.8, steps=10, step_size=0.2)(model, x, y), y)
    theirs_rs = _acc(model, _run_torchattacks(torchattacks.PGDL2(model, eps=0.8, alpha=0.2, steps=10), x, y), y)
    assert abs(ours_rs - theirs_rs) <= 0.03


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_matches_torchattacks(trained_digits_mlp, testset, loss):
    x, y = testset
    torch.manual_seed(0)
    ours = (APGDCE if loss == "ce" else APGDDLR)(0.1, steps=20)(trained_digits_mlp, x, y)
    theirs = _run_torchattacks(torchattacks.APGD(trained_digits_mlp, eps=0.1, steps=20, loss=loss), x, y)
    assert abs(_acc(trained_digits_mlp, ours, y) - _acc(trained_digits_mlp, theirs, y)) <= 0.02
    assert (ours - x).abs().max() <= 0.1 + 1e-6


def test_targeted_apgd_dlr_matches_torchattacks_apgdt(trained_digits_mlp, testset):
    x, y = testset
    torch.manual_seed(0)
    ours = APGDDLR(0.1, steps=20, top_targets=3)(trained_digits_mlp, x, y)
    theirs = _run_torchattacks(torchattacks.APGDT(trained_digits_mlp, eps=0.1, steps=20, n_classes=10), x, y)
    ours_acc, theirs_acc = _acc(trained_digits_mlp, ours, y), _acc(trained_digits_mlp, theirs, y)
    assert abs(ours_acc - theirs_acc) <= 0.02
    # The targets only steer the search: targeted APGD is at least as strong as one untargeted DLR run.
    torch.manual_seed(0)
    assert ours_acc <= _acc(trained_digits_mlp, APGDDLR(0.1, steps=20)(trained_digits_mlp, x, y), y) + 1e-9


# AutoAttack's settings, set explicitly on both sides (torchattacks' defaults are 10 iterations), on an adversarially
# trained model (≈ 57% robust at ε 0.15: a non-robust model makes every attack agree at 0%), all 360 test images.
def test_apgd_ce_at_autoattack_settings_matches_torchattacks(robust_digits_cnn, testset):
    x, y = testset
    torch.manual_seed(0)
    ours = _acc(robust_digits_cnn, APGDCE(0.15, steps=100, restarts=1)(robust_digits_cnn, x, y), y)
    theirs = _acc(robust_digits_cnn, _run_torchattacks(
        torchattacks.APGD(robust_digits_cnn, eps=0.15, steps=100, n_restarts=1, loss="ce", seed=0), x, y), y)
    assert 0.3 < theirs < 0.8 and abs(ours - theirs) <= 0.01, (ours, theirs)


def test_apgd_t_at_autoattack_settings_matches_torchattacks(robust_digits_cnn, testset):
    x, y = testset
    torch.manual_seed(0)
    ours = _acc(robust_digits_cnn, APGDDLR(0.15, steps=100, top_targets=9)(robust_digits_cnn, x, y), y)
    theirs = _acc(robust_digits_cnn, _run_torchattacks(
        torchattacks.APGDT(robust_digits_cnn, eps=0.15, steps=100, n_restarts=1, n_classes=10, seed=0), x, y), y)
    assert 0.3 < theirs < 0.8 and abs(ours - theirs) <= 0.01, (ours, theirs)


def test_eot_pgd_matches_torchattacks_on_a_dropout_model(dropout_convnet, testset):
    x, y = testset
    torch.manual_seed(0)
    ours = EOTPGD(0.1, eot_samples=4, steps=10, step_size=0.025, model_mode="train")(dropout_convnet, x, y)
    assert not any(m.training for m in dropout_convnet.modules())  # our attack restores eval mode
    torch.manual_seed(0)
    atk = torchattacks.EOTPGD(dropout_convnet, eps=0.1, alpha=0.025, steps=10, eot_iter=4)
    try:
        theirs = _run_torchattacks(atk, x, y, dropout=True)
    finally:
        dropout_convnet.eval()  # torchattacks leaves a model it put in training mode there
    assert abs(_acc(dropout_convnet, ours, y) - _acc(dropout_convnet, theirs, y)) <= 0.03


# --- the threat model of every attack -----------------------------------------------------------------------------
BOUNDED = [
    ("fgsm", "linf", {}), ("ll", "linf", {}), ("pgd", "linf", {"steps": 5}), ("ifgsm", "linf", {"steps": 5}),
    ("ill", "linf", {"steps": 5}), ("pgd_l2", "l2", {"steps": 5, "restarts": 2}),
    ("pgd", "linf", {"steps": 3, "targeted": True}), ("pgd_l2", "l2", {"steps": 3, "targeted": True}),
    ("apgd_ce", "linf", {"steps": 8, "restarts": 2}), ("apgd_dlr", "linf", {"steps": 8}),
    ("apgd_ce", "l2", {"steps": 8, "norm": "l2"}), ("apgd_dlr", "l2", {"steps": 8, "norm": "l2", "top_targets": 3}),
    ("eot_pgd", "linf", {"steps": 3, "eot_samples": 2}),
]


def test_all_gradient_attacks_are_registered():
    assert {"fgsm", "ll", "pgd", "pgd_l2", "ifgsm", "ill", "apgd_ce", "apgd_dlr", "eot_pgd"} <= set(available_attacks())


@pytest.mark.parametrize("name,norm,options", BOUNDED, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BOUNDED)])
def test_every_attack_respects_its_budget_and_the_box(trained_digits_mlp, testset, name, norm, options):
    x, y = testset[0][:100], testset[1][:100]
    eps = 0.15 if norm == "linf" else 1.0
    labels = (y + 1) % 10 if options.get("targeted") and not name.startswith("apgd") else y
    x_adv = build_attack(name, eps, **options)(trained_digits_mlp, x, labels)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert size.max().item() <= eps + 1e-5
    assert _acc(trained_digits_mlp, x_adv, y) < _acc(trained_digits_mlp, x, y)


def test_attacks_leave_no_parameter_gradients_and_work_under_no_grad(trained_digits_mlp, testset):
    x, y = testset[0][:50], testset[1][:50]
    model = copy.deepcopy(trained_digits_mlp)
    for p in model.parameters():
        p.grad = None
    attacks = (LeastLikely(0.1), PGDL2(1.0, steps=2), APGDDLR(0.1, steps=3), EOTPGD(0.1, steps=2, eot_samples=2))
    with torch.no_grad():
        for attack in attacks:
            assert (attack(model, x, y) - x).abs().max() > 0
    assert all(p.grad is None for p in model.parameters())


# --- least-likely class attacks -----------------------------------------------------------------------------------
def test_ll_is_one_targeted_step_that_raises_the_least_likely_probability(trained_digits_mlp, testset):
    x, y = testset
    model = trained_digits_mlp
    with torch.no_grad():
        y_ll = model(x).argmin(1)
    x_adv = LeastLikely(0.3)(model, x, y)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), y_ll, reduction="sum"), xg)
    assert torch.allclose(x_adv, (x - 0.3 * grad.sign()).clamp(0, 1))
    with torch.no_grad():
        before = F.softmax(model(x), 1).gather(1, y_ll[:, None])
        after = F.softmax(model(x_adv), 1).gather(1, y_ll[:, None])
    assert (after > before).float().mean() > 0.95
    # y is not used for crafting
    assert torch.equal(LeastLikely(0.3)(model, x, (y + 3) % 10), x_adv)


def test_iterative_ll_reaches_the_least_likely_class_more_often_than_ll(trained_digits_mlp, testset):
    x, y = testset
    model = trained_digits_mlp
    with torch.no_grad():
        y_ll = model(x).argmin(1)
        ll_hits = model(LeastLikely(0.3)(model, x, y)).argmax(1).eq(y_ll).float().mean()
        ill_hits = model(IterativeLeastLikely(0.3)(model, x, y)).argmax(1).eq(y_ll).float().mean()
    assert ill_hits > ll_hits
    ill = IterativeLeastLikely(0.3)
    assert (ill.steps, ill.step_size, ill.random_start) == (10, 0.03, False)


def test_ifgsm_has_the_at2l_defaults_and_is_stronger_than_fgsm(trained_digits_mlp, testset):
    x, y = testset
    ifgsm = IFGSM(0.3)
    assert (ifgsm.steps, ifgsm.step_size, ifgsm.random_start) == (10, 0.03, False)
    # At ε = 0.3 both leave ~0% on this model; compare where FGSM is not already saturated.
    fgsm_acc = accuracy(trained_digits_mlp, x, y, attack=FGSM(0.1))
    assert accuracy(trained_digits_mlp, x, y, attack=IFGSM(0.1, step_size=0.01)) < fgsm_acc


# --- PGD / PGD-L2 details -----------------------------------------------------------------------------------------
def test_targeted_pgd_l2_reaches_the_target(trained_digits_mlp, testset):
    x, y = testset[0][:100], testset[1][:100]
    target = (y + 1) % 10
    x_adv = PGDL2(3.0, steps=20, step_size=0.3, targeted=True)(trained_digits_mlp, x, target)
    assert _acc(trained_digits_mlp, x_adv, target) > 0.8


def test_l2_restarts_keep_the_first_success(trained_digits_mlp, testset):
    x, y = testset
    torch.manual_seed(0)
    one = attack_outcome(trained_digits_mlp, x, y, PGDL2(0.5, steps=3, step_size=0.2)).correct
    torch.manual_seed(0)
    four = attack_outcome(trained_digits_mlp, x, y, PGDL2(0.5, steps=3, step_size=0.2, restarts=4)).correct
    assert not (four & ~one).any()  # the first restart is the single run: its successes stay
    assert four.sum() < one.sum()   # and the three further random starts add some


def test_l2_random_start_is_inside_the_ball(testset):
    from robustlab.attacks import L2Ball

    x = testset[0][:200]
    start = L2Ball(0.5).random_start(x)
    norms = (start - x).flatten(1).norm(dim=1)
    assert norms.max() <= 0.5 + 1e-6 and norms.mean() > 0.3  # uniform in a 64-ball: mass near the sphere


# --- APGD details ---------------------------------------------------------------------------------------------------
def test_apgd_checkpoints_follow_the_paper():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert all(0 < w < 10 for w in apgd_checkpoints(10))


def test_dlr_losses_are_shift_and_scale_invariant_and_signal_misclassification():
    torch.manual_seed(0)
    z = torch.randn(20, 10)
    y = torch.randint(0, 10, (20,))
    t = (y + 1) % 10
    assert torch.allclose(dlr_loss(3 * z + 5, y), dlr_loss(z, y), atol=1e-5)
    assert torch.allclose(targeted_dlr_loss(3 * z + 5, y, t), targeted_dlr_loss(z, y, t), atol=1e-5)
    assert torch.equal(dlr_loss(z, y) > 0, z.argmax(1).ne(y))
    with pytest.raises(ValueError, match="4 classes"):
        targeted_dlr_loss(z[:, :3], y.clamp(max=2), t.clamp(max=2))


def test_apgd_bad_arguments_raise():
    with pytest.raises(ValueError, match="norm"):
        APGDCE(0.1, norm="l1")
    with pytest.raises(ValueError, match="steps"):
        APGDDLR(0.1, steps=0)
    with pytest.raises(ValueError, match="eot_samples"):
        PGD(0.1, eot_samples=0)


# --- EOT -----------------------------------------------------------------------------------------------------------
def test_eot_averaging_reduces_the_variance_of_the_gradient_estimate(dropout_convnet, testset):
    x, y = testset[0][:60], testset[1][:60]
    torch.manual_seed(0)
    with model_mode(dropout_convnet, "train"):
        variance = {}
        for n in (1, 16):
            estimates = torch.stack([loss_gradient(dropout_convnet, x, y, cross_entropy, n).grad for _ in range(6)])
            variance[n] = estimates.var(0).mean().item()
    assert variance[16] < variance[1] / 4  # ~1/16 in expectation


def test_with_eot_turns_any_gradient_attack_into_its_eot_version():
    attack = with_eot(APGDCE(0.1, steps=5), 8)
    assert attack.eot_samples == 8 and attack.loss == "ce"
    assert EOTPGD(0.1).eot_samples == 80  # Learn2Perturb's evaluation
    with pytest.raises(TypeError):
        with_eot(TransferAttack(nn.Linear(2, 2), FGSM(0.1)), 4)


# --- transfer -------------------------------------------------------------------------------------------------------
def test_transfer_lowers_accuracy_less_than_white_box(trained_digits_mlp, dropout_convnet, testset):
    x, y = testset
    target = dropout_convnet
    white = accuracy(target, x, y, attack=PGD(0.1, steps=10, step_size=0.025))
    transfer = accuracy(target, x, y, attack=TransferAttack(trained_digits_mlp, PGD(0.1, steps=10, step_size=0.025)))
    clean = accuracy(target, x, y)
    assert white < transfer < clean


def test_transfer_ignores_the_target_for_crafting(trained_digits_mlp, testset):
    x, y = testset[0][:50], testset[1][:50]
    target = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).train()
    crafted = TransferAttack(trained_digits_mlp, FGSM(0.1))(target, x, y)
    assert torch.equal(crafted, FGSM(0.1)(trained_digits_mlp, x, y))
    assert target.training and all(p.grad is None for p in target.parameters())


def test_transfer_source_from_a_checkpoint(trained_digits_mlp, tmp_path):
    from robustlab.checkpoint import save_checkpoint
    from robustlab.config import Config
    from robustlab.runs import load_source_model

    config = Config().to_dict()
    config["data"]["name"] = "digits"
    config["model"] = {"name": "mlp_a3t"}
    ckpt = save_checkpoint(tmp_path, 1, trained_digits_mlp.state_dict(), {"epoch": 1}, config)
    attack = TransferAttack(load_source_model(str(ckpt)), FGSM(0.1))
    source = attack.source_model
    assert not source.training
    for name, value in trained_digits_mlp.state_dict().items():
        assert torch.equal(source.state_dict()[name], value)


class _InputNoise(nn.Module):
    """A randomised model: Gaussian noise on the input at every forward pass, in eval mode too."""

    def __init__(self, model, std):
        super().__init__()
        self.model, self.std = model, std

    def forward(self, x):
        return self.model(x + self.std * torch.randn_like(x))


def test_eot_apgd_attacks_the_examples_one_clean_draw_misclassified(trained_digits_mlp, digits):
    """One draw of a randomised model misclassifying an example says little: EOT-APGD must still attack it (it used
    to return such examples untouched, which made it weaker than EOT-PGD on noisy models)."""
    noisy = _InputNoise(trained_digits_mlp, 0.6).eval()
    x, y = digits.test_x[:200], digits.test_y[:200]
    torch.manual_seed(0)
    x_adv = APGDCE(0.1, eot_samples=4, steps=5)(noisy, x, y)
    assert (x_adv - x).flatten(1).abs().amax(1).gt(0).all()
    deterministic = APGDCE(0.1, steps=5)(trained_digits_mlp, x, y)
    with torch.no_grad():
        wrong = trained_digits_mlp(x).argmax(1).ne(y)
    assert wrong.any() and torch.equal(deterministic[wrong], x[wrong])  # without randomness the skip stays


def test_eot_apgd_is_as_strong_as_eot_pgd_on_a_noisy_model(trained_digits_mlp, digits):
    noisy = _InputNoise(trained_digits_mlp, 0.6).eval()
    x, y = digits.test_x[:300], digits.test_y[:300]

    def accuracy_over_draws(x_adv, draws=20):
        with torch.no_grad():
            return sum(noisy(x_adv).argmax(1).eq(y).float().mean().item() for _ in range(draws)) / draws

    torch.manual_seed(0)
    apgd = accuracy_over_draws(APGDCE(0.1, eot_samples=10, steps=50)(noisy, x, y))
    torch.manual_seed(0)
    pgd = accuracy_over_draws(EOTPGD(0.1, eot_samples=10, steps=50, step_size=0.005)(noisy, x, y))
    assert apgd <= pgd + 0.015, (apgd, pgd)
