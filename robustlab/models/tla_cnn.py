"""The MNIST CNN of TLA (spec §3; code columbia/Metric_Learning_Adversarial_Robustness)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustlab.models.base import Normalize, RobustModel
from robustlab.models.layers import check_args, flat_size
from robustlab.models.registry import register_model


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TLACNN(RobustModel):
    """conv3×3 32, 64, maxpool2, conv3×3 128, 256, maxpool2 (each conv 'same' + BN + ReLU), FC1024+BN+ReLU, FC.

    ``features`` = h, the 1024-d FC+BN+ReLU output used by the triplet loss; ``head`` = the last FC.
    Convolutions and the hidden FC have no bias (a BN follows). PyTorch default initialisation.
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv = nn.Sequential(
            _conv_bn_relu(in_shape[0], 32), _conv_bn_relu(32, 64), nn.MaxPool2d(2),
            _conv_bn_relu(64, 128), _conv_bn_relu(128, 256), nn.MaxPool2d(2),
        )
        self.fc1 = nn.Linear(flat_size("tla_cnn", self.conv, in_shape), 1024, bias=False)
        self.bn1 = nn.BatchNorm1d(1024)
        self.fc2 = nn.Linear(1024, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.flatten(self.conv(self.normalize(x)), 1)
        return torch.relu(self.bn1(self.fc1(h)))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(h)


@register_model("tla_cnn")
def tla_cnn(in_shape, num_classes, mean, std) -> TLACNN:
    """TLA MNIST CNN (spec §3)."""
    return TLACNN(check_args("tla_cnn", in_shape, num_classes, mean, std), num_classes, mean, std)
