"""Learn2Perturb (Jeddi et al., CVPR 2020; spec METHODS.md §4; code ArmenJeddi/Learn2Perturb ``train.py``).

The model carries :class:`~robustlab.models.noise.PerturbationInjection` modules (``[model] name = "noisy"``,
``noise = "l2p"``), each adding θ ⊙ ε to a feature map. Per iteration (alternating update, spec §4):

1. once the noise is on (``noise_start_epoch``, 10 in the code): a regulariser step on θ alone,
   L_reg = −(γ/τ)·Σ_modules Σ_elements √θ (paper eq. 8 with g(θ) = −√θ/τ), so ∂L_reg/∂θ = −γ/(2τ√θ): it pushes
   θ up, against the loss, which pulls it down;
2. the loss: CE on clean inputs during the warm-up, then, from ``warmup_epochs`` (20 in the code), eq. 11
   α·CE(x) + β·CE(x'), x' = PGD-7 against the noisy model in eval mode (α = β = 0.5);
3. one backward; the main optimiser steps W (weight decay 1e-4), the θ optimiser steps θ (its own SGD, Nesterov,
   momentum 0.9, lr 0.1, no weight decay) — :mod:`robustlab.defenses.noise_training`;
4. θ ← max(θ, θ_min), θ_min = 0.01, after every iteration.

**Learn2Perturb-R** (``variant = "l2p_r"``, paper §4): θ is moved by the regulariser only (step 3 skips θ).

**τ** [R]: eq. 9 as printed divides by zero; τ(e) = H_{e−s+1} = Σ_{j=1}^{e−s+1} 1/j for epoch e ≥ s, s the first
noise epoch (``tau = "harmonic"``, default); ``"linear"`` (τ = e − s + 1) and ``"constant"`` (τ = 1) are options.
Epochs are 0-based here, so the first noise epoch has τ = H₁ = 1.

Other resolutions [R]: per-example noise draws (model option ``shared_draw``), attacks on the true labels
(``labels = "predicted"`` as in the code); the regulariser step uses the θ optimiser (same lr and momentum).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from robustlab.defenses.base import register_defense
from robustlab.defenses.noise_training import NoisyAdversarialTraining, NoisyATOptions
from robustlab.models.noise import theta_parameters

TAU_RULES = ("harmonic", "linear", "constant")


def harmonic_number(n: int) -> float:
    """H_n = Σ_{j=1}^{n} 1/j (H_0 = 0)."""
    return sum(1.0 / j for j in range(1, n + 1))


def tau_at(epoch: int, noise_start_epoch: int, rule: str = "harmonic") -> float:
    """τ of the regulariser in 0-based ``epoch`` (≥ the first noise epoch ``noise_start_epoch``)."""
    k = epoch - noise_start_epoch + 1
    if k < 1:
        raise ValueError(f"τ is defined from the first noise epoch {noise_start_epoch}, got epoch {epoch}")
    if rule == "harmonic":
        return harmonic_number(k)
    if rule == "linear":
        return float(k)
    if rule == "constant":
        return 1.0
    raise ValueError(f"unknown τ rule {rule!r}; one of {TAU_RULES}")


def regulariser_loss(thetas: list[torch.Tensor], gamma: float, tau: float) -> torch.Tensor:
    """L_reg = −(γ/τ)·Σ_modules Σ_elements √θ (paper eq. 8 with g(θ) = −√θ/τ)."""
    return -(gamma / tau) * sum(t.sqrt().sum() for t in thetas)


class L2POptions(NoisyATOptions):
    variant: Literal["l2p", "l2p_r"] = "l2p"
    gamma: float = Field(1e-4, ge=0)
    tau: Literal[TAU_RULES] = "harmonic"
    theta_min: float = Field(0.01, gt=0)
    noise_start_epoch: int = Field(10, ge=0)
    warmup_epochs: int = Field(20, ge=0)  # PGD-AT from this epoch


@register_defense("l2p", L2POptions)
class Learn2Perturb(NoisyAdversarialTraining):
    """Learn2Perturb's alternating update (see the module doc); ``variant = "l2p_r"`` for Learn2Perturb-R."""

    noise_label = "theta"

    def __init__(self, options: L2POptions, terms=None):
        super().__init__(options, terms)
        self.tau = 1.0

    def noise_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return theta_parameters(model)

    def missing_noise_hint(self) -> str:
        return "use [model] name = 'noisy' with noise = 'l2p' (Learn2Perturb perturbation-injection modules)"

    def steps_noise_on_loss(self) -> bool:
        return self.options.variant == "l2p"

    def on_epoch_start(self, model: nn.Module, ctx) -> None:
        super().on_epoch_start(model, ctx)
        if self.noise_on(ctx.epoch):
            self.tau = tau_at(ctx.epoch, self.options.noise_start_epoch, self.options.tau)

    def on_epoch_end(self, model: nn.Module, ctx) -> dict[str, float]:
        return {**super().on_epoch_end(model, ctx), "tau": round(self.tau, 6)}

    def update_auxiliaries(self, model: nn.Module, batch, ctx) -> dict[str, torch.Tensor]:
        """Step 1: one θ-optimiser step on L_reg alone (once the noise is on), then empty θ gradients."""
        if self.noise_on(ctx.epoch) and self.options.gamma > 0:
            self.noise_opt.zero_grad(set_to_none=True)
            with torch.enable_grad():
                regulariser_loss(self.noise_params, self.options.gamma, self.tau).backward()
            self.noise_opt.step()
        return super().update_auxiliaries(model, batch, ctx)

    def after_step(self, model: nn.Module, ctx) -> None:
        """Step 4: θ ≥ θ_min."""
        with torch.no_grad():
            for theta in self.noise_params:
                theta.clamp_(min=self.options.theta_min)


__all__ = ["L2POptions", "Learn2Perturb", "harmonic_number", "regulariser_loss", "tau_at"]
