"""The masking checks a suite declares (:data:`robustlab.evaluation.suites.CHECK_NAMES`), run on its result.

Each check is :mod:`robustlab.evaluation.checks`; this module finds its inputs in the result: the first iterative
stage against a single step (the suite's FGSM row, or an FGSM / one-step L2 attack run here), Square's share of
the examples the white-box stages left (AutoAttack's alarm), white-box against transfer and few-pixel attacks,
an attack at an ε that covers the whole box, the curve's monotonicity, and random noise against the worst case.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustlab.attacks import build_attack
from robustlab.evaluation import checks as masking
from robustlab.evaluation.outcome import attack_outcome
from robustlab.evaluation.result import EvaluationResult
from robustlab.evaluation.suites import FEW_PIXEL_PREFIX, Suite

SINGLE_STEP = ("fgsm", "ll")


def run_suite_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, result: EvaluationResult, suite: Suite, *,
                     stability: masking.Check, outcomes: dict, device: torch.device,
                     precomputed: dict[str, masking.Check] | None = None) -> list[masking.Check]:
    """The checks of ``suite`` on ``result`` over ``(x, y)`` (the evaluated examples), in the suite's order
    (``precomputed``: checks the runner already ran, by name)."""
    precomputed = precomputed or {}
    s, n = result.settings, result.n
    bs = s.batch_size
    m = min(s.check_subset, n) if s.check_subset else n
    bounded = [st.name for st in suite.stages if st.in_worst_case]
    known = [b for b in bounded if result.accuracy_of(b)]  # stages whose accuracy alone is known
    iterative = "pgd" if "pgd" in known else next((b for b in known if b not in SINGLE_STEP), None)
    out = []
    for name in suite.checks:
        if name in precomputed:
            out.append(precomputed[name])
        elif name == "stable_predictions":
            out.append(stability)
        elif name == "input_gradients":
            out.append(masking.input_gradients(model, x[:m], y[:m], batch_size=bs, max_fraction=s.max_zero_gradients))
        elif name == "iterative_vs_single":
            if iterative is None:
                out.append(masking.skipped(name, "no iterative attack ran on every example"))
                continue
            if "fgsm" in known:
                single, single_name = result.accuracy_of("fgsm"), "fgsm"
            else:
                single_name = "fgsm" if s.norm == "linf" else "fgm_l2"
                single = {e: attack_outcome(model, x, y, _single_step(s.norm, e), batch_size=bs,
                                            device=device).accuracy for e in result.eps_list}
            out.append(masking.iterative_vs_single(result.accuracy_of(iterative), single,
                                                   names=(iterative, single_name), n=n, tol=s.tol))
        elif name == "blackbox_beats_whitebox":
            if "square" not in bounded:
                out.append(masking.skipped(name, "no Square stage"))
                continue
            out.append(masking.blackbox_beats_whitebox(sum(f == "square" for f in result.fooled_by), n,
                                                       whitebox=[b for b in bounded if b != "square"], tol=s.tol))
        elif name == "whitebox_vs_blackbox":
            few_pixel = {st: mask for (st, _), mask in outcomes.items() if st.startswith(FEW_PIXEL_PREFIX)}
            white_min = [outcomes[(st, None)] for st in ("cw_l2", "deepfool") if (st, None) in outcomes]
            out.append(masking.whitebox_vs_blackbox(
                whitebox=result.accuracy_of(iterative) if iterative else {}, transfer=result.accuracy_of("transfer"),
                n=n, minimal_whitebox=white_min, few_pixel=few_pixel, tol=s.tol))
        elif name == "large_eps":
            big_eps = 1.0 if s.norm == "linf" else math.sqrt(x[0].numel())
            big = build_attack("apgd_ce", big_eps, norm=s.norm, steps=20,
                               eot_samples=s.eot_samples if result.randomised else 1)
            out.append(masking.large_eps(model, x[:m], y[:m], big, eps=big_eps, max_accuracy=s.large_eps_max_accuracy,
                                         batch_size=bs))
        elif name == "monotone_in_eps":
            curves = {st.name: result.accuracy_of(st.name) for st in suite.stages if st.kind == "bounded"}
            curves = {k: v for k, v in curves.items() if v}
            if result.curve:
                curves["worst_case"] = dict(result.curve)
            out.append(masking.monotone_in_eps(curves, result.clean, n=n, tol=s.tol))
        elif name == "noise_weaker":
            if s.norm != "linf":
                out.append(masking.skipped(name, "random sign noise is an L∞ check"))
                continue
            reference, label = _strongest(result, iterative)
            out.append(masking.noise_weaker(model, x, y, reference, attack=label, tol=s.tol, batch_size=bs,
                                            seed=s.seed))
    return out


def _strongest(result: EvaluationResult, iterative: str | None) -> tuple[dict[float, float], str]:
    """What random noise must be weaker than: a cascade's worst case; otherwise the iterative attack (and EOT-PGD)
    on its own, so that a masked gradient attack is not hidden behind a single step that happens to work."""
    if result.cascade or iterative is None:
        return dict(result.curve), f"{result.suite} worst case"
    strongest = dict(result.accuracy_of(iterative))
    for e, acc in result.accuracy_of("eot_pgd").items():
        strongest[e] = min(acc, strongest.get(e, acc))
    return strongest, iterative + ("/eot_pgd" if result.accuracy_of("eot_pgd") else "")


def _single_step(norm: str, eps: float):
    if norm == "linf":
        return build_attack("fgsm", eps)
    return build_attack("pgd_l2", eps, steps=1, step_size=eps, random_start=False)  # one normalised step of ε
