"""Mixed precision: attacks and training under torch.autocast give the fp32 result within tolerance.

CUDA runs use bf16/fp16 autocast (``run.amp``); the CPU's bf16 autocast exercises the same code paths here.
"""

from __future__ import annotations

import torch

from robustlab.attacks import PGD
from robustlab.evaluation.outcome import accuracy


def test_pgd_under_bf16_autocast_matches_fp32(trained_digits_mlp, digits):
    x, y = digits.test_x, digits.test_y
    attack = PGD(0.1, steps=10, step_size=0.02, random_start=False)
    fp32 = accuracy(trained_digits_mlp, x, y, attack=attack)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = attack(trained_digits_mlp, x, y)
        bf16 = accuracy(trained_digits_mlp, x, y, attack=attack)
    assert x_adv.dtype == torch.float32 and (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert abs(fp32 - bf16) <= 0.03, (fp32, bf16)
    assert bf16 < accuracy(trained_digits_mlp, x, y) - 0.2  # the attack still works in low precision
