"""Fast adversarial training, FGSM with a random start (FGSM-RS; Wong et al. 2020, Algorithm 3).

Per batch: δ ~ U(−ε, ε)ⁿ, one signed gradient step δ ← δ + α·sign(∇_δ CE(f(x + δ), y)) with α = 1.25·ε,
projected to the ε-ball and [0,1]; the model minimises CE(f(x + δ), y). With the one-cycle learning rate
(``[schedule] name = "one_cycle"``: linear up to the peak at 2/5 of training, then down to 0, updated every step)
it trains a robust model in a fraction of PGD-AT's time; α much above 1.25ε leads to catastrophic overfitting.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from robustlab.attacks.base import Attack, check_epsilon
from robustlab.attacks.pgd import LinfBall, gradient_steps
from robustlab.defenses.adversarial import AdversarialTraining, AdversaryOptions
from robustlab.defenses.base import register_defense


class RandomStartFGSM(Attack):
    """One signed gradient step of ``step_size`` from a uniform random point of the L∞ ε-ball."""

    def __init__(self, eps: float, *, step_size: float, model_mode: str = "eval"):
        super().__init__(model_mode=model_mode)
        self.eps, self.step_size = check_epsilon(eps), step_size

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return gradient_steps(model, x, y, LinfBall(self.eps), step_size=self.step_size, steps=1, random_start=True)


class FGSMRSOptions(AdversaryOptions):
    step_ratio: float = Field(1.25, ge=0)  # α / ε (Wong et al.: 1.25; 2 and above overfit catastrophically)
    attack_mode: Literal["eval", "train"] = "train"  # the paper: train mode


@register_defense("fgsm_rs", FGSMRSOptions)
class FGSMRandomStart(AdversarialTraining):
    """Fast AT: cross-entropy on FGSM-RS examples only."""

    def make_attack(self, eps: float) -> Attack:
        return RandomStartFGSM(eps, step_size=self.options.step_ratio * eps, model_mode=self.options.attack_mode)

    def weights(self) -> tuple[float, float]:
        return 0.0, 1.0
