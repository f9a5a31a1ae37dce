"""LeNet-5 of the adversary-critic paper (spec §2; code aam-at/adversary_critic ``models.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustlab.models.base import Normalize, RobustModel
from robustlab.models.layers import check_args, flat_size, he_init_
from robustlab.models.registry import register_model


class LeNet5(RobustModel):
    """conv32 5×5 valid–ReLU–maxpool2–conv64 5×5 valid–ReLU–maxpool2–FC512–ReLU–FC.

    He-normal weights, zero biases, no dropout. ``features`` = the 512-d ReLU output.
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv = nn.Sequential(
            nn.Conv2d(in_shape[0], 32, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc1 = nn.Linear(flat_size("lenet5", self.conv, in_shape), 512)
        self.fc2 = nn.Linear(512, num_classes)
        he_init_(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc1(torch.flatten(self.conv(self.normalize(x)), 1)))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(h)


@register_model("lenet5")
def lenet5(in_shape, num_classes, mean, std) -> LeNet5:
    """LeNet-5 of the adversary-critic paper (Table 1)."""
    return LeNet5(check_args("lenet5", in_shape, num_classes, mean, std), num_classes, mean, std)
