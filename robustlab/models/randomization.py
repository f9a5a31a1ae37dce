"""Input randomisation of Xie et al. (ICLR 2018, "Mitigating adversarial effects through randomization").

Before the classifier, each image is resized to a random r × r (r uniform in [``min_size``, ``out_size``)) and
placed at a random position of a zero ``out_size`` × ``out_size`` canvas (random zero padding). Xie et al. use
299 → r ∈ [299, 331) → 331 on ImageNet; the default here keeps that ratio: ``min_size`` = H and
``out_size`` = round(H · 331/299) (28 → r ∈ {28, 29, 30} → 31 on MNIST). The randomness is on at training and
at test time (it is the defense), so evaluations must use EOT (``eot_samples`` of the gradient attacks,
``eot_pgd``) and repeats; ``robustlab eval`` detects the non-repeatable predictions and adds EOT-PGD.

Resolutions [R]: nearest-neighbour resizing by default (Xie et al.'s code), bilinear as an option; one draw per
example (``per_example = True``) — Xie et al.'s code draws one size and one offset per forward call, which is
``per_example = False``. Implemented as one vectorised ``grid_sample`` with a per-example affine map and a box
mask, so it is differentiable in the input (attacks get gradients through it) and has no per-example loop.

The model ``random_resize_pad`` wraps any model of the zoo (``base``, built for the ``out_size`` input) behind the
layer, so that "randomisation + triplet regulariser" (AT²L §4.4) is one config.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.models.base import RobustModel
from robustlab.models.layers import ModelConfigError, check_args
from robustlab.models.registry import build_model, register_model

XIE_RATIO = 331 / 299


class RandomResizePad(nn.Module):
    """Random resize to r × r, r ∈ [min_size, out_size), then random zero padding to out_size × out_size."""

    def __init__(self, out_size: int, min_size: int, mode: str = "nearest", per_example: bool = True):
        super().__init__()
        if not 1 <= min_size < out_size:
            raise ModelConfigError(f"RandomResizePad needs 1 <= min_size < out_size, got {min_size}, {out_size}")
        if mode not in ("nearest", "bilinear"):
            raise ModelConfigError(f"RandomResizePad mode must be 'nearest' or 'bilinear', got {mode!r}")
        self.out_size = int(out_size)
        self.min_size = int(min_size)
        self.mode = mode
        self.per_example = bool(per_example)

    def draw(self, n: int, device: torch.device, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sizes r and offsets (top, left), each (n,) integers; one shared draw when not ``per_example``."""
        m = n if self.per_example else 1
        gen_device = generator.device if generator is not None else device
        size = torch.randint(self.min_size, self.out_size, (m,), generator=generator, device=gen_device)
        room = (self.out_size - size + 1).float()  # offsets 0 .. out_size − r
        top = (torch.rand(m, generator=generator, device=gen_device) * room).long()
        left = (torch.rand(m, generator=generator, device=gen_device) * room).long()
        size, top, left = (t.to(device).expand(n) for t in (size, top, left))
        return size, top, left

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, c = x.shape[:2]
        size, top, left = self.draw(n, x.device, generator)
        return self.place(x, size, top, left)

    def place(self, x: torch.Tensor, size: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        """Resize each image to ``size`` and put its top-left corner at (``top``, ``left``) of the canvas."""
        n, c = x.shape[:2]
        s = self.out_size
        r = size.to(x.dtype)
        # Output pixel u (normalised X, align_corners=False) shows input coordinate (S/r)·X + (S − 2·left)/r − 1.
        theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0] = s / r
        theta[:, 0, 2] = (s - 2 * left.to(x.dtype)) / r - 1
        theta[:, 1, 1] = s / r
        theta[:, 1, 2] = (s - 2 * top.to(x.dtype)) / r - 1
        grid = F.affine_grid(theta, [n, c, s, s], align_corners=False)
        out = F.grid_sample(x, grid, mode=self.mode, padding_mode="zeros", align_corners=False)
        pos = torch.arange(s, device=x.device)
        rows = (pos[None, :] >= top[:, None]) & (pos[None, :] < (top + size)[:, None])
        cols = (pos[None, :] >= left[:, None]) & (pos[None, :] < (left + size)[:, None])
        box = (rows[:, :, None] & cols[:, None, :]).to(x.dtype)
        return out * box[:, None]

    def extra_repr(self) -> str:
        return (f"size in [{self.min_size}, {self.out_size}), out {self.out_size}, mode={self.mode}, "
                f"per_example={self.per_example}")


class RandomizedModel(RobustModel):
    """``base`` behind :class:`RandomResizePad`: features(x) = base.features(randomize(x)), head = base.head."""

    def __init__(self, randomize: RandomResizePad, base: RobustModel):
        super().__init__()
        self.randomize = randomize
        self.base = base

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.features(self.randomize(x))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.base.head(h)


@register_model("random_resize_pad")
def random_resize_pad(in_shape, num_classes, mean, std, base: str = "lenet5", out_size: int = 0, min_size: int = 0,
                      mode: str = "nearest", per_example: bool = True,
                      base_options: dict[str, Any] | None = None) -> RandomizedModel:
    """Xie et al.'s random resize-and-pad in front of the zoo model ``base`` (its options in ``base_options``).

    ``out_size`` 0 → round(H · 331/299); ``min_size`` 0 → H (the input size).
    """
    shape = check_args("random_resize_pad", in_shape, num_classes, mean, std)
    if base == "random_resize_pad":
        raise ModelConfigError("random_resize_pad cannot wrap itself")
    if shape[1] != shape[2]:
        raise ModelConfigError(f"random_resize_pad needs square images, got {shape[1]}x{shape[2]}")
    min_size = min_size or shape[1]
    out_size = out_size or max(round(shape[1] * XIE_RATIO), min_size + 1)
    layer = RandomResizePad(out_size, min_size, mode=mode, per_example=per_example)
    inner = build_model(base, in_shape=(shape[0], out_size, out_size), num_classes=num_classes, mean=mean, std=std,
                        **dict(base_options or {}))
    return RandomizedModel(layer, inner)


def randomized(model: RobustModel, layer: RandomResizePad) -> RandomizedModel:
    """Wrap an already built ``model`` (built for ``layer.out_size`` inputs)."""
    return RandomizedModel(layer, model)


__all__ = ["RandomResizePad", "RandomizedModel", "random_resize_pad", "randomized"]
