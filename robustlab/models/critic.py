"""The adversary critic D of Matyasko & Chau 2018 (spec METHODS.md §2; reference models.py / utils.py).

flatten + N(0, 0.1²) → FC1200 → leakyReLU(0.2) → + N(0, 0.5²) → FC1200 → leakyReLU(0.2) → + N(0, 0.5²) → FC k.
The label only selects which of the k logits is read: ``critic(x, labels) = D(x)_label``, the logit that
(x, label) is a real pair. Not a classifier: it is not in the model registry. Initialisation: He-normal weights and
zero biases (``init = "he_normal"``, the authors' code), or PyTorch's default (``"torch_default"``).

Noise layers: additive Gaussian noise in ``train()`` mode only, like dropout [R]. The defense keeps the critic in
train mode in both training steps (as the reference graph does); ``eval()`` turns the noise off for analysis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustlab.models.layers import he_init_

INITS = ("he_normal", "torch_default")


class GaussianNoise(nn.Module):
    """x + N(0, std²) in train mode; the identity in eval mode or with std 0."""

    def __init__(self, std: float):
        super().__init__()
        if std < 0:
            raise ValueError(f"noise std must be >= 0, got {std}")
        self.std = float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.std > 0:
            return x + self.std * torch.randn_like(x)
        return x

    def extra_repr(self) -> str:
        return f"std={self.std}"


class AdversaryCritic(nn.Module):
    """D: noisy leaky-ReLU MLP with ``num_classes`` output logits; ``forward(x, labels)`` reads logit ``labels``."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (1200, 1200),
                 input_noise: float = 0.1, hidden_noise: float = 0.5, negative_slope: float = 0.2,
                 init: str = "he_normal"):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"critic init must be one of {', '.join(INITS)}, got {init!r}")
        layers: list[nn.Module] = [nn.Flatten(), GaussianNoise(input_noise)]
        width = int(in_features)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.LeakyReLU(negative_slope), GaussianNoise(hidden_noise)]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        if init == "he_normal":
            he_init_(self)

    def all_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.net(x).gather(1, labels[:, None]).squeeze(1)


__all__ = ["AdversaryCritic", "GaussianNoise"]
