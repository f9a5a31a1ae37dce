"""Count a model's forward and backward passes per image: the cost of an evaluation in units every library shares.

``with count_passes(model) as passes: ...`` adds a forward hook to ``model`` for the duration; each call adds its
batch size to ``passes.forward``, and each gradient that flows back through the output adds its batch size to
``passes.backward`` (input gradients of an attack count; parameters need not require gradients). Independent of
the attack implementation, so robustlab and another library can be compared on the same model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PassCount:
    forward: int = 0
    backward: int = 0

    def per_image(self, n: int) -> dict[str, float]:
        return {"forward_per_image": self.forward / n if n else 0.0,
                "backward_per_image": self.backward / n if n else 0.0}

    def __sub__(self, other: "PassCount") -> "PassCount":
        return PassCount(self.forward - other.forward, self.backward - other.backward)

    def copy(self) -> "PassCount":
        return PassCount(self.forward, self.backward)


@contextlib.contextmanager
def count_passes(model: nn.Module) -> Iterator[PassCount]:
    """Count the forward and backward passes (in images) of ``model`` inside the block."""
    count = PassCount()

    def on_backward(grad: torch.Tensor) -> None:
        count.backward += int(grad.shape[0])

    def on_forward(_module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            count.forward += int(output.shape[0])
            if output.requires_grad:
                output.register_hook(on_backward)

    handle = model.register_forward_hook(on_forward)
    try:
        yield count
    finally:
        handle.remove()
