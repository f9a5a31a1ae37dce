"""Transfer (black-box) attacks: craft on a source model, evaluate on the target.

``TransferAttack(source_model, attack)(target_model, x, y)`` runs ``attack(source_model, x, y)`` and returns
its x_adv; the target model is not used for crafting and its mode is not touched (the inner attack owns the
source model's mode). Used for the masking check "white-box ≥ transfer", AT²L's "unknown" setting (examples
transferred from a separately trained model C) and Learn2Perturb's transfer from a PGD-AT model.

Not in the attack registry: it needs a source model, which a name and an ε cannot describe. Load a source from a
checkpoint with :func:`robustlab.runs.load_source_model`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from robustlab.attacks.base import Attack


class TransferAttack(Attack):
    """Crafts with ``attack`` on ``source_model``; ``__call__(target_model, x, y)`` ignores the target.

    The inner attack runs every step (no early exit on the source): the point returned is its last iterate, as
    transfer attacks use it, not the first that fools the source.
    """

    def __init__(self, source_model: nn.Module, attack: Attack):
        super().__init__(model_mode="keep")
        if not isinstance(attack, Attack):
            raise TypeError(f"attack must be an Attack, got {type(attack).__name__}")
        self.source_model = source_model
        if getattr(attack, "early_stop", False):  # a point that only just fools the source transfers poorly
            attack = copy.copy(attack)
            attack.early_stop = False
        self.attack = attack

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # The source may live on another device than the target's batch (e.g. a CPU source for a GPU target).
        param = next(self.source_model.parameters(), None)
        source_device = param.device if param is not None else x.device
        x_adv = self.attack(self.source_model, x.to(source_device), y.to(source_device))
        return x_adv.to(x.device)

    def __repr__(self) -> str:
        return f"TransferAttack(source={type(self.source_model).__name__}, attack={self.attack!r})"
