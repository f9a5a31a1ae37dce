"""The triplet machinery: distances, negative mining, the hinge, and the triplet regulariser as an add-on term.

One implementation shared by every defense that uses a triplet loss (AT²L eq. 2 and its regulariser R of §3.4,
TLA later). A triplet is (anchor, positive, negative); its loss is the hinge

    max( D(e(a), e(p)) − D(e(a), e(n)) + α, 0 )

on embeddings ``e`` — the logits ("the output of the last fully connected layer", AT²L) by default, or
``model.features`` (the penultimate representation, TLA) with ``embedding = "features"``. The anchor is an
adversarial example x_adv (a constant input), the positive its own clean x (AT²L) or other inputs given as
``x_positive`` (TLA: another image of the same class), the negative a clean example of another class chosen by a
:class:`NegativeMiner`. Gradients flow through all three embeddings [R].

Pluggable pieces (distances, negative miners, positives) live in :mod:`robustlab.defenses.triplet_mining`.

* **positives**: the anchor's own clean x, or other images (:func:`sample_positive_indices`: TLA's different
  training image of the same class).

The regulariser R(x, y) = (λ/k) Σ hinge (AT²L §3.4) is :class:`TripletTerm`, registered as the add-on term
``triplet``; add it to any defense with ``[[defense.terms]]``. It reuses the defense's ``x_adv`` and logits
(:class:`~robustlab.defenses.base.LossOutput`); for a defense without adversarial examples (standard training,
a warm-up epoch) it is zero unless the term is given its own ``attack``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from robustlab.attacks.registry import ATTACKS, build_training_attack
from robustlab.config import Options
from robustlab.defenses.base import Batch, LossOutput, LossTerm, register_term
from robustlab.defenses.triplet_mining import (EMBEDDINGS, MINERS, Distance, MiningRequest, NegativeMiner, Negatives,
                                               build_miner, embed, get_distance)
from robustlab.errors import ConfigError

# --- the triplet loss ------------------------------------------------------------------------------------------

def triplet_hinge(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float,
                  distance: str | Distance = "linf") -> torch.Tensor:
    """Per-triplet ``max(D(a, p) − D(a, n) + margin, 0)``; embeddings are flattened to (N, D)."""
    dist = get_distance(distance) if isinstance(distance, str) else distance
    a, p, n = anchor.flatten(1), positive.flatten(1), negative.flatten(1)
    return torch.clamp(dist(a, p) - dist(a, n) + margin, min=0.0)


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


class TripletOptions(Options):
    """``[[defense.terms]] name = "triplet"``: R = (weight/k) Σ hinge, AT²L §3.4."""

    weight: float = Field(1.0, ge=0)  # λ of R (λ2 in eq. 2)
    margin: float = Field(1.0, ge=0)  # α
    distance: str = "linf"          # linf | l2 | cosine | abs_cosine (or any registered distance)
    negatives: str = "predicted"    # predicted | random | pool (or any registered miner)
    embedding: Literal[EMBEDDINGS] = "logits"
    attack: str = ""                # craft x_adv with this attack when the defense has none ("": R = 0 then)
    eps: float = Field(0.3, ge=0)   # ε of ``attack``
    warmup_epochs: int = Field(0, ge=0)  # R is 0 in the first warmup_epochs epochs (as every defense's warm-up)

    def model_post_init(self, context: Any) -> None:
        get_distance(self.distance)
        MINERS.get(self.negatives)
        if self.attack:
            ATTACKS.get(self.attack, where="triplet attack")


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
            self.attack = build_training_attack(options.attack, options.eps)

    def craft(self, model: nn.Module, batch: Batch, ctx) -> torch.Tensor | None:
        """The term's own ``attack`` where the host gives no x_adv (standard training, warm-up epochs)."""
        if batch.x_adv is None and self.attack is not None and ctx.epoch >= self.options.warmup_epochs:
            return self.attack(model, batch.x, batch.y)
        return None

    def term(self, model: nn.Module, batch: Batch, out: LossOutput, ctx
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        o = self.options
        zero = torch.zeros((), device=batch.x.device)
        x_adv, anchor = out.x_adv, None
        if ctx.epoch < o.warmup_epochs:
            return zero, {}
        if x_adv is None:
            x_adv = batch.term_x_adv.get(self)
            if x_adv is None:
                return zero, {}
        elif o.embedding == "logits":
            anchor = out.logits_adv
        clean = out.logits_clean if o.embedding == "logits" else None
        result = self.triplet(model, batch.x, batch.y, x_adv, anchor=anchor, clean=clean, ctx=ctx)
        value = o.weight * result.mean()
        return value, {"value": value.detach(), **result.metrics()}
