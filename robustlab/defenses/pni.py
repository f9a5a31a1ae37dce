"""Parametric Noise Injection (He, Rakin & Fan, CVPR 2019; spec METHODS.md §4 "PNI baseline"; code
elliothe/CVPR_2019_PNI): the Learn2Perturb paper's main baseline.

The model's Conv2d / Linear layers compute with W + α·η, η ~ N(0, std(W)²) (``[model] name = "noisy"``,
``noise = "pni"``, ``pni_mode`` layer / channel / element). α (α₀ = 0.25) is trained jointly with W on the
adversarial-training loss 0.5·CE(x) + 0.5·CE(PGD-7(x)) (ε 8/255, step 0.01), with no regulariser and no weight
decay on α (its own SGD, :mod:`robustlab.defenses.noise_training`). Nothing pushes α up, so the loss is free to
shrink the noise: the per-epoch log (``alpha_mean``) shows it, next to Learn2Perturb's ``theta_mean``.
"""

from __future__ import annotations

from torch import nn

from robustlab.defenses.base import register_defense
from robustlab.defenses.noise_training import NoisyAdversarialTraining, NoisyATOptions
from robustlab.models.noise import alpha_parameters


class PNIOptions(NoisyATOptions):
    pass


@register_defense("pni", PNIOptions)
class ParametricNoiseInjection(NoisyAdversarialTraining):
    """PGD-AT (α/β mix) with the PNI noise scales α trained jointly with W."""

    noise_label = "alpha"

    def noise_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return alpha_parameters(model)

    def missing_noise_hint(self) -> str:
        return "use [model] name = 'noisy' with noise = 'pni' (PNI weight-noise layers)"


__all__ = ["PNIOptions", "ParametricNoiseInjection"]
