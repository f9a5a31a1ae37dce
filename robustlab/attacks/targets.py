"""A targeted attack toward a random other class: ``RandomTarget(attack, num_classes)``.

``attack`` must run targeted (``targeted=True``: it reads ``y`` as the target); this wrapper draws, per example, a
class different from the true label (from ``seed``, the same on every call) and passes it as the target. ``y``
stays the truth for the caller.
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks.base import Attack


class RandomTarget(Attack):
    """Run a targeted ``attack`` toward a random class ≠ the true label (seeded per call); ``y`` stays the truth."""

    def __init__(self, attack: Attack, num_classes: int, seed: int = 0):
        super().__init__(model_mode="keep")
        if num_classes < 2:
            raise ValueError("a targeted attack needs at least 2 classes")
        if not getattr(attack, "targeted", False):
            raise ValueError(f"{type(attack).__name__} must be built with targeted=True to attack toward a target")
        self.attack, self.num_classes, self.seed = attack, int(num_classes), int(seed)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        offset = torch.randint(1, self.num_classes, (len(y),), generator=gen).to(y.device)
        return self.attack(model, x, (y + offset) % self.num_classes)
