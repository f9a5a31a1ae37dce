"""ALP: adversarial logit pairing (Kannan, Kurakin & Goodfellow 2018), the baseline of TLA (spec METHODS.md §3).

Loss on a batch of k clean examples x with PGD examples x'::

    L = α·CE(f(x), y) + β·CE(f(x'), y) + λ · (1/k) Σ_i ‖f(x_i) − f(x'_i)‖₂²

f = the logits. The CE part is PGD-AT's clean/adversarial mix (:func:`mixed_adversarial_loss`); ALP trains on a
half-clean, half-adversarial minibatch, i.e. ``mix = "weighted"`` with α = β = 0.5 (the default here);
``mix = "adversarial"`` keeps only the adversarial CE (the pairing still uses a clean forward pass). The pairing
loss is the squared L2 distance of the logits, averaged over the batch; λ = ``lam_pair`` (0.5 by default [R]: the
weight is a tuned hyperparameter in the paper; keep it configurable). The attack and its schedule (warm-up, ε ramp,
BN in eval mode) are PGD-AT's.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from robustlab.defenses.adversarial import PGDAdversarialTraining, PGDATOptions
from robustlab.defenses.base import Batch, LossOutput, register_defense


def logit_pairing(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """(1/k) Σ_i ‖z_i − z'_i‖₂²: the ALP pairing term on clean and adversarial logits."""
    return (logits_clean - logits_adv).pow(2).sum(dim=1).mean()


class ALPOptions(PGDATOptions):
    mix: Literal["adversarial", "weighted"] = "weighted"
    lam_pair: float = Field(0.5, ge=0)  # λ: weight of the logit pairing [R]


@register_defense("alp", ALPOptions)
class ALP(PGDAdversarialTraining):
    """PGD-AT's mixed CE plus λ × logit pairing; see the module docstring."""

    def objective(self, model: nn.Module, batch: Batch, ctx) -> LossOutput:
        out = super().objective(model, batch, ctx)
        if out.logits_clean is None:
            out.logits_clean = model(batch.x)
        pairing = logit_pairing(out.logits_clean, out.logits_adv)
        out.loss = out.loss + self.options.lam_pair * pairing
        out.metrics.update(pairing=pairing.detach(), loss=out.loss.detach())
        return out
