"""FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein 2020, "Minimally distorted adversarial examples
with a fast adaptive boundary attack", ICML), L∞ or L2, as AutoAttack's standard version runs it: robust accuracy
at a given ε.

For a row attacking an example (x_orig, true label y) toward a target class t, at the iterate x⁽ᵏ⁾:

* linearise g = z_t − z_y at x⁽ᵏ⁾ (one forward and one backward pass of the difference, input gradient only):
  π = {z : g(x⁽ᵏ⁾) + ∇g(x⁽ᵏ⁾)·(z − x⁽ᵏ⁾) = 0}, the approximate decision hyperplane between y and t;
* project x⁽ᵏ⁾ and x_orig onto π ∩ C, C = [0,1]ᵈ, in the attack norm (the paper's proj_p: the minimal-norm
  projection onto a hyperplane intersected with the box, :func:`hyperplane_projection`):
  δ⁽ᵏ⁾ = proj_p(x⁽ᵏ⁾, π, C) − x⁽ᵏ⁾, δ_orig⁽ᵏ⁾ = proj_p(x_orig, π, C) − x_orig;
* the FAB step, biased toward x_orig:
  x⁽ᵏ⁺¹⁾ = clip₀¹((1 − α)(x⁽ᵏ⁾ + η δ⁽ᵏ⁾) + α (x_orig + η δ_orig⁽ᵏ⁾)),
  α = min(‖δ⁽ᵏ⁾‖ / (‖δ⁽ᵏ⁾‖ + ‖δ_orig⁽ᵏ⁾‖), α_max), with the extrapolation η = 1.05 and α_max = 0.1;
* when x⁽ᵏ⁺¹⁾ is misclassified, the backward step x⁽ᵏ⁺¹⁾ ← (1 − β) x_orig + β x⁽ᵏ⁺¹⁾, β = 0.9.

Targets and restarts (AutoAttack's FAB-T): the targets are the ``top_targets`` (9) most likely classes after the
top one at the clean x; each target gets ``restarts`` runs, the first from x_orig, the later ones from a random
point on the sphere of radius min(u, ε)/2 around x_orig (u: the smallest norm of a misclassified point known when
the run starts; the paper's restarts). All targets × restarts run through :func:`robustlab.attacks.active.run_copies` (as copies of the batch in one
call on a GPU, one after another on a CPU); a run does not use another's result: u = ∞ and the radius is ε/2,
which is also what AutoAttack does (its per-run best norm starts at 10¹⁰).

Robust accuracy at ε (early exit): an example is fooled as soon as a misclassified iterate lies within ε of x_orig
(up to 1e-6); it then leaves the batch with all its copies and that point is returned. A misclassified iterate
farther than ε does not count; it only triggers the backward step (FAB's minimal-norm search goes on from there,
but its best point outside ε is never returned, so it is not kept). Examples misclassified at the clean input are
returned unchanged; examples never fooled within ε are returned clean. ``y`` is the true label: the target only
steers the search, success is ``pred ≠ y``. An independent implementation written from the paper.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustlab.attacks.active import ActiveSet, run_copies, success_mask
from robustlab.attacks.targets import top_other_classes
from robustlab.attacks.base import Attack, check_epsilon, check_seed, parse_norm
from robustlab.attacks.losses import loss_gradient
from robustlab.attacks.perturbation import batch_view
from robustlab.attacks.registry import register_attack

FAB_NORMS = ("linf", "l2")
# A misclassified iterate counts as within ε when ‖δ‖ ≤ ε + EPS_SLACK (float rounding of x + δ).
EPS_SLACK = 1e-6


def hyperplane_projection(p: torch.Tensor, w: torch.Tensor, c: torch.Tensor, norm: str) -> torch.Tensor:
    """The minimal-norm δ with w·δ + c = 0 and 0 ≤ p + δ ≤ 1, per row of ``p``, ``w`` (B, D) and ``c`` (B,).

    FAB's proj_p onto the linearised decision hyperplane intersected with the box, in the L∞ or L2 norm. With
    r = |c| and w' = −sign(c)·w (so that the constraint reads w'·δ = r ≥ 0), the optimum moves each coordinate in
    the direction of w'ᵢ, by at most its room uᵢ to the box (1 − pᵢ or pᵢ):

    * L∞: δᵢ = sign(w'ᵢ)·min(s, uᵢ), s the smallest radius with Σ |w'ᵢ| min(s, uᵢ) = r;
    * L2 (KKT): δᵢ = clip(s·w'ᵢ, box), s the Lagrange multiplier with Σ |w'ᵢ| min(s|w'ᵢ|, uᵢ) = r.

    Both solve Φ(s) = Σ |w'ᵢ| min(s·kᵢ, uᵢ) = r (kᵢ = 1 or |w'ᵢ|), Φ nondecreasing, concave and piecewise linear
    with breakpoints bᵢ = uᵢ/kᵢ. Exactly, without iterating (vectorised over the rows): sort the breakpoints,
    evaluate Φ at each of them with cumulative sums, find the linear piece where Φ crosses r and solve on it (the
    threshold is clamped to that piece). Infeasible rows (r > Φ(∞) = Σ |w'ᵢ|uᵢ: the box does not reach the
    hyperplane) get the box corner that goes furthest toward it, δᵢ = sign(w'ᵢ)·uᵢ (0 where w'ᵢ = 0). Coordinates
    with wᵢ = 0 never move; c = 0 gives δ = 0.
    """
    if norm not in FAB_NORMS:
        raise ValueError(f"norm must be one of {FAB_NORMS}, got {norm!r}")
    direction = torch.where(c > 0, -1.0, 1.0).to(w.dtype)[:, None] * w.sign()   # sign(w'ᵢ) ∈ {−1, 0, 1}
    room = torch.where(direction > 0, 1.0 - p, p).clamp_min(0.0)
    # (w, c) and (w, c)/max|w| define the same hyperplane; the scaling keeps the breakpoints finite.
    tiny = torch.finfo(w.dtype).tiny
    scale = w.abs().amax(1).clamp_min(tiny)
    a = w.abs() / scale[:, None]
    r = c.abs() / scale
    k = torch.ones_like(a) if norm == "linf" else a
    breaks = torch.where(a > 0, room / k.clamp_min(tiny), torch.zeros_like(a)).clamp_max(torch.finfo(w.dtype).max)
    b_sorted, order = breaks.sort(1)
    au = (a * room).gather(1, order).cumsum(1)                        # Σ_{i ≤ j} |w'ᵢ|uᵢ (sorted order)
    ak = (a * k).gather(1, order)
    tail = ak.flip(1).cumsum(1).flip(1)                               # Σ_{i ≥ j} |w'ᵢ|kᵢ
    tail_after = torch.nn.functional.pad(tail[:, 1:], (0, 1))         # Σ_{i > j} |w'ᵢ|kᵢ
    phi = au + b_sorted * tail_after                                  # Φ(b_j)
    piece = (phi < r[:, None]).sum(1, keepdim=True)                   # Φ crosses r on [b_{piece−1}, b_piece]
    last = a.shape[1] - 1
    before = (piece - 1).clamp_min(0)
    started = piece > 0
    au_before = torch.where(started, au.gather(1, before), torch.zeros_like(au[:, :1]))
    lower = torch.where(started, b_sorted.gather(1, before), torch.zeros_like(au[:, :1]))
    upper = b_sorted.gather(1, piece.clamp_max(last))
    s = (r[:, None] - au_before) / tail.gather(1, piece.clamp_max(last)).clamp_min(tiny)
    s = torch.minimum(torch.maximum(s, lower), upper)
    delta = direction * torch.minimum(s * k, room)
    infeasible = r > (a * room).sum(1)
    delta = torch.where(infeasible[:, None], direction * room, delta)
    return torch.where((r > 0)[:, None], delta, torch.zeros_like(delta))


def _norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-row ‖δ‖∞ or ‖δ‖₂ of a batch (any shape)."""
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def random_start(x: torch.Tensor, radius: torch.Tensor, norm: str) -> torch.Tensor:
    """A random point on the sphere of ``radius`` (per row) around ``x``, clipped to [0,1] (FAB's restarts).

    L∞: a uniform draw in [−1,1]ᵈ scaled to ‖·‖∞ = radius; L2: a Gaussian direction scaled to ‖·‖₂ = radius.
    """
    if norm == "linf":
        t = torch.rand(x.shape, device=x.device, dtype=x.dtype).mul_(2).sub_(1)
    else:
        t = torch.randn(x.shape, device=x.device, dtype=x.dtype)
    t = t / batch_view(_norm(t, norm).clamp_min(1e-12), t)
    return (x + batch_view(radius, x) * t).clamp(0.0, 1.0)


@register_attack("fab")
class FAB(Attack):
    """FAB-T for robust accuracy at ``eps`` (see the module docstring for the algorithm and conventions).

    ``norm`` "linf" or "l2"; ``steps`` FAB iterations per run; ``restarts`` runs per target (the first from the
    clean x, the others from random points); ``top_targets`` the number of target classes (AutoAttack: 9);
    ``eta`` the extrapolation η, ``beta`` the backward step β, ``alpha_max`` the cap on α. ``seed``: each call runs
    under ``rng.seeded(seed)`` (reproducible, the caller's RNG left as it was); None: the global RNG.
    ``batched``: all targets × restarts as copies of the batch in one call (True), one after another on the
    examples still robust (False), or batched on a GPU and sequential on a CPU (None), as APGD.
    """

    def __init__(self, eps: float, *, norm: str = "linf", steps: int = 100, restarts: int = 1, top_targets: int = 9,
                 eta: float = 1.05, beta: float = 0.9, alpha_max: float = 0.1, seed: int | None = None,
                 batched: bool | None = None, model_mode: str = "eval"):
        super().__init__(model_mode=model_mode)
        key = parse_norm(norm, FAB_NORMS)
        self.eps = check_epsilon(eps, key)
        for name, value in (("steps", steps), ("restarts", restarts), ("top_targets", top_targets)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (math.isfinite(eta) and eta > 0):
            raise ValueError(f"eta must be a finite number > 0, got {eta!r}")
        if not 0 < beta <= 1:
            raise ValueError(f"beta must be in (0, 1], got {beta!r}")
        if not 0 <= alpha_max <= 1:
            raise ValueError(f"alpha_max must be in [0, 1], got {alpha_max!r}")
        self.norm, self.batched = key, batched
        self.steps, self.restarts, self.top_targets = int(steps), int(restarts), int(top_targets)
        self.eta, self.beta, self.alpha_max = float(eta), float(beta), float(alpha_max)
        self.seed = check_seed(seed)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.eps == 0:
            return x.clone()
        with torch.no_grad():
            clean_logits = model(x)
        targets = top_other_classes(clean_logits, self.top_targets)
        batched = self.batched if self.batched is not None else x.device.type == "cuda"
        return run_copies(model, x, y, self._run, restarts=self.restarts,
                          targets=targets, batched=batched, skip=success_mask(clean_logits, y))[0]

    @staticmethod
    def _linearise(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(g = z_t − z_y (B,), ∇ₓg flattened (B, D), logits) at ``x``: one forward and one backward pass."""
        def diff(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, labels[:, None]).squeeze(1)

        out = loss_gradient(model, x, y, diff)
        return out.loss, out.grad.flatten(1), out.logits

    def _run(self, model: nn.Module, active: ActiveSet) -> None:
        """FAB runs on the rows of ``active`` (a row of run r is restart r mod ``restarts``); a row's
        example leaves at the first misclassified iterate within ε; the rest end at their clean point.

        Per step: one forward and backward pass (the linearisation at the iterate, whose logits also test the
        iterate, e.g. a random start or a point after the backward step) and one forward pass (the test of the new
        iterate before the backward step).
        """
        restart = active.copy % self.restarts
        x_cur = active.x.clone()
        rand = restart > 0
        if bool(rand.any()):
            radius = torch.full((int(rand.sum()),), self.eps / 2, dtype=x_cur.dtype, device=x_cur.device)
            x_cur[rand] = random_start(active.x[rand], radius, self.norm)
        for _ in range(self.steps):
            g, w, logits = self._linearise(model, x_cur, active.y, active.target)
            x_cur, g, w = active.retire(self._fooled(logits, x_cur, active), x_cur, x_cur, g, w)
            if active.empty:
                break
            x_orig = active.x
            n = len(x_cur)
            cur_flat, orig_flat = x_cur.flatten(1), x_orig.flatten(1)
            c_orig = g + (w * (orig_flat - cur_flat)).sum(1)   # the linearisation of g evaluated at x_orig
            delta = hyperplane_projection(torch.cat([cur_flat, orig_flat]), torch.cat([w, w]),
                                          torch.cat([g, c_orig]), self.norm)
            d_cur, d_orig = delta[:n], delta[n:]
            size = _norm(delta, self.norm).clamp_min(1e-8)   # floored: α stays defined when both are 0
            alpha = torch.clamp(size[:n] / (size[:n] + size[n:]), max=self.alpha_max)[:, None]
            step = (1 - alpha) * (cur_flat + self.eta * d_cur) + alpha * (orig_flat + self.eta * d_orig)
            x_cur = step.clamp(0.0, 1.0).view_as(x_cur)

            with torch.no_grad():
                logits = model(x_cur)
            fooled = self._fooled(logits, x_cur, active)
            back = success_mask(logits, active.y) & ~fooled   # misclassified beyond ε: the backward step
            x_cur = torch.where(batch_view(back, x_cur), (1 - self.beta) * x_orig + self.beta * x_cur, x_cur)
            (x_cur,) = active.retire(fooled, x_cur, x_cur)
            if active.empty:
                break
        active.finish(active.x)

    def _fooled(self, logits: torch.Tensor, x_rows: torch.Tensor, active: ActiveSet) -> torch.Tensor:
        """Rows whose point is misclassified and within ε of the clean row (up to ``EPS_SLACK``)."""
        near = _norm(x_rows - active.x, self.norm) <= self.eps + EPS_SLACK
        return success_mask(logits, active.y) & near
