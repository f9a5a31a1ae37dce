"""The triplet machinery: distances, negative mining, the hinge, and the triplet regulariser as an add-on term.

One implementation shared by every defense that uses a triplet loss (AT²L eq. 2 and its regulariser R of §3.4,
TLA later). A triplet is (anchor, positive, negative); its loss is the hinge

    max( D(e(a), e(p)) − D(e(a), e(n)) + α, 0 )

on embeddings ``e`` — the logits ("the output of the last fully connected layer", AT²L) by default, or
``model.features`` (the penultimate representation, TLA) with ``embedding = "features"``. The anchor is an
adversarial example x_adv (a constant input), the positive its own clean x (AT²L) or other inputs given as
``x_positive`` (TLA: another image of the same class), the negative a clean example of another class chosen by a
:class:`NegativeMiner`. Gradients flow through all three embeddings [R].

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
  ``pool`` — TLA's semi-hard negatives [C]: each step a pool of K clean training images, the nearest other-class
  pool item by cosine similarity (:func:`nearest_other_class`), or a random other-class pool item (ablation).
  Anchors for which no negative exists (a batch holding a single class) get no triplet and contribute 0.
* **positives**: the anchor's own clean x, or other images (:func:`sample_positive_indices`: TLA's different
  training image of the same class).

The regulariser R(x, y) = (λ/k) Σ hinge (AT²L §3.4) is :class:`TripletTerm`, registered as the add-on term
``triplet``; add it to any defense with ``[[defense.terms]]``. It reuses the defense's ``x_adv`` and logits
(:class:`~robustlab.defenses.base.LossOutput`); for a defense without adversarial examples (standard training,
a warm-up epoch) it is zero unless the term is given its own ``attack``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.base import model_mode
from robustlab.defenses.base import LossOutput, LossTerm, register_term
from robustlab.errors import ConfigError
from robustlab.registry import Registry
from robustlab.retrieval import pairwise_distance

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


# --- pool-based mining and positives (TLA) ---------------------------------------------------------------------

def nearest_other_class(anchor: torch.Tensor, pool: torch.Tensor, anchor_labels: torch.Tensor,
                        pool_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TLA's semi-hard negative [C]: per anchor, the pool item of another class with the highest cosine similarity.

    ``anchor`` (N, D) and ``pool`` (K, D) are embeddings; S = cos(anchor_i, pool_j), entries with the anchor's own
    label set to −∞ [R], then argmax over j: the plain cosine as in the reference code, not the |cos| of the
    ``abs_cosine`` distance. Returns ``(index into the pool, valid)``; an anchor whose pool holds only its own
    class gets index 0 and ``valid`` False.
    """
    distance = pairwise_distance(anchor.flatten(1), pool.flatten(1), "cosine")  # 1 − cos: nearest = most similar
    same = anchor_labels[:, None] == pool_labels[None, :]
    distance = distance.masked_fill(same, float("inf"))
    return distance.argmin(dim=1), (~same).any(dim=1)


