"""Seeded shuffles and train/test splits, so that ``ImageDataset.subset`` takes a representative prefix."""

from __future__ import annotations

import numpy as np
import torch

SEED = 0


def permutation(n: int, seed: int = SEED) -> torch.Tensor:
    """A fixed permutation of ``range(n)``: ``numpy.random.default_rng(seed).permutation(n)``."""
    return torch.from_numpy(np.random.default_rng(seed).permutation(n))


def shuffle(x: torch.Tensor, y: torch.Tensor, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and ``y`` reordered by the same fixed permutation."""
    idx = permutation(len(x), seed)
    return x[idx], y[idx]


def split(x: torch.Tensor, y: torch.Tensor, n_train: int,
          seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shuffle with ``seed``, then the first ``n_train`` examples are train and the rest test."""
    x, y = shuffle(x, y, seed)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]
