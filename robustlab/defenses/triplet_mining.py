"""Distances and negative mining for the triplet loss (:mod:`robustlab.defenses.triplet`): AT²L §3.2, TLA.

Pluggable pieces, each with a small registry so that other defenses can add their own:

* **distance** (:func:`register_distance`): ``linf`` ‖u − v‖∞ (AT²L's choice [P]), ``l2`` ‖u − v‖₂,
  ``cosine`` 1 − cos(u, v), ``abs_cosine`` 1 − |cos(u, v)| (TLA's reference code).
* **negative miner** (:func:`register_miner`): ``predicted`` — AT²L §3.2 [P, R]: c = argmax f(x_adv); if c ≠ y
  and the batch holds examples labelled c, pick one of them uniformly, otherwise pick uniformly among the batch
  examples with a label ≠ y (binary tasks: the opposite label). ``random`` — uniformly among the other-class
  batch examples (an ablation). A miner returns either indices into the clean batch (whose embeddings are then
  reused, no extra forward pass) or negative *inputs* from elsewhere (re-forwarded with gradient), which is how a
  pool-based miner (TLA's semi-hard negatives from a pool of training images) plugs in: subclass
  :class:`NegativeMiner`, implement :meth:`~NegativeMiner.mine` returning ``Negatives(x=...)``, and register it.
  ``pool`` (:mod:`robustlab.defenses.pool_mining`) — TLA's semi-hard negatives [C]: each step a pool of K clean
  training images, the nearest other-class pool item by cosine similarity, or a random other-class pool item.
  Anchors for which no negative exists (a batch holding a single class) get no triplet and contribute 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import ConfigError
from robustlab.registry import Registry

# --- distances -------------------------------------------------------------------------------------------------

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DISTANCES: Registry[Distance] = Registry("triplet distance")


def register_distance(name: str) -> Callable[[Distance], Distance]:
    """Decorator: ``@register_distance("name") def d(u, v) -> (N,)`` on row-wise embeddings ``(N, D)``."""
    return DISTANCES.register(name)


@register_distance("linf")
def linf_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """‖u − v‖∞ per row (AT²L, §3.1)."""
    return (u - v).abs().amax(dim=1)


@register_distance("l2")
def l2_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """‖u − v‖₂ per row (its gradient at u = v is 0)."""
    return torch.linalg.vector_norm(u - v, dim=1)


@register_distance("cosine")
def cosine_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """1 − cos(u, v) per row, in [0, 2] (cosine similarity with eps 1e-8 on the norms)."""
    return 1.0 - F.cosine_similarity(u, v, dim=1, eps=1e-8)


@register_distance("abs_cosine")
def abs_cosine_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """1 − |cos(u, v)| per row, in [0, 1] (TLA's reference code, utils.py; note the absolute value)."""
    return 1.0 - F.cosine_similarity(u, v, dim=1, eps=1e-8).abs()


def available_distances() -> list[str]:
    return DISTANCES.names()


def get_distance(name: str) -> Distance:
    return DISTANCES.get(name)


EMBEDDINGS = ("logits", "features")


def embed(model: nn.Module, x: torch.Tensor, embedding: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embedding, logits)`` of ``x``: the logits twice, or ``(features(x) flattened, head(features(x)))``."""
    if embedding == "logits":
        logits = model(x)
        return logits, logits
    h = model.features(x)
    return h.flatten(1), model.head(h)


# --- negative mining -------------------------------------------------------------------------------------------

@dataclass
class MiningRequest:
    """What a miner may look at. Embeddings and logits are detached; the candidates of the built-in miners are
    the clean batch ``x`` itself (labels ``y``), so an anchor's own clean example is never its negative."""

    model: nn.Module
    x: torch.Tensor                       # clean batch, (N, ...)
    y: torch.Tensor                       # labels of x and of the anchors, (N,)
    x_adv: torch.Tensor                   # the anchors' inputs, (N, ...)
    anchor: torch.Tensor                  # anchor embeddings, (N, D)
    clean: torch.Tensor | None            # clean-batch embeddings, (N, D) (None if not computed)
    anchor_logits: torch.Tensor | None    # logits at the anchors (for the predicted-class rule), (N, C)
    ctx: Any = None                       # the TrainContext (dataset, device, epoch) when called from training
    generator: torch.Generator | None = None
    embedding: str = "logits"             # what the anchors are embedded as ("logits" | "features")


@dataclass
class Negatives:
    """A miner's answer: ``index`` into the clean batch, or negative inputs ``x`` from outside the batch.

    ``valid`` marks the anchors that got a negative (None: all). ``from_predicted`` (optional, for metrics)
    marks negatives taken from the anchor's predicted class.
    """

    index: torch.Tensor | None = None
    x: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    from_predicted: torch.Tensor | None = None

    def __post_init__(self):
        if (self.index is None) == (self.x is None):
            raise ValueError("Negatives needs exactly one of index (into the batch) or x (negative inputs)")


class NegativeMiner:
    """Chooses one negative per anchor. Subclasses implement :meth:`mine`; register them with
    :func:`register_miner` so that configs can name them. Miners may keep state (a pool) and use the hooks of the
    term or defense that owns them."""

    name: str = "base"

    def mine(self, request: MiningRequest) -> Negatives:
        raise NotImplementedError


def sample_uniform(mask: torch.Tensor, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of a bool ``mask`` (N, M), one column drawn uniformly among its true entries.

    Returns ``(index, valid)``; rows without a true entry get index 0 and ``valid`` False. Vectorised: uniform
    scores, the masked-out entries set to −1, argmax.
    """
    device = generator.device if generator is not None else mask.device
    scores = torch.rand(mask.shape, generator=generator, device=device).to(mask.device)
    scores = scores.masked_fill(~mask, -1.0)
    return scores.argmax(dim=1), mask.any(dim=1)


MINERS: Registry[type[NegativeMiner]] = Registry("negative miner")


def register_miner(name: str) -> Callable[[type[NegativeMiner]], type[NegativeMiner]]:
    def decorator(cls: type[NegativeMiner]) -> type[NegativeMiner]:
        MINERS.add(name, cls)
        cls.name = name
        return cls

    return decorator


def available_miners() -> list[str]:
    return MINERS.names()


def build_miner(name: str, **options: Any) -> NegativeMiner:
    cls = MINERS.get(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"negative miner {name!r}: {exc}") from None


@register_miner("predicted")
class PredictedClassMiner(NegativeMiner):
    """AT²L §3.2 [P, R]: a clean batch example of the class the anchor is predicted as, when that class is wrong
    (c ≠ y) and present in the batch; otherwise uniformly any batch example of another class."""

    def mine(self, request: MiningRequest) -> Negatives:
        if request.anchor_logits is None:
            raise ValueError("the 'predicted' miner needs the anchors' logits")
        y = request.y
        predicted = request.anchor_logits.argmax(dim=1)
        of_predicted = y[None, :] == predicted[:, None]     # (anchor, candidate): candidate labelled c
        other_class = y[None, :] != y[:, None]              # candidate labelled ≠ y
        use_predicted = predicted.ne(y) & of_predicted.any(dim=1)
        mask = torch.where(use_predicted[:, None], of_predicted, other_class)
        index, valid = sample_uniform(mask, request.generator)
        return Negatives(index=index, valid=valid, from_predicted=use_predicted)


@register_miner("random")
class RandomOtherClassMiner(NegativeMiner):
    """Uniformly any clean batch example with a label different from the anchor's (ablation)."""

    def mine(self, request: MiningRequest) -> Negatives:
        y = request.y
        index, valid = sample_uniform(y[None, :] != y[:, None], request.generator)
        return Negatives(index=index, valid=valid)
