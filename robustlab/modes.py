"""Context managers over a model's state, restored on exit: its train/eval flags, its parameters' requires_grad,
its batch-norm statistics. No dependencies on the rest of the package (the bottom layer)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

MODEL_MODES = ("eval", "train", "keep")


@contextlib.contextmanager
def model_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Put ``model`` in ``mode`` ("eval", "train" or "keep") and restore each submodule's flag on exit."""
    if mode not in MODEL_MODES:
        raise ValueError(f"model mode must be one of {MODEL_MODES}, got {mode!r}")
    saved = [(m, m.training) for m in model.modules()]
    try:
        if mode == "eval":
            model.eval()
        elif mode == "train":
            model.train()
        yield model
    finally:
        for module, training in saved:
            module.training = training


@contextlib.contextmanager
def parameters_frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Turn off ``requires_grad`` on the model's parameters for the duration of an attack, then restore each flag.

    Attacks differentiate with respect to the input only; with the parameters frozen, autograd neither records nor
    keeps what their gradients would need, which makes every attack step cheaper (about 5% for PGD on LeNet-5 here,
    ``benchmarks/peers.py``). The differentiable training attack of the adversary critic, which needs parameter
    gradients through the attack, does not go through an :class:`Attack` call.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def statistics_frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every buffer (batch-norm running statistics and counters) on exit: an extra forward pass in train
    mode (A3T's discriminator step) then leaves the statistics as the training step alone moves them."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield model
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
