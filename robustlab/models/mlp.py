"""Fully connected classifiers: the adversary-critic FC network (spec §2) and the A3T MLP (spec §5)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from robustlab.models.base import Normalize, RobustModel
from robustlab.models.layers import ModelConfigError, check_args, he_init_
from robustlab.models.registry import register_model


class FC1200x3(RobustModel):
    """FC in–1200–1200–1200–classes with ReLU (adversary critic, Table 1 "FC"; code ``models.py``).

    He-normal weights, zero biases, no dropout. ``features`` = the third 1200-d ReLU output.
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.body = nn.Sequential(
            nn.Linear(math.prod(in_shape), 1200), nn.ReLU(),
            nn.Linear(1200, 1200), nn.ReLU(),
            nn.Linear(1200, 1200), nn.ReLU(),
        )
        self.fc = nn.Linear(1200, num_classes)
        he_init_(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(torch.flatten(self.normalize(x), 1))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h)


class MLPA3T(RobustModel):
    """A3T MLP in–512–256–128–classes with leaky ReLU (A3T paper, Setup; spec §5).

    The slope 0.2 is a resolution [R] (the paper only says "leaky ReLU"). For the discriminator:
    ``encoder(x)`` = hidden layers 1–2 with activations (the 256-d z, [R]) and ``residual(z)`` = layer 3 +
    activation + output layer, so ``residual(encoder(x)) == model(x)``. ``features`` = the 128-d activation.
    PyTorch default initialisation.
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, mean: Sequence[float], std: Sequence[float],
                 negative_slope: float = 0.2):
        super().__init__()
        self.negative_slope = float(negative_slope)
        self.normalize = Normalize(mean, std)
        self.fc1 = nn.Linear(math.prod(in_shape), 512)
        self.fc2 = nn.Linear(512, 256)
        self.fc3 = nn.Linear(256, 128)
        self.fc4 = nn.Linear(128, num_classes)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def encoder(self, x: torch.Tensor) -> torch.Tensor:
        """E(x): normalise, flatten, hidden layers 1–2 with activations (256-d)."""
        h = torch.flatten(self.normalize(x), 1)
        return self._act(self.fc2(self._act(self.fc1(h))))

    def residual_features(self, z: torch.Tensor) -> torch.Tensor:
        """Hidden layer 3 with activation (128-d), from the encoder output z."""
        return self._act(self.fc3(z))

    def residual(self, z: torch.Tensor) -> torch.Tensor:
        """R(z): hidden layer 3 + activation + output layer; logits."""
        return self.head(self.residual_features(z))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual_features(self.encoder(x))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc4(h)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


@register_model("fc1200x3")
def fc1200x3(in_shape, num_classes, mean, std) -> FC1200x3:
    """Adversary-critic FC network 784–1200–1200–1200–10."""
    return FC1200x3(check_args("fc1200x3", in_shape, num_classes, mean, std), num_classes, mean, std)


@register_model("mlp_a3t")
def mlp_a3t(in_shape, num_classes, mean, std, negative_slope: float = 0.2) -> MLPA3T:
    """A3T MLP 784–512–256–128–10, leaky ReLU with slope ``negative_slope`` (0.2 [R])."""
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)) or negative_slope < 0:
        raise ModelConfigError(f"model 'mlp_a3t': negative_slope must be a number >= 0, got {negative_slope!r}")
    shape = check_args("mlp_a3t", in_shape, num_classes, mean, std)
    return MLPA3T(shape, num_classes, mean, std, negative_slope=negative_slope)
