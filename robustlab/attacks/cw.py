"""Carlini–Wagner L2 attack (Carlini & Wagner 2017, "Towards evaluating the robustness of neural networks").

Change of variable x' = (tanh(w) + 1)/2 keeps x' in the [0,1] box; Adam on w minimises, per example,

    ‖x' − x‖₂² + c · max(z_y − max_{j≠y} z_j + κ, 0)          (untargeted; f6 of the paper on logits z)
    ‖x' − x‖₂² + c · max(max_{j≠t} z_j − z_t + κ, 0)          (targeted, t = the given label)

with a per-example binary search over c (Carlini's reference l2_attack.py): start at ``initial_const``; after a
search step that found an adversarial example, upper = min(upper, c), otherwise lower = max(lower, c); the next c is
(lower + upper)/2 once an upper bound is known, else c·10 (capped at ``max_const``, the spec's 1e10). Each search
step restarts Adam from w = atanh(2x − 1). The result is the adversarial example of smallest L2 over all steps
and iterations that satisfies the κ-margin; examples never fooled are returned unchanged.

Deviations from the reference code, all per example so that the batch composition does not change the result:
the early abort (every ``max_iter // 10`` iterations, stop when the loss is above 0.9999 × its previous checked
value) freezes each example on its own loss rather than breaking on the batch sum, and Adam is written out on
tensors so that a frozen example is not moved by momentum. The distance is measured to the clean x (the reference
measures to tanh(atanh(x)), which differs by ~1e-6). Defaults follow the adversary-critic spec (ρ_adv setting:
κ 0, 9 search steps, c0 1e-3, lr 1e-2, 1000 iterations, early abort); the Learn2Perturb evaluation uses lr 5e-4 and
κ ∈ {0, 0.1, 1, 2, 5}; AT²L uses lr 5e-3.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustlab.attacks.perturbation import MinimalAttack, MinimalResult, batch_view, finalize
from robustlab.attacks.registry import register_attack

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8


def cw_margin(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """z_y − max_{j≠y} z_j (untargeted) or max_{j≠t} z_j − z_t (targeted): the attack succeeds when it is < −κ."""
    real = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - real if targeted else real - other


def to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    """w with (tanh(w) + 1)/2 ≈ x (the 1 − 1e-6 factor keeps atanh finite at 0 and 1, as in Carlini's code)."""
    return torch.atanh((2 * x - 1) * (1 - 1e-6))


def from_tanh_space(w: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(w) + 1) / 2


@register_attack("cw_l2")
class CarliniWagnerL2(MinimalAttack):
    """C&W L2 with per-example binary search over c; ``y`` is the true label, or the target when ``targeted``."""

    def __init__(self, *, kappa: float = 0.0, binary_search_steps: int = 9, initial_const: float = 1e-3,
                 max_const: float = 1e10, lr: float = 1e-2, max_iter: int = 1000, abort_early: bool = True,
                 targeted: bool = False, model_mode: str = "eval"):
        super().__init__(model_mode=model_mode)
        if binary_search_steps < 1 or max_iter < 1:
            raise ValueError(f"binary_search_steps and max_iter must be >= 1, got {binary_search_steps}, {max_iter}")
        if kappa < 0 or initial_const <= 0 or max_const < initial_const or lr <= 0:
            raise ValueError("need kappa >= 0, 0 < initial_const <= max_const and lr > 0")
        self.kappa, self.initial_const, self.max_const, self.lr = map(float, (kappa, initial_const, max_const, lr))
        self.binary_search_steps, self.max_iter = int(binary_search_steps), int(max_iter)
        self.abort_early, self.targeted = bool(abort_early), bool(targeted)

    def search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MinimalResult:
        n = x.shape[0]
        opts = dict(device=x.device, dtype=x.dtype)
        w0 = to_tanh_space(x)
        const = torch.full((n,), self.initial_const, **opts)
        lower = torch.zeros(n, **opts)
        upper = torch.full((n,), self.max_const, **opts)
        best_l2 = torch.full((n,), math.inf, **opts)
        best_adv = x.clone()
        x_last = x.clone()
        check_every = max(self.max_iter // 10, 1)
        repeat = self.binary_search_steps >= 10  # Carlini: the last of >= 10 steps retries at the upper bound

        for outer in range(self.binary_search_steps):
            if repeat and outer == self.binary_search_steps - 1:
                const = torch.where(upper < self.max_const, upper, const)
            w, m, v = w0.clone(), torch.zeros_like(x), torch.zeros_like(x)
            step_success = torch.zeros(n, dtype=torch.bool, device=x.device)
            prev_loss = torch.full((n,), math.inf, **opts)
            active = torch.ones(n, dtype=torch.bool, device=x.device)
            for it in range(self.max_iter):
                idx = active.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                w_a = w[idx].requires_grad_(True)
                x_a = from_tanh_space(w_a)
                logits = model(x_a)
                l2 = (x_a - x[idx]).pow(2).flatten(1).sum(1)
                margin = cw_margin(logits, y[idx], self.targeted)
                loss = l2 + const[idx] * torch.clamp(margin + self.kappa, min=0)
                (grad,) = torch.autograd.grad(loss.sum(), w_a)
                with torch.no_grad():
                    x_a, l2, loss = x_a.detach(), l2.detach(), loss.detach()
                    succ = (margin.detach() + self.kappa) < 0
                    improve = succ & (l2 < best_l2[idx])
                    best_l2[idx] = torch.where(improve, l2, best_l2[idx])
                    best_adv[idx] = torch.where(batch_view(improve, x_a), x_a, best_adv[idx])
                    step_success[idx] |= succ
                    x_last[idx] = x_a
                    # Adam on the active examples only (all active ones share the step count t).
                    t = it + 1
                    m_a = _BETA1 * m[idx] + (1 - _BETA1) * grad
                    v_a = _BETA2 * v[idx] + (1 - _BETA2) * grad * grad
                    denom = (v_a / (1 - _BETA2 ** t)).sqrt_().add_(_ADAM_EPS)
                    w[idx] = w_a.detach() - (self.lr / (1 - _BETA1 ** t)) * m_a / denom
                    m[idx], v[idx] = m_a, v_a
                    if self.abort_early and it % check_every == 0:
                        stalled = loss > prev_loss[idx] * 0.9999
                        prev_loss[idx] = loss
                        active[idx[stalled]] = False
            # Per-example binary search on c (Carlini's rule, vectorised).
            upper = torch.where(step_success, torch.minimum(upper, const), upper)
            lower = torch.where(step_success, lower, torch.maximum(lower, const))
            bounded = upper < self.max_const
            grown = torch.where(step_success, const, torch.clamp(const * 10, max=self.max_const))
            const = torch.where(bounded, (lower + upper) / 2, grown)

        found = torch.isfinite(best_l2)
        candidate = torch.where(batch_view(found, x), best_adv, x_last)
        return finalize(model, x, y, candidate, found, self.targeted)
