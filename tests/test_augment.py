from __future__ import annotations

import torch

from robustlab.data.augment import random_crop_flip


def test_crop_flip_is_a_shifted_possibly_flipped_copy():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = random_crop_flip(x, padding=2)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):  # every output is one of the 2·25 possible crops of its own padded input
        crops = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)
    assert not torch.equal(out, x)
