"""Count a model's forward and backward passes per image: the cost of an evaluation in units every library shares.

``with count_passes(model) as passes: ...`` adds forward hooks to ``model`` for the duration; each call adds its
batch size to ``passes.forward``, and each gradient that flows back through the output adds its batch size to
``passes.backward`` (input gradients of an attack count; parameters need not require gradients). A pass that a
defense runs through the model's parts rather than the model (``features`` then ``head``: TLA's triplet
embeddings, A3T's discriminator input) is counted at the model's first layer with weights, when no call of the
model is open. Independent of the
attack implementation, so robustlab and another library can be compared on the same model.
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
    calls_open = [0]  # calls of ``model`` in progress: its first layer's call inside one is part of that pass

    def on_backward(grad: torch.Tensor) -> None:
        count.backward += int(grad.shape[0])

    def tally(output) -> None:
        if isinstance(output, torch.Tensor):
            count.forward += int(output.shape[0])
            if output.requires_grad:
                output.register_hook(on_backward)

    def enter(_module, _inputs) -> None:
        calls_open[0] += 1

    def leave(_module, _inputs, output) -> None:
        calls_open[0] -= 1
        tally(output)

    def part_pass(_module, _inputs, output) -> None:
        if not calls_open[0]:
            tally(output)

    handles = [model.register_forward_pre_hook(enter), model.register_forward_hook(leave, always_call=True)]
    first = next((m for m in model.modules() if next(m.children(), None) is None
                  and next(m.parameters(recurse=False), None) is not None), None)
    if first is not None:
        handles.append(first.register_forward_hook(part_pass))
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()
