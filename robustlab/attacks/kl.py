"""TRADES' inner maximisation (Zhang et al. 2019, eq. 5): x' = argmax_{‖x' − x‖∞ ≤ ε} KL(f(x) ‖ f(x')).

From x + 0.001·N(0, I), ``steps`` signed gradient steps of ``step_size`` (default 2.5·ε/steps) on the KL
divergence from the clean prediction (held fixed), projected to the ε-ball and [0,1]; the last iterate (no early
exit: there is no label to fool). The training attack of TRADES.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.base import Attack, check_epsilon
from robustlab.attacks.losses import kl_from_clean
from robustlab.attacks.pgd import LinfBall, gradient_steps
from robustlab.attacks.registry import register_attack


@register_attack("trades_kl")
class KLAttack(Attack):
    """Ascend KL(f(x) ‖ f(x')) from x + 0.001·N(0, I) inside the L∞ ε-ball (TRADES)."""

    def __init__(self, eps: float, *, steps: int = 10, step_size: float | None = None, model_mode: str = "eval"):
        super().__init__(model_mode=model_mode)
        self.eps = check_epsilon(eps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = int(steps)
        self.step_size = float(step_size) if step_size is not None else 2.5 * self.eps / self.steps

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        return gradient_steps(model, x, p_clean, LinfBall(self.eps), step_size=self.step_size, steps=self.steps,
                              random_start=False, loss_fn=kl_from_clean, start=x + 0.001 * torch.randn_like(x))
