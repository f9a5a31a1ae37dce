"""Bring your own model: ``robustlab.benchmark(model, x, y, eps=...)`` evaluates any ``nn.Module`` on [0,1] inputs.

    import robustlab
    result = robustlab.benchmark(model, x_test[:500], y_test[:500], norm="Linf", eps=0.3)
    print(result.clean, result.robust_accuracy)   # and result.rows, result.checks, result.robust (per example)

``suite="standard"`` (default; AutoAttack's standard attacks and settings, :mod:`robustlab.standard`) or
``"rand"`` (randomised models: EOT); a model whose predictions are not repeatable is evaluated with ``rand``
automatically. The inputs are checked once (:func:`robustlab.attacks.base.check_batch`) and refused with one
clear :class:`ValueError`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from robustlab.errors import ConfigError
from robustlab.standard import StandardResult, StandardSettings, evaluate_standard


def benchmark(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf",
              suite: str = "standard", batch_size: int = 500, seed: int = 0, device: torch.device | str | None = None,
              state_dir: str | Path | None = None, log: Callable[[str], None] | None = None,
              **settings) -> StandardResult:
    """Robust accuracy of ``model`` on ``(x, y)`` under the AutoAttack-strength ``suite`` at ``eps`` in ``norm``.

    Returns a :class:`~robustlab.standard.StandardResult`: ``clean``, ``robust_accuracy``, ``rows`` (per attack:
    examples attacked and fooled, robust accuracy after it, seconds, forward/backward passes per image),
    ``robust``/``fooled_by`` (per example), ``x_adv``, ``checks`` (masking checks) and ``seconds``. ``state_dir``
    makes the evaluation resumable; further keywords are :class:`~robustlab.standard.StandardSettings` fields.
    """
    try:
        s = StandardSettings(suite=suite, norm=norm, eps=float(eps), batch_size=batch_size, seed=seed, **settings)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return evaluate_standard(model, x, y, s, device=device, state_dir=state_dir, log=log)
