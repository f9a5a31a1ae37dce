"""Robust accuracy of a model under attacks, over a list of ε (a whole curve in one call).

The building blocks of an evaluation; which attacks with which settings is :mod:`robustlab.suite`, the masking
checks are :mod:`robustlab.checks`, tables and plots :mod:`robustlab.report`.

* :func:`accuracy` / :func:`robustness_curve`: accuracy under an attack, and over an ε list;
* :func:`attack_outcome`: the per-example outcome (correct after the attack or not), which the worst-case ensemble
  and the masking checks compare example by example;
* :func:`minimal_attack_outcome`: accuracy, success rate and ρ_adv = mean ‖r‖₂/‖x‖₂ of a minimal-perturbation
  attack (C&W, DeepFool, ...), with and without its failures;
* :func:`worst_case_ensemble`: AutoAttack-style: attack only the examples still robust, keep the worst case per
  example, so that a robustness claim never rests on one attack.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from robustlab.attacks import Attack, build_attack
from robustlab.attacks.base import check_batch
from robustlab.config import EvalConfig
from robustlab.modes import model_mode
from robustlab.rng import derived_seed, seeded

AttackFactory = Callable[[float], Attack]


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: Attack | None = None,
             batch_size: int = 500, device: torch.device | str | None = None, progress: bool = False,
             desc: str = "") -> float:
    """Fraction of ``(x, y)`` classified correctly, after ``attack`` if given; the model is evaluated in eval mode."""
    if len(x) == 0:
        raise ValueError("cannot compute accuracy on an empty set")
    return attack_outcome(model, x, y, attack, batch_size=batch_size, device=device, progress=progress,
                          desc=desc).accuracy


def attack_factories(cfg: EvalConfig, eot_samples: int = 1) -> dict[str, AttackFactory]:
    """ε → attack for each attack named in the ``[eval]`` section (gradients averaged over ``eot_samples`` draws)."""
    factories: dict[str, AttackFactory] = {}
    eot = {"eot_samples": eot_samples} if eot_samples > 1 else {}
    for name in cfg.attacks:
        if name == "pgd":
            factories[name] = lambda eps: build_attack(
                "pgd", eps, steps=cfg.pgd_steps, restarts=cfg.pgd_restarts,
                step_size=cfg.pgd_step_size if cfg.pgd_step_size > 0 else None, **eot)
        else:
            factories[name] = lambda eps, name=name: build_attack(name, eps, **(eot if name == "fgsm" else {}))
    return factories


def predictions_repeat(model: nn.Module, x: torch.Tensor, device: torch.device | str | None = None) -> bool:
    """Whether two eval-mode forward passes of ``x`` give the same logits (False: a randomised model)."""
    dev = _device_of(model, device)
    with torch.no_grad(), model_mode(model, "eval"):
        xb = x.to(dev)
        return torch.allclose(model(xb), model(xb), rtol=1e-4, atol=1e-5, equal_nan=True)


@dataclass
class CurvePoint:
    """Accuracy under one attack at one ε (``n``: examples attacked, 0 if not recorded; ``norm`` of the ball)."""

    attack: str
    eps: float
    accuracy: float
    n: int = 0
    norm: str = "linf"

    @property
    def error(self) -> float:
        return 1.0 - self.accuracy


def robustness_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, factories: dict[str, AttackFactory],
                     eps_list: list[float], *, batch_size: int = 500, device: torch.device | str | None = None,
                     progress: bool = False, seed: int = 0) -> tuple[float, list[CurvePoint]]:
    """Clean accuracy and the accuracy under each attack at each ε (ε = 0 is the clean accuracy).

    Each (attack, ε) point draws its random starts from its own seed, so the curve does not depend on what ran
    before it (the caller's RNG state is left as it was).
    """
    clean = accuracy(model, x, y, batch_size=batch_size, device=device, progress=progress, desc="clean")
    points = []
    dev = _device_of(model, device)
    for name, factory in factories.items():
        for eps in eps_list:
            if eps == 0:
                acc = clean
            else:
                with seeded(derived_seed(seed, name, float(eps)), dev):
                    acc = accuracy(model, x, y, attack=factory(eps), batch_size=batch_size, device=device,
                                   progress=progress, desc=f"{name} eps={eps:g}")
            points.append(CurvePoint(name, float(eps), acc, n=len(x)))
    return clean, points


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
            yb = y[start:start + batch_size].to(device, non_blocking=True)
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
            yb = y[start:start + batch_size].to(device, non_blocking=True)
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


# --- the worst case over several attacks -----------------------------------------------------------------------

@dataclass
class EnsembleResult:
    """Worst case over attacks: an example counts as robust only if no attack fooled it.

    ``robust``: bool ``(n,)`` on the CPU. ``x_adv``: for each example the first adversarial example found (the
    clean ``x`` where none was, or where it was fooled by a stage reused from ``known``). ``stages``: per attack,
    how many examples it was run on (``attacked``; 0 when its outcome was reused) and how many were still robust
    after it.
    """

    accuracy: float
    robust: torch.Tensor
    x_adv: torch.Tensor
    stages: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "error": 1.0 - self.accuracy, "n": len(self.robust),
                "stages": self.stages}


def worst_case_ensemble(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Mapping[str, Attack | None],
                        *, known: Mapping[str, torch.Tensor] | None = None, batch_size: int = 500,
                        device: torch.device | str | None = None, progress: bool = False) -> EnsembleResult:
    """AutoAttack-style worst case: run the ``attacks`` in order, each only on the examples still robust.

    Examples misclassified clean are never attacked. An attack whose per-example outcome on exactly these
    examples is already in ``known`` (name → bool "still correct" mask, e.g. from the per-attack rows of a suite)
    is not run again: its mask is applied instead, which gives the same worst case at no cost (its attack may then
    be ``None``).
    """
    known = dict(known or {})
    clean = attack_outcome(model, x, y, batch_size=batch_size, device=device)
    robust = clean.correct.clone()
    x_adv = x.detach().cpu().clone()
    stages = [{"attack": "clean", "attacked": len(x), "robust_after": int(robust.sum())}]
    for name, attack in attacks.items():
        if name in known:
            mask = known[name].cpu().bool()
            if mask.shape != robust.shape:
                raise ValueError(f"known outcome of {name!r} has shape {tuple(mask.shape)}, expected {len(x)}")
            robust &= mask
            stages.append({"attack": name, "attacked": 0, "reused": True, "robust_after": int(robust.sum())})
            continue
        if attack is None:
            raise ValueError(f"attack {name!r} is None and its outcome is not in known")
        todo = robust.nonzero().squeeze(1)
        if len(todo):
            out = attack_outcome(model, x[todo], y[todo], attack, batch_size=batch_size, device=device,
                                 keep=len(todo), progress=progress, desc=f"worst case: {name}")
            fooled = ~out.correct
            x_adv[todo[fooled]] = out.x_adv[fooled].to(x_adv.dtype)
            robust[todo[fooled]] = False
        stages.append({"attack": name, "attacked": len(todo), "robust_after": int(robust.sum())})
    return EnsembleResult(float(robust.double().mean()), robust, x_adv, stages)
