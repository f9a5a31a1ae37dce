"""Which class an attack aims at: the one place target classes are chosen.

Three ways, the same words for every attack:

* ``target="least_likely"`` (PGD, I-FGSM, FGSM, EOT-PGD, PGD-L2): y_LL = argmin of the logits at the clean x
  (Kurakin et al. 2017's LL and I-LL are FGSM and I-FGSM with this target);
* ``target="random"`` (the same attacks): a class other than the true label, uniform, from the global RNG (which
  the evaluation runner seeds per stage and batch);
* ``top_targets=k`` (APGD-T, FAB-T): one run toward each of k other classes, the goal staying misclassification
  (the target only steers the search): the k most likely (AutoAttack's choice, ``target_order="logits"``), or
  the k whose decision boundary with the true class is nearest in a linear approximation of the model
  (``target_order="linear"``, the ranking of MALT, Melamed et al. 2024).

With a ``target`` the attack passes the true labels in and succeeds when the prediction is the chosen class;
``targeted=True`` instead means the caller passes the target labels as ``y`` (its own choice).
"""

from __future__ import annotations

import torch
from torch import nn

TARGET_CHOICES = ("least_likely", "random")
TARGET_ORDERS = ("logits", "linear")
DUAL_NORM = {"linf": 1, "l2": 2}  # the distance to a hyperplane in norm p is |g| / ‖w‖_q, 1/p + 1/q = 1


def check_target(target: str | None) -> str | None:
    if target is not None and target not in TARGET_CHOICES:
        raise ValueError(f"target must be None or one of {TARGET_CHOICES}, got {target!r}")
    return target


@torch.no_grad()
def least_likely_class(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """y_LL = argmin of the logits at the clean ``x`` (the target of the LL and I-LL attacks)."""
    return model(x).argmin(1)


@torch.no_grad()
def random_other_class(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per example a class ≠ ``y``, uniform over the other ``num_classes − 1`` (global RNG)."""
    if num_classes < 2:
        raise ValueError("a targeted attack needs at least 2 classes")
    offset = torch.randint(1, num_classes, y.shape, device=y.device)
    return (y + offset) % num_classes


@torch.no_grad()
def top_other_classes(logits: torch.Tensor, k: int) -> list[torch.Tensor]:
    """The ``k`` most likely classes after the top one, per example: ``[(B,), ...]`` (AutoAttack's APGD-T/FAB-T).

    ``k`` is capped at ``num_classes − 1``.
    """
    k = min(int(k), logits.shape[1] - 1)
    order = logits.argsort(dim=1, descending=True)
    return [order[:, i] for i in range(1, k + 1)]


def linear_boundary_classes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, norm: str = "linf"
                            ) -> list[torch.Tensor]:
    """The ``k`` classes t ≠ y whose boundary with y is nearest in the model's linearisation at ``x``:
    d_t = (z_y − z_t) / ‖∇ₓ(z_y − z_t)‖_q (q the dual of the attack's norm), smallest first: ``[(B,), ...]``.

    One backward pass per class (the Jacobian of the logits), in eval mode as the caller left the model.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        classes = logits.shape[1]
        grads = torch.stack([torch.autograd.grad(logits[:, c].sum(), x, retain_graph=c < classes - 1)[0].flatten(1)
                             for c in range(classes)], dim=1)  # (B, C, D)
    logits = logits.detach()
    rows = torch.arange(len(y), device=y.device)
    margin = logits[rows, y][:, None] - logits  # (B, C)
    slope = (grads[rows, y][:, None, :] - grads).norm(p=DUAL_NORM[norm], dim=2).clamp_min(1e-12)
    distance = margin / slope
    distance[rows, y] = float("inf")
    k = min(int(k), classes - 1)
    order = distance.argsort(dim=1)
    return [order[:, i] for i in range(k)]


def check_target_order(order: str) -> str:
    if order not in TARGET_ORDERS:
        raise ValueError(f"target_order must be one of {TARGET_ORDERS}, got {order!r}")
    return order


@torch.no_grad()
def chosen_targets(target: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The target class per example for ``target`` ("least_likely" or "random")."""
    if target == "least_likely":
        return least_likely_class(model, x)
    return random_other_class(y, int(model(x[:1]).shape[1]))
