"""L2 margin maximisation (Matyasko & Chau, IJCNN 2017), baseline of the adversary-critic paper (spec §2, λ 0.1).

Resolution [R] (the spec gives only "L2 margin maximisation λ 0.1"): the SVM objective "fit the functional margin,
penalise ½‖w‖²" carried to a deep network by linearisation, as in DeepFool. At x, for the true class y and the class
t of the closest linearised boundary (DeepFool rule, :func:`closest_boundary_target`; ``target = "runner_up"``: the
highest other logit), the local normal is w(x) = ∇ₓ(z_y − z_t) and the linearised geometric margin is
(z_y − z_t)/‖w(x)‖₂. The loss

    L = CE(f(x), y) + λ·mean_i ½‖w(x_i)‖₂²

fits the functional margin with the cross-entropy and shrinks ‖w‖, which widens the geometric margin. The
penalty is differentiated through ∇ₓ (``create_graph``: second order); t carries no gradient.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from robustlab.attacks.deepfool import closest_boundary_target
from robustlab.config import Options
from robustlab.defenses.base import Batch, Defense, LossOutput, register_defense
from robustlab.predictions import batch_accuracy


def margin_normal_penalty(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, mean_i ½‖∇ₓ(z_y − z_t)(x_i)‖₂²)``, differentiable in the model's parameters."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    diff = logits.gather(1, y[:, None]) - logits.gather(1, target[:, None])
    (w,) = torch.autograd.grad(diff.sum(), x, create_graph=True)
    return logits, 0.5 * w.flatten(1).square().sum(1).mean()


class MarginOptions(Options):
    lam: float = Field(0.1, ge=0)
    target: Literal["closest", "runner_up"] = "closest"


@register_defense("margin", MarginOptions)
class MarginMaximization(Defense):
    """CE + λ·½‖∇ₓ(z_y − z_t)‖² (see the module docstring)."""

    def loss(self, model: nn.Module, batch: Batch, ctx) -> LossOutput:
        x, y = batch.x, batch.y
        if self.options.target == "closest":
            target, _ = closest_boundary_target(model, x, y)
        else:
            with torch.no_grad():
                target = model(x).scatter(1, y[:, None], float("-inf")).argmax(1)
        logits, penalty = margin_normal_penalty(model, x, y, target)
        ce = F.cross_entropy(logits, y)
        loss = ce + self.options.lam * penalty
        metrics = {"ce": ce.detach(), "margin_penalty": penalty.detach(), "loss": loss.detach(),
                   "acc": batch_accuracy(logits, y)}
        return LossOutput(loss, metrics, logits_clean=logits)


__all__ = ["MarginMaximization", "MarginOptions", "margin_normal_penalty"]
