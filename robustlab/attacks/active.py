"""The one "active examples" loop state shared by every iterative attack, and the one restart/target wrapper.

An iterative attack works on *rows*; each row attacks one example of the caller's batch. Several rows may attack
the same example: restarts and AutoAttack-style target classes run as copies of the batch in one call (where
memory allows) instead of one call after another. As soon as one row fools the model, its example leaves the
batch with *all* of its rows and keeps that row's point ("early exit": an example that is already misclassified
costs nothing more, and the point returned for it is adversarial). An example that no row fools gets the final
point of its first row.

Conventions (the same for every attack, DESIGN.md):

* ``y`` is what the caller passed: the true labels, or the target labels when the attack is ``targeted``;
  success is ``pred != y`` (untargeted) or ``pred == y`` (targeted) — :func:`success_mask`;
* ``target`` is an optional per-row class that only *steers* the loss (APGD-T, FAB-T: the most likely other
  classes, :func:`robustlab.attacks.targets.top_other_classes`); success stays ``pred != y``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def success_mask(logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """Bool mask: the prediction differs from ``y`` (untargeted) or equals the target ``y`` (targeted)."""
    pred = logits.argmax(1)
    return pred.eq(y) if targeted else pred.ne(y)


def deterministic_success(eot_samples: int, model_mode: str) -> bool:
    """Whether a success seen during the attack is the success the evaluation will see.

    Early exit keeps the first point that fools the model. With EOT (a randomised model) or a model attacked
    outside eval mode (dropout on), a fooling draw says little about the evaluation's prediction, and keeping it
    would *weaken* the attack: such attacks run every step and return their highest-loss point instead.
    """
    return eot_samples == 1 and model_mode == "eval"


def _first_per_example(examples: torch.Tensor, n: int) -> torch.Tensor:
    """Bool mask over rows: true at the first row (lowest position) of each example."""
    pos = torch.arange(len(examples), device=examples.device)
    first = torch.full((n,), len(examples), dtype=pos.dtype, device=examples.device)
    first.scatter_reduce_(0, examples, pos, reduce="amin")
    return first[examples].eq(pos)


class ActiveSet:
    """Rows still being attacked, each mapped to an example of the output batch (see the module docstring).

    ``x``, ``y``, ``target``: the rows' clean inputs, labels and steering classes (``target`` may be None);
    ``example``: the output position of each row; ``copy``: which run of :func:`run_copies` the row belongs to
    (its restart is ``copy % restarts``). ``out`` holds the result per example; ``success`` whether a
    row fooled the model for it. Attacks shrink their own per-row state with the tensors :meth:`retire` returns.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None, *,
                 example: torch.Tensor | None = None, copy: torch.Tensor | None = None,
                 out: torch.Tensor | None = None, success: torch.Tensor | None = None):
        self.x, self.y, self.target = x, y, target
        self.example = torch.arange(len(x), device=x.device) if example is None else example
        self.copy = torch.zeros(len(x), dtype=torch.long, device=x.device) if copy is None else copy
        self.out = x.clone() if out is None else out
        self.success = (torch.zeros(len(self.out), dtype=torch.bool, device=x.device) if success is None
                        else success)

    def __len__(self) -> int:
        return len(self.example)

    @property
    def empty(self) -> bool:
        return len(self.example) == 0

    def retire(self, fooled: torch.Tensor, x_rows: torch.Tensor, *state: torch.Tensor | None
               ) -> list[torch.Tensor | None]:
        """Examples with a fooling row leave (keeping that row's point), with all their rows.

        ``fooled``: bool per row; ``x_rows``: the rows' current points. Returns ``state`` restricted to the rows
        that stay (``None`` entries pass through), and restricts ``x``, ``y``, ``target`` and ``example``.
        """
        if bool(fooled.any()):
            self._store(self.example[fooled], x_rows[fooled])
            self.success[self.example[fooled]] = True
        return self._keep(~self.success[self.example], state)

    def _store(self, examples: torch.Tensor, points: torch.Tensor) -> None:
        """Each example among ``examples`` (one per row) gets the point of its first row in ``points``."""
        first = _first_per_example(examples, len(self.out))
        self.out[examples[first]] = points[first].to(self.out.dtype)

    def _keep(self, keep: torch.Tensor, state: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """Restrict the rows (and ``state``, ``None`` entries passing through) to ``keep``."""
        if bool(keep.all()):
            return list(state)
        self.x, self.y, self.example, self.copy = self.x[keep], self.y[keep], self.example[keep], self.copy[keep]
        if self.target is not None:
            self.target = self.target[keep]
        return [None if s is None else s[keep] for s in state]

    def give_up(self, rows: torch.Tensor, x_rows: torch.Tensor, *state: torch.Tensor | None
                ) -> list[torch.Tensor | None]:
        """Rows ``rows`` (bool per row) stop unfooled and leave; their examples keep those rows' points, unless
        another row of the same example (a restart) fools it later or ends after them (:meth:`finish`). Returns
        ``state`` restricted to the rows that stay."""
        if not bool(rows.any()):
            return list(state)
        self._store(self.example[rows], x_rows[rows])
        return self._keep(~rows, state)

    def finish(self, x_rows: torch.Tensor) -> None:
        """The examples nobody fooled get the final point of their first remaining row."""
        if self.empty:
            return
        self._store(self.example, x_rows)


# core(model, active) runs the attack's iterations on the rows of ``active`` and calls ``active.finish``.
Core = Callable[[nn.Module, ActiveSet], None]


def run_copies(model: nn.Module, x: torch.Tensor, y: torch.Tensor, core: Core, *, restarts: int = 1,
               targets: Sequence[torch.Tensor | None] = (None,), batched: bool = True,
               skip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The one restart/target wrapper: ``restarts × len(targets)`` runs of ``core``; ``(x_out, success)``.

    ``batched``: all runs as copies of the batch in one call (each example leaves with all its copies when one
    fools the model); else one run after another, each on the examples not yet fooled. The order of the runs is
    target-major (every restart of the first target, then the next target), as AutoAttack. ``skip``: examples not
    to attack at all (e.g. misclassified clean); they are returned unchanged with ``success`` true.
    """
    n = len(x)
    out = x.clone()
    success = torch.zeros(n, dtype=torch.bool, device=x.device) if skip is None else skip.clone()
    runs = [t for t in targets for _ in range(restarts)]
    if batched and len(runs) > 1:
        todo = (~success).nonzero().squeeze(1)
        if len(todo) == 0:
            return out, success
        example = todo.repeat(len(runs))
        copy = torch.arange(len(runs), device=x.device).repeat_interleave(len(todo))
        target = None if runs[0] is None else torch.cat([t[todo] for t in runs])
        active = ActiveSet(x[example], y[example], target, example=example, copy=copy, out=out, success=success)
        core(model, active)
        return out, success
    for i, t in enumerate(runs):
        todo = (~success).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        copy = torch.full_like(todo, i)
        if i == 0:
            active = ActiveSet(x[todo], y[todo], None if t is None else t[todo], example=todo, copy=copy, out=out,
                               success=success)
            core(model, active)
        else:  # a later run replaces nothing unless it fools the model
            scratch = out.clone()
            active = ActiveSet(x[todo], y[todo], None if t is None else t[todo], example=todo, copy=copy,
                               out=scratch, success=success)
            core(model, active)
            hit = todo[success[todo]]
            out[hit] = scratch[hit]
    return out, success
