"""TRADES (Zhang et al. 2019): the trade-off between accuracy and robustness, eq. (5) of the paper.

    min_f  E [ CE(f(x), y) + β · KL(f(x) ‖ f(x')) ],   x' = argmax_{‖x' − x‖∞ ≤ ε} KL(f(x) ‖ f(x'))

The inner maximisation starts at x + 0.001·N(0, I) and takes ``steps`` sign steps of ``step_size`` on the KL
divergence from the clean prediction (held fixed), projected to the ε-ball and [0,1]; the model is in eval mode
while it runs. The KL term is the batch mean of the per-example divergences; β 6 (the paper's CIFAR-10 setting).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from robustlab.attacks.base import Attack, check_epsilon
from robustlab.attacks.pgd import LinfBall, gradient_steps
from robustlab.defenses.adversarial import AdversarialTraining, AdversaryOptions, paired_output
from robustlab.defenses.base import Batch, LossOutput, register_defense


def kl_from_clean(logits: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p_clean ‖ softmax(logits)) = Σ_k p_k (log p_k − log q_k)."""
    return (p_clean * (p_clean.clamp_min(1e-12).log() - F.log_softmax(logits, dim=1))).sum(dim=1)


class KLAttack(Attack):
    """TRADES' inner maximisation: ascend KL(f(x) ‖ f(x')) from x + 0.001·N(0, I) inside the L∞ ε-ball."""

    def __init__(self, eps: float, *, steps: int, step_size: float, model_mode: str = "eval"):
        super().__init__(model_mode=model_mode)
        self.eps, self.steps, self.step_size = check_epsilon(eps), steps, step_size

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        start = x + 0.001 * torch.randn_like(x)
        return gradient_steps(model, x, p_clean, LinfBall(self.eps), step_size=self.step_size, steps=self.steps,
                              random_start=False, loss_fn=kl_from_clean, start=start)


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, CE, KL) of eq. (5): CE(f(x), y) + β · mean_i KL(f(x_i) ‖ f(x'_i)); the clean side is not detached."""
    ce = F.cross_entropy(logits_clean, y)
    kl = kl_from_clean(logits_adv, F.softmax(logits_clean, dim=1)).mean()
    return ce + beta * kl, ce, kl


class TRADESOptions(AdversaryOptions):
    steps: int = Field(10, ge=1)
    step_size: float = Field(0.0, ge=0)  # 0: 2.5·ε/steps (the paper: 0.007 for ε 0.031 and 10 steps)
    beta: float = Field(6.0, ge=0)       # 1/λ of the paper: the weight of the robustness (KL) term


@register_defense("trades", TRADESOptions)
class TRADES(AdversarialTraining):
    """TRADES: clean cross-entropy plus β times the KL divergence to the prediction at the KL-maximising x'."""

    def make_attack(self, eps: float) -> Attack:
        o = self.options
        return KLAttack(eps, steps=o.steps, step_size=o.step_size or 2.5 * eps / o.steps, model_mode=o.attack_mode)

    def objective(self, model: nn.Module, batch: Batch, ctx) -> LossOutput:
        logits_clean, logits_adv = model(batch.x), model(batch.x_adv)
        loss, ce, kl = trades_loss(logits_clean, logits_adv, batch.y, self.options.beta)
        return paired_output(loss, batch.x_adv, logits_clean, logits_adv, batch.y, ce_clean=ce, kl=kl)
