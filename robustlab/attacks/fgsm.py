"""Single-step attacks: FGSM (Goodfellow et al. 2015), the least-likely-class step LL (Kurakin et al. 2017) and
FGSM from a random start (FGSM-RS, Wong et al. 2020, the training attack of fast adversarial training).

Each is one step of the shared L∞ loop in :mod:`robustlab.attacks.pgd`.
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks.base import Attack, check_epsilon
from robustlab.attacks.losses import check_eot_samples, cross_entropy, targeted_cross_entropy
from robustlab.attacks.pgd import LinfBall, gradient_steps
from robustlab.attacks.registry import register_attack
from robustlab.attacks.targets import check_target, chosen_targets


@register_attack("fgsm")
class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al. 2015): x + ε·sign ∇ₓ CE(f(x), y), clipped to [0,1].

    ``targeted=True``: ``y`` holds target labels and the step is x − ε·sign ∇ₓ CE(f(x), y); ``target=
    "least_likely"`` or ``"random"``: the same step toward a class the attack chooses
    (:mod:`robustlab.attacks.targets`).
    """

    def __init__(self, eps: float, *, targeted: bool = False, target: str | None = None, eot_samples: int = 1,
                 model_mode: str = "eval"):
        super().__init__(model_mode=model_mode)
        self.eps = check_epsilon(eps)
        self.target = check_target(target)
        self.targeted = bool(targeted) or self.target is not None
        self.eot_samples = check_eot_samples(eot_samples)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labels = chosen_targets(self.target, model, x, y) if self.target else y
        return gradient_steps(model, x, labels, LinfBall(self.eps), step_size=self.eps, steps=1, random_start=False,
                              loss_fn=targeted_cross_entropy if self.targeted else cross_entropy,
                              eot_samples=self.eot_samples)


@register_attack("ll")
class LeastLikely(FGSM):
    """Least-likely class step (AT²L appendix): x − ε·sign ∇ₓ CE(f(x), y_LL), y_LL = argmin f(x), clipped to [0,1]:
    FGSM with ``target="least_likely"`` (y_LL from the logits at the clean x; the ``y`` passed in is not used)."""

    def __init__(self, eps: float, *, eot_samples: int = 1, model_mode: str = "eval"):
        super().__init__(eps, target="least_likely", eot_samples=eot_samples, model_mode=model_mode)


@register_attack("fgsm_rs")
class RandomStartFGSM(Attack):
    """FGSM-RS (Wong et al. 2020, Algorithm 3): from δ ~ U(−ε, ε)ⁿ one signed gradient step of ``step_ratio``·ε
    (1.25; 2 and above overfit catastrophically), projected to the L∞ ε-ball and [0,1]."""

    def __init__(self, eps: float, *, step_ratio: float = 1.25, model_mode: str = "eval"):
        super().__init__(model_mode=model_mode)
        self.eps = check_epsilon(eps)
        if not step_ratio >= 0:
            raise ValueError(f"step_ratio must be >= 0, got {step_ratio}")
        self.step_ratio = float(step_ratio)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return gradient_steps(model, x, y, LinfBall(self.eps), step_size=self.step_ratio * self.eps, steps=1,
                              random_start=True)
