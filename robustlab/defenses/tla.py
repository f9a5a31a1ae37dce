"""TLA: triplet loss adversarial training (Mao et al., "Metric Learning for Adversarial Robustness", NeurIPS 2019;
spec METHODS.md §3, code columbia/Metric_Learning_Adversarial_Robustness).

Loss [C train_update_fast_triplet.py; poster: L_all = Σ CE + λ1 L_trip + λ2 L_norm]::

    L = CE(f(x'), y) + λ_trip · ( (1/k) Σ_i max(D(h(x'_i), h(p_i)) − D(h(x'_i), h(n_i)) + α, 0)
                               + λ_norm · L_norm )
    L_norm = mean over batch × dim of ( h(x')² + h(p)² + h(n)² )

* h = ``model.features`` (the penultimate layer) [C]; D = 1 − |cos| (``abs_cosine``) [C utils.py];
* anchor x' = the PGD example (random start, sign steps, BN in eval mode: ``[defense.attack] model_mode = "eval"``) [C];
* positive p = a *different* random clean training image of class y (:func:`sample_positive_indices`) [C];
* negative n = semi-hard: a pool of K (``pool_size``) clean training images per step, embedded in eval mode without
  gradient, the nearest other-class item by cosine similarity, same-label entries masked to −∞ [R]; the chosen
  images are re-forwarded with gradient [C] (``negatives = "random"``: a random other-class pool item, ablation).
  The triplet part is the shared machinery of :mod:`robustlab.defenses.triplet` (``pool`` miner);
* λ_norm multiplies L_norm inside the λ_trip bracket, as in the reference code (the poster writes a separate λ2)
  [C]; CE on adversarial examples only (``mix = "adversarial"``) or a clean/adversarial mix
  (``mix = "weighted"``, ``alpha``·CE clean + ``beta``·CE adv) [R]; ``label_smoothing`` on the CE (MNIST 0.1) [C, R:
  applied to the training CE, not to the attack's loss].

Not implemented: the CIFAR extra triplet (x', x̃, n) with x̃ = x + integer U(−8, 8)/255 noise. ``lam_trip = 0``
gives plain PGD-AT with the same CE (a like-for-like AT baseline). ``warmup_epochs`` / ``eps_ramp_epochs`` as in
PGD-AT (not in the paper; a small-data curriculum).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from robustlab.config import AttackTable, Fraction, attack_table
from robustlab.defenses.adversarial import PGDAdversarialTraining, PGDATOptions
from robustlab.defenses.base import Batch, LossOutput, register_defense
from robustlab.defenses.pool_mining import POOL_CHOICES, PoolMiner, sample_positive_indices
from robustlab.defenses.standard import clean_loss
from robustlab.defenses.triplet import TripletLoss, triplet_hinge
from robustlab.defenses.triplet_mining import EMBEDDINGS, embed, get_distance
from robustlab.predictions import batch_accuracy


def norm_penalty(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """L_norm [C]: the mean over batch × dimension of h_a² + h_p² + h_n² on the raw embeddings."""
    return (anchor.flatten(1).pow(2) + positive.flatten(1).pow(2) + negative.flatten(1).pow(2)).mean()


def weighted_cross_entropy(logits_adv: torch.Tensor, y: torch.Tensor, *, label_smoothing: float = 0.0,
                           logits_clean: torch.Tensor | None = None, w_clean: float = 0.0, w_adv: float = 1.0
                           ) -> torch.Tensor:
    """``w_adv``·CE(f(x'), y) + ``w_clean``·CE(f(x), y), batch means, with label smoothing."""
    ce = w_adv * F.cross_entropy(logits_adv, y, label_smoothing=label_smoothing)
    if w_clean > 0:
        if logits_clean is None:
            raise ValueError("w_clean > 0 needs logits_clean")
        ce = ce + w_clean * F.cross_entropy(logits_clean, y, label_smoothing=label_smoothing)
    return ce


def tla_loss(logits_adv: torch.Tensor, y: torch.Tensor, anchor: torch.Tensor, positive: torch.Tensor,
             negative: torch.Tensor, *, lam_trip: float, lam_norm: float, margin: float,
             distance: str = "abs_cosine", valid: torch.Tensor | None = None, label_smoothing: float = 0.0,
             logits_clean: torch.Tensor | None = None, w_clean: float = 0.0, w_adv: float = 1.0
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The TLA objective on given logits and embeddings (module docstring); returns the loss and its parts.

    Parts: ``ce`` (the weighted CE), ``triplet`` = (1/k) Σ hinge (0 for anchors not ``valid``), ``norm`` = L_norm,
    ``hinge`` per anchor.
    """
    ce = weighted_cross_entropy(logits_adv, y, label_smoothing=label_smoothing, logits_clean=logits_clean,
                                w_clean=w_clean, w_adv=w_adv)
    hinge = triplet_hinge(anchor, positive, negative, margin, distance)
    if valid is not None:
        hinge = torch.where(valid, hinge, torch.zeros_like(hinge))
    triplet = hinge.sum() / max(len(hinge), 1)
    norm = norm_penalty(anchor, positive, negative)
    loss = ce + lam_trip * (triplet + lam_norm * norm)
    return loss, {"ce": ce, "triplet": triplet, "norm": norm, "hinge": hinge}


class TLAOptions(PGDATOptions):
    """PGD-AT's options (ε, steps, step size, mix, warm-up, attack mode) plus the triplet part; MNIST defaults."""

    attack: AttackTable = attack_table("pgd", 0.3, steps=40, step_size=0.01)  # MNIST: 40 × 0.01, ε 0.3 [C]
    lam_trip: float = Field(0.5, ge=0)    # λ_trip (MNIST 0.5, CIFAR-10 2)
    lam_norm: float = Field(1e-4, ge=0)   # λ_reg (MNIST 1e-4, CIFAR-10 1e-3)
    margin: float = Field(0.05, ge=0)     # α (MNIST 0.05, CIFAR-10 0.03)
    distance: str = "abs_cosine"          # 1 − |cos| [C]; any registered triplet distance
    negatives: Literal[POOL_CHOICES] = "nearest"  # semi-hard | random ablation
    pool_size: int = Field(50, ge=1)      # K (MNIST 50, CIFAR-10 500)
    label_smoothing: Fraction = 0.0       # MNIST 0.1 [C]
    embedding: Literal[EMBEDDINGS] = "features"


@register_defense("tla", TLAOptions)
class TLA(PGDAdversarialTraining):
    """TLA on top of PGD-AT's attack schedule; see the module docstring."""

    def __init__(self, options: TLAOptions, terms=None):
        get_distance(options.distance)
        super().__init__(options, terms)
        miner = PoolMiner(options.pool_size, options.negatives)
        self.triplet = TripletLoss(options.margin, options.distance, miner, options.embedding)

    def positives(self, batch: Batch, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        """Different clean training images of the anchors' classes (the batch's own indices excluded)."""
        if ctx.dataset is None:
            raise ValueError("tla draws positives and negatives from the training set and needs ctx.dataset")
        index, valid = sample_positive_indices(ctx.dataset.train_y, batch.y, batch.index)
        return ctx.dataset.train_x[index].to(batch.y.device, non_blocking=True), valid.to(batch.y.device)

    def warmup_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> LossOutput:
        return clean_loss(model, x, y, self.options.label_smoothing)

    def objective(self, model: nn.Module, batch: Batch, ctx) -> LossOutput:
        o = self.options
        x, x_adv, y = batch.x, batch.x_adv, batch.y
        h_adv, logits_adv = embed(model, x_adv, o.embedding)
        w_clean, w_adv = self.weights()
        logits_clean = model(x) if w_clean > 0 else None
        metrics: dict[str, Any] = {"acc_adv": batch_accuracy(logits_adv, y)}
        if logits_clean is not None:
            metrics["acc"] = batch_accuracy(logits_clean, y)
        common = dict(label_smoothing=o.label_smoothing, logits_clean=logits_clean, w_clean=w_clean, w_adv=w_adv)
        if o.lam_trip == 0:  # plain PGD-AT with the same CE; the triplets are only measured (no gradient)
            loss = weighted_cross_entropy(logits_adv, y, **common)
            metrics.update(loss=loss.detach(), ce=loss.detach())
            with torch.no_grad():
                x_pos, _ = self.positives(batch, ctx)
                result = self.triplet(model, x, y, x_adv, anchor=h_adv.detach(), anchor_logits=logits_adv.detach(),
                                      x_positive=x_pos, ctx=ctx)
            metrics.update({f"triplet_{k}": v for k, v in result.metrics().items()})
            return LossOutput(loss, metrics, x_adv=x_adv, logits_clean=logits_clean, logits_adv=logits_adv)
        x_pos, pos_valid = self.positives(batch, ctx)
        result = self.triplet(model, x, y, x_adv, anchor=h_adv, anchor_logits=logits_adv, x_positive=x_pos, ctx=ctx)
        valid = result.valid & pos_valid
        loss, parts = tla_loss(logits_adv, y, result.anchor, result.positive, result.negative, lam_trip=o.lam_trip,
                               lam_norm=o.lam_norm, margin=o.margin, distance=o.distance, valid=valid, **common)
        metrics.update(loss=loss.detach(), ce=parts["ce"].detach(), norm=parts["norm"].detach(),
                       **{f"triplet_{k}": v for k, v in result.metrics().items()})
        metrics["triplet_hinge"] = parts["triplet"].detach()
        return LossOutput(loss, metrics, x_adv=x_adv, logits_clean=logits_clean, logits_adv=logits_adv)
