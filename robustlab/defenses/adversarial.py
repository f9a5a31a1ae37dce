"""Adversarial training with FGSM (AT²L paper eq. 1) and with PGD (Madry et al.; Learn2Perturb eq. 11).

Both minimise a weighted sum of the clean and the adversarial cross-entropy,
``w_clean·CE(f(x), y) + w_adv·CE(f(x_adv), y)``, with the adversarial examples crafted against the current model
(in eval mode by default, so dropout is off and batch-norm statistics are not updated by the attack).

* FGSM-AT, eq. (1): ``[Σ CE(x_i) + λ Σ CE(x_i^adv)] / ((1+λ) k)``, i.e. w_clean = 1/(1+λ), w_adv = λ/(1+λ).
Both take ``warmup_epochs`` of clean training first (Learn2Perturb starts PGD-AT at epoch 20 of 350) and
``eps_ramp_epochs`` over which ε grows linearly to its final value (a curriculum that keeps small-data runs from
stalling at chance accuracy at ε 0.3 on MNIST). The training attack is the nested table ``[defense.attack]``
(``name`` from the attack registry, ``eps``, ``model_mode`` and the attack's own options), over the defense's
default key by key::

    [defense]
    name = "pgd_at"
    eps_ramp_epochs = 2
    [defense.attack]      # default: PGD-7 at ε 0.3, step 2.5·ε/steps, random start
    eps = 0.1
    steps = 10

* PGD-AT: Madry's adversarial-only loss (``mix = "adversarial"``: w_clean = 0, w_adv = 1; no clean forward pass)
  or eq. (11) of Learn2Perturb (``mix = "weighted"``: w_clean = α, w_adv = β; the paper uses α = β = 0.5).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from robustlab.attacks import Attack
from robustlab.attacks.registry import build_training_attack
from robustlab.config import AttackOptions, AttackTable, attack_table
from robustlab.defenses.base import Batch, Defense, LossOutput, register_defense
from robustlab.defenses.standard import clean_loss
from robustlab.errors import ConfigError
from robustlab.predictions import batch_accuracy


def scheduled_eps(eps: float, epoch: int, clean_epochs: int, ramp_epochs: int) -> float:
    """The one ε schedule of training attacks: 0 for the first ``clean_epochs`` (0-based ``epoch``), then a linear
    ramp to ``eps`` over ``ramp_epochs`` epochs (0: ``eps`` at once)."""
    adversarial_epoch = epoch - clean_epochs
    if adversarial_epoch < 0:
        return 0.0
    if ramp_epochs <= 0:
        return eps
    return eps * min(1.0, (adversarial_epoch + 1) / ramp_epochs)


def mixed_adversarial_loss(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                           w_clean: float, w_adv: float) -> LossOutput:
    """``w_clean·CE(f(x), y) + w_adv·CE(f(x_adv), y)`` with batch-mean CE; skips the clean pass if w_clean = 0."""
    logits_adv = model(x_adv)
    ce_adv = F.cross_entropy(logits_adv, y)
    loss = w_adv * ce_adv
    metrics = {"ce_adv": ce_adv.detach(), "acc_adv": batch_accuracy(logits_adv, y)}
    logits_clean = None
    if w_clean > 0:
        logits_clean = model(x)
        ce_clean = F.cross_entropy(logits_clean, y)
        loss = loss + w_clean * ce_clean
        metrics["ce_clean"] = ce_clean.detach()
        metrics["acc"] = batch_accuracy(logits_clean, y)
    metrics["loss"] = loss.detach()
    return LossOutput(loss, metrics, x_adv=x_adv, logits_clean=logits_clean, logits_adv=logits_adv)


class AdversaryOptions(AttackOptions):
    """The training adversary, declared once for every adversarial-training defense: the attack as a nested
    ``[defense.attack]`` table built by the attack registry (each defense sets its default), the clean warm-up and
    the ε ramp."""

    warmup_epochs: int = Field(0, ge=0)    # clean epochs before the first adversarial one
    eps_ramp_epochs: int = Field(0, ge=0)  # ε grows linearly to attack.eps over this many adversarial epochs


def training_attack(table: AttackTable, eps: float) -> Attack:
    """The attack of a ``[defense.attack]`` table at ``eps``, every step taken (no early exit)."""
    return build_training_attack(table.name, eps, model_mode=table.model_mode, **table.options())


class AdversarialTraining(Defense):
    """Craft ``x_adv`` with :meth:`make_attack` at the epoch's ε (:func:`scheduled_eps`), then minimise
    :meth:`objective`; options derive from :class:`AdversaryOptions`."""

    attack: Attack

    def __init__(self, options, terms=None):
        super().__init__(options, terms)
        try:  # the training attack at its final ε must be valid now, not at the first adversarial epoch
            self.make_attack(options.attack.eps)
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"defense.attack: {exc}") from None

    def weights(self) -> tuple[float, float]:
        raise NotImplementedError

    def make_attack(self, eps: float) -> Attack:
        """The ``[defense.attack]`` at ``eps``, every step taken (no early exit), from the attack registry."""
        return training_attack(self.options.attack, eps)

    def epoch_eps(self, epoch: int) -> float:
        o = self.options
        return scheduled_eps(o.attack.eps, epoch, o.warmup_epochs, o.eps_ramp_epochs)

    def on_epoch_start(self, model: nn.Module, ctx) -> None:
        self.eps = self.epoch_eps(ctx.epoch)
        self.attack = self.make_attack(self.eps)

    def on_epoch_end(self, model: nn.Module, ctx) -> dict[str, float]:
        return {"train_eps": self.eps}

    def adversarial(self, ctx) -> bool:
        """Whether this epoch trains on adversarial examples (False during the clean warm-up)."""
        return ctx.epoch >= self.options.warmup_epochs

    def craft(self, model: nn.Module, batch: Batch, ctx) -> torch.Tensor | None:
        return self.adversarial_examples(model, batch.x, batch.y) if self.adversarial(ctx) else None

    def adversarial_examples(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """This epoch's attack on ``(x, y)`` against the current model."""
        return self.attack(model, x, y)

    def objective(self, model: nn.Module, batch: Batch, ctx) -> LossOutput:
        """The loss minimised on (x, x_adv); ``model`` may be any callable (AWP evaluates it at perturbed weights)."""
        w_clean, w_adv = self.weights()
        return mixed_adversarial_loss(model, batch.x, batch.x_adv, batch.y, w_clean, w_adv)

    def warmup_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> LossOutput:
        """The loss of the clean warm-up epochs."""
        return clean_loss(model, x, y)

    def loss(self, model: nn.Module, batch: Batch, ctx) -> LossOutput:
        if batch.x_adv is None:
            return self.warmup_loss(model, batch.x, batch.y)
        return self.objective(model, batch, ctx)


