"""Attacks behind one contract: ``attack(model, x, y) -> x_adv`` (see ``base.py``)."""

from robustlab.attacks.base import Attack, input_gradient, model_mode
from robustlab.attacks.fgsm import FGSM
from robustlab.attacks.pgd import PGD, project_linf
from robustlab.attacks.registry import available_attacks, build_attack

__all__ = ["Attack", "FGSM", "PGD", "available_attacks", "build_attack", "input_gradient", "model_mode",
           "project_linf"]
