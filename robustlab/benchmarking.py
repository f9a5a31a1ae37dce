"""Bring your own model: ``robustlab.benchmark(model, x, y, eps=...)`` evaluates any ``nn.Module`` on [0,1] inputs.

    import robustlab
    result = robustlab.benchmark(model, x_test[:500], y_test[:500], norm="Linf", eps=0.3)
    print(result.clean, result.robust_accuracy)   # and result.rows, result.checks, result.robust (per example)

``suite="standard"`` (default; AutoAttack's standard attacks and settings, :mod:`robustlab.standard`) or
``"rand"`` (randomised models: EOT); a model whose predictions are not repeatable is evaluated with ``rand``
automatically. The inputs are checked once, here, and refused with one clear :class:`ValueError`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from robustlab.errors import ConfigError
from robustlab.standard import StandardResult, StandardSettings, evaluate_standard


def check_inputs(x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> None:
    """Refuse what would give a silently wrong robust accuracy: the [0,1] floating-point NCHW images and integer
    labels every attack assumes."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError("x and y must be torch tensors")
    if len(x) == 0:
        raise ValueError("x is empty: nothing to evaluate")
    if len(x) != len(y):
        raise ValueError(f"x and y disagree on the number of examples: {len(x)} vs {len(y)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point images in [0,1], got dtype {x.dtype}"
                         + (" (uint8: divide by 255)" if x.dtype == torch.uint8 else ""))
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        hint = " (it looks like 0–255 images: divide by 255)" if hi > 1.5 else ""
        raise ValueError(f"x must lie in [0,1], got values in [{lo:g}, {hi:g}]{hint}")
    if y.is_floating_point() or y.dtype == torch.bool or y.dim() != 1:
        raise ValueError(f"y must be a 1-D tensor of integer class labels, got {y.dtype} of shape {tuple(y.shape)}")
    if num_classes is not None and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{int(y.min())}, {int(y.max())}]")


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
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    with torch.no_grad():
        was_training = model.training
        model.eval()
        try:
            probe = model(x[:1].to(dev)) if len(x) and x.is_floating_point() else None
        except RuntimeError as exc:
            raise ValueError(f"the model does not accept inputs of shape {tuple(x.shape[1:])}: "
                             f"{str(exc).splitlines()[0]}") from None
        finally:
            model.train(was_training)
    check_inputs(x, y, None if probe is None else probe.shape[1])
    try:
        s = StandardSettings(suite=suite, norm=norm, eps=float(eps), batch_size=batch_size, seed=seed, **settings)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return evaluate_standard(model, x, y, s, num_classes=int(probe.shape[1]), device=dev, state_dir=state_dir,
                             log=log)
