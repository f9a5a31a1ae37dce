"""Projected gradient descent in the L∞ ball (Madry et al. 2018) and its special cases.

One loop serves FGSM (one step of size ε, no random start), I-FGSM / BIM (no random start) and PGD (uniform
random start in the ε-ball). Each step is x ← Π_{B∞(x0, ε) ∩ [0,1]}(x ± α·sign ∇ₓ L). Targeted attacks descend
the loss of the target label. With restarts, an example keeps the first adversarial example that fools the model.
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks.base import Attack, check_epsilon, input_gradient


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the L∞ ball of radius ``eps`` around ``x`` intersected with the [0,1] box."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def linf_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float, steps: int,
               random_start: bool, targeted: bool = False) -> torch.Tensor:
    """The shared sign-gradient loop; ``y`` is the true label, or the target label when ``targeted``."""
    if random_start and eps > 0:
        x_adv = project_linf(x + torch.empty_like(x).uniform_(-eps, eps), x, eps)
    else:
        x_adv = x.clone()
    direction = -1.0 if targeted else 1.0
    for _ in range(steps):
        grad, _ = input_gradient(model, x_adv, y)
        x_adv = project_linf(x_adv + (direction * step_size) * grad.sign(), x, eps)
    return x_adv


class PGD(Attack):
    """L∞ PGD: ``steps`` sign steps of ``step_size``, random start, optional target labels and restarts."""

    def __init__(self, eps: float, *, steps: int = 40, step_size: float | None = None, random_start: bool = True,
                 restarts: int = 1, targeted: bool = False, model_mode: str = "eval"):
        super().__init__(model_mode=model_mode)
        self.eps = check_epsilon(eps)
        if steps < 1 or restarts < 1:
            raise ValueError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
        self.steps = int(steps)
        self.step_size = float(step_size) if step_size is not None else 2.5 * self.eps / self.steps
        self.random_start = bool(random_start)
        self.restarts = int(restarts)
        self.targeted = bool(targeted)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = None
        for _ in range(self.restarts):
            x_adv = linf_steps(model, x, y, eps=self.eps, step_size=self.step_size, steps=self.steps,
                               random_start=self.random_start, targeted=self.targeted)
            if self.restarts == 1:
                return x_adv
            with torch.no_grad():
                pred = model(x_adv).argmax(1)
            success = pred.eq(y) if self.targeted else pred.ne(y)
            if best is None:
                best, done = x_adv, success
            else:
                take = success & ~done
                best = torch.where(take.view(-1, *[1] * (x.dim() - 1)), x_adv, best)
                done = done | success
            if bool(done.all()):
                break
        return best
