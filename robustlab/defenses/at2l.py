"""AT²L: adversarial training with triplet loss (Li et al., IJCAI 2019; spec METHODS.md §1), and its ensemble.

Loss, eq. (2) [P], on a batch of k clean examples x with adversarial versions x_adv::

    L = [ Σ CE(f(x_i), y_i) + λ1 Σ CE(f(x_i^adv), y_i) ] / ((1+λ1) k)
        + (λ2/k) Σ max( ‖f(x_i^adv) − f(x_i)‖∞ − ‖f(x_i^adv) − f(x_i^n)‖∞ + α, 0 )

f = the logits [R]; anchor x_adv (a constant input), positive its clean x, negative a clean batch example of the
class the anchor is predicted as, else of any other class [P §3.2, R]; gradients through all three embeddings
[R]. The triplet part is the shared machinery of :mod:`robustlab.defenses.triplet` (distance, miner and
embedding are options). With ``lam2 = 0`` the loss is eq. (1): the paper's adversarial-training baseline, run with
exactly the same rounds and adversarial examples.

Rounds (Algorithm 1) [P]: ``warmup_epochs`` epochs of clean training (step 1), then every epoch is one round
[R]: at its start the adversarial examples of the whole training set are built against the current f (and the
frozen models of M), then f is retrained for one pass over [X, X_adv] with eq. (2). The paper's tables report
rounds 1 and 10, i.e. the checkpoints of epochs ``warmup_epochs + 1`` and ``warmup_epochs + 10``.

Ensemble (Algorithm 2) [P]: an attack set A (``attacks``; the names ``gradient`` = FGSM, LL, I-FGSM, I-LL,
``optimization`` = C&W and ``mixed`` = all five expand to the paper's sets) × a model set M = {f} (``include_self``)
∪ the frozen, pre-trained models loaded from the checkpoints in ``models`` [R, as in Ensemble Adversarial
Training]. Per step each clean x_i gets one adversarial version, its (a, m) drawn uniformly [R]; the batch is
B' = B ∪ adv, the positive x_i and the negative from B. ``generation`` chooses how:

* ``"round"`` (default): at the start of each round every training example draws its (a, m) and only that
  X^{a,m}_i is built. Since one round is one epoch, every example is used exactly once per round, so this has the
  same distribution as building all |A|·|M| sets and sampling per step, at 1/(|A|·|M|) of the cost and memory [R].
* ``"round_full"``: Algorithm 2 literally: X^{a,m} for every a, m and every example at the start of the round
  (|A|·|M| copies of the training set in memory), (a, m) drawn per example at each step.
* ``"online"``: the adversarial batch is crafted at each step against the current f (FGSM-AT style, no rounds).

"Known" setting [P]: f = A, M = {A, B, C, D}, tested with examples crafted on A. "Unknown": M = {A, B, D}, tested
with examples transferred from a separately trained C (``robustlab eval --transfer-source``). Both are configs
(``configs/at2l/``). Attack settings [P appendix]: ε 0.3 for FGSM/LL/I-FGSM/I-LL, 10 iterations of 0.03 for the
iterative ones; C&W-L2 with 1000 iterations, initial c 1e-3, lr 5e-3 (its binary-search steps are not given; 9
by default [R]). C&W examples are minimal perturbations, not bounded by ε; where C&W fails the clean x is used.

Pre-generated examples are looked up by the training-set indices of the batch (``Batch.index``),
so the round modes need un-augmented data (``data.augment = "none"``). Under DDP every process builds the round's
examples of the whole training set (simple, not sharded).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from robustlab.config import Options
from robustlab.defenses.adversarial import scheduled_eps
from robustlab.defenses.at2l_ensemble import ATTACK_SETS, TRAINING_ATTACKS, AdversarialEnsemble, expand_attacks
from robustlab.defenses.base import Batch, Defense, LossOutput, register_defense
from robustlab.defenses.standard import clean_loss
from robustlab.defenses.triplet import TripletLoss
from robustlab.defenses.triplet_mining import EMBEDDINGS, MINERS, embed, get_distance
from robustlab.errors import ConfigError
from robustlab.predictions import batch_accuracy


class AT2LOptions(Options):
    lam1: float = Field(0.3, ge=0)  # λ1: weight of the adversarial cross-entropy (MNIST 0.3, CIFAR-10 0.6)
    lam2: float = Field(1.0, ge=0)  # λ2: weight of the triplet term (0: eq. 1, the AT baseline)
    margin: float = Field(1.0, ge=0)  # α
    distance: str = "linf"          # linf [P] | l2 | cosine | abs_cosine
    negatives: str = "predicted"    # predicted [P, R] | random
    embedding: Literal[EMBEDDINGS] = "logits"
    attacks: list[str] = Field(default_factory=lambda: ["fgsm"])  # A: attack names and/or set names
    eps: float = Field(0.3, ge=0)   # ε of FGSM, LL, I-FGSM, I-LL, PGD
    iter_steps: int = Field(10, ge=1)  # I-FGSM / I-LL / PGD iterations
    iter_step_size: float = Field(0.03, ge=0)
    cw_max_iter: int = Field(1000, ge=1)
    cw_binary_steps: int = Field(9, ge=1)
    cw_initial_const: float = 1e-3
    cw_lr: float = 5e-3
    models: list[str] = Field(default_factory=list)  # M besides f: checkpoints of frozen pre-trained models
    include_self: bool = True       # f ∈ M, its examples regenerated every round
    generation: Literal["round", "round_full", "online"] = "round"
    warmup_epochs: int = Field(1, ge=0)  # clean epochs before round 1 (Algorithm 1, step 1)
    eps_ramp_epochs: int = Field(0, ge=0)  # ε grows linearly over the first rounds (0: off; not in the paper)
    gen_batch_size: int = Field(500, ge=1)  # batch size when pre-generating
    attack_mode: Literal["eval", "train"] = "eval"
    joint_forward: bool = True      # one forward pass of B' = [x; x_adv] (the paper's batch) or two

    def model_post_init(self, context: Any) -> None:
        get_distance(self.distance)
        MINERS.get(self.negatives, where="defense.negatives")
        attacks = expand_attacks(self.attacks)
        unknown = [a for a in attacks if a not in TRAINING_ATTACKS]
        if not attacks or unknown:
            raise ConfigError(f"defense.attacks: unknown training attack(s) {unknown}; use "
                              f"{', '.join(TRAINING_ATTACKS)} or a set: {', '.join(ATTACK_SETS)}")
        if not self.include_self and not self.models:
            raise ConfigError("defense.include_self = false needs at least one checkpoint in defense.models")


@register_defense("at2l", AT2LOptions)
class AT2L(Defense):
    """AT²L (eq. 2, Algorithms 1 and 2); see the module docstring."""

    def __init__(self, options: AT2LOptions, terms=None):
        super().__init__(options, terms)
        self.ensemble = AdversarialEnsemble(options)
        self.triplet = TripletLoss(options.margin, options.distance, options.negatives, options.embedding)
        self.eps = 0.0

    def setup(self, model: nn.Module, ctx) -> None:
        self.ensemble.setup(model, ctx)

    def epoch_eps(self, epoch: int) -> float:
        """ε for 0-based ``epoch``: 0 while pretraining, then (optionally ramped) ``eps``."""
        o = self.options
        return scheduled_eps(o.eps, epoch, o.warmup_epochs, o.eps_ramp_epochs)

    # --- rounds ------------------------------------------------------------------------------------------------
    def on_epoch_start(self, model: nn.Module, ctx) -> None:
        self.eps = self.epoch_eps(ctx.epoch)
        self.ensemble.start_round(model, ctx, self.eps, adversarial=ctx.epoch >= self.options.warmup_epochs)

    # --- the loss ----------------------------------------------------------------------------------------------
    def craft(self, model: nn.Module, batch: Batch, ctx) -> torch.Tensor | None:
        """This round's x_adv of the batch (looked up by the examples' indices, or crafted when online)."""
        if ctx.epoch < self.options.warmup_epochs:
            return None
        return self.ensemble.adversarial_batch(model, batch.x, batch.y, batch.index)

    def loss(self, model: nn.Module, batch: Batch, ctx) -> LossOutput:
        o = self.options
        x, x_adv, y = batch.x, batch.x_adv, batch.y
        if x_adv is None:
            return clean_loss(model, x, y)
        k = len(y)
        if o.joint_forward:
            emb, logits = embed(model, torch.cat([x, x_adv]), o.embedding)
            emb_clean, emb_adv = emb[:k], emb[k:]
            logits_clean, logits_adv = logits[:k], logits[k:]
        else:
            emb_clean, logits_clean = embed(model, x, o.embedding)
            emb_adv, logits_adv = embed(model, x_adv, o.embedding)
        ce_clean = F.cross_entropy(logits_clean, y, reduction="sum")
        ce_adv = F.cross_entropy(logits_adv, y, reduction="sum")
        loss = (ce_clean + o.lam1 * ce_adv) / ((1.0 + o.lam1) * k)
        if o.lam2 > 0:
            result = self.triplet(model, x, y, x_adv, anchor=emb_adv, clean=emb_clean,
                                  anchor_logits=logits_adv, ctx=ctx)
            loss = loss + o.lam2 * result.mean()
        else:  # eq. (1): the hinge is only measured
            with torch.no_grad():
                result = self.triplet(model, x, y, x_adv, anchor=emb_adv.detach(), clean=emb_clean.detach(),
                                      anchor_logits=logits_adv.detach(), ctx=ctx)
        metrics: dict[str, Any] = {
            "loss": loss.detach(), "ce_clean": ce_clean.detach() / k, "ce_adv": ce_adv.detach() / k,
            "acc": batch_accuracy(logits_clean, y),
            "acc_adv": batch_accuracy(logits_adv, y),
        }
        metrics.update({f"triplet_{key}": value for key, value in result.metrics().items()})
        return LossOutput(loss, metrics, x_adv=x_adv, logits_clean=logits_clean, logits_adv=logits_adv)

    def on_epoch_end(self, model: nn.Module, ctx) -> dict[str, float]:
        return {"train_eps": self.eps, "round": max(ctx.epoch - self.options.warmup_epochs + 1, 0)}
