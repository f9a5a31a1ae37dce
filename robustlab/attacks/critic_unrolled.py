"""The differentiable training attack A_f of the adversary-critic paper (Matyasko & Chau 2018; spec METHODS.md §2).

Reference code: aam-at/adversary_critic attack.py ``high_confidence_attack_unrolled``. N = 5 unrolled steps of the
high-confidence step (paper eq. 7 with the log-likelihood, :func:`high_confidence_step`), overshoot os = 0.05,
ε = 1e-8:

1. ℓ = argmax f(x) (the *predicted* label); target t = closest linearised decision boundary from ℓ (DeepFool rule,
   :func:`closest_boundary_target`), no gradient through t (:func:`training_target`);
2. C = stopgrad(m[t]), m the per-class running-mean confidence (:class:`RunningConfidence`);
3. r = 0, s = 1; per step at x̃ = stopgrad(x + (1+os)·r): p = p_t(x̃); s ← s · STround(σ(C − p))
   (:func:`straight_through_step`: forward the hard step 1[p < C], backward the gradient of σ(C − p));
   g = ∇ log p_t(x̃) with ``create_graph=True`` (second order, ∂²f/∂x∂W); r ← r + s · r_i;
4. x̂ = x + (1+os)·r, differentiable in the classifier's weights through δ, g and s. No per-step clip and no [0,1]
   box in training (the test-time version, ``critic_hc`` in :mod:`robustlab.attacks.critic_attack`, has both).

The running-mean update m ← μ m + (1 − μ) b with μ = 0.5, b_c = mean max-softmax over the batch examples predicted as
c (b_c = m_c when none), once per batch, is a resolution [R] of the reference code: ``momentum`` is configurable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.critic_attack import high_confidence_step
from robustlab.attacks.deepfool import closest_boundary_target
from robustlab.attacks.perturbation import batch_view


class _StraightThroughStep(torch.autograd.Function):
    """Forward: round(σ(a)) = 1[a > 0] exactly. Backward: the derivative of σ(a), σ(a)(1 − σ(a))."""

    @staticmethod
    def forward(ctx, a: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a)
        return (a > 0).to(a.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        (a,) = ctx.saved_tensors
        sig = torch.sigmoid(a)
        return grad_out * sig * (1 - sig)


def straight_through_step(a: torch.Tensor) -> torch.Tensor:
    """The sigmoid-adjusted straight-through estimator of the stopping indicator, with ``a = C − p``.

    The forward value is the hard step round(σ(a)) (1 iff p < C: the example keeps moving), computed exactly (no
    ``s + (hard − s).detach()`` rounding error); the backward pass is that of σ(a) (spec §2 step 4).
    """
    return _StraightThroughStep.apply(a)


class RunningConfidence:
    """Per-class running mean m ∈ R^k of the classifier's confidence on clean data (spec §2, [R] momentum).

    m starts at 1; :meth:`update` with a batch of clean logits sets b_c = mean max-softmax over the examples
    predicted as c (b_c = m_c if none) and m ← μ·m + (1 − μ)·b.
    """

    def __init__(self, num_classes: int, momentum: float = 0.5):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if num_classes < 2:
            raise ValueError(f"need at least 2 classes, got {num_classes}")
        self.momentum = float(momentum)
        self.mean = torch.ones(num_classes, dtype=torch.float64)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
               ) -> torch.Tensor:
        """One batch's update, on the logits' device (no host sync).

        ``reduce`` sums a tensor over data-parallel processes (``robustlab.distributed.sum_over_processes``): the
        per-class counts and confidence sums are reduced before b is formed, so every process holds the m of the
        global batch.
        """
        probs = F.softmax(logits.detach().double(), dim=1)
        conf, pred = probs.max(1)
        k = self.mean.numel()
        self.mean = self.mean.to(logits.device)
        counts = torch.bincount(pred, minlength=k).double()
        sums = torch.zeros(k, dtype=torch.float64, device=logits.device).index_add_(0, pred, conf)
        if reduce is not None:
            stacked = reduce(torch.stack([counts, sums]))
            counts, sums = stacked[0], stacked[1]
        batch = torch.where(counts > 0, sums / counts.clamp_min(1), self.mean)
        self.mean = self.momentum * self.mean + (1 - self.momentum) * batch
        return self.mean

    def __getitem__(self, classes: torch.Tensor) -> torch.Tensor:
        """C = m[t] for a batch of target classes, on their device (a constant: no gradient)."""
        return self.mean.to(classes.device)[classes]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        mean = torch.as_tensor(state["mean"], dtype=torch.float64).cpu()
        if mean.shape != self.mean.shape:
            raise ValueError(f"running confidence has {mean.numel()} classes, expected {self.mean.numel()}")
        self.mean = mean.clone()


def training_target(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t, clean logits)``: t = closest linearised boundary from the predicted label ℓ = argmax f(x), no graph."""
    with torch.no_grad():
        predicted = model(x).argmax(1)
    return closest_boundary_target(model, x, predicted)


def unrolled_high_confidence_attack(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                                    confidence: torch.Tensor, *, steps: int = 5, overshoot: float = 0.05,
                                    eps: float = 1e-8, differentiable: bool = True) -> torch.Tensor:
    """x̂ = x + (1+os)·r after ``steps`` unrolled steps toward ``target`` with the STE stopping indicator.

    ``differentiable=True`` keeps the graph to the model's parameters (second order through g, and through δ and
    s); ``False`` returns a detached x̂ with the same value (the critic's step). ``confidence`` (per example)
    is treated as a constant. No clipping to the box and no per-step norm clip (the training version).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    confidence = confidence.detach().to(x.dtype)
    scale = 1.0 + overshoot
    r = torch.zeros_like(x)
    keep_going = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    with torch.enable_grad():
        for _ in range(steps):
            r_i, _, log_p_t = high_confidence_step(model, x + scale * r, target, confidence, eps=eps,
                                                   create_graph=differentiable)
            keep_going = keep_going * straight_through_step(confidence - log_p_t.exp())
            r = r + batch_view(keep_going, r_i) * r_i
    x_hat = x + scale * r
    return x_hat if differentiable else x_hat.detach()


__all__ = ["RunningConfidence", "straight_through_step", "training_target", "unrolled_high_confidence_attack"]
