"""Bring your own model: ``robustlab.benchmark(model, x, y, eps=...)`` evaluates any ``nn.Module`` on [0,1] inputs.

    import robustlab
    result = robustlab.benchmark(model, x_test[:500], y_test[:500], norm="Linf", eps=0.3, verbose=True)
    print(result.clean, result.robust_accuracy)   # and result.rows, result.checks, result.robust (per example)

``suite``: a preset (``"standard"``, the default: AutoAttack's attacks and settings; ``"rand"``, ``"fast"``,
``"quick"``), a :class:`~robustlab.evaluation.suites.Suite`, or your own list of stages (attack names or
``(name, options)`` pairs, run as a cascade). The inputs are checked once and refused with one clear ValueError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from robustlab.errors import ConfigError, did_you_mean
from robustlab.evaluation.result import EvaluationResult
from robustlab.evaluation.runner import evaluate
from robustlab.evaluation.settings import EvalSettings
from robustlab.evaluation.suites import StageSpec, Suite


def benchmark(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float | list[float], norm: str = "Linf",
              suite: str | Suite | Sequence[StageSpec] = "standard", batch_size: int = 500, seed: int = 0,
              device: torch.device | str | None = None, state_dir: str | Path | None = None,
              verbose: bool = False, log: Callable[[str], None] | None = None, **settings) -> EvaluationResult:
    """Robust accuracy of ``model`` on ``(x, y)`` under ``suite`` at ``eps`` (one radius, or a list: a curve).

    Returns an :class:`~robustlab.evaluation.result.EvaluationResult`: ``clean``, ``robust_accuracy`` (fractions),
    ``rows`` (per stage: examples attacked and fooled, accuracy, seconds, forward/backward passes per image),
    ``robust``/``fooled_by`` (per example), ``x_adv``, ``checks`` (masking checks) and ``seconds``. ``state_dir``
    makes the evaluation resumable; ``verbose`` prints a line per stage and batch (or pass ``log``); further
    keywords are :class:`~robustlab.evaluation.settings.EvalSettings` fields.
    """
    known = [f.name for f in dataclasses.fields(EvalSettings)]
    for key in settings:
        if key not in known:
            raise ConfigError(f"benchmark() has no option {key!r}{did_you_mean(key, known)}")
    s = EvalSettings(norm=norm, eps=eps, batch_size=batch_size, seed=seed, **settings)
    return evaluate(model, x, y, s, suite=suite, device=device, state_dir=state_dir,
                    log=log or (print if verbose else None))
