"""Projected gradient ascent in an L∞ or L2 ball (Madry et al. 2018) and its special cases.

A threat model is a small step object (:class:`LinfBall`, :class:`L2Ball`) with ``random_start``, ``step`` and
``project``; one loop, :func:`projected_ascent`, runs any of them on the shared active set, and
:func:`robustlab.attacks.active.run_copies` runs restarts
for any of them. On top of that loop:

* ``pgd``     L∞ PGD: uniform random start in the ε-ball, ``x ← Π(x + α·sign ∇ₓL)``; restarts; targeted.
* ``pgd_l2``  L2 PGD: random start uniform in the L2 ε-ball, ``x ← Π(x + α·∇ₓL/‖∇ₓL‖₂)``; restarts; targeted.
* ``ifgsm``   I-FGSM / BIM (Kurakin et al. 2017): L∞, no random start; AT²L appendix: 10 iterations of 0.03.
* ``ill``     iterative least-likely class: I-FGSM toward y_LL = argmin f(x) at the clean x (10 × 0.03).

FGSM and LL (one step of size ε) live in :mod:`robustlab.attacks.fgsm` and call the same loop; APGD has its own
step-size schedule but uses the same threat models. Every loop takes ``eot_samples`` (EOT gradient averaging,
:mod:`robustlab.attacks.eot`). All of it is vectorised over the batch.

Targeted mode (``targeted=True`` for ``pgd``/``pgd_l2``): the caller passes the *target labels* as ``y``; the
attack descends CE(f(x), y), and an example counts as a success (for restarts) when it is classified as its
target.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustlab.attacks.active import ActiveSet, deterministic_success, run_copies, success_mask
from robustlab.attacks.base import Attack, check_epsilon, parse_norm
from robustlab.attacks.losses import (PerExampleLoss, check_eot_samples, cross_entropy, loss_gradient,
                                      targeted_cross_entropy)
from robustlab.attacks.perturbation import batch_view
from robustlab.attacks.registry import register_attack
from robustlab.attacks.targets import check_target, chosen_targets


def _norms(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norms, shaped (N, 1, ..., 1)."""
    return batch_view(t.flatten(1).norm(p=2, dim=1), t)


def _step_tensor(step_size: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A scalar step, or a per-example (N,) step (APGD) shaped to broadcast."""
    if isinstance(step_size, torch.Tensor) and step_size.dim() == 1:
        return batch_view(step_size, like)
    return step_size


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the L∞ ball of radius ``eps`` around ``x`` intersected with the [0,1] box."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def project_l2(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Scale δ = x_adv − x onto the L2 ball of radius ``eps``, then clip x + δ to [0,1].

    Clipping to the box only moves coordinates toward ``x`` (which is in the box), so the result stays in the
    ball: it is feasible, though not the exact Euclidean projection onto the intersection.
    """
    delta = x_adv - x
    factor = torch.clamp(eps / _norms(delta).clamp_min(1e-12), max=1.0)
    return (x + delta * factor).clamp_(0.0, 1.0)


class ThreatModel:
    """An ε-ball around the clean input intersected with [0,1]: random start, ascent step, projection."""

    norm = ""

    def __init__(self, eps: float):
        self.eps = check_epsilon(eps, self.norm)

    def random_start(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, step_size: float | torch.Tensor) -> torch.Tensor:
        """One ascent step of length ``step_size`` (a float, or one per example) in the norm's steepest direction."""
        raise NotImplementedError

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps})"


class LinfBall(ThreatModel):
    """‖δ‖∞ ≤ ε: uniform random start in the cube, sign-gradient steps, coordinate-wise clipping."""

    norm = "linf"

    def random_start(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x + torch.empty_like(x).uniform_(-self.eps, self.eps), x)

    def step(self, x_adv, grad, step_size):
        return x_adv + _step_tensor(step_size, x_adv) * grad.sign()

    def project(self, x_adv, x):
        return project_linf(x_adv, x, self.eps)


