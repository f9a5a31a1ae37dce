"""CIFAR ResNet-V1(6n+2) of He et al. 2016 with option-A shortcuts, as used by Learn2Perturb (spec §4).

Layout of ArmenJeddi/Learn2Perturb ``models/resnet_v1.py`` (after Yerlan Idelbayev's CIFAR ResNets): conv3×3 16
stem + BN + ReLU, three stages of n BasicBlocks (16/32/64 channels × ``width``, stride 1/2/2), global average
pool (= ``features``), FC (= ``head``). Option-A shortcut: stride-2 subsampling ``x[:, :, ::2, ::2]`` plus zero
channel padding, no parameters. ResNet-V1(20) has 269,722 parameters, ResNet-V1(56) 855,770 (10 classes).

Noise-injection points (``inject``, an ``nn.Identity`` until replaced; see
:func:`robustlab.models.layers.injection_points`): after the stem conv+BN before its ReLU, and in every block
after the residual addition before the final ReLU — 3n + 1 of them (10 for ResNet-20).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from robustlab.models.base import Normalize, RobustModel
from robustlab.models.layers import (BasicBlock, ModelConfigError, ResNetStem, check_args, check_positive_float,
                                     scaled_channels)
from robustlab.models.registry import register_model


class ShortcutA(nn.Module):
    """Option-A shortcut: spatial subsampling by ``stride`` and zero padding of the channels (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option-A shortcut cannot reduce channels ({in_channels} -> {out_channels})")
        self.stride = stride
        extra = out_channels - in_channels
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.pad != (0, 0):
            x = F.pad(x, (0, 0, 0, 0, *self.pad))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad={self.pad}"


class ResNetV1(RobustModel):
    """CIFAR ResNet-V1 (He et al. 2016, §4.2) with option-A shortcuts; Kaiming-normal conv/FC weights."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, mean: Sequence[float], std: Sequence[float],
                 depth: int = 20, width: float = 1.0):
        super().__init__()
        n = (depth - 2) // 6
        c1, c2, c3 = (scaled_channels("resnet_v1", c, width) for c in (16, 32, 64))
        self.depth = depth
        self.normalize = Normalize(mean, std)
        self.stem = ResNetStem(in_shape[0], c1)
        self.layer1 = self._stage(c1, c1, n, stride=1)
        self.layer2 = self._stage(c1, c2, n, stride=2)
        self.layer3 = self._stage(c2, c3, n, stride=2)
        self.fc = nn.Linear(c3, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride, ShortcutA)]
        layers += [BasicBlock(out_channels, out_channels, 1, ShortcutA) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(self.normalize(x))
        out = self.layer3(self.layer2(self.layer1(out)))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h)


@register_model("resnet_v1")
def resnet_v1(in_shape, num_classes, mean, std, depth: int = 20, width: float = 1.0) -> ResNetV1:
    """ResNet-V1(depth), depth = 6n + 2 (20, 32, 44, 56, 110, ...); ``width`` multiplies every channel count."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
        raise ModelConfigError(
            f"model 'resnet_v1': depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth!r}")
    width = check_positive_float("resnet_v1", "width", width)
    shape = check_args("resnet_v1", in_shape, num_classes, mean, std)
    return ResNetV1(shape, num_classes, mean, std, depth=depth, width=width)
