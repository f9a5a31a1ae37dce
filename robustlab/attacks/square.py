"""Square Attack (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV), L∞ and L2, untargeted or targeted. Score-based: no gradients.

Random search (Algorithm 1) on the margin loss L(x̂) = z_y − max_{j≠y} z_j (targeted, y = target:
max_{j≠y} z_j − z_y): a candidate x_new replaces the current point x̂ when L(x_new) < L(x̂); an example is done as
soon as it is fooled (prediction ≠ y, or = the target). Each iteration costs one forward pass per active example;
``queries`` is the budget per example including the forward pass of the initial point (the paper's n_iters).

* p schedule: the fraction p of pixels a window covers is halved after iterations 10, 50, 200, 500, 1000, 2000,
  4000, 6000 and 8000 of a 10 000-query run, rescaled to the budget: it' = int(it / queries · 10 000).
* L∞ (Algorithm 2): start at vertical stripes x + ε·(±1 per column and channel), clipped to [0,1]; each
  iteration picks a square window of side s = max(round(√(p·h·w)), 1) (at most h − 1) and sets δ in it to a new
  ±ε per channel, redrawn until it changes the point (as the paper's code does; drawn loop-free here).
* L2 (Algorithm 3): start at "meta-squares" (a grid of squares of side h // 5, each with the two-bump pattern η of
  opposite signs, a random sign per channel), scaled to ‖δ‖₂ = ε; each iteration picks two windows of odd side
  s = max(round(√(p·h·w)), 3), moves the mass of window 2 into window 1 (window 2 set to 0, window 1 set to
  old/‖old‖ + ±η rescaled per channel to the free budget √(max(ε² − ‖δ‖², 0)/c + ‖δ_{W1∪W2}‖²)), then rescales δ
  to ‖δ‖₂ = ε and clips to [0,1].

Vectorised over the batch: every example draws its own window positions, signs and (L2) pattern orientation
each iteration (the paper's L∞ code draws positions per image, its L2 code and AutoAttack per batch). Positions
range over all h − s + 1 offsets (the reference code's ``randint(0, h − s)`` never uses the last one) [R].
Examples misclassified at the clean input (or already at their target) are returned unchanged; restarts run as
copies of the batch through :func:`robustlab.attacks.active.run_copies`, and each example leaves as soon as one
copy fools the model. An independent implementation written from the paper.

``give_up`` (off by default; the ``adaptive`` suite's option): online discarding, as A³ (Liu et al. 2022) does for
its white-box attack, applied to the random search. At each checkpoint (q, r), an example not yet fooled whose best
margin is still above r × its margin at the initial point stops there, unfooled (with restarts, each copy is judged
on its own margin): the queries go to the examples whose margin is moving. ``benchmarks/square_trace.py``
measures, on the zoo, which rules lose a success.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from robustlab.attacks.active import ActiveSet, run_copies, success_mask
from robustlab.attacks.base import Attack, check_epsilon, check_seed, parse_norm
from robustlab.attacks.registry import register_attack

SQUARE_NORMS = ("linf", "l2")
DEFAULT_P_INIT = {"linf": 0.8, "l2": 0.3}
# Iterations (of a 10 000-query run) after which p is halved (the paper's schedule).
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(p_init: float, it: int, queries: int) -> float:
    """p at iteration ``it`` (0-based) of a ``queries`` budget: p_init halved once per threshold passed by
    int(it / queries · 10 000)."""
    scaled = int(it / queries * 10000)
    return p_init / 2 ** sum(scaled > t for t in P_HALVINGS)


def check_give_up(give_up: Sequence[Sequence[float]], queries: int | None) -> dict[int, float]:
    """``[(q, r), ...]`` → {q: r}: each q an integer in [2, queries) (``queries`` None: no upper bound),
    increasing, each r in (0, 1]."""
    checkpoints: dict[int, float] = {}
    for item in give_up:
        if len(item) != 2:
            raise ValueError(f"give_up: each checkpoint is (queries, ratio), got {item!r}")
        q, r = item
        if isinstance(q, bool) or int(q) != q or q < 2 or (queries is not None and q >= queries):
            bound = f"in [2, {queries})" if queries is not None else ">= 2"
            raise ValueError(f"give_up: a checkpoint's queries must be an integer {bound}, got {q!r}")
        if not 0 < float(r) <= 1:
            raise ValueError(f"give_up: a checkpoint's margin ratio must be in (0, 1], got {r!r}")
        if checkpoints and int(q) <= max(checkpoints):
            raise ValueError(f"give_up: checkpoints must be in increasing order of queries, got {list(give_up)!r}")
        checkpoints[int(q)] = float(r)
    return checkpoints


def _margin(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """z_y − max_{j≠y} z_j, negated when ``targeted`` (y = target); minimised, < 0 means success."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return others - z_y if targeted else z_y - others


