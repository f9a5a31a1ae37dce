"""Standard (non-robust) training: cross-entropy on clean examples. The reference every defense must beat."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.config import Fraction, Options
from robustlab.defenses.base import Batch, Defense, LossOutput, register_defense
from robustlab.predictions import batch_accuracy


class StandardOptions(Options):
    label_smoothing: Fraction = 0.0


def clean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> LossOutput:
    """Mean cross-entropy on the clean batch, with its accuracy as a metric."""
    logits = model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    acc = batch_accuracy(logits, y)
    return LossOutput(loss, {"loss": loss.detach(), "acc": acc}, logits_clean=logits)


@register_defense("standard", StandardOptions)
class StandardTraining(Defense):
    def loss(self, model: nn.Module, batch: Batch, ctx) -> LossOutput:
        return clean_loss(model, batch.x, batch.y, self.options.label_smoothing)
