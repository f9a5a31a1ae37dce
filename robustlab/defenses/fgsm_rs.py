"""Fast adversarial training, FGSM with a random start (FGSM-RS; Wong et al. 2020, Algorithm 3).

Per batch: δ ~ U(−ε, ε)ⁿ, one signed gradient step δ ← δ + α·sign(∇_δ CE(f(x + δ), y)) with α = 1.25·ε,
projected to the ε-ball and [0,1] (the attack ``fgsm_rs``, :mod:`robustlab.attacks.fgsm`, in train mode as the
paper's code); the model minimises CE(f(x + δ), y). With the one-cycle learning rate (``[schedule] name =
"one_cycle"``: linear up to the peak at 2/5 of training, then down to 0, updated every step) it trains a robust
model in a fraction of PGD-AT's time; α much above 1.25·ε (``[defense.attack] step_ratio``) leads to catastrophic
overfitting.
"""

from __future__ import annotations

from robustlab.config import AttackTable, attack_table
from robustlab.defenses.adversarial import AdversarialTraining, AdversaryOptions
from robustlab.defenses.base import register_defense


class FGSMRSOptions(AdversaryOptions):
    attack: AttackTable = attack_table("fgsm_rs", 0.3, model_mode="train")


@register_defense("fgsm_rs", FGSMRSOptions)
class FGSMRandomStart(AdversarialTraining):
    """Fast AT: cross-entropy on FGSM-RS examples only."""

    def weights(self) -> tuple[float, float]:
        return 0.0, 1.0
