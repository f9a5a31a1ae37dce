"""Expectation over Transformation (EOT; Athalye et al. 2018) for randomised models.

Against a model whose forward pass is random (Learn2Perturb / PNI noise that stays on at inference, dropout
kept on, input randomisation), one sampled gradient is a noisy estimate, and attacking with it underestimates the
attack. EOT ascends the *expected* loss instead: each step uses the mean of the loss gradients of ``n`` forward
passes, ``(1/n) Σⱼ ∇ₓ L(f_j(x), y)``.

Design: averaging the *logits* (a wrapper module whose forward returns mean logits) is not the same thing and is
not what EOT means, so the averaging lives in the one gradient function every loop calls,
:func:`robustlab.attacks.losses.loss_gradient` (``samples=n``). Every gradient attack (``fgsm``, ``ll``,
``pgd``, ``pgd_l2``, ``ifgsm``, ``ill``, ``apgd_ce``, ``apgd_dlr``) therefore takes ``eot_samples``;
:func:`with_eot` turns any of them into its EOT version, and ``eot_pgd`` is L∞ PGD with the Learn2Perturb
evaluation's 80 samples by default.

The randomness must actually be on during the attack: noise modules that ignore train/eval mode need nothing;
for dropout pass ``model_mode="train"`` (note that this also puts batch-norm in training mode).
"""

from __future__ import annotations

import copy

from robustlab.attacks.base import Attack
from robustlab.attacks.losses import check_eot_samples, loss_gradient
from robustlab.attacks.pgd import PGD
from robustlab.attacks.registry import register_attack

__all__ = ["EOTPGD", "loss_gradient", "with_eot"]


@register_attack("eot_pgd")
class EOTPGD(PGD):
    """L∞ PGD whose every gradient is the EOT average over ``eot_samples`` forward passes (default 80, the
    Learn2Perturb evaluation). Same options as :class:`PGD`; Learn2Perturb's PGD-7: ``steps=7, step_size=0.01``
    at ε = 8/255 with random start."""

    def __init__(self, eps: float, *, eot_samples: int = 80, steps: int = 40, step_size: float | None = None,
                 random_start: bool = True, restarts: int = 1, targeted: bool = False, early_stop: bool = True,
                 model_mode: str = "eval"):
        super().__init__(eps, steps=steps, step_size=step_size, random_start=random_start, restarts=restarts,
                         targeted=targeted, eot_samples=eot_samples, early_stop=early_stop, model_mode=model_mode)


def with_eot(attack: Attack, samples: int) -> Attack:
    """A copy of a gradient ``attack`` whose gradients are EOT averages over ``samples`` forward passes."""
    if not hasattr(attack, "eot_samples"):
        raise TypeError(f"{type(attack).__name__} takes no eot_samples: it is not a gradient attack")
    attack = copy.copy(attack)
    attack.eot_samples = check_eot_samples(samples)
    return attack
