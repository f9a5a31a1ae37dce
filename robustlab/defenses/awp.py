"""Adversarial weight perturbation (AWP; Wu et al. 2020, eq. 8–9) on top of PGD-AT or TRADES.

    min_w max_{‖v_l‖ ≤ γ‖w_l‖} ρ(w + v)

Per batch, after the base defense has crafted x': one normalised ascent step on the weights,
v_l = γ · ‖w_l‖ · ∇_{w_l} ρ / ‖∇_{w_l} ρ‖ for every weight matrix and kernel (biases and normalisation parameters
are not perturbed); the loss and its gradient at w + v; the optimiser step; then v is removed, so the update is
w ← w − η·∇ρ(w + v). ρ is the base defense's loss (PGD-AT: CE on x'; TRADES: eq. 5), its gradient for v taken in
training mode on a copy of the buffers (the batch-norm statistics move once per batch, as without AWP).
γ 5e-3 is the paper's setting for batch-normalised ResNets (both bases); on LeNet-5, without batch norm, it ruins
training and 1e-3 works (`configs/baselines/`). ``awp_warmup``: epochs of the base defense alone first.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call

from robustlab.config import Options
from robustlab.defenses.base import Batch, Defense, LossOutput, register_defense
from robustlab.defenses.registry import build_defense
from robustlab.distributed import sum_over_processes


class AWPOptions(Options):
    base: Literal["pgd_at", "trades"] = "pgd_at"
    gamma: float = Field(5e-3, ge=0)  # γ: the perturbation's size relative to each layer's weight norm
    awp_warmup: int = Field(0, ge=0)  # 0-based epoch from which the weights are perturbed
    base_options: dict[str, Any] = Field(default_factory=dict)  # the base defense's options ([defense.base_options])


def weight_perturbation(model: nn.Module, loss_at, gamma: float) -> dict[str, torch.Tensor]:
    """v per weight tensor (ndim ≥ 2): γ‖w‖·g/‖g‖ with g = ∇_w loss_at(model called with its current weights)."""
    params = dict(model.named_parameters())
    names = [n for n, p in params.items() if p.ndim > 1 and p.requires_grad]
    buffers = {n: b.clone() for n, b in model.named_buffers()}  # batch-norm statistics of this pass are dropped
    weights = {n: params[n].detach().requires_grad_(True) for n in names}

    def perturbed_model(inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**params, **buffers, **weights}, (inputs,))

    grads = torch.autograd.grad(loss_at(perturbed_model).loss, [weights[n] for n in names], allow_unused=True)
    out = {}
    for name, grad in zip(names, grads):
        if grad is None:
            continue
        grad = sum_over_processes(grad.clone())  # every process takes the same v under torchrun
        w = params[name].detach()
        out[name] = gamma * w.norm() * grad / (grad.norm() + 1e-20)
    return out


@register_defense("awp", AWPOptions)
class AdversarialWeightPerturbation(Defense):
    """AT-AWP / TRADES-AWP: the base defense's loss at weights perturbed by γ-relative adversarial steps."""

    def __init__(self, options: AWPOptions, terms=None):
        super().__init__(options, terms)
        self.base = build_defense(options.base, options.base_options, where="defense.base_options")
        self.perturbation: dict[str, torch.Tensor] = {}

    def on_epoch_start(self, model: nn.Module, ctx) -> None:
        self.base.on_epoch_start_all(model, ctx)

    def on_epoch_end(self, model: nn.Module, ctx) -> dict[str, float]:
        return self.base.on_epoch_end_all(model, ctx)

    def craft(self, model: nn.Module, batch: Batch, ctx) -> torch.Tensor | None:
        return self.base.craft(model, batch, ctx)

    def loss(self, model: nn.Module, batch: Batch, ctx) -> LossOutput:
        if batch.x_adv is None or ctx.epoch < self.options.awp_warmup:
            return self.base.loss(model, batch, ctx)
        self.perturbation = weight_perturbation(model, lambda m: self.base.objective(m, batch, ctx),
                                                self.options.gamma)
        self._shift(model, +1.0)
        out = self.base.objective(model, batch, ctx)
        out.metrics["awp_norm"] = torch.sqrt(sum((v * v).sum() for v in self.perturbation.values())).detach()
        return out

    def after_step(self, model: nn.Module, ctx) -> None:
        self._shift(model, -1.0)
        self.perturbation = {}

    @torch.no_grad()
    def _shift(self, model: nn.Module, sign: float) -> None:
        params = dict(model.named_parameters())
        for name, v in self.perturbation.items():
            params[name].add_(v, alpha=sign)
