"""The adversary critic's loss terms (Matyasko & Chau 2018; spec METHODS.md §2): the critic's loss with its
gradient penalty at real and adversarial points, the cycle distance, and the pretraining weight decay.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.perturbation import flat_norm
from robustlab.errors import ConfigError


def gradient_penalty(score: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, mean_i (‖∇ₓ z_i‖₂ − 1)²)`` with z = score(x) per example; differentiable in score's parameters."""
    x = x.detach().requires_grad_(True)
    z = score(x)
    (g,) = torch.autograd.grad(z.sum(), x, create_graph=True)
    return z, (flat_norm(g) - 1).square().mean()


def critic_loss(critic: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, y_adv: torch.Tensor,
                grad_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_D of spec §2: real pairs (x, y) → 1, adversarial pairs (x̂, ŷ) → 0, gradient penalty at each separately."""
    z_real, gp_real = gradient_penalty(lambda v: critic(v, y), x)
    z_adv, gp_adv = gradient_penalty(lambda v: critic(v, y_adv), x_adv)
    bce = (F.binary_cross_entropy_with_logits(z_real, torch.ones_like(z_real))
           + F.binary_cross_entropy_with_logits(z_adv, torch.zeros_like(z_adv)))
    loss = bce + grad_weight * (gp_real + gp_adv)
    metrics = {"critic_loss": loss.detach(), "critic_gp": (gp_real + gp_adv).detach(),
               "critic_acc_real": (z_real.detach() > 0).float().mean(),
               "critic_acc_adv": (z_adv.detach() < 0).float().mean()}
    return loss, metrics


def cycle_distance(x: torch.Tensor, x_rec: torch.Tensor, squared: bool) -> torch.Tensor:
    """Per-example ‖x − x_rec‖₂² (``squared``) or ‖x − x_rec‖₂."""
    sq = (x - x_rec).flatten(1).square().sum(1)
    return sq if squared else torch.sqrt(sq + 1e-12)


def output_layer(model: nn.Module) -> nn.Linear:
    """The classifier's output layer: its last ``nn.Linear`` module [R]."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear output layer for the pretraining weight decay")
    return linears[-1]


def hidden_weight_decay(model: nn.Module) -> torch.Tensor:
    """½Σ‖W‖² over the weight matrices / kernels (dim ≥ 2) of every layer but the output layer."""
    skip = {id(p) for p in output_layer(model).parameters()}
    weights = [p for p in model.parameters() if p.dim() >= 2 and id(p) not in skip]
    return 0.5 * sum(w.square().sum() for w in weights)