class L2Ball(ThreatModel):
    """‖δ‖₂ ≤ ε: random start uniform in the ball, normalised-gradient steps, radial projection."""

    norm = "l2"

    def random_start(self, x: torch.Tensor) -> torch.Tensor:
        # Uniform in the d-ball: a uniform direction times ε·U^{1/d}.
        direction = torch.randn_like(x)
        direction = direction / _norms(direction).clamp_min(1e-12)
        d = x[0].numel()
        radius = self.eps * torch.rand(x.shape[0], device=x.device, dtype=x.dtype).pow(1.0 / d)
        return self.project(x + direction * batch_view(radius, x), x)

    def step(self, x_adv, grad, step_size):
        # A zero gradient gives a zero step (no division by zero).
        return x_adv + _step_tensor(step_size, x_adv) * grad / _norms(grad).clamp_min(1e-12)

    def project(self, x_adv, x):
        return project_l2(x_adv, x, self.eps)


THREAT_MODELS: dict[str, type[ThreatModel]] = {"linf": LinfBall, "l2": L2Ball}


def make_threat_model(norm: str, eps: float) -> ThreatModel:
    """``make_threat_model("linf", 0.3)``; norm is "linf" or "l2"."""
    return THREAT_MODELS[parse_norm(norm)](eps)


def gradient_steps(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, threat: ThreatModel, *,
                   step_size: float, steps: int, random_start: bool, loss_fn: PerExampleLoss = cross_entropy,
                   eot_samples: int = 1, start: torch.Tensor | None = None) -> torch.Tensor:
    """``steps`` ascent steps of ``loss_fn`` inside ``threat`` on every example (no early exit): the last iterate.

    ``loss_fn(logits, labels)`` returns per-example losses to *ascend* (use :func:`targeted_cross_entropy` with
    target labels for a targeted attack; ``labels`` may be any per-example tensor, e.g. clean probabilities).
    ``eot_samples`` > 1 averages each gradient over that many passes. ``start``: the first iterate (projected to
    the ball around ``x``) instead of ``x`` or the ball's random start. The single-step attacks (FGSM, LL) are
    one such step.
    """
    if start is not None:
        x_adv = threat.project(start, x)
    else:
        x_adv = threat.random_start(x) if random_start and threat.eps > 0 else x.clone()
    for _ in range(steps):
        grad = loss_gradient(model, x_adv, labels, loss_fn, eot_samples).grad
        x_adv = threat.project(threat.step(x_adv, grad, step_size), x)
    return x_adv


def projected_ascent(model: nn.Module, active: ActiveSet, threat: ThreatModel, *, step_size: float, steps: int,
                     random_start: bool, targeted: bool = False, eot_samples: int = 1, early_stop: bool = True,
                     final_check: bool = True) -> None:
    """The PGD loop on the rows of ``active``: each step ascends CE (or descends the target's CE when ``targeted``).

    ``early_stop``: a row whose current iterate already fools the model leaves with that point (the logits of
    each gradient pass give this for free). ``final_check``: one forward pass of the last iterate records its
    successes (needed by restarts; skipped for a single training run, where it would only cost time).
    """
    loss_fn = targeted_cross_entropy if targeted else cross_entropy
    x_adv = threat.random_start(active.x) if random_start and threat.eps > 0 else active.x.clone()
    for _ in range(steps):
        g = loss_gradient(model, x_adv, active.y, loss_fn, eot_samples)
        grad = g.grad
        if early_stop:
            x_adv, grad = active.retire(success_mask(g.logits, active.y, targeted), x_adv, x_adv, grad)
            if active.empty:
                return
        x_adv = threat.project(threat.step(x_adv, grad, step_size), active.x)
    if final_check or early_stop:
        with torch.no_grad():
            (x_adv,) = active.retire(success_mask(model(x_adv), active.y, targeted), x_adv, x_adv)
    active.finish(x_adv)