def _signs(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.randint(0, 2, shape, device=like.device).to(like.dtype).mul_(2).sub_(1)


def _window_mask(n: int, h: int, w: int, s: int, device: torch.device, reference_offsets: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random s×s window per example: (mask (n, 1, h, w), top rows (n,), left columns (n,)).

    Offsets are uniform in {0, …, h − s} (the paper's Algorithms 2 and 3); ``reference_offsets``: in
    {0, …, h − s − 1}, as the reference code's ``randint(0, h − s)`` (never the last row or column of windows).
    """
    hi_h, hi_w = (max(h - s, 1), max(w - s, 1)) if reference_offsets else (h - s + 1, w - s + 1)
    top = torch.randint(0, hi_h, (n,), device=device)
    left = torch.randint(0, hi_w, (n,), device=device)
    r = torch.arange(h, device=device)[None, :] - top[:, None]
    c = torch.arange(w, device=device)[None, :] - left[:, None]
    rows, cols = (r >= 0) & (r < s), (c >= 0) & (c < s)
    return (rows[:, :, None] & cols[:, None, :])[:, None], top, left


def _bump_rectangle(a: int, b: int) -> torch.Tensor:
    """The paper's pseudo-Gaussian a×b pattern: nested centred rectangles, the k-th (k = 1, 2, ...) adding 1/k²;
    unit L2 norm."""
    delta = torch.zeros(a, b, dtype=torch.float64)
    ca, cb = a // 2, b // 2
    for k in range(max(a // 2 + 1, b // 2 + 1)):
        delta[max(ca - k, 0):ca + k + 1, max(cb - k, 0):cb + k + 1] += 1.0 / (k + 1) ** 2
    return delta / delta.norm().clamp_min(1e-12)


def meta_pattern(s: int) -> torch.Tensor:
    """η of side s (Algorithm 3): a positive bump on the top s // 2 rows, a negative one below; unit L2 norm."""
    eta = torch.zeros(s, s, dtype=torch.float64)
    eta[:s // 2] = _bump_rectangle(s // 2, s)
    eta[s // 2:] = -_bump_rectangle(s - s // 2, s)
    return eta / eta.norm().clamp_min(1e-12)


def _oriented(eta: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    """η (s, s) per example, transposed with probability 1/2: (n, s, s)."""
    eta = eta.to(device=like.device, dtype=like.dtype)
    flip = torch.rand(n, device=like.device) < 0.5
    return torch.where(flip[:, None, None], eta.t(), eta)


def _l2_norm(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return t.square().sum(dims, keepdim=True).sqrt()


@register_attack("square")
class Square(Attack):
    """Square Attack, L∞ (Algorithm 2) or L2 (Algorithm 3) random search on the margin loss (module docstring).

    ``queries``: forward passes per example and restart (including the initial point); ``p_init``: the initial
    fraction of pixels per window (default 0.8 for L∞, 0.3 for L2); ``restarts`` run as batch copies;
    ``targeted``: ``y`` holds the target labels; ``give_up``: online discarding checkpoints (queries, margin ratio),
    see the module docstring. ``seed``: each call runs under ``rng.seeded(seed)`` (reproducible,
    the caller's RNG left as it was); None draws from the global RNG.

    ``reference_offsets`` (class attribute, False): draw window offsets as the reference code (paper's repository,
    AutoAttack, torchattacks) does, excluding the last offset h − s; on 8×8 images this leaves the last row and
    column out of most windows and makes the attack markedly weaker. Set in a subclass for like-for-like
    comparisons with those implementations.
    """

    reference_offsets = False
    needs_images = True

    def __init__(self, eps: float, *, norm: str = "linf", queries: int = 5000, p_init: float | None = None,
                 restarts: int = 1, targeted: bool = False, seed: int | None = None, model_mode: str = "eval",
                 give_up: Sequence[Sequence[float]] = ()):
        super().__init__(model_mode=model_mode)
        key = parse_norm(norm, SQUARE_NORMS)
        self.eps = check_epsilon(eps, key)
        if isinstance(queries, bool) or int(queries) != queries or queries < 1:
            raise ValueError(f"queries must be an integer >= 1, got {queries!r}")
        if isinstance(restarts, bool) or int(restarts) != restarts or restarts < 1:
            raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
        p = DEFAULT_P_INIT[key] if p_init is None else float(p_init)
        if not 0 < p <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init!r}")
        self.norm = key
        self.queries = int(queries)
        self.p_init = p
        self.restarts = int(restarts)
        self.targeted = bool(targeted)
        self.seed = check_seed(seed)
        self.give_up_at = check_give_up(give_up, self.queries)  # {queries: margin ratio}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[2] < 2 or x.shape[3] < 2:
            raise ValueError(f"square attack needs images (B, C, H, W) with H, W >= 2, got shape {tuple(x.shape)}")
        if self.eps == 0 or len(x) == 0:
            return x.clone()
        with torch.no_grad():
            skip = success_mask(model(x), y, self.targeted)
            init, step = (self._linf_init, self._linf_step) if self.norm == "linf" else (self._l2_init, self._l2_step)

            def core(model_: nn.Module, active: ActiveSet) -> None:
                x_best = init(active.x)
                logits = model_(x_best)
                margin = _margin(logits, active.y, self.targeted)
                x_best, margin = active.retire(success_mask(logits, active.y, self.targeted), x_best, x_best, margin)
                initial = margin
                for it in range(self.queries - 1):
                    if active.empty:
                        return
                    if it + 1 in self.give_up_at:  # it + 1 queries spent: the stalled examples stop here
                        stalled = margin.gt(self.give_up_at[it + 1] * initial)
                        x_best, margin, initial = active.give_up(stalled, x_best, x_best, margin, initial)
                        if active.empty:
                            return
                    p = p_schedule(self.p_init, it, self.queries)
                    x_new = step(active.x, x_best, p)
                    logits = model_(x_new)
                    m_new = _margin(logits, active.y, self.targeted)
                    fooled = success_mask(logits, active.y, self.targeted)
                    better = m_new.lt(margin) | fooled
                    x_best = torch.where(better.view(-1, 1, 1, 1), x_new, x_best)
                    margin = torch.where(better, m_new, margin)
                    x_best, margin, initial = active.retire(fooled, x_best, x_best, margin, initial)
                active.finish(x_best)

            out, _ = run_copies(model, x, y, core, restarts=self.restarts, skip=skip)
        return out

    # --- L∞ (Algorithm 2) ------------------------------------------------------------------------------------
    def _linf_init(self, x: torch.Tensor) -> torch.Tensor:
        """Vertical stripes: x + ε·(±1 per example, channel and column), clipped to [0,1]."""
        n, c, _, w = x.shape
        return (x + self.eps * _signs((n, c, 1, w), x)).clamp_(0.0, 1.0)

    def _linf_step(self, x: torch.Tensor, x_best: torch.Tensor, p: float
                   ) -> torch.Tensor:
        """A window of side s gets a new ±ε per channel, redrawn (per example) until the point changes."""
        n, c, h, w = x.shape
        s = min(max(round(math.sqrt(p * h * w)), 1), min(h, w) - 1)
        mask, _, _ = _window_mask(n, h, w, s, x.device, self.reference_offsets)
        delta = x_best - x
        value = self.eps * _signs((n, c, 1, 1), x)
        x_new = (x + torch.where(mask, value, delta)).clamp_(0.0, 1.0)
        # The paper redraws the signs while the window stays unchanged. For ε > 0 the two signs of a channel
        # give different values at every pixel, so at most one sign combination leaves the window unchanged;
        # redrawing until it changes is a uniform draw among the other 2^c − 1 combinations, i.e. flipping the
        # channels of a nonzero random bit pattern (loop-free, same distribution).
        same = ((x_new - x_best).abs().lt(1e-7) | ~mask).flatten(1).all(1)
        bits = min(c, 62)
        pattern = torch.randint(1, 2 ** bits, (n, 1), device=x.device)
        flip = (pattern >> torch.arange(c, device=x.device).clamp_max(bits - 1)) & 1
        flip = flip.bool() & torch.arange(c, device=x.device).lt(bits)
        value = torch.where((flip & same[:, None]).view(n, c, 1, 1), -value, value)
        return (x + torch.where(mask, value, delta)).clamp_(0.0, 1.0)

    # --- L2 (Algorithm 3) ------------------------------------------------------------------------------------
    def _l2_init(self, x: torch.Tensor) -> torch.Tensor:
        """Meta-squares: a grid of side-(h // 5) squares, each ±η per example and channel; ‖δ‖₂ = ε, clipped."""
        n, c, h, w = x.shape
        s = max(h // 5, 1)
        eta = meta_pattern(s)
        delta = torch.zeros_like(x)
        # h // s rows and w // s columns of squares from offset (h − 5s) // 2, cut at the border (as the paper).
        tops = [t for t in range(max((h - 5 * s) // 2, 0), h, s)][:h // s]
        lefts = [v for v in range(max((w - 5 * s) // 2, 0), w, s)][:w // s]
        for top in tops:
            for left in lefts:
                bh, bw = min(s, h - top), min(s, w - left)
                pattern = _oriented(eta, n, x)[:, None, :bh, :bw]
                delta[:, :, top:top + bh, left:left + bw] += pattern * _signs((n, c, 1, 1), x)
        delta = delta / _l2_norm(delta, (1, 2, 3)).clamp_min(1e-12) * self.eps
        return (x + delta).clamp_(0.0, 1.0)

    def _l2_step(self, x: torch.Tensor, x_best: torch.Tensor, p: float
                 ) -> torch.Tensor:
        """Move the mass of window 2 into window 1 (new ±η plus the normalised old content), keep ‖δ‖₂ = ε."""
        n, c, h, w = x.shape
        s = max(round(math.sqrt(p * h * w)), 3)
        s = min(s + 1 if s % 2 == 0 else s, h, w)
        mask1, top, left = _window_mask(n, h, w, s, x.device, self.reference_offsets)
        mask2, _, _ = _window_mask(n, h, w, s, x.device, self.reference_offsets)
        delta = x_best - x
        norm_image = _l2_norm(delta, (1, 2, 3))
        old = delta * mask1
        norm_w1 = _l2_norm(old, (2, 3))
        norm_windows = _l2_norm(delta * (mask1 | mask2), (2, 3))
        # η placed at each example's window 1: pattern[i − top, j − left] inside the window.
        eta = _oriented(meta_pattern(s), n, x)
        r = (torch.arange(h, device=x.device)[None, :] - top[:, None]).clamp_(0, s - 1)
        col = (torch.arange(w, device=x.device)[None, :] - left[:, None]).clamp_(0, s - 1)
        rows = torch.arange(n, device=x.device)[:, None, None]
        eta_full = eta[rows, r[:, :, None], col[:, None, :]][:, None] * mask1
        new = eta_full * _signs((n, c, 1, 1), x) + old / (norm_w1 + 1e-12)
        budget = ((self.eps ** 2 - norm_image.square()).clamp_min(0.0) / c + norm_windows.square()).sqrt()
        new = new / _l2_norm(new, (2, 3)).clamp_min(1e-12) * budget
        delta = torch.where(mask1, new, torch.where(mask2, torch.zeros_like(delta), delta))
        delta = delta / _l2_norm(delta, (1, 2, 3)).clamp_min(1e-12) * self.eps
        return (x + delta).clamp_(0.0, 1.0)
