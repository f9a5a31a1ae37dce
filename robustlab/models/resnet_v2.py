"""ResNet-V2(18) of Learn2Perturb: the standard CIFAR ResNet-18 (spec §4).

Kuang Liu's pytorch-cifar layout (ArmenJeddi/Learn2Perturb ``models/resnet_v2.py``): conv3×3 64 stem stride 1 +
BN + ReLU (no max-pool), four stages of two BasicBlocks with 64/128/256/512 channels × ``width`` (stride
1/2/2/2), 1×1 conv + BN projection shortcuts where the shape changes, global average pool (= ``features``), FC
(= ``head``). 11,173,962 parameters for 10 classes. PyTorch default initialisation.

Noise-injection points (``inject``): after the stem conv+BN before its ReLU and in every block after the residual
addition before the final ReLU — 9 of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from robustlab.models.base import Normalize, RobustModel
from robustlab.models.layers import BasicBlock, ResNetStem, check_args, check_positive_float, scaled_channels
from robustlab.models.registry import register_model


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """1×1 conv + BN (Kuang Liu's layout)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class ResNetV2(RobustModel):
    """CIFAR ResNet with BasicBlocks and projection shortcuts; ``blocks=(2, 2, 2, 2)`` is ResNet-18."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, mean: Sequence[float], std: Sequence[float],
                 blocks: Sequence[int] = (2, 2, 2, 2), width: float = 1.0):
        super().__init__()
        channels = [scaled_channels("resnet_v2_18", c, width) for c in (64, 128, 256, 512)]
        self.normalize = Normalize(mean, std)
        self.stem = ResNetStem(in_shape[0], channels[0])
        in_channels = channels[0]
        stages = []
        for i, (out_channels, n) in enumerate(zip(channels, blocks)):
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(in_channels, out_channels, stride, projection_shortcut)]
            layers += [BasicBlock(out_channels, out_channels, 1, projection_shortcut) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(in_channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h)


@register_model("resnet_v2_18")
def resnet_v2_18(in_shape, num_classes, mean, std, width: float = 1.0) -> ResNetV2:
    """ResNet-V2(18) = CIFAR ResNet-18; ``width`` multiplies every channel count."""
    width = check_positive_float("resnet_v2_18", "width", width)
    shape = check_args("resnet_v2_18", in_shape, num_classes, mean, std)
    return ResNetV2(shape, num_classes, mean, std, blocks=(2, 2, 2, 2), width=width)