class FGSMATOptions(AdversaryOptions):
    attack: AttackTable = attack_table("fgsm", 0.3)
    lam: float = Field(1.0, ge=0)  # λ of eq. (1): weight of the adversarial term


@register_defense("fgsm_at", FGSMATOptions)
class FGSMAdversarialTraining(AdversarialTraining):
    """FGSM adversarial training with the normalised mixed loss of AT²L eq. (1) (Kurakin et al.)."""

    def weights(self) -> tuple[float, float]:
        lam = self.options.lam
        return 1.0 / (1.0 + lam), lam / (1.0 + lam)


class PGDATOptions(AdversaryOptions):
    mix: Literal["adversarial", "weighted"] = "adversarial"
    alpha: float = Field(0.5, ge=0)  # weight of the clean term when mix = "weighted" (Learn2Perturb eq. 11)
    beta: float = Field(0.5, ge=0)  # weight of the adversarial term when mix = "weighted"


@register_defense("pgd_at", PGDATOptions)
class PGDAdversarialTraining(AdversarialTraining):
    """Madry PGD-AT (adversarial-only) or the α/β clean/adversarial mix of Learn2Perturb eq. (11); the attack is
    PGD-7 at ε 0.3 (step 2.5·ε/steps, random start) unless ``[defense.attack]`` says otherwise."""

    def weights(self) -> tuple[float, float]:
        if self.options.mix == "adversarial":
            return 0.0, 1.0
        return self.options.alpha, self.options.beta


class PairedLogitsTraining(AdversarialTraining):
    """An objective on the clean and the adversarial logits (TRADES, MART): subclasses give :meth:`paired_loss`."""

    def paired_loss(self, logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, its named parts) on a batch's clean and adversarial logits."""
        raise NotImplementedError

    def objective(self, model: nn.Module, batch: Batch, ctx) -> LossOutput:
        logits_clean, logits_adv = model(batch.x), model(batch.x_adv)
        loss, parts = self.paired_loss(logits_clean, logits_adv, batch.y)
        metrics = {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()},
                   "acc": batch_accuracy(logits_clean, batch.y),
                   "acc_adv": batch_accuracy(logits_adv, batch.y)}
        return LossOutput(loss, metrics, x_adv=batch.x_adv, logits_clean=logits_clean, logits_adv=logits_adv)
