"""Which class an attack aims at: the one place target classes are chosen.

Three ways, the same words for every attack:

* ``target="least_likely"`` (PGD, I-FGSM, FGSM, EOT-PGD, PGD-L2): y_LL = argmin of the logits at the clean x
  (Kurakin et al. 2017's LL and I-LL are FGSM and I-FGSM with this target);
* ``target="random"`` (the same attacks): a class other than the true label, uniform, from the global RNG (which
  the evaluation runner seeds per stage and batch);
* ``top_targets=k`` (APGD-T, FAB-T): one run toward each of the k most likely other classes, AutoAttack's choice;
  the goal stays misclassification, the target only steers the search.

With a ``target`` the attack passes the true labels in and succeeds when the prediction is the chosen class;
``targeted=True`` instead means the caller passes the target labels as ``y`` (its own choice).
"""

from __future__ import annotations

import torch
from torch import nn

TARGET_CHOICES = ("least_likely", "random")


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


@torch.no_grad()
def chosen_targets(target: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The target class per example for ``target`` ("least_likely" or "random")."""
    if target == "least_likely":
        return least_likely_class(model, x)
    return random_other_class(y, int(model(x[:1]).shape[1]))