@register_attack("pgd")
class PGD(Attack):
    """L∞ PGD: ``steps`` sign steps of ``step_size`` (default 2.5·ε/steps), random start, restarts, targeted.

    ``targeted=True``: pass the target labels as ``y``; ``target="least_likely"`` or ``"random"``: the attack
    chooses them (:mod:`robustlab.attacks.targets`) and ``y`` stays the truth. ``eot_samples`` > 1: each gradient
    is the EOT average. Subclasses change the ball with the ``threat_model`` class attribute.
    """

    threat_model: type[ThreatModel] = LinfBall

    def __init__(self, eps: float, *, steps: int = 40, step_size: float | None = None, random_start: bool = True,
                 restarts: int = 1, targeted: bool = False, target: str | None = None, eot_samples: int = 1,
                 early_stop: bool = True, model_mode: str = "eval"):
        super().__init__(model_mode=model_mode)
        self.eps = check_epsilon(eps, self.threat_model.norm)
        self.target = check_target(target)
        if targeted and target is not None:
            raise ValueError("targeted=True means y holds the targets, target=... has the attack choose them: "
                             "give one of the two")
        for name, value in (("steps", steps), ("restarts", restarts)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.steps = int(steps)
        self.step_size = float(step_size) if step_size is not None else 2.5 * self.eps / self.steps
        if self.step_size < 0 or not math.isfinite(self.step_size):
            raise ValueError(f"step_size must be a finite number >= 0, got {step_size}")
        self.random_start = bool(random_start)
        self.restarts = int(restarts)
        self.targeted = bool(targeted) or self.target is not None
        self.eot_samples = check_eot_samples(eot_samples)
        self.early_stop = bool(early_stop)

    @property
    def norm(self) -> str:
        return self.threat_model.norm

    def loss_labels(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The labels the loss is computed against: the chosen targets, or ``y`` (true labels, or the caller's
        targets when ``targeted``)."""
        return chosen_targets(self.target, model, x, y) if self.target else y

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        threat = self.threat_model(self.eps)

        def core(model: nn.Module, active: ActiveSet) -> None:
            projected_ascent(model, active, threat, step_size=self.step_size, steps=self.steps,
                             random_start=self.random_start, targeted=self.targeted, eot_samples=self.eot_samples,
                             early_stop=self.early_stop and deterministic_success(self.eot_samples, self.model_mode),
                             final_check=self.restarts > 1)

        return run_copies(model, x, self.loss_labels(model, x, y), core, restarts=self.restarts, batched=False)[0]


@register_attack("pgd_l2")
class PGDL2(PGD):
    """L2 PGD: normalised-gradient steps of ``step_size`` (default 2.5·ε/steps), projection onto the L2 ε-ball and
    [0,1], random start uniform in the ball; restarts and targeted mode (``y`` = targets) as in :class:`PGD`."""

    threat_model = L2Ball


@register_attack("ifgsm")
class IFGSM(PGD):
    """I-FGSM / BIM (Kurakin et al. 2017): L∞ sign steps from the clean x, no random start.

    Defaults from the AT²L appendix: 10 iterations of 0.03, projected to the ε-ball and [0,1] (the projection
    is a resolution [R]; with ε = 0.3 it is never active).
    """

    def __init__(self, eps: float, *, steps: int = 10, step_size: float = 0.03, targeted: bool = False,
                 target: str | None = None, eot_samples: int = 1, early_stop: bool = True, model_mode: str = "eval"):
        super().__init__(eps, steps=steps, step_size=step_size, random_start=False, restarts=1, targeted=targeted,
                         target=target, eot_samples=eot_samples, early_stop=early_stop, model_mode=model_mode)


@register_attack("ill")
class IterativeLeastLikely(IFGSM):
    """Iterative least-likely class (I-LL, Kurakin et al. 2017): I-FGSM with ``target="least_likely"``.

    y_LL is computed once at the clean x; the ``y`` passed in is not used for crafting. AT²L appendix defaults:
    10 iterations of 0.03, projected to the ε-ball and [0,1].
    """

    def __init__(self, eps: float, *, steps: int = 10, step_size: float = 0.03, eot_samples: int = 1,
                 early_stop: bool = True, model_mode: str = "eval"):
        super().__init__(eps, steps=steps, step_size=step_size, target="least_likely", eot_samples=eot_samples,
                         early_stop=early_stop, model_mode=model_mode)
