"""The model contract: [0,1] input, normalisation inside, ``features`` / ``head`` split.

Every model in the zoo subclasses :class:`RobustModel`. ``features(x)`` returns the representation at the
split point (the penultimate layer unless a model says otherwise) and ``head(h)`` maps it to logits, so that
``model(x) == model.head(model.features(x))``. Defenses that work on a hidden layer (TLA, A3T, the triplet
regulariser) use this split; the engine and the attacks only call ``model(x)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as the first layer, so attacks and the data stay in [0,1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.as_tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        if (std_t <= 0).any():
            raise ValueError(f"std must be positive, got {list(std)}")
        # Buffers (not parameters): saved with the weights, moved with .to(), never trained.
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class RobustModel(nn.Module):
    """Base class of every classifier: ``forward(x) = head(features(x))`` for x in [0,1], shape NCHW."""

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def head(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
