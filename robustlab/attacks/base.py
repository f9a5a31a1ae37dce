"""The attack contract (DESIGN.md): ``attack(model, x, y) -> x_adv``.

An attack is constructed with its threat model (norm, ε, steps, ...) and called on a batch. It works on the
model's device, returns a detached tensor in the [0,1] box, puts the model in the mode it asks for (eval by
default: dropout off, batch-norm statistics frozen) and restores every submodule's mode afterwards. Gradients
are taken with ``torch.autograd.grad`` with respect to the input only (``losses.loss_gradient``), with the
parameters' ``requires_grad`` off for the call, so nothing accumulates on parameters.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
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


class Attack(ABC):
    """Base class: subclasses implement :meth:`perturb`; ``__call__`` owns the model mode and detaching."""

    def __init__(self, *, model_mode: str = "eval"):
        if model_mode not in MODEL_MODES:
            raise ValueError(f"model_mode must be one of {MODEL_MODES}, got {model_mode!r}")
        self.model_mode = model_mode

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y disagree on the batch size: {x.shape[0]} vs {y.shape[0]}")
        with model_mode(model, self.model_mode), parameters_frozen(model):
            x_adv = self.perturb(model, x.detach(), y.detach())
        return x_adv.detach()

    @abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return adversarial examples for the batch; the model is already in the requested mode."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def check_epsilon(eps: float) -> float:
    eps = float(eps)
    if eps < 0:
        raise ValueError(f"epsilon must be >= 0, got {eps}")
    return eps
