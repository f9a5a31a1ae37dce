"""Per-example attack losses and the one place where an attack's input gradient is computed (with EOT).

Every loss here maps ``(logits, labels) -> (N,)`` per-example values that the attack *ascends*; targeted
variants are written as the negative of the loss of the target so that one ascent loop serves both. The
gradient of the sum is taken, so each example's gradient does not depend on the batch size.

:func:`loss_gradient` is what every gradient loop calls (PGD, FGSM, LL, I-FGSM, I-LL, APGD). With
``samples > 1`` it averages the loss gradient over that many forward passes of a randomised model:
Expectation over Transformation (Athalye et al. 2018), see :mod:`robustlab.attacks.eot`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

PerExampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy CE(z, y) (ascended by untargeted attacks)."""
    return F.cross_entropy(logits, y, reduction="none")


def targeted_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """−CE(z, t): ascending it descends the cross-entropy of the target class."""
    return -F.cross_entropy(logits, target, reduction="none")


def kl_from_clean(logits: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p_clean ‖ softmax(logits)) = Σ_k p_k (log p_k − log q_k) (TRADES' inner maximisation)."""
    return (p_clean * (p_clean.clamp_min(1e-12).log() - F.log_softmax(logits, dim=1))).sum(dim=1)


def _sorted_logits(logits: torch.Tensor, needed: int, what: str) -> torch.Tensor:
    if logits.shape[1] < needed:
        raise ValueError(f"{what} needs at least {needed} classes, got {logits.shape[1]}")
    return logits.sort(dim=1, descending=True).values


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein 2020, eq. 5): −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3).

    π orders the logits decreasingly. Shift- and scale-invariant in the logits; needs ≥ 3 classes.
    """
    z_sorted = _sorted_logits(logits, 3, "the DLR loss")
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    y_is_top = logits.argmax(1).eq(y)
    z_other = torch.where(y_is_top, z_sorted[:, 1], z_sorted[:, 0])
    return -(z_y - z_other) / (z_sorted[:, 0] - z_sorted[:, 2] + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR (Croce & Hein 2020, eq. 6): −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2); needs ≥ 4 classes."""
    z_sorted = _sorted_logits(logits, 4, "the targeted DLR loss")
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (z_sorted[:, 0] - 0.5 * (z_sorted[:, 2] + z_sorted[:, 3]) + 1e-12)


def check_eot_samples(samples: int) -> int:
    if isinstance(samples, bool) or int(samples) != samples or samples < 1:
        raise ValueError(f"eot_samples must be an integer >= 1, got {samples!r}")
    return int(samples)


class LossGradient(NamedTuple):
    grad: torch.Tensor    # ∇ₓ Σᵢ loss_i, averaged over the EOT samples
    logits: torch.Tensor  # detached logits, averaged over the EOT samples
    loss: torch.Tensor    # detached per-example loss, averaged over the EOT samples


def loss_gradient(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, loss_fn: PerExampleLoss = cross_entropy,
                  samples: int = 1) -> LossGradient:
    """Input gradient of ``Σ loss_fn(model(x), labels)`` (never the parameters'), averaged over ``samples`` passes.

    ``samples > 1`` is EOT: for a randomised model each forward pass draws new randomness, and the mean of the
    gradients estimates the gradient of the expected loss. The passes run one after another (not as one
    replicated batch), so a model that draws one noise tensor per batch still gets independent draws.
    """
    samples = check_eot_samples(samples)
    x = x.detach().requires_grad_(True)
    grad = logits_sum = loss_sum = None
    for _ in range(samples):
        with torch.enable_grad():  # attacks also work when called under torch.no_grad()
            logits = model(x)
            loss = loss_fn(logits, labels)
            (g,) = torch.autograd.grad(loss.sum(), x)
        if grad is None:
            grad, logits_sum, loss_sum = g, logits.detach(), loss.detach()
        else:
            grad, logits_sum, loss_sum = grad + g, logits_sum + logits.detach(), loss_sum + loss.detach()
    if samples > 1:
        grad, logits_sum, loss_sum = grad / samples, logits_sum / samples, loss_sum / samples
    return LossGradient(grad, logits_sum, loss_sum)
