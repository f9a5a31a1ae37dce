"""Gradient masking on purpose: wrappers that keep a model's decisions but break the gradients attacks follow.

They are not defenses; they are test cases for an evaluation (the validation zoo of ``benchmarks/zoo.py``): a
suite that relies on gradients alone overstates the robustness of these models, and the masking checks must say
so (Athalye et al. 2018, "Obfuscated gradients give a false sense of security").

* :class:`InputQuantizer` — shattered gradients: the input is rounded to ``levels`` + 1 grey levels (a binariser
  for ``levels`` = 1) before the model; the rounding has zero gradient almost everywhere.
* :class:`LogitScale` — vanishing gradients: the logits times a large factor; the decisions are unchanged, but the
  softmax saturates, so the cross-entropy's input gradient is exactly zero in float32 on confident examples (the
  DLR loss, which is scale invariant, is not fooled).
"""

from __future__ import annotations

import torch
from torch import nn


class InputQuantizer(nn.Module):
    """``model(round(x · levels) / levels)``: a non-differentiable input quantiser in front of ``model``."""

    def __init__(self, model: nn.Module, levels: int = 1):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.model, self.levels = model, int(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * self.levels) / self.levels)


class LogitScale(nn.Module):
    """``scale · model(x)``: the same decisions, a saturated softmax."""

    def __init__(self, model: nn.Module, scale: float = 1e4):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.model, self.scale = model, float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale


MASKS = {"input_quantizer": InputQuantizer, "logit_scale": LogitScale}


def masked(model: nn.Module, kind: str, **options) -> nn.Module:
    """``model`` behind the masking wrapper ``kind`` (:data:`MASKS`), in eval mode."""
    if kind not in MASKS:
        raise ValueError(f"unknown masking wrapper {kind!r}; known: {', '.join(MASKS)}")
    return MASKS[kind](model, **options).eval()
