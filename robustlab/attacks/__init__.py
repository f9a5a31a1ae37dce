"""Attacks behind one contract: ``attack(model, x, y) -> x_adv`` (see ``base.py``)."""

from robustlab.attacks.apgd import APGD, APGDCE, APGDDLR
from robustlab.attacks.base import Attack
from robustlab.attacks.eot import EOTPGD, with_eot
from robustlab.attacks.fab import FAB
from robustlab.attacks.fgsm import FGSM, LeastLikely
from robustlab.attacks.pgd import (IFGSM, PGD, PGDL2, IterativeLeastLikely, L2Ball, LinfBall, ThreatModel,
                                   project_l2, project_linf)
from robustlab.attacks.registry import available_attacks, build_attack
from robustlab.attacks.square import Square
from robustlab.attacks.transfer import TransferAttack
from robustlab.modes import model_mode

__all__ = ["APGD", "APGDCE", "APGDDLR", "EOTPGD", "FAB", "IFGSM", "IterativeLeastLikely", "L2Ball", "LeastLikely",
           "LinfBall", "PGDL2", "Square", "ThreatModel", "TransferAttack", "project_l2", "with_eot",
           "Attack", "FGSM", "PGD", "available_attacks", "build_attack", "model_mode",
           "project_linf"]

# Minimal-perturbation attacks (no ε): C&W, DeepFool, the adversary-critic attack, few-pixel; ρ_adv.
from robustlab.attacks.critic_attack import (HighConfidenceAttack, HighConfidenceResult,  # noqa: E402
                                            high_confidence_step)
from robustlab.attacks.cw import CarliniWagnerL2  # noqa: E402
from robustlab.attacks.deepfool import DeepFool, closest_boundary_target  # noqa: E402
from robustlab.attacks.few_pixel import FewPixel  # noqa: E402
from robustlab.attacks.perturbation import MinimalAttack, MinimalResult, perturbation_ratio  # noqa: E402

__all__ += ["CarliniWagnerL2", "DeepFool", "FewPixel", "HighConfidenceAttack", "HighConfidenceResult",
            "MinimalAttack", "MinimalResult", "closest_boundary_target", "high_confidence_step", "perturbation_ratio"]

import robustlab.attacks.families  # noqa: E402,F401  (every attack registered: the registry is complete)
