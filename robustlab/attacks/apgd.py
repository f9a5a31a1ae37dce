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

Losses (ascended): CE; DLR = −(z_y − max_{i≠y} z_i)/(z_π1 − z_π3). Targeted (``targeted=True``, "APGD-T"): the
target t runs over the ``n_target_classes`` most likely classes at the clean x after the top one, with −CE(z, t)
or the targeted DLR −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2). In either case ``y`` is the *true* label and the goal
is misclassification: the target only steers the search (unlike ``pgd``'s ``targeted``, where y holds targets).

Start point: uniform in the ε-ball (the paper's x⁽⁰⁾ is any point of the feasible set). Examples misclassified
at the clean x are returned unchanged; every run (restart or target) attacks only the examples not yet fooled and
each example keeps the first misclassified iterate; an example never fooled gets the highest-loss point of its
first run. This is an independent implementation written from the paper.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustlab.attacks.base import Attack, check_epsilon
from robustlab.attacks.losses import (check_eot_samples, cross_entropy, dlr_loss, loss_gradient,
                                      targeted_cross_entropy, targeted_dlr_loss)
from robustlab.attacks.pgd import THREAT_MODELS, ThreatModel, make_threat_model
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

    ``targeted``: APGD-T, looping over the ``n_target_classes`` most likely wrong classes (``restarts`` runs
    each); ``y`` stays the true label. ``eot_samples`` > 1 averages every gradient over that many passes.
    """

    def __init__(self, eps: float, *, loss: str = "ce", norm: str = "linf", steps: int = 100, restarts: int = 1,
                 targeted: bool = False, n_target_classes: int = 9, rho: float = 0.75, momentum: float = 0.75,
                 eot_samples: int = 1, model_mode: str = "eval"):
        super().__init__(model_mode=model_mode)
        self.eps = check_epsilon(eps)
        if loss not in APGD_LOSSES:
            raise ValueError(f"loss must be one of {APGD_LOSSES}, got {loss!r}")
        if str(norm).lower() not in THREAT_MODELS:
            raise ValueError(f"norm must be one of {sorted(THREAT_MODELS)}, got {norm!r}")
        if steps < 1 or restarts < 1 or n_target_classes < 1:
            raise ValueError(f"steps, restarts and n_target_classes must be >= 1, got steps={steps}, "
                             f"restarts={restarts}, n_target_classes={n_target_classes}")
        if not 0 < rho <= 1 or not 0 < momentum <= 1:
            raise ValueError(f"rho and momentum must be in (0, 1], got rho={rho}, momentum={momentum}")
        self.loss = loss
        self.norm = str(norm).lower()
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.targeted = bool(targeted)
        self.n_target_classes = int(n_target_classes)
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.eot_samples = check_eot_samples(eot_samples)

    def _loss_fn(self, y: torch.Tensor, target: torch.Tensor | None):
        if target is None:
            return cross_entropy if self.loss == "ce" else dlr_loss
        if self.loss == "ce":
            return lambda logits, _y: targeted_cross_entropy(logits, target)
        return lambda logits, _y: targeted_dlr_loss(logits, y, target)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            clean_logits = model(x)
        x_out = x.clone()
        done = clean_logits.argmax(1).ne(y)
        if self.eps == 0:
            return x_out
        threat = make_threat_model(self.norm, self.eps)
        if self.targeted:
            n_targets = min(self.n_target_classes, clean_logits.shape[1] - 1)
            order = clean_logits.argsort(dim=1, descending=True)
            targets = [order[:, i] for i in range(1, n_targets + 1)]
        else:
            targets = [None]
        first = True
        for target in targets:
            for _ in range(self.restarts):
                todo = (~done).nonzero().squeeze(1)
                if todo.numel() == 0:
                    return x_out
                adv, fooled = self._run(model, x[todo], y[todo], None if target is None else target[todo], threat)
                if first:
                    x_out[todo] = adv
                else:
                    x_out[todo[fooled]] = adv[fooled]
                done[todo[fooled]] = True
                first = False
        return x_out

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
             threat: ThreatModel) -> tuple[torch.Tensor, torch.Tensor]:
        """One APGD run: (the first misclassified iterate, else the highest-loss one; which examples were fooled)."""
        loss_fn = self._loss_fn(y, target)
        checkpoints = set(apgd_checkpoints(self.steps))
        n = x.shape[0]
        alpha = self.momentum

        def evaluate(point: torch.Tensor):
            g = loss_gradient(model, point, y, loss_fn, self.eot_samples)
            return g.grad, g.loss, g.logits.argmax(1).ne(y)

        eta = torch.full((n,), 2.0 * self.eps, dtype=x.dtype, device=x.device)
        x_cur = threat.random_start(x)
        grad, loss, fooled = evaluate(x_cur)
        x_adv = x_cur.clone()                      # first misclassified iterate
        x_best, grad_best, best_loss = x_cur.clone(), grad.clone(), loss.clone()
        x_prev, prev_loss = x_cur, loss
        increases = torch.zeros(n, device=x.device)
        ckpt_best, ckpt_reduced, last_ckpt = best_loss.clone(), torch.zeros_like(fooled), 0

        for k in range(self.steps):
            z = threat.project(threat.step(x_cur, grad, eta), x)
            if k > 0:
                z = threat.project(x_cur + alpha * (z - x_cur) + (1.0 - alpha) * (x_cur - x_prev), x)
            x_prev, x_cur = x_cur, z
            grad, loss, now_fooled = evaluate(x_cur)

            new = now_fooled & ~fooled
            x_adv[new] = x_cur[new]
            fooled |= new
            if bool(fooled.all()):
                break

            increases += loss.gt(prev_loss)
            prev_loss = loss
            better = loss.gt(best_loss)
            x_best[better] = x_cur[better]
            grad_best[better] = grad[better]
            best_loss = torch.where(better, loss, best_loss)

            if k + 1 in checkpoints:
                cond1 = increases < self.rho * (k + 1 - last_ckpt)
                cond2 = ~ckpt_reduced & best_loss.le(ckpt_best)
                reduce = cond1 | cond2
                eta = torch.where(reduce, eta / 2.0, eta)
                mask = reduce.view(-1, *[1] * (x.dim() - 1))
                x_cur = torch.where(mask, x_best, x_cur)
                x_prev = torch.where(mask, x_best, x_prev)
                grad = torch.where(mask, grad_best, grad)
                prev_loss = torch.where(reduce, best_loss, prev_loss)
                ckpt_reduced, ckpt_best, last_ckpt = reduce, best_loss.clone(), k + 1
                increases.zero_()

        fmask = fooled.view(-1, *[1] * (x.dim() - 1))
        return torch.where(fmask, x_adv, x_best), fooled


@register_attack("apgd_ce")
class APGDCE(APGD):
    """APGD with the cross-entropy loss (targeted: −CE of the target class)."""

    def __init__(self, eps: float, *, norm: str = "linf", steps: int = 100, restarts: int = 1,
                 targeted: bool = False, n_target_classes: int = 9, rho: float = 0.75, momentum: float = 0.75,
                 eot_samples: int = 1, model_mode: str = "eval"):
        super().__init__(eps, loss="ce", norm=norm, steps=steps, restarts=restarts, targeted=targeted,
                         n_target_classes=n_target_classes, rho=rho, momentum=momentum, eot_samples=eot_samples,
                         model_mode=model_mode)


@register_attack("apgd_dlr")
class APGDDLR(APGD):
    """APGD with the DLR loss (needs ≥ 3 classes; targeted: the targeted DLR loss, ≥ 4 classes)."""

    def __init__(self, eps: float, *, norm: str = "linf", steps: int = 100, restarts: int = 1,
                 targeted: bool = False, n_target_classes: int = 9, rho: float = 0.75, momentum: float = 0.75,
                 eot_samples: int = 1, model_mode: str = "eval"):
        super().__init__(eps, loss="dlr", norm=norm, steps=steps, restarts=restarts, targeted=targeted,
                         n_target_classes=n_target_classes, rho=rho, momentum=momentum, eot_samples=eot_samples,
                         model_mode=model_mode)
