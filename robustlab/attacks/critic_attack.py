"""The high-confidence attack of the adversary-critic paper (Matyasko & Chau 2018), test-time version.

Spec §2 and the reference code (aam-at/adversary_critic attack.py ``high_confidence_attack``, test.py):

1. target t = closest decision boundary from the **true** label y at the clean x (the DeepFool rule,
   :func:`closest_boundary_target`); with ``targeted=True`` the given ``y`` is the target instead;
2. C = max softmax of f at the clean x (per example), or a fixed ``confidence``;
3. r = 0; per iteration at x̃ = x + (1+os)·r: lp = log p_t(x̃), g = ∇_x̃ lp, δ = |lp − log C|,
   ‖g‖ = sqrt(ε + Σg²), r_i = (sqrt(ε) + δ/‖g‖)·g/‖g‖ clipped to ‖r_i‖₂ ≤ ``max_step`` (0.1);
   an example freezes once argmax f(x̃) = t and p_t(x̃) ≥ C; otherwise r ← r + r_i and
   r ← (clip(x + (1+os)r, 0, 1) − x)/(1+os);
4. up to ``max_iter`` (500) iterations, overshoot os = 0.02; the output is x + (1+os)·r.

Success means the returned example is classified as t with p_t ≥ C (re-checked at the end); failures are
returned unchanged and their last iterate is in ``MinimalResult.x_last`` (for ρ with failures).

:func:`high_confidence_step` computes one r_i and takes ``create_graph``: the differentiable training version
(unrolled N = 5 steps, sigmoid-adjusted straight-through stopping, no clip, os 0.05) can call it with
``create_graph=True`` so that r_i stays differentiable in the weights through δ and g.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.deepfool import closest_boundary_target
from robustlab.attacks.active import ActiveSet, success_mask
from robustlab.attacks.perturbation import MinimalAttack, MinimalResult, batch_view, clip_l2
from robustlab.attacks.registry import register_attack


def high_confidence_step(model: nn.Module, x_adv: torch.Tensor, target: torch.Tensor,
                         confidence: torch.Tensor | float, *,
                         eps: float = 1e-8, max_step: float | None = None, create_graph: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step r_i = (sqrt(ε) + δ/‖g‖)·g/‖g‖ at ``x_adv`` (a constant point: it is detached first).

    g = ∇ log p_t(x_adv), δ = |log p_t − log C|, ‖g‖ = sqrt(ε + Σg²); r_i is clipped to L2 ≤ ``max_step`` if given.
    Returns ``(r_i, logits, log p_t)``. With ``create_graph=False`` all three are detached and nothing reaches the
    parameters; with ``create_graph=True`` they keep the graph to the model's parameters (second-order terms
    through g), for the differentiable training attack.
    """
    x_t = x_adv.detach().requires_grad_(True)
    logits = model(x_t)
    log_p_t = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
    (g,) = torch.autograd.grad(log_p_t.sum(), x_t, create_graph=create_graph)
    confidence = torch.as_tensor(confidence, dtype=log_p_t.dtype, device=log_p_t.device)
    delta = (log_p_t - torch.log(confidence)).abs()
    g_norm = torch.sqrt(eps + g.flatten(1).pow(2).sum(1))
    r_i = batch_view((math.sqrt(eps) + delta / g_norm) / g_norm, g) * g
    r_i = clip_l2(r_i, max_step)
    if not create_graph:
        return r_i.detach(), logits.detach(), log_p_t.detach()
    return r_i, logits, log_p_t


@dataclass(frozen=True)
class HighConfidenceResult(MinimalResult):
    """:class:`MinimalResult` plus the per-example ``target`` class and ``confidence`` C the attack aimed for."""

    target: torch.Tensor
    confidence: torch.Tensor


@register_attack("critic_hc")
class HighConfidenceAttack(MinimalAttack):
    """Test-time high-confidence attack: reach the closest-boundary class t with p_t ≥ C (C = clean confidence)."""

    def __init__(self, *, max_iter: int = 500, overshoot: float = 0.02, max_step: float | None = 0.1,
                 eps: float = 1e-8, confidence: float | None = None, candidates: int | None = None,
                 targeted: bool = False, model_mode: str = "eval"):
        super().__init__(model_mode=model_mode)
        if max_iter < 1 or overshoot < 0 or (max_step is not None and max_step <= 0) or eps <= 0:
            raise ValueError("need max_iter >= 1, overshoot >= 0, eps > 0 and max_step > 0 (or None)")
        if confidence is not None and not 0 < confidence <= 1:
            raise ValueError(f"confidence must be in (0, 1], got {confidence}")
        self.max_iter = int(max_iter)
        self.overshoot = float(overshoot)
        self.max_step = None if max_step is None else float(max_step)
        self.eps = float(eps)
        self.confidence = None if confidence is None else float(confidence)
        self.candidates = None if candidates is None else int(candidates)
        self.targeted = bool(targeted)

    def search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> HighConfidenceResult:
        if self.targeted:
            target = y
            with torch.no_grad():
                clean_logits = model(x)
        else:
            target, clean_logits = closest_boundary_target(model, x, y, self.candidates)
        if self.confidence is None:
            conf = F.softmax(clean_logits, dim=1).amax(1)
        else:
            conf = torch.full((x.shape[0],), self.confidence, device=x.device, dtype=clean_logits.dtype)

        scale = 1.0 + self.overshoot
        r = torch.zeros_like(x)
        # Rows carry their target class and confidence; an example leaves when it reaches both.
        active = ActiveSet(x, target)
        aim = conf
        for _ in range(self.max_iter):
            r_i, logits, log_p_t = high_confidence_step(model, active.x + scale * r, active.y, aim,
                                                        eps=self.eps, max_step=self.max_step)
            with torch.no_grad():
                reached = success_mask(logits, active.y, targeted=True) & (log_p_t.exp() >= aim)
                r, r_i, aim = active.retire(reached, active.x + scale * r, r, r_i, aim)
                if active.empty:
                    break
                r = r + r_i
                r = ((active.x + scale * r).clamp(0.0, 1.0) - active.x) / scale
        active.finish(active.x + scale * r)

        candidate = active.out.clamp(0.0, 1.0)
        with torch.no_grad():
            probs = F.softmax(model(candidate), dim=1)
        p_t = probs.gather(1, target[:, None]).squeeze(1)
        success = probs.argmax(1).eq(target) & (p_t >= conf)
        if not self.targeted:
            success &= target.ne(y)
        x_adv = torch.where(batch_view(success, x), candidate, x)
        return HighConfidenceResult(x_adv, success, candidate, target, conf)

