"""Helpers shared by the zoo: argument checks, shape inference, initialisation, noise-injection points."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from robustlab.errors import ConfigError

#: Attribute name of the ``nn.Identity`` placeholders where Learn2Perturb noise modules go.
INJECT_ATTR = "inject"


class ModelConfigError(ConfigError, ValueError):
    """A model cannot be built from these arguments (bad option value, input too small, ...).

    Both a :class:`ConfigError` (the CLI prints it as one line) and a :class:`ValueError`.
    """


def check_args(name: str, in_shape: Sequence[int], num_classes: int, mean: Sequence[float],
               std: Sequence[float]) -> tuple[int, ...]:
    """Validate the dataset arguments of a builder; return ``in_shape`` as a tuple of ints."""
    check_int(name, "num_classes", num_classes, 1)
    shape = tuple(int(s) for s in in_shape)
    if len(shape) != 3 or any(s <= 0 for s in shape):
        raise ModelConfigError(f"model {name!r} needs in_shape (C, H, W) with positive sizes, got {tuple(in_shape)}")
    channels = shape[0]
    for label, stats in (("mean", mean), ("std", std)):
        if len(stats) not in (1, channels):
            raise ModelConfigError(
                f"model {name!r}: {label} has {len(stats)} values but the input has {channels} channel(s)")
    return shape


def check_int(model: str, option: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelConfigError(f"model {model!r}: option {option!r} must be an integer >= {minimum}, got {value!r}")
    return value


def check_positive_float(model: str, option: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ModelConfigError(f"model {model!r}: option {option!r} must be a positive number, got {value!r}")
    return float(value)


def infer_shape(model: str, module: nn.Module, in_shape: Sequence[int]) -> tuple[int, ...]:
    """Output shape (without batch) of ``module`` on a zero input of ``in_shape``; clear error if too small."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, *in_shape))
    except RuntimeError as err:
        raise ModelConfigError(
            f"input shape {tuple(in_shape)} is too small for model {model!r} ({err})") from err
    finally:
        module.train(was_training)
    if out.numel() == 0:
        raise ModelConfigError(f"input shape {tuple(in_shape)} is too small for model {model!r}")
    return tuple(out.shape[1:])


def flat_size(model: str, module: nn.Module, in_shape: Sequence[int]) -> int:
    return math.prod(infer_shape(model, module, in_shape))


def he_init_(module: nn.Module) -> None:
    """He-normal (fan_in, ReLU gain) weights and zero biases for every Conv2d / Linear inside ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def injection_points(model: nn.Module) -> list[str]:
    """Qualified names (``model.get_submodule(name)``) of the noise-injection points, in forward order.

    The ResNets place an ``inject`` module after the stem conv+BN (before its ReLU) and after every residual
    addition (before the block's final ReLU); it is an ``nn.Identity`` until replaced.
    """
    return [name for name, _ in model.named_modules() if name.split(".")[-1] == INJECT_ATTR]


def replace_injections(model: nn.Module, factory: Callable[[str], nn.Module]) -> list[str]:
    """Replace every injection point by ``factory(name)``; returns the names replaced."""
    names = injection_points(model)
    for name in names:
        parent_name = name.rpartition(".")[0]
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, INJECT_ATTR, factory(name))
    return names


class ResNetStem(nn.Module):
    """conv3×3 (stride 1, no bias) – BN – ``inject`` – ReLU; ``inject`` is the Learn2Perturb noise point."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.inject = nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.inject(self.bn(self.conv(x))))


def scaled_channels(model: str, base: int, width: float) -> int:
    channels = round(base * width)
    if channels < 1:
        raise ModelConfigError(f"model {model!r}: width {width} leaves {base} channels at {channels}")
    return channels


class BasicBlock(nn.Module):
    """The ResNet BasicBlock: conv3×3–BN–ReLU–conv3×3–BN, + shortcut, ``inject`` (a noise-injection point), ReLU.

    ``shortcut(in_channels, out_channels, stride)`` builds the shortcut where the shape changes (ResNet-V1:
    option A, zero-padded identity; ResNet-V2(18): 1×1 conv + BN); otherwise it is the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 shortcut: Callable[[int, int, int], nn.Module]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = shortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()
        self.inject = nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.inject(out + self.shortcut(x)))
