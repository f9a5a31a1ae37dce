"""TRADES (Zhang et al. 2019): the trade-off between accuracy and robustness, eq. (5) of the paper.

    min_f  E [ CE(f(x), y) + β · KL(f(x) ‖ f(x')) ],   x' = argmax_{‖x' − x‖∞ ≤ ε} KL(f(x) ‖ f(x'))

The inner maximisation is the attack ``trades_kl`` (:mod:`robustlab.attacks.kl`: from x + 0.001·N(0, I),
``steps`` sign steps on the KL divergence from the clean prediction, projected to the ε-ball and [0,1]), with the
model in eval mode while it runs. The KL term is the batch mean of the per-example divergences; β 6 (the paper's
CIFAR-10 setting).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from robustlab.attacks.losses import kl_from_clean
from robustlab.config import AttackTable, attack_table
from robustlab.defenses.adversarial import AdversaryOptions, PairedLogitsTraining
from robustlab.defenses.base import register_defense


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, CE, KL) of eq. (5): CE(f(x), y) + β · mean_i KL(f(x_i) ‖ f(x'_i)); the clean side is not detached."""
    ce = F.cross_entropy(logits_clean, y)
    kl = kl_from_clean(logits_adv, F.softmax(logits_clean, dim=1)).mean()
    return ce + beta * kl, ce, kl


class TRADESOptions(AdversaryOptions):
    # the KL attack (robustlab/attacks/kl.py): 10 steps of 2.5·ε/steps (the paper: 0.007 for ε 0.031)
    attack: AttackTable = attack_table("trades_kl", 0.3, steps=10)
    beta: float = Field(6.0, ge=0)  # 1/λ of the paper: the weight of the robustness (KL) term


@register_defense("trades", TRADESOptions)
class TRADES(PairedLogitsTraining):
    """TRADES: clean cross-entropy plus β times the KL divergence to the prediction at the KL-maximising x'."""

    def paired_loss(self, logits_clean, logits_adv, y):
        loss, ce, kl = trades_loss(logits_clean, logits_adv, y, self.options.beta)
        return loss, {"ce_clean": ce, "kl": kl}
