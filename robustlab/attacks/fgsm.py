"""Single-step attacks: FGSM (Goodfellow et al. 2015); the least-likely-class variant belongs here too."""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks.base import Attack, check_epsilon
from robustlab.attacks.pgd import linf_steps


class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al. 2015): x + ε·sign ∇ₓ CE(f(x), y), clipped to [0,1]."""

    def __init__(self, eps: float, *, targeted: bool = False, model_mode: str = "eval"):
        super().__init__(model_mode=model_mode)
        self.eps = check_epsilon(eps)
        self.targeted = bool(targeted)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return linf_steps(model, x, y, eps=self.eps, step_size=self.eps, steps=1, random_start=False,
                          targeted=self.targeted)
