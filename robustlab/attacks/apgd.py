"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", Algorithm 1), with the cross-entropy or the DLR loss, L∞ or L2, untargeted or targeted.

Per example (everything is vectorised over the batch; step sizes and checkpoint decisions are per example):

* η⁽⁰⁾ = 2ε; x⁽¹⁾ = P(x⁽⁰⁾ + η⁽⁰⁾ s(∇f(x⁽⁰⁾))), s = sign for L∞ and ∇/‖∇‖₂ for L2;
* z⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + η⁽ᵏ⁾ s(∇f(x⁽ᵏ⁾))),
  x⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + α(z⁽ᵏ⁺¹⁾ − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾)), momentum α = 0.75;
* checkpoints w_j = ⌈p_j N⌉ with p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06);
* at a checkpoint w_j the step size is halved, and the iterate restarts from the best point x_max, if
  (1) the loss increased in fewer than ρ·(w_j − w_{j−1}) of the steps since w_{j−1} (ρ = 0.75), or
  (2) η was not reduced at w_{j−1} and the best loss has not improved since w_{j−1}.
  On such a restart the momentum term is reset (x⁽ᵏ⁻¹⁾ := x_max) and the gradient at x_max is reused; the paper
  leaves both unspecified [R].

Losses (ascended): CE; DLR = −(z_y − max_{i≠y} z_i)/(z_π1 − z_π3). APGD-T (``top_targets`` = k > 0, AutoAttack:
k = 9): the target t runs over the k most likely classes at the clean x after the top one, with −CE(z, t) or the
targeted DLR −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2). ``y`` is the *true* label and the goal is misclassification:
the target only steers the search (``targeted`` elsewhere means ``y`` holds target labels; APGD has no such mode).

