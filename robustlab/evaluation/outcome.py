"""One attack on a set of examples: the building blocks the runner, the masking checks and the benchmarks share.

* :func:`accuracy`: accuracy, clean or under an attack;
* :func:`attack_outcome`: the per-example outcome (correct after the attack or not);
* :func:`minimal_attack_outcome`: accuracy, success rate and ρ_adv = mean ‖r‖₂/‖x‖₂ of a minimal-perturbation
  attack (C&W, DeepFool, ...), with and without its failures;
* "classified correctly" is :func:`robustlab.predictions.correct_predictions`: a prediction from a row of logits
  that is not all finite is wrong, whatever its argmax.

Which attacks with which settings is a suite (:mod:`robustlab.evaluation.suites`); the worst case over a suite's
attacks is the runner's (:mod:`robustlab.evaluation.runner`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from robustlab.attacks import Attack
from robustlab.attacks.base import check_batch
from robustlab.modes import model_mode
from robustlab.predictions import predicted_class

@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return predicted_class(model(x))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: Attack | None = None,
             batch_size: int = 500, device: torch.device | str | None = None, progress: bool = False,
             desc: str = "") -> float:
    """Fraction of ``(x, y)`` classified correctly, after ``attack`` if given; the model is evaluated in eval mode."""
    if len(x) == 0:
        raise ValueError("cannot compute accuracy on an empty set")
    return attack_outcome(model, x, y, attack, batch_size=batch_size, device=device, progress=progress,
                          desc=desc).accuracy


@torch.no_grad()
def nonfinite_outputs(model: nn.Module, x: torch.Tensor, *, batch_size: int = 500,
                      device: torch.device | str | None = None) -> int:
    """How many examples of ``x`` get a row of logits with a NaN or an infinity (eval mode)."""
    dev = _device_of(model, device)
    with model_mode(model, "eval"):
        return sum(int((~torch.isfinite(model(x[i:i + batch_size].to(dev))).all(1)).sum())
                   for i in range(0, len(x), batch_size))


def _device_of(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@dataclass
class Outcome:
    """Per-example result of attacking ``n`` examples (tensors on the CPU).

    ``correct``: bool ``(n,)``, classified correctly after the attack (before it when there is no attack).
    ``x_adv``/``pred``: the adversarial examples and predictions of the first ``keep`` examples (for a gallery).
    ``rho``: minimal attacks only, per example ‖r‖₂/‖x‖₂ of the last iterate (a failure counts with the
    perturbation the attack reached, as ρ "with failures").
    """

    correct: torch.Tensor
    x_adv: torch.Tensor
    pred: torch.Tensor
    seconds: float = 0.0
    rho: torch.Tensor | None = None

    @property
    def accuracy(self) -> float:
        return float(self.correct.double().mean()) if len(self.correct) else math.nan


def attack_outcome(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack | None = None, *,
                   batch_size: int = 500, device: torch.device | str | None = None, keep: int = 0,
                   progress: bool = False, desc: str = "") -> Outcome:
    """Which of ``(x, y)`` are classified correctly after ``attack`` (or clean), batch by batch, in eval mode."""
    if len(x) == 0:
        raise ValueError("cannot attack an empty set")
    check_batch(model, x, y)
    device = _device_of(model, device)
    start_time = time.perf_counter()
    correct, heads, preds = [], [], []
    with model_mode(model, "eval"):
        for start in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress, leave=False):
            xb = x[start:start + batch_size].to(device, non_blocking=True)
            yb = y[start:start + batch_size].to(device, non_blocking=True).long()
            if attack is not None:
                xb = attack(model, xb, yb)
            pred = _predict(model, xb)
            correct.append(pred.eq(yb).cpu())
            if start < keep:
                heads.append(xb[: keep - start].detach().cpu())
                preds.append(pred[: keep - start].cpu())
    return Outcome(torch.cat(correct), torch.cat(heads) if heads else x[:0].cpu(),
                   torch.cat(preds) if preds else y[:0].cpu(), time.perf_counter() - start_time)


# --- minimal-perturbation attacks: accuracy and ρ_adv ----------------------------------------------------------

@dataclass
class MinimalSummary:
    """A minimal-perturbation attack on ``n`` examples: accuracy after it and ρ_adv.

    ``rho``: mean ‖x_adv − x‖₂/‖x‖₂ over the successful examples; ``rho_with_failures``: over all examples, a
    failure counted with the perturbation the attack had reached when it gave up (its last iterate, see
    :mod:`robustlab.attacks.perturbation`). ``mean_l2``: mean ‖x_adv − x‖₂ over the successes. Examples
    misclassified from the start count as successes with r = 0 (the attack's own convention).
    """

    attack: str
    n: int
    accuracy: float
    success_rate: float
    rho: float
    rho_with_failures: float
    mean_l2: float
    seconds: float = 0.0

    @property
    def error(self) -> float:
        return 1.0 - self.accuracy

    def to_dict(self) -> dict:
        return {**vars(self), "error": self.error}


def minimal_attack_outcome(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack, *, name: str = "",
                           batch_size: int = 500, device: torch.device | str | None = None, keep: int = 0,
                           progress: bool = False) -> tuple[MinimalSummary, Outcome]:
    """Run a :class:`~robustlab.attacks.MinimalAttack` on ``(x, y)``: its summary (ρ_adv) and per-example outcome."""
    from robustlab.attacks.perturbation import example_ratios, flat_norm, perturbation_ratio

    if len(x) == 0:
        raise ValueError("cannot attack an empty set")
    check_batch(model, x, y)
    device = _device_of(model, device)
    start_time = time.perf_counter()
    lasts, successes, correct, heads, preds = [], [], [], [], []
    l2_sum = 0.0
    with model_mode(model, "eval"):
        for start in tqdm(range(0, len(x), batch_size), desc=name, disable=not progress, leave=False):
            xb = x[start:start + batch_size].to(device, non_blocking=True)
            yb = y[start:start + batch_size].to(device, non_blocking=True).long()
            res = attack.run(model, xb, yb)
            pred = _predict(model, res.x_adv)
            correct.append(pred.eq(yb).cpu())
            lasts.append(res.x_last.detach().cpu())
            successes.append(res.success.detach().cpu())
            l2_sum += float(flat_norm((res.x_adv - xb).double())[res.success].sum())
            if start < keep:
                heads.append(res.x_adv[: keep - start].detach().cpu())
                preds.append(pred[: keep - start].cpu())
    success = torch.cat(successes)
    ratio = perturbation_ratio(x.cpu(), torch.cat(lasts), success)
    n_success = int(success.sum())
    outcome = Outcome(torch.cat(correct), torch.cat(heads) if heads else x[:0].cpu(),
                      torch.cat(preds) if preds else y[:0].cpu(), time.perf_counter() - start_time,
                      rho=example_ratios(x.cpu(), torch.cat(lasts)))
    summary = MinimalSummary(name or type(attack).__name__, len(x), outcome.accuracy, ratio["success_rate"],
                             ratio["rho"], ratio["rho_with_failures"],
                             l2_sum / n_success if n_success else math.nan, outcome.seconds)
    return summary, outcome