def draw_pool(train_x: torch.Tensor, train_y: torch.Tensor, size: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` training images and labels drawn uniformly without replacement (all of them if ``size`` ≥ N)."""
    order = torch.randperm(len(train_y), generator=generator, device=train_y.device)[:size]
    return train_x[order], train_y[order]


def sample_positive_indices(train_y: torch.Tensor, y: torch.Tensor, exclude: torch.Tensor | None = None,
                            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """TLA's positives [C]: per label ``y[i]`` a training index of the same class drawn uniformly, other than
    ``exclude[i]`` (the anchor's own training index, so the positive is a *different* image).

    Returns ``(index into the training set, valid)``; a class with no other training image gives ``valid`` False.
    """
    y = y.to(train_y.device)
    mask = train_y[None, :] == y[:, None]
    if exclude is not None:
        mask[torch.arange(len(y), device=mask.device), exclude.to(mask.device)] = False
    return sample_uniform(mask, generator)


POOL_CHOICES = ("nearest", "random")


@register_miner("pool")
class PoolMiner(NegativeMiner):
    """TLA [C]: every call draws a pool of ``pool_size`` (K) clean training images from ``ctx.dataset``.

    ``choice = "nearest"``: the pool and the anchors ``x_adv`` are embedded in eval mode without gradient and each
    anchor takes :func:`nearest_other_class` (semi-hard: the pool size sets the hardness). ``"random"``: a uniform
    other-class pool item (the random-negative ablation). The chosen images are returned as inputs, so
    :class:`TripletLoss` re-forwards them with gradient.
    """

    def __init__(self, pool_size: int = 50, choice: str = "nearest"):
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigError(f"pool_size must be an integer >= 1, got {pool_size!r}")
        if choice not in POOL_CHOICES:
            raise ConfigError(f"pool choice must be one of {list(POOL_CHOICES)}, got {choice!r}")
        self.pool_size = pool_size
        self.choice = choice

    def mine(self, request: MiningRequest) -> Negatives:
        dataset = getattr(request.ctx, "dataset", None)
        if dataset is None:
            raise ValueError("the 'pool' miner draws its pool from the training set and needs ctx.dataset")
        pool_x, pool_y = draw_pool(dataset.train_x, dataset.train_y, self.pool_size)
        device = request.x_adv.device
        pool_x, pool_y, y = pool_x.to(device), pool_y.to(device), request.y.to(device)
        if self.choice == "random":
            index, valid = sample_uniform(pool_y[None, :] != y[:, None], request.generator)
        else:
            with torch.no_grad(), model_mode(request.model, "eval"):
                pool_emb = embed(request.model, pool_x, request.embedding)[0]
                anchor_emb = embed(request.model, request.x_adv, request.embedding)[0]
            index, valid = nearest_other_class(anchor_emb, pool_emb, y, pool_y)
        return Negatives(x=pool_x[index], valid=valid)


# --- the triplet loss ------------------------------------------------------------------------------------------

def triplet_hinge(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float,
                  distance: str | Distance = "linf") -> torch.Tensor:
    """Per-triplet ``max(D(a, p) − D(a, n) + margin, 0)``; embeddings are flattened to (N, D)."""
    dist = get_distance(distance) if isinstance(distance, str) else distance
    a, p, n = anchor.flatten(1), positive.flatten(1), negative.flatten(1)
    return torch.clamp(dist(a, p) - dist(a, n) + margin, min=0.0)


EMBEDDINGS = ("logits", "features")


def embed(model: nn.Module, x: torch.Tensor, embedding: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embedding, logits)`` of ``x``: the logits twice, or ``(features(x) flattened, head(features(x)))``."""
    if embedding == "logits":
        logits = model(x)
        return logits, logits
    h = model.features(x)
    return h.flatten(1), model.head(h)


@dataclass
class TripletResult:
    """Per-anchor hinge ``values`` (0 where the anchor got no negative) and what went into it: the distances
    (detached) and the three embeddings (with their graph, e.g. for TLA's norm penalty on them)."""

    values: torch.Tensor
    valid: torch.Tensor
    d_pos: torch.Tensor
    d_neg: torch.Tensor
    negatives: Negatives
    anchor: torch.Tensor | None = None
    positive: torch.Tensor | None = None
    negative: torch.Tensor | None = None

    def mean(self) -> torch.Tensor:
        """(1/k) Σᵢ hingeᵢ over all k anchors of the batch (AT²L eq. 2 / R of §3.4)."""
        return self.values.sum() / max(len(self.values), 1)

    def metrics(self) -> dict[str, torch.Tensor]:
        values = self.values.detach()
        out = {"hinge": values.mean(), "active": (values > 0).float().mean(),
               "d_pos": self.d_pos.mean(), "d_neg": self.d_neg.mean(), "valid": self.valid.float().mean()}
        if self.negatives.from_predicted is not None:
            out["neg_predicted"] = self.negatives.from_predicted.float().mean()
        return out


class TripletLoss:
    """The triplet hinge with a pluggable distance, miner and embedding; see the module docstring.

    Call with the model, the clean batch ``x``, its labels and the anchors' inputs ``x_adv``. The positive of
    anchor i is its own clean ``x[i]`` (AT²L) unless ``x_positive`` gives other inputs (TLA: another image of the
    same class). Pass embeddings already computed with gradient (``anchor`` with ``anchor_logits``, ``clean`` =
    the embeddings of ``x``, ``positive``) to save forward passes.
    """

    def __init__(self, margin: float = 1.0, distance: str = "linf", miner: str | NegativeMiner = "predicted",
                 embedding: str = "logits"):
        if embedding not in EMBEDDINGS:
            raise ConfigError(f"triplet embedding must be one of {list(EMBEDDINGS)}, got {embedding!r}")
        self.margin = float(margin)
        self.distance_name = distance
        self.distance = get_distance(distance)
        self.miner = build_miner(miner) if isinstance(miner, str) else miner
        self.embedding = embedding

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, *,
                 anchor: torch.Tensor | None = None, anchor_logits: torch.Tensor | None = None,
                 clean: torch.Tensor | None = None, x_positive: torch.Tensor | None = None,
                 positive: torch.Tensor | None = None, ctx: Any = None,
                 generator: torch.Generator | None = None) -> TripletResult:
        if anchor is None:
            anchor, logits = embed(model, x_adv, self.embedding)
            anchor_logits = logits if anchor_logits is None else anchor_logits
        elif anchor_logits is None:
            if self.embedding != "logits":
                raise ValueError("pass anchor_logits along with feature embeddings")
            anchor_logits = anchor
        anchor = anchor.flatten(1)
        if clean is None and x_positive is None:
            clean, _ = embed(model, x, self.embedding)
        clean = clean.flatten(1) if clean is not None else None
        if positive is None:
            positive = clean if x_positive is None else embed(model, x_positive, self.embedding)[0]
        positive = positive.flatten(1)
        request = MiningRequest(model=model, x=x, y=y, x_adv=x_adv, anchor=anchor.detach(),
                                clean=clean.detach() if clean is not None else None,
                                anchor_logits=anchor_logits.detach(), ctx=ctx, generator=generator,
                                embedding=self.embedding)
        negatives = self.miner.mine(request)
        if negatives.index is not None:
            if clean is None:
                clean = embed(model, x, self.embedding)[0].flatten(1)
            negative = clean[negatives.index]
        else:
            negative = embed(model, negatives.x, self.embedding)[0].flatten(1)
        d_pos = self.distance(anchor, positive)
        d_neg = self.distance(anchor, negative)
        values = torch.clamp(d_pos - d_neg + self.margin, min=0.0)
        valid = negatives.valid if negatives.valid is not None else torch.ones_like(values, dtype=torch.bool)
        values = torch.where(valid, values, torch.zeros_like(values))
        return TripletResult(values, valid, d_pos.detach(), d_neg.detach(), negatives, anchor, positive, negative)


# --- the regulariser R(x, y) as an add-on term ------------------------------------------------------------------

@dataclass
class TripletOptions:
    """``[[defense.terms]] name = "triplet"``: R = (weight/k) Σ hinge, AT²L §3.4."""

    weight: float = 1.0             # λ of R (λ2 in eq. 2)
    margin: float = 1.0             # α
    distance: str = "linf"          # linf | l2 | cosine | abs_cosine (or any registered distance)
    negatives: str = "predicted"    # predicted | random | pool (or any registered miner)
    embedding: str = field(default="logits", metadata={"choices": EMBEDDINGS})
    attack: str = ""                # craft x_adv with this attack when the defense has none ("": R = 0 then)
    eps: float = 0.3                # ε of ``attack``
    start_epoch: int = 0            # R is 0 before this (0-based) epoch

    def __post_init__(self):
        get_distance(self.distance)
        MINERS.get(self.negatives)
        if self.weight < 0 or self.margin < 0 or self.eps < 0 or self.start_epoch < 0:
            raise ConfigError("triplet weight, margin, eps and start_epoch must be >= 0")
        if self.attack:
            from robustlab.attacks import available_attacks

            if self.attack not in available_attacks():
                raise ConfigError(f"triplet attack: unknown attack {self.attack!r}; "
                                  f"available: {', '.join(available_attacks())}")


@register_term("triplet", TripletOptions)
class TripletTerm(LossTerm):
    """The triplet regulariser R(x, y) of AT²L §3.4 on top of any defense: anchor = the defense's ``x_adv``,
    positive = the clean x, negative from the batch by the configured miner. Logit embeddings computed by the
    defense are reused; a defense that skips its clean pass (Madry PGD-AT) costs one more forward pass."""

    def __init__(self, options: TripletOptions):
        super().__init__(options)
        self.triplet = TripletLoss(options.margin, options.distance, options.negatives, options.embedding)
        self.attack = None
        if options.attack:
            from robustlab.attacks.registry import build_training_attack

            self.attack = build_training_attack(options.attack, options.eps)

    def term(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: LossOutput, ctx
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        o = self.options
        zero = torch.zeros((), device=x.device)
        if getattr(ctx, "epoch", 0) < o.start_epoch:
            return zero, {}
        x_adv, anchor = out.x_adv, None
        if x_adv is None:
            if self.attack is None:
                return zero, {}
            x_adv = self.attack(model, x, y)
        elif o.embedding == "logits":
            anchor = out.logits_adv
        clean = out.logits_clean if o.embedding == "logits" else None
        result = self.triplet(model, x, y, x_adv, anchor=anchor, clean=clean, ctx=ctx)
        value = o.weight * result.mean()
        return value, {"value": value.detach(), **result.metrics()}
