"""Few-pixel attack by differential evolution (Su, Vargas & Sakurai 2019, "One pixel attack"), batched.

A candidate encodes ``pixels`` changes, each (row, col, one value per channel): D = pixels·(2 + C) numbers, rows in
[0, H), columns in [0, W) (floored to integers), values in [0, 1]. DE/rand/1 without crossover, as in the paper:
each generation every member i gets a mutant v_i = p_r1 + F·(p_r2 − p_r3) with r1, r2, r3 distinct and ≠ i;
coordinates that leave the bounds are redrawn uniformly (scipy's rule); v_i replaces p_i when its fitness is not
worse. Fitness (minimised): the probability of the true class (untargeted) or 1 − p_target (targeted). No gradients.

Vectorised: the whole population of every still-running example is evaluated in large forward passes
(examples × population images, chunked to at most ``max_images`` per pass). An example stops as soon as one of its
evaluated candidates fools the model; among the fooling candidates of that generation it keeps the one with the
best fitness. Settings of the Learn2Perturb evaluation (spec §4): population 400, 75 iterations, 1–3 pixels.
Initial population uniform in the bounds (the paper draws RGB values from N(128, 127); uniform is scipy's default
and what the torchattacks port does) [R].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.base import check_seed
from robustlab.attacks.active import success_mask
from robustlab.attacks.perturbation import MinimalAttack, MinimalResult, finalize
from robustlab.attacks.registry import register_attack


def apply_pixels(x: torch.Tensor, cand: torch.Tensor, pixels: int) -> torch.Tensor:
    """Images ``(n·N, C, H, W)``: each of the ``N`` candidates ``cand[i]`` ``(n, N, D)`` applied to ``x[i]``."""
    n, num, _ = cand.shape
    _, c, h, w = x.shape
    enc = cand.view(n, num, pixels, 2 + c)
    row = enc[..., 0].floor().long().clamp_(0, h - 1)
    col = enc[..., 1].floor().long().clamp_(0, w - 1)
    pos = (row * w + col)[:, :, None, :].expand(n, num, c, pixels)
    values = enc[..., 2:].permute(0, 1, 3, 2).to(x.dtype)
    imgs = x.reshape(n, 1, c, h * w).expand(n, num, c, h * w).clone()
    imgs.scatter_(3, pos, values)
    return imgs.view(n * num, c, h, w)


def distinct_others(n: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three ``(n, size)`` index tensors r1, r2, r3 into a population of ``size``: distinct and ≠ own index."""
    m = size - 1  # offsets 1..size-1 from the member's own index, three distinct ones
    u1 = torch.randint(m, (n, size), device=device)
    u2 = torch.randint(m - 1, (n, size), device=device)
    u3 = torch.randint(m - 2, (n, size), device=device)
    u2 = u2 + (u2 >= u1).long()
    lo, hi = torch.minimum(u1, u2), torch.maximum(u1, u2)
    u3 = u3 + (u3 >= lo).long()
    u3 = u3 + (u3 >= hi).long()
    own = torch.arange(size, device=device)
    return tuple((own + 1 + u) % size for u in (u1, u2, u3))  # type: ignore[return-value]


@register_attack("few_pixel")
class FewPixel(MinimalAttack):
    """Change at most ``pixels`` pixels (all channels) to fool the model, found by differential evolution."""

    needs_images = True

    def __init__(self, *, pixels: int = 1, population: int = 400, iterations: int = 75, mutation: float = 0.5,
                 targeted: bool = False, max_images: int = 16384, seed: int | None = None,
                 model_mode: str = "eval"):
        super().__init__(model_mode=model_mode)
        if pixels < 1 or population < 4 or iterations < 0 or max_images < 1 or mutation <= 0:
            raise ValueError("need pixels >= 1, population >= 4, iterations >= 0, mutation > 0, max_images >= 1")
        self.pixels = int(pixels)
        self.population = int(population)
        self.iterations = int(iterations)
        self.mutation = float(mutation)
        self.targeted = bool(targeted)
        self.max_images = int(max_images)
        self.seed = check_seed(seed)

    def _fitness(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, cand: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fitness (lower is better) and fooled-mask of every candidate: two ``(n, N)`` tensors."""
        n, num, _ = cand.shape
        chunk = max(1, self.max_images // num)
        fits, fools = [], []
        with torch.no_grad():
            for s in range(0, n, chunk):
                xs, ys = x[s:s + chunk], y[s:s + chunk]
                logits = model(apply_pixels(xs, cand[s:s + chunk], self.pixels))
                y_rep = ys.repeat_interleave(num)
                p = F.softmax(logits, dim=1).gather(1, y_rep[:, None]).squeeze(1)
                fits.append((1 - p if self.targeted else p).view(len(xs), num))
                fools.append(success_mask(logits, y_rep, self.targeted).view(len(xs), num))
        return torch.cat(fits), torch.cat(fools)

    def search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MinimalResult:
        if x.dim() != 4:
            raise ValueError(f"few-pixel attack needs images (B, C, H, W), got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        per_pixel_hi = [float(h), float(w)] + [1.0] * c
        hi = torch.tensor(per_pixel_hi * self.pixels, device=x.device)
        is_coord = torch.tensor([True, True] + [False] * c, device=x.device).repeat(self.pixels)
        num, dim = self.population, hi.numel()

        def uniform(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.rand(shape, device=x.device) * hi

        pop = uniform((n, num, dim))
        fit, fool = self._fitness(model, x, y, pop)
        best = torch.zeros(n, dim, device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        rows = torch.arange(n, device=x.device)

        def record(idx: torch.Tensor, cand: torch.Tensor, f: torch.Tensor, ok: torch.Tensor) -> None:
            hit = ok.any(1)
            j = torch.where(ok, f, torch.full_like(f, float("inf"))).argmin(1)
            chosen = cand[torch.arange(len(idx), device=x.device), j]
            best[idx[hit]] = chosen[hit]
            done[idx[hit]] = True

        record(rows, pop, fit, fool)
        for _ in range(self.iterations):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            p = pop[idx]
            r1, r2, r3 = distinct_others(len(idx), num, x.device)

            def pick(r: torch.Tensor) -> torch.Tensor:
                return p.gather(1, r[:, :, None].expand(-1, -1, dim))

            v = pick(r1) + self.mutation * (pick(r2) - pick(r3))
            out = (v < 0) | (v > hi) | (is_coord & (v >= hi))
            v = torch.where(out, uniform(v.shape), v)
            fv, fool_v = self._fitness(model, x[idx], y[idx], v)
            better = fv <= fit[idx]
            pop[idx] = torch.where(better[:, :, None], v, p)
            fit[idx] = torch.where(better, fv, fit[idx])
            record(idx, v, fv, fool_v)

        # Failures keep their best-fitness candidate as the last iterate (for ρ with failures).
        fallback = pop[rows, fit.argmin(1)]
        best = torch.where(done[:, None], best, fallback)
        candidate = apply_pixels(x, best[:, None, :], self.pixels)
        return finalize(model, x, y, candidate, done, self.targeted)
