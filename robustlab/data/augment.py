"""Batched training-time augmentation on [0,1] tensors (no per-image Python loop)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Random crop of the original size from a zero-padded image, and a random horizontal flip (CIFAR recipe)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=x.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device).view(1, h))  # (n, h)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device).view(1, w))  # (n, w)
    flip = torch.rand(n, device=x.device) < 0.5
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
    idx_rows = rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * padding)
    out = padded.gather(2, idx_rows)
    idx_cols = cols.view(n, 1, 1, w).expand(n, c, h, w)
    return out.gather(3, idx_cols)