Start point: uniform in the ε-ball (the paper's x⁽⁰⁾ is any point of the feasible set). Examples misclassified
at the clean x are returned unchanged. Every run (restart or target) goes through the shared active set
(:mod:`robustlab.attacks.active`): an example leaves at its first misclassified iterate (early exit), with all its
copies when targets and restarts run batched; an example never fooled gets the highest-loss point of its first
run. This is an independent implementation written from the paper.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustlab.attacks.active import ActiveSet, deterministic_success, run_copies, success_mask
from robustlab.attacks.targets import check_target_order, linear_boundary_classes, top_other_classes
from robustlab.attacks.base import Attack, check_epsilon, parse_norm
from robustlab.attacks.losses import (check_eot_samples, cross_entropy, dlr_loss, loss_gradient,
                                      targeted_cross_entropy, targeted_dlr_loss)
from robustlab.attacks.perturbation import batch_view
from robustlab.attacks.pgd import ThreatModel, make_threat_model
from robustlab.attacks.registry import register_attack

APGD_LOSSES = ("ce", "dlr")


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ⌈p_j·steps⌉ (0 < w_j < steps) at which APGD may halve its step size."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # Rounding before ceil keeps e.g. 0.41·100 = 41.000000000000006 at 41.
    w = {math.ceil(round(pj * steps, 9)) for pj in p[1:]}
    return sorted(v for v in w if 0 < v < steps)


class APGD(Attack):
    """Auto-PGD with ``loss`` "ce" or "dlr" (see the module docstring for the algorithm and conventions).

    ``top_targets`` k > 0: APGD-T, one run toward each of k other classes (``restarts`` runs each): the k most
    likely (``target_order="logits"``, AutoAttack's), or the k nearest in a linearisation of the model
    (``"linear"``, :func:`robustlab.attacks.targets.linear_boundary_classes`); ``y`` stays the true label. ``batched``: all targets × restarts as copies of the batch in one call (True), one
    after another on the examples still robust (False), or batched on a GPU and sequential on a CPU (None: on a
    CPU the copies of an example fooled early would cost more than they save). ``eot_samples`` > 1 averages every
    gradient over that many passes. An example leaves as soon as an iterate fools the model (early exit), except
    with EOT or outside eval mode, where every run ends at its highest-loss point (``deterministic_success``).
    """

    def __init__(self, eps: float, *, loss: str = "ce", norm: str = "linf", steps: int = 100, restarts: int = 1,
                 top_targets: int = 0, target_order: str = "logits", rho: float = 0.75, momentum: float = 0.75,
                 eot_samples: int = 1, batched: bool | None = None, model_mode: str = "eval"):
        super().__init__(model_mode=model_mode)
        self.norm = parse_norm(norm)
        self.eps = check_epsilon(eps, self.norm)
        if loss not in APGD_LOSSES:
            raise ValueError(f"loss must be one of {APGD_LOSSES}, got {loss!r}")
        if steps < 1 or restarts < 1 or top_targets < 0:
            raise ValueError(f"steps and restarts must be >= 1 and top_targets >= 0, got steps={steps}, "
                             f"restarts={restarts}, top_targets={top_targets}")
        if not 0 < rho <= 1 or not 0 < momentum <= 1:
            raise ValueError(f"rho and momentum must be in (0, 1], got rho={rho}, momentum={momentum}")
        self.loss = loss
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.top_targets = int(top_targets)
        self.target_order = check_target_order(target_order)
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.eot_samples = check_eot_samples(eot_samples)
        self.batched = batched

    def _loss_fn(self, y: torch.Tensor, target: torch.Tensor | None):
        if target is None:
            return cross_entropy if self.loss == "ce" else dlr_loss
        if self.loss == "ce":
            return lambda logits, _y: targeted_cross_entropy(logits, target)
        return lambda logits, _y: targeted_dlr_loss(logits, y, target)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.eps == 0:
            return x.clone()
        with torch.no_grad():  # with EOT, the mean logits of as many draws as a gradient takes
            clean_logits = sum(model(x) for _ in range(self.eot_samples)) / self.eot_samples
        if not self.top_targets:
            targets = [None]
        elif self.target_order == "linear" and self.eot_samples == 1:
            targets = linear_boundary_classes(model, x, y, self.top_targets, self.norm)
        else:
            targets = top_other_classes(clean_logits, self.top_targets)
        batched = self.batched if self.batched is not None else x.device.type == "cuda"
        threat = make_threat_model(self.norm, self.eps)
        # An example misclassified at the start is left alone only when that is what the evaluation will see: one
        # draw of a randomised model misclassifying it says little (skipping those made EOT-APGD weaker than
        # EOT-PGD on noisy models).
        skip = success_mask(clean_logits, y) if deterministic_success(self.eot_samples, self.model_mode) else None
        return run_copies(model, x, y, lambda m, active: self._run(m, active, threat), restarts=self.restarts,
                          targets=targets, batched=batched, skip=skip)[0]

    def _run(self, model: nn.Module, active: ActiveSet, threat: ThreatModel) -> None:
        """One APGD run on the rows of ``active``: a row leaves at its first misclassified iterate; the rows that
        never fool the model end at their highest-loss point."""
        checkpoints = set(apgd_checkpoints(self.steps))
        alpha = self.momentum
        early_exit = deterministic_success(self.eot_samples, self.model_mode)

        def evaluate(point: torch.Tensor):
            g = loss_gradient(model, point, active.y, self._loss_fn(active.y, active.target), self.eot_samples)
            return g.grad, g.loss, success_mask(g.logits, active.y) & early_exit

        x_cur = threat.random_start(active.x)
        grad, loss, fooled = evaluate(x_cur)
        eta = torch.full((len(active),), 2.0 * self.eps, dtype=x_cur.dtype, device=x_cur.device)
        x_best, grad_best, best_loss = x_cur.clone(), grad.clone(), loss.clone()
        x_prev, prev_loss = x_cur, loss
        increases = torch.zeros_like(loss)
        ckpt_best, ckpt_reduced, last_ckpt = best_loss.clone(), torch.zeros_like(fooled), 0

        for k in range(self.steps + 1):
            (x_cur, x_prev, grad, loss, eta, x_best, grad_best, best_loss, prev_loss, increases, ckpt_best,
             ckpt_reduced) = active.retire(fooled, x_cur, x_cur, x_prev, grad, loss, eta, x_best, grad_best,
                                           best_loss, prev_loss, increases, ckpt_best, ckpt_reduced)
            if active.empty or k == self.steps:
                break
            z = threat.project(threat.step(x_cur, grad, eta), active.x)
            if k > 0:
                z = threat.project(x_cur + alpha * (z - x_cur) + (1.0 - alpha) * (x_cur - x_prev), active.x)
            x_prev, x_cur = x_cur, z
            grad, loss, fooled = evaluate(x_cur)

            increases += loss.gt(prev_loss)
            prev_loss = loss
            better = loss.gt(best_loss)
            x_best = torch.where(batch_view(better, x_cur), x_cur, x_best)
            grad_best = torch.where(batch_view(better, grad), grad, grad_best)
            best_loss = torch.where(better, loss, best_loss)

            if k + 1 in checkpoints:
                cond1 = increases < self.rho * (k + 1 - last_ckpt)
                cond2 = ~ckpt_reduced & best_loss.le(ckpt_best)
                reduce = cond1 | cond2
                eta = torch.where(reduce, eta / 2.0, eta)
                mask = batch_view(reduce, x_cur)
                x_cur = torch.where(mask, x_best, x_cur)
                x_prev = torch.where(mask, x_best, x_prev)
                grad = torch.where(mask, grad_best, grad)
                prev_loss = torch.where(reduce, best_loss, prev_loss)
                ckpt_reduced, ckpt_best, last_ckpt = reduce, best_loss.clone(), k + 1
                increases.zero_()
        active.finish(x_best)


@register_attack("apgd_ce")
class APGDCE(APGD):
    """APGD with the cross-entropy loss (``top_targets`` > 0: −CE of each target class)."""

    def __init__(self, eps: float, **options):
        super().__init__(eps, loss="ce", **options)


@register_attack("apgd_dlr")
class APGDDLR(APGD):
    """APGD with the DLR loss (needs ≥ 3 classes; ``top_targets`` > 0: the targeted DLR loss, ≥ 4 classes)."""

    def __init__(self, eps: float, **options):
        super().__init__(eps, loss="dlr", **options)
