"""Masking checks: signs that an evaluation measures a broken attack rather than a robust model.

Obfuscated gradients (Athalye et al. 2018) and the sanity checks of AutoAttack (Croce & Hein 2020,
``autoattack/checks.py``) make a model look robust when the attack, not the model, failed. Every evaluation runs
these checks and prints them next to the numbers (DESIGN.md, "Rules that keep it honest"):

=========================  ==========================================================================================
``stable_predictions``     the same batch predicted twice in eval mode gives the same logits; if not the model is
                           randomised, and the evaluation must attack it with EOT (the suite then adds EOT-PGD)
``input_gradients``        the fraction of examples whose input gradient of the cross-entropy is all zero or not
                           finite is at most ``max_fraction`` (zero gradients: shattered / saturated gradients)
``iterative_vs_single``    PGD accuracy ≤ FGSM accuracy (+ tolerance) at every ε both were run at
``whitebox_vs_blackbox``   white-box PGD accuracy ≤ transfer accuracy (+ tolerance) at every ε; white-box minimal
                           attacks (C&W, DeepFool) fool at least what the black-box few-pixel attack fools, on the
                           same examples (+ tolerance)
``large_eps``              PGD with ε = 1 (the whole [0,1] box) leaves at most ``max_accuracy`` (a few %) correct
``monotone_in_eps``        the accuracy under each bounded attack does not increase with ε (+ tolerance), starting
                           from the clean accuracy at ε = 0
``noise_weaker``           uniform random ±ε sign noise leaves at least as many correct (− tolerance) as PGD at the
                           same ε
=========================  ==========================================================================================

With the ``standard`` suite, ``blackbox_beats_whitebox`` (AutoAttack's flag): Square, run after the white-box
attacks, fools at most a tolerance of the examples they left robust.

Tolerances: comparisons of two accuracies on ``n`` examples allow ``tol + 1/n`` (default ``tol`` 0.01, i.e. one
percentage point plus one example) so that the sampling noise of randomised attacks does not fail a check.

A check that lacks its inputs (no transfer source, no few-pixel result) is reported as ``skipped``, which counts as
passed. Each check is a :class:`Check` with ``name``, ``passed`` and a ``detail`` string with the numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.base import Attack
from robustlab.modes import model_mode

from robustlab.evaluation.settings import DEFAULT_TOL


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    skipped: bool = False

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else ("pass" if self.passed else "FAIL")

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "skipped": self.skipped, "detail": self.detail}


def skipped(name: str, why: str) -> Check:
    return Check(name, True, f"skipped: {why}", skipped=True)


def _allow(tol: float, n: int) -> float:
    return tol + (1.0 / n if n else 0.0)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


# --- checks that run the model ---------------------------------------------------------------------------------

@torch.no_grad()
def stable_predictions(model: nn.Module, x: torch.Tensor, *, batch_size: int = 500, rtol: float = 1e-4,
                       atol: float = 1e-5) -> Check:
    """Predict the same examples twice in eval mode; any difference in the logits means a randomised model."""
    device = _device(model)
    changed = 0
    max_diff = 0.0
    differs = False
    with model_mode(model, "eval"):
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(device)
            a, b = model(xb), model(xb)
            changed += int(a.argmax(1).ne(b.argmax(1)).sum())
            finite = torch.isfinite(a) & torch.isfinite(b)
            if finite.any():
                max_diff = max(max_diff, float((a - b)[finite].abs().max()))
            differs |= not torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
    if not differs:
        return Check("stable_predictions", True,
                     f"two eval-mode passes over {len(x)} examples agree (max |Δlogit| = {max_diff:.2g})")
    return Check("stable_predictions", False,
                 f"randomised model: two eval-mode passes over {len(x)} examples differ (max |Δlogit| = "
                 f"{max_diff:.3g}, {changed} predictions changed); its accuracy is a random variable, and gradient "
                 f"attacks must use EOT (EOT-PGD)")


def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500,
                    max_fraction: float = 0.01) -> Check:
    """Fraction of examples whose input gradient of the cross-entropy is all zero, or has a non-finite entry."""
    device = _device(model)
    zero = nonfinite = 0
    with model_mode(model, "eval"):
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(device).detach().requires_grad_(True)
            yb = y[start:start + batch_size].to(device)
            with torch.enable_grad():
                loss = F.cross_entropy(model(xb), yb, reduction="sum")
                (grad,) = torch.autograd.grad(loss, xb)
            flat = grad.flatten(1)
            bad = ~torch.isfinite(flat).all(1)
            nonfinite += int(bad.sum())
            zero += int((flat.eq(0).all(1) & ~bad).sum())
    n = len(x)
    frac = (zero + nonfinite) / n
    detail = (f"{zero}/{n} examples with an all-zero input gradient, {nonfinite}/{n} with NaN/inf "
              f"({_pct(frac)}; allowed ≤ {_pct(max_fraction)})")
    return Check("input_gradients", frac <= max_fraction, detail)


def large_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, *, eps: float = 1.0,
              max_accuracy: float = 0.05, batch_size: int = 500) -> Check:
    """``attack`` (PGD built with ε = ``eps``, 1 = the whole box) must leave at most ``max_accuracy`` correct."""
    from robustlab.evaluation.outcome import attack_outcome

    acc = attack_outcome(model, x, y, attack, batch_size=batch_size).accuracy
    draws = getattr(attack, "eot_samples", 1)
    eot = f" with EOT over {draws} draws" if draws > 1 else ""
    return Check("large_eps", acc <= max_accuracy,
                 f"{type(attack).__name__}{eot} at ε = {eps:g} on {len(x)} examples: accuracy {_pct(acc)} "
                 f"(expected ≤ {_pct(max_accuracy)})")


def noise_weaker(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack_accuracy: Mapping[float, float], *,
                 attack: str = "pgd", tol: float = DEFAULT_TOL, batch_size: int = 500, seed: int = 0) -> Check:
    """Uniform random sign noise ``x ± ε`` (clipped to [0,1]) must be weaker than the attack at each ε."""
    if not attack_accuracy:
        return skipped("noise_weaker", f"no {attack} result")
    from robustlab.evaluation.outcome import attack_outcome

    gen = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, x.shape, generator=gen).to(x.dtype) * 2 - 1
    allow = _allow(tol, len(x))
    parts, ok = [], True
    for eps, acc in sorted(attack_accuracy.items()):
        noisy = (x + eps * sign).clamp(0.0, 1.0)
        noise_acc = attack_outcome(model, noisy, y, batch_size=batch_size).accuracy
        good = noise_acc >= acc - allow
        ok &= good
        parts.append(f"ε={eps:g}: noise {_pct(noise_acc)} vs {attack.upper()} {_pct(acc)}" + ("" if good else " ✗"))
    return Check("noise_weaker", ok, "; ".join(parts))


# --- checks on results -----------------------------------------------------------------------------------------

def iterative_vs_single(iterative: Mapping[float, float], single: Mapping[float, float], *,
                        names: tuple[str, str] = ("pgd", "fgsm"), n: int = 0, tol: float = DEFAULT_TOL) -> Check:
    """Accuracy under the iterative attack ≤ under the single-step one (+ tolerance) at every shared ε."""
    common = sorted(set(iterative) & set(single))
    if not common:
        return skipped("iterative_vs_single", f"{names[0].upper()} and {names[1].upper()} share no ε")
    allow = _allow(tol, n)
    parts, ok = [], True
    for eps in common:
        good = iterative[eps] <= single[eps] + allow
        ok &= good
        parts.append(f"ε={eps:g}: {names[0].upper()} {_pct(iterative[eps])} ≤ {names[1].upper()} "
                     f"{_pct(single[eps])}" + ("" if good else " ✗"))
    return Check("iterative_vs_single", ok, "; ".join(parts))


def whitebox_vs_blackbox(*, whitebox: Mapping[float, float] | None = None,
                         transfer: Mapping[float, float] | None = None, n: int = 0,
                         minimal_whitebox: Sequence[torch.Tensor] = (), few_pixel: Mapping[str, torch.Tensor]
                         | None = None, tol: float = DEFAULT_TOL) -> Check:
    """White-box attacks must be at least as strong as black-box ones.

    ``whitebox``/``transfer``: ε → accuracy of white-box PGD and of PGD transferred from a source model, on the same
    ``n`` examples. ``minimal_whitebox``: per-example "still correct" masks of white-box minimal attacks (C&W,
    DeepFool); ``few_pixel``: name → mask of the black-box few-pixel attack; masks are compared on the examples
    they share (the first ``min`` of their lengths: every suite subset is a prefix of the same test set).
    """
    parts, ok, ran = [], True, False
    if whitebox and transfer:
        allow = _allow(tol, n)
        for eps in sorted(set(whitebox) & set(transfer)):
            ran = True
            good = whitebox[eps] <= transfer[eps] + allow
            ok &= good
            parts.append(f"ε={eps:g}: PGD {_pct(whitebox[eps])} ≤ transfer {_pct(transfer[eps])}"
                         + ("" if good else " ✗"))
    if few_pixel and minimal_whitebox:
        for name, mask in few_pixel.items():
            m = min([len(mask)] + [len(w) for w in minimal_whitebox])
            if m == 0:
                continue
            ran = True
            white = torch.ones(m, dtype=torch.bool)
            for w in minimal_whitebox:
                white &= w[:m].bool()
            acc_white, acc_black = float(white.float().mean()), float(mask[:m].float().mean())
            good = acc_white <= acc_black + _allow(tol, m)
            ok &= good
            parts.append(f"{name} on {m}: white-box minimal {_pct(acc_white)} ≤ {_pct(acc_black)}"
                         + ("" if good else " ✗"))
    if not ran:
        return skipped("whitebox_vs_blackbox", "no transfer source and no few-pixel result")
    return Check("whitebox_vs_blackbox", ok, "; ".join(parts))


def blackbox_beats_whitebox(fooled_by_blackbox: int, n: int, *, whitebox: Sequence[str] = (),
                            blackbox: str = "square", tol: float = DEFAULT_TOL) -> Check:
    """AutoAttack's flag: the black-box attack, run after the white-box ones, must fool (almost) nothing more.

    Square only queries the model's outputs; if it fools examples that every gradient attack left robust, the
    gradients are misleading (masked, shattered, obfuscated) and the white-box numbers overstate robustness.
    """
    frac = fooled_by_blackbox / n if n else 0.0
    allow = _allow(tol, n)
    detail = (f"{blackbox} fooled {fooled_by_blackbox}/{n} examples ({_pct(frac)}) that "
              f"{', '.join(whitebox) or 'the white-box attacks'} left robust (allowed ≤ {_pct(allow)})")
    if frac > allow:
        detail += ": the gradients mislead the white-box attacks (gradient masking)"
    return Check("blackbox_beats_whitebox", frac <= allow, detail)


def monotone_in_eps(curves: Mapping[str, Mapping[float, float]], clean: float, *, n: int = 0,
                    tol: float = DEFAULT_TOL) -> Check:
    """For each attack, accuracy must not rise with ε (clean accuracy at ε = 0), up to the tolerance."""
    if not curves:
        return skipped("monotone_in_eps", "no bounded attack")
    allow = _allow(tol, n)
    bad = []
    for name, curve in curves.items():
        pts = sorted(curve.items())
        if not pts or pts[0][0] > 0:
            pts = [(0.0, clean)] + pts
        for (e0, a0), (e1, a1) in zip(pts, pts[1:]):
            if a1 > a0 + allow:
                bad.append(f"{name.upper()} {_pct(a0)} at ε={e0:g} → {_pct(a1)} at ε={e1:g}")
    if bad:
        return Check("monotone_in_eps", False, "accuracy rises with ε: " + "; ".join(bad))
    return Check("monotone_in_eps", True,
                 f"{len(curves)} attack(s) non-increasing in ε (tolerance {_pct(allow)}): "
                 + ", ".join(name.upper() for name in curves))


def summary_line(checks: Iterable[Check]) -> str:
    checks = list(checks)
    failed = [c.name for c in checks if not c.passed]
    skipped = sum(c.skipped for c in checks)
    ran = len(checks) - skipped
    if failed:
        return (f"masking checks: {len(failed)} of {ran} FAILED ({', '.join(failed)}): the robust accuracies above "
                f"may overstate robustness")
    return f"masking checks: all {ran} passed" + (f" ({skipped} skipped)" if skipped else "")


def any_failed(checks: Iterable[Check]) -> bool:
    return any(not c.passed for c in checks)


__all__ = ["Check", "DEFAULT_TOL", "any_failed", "blackbox_beats_whitebox", "input_gradients", "iterative_vs_single",
           "large_eps",
           "monotone_in_eps", "noise_weaker", "stable_predictions", "summary_line", "whitebox_vs_blackbox"]

