"""Virtual adversarial training (Miyato et al., ICLR 2016), baseline of the adversary-critic paper (spec §2, ε 2.0).

L = CE(f(x), y) + α·KL(p(·|x) ‖ p(·|x + r_vadv)), the clean distribution p(·|x) held constant, with
r_vadv = ε·d/‖d‖₂ (per example) and d found by ``power_iterations`` of the power method from a random unit vector:
d ← ∇_d KL(p(·|x) ‖ p(·|x + ξ·d/‖d‖₂)) (``xi`` the finite-difference scale). The label is not used by the
perturbation (VAT's point). No [0,1] box on x + r_vadv, as in the original method [R]. Defaults: ε 2.0 (the paper's
baseline), α 1, ξ 1e-6, one power iteration (Miyato et al.) — all configurable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from robustlab.attacks.perturbation import batch_view, flat_norm
from robustlab.config import Options
from robustlab.defenses.base import Batch, Defense, LossOutput, register_defense
from robustlab.predictions import batch_accuracy


def unit_l2(d: torch.Tensor) -> torch.Tensor:
    """Each example of ``d`` scaled to unit L2 norm."""
    return d / batch_view(flat_norm(d).clamp_min(1e-12), d)


def kl_from_logits(clean_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Batch mean of KL(softmax(clean_logits) ‖ softmax(logits))."""
    log_p = F.log_softmax(clean_logits, dim=1)
    return (log_p.exp() * (log_p - F.log_softmax(logits, dim=1))).sum(1).mean()


def virtual_adversarial_direction(model: nn.Module, x: torch.Tensor, clean_logits: torch.Tensor, *, xi: float,
                                  power_iterations: int) -> torch.Tensor:
    """Unit-norm d approximating the dominant eigenvector of the KL's Hessian at x (power method), detached."""
    clean_logits = clean_logits.detach()
    d = unit_l2(torch.randn_like(x))
    for _ in range(power_iterations):
        d = (xi * d).requires_grad_(True)
        (g,) = torch.autograd.grad(kl_from_logits(clean_logits, model(x + d)), d)
        d = unit_l2(g.detach())
    return d


class VATOptions(Options):
    eps: float = Field(2.0, ge=0)  # L2 norm of r_vadv
    alpha: float = Field(1.0, ge=0)  # weight of the KL term
    xi: float = Field(1e-6, gt=0)
    power_iterations: int = Field(1, ge=1)


@register_defense("vat", VATOptions)
class VirtualAdversarialTraining(Defense):
    """CE + α·KL(p(x) ‖ p(x + r_vadv)) (see the module docstring)."""

    def __init__(self, options: VATOptions, terms=None):
        super().__init__(options, terms)

    def loss(self, model: nn.Module, batch: Batch, ctx) -> LossOutput:
        o, x, y = self.options, batch.x, batch.y
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        d = virtual_adversarial_direction(model, x, logits, xi=o.xi, power_iterations=o.power_iterations)
        x_adv = x + o.eps * d
        logits_adv = model(x_adv)
        kl = kl_from_logits(logits.detach(), logits_adv)
        loss = ce + o.alpha * kl
        metrics = {"ce": ce.detach(), "kl": kl.detach(), "loss": loss.detach(),
                   "acc": batch_accuracy(logits, y)}
        return LossOutput(loss, metrics, x_adv=x_adv.detach(), logits_clean=logits, logits_adv=logits_adv)


__all__ = ["VATOptions", "VirtualAdversarialTraining", "kl_from_logits", "unit_l2", "virtual_adversarial_direction"]
