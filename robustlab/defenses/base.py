"""The defense contract (DESIGN.md): a recipe the engine calls without knowing which defense it is.

Per batch the engine calls, in order::

    defense.before_step(model, x, y, ctx)      # auxiliary updates first (critic, discriminator, θ regulariser)
    out = defense.loss(model, x, y, ctx)       # the loss of the main model, and metrics
    main optimiser: zero_grad, out.loss.backward()
    defense.after_backward(ctx)                # step optimisers that share the main backward (e.g. θ)
    main optimiser step
    defense.after_step(model, ctx)             # projections / clamps (e.g. θ ≥ θ_min)

and ``on_epoch_start`` / ``on_epoch_end`` around each epoch (AT²L pre-generates its ensemble there). A defense
owns its auxiliary networks and optimisers and lists them in ``aux_modules`` / ``aux_optimizers`` so the engine
checkpoints, moves and restores them; ``extra_state`` carries any other JSON-able state (running means, τ).
``trainable_parameters`` picks what the main optimiser updates (all model parameters by default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from robustlab.engine import TrainContext


@dataclass
class LossOutput:
    """What :meth:`Defense.loss` returns.

    ``metrics`` holds detached scalar tensors (batch means); the engine averages them over the epoch with one
    device sync at the end. ``x_adv`` and the logits are kept so that add-on terms can reuse them.
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    x_adv: torch.Tensor | None = None
    logits_clean: torch.Tensor | None = None
    logits_adv: torch.Tensor | None = None


class Defense:
    """Base recipe. Subclasses set ``options`` (a dataclass instance) and implement :meth:`loss`."""

    name: str = "base"

    def __init__(self, options: Any):
        self.options = options

    # --- set-up -------------------------------------------------------------------------------------------
    def setup(self, model: nn.Module, ctx: TrainContext) -> None:
        """Create auxiliary networks and optimisers (on ``ctx.device``); called once before training/resume."""

    def trainable_parameters(self, model: nn.Module) -> Iterable[nn.Parameter]:
        return model.parameters()

    # --- hooks --------------------------------------------------------------------------------------------
    def on_epoch_start(self, model: nn.Module, ctx: TrainContext) -> None:
        pass

    def on_epoch_end(self, model: nn.Module, ctx: TrainContext) -> dict[str, float]:
        """Return extra per-epoch metrics for the JSONL log (e.g. mean θ)."""
        return {}

    def before_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> None:
        pass

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> LossOutput:
        raise NotImplementedError

    def after_backward(self, ctx: TrainContext) -> None:
        pass

    def after_step(self, model: nn.Module, ctx: TrainContext) -> None:
        pass

    # --- state --------------------------------------------------------------------------------------------
    def aux_modules(self) -> dict[str, nn.Module]:
        return {}

    def aux_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        """JSON-able state beyond modules and optimisers; tensors are allowed and go to safetensors."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


_DEFENSES: dict[str, tuple[type[Defense], type]] = {}


def register_defense(name: str, options_cls: type) -> Callable[[type[Defense]], type[Defense]]:
    """Class decorator: ``@register_defense("pgd_at", PGDATOptions) class PGDAT(Defense): ...``."""

    def decorator(cls: type[Defense]) -> type[Defense]:
        if name in _DEFENSES:
            raise ValueError(f"defense {name!r} registered twice")
        cls.name = name
        _DEFENSES[name] = (cls, options_cls)
        return cls

    return decorator


def registered_defenses() -> dict[str, tuple[type[Defense], type]]:
    return _DEFENSES
