"""What counts as a correct prediction, everywhere an accuracy is computed: a row of logits with a NaN or an
infinity predicts nothing, so it is never correct (``argmax`` of a NaN row is 0, which would count a broken model
right on every label-0 example)."""

from __future__ import annotations

import torch

NO_PREDICTION = -1  # the predicted class of a row of logits that is not all finite: never a label


def predicted_class(logits: torch.Tensor) -> torch.Tensor:
    """The argmax class per row, or :data:`NO_PREDICTION` where the row is not all finite."""
    pred = logits.detach().argmax(1)
    return torch.where(torch.isfinite(logits.detach()).all(1), pred, torch.full_like(pred, NO_PREDICTION))


def correct_predictions(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per example: classified correctly by finite logits (bool)."""
    return predicted_class(logits).eq(y)


def batch_accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The fraction of a batch classified correctly by finite logits (a 0-d float tensor, for training logs)."""
    return correct_predictions(logits, y).float().mean()
