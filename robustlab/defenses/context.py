"""What the engine hands a defense at each step, and what the defense's loss hands back (``defenses/base.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from robustlab.data.base import ImageDataset


@dataclass
class TrainContext:
    """What a defense may read while training: device, data, the position in training (epoch, step and the
    learning-rate factor the engine applies), the base learning rate and augmentation of the run, AMP."""

    device: torch.device
    dataset: ImageDataset | None
    amp_dtype: torch.dtype | None = None
    epoch: int = 0  # 0-based epoch being trained
    global_step: int = 0
    lr_factor: float = 1.0  # the schedule's multiplier of the base learning rate now (auxiliary optimisers)
    base_lr: float = 0.1    # the main optimiser's base learning rate (optim.lr)
    augment: str = "none"   # the run's data augmentation (data.augment)
    rank: int = 0
    world_size: int = 1
    log: Callable[[str], None] = print

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


@dataclass
class Batch:
    """One training step's examples, and what the adversary stage adds to them.

    ``index``: the examples' training-set indices (AT²L looks its round's x_adv up by them, TLA excludes them from
    the positives). ``x_adv``: crafted by :meth:`Defense.craft` (None for a clean step). ``y_adv``: the model's
    predictions at ``x_adv`` where a defense needs them (the adversary critic's ŷ). ``term_x_adv``: the
    examples a term's own adversary crafted (:meth:`LossTerm.craft`), keyed by the term.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor | None = None
    x_adv: torch.Tensor | None = None
    y_adv: torch.Tensor | None = None
    term_x_adv: dict[Any, torch.Tensor] = field(default_factory=dict)


@dataclass
class LossOutput:
    """What :meth:`Defense.loss` returns.

    ``metrics`` holds detached scalar tensors (batch means); the engine averages them over the epoch with one
    device sync at the end. ``x_adv``, the logits and ``split_features`` (``(layer, E(x), E(x_adv))`` where the
    loss split the model at a layer, as A3T does) are kept so that add-on terms can reuse them.
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    x_adv: torch.Tensor | None = None
    logits_clean: torch.Tensor | None = None
    logits_adv: torch.Tensor | None = None
    split_features: tuple[str, torch.Tensor, torch.Tensor] | None = None
