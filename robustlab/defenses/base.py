"""The defense contract (DESIGN.md): a recipe the engine calls without knowing which defense it is.

Per batch the engine builds a :class:`Batch` (x, y, the examples' training-set indices) and calls
``defense.step(model, batch, ctx)``, which runs, in order::

    batch.x_adv = defense.craft(model, batch, ctx)   # the adversary stage (None: a clean step), under AMP
    term.craft(...)                                  # a term's own adversary, where it has one
    defense.update_auxiliaries(model, batch, ctx)    # critics, discriminators, θ steps, with (x, x_adv)
    out = defense.total_loss(model, batch, ctx)      # the defense's loss plus every add-on term, under AMP

then the main optimiser's zero_grad and ``out.loss.backward()``, ``defense.after_backward(ctx)`` (optimisers
that share the main backward, e.g. θ), the main optimiser step and ``defense.after_step(model, ctx)``
(projections / clamps, e.g. θ ≥ θ_min); ``on_epoch_start`` / ``on_epoch_end`` around each epoch (AT²L
pre-generates its round there) and ``evaluate`` with the per-epoch test metrics.

Composition is first-class: a :class:`LossTerm` (the triplet regulariser, the A3T discriminator) is a recipe
with the same hooks whose ``term`` adds to another defense's loss, reusing that defense's ``x_adv`` and logits
from :class:`LossOutput`. A config lists them under ``[[defense.terms]]``; the defense forwards every hook to
its terms and exposes their auxiliary networks and optimisers (prefixed with the term's name) to the engine.

A recipe owns its auxiliary networks and optimisers and lists them in ``aux_modules`` / ``aux_optimizers`` so
the engine checkpoints and restores them; ``extra_state`` carries any other state (running means, τ).
``trainable_parameters`` picks what the main optimiser updates (all model parameters by default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from robustlab.config import Options
from robustlab.defenses.context import Batch, LossOutput, TrainContext
from robustlab.registry import Registry


class Recipe:
    """Hooks and state shared by defenses and add-on loss terms; every method is a no-op by default."""

    name: str = "base"

    def __init__(self, options: Any):
        self.options = options

    def setup(self, model: nn.Module, ctx: TrainContext) -> None:
        """Create auxiliary networks and optimisers (on ``ctx.device``); called once before training/resume."""

    def on_epoch_start(self, model: nn.Module, ctx: TrainContext) -> None:
        pass

    def on_epoch_end(self, model: nn.Module, ctx: TrainContext) -> dict[str, float]:
        """Return extra per-epoch metrics for the JSONL log (e.g. mean θ)."""
        return {}

    def evaluate(self, model: nn.Module, ctx: TrainContext) -> dict[str, float]:
        """Per-epoch metrics on the test data (``ctx.dataset``), logged with the engine's evaluation (main process)."""
        return {}

    def update_auxiliaries(self, model: nn.Module, batch: Batch, ctx: TrainContext) -> dict[str, torch.Tensor]:
        """Step the recipe's own networks or parameters on this batch (x and, once crafted, x_adv) before the
        loss; returns batch metrics."""
        return {}

    def after_backward(self, ctx: TrainContext) -> None:
        pass

    def after_step(self, model: nn.Module, ctx: TrainContext) -> None:
        pass

    def aux_modules(self) -> dict[str, nn.Module]:
        return {}

    def aux_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        """JSON-able state beyond modules and optimisers; tensors are allowed and go to safetensors."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


class LossTerm(Recipe):
    """An add-on term: ``term(model, batch, out, ctx) -> (loss, metrics)`` added to a defense's loss."""

    def craft(self, model: nn.Module, batch: Batch, ctx: TrainContext) -> torch.Tensor | None:
        """The term's own adversarial examples, where it needs some the host does not give (None: none)."""
        return None

    def term(self, model: nn.Module, batch: Batch, out: LossOutput, ctx: TrainContext
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


class Defense(Recipe):
    """Base recipe. Subclasses implement :meth:`loss` (and :meth:`craft` when they train on adversarial
    examples); ``terms`` are added by :meth:`total_loss`."""

    def __init__(self, options: Any, terms: list[LossTerm] | None = None):
        super().__init__(options)
        self.terms: list[LossTerm] = list(terms or [])

    def trainable_parameters(self, model: nn.Module) -> Iterable[nn.Parameter]:
        return model.parameters()

    def craft(self, model: nn.Module, batch: Batch, ctx: TrainContext) -> torch.Tensor | None:
        """The adversary stage: this step's adversarial examples (None: a clean step)."""
        return None

    def loss(self, model: nn.Module, batch: Batch, ctx: TrainContext) -> LossOutput:
        raise NotImplementedError

    def step(self, model: nn.Module, batch: Batch, ctx: TrainContext) -> LossOutput:
        """One training step up to the loss: the adversary stage, the auxiliary updates, then :meth:`total_loss`
        (crafting and the loss under ``ctx.autocast()``); the auxiliary updates' metrics join the loss's."""
        with ctx.autocast():
            batch.x_adv = self.craft(model, batch, ctx)
            for term in self.terms:
                own = term.craft(model, batch, ctx)
                if own is not None:
                    batch.term_x_adv[term] = own
        metrics = dict(self.update_auxiliaries(model, batch, ctx))
        for term in self.terms:
            metrics.update({f"{term.name}_{k}": v for k, v in term.update_auxiliaries(model, batch, ctx).items()})
        with ctx.autocast():
            out = self.total_loss(model, batch, ctx)
        out.metrics.update(metrics)
        return out

    def total_loss(self, model: nn.Module, batch: Batch, ctx: TrainContext) -> LossOutput:
        """The defense's loss plus each term's; term metrics are prefixed with the term's name."""
        out = self.loss(model, batch, ctx)
        for term in self.terms:
            value, metrics = term.term(model, batch, out, ctx)
            out.loss = out.loss + value
            out.metrics.update({f"{term.name}_{k}": v for k, v in metrics.items()})
        if self.terms:
            out.metrics["loss"] = out.loss.detach()
        return out

    # --- hooks reach the terms too ---------------------------------------------------------------------------
    def setup_all(self, model: nn.Module, ctx: TrainContext) -> None:
        self.setup(model, ctx)
        for term in self.terms:
            term.setup(model, ctx)

    def on_epoch_start_all(self, model: nn.Module, ctx: TrainContext) -> None:
        self.on_epoch_start(model, ctx)
        for term in self.terms:
            term.on_epoch_start(model, ctx)

    def on_epoch_end_all(self, model: nn.Module, ctx: TrainContext) -> dict[str, float]:
        row = dict(self.on_epoch_end(model, ctx))
        for term in self.terms:
            row.update({f"{term.name}_{k}": v for k, v in term.on_epoch_end(model, ctx).items()})
        return row

    def evaluate_all(self, model: nn.Module, ctx: TrainContext) -> dict[str, float]:
        row = dict(self.evaluate(model, ctx))
        for term in self.terms:
            row.update({f"{term.name}_{k}": v for k, v in term.evaluate(model, ctx).items()})
        return row

    def after_backward_all(self, ctx: TrainContext) -> None:
        self.after_backward(ctx)
        for term in self.terms:
            term.after_backward(ctx)

    def after_step_all(self, model: nn.Module, ctx: TrainContext) -> None:
        self.after_step(model, ctx)
        for term in self.terms:
            term.after_step(model, ctx)

    def all_aux_modules(self) -> dict[str, nn.Module]:
        return self._collect(lambda r: r.aux_modules())

    def all_aux_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._collect(lambda r: r.aux_optimizers())

    def all_extra_state(self) -> dict[str, Any]:
        return {"defense": self.extra_state(), "terms": [t.extra_state() for t in self.terms]}

    def load_all_extra_state(self, state: dict[str, Any]) -> None:
        self.load_extra_state(state.get("defense", {}))
        for term, term_state in zip(self.terms, state.get("terms", [])):
            term.load_extra_state(term_state)

    def _collect(self, get: Callable[[Recipe], dict[str, Any]]) -> dict[str, Any]:
        found = dict(get(self))
        for i, term in enumerate(self.terms):
            found.update({f"term{i}_{term.name}.{k}": v for k, v in get(term).items()})
        return found


DEFENSES: Registry[tuple[type[Defense], type]] = Registry("defense")  # name → (recipe class, options class)
TERMS: Registry[tuple[type[LossTerm], type]] = Registry("term")


def register_defense(name: str, options_cls: type) -> Callable[[type[Defense]], type[Defense]]:
    """Class decorator: ``@register_defense("pgd_at", PGDATOptions) class PGDAT(Defense): ...``."""
    return _register(DEFENSES, name, options_cls)


def register_term(name: str, options_cls: type) -> Callable[[type[LossTerm]], type[LossTerm]]:
    """Class decorator for add-on loss terms: ``@register_term("triplet", TripletOptions)``."""
    return _register(TERMS, name, options_cls)


def _register(registry: Registry, name: str, options_cls: type):
    if not (isinstance(options_cls, type) and issubclass(options_cls, Options)):
        raise TypeError(f"{registry.kind} {name!r}: its options must be a robustlab.config.Options class (pydantic), "
                        f"got {options_cls!r}")

    def decorator(cls):
        registry.add(name, (cls, options_cls))
        cls.name = name
        return cls

    return decorator
