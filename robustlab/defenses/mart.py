"""MART (Wang et al. 2020): misclassification-aware adversarial training, eq. (10) of the paper.

    L = BCE(p(x'), y) + λ · KL(p(x) ‖ p(x')) · (1 − p_y(x))
    BCE(p(x'), y) = −log p_y(x') − log(1 − max_{k≠y} p_k(x'))

x' is PGD on the cross-entropy (the training attack of PGD-AT). The KL term is weighted per example by how
*mis*classified the clean example is (1 − its clean probability of the true class) and averaged over the batch;
the boosted cross-entropy adds a margin term on the strongest wrong class. λ 6 (the paper's CIFAR-10 setting).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from robustlab.attacks.losses import kl_from_clean
from robustlab.config import AttackTable, attack_table
from robustlab.defenses.adversarial import AdversaryOptions, PairedLogitsTraining
from robustlab.defenses.base import register_defense


def mart_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, lam: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, BCE, weighted KL) of eq. (10), batch means."""
    p_adv = F.softmax(logits_adv, dim=1)
    wrong = p_adv.scatter(1, y[:, None], -1.0).amax(dim=1)  # max_{k≠y} p_k(x')
    bce = (F.cross_entropy(logits_adv, y, reduction="none") - (1.0 - wrong).clamp_min(1e-12).log()).mean()
    p_clean = F.softmax(logits_clean, dim=1)
    weight = 1.0 - p_clean.gather(1, y[:, None]).squeeze(1)
    kl = (kl_from_clean(logits_adv, p_clean) * weight).mean()
    return bce + lam * kl, bce, kl


class MARTOptions(AdversaryOptions):
    attack: AttackTable = attack_table("pgd", 0.3, steps=10)  # the paper: 10 steps of 2/255 for ε 8/255
    lam: float = Field(6.0, ge=0)  # λ of eq. (10)


@register_defense("mart", MARTOptions)
class MART(PairedLogitsTraining):
    """MART: boosted cross-entropy on x' plus λ times the misclassification-weighted KL divergence."""

    def paired_loss(self, logits_clean, logits_adv, y):
        loss, bce, kl = mart_loss(logits_clean, logits_adv, y, self.options.lam)
        return loss, {"bce_adv": bce, "kl_weighted": kl}
