"""MNIST models A, B, C, D of AT²L (paper Tables 6 and 18; spec §1).

The four architectures are those of Tramèr et al., "Ensemble Adversarial Training" (ftramer/ensemble-adv-training,
``mnist.py``). Strides follow AT²L Table 18; padding is 'valid' [R] except for the first convolution of model B,
which uses TensorFlow 'same' padding by default (as in Tramèr's code): with all-'valid' convolutions model B does
not fit a 28×28 input (28 → 11 → 3, then a 5×5 kernel). PyTorch default initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from robustlab.models.base import Normalize, RobustModel
from robustlab.models.layers import ModelConfigError, check_args, check_int, flat_size
from robustlab.models.registry import register_model


class ModelA(RobustModel):
    """A: Conv64 5×5 s1–ReLU–Conv64 5×5 s2–ReLU–Dropout .25–FC128–ReLU–Dropout .5–FC (AT²L Tables 6, 18); with
    ``channels`` (128, 64) and ``kernel`` 3 it is model C (the same layout)."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, mean: Sequence[float], std: Sequence[float],
                 channels: tuple[int, int] = (64, 64), kernel: int = 5, name: str = "model_a"):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv = nn.Sequential(
            nn.Conv2d(in_shape[0], channels[0], kernel, stride=1), nn.ReLU(),
            nn.Conv2d(channels[0], channels[1], kernel, stride=2), nn.ReLU(),
            nn.Dropout(0.25),
        )
        self.fc1 = nn.Linear(flat_size(name, self.conv, in_shape), 128)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.flatten(self.conv(self.normalize(x)), 1)
        return self.drop(torch.relu(self.fc1(h)))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(h)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after) for one spatial dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ModelB(RobustModel):
    """B: Dropout .2–Conv64 8×8 s2–ReLU–Conv128 6×6 s2–ReLU–Conv128 5×5 s1–ReLU–Dropout .5–FC (AT²L Tables 6, 18).

    ``features`` is the flattened convolution output after the last dropout; ``head`` the single FC layer.
    ``first_padding`` = 'same' (default, Tramèr's code) or 'valid' (spec [R]) for the 8×8 convolution.
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, mean: Sequence[float], std: Sequence[float],
                 first_padding: str = "same"):
        super().__init__()
        if first_padding not in ("same", "valid"):
            raise ModelConfigError(f"model 'model_b': first_padding must be 'same' or 'valid', got {first_padding!r}")
        self.normalize = Normalize(mean, std)
        if first_padding == "same":
            top, bottom = _same_padding(in_shape[1], 8, 2)
            left, right = _same_padding(in_shape[2], 8, 2)
            pad: nn.Module = nn.ZeroPad2d((left, right, top, bottom))
        else:
            pad = nn.Identity()
        self.conv = nn.Sequential(
            nn.Dropout(0.2),
            pad,
            nn.Conv2d(in_shape[0], 64, 8, stride=2), nn.ReLU(),
            nn.Conv2d(64, 128, 6, stride=2), nn.ReLU(),
            nn.Conv2d(128, 128, 5, stride=1), nn.ReLU(),
            nn.Dropout(0.5),
        )
        self.fc = nn.Linear(flat_size("model_b", self.conv, in_shape), num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.conv(self.normalize(x)), 1)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h)


class ModelD(RobustModel):
    """D: [FC ``hidden``–ReLU–Dropout .5] × ``depth``–FC (AT²L Table 6: 300 × 3; Table 18: 200 × 2)."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, mean: Sequence[float], std: Sequence[float],
                 hidden: int = 300, depth: int = 3):
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        width = math.prod(in_shape)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(0.5)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(torch.flatten(self.normalize(x), 1))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h)


@register_model("model_a")
def model_a(in_shape, num_classes, mean, std) -> ModelA:
    """AT²L MNIST model A (Tables 6, 18)."""
    shape = check_args("model_a", in_shape, num_classes, mean, std)
    return ModelA(shape, num_classes, mean, std)


@register_model("model_b")
def model_b(in_shape, num_classes, mean, std, first_padding: str = "same") -> ModelB:
    """AT²L MNIST model B (Tables 6, 18); first convolution 'same' padded by default."""
    shape = check_args("model_b", in_shape, num_classes, mean, std)
    return ModelB(shape, num_classes, mean, std, first_padding=first_padding)


@register_model("model_c")
def model_c(in_shape, num_classes, mean, std) -> ModelA:
    """AT²L MNIST model C (Tables 6, 18): model A's layout with Conv128 3×3 s1 and Conv64 3×3 s2."""
    shape = check_args("model_c", in_shape, num_classes, mean, std)
    return ModelA(shape, num_classes, mean, std, channels=(128, 64), kernel=3, name="model_c")


@register_model("model_d")
def model_d(in_shape, num_classes, mean, std, hidden: int = 300, depth: int = 3) -> ModelD:
    """AT²L MNIST model D: Table 6 (hidden 300, depth 3) by default, Table 18 with hidden 200, depth 2."""
    check_int("model_d", "hidden", hidden, 1)
    check_int("model_d", "depth", depth, 1)
    shape = check_args("model_d", in_shape, num_classes, mean, std)
    return ModelD(shape, num_classes, mean, std, hidden=hidden, depth=depth)
