"""A3T: adversarially augmented adversarial training (Erraqabi et al. 2018; spec METHODS.md §5; no public code).

The classifier is split at a layer ℓ into an encoder E (layers 1…ℓ) and a residual R (the rest), so that
``R(E(x)) = f(x)``. A discriminator D branched off ℓ learns to tell the features of real inputs (t = 1) from
those of adversarial inputs (t = 0); the encoder learns to fool it, which pushes ``E(x_adv)`` towards ``E(x)``.

* **Split** (:class:`FeatureSplit`): ``layer = "features"`` (default; every registry model's ``features`` /
  ``head`` split), ``"encoder"`` (models with ``encoder`` / ``residual``: ``mlp_a3t``, whose encoder is hidden
  layers 1–2, the paper's split — the shipped configs use it), or the dotted name of any submodule
  (``"fc1"``, ``"conv.3"``, ``"layer2.0"``): the encoder output is that module's output, captured with a forward
  hook that stops the forward pass there, so only the layers before it run and receive gradient.
* **Discriminator** (:class:`Discriminator`): ``k → 128 → ReLU → Dropout 0.5 → 1`` by default (paper, Setup),
  ``k`` the (flattened) feature width read off one training example, so it fits any layer of any model.
* **Losses** (paper §3.3, spec §5), with ``σ(·)`` the logistic function and D's output a logit:

  - L_D   = −log D(E(x)) − log(1 − D(E(x_adv)))  (batch means), on *detached* features: it trains D only;
  - L_enc = −β log D(E(x_adv)) (batch mean): D's parameters enter it detached (``torch.func.functional_call``
    with ``p.detach()``), so its gradient reaches the encoder only — not D (whose ``.grad`` the engine never
    zeroes: the main backward must not leak into D's next step), and not the residual, which is not on the
    path from x to E(x);
  - L_cls = α CE(f(x), y) + (1 − α) CE(f(x_adv), y). The classifier minimises L_cls + L_enc.

* **Schedule** [R] (the paper: "at each iteration, we update the discriminator, and the classifier"): per batch,
  x_adv from the pre-update model (FGSM, ε 0.25 by default, PGD as an option), then one D step (Adam 1e-3) on
  the detached features of that batch, then one classifier step on L_cls + L_enc computed with the updated D.

  *Where the D step happens.* In the engine's order (DESIGN.md, ``defenses/base.py``): the adversary stage crafts
  x_adv, then the auxiliary updates run — the D step, on E(x) and E(x_adv) of this batch taken without gradient
  in the model's training mode (its batch-norm statistics restored after this extra pass) — then the host's loss
  and L_enc with the updated D. The D step uses its own optimiser and a backward on detached features (nothing
  reaches the model's ``.grad``), and the classifier's backward reaches no D parameter (see L_enc), so neither
  step disturbs the other.

* **Composition**: :class:`FeatureDiscriminatorTerm` is the registered add-on term ``feature_discriminator``
  (``[[defense.terms]]``): it reuses the host's x_adv (``pgd_at``, ``fgsm_at``, ...) and crafts its own with its
  ``attack`` / ``eps`` when the host has none (``standard``, warm-up epochs) or when ``adversary = "own"``.
  The defense ``a3t`` is the α/β classification loss plus that term (built from the same options); its loss
  returns E(x_adv) of its own forward pass (``LossOutput.split_features``), which L_enc reuses.

* **Variants** (configs ``configs/a3t/``): simple α 1 β 0; AT α ½ β 0; A2T α 1 β 1; A3T α ½ β 1. With β 0 the
  discriminator is still trained, as a passive observer of how separable the features are (it does not touch
  the classifier), so that every variant logs the discriminator accuracies of the paper's Figure 2.

Per batch the term logs ``d_loss``, ``d_acc_clean`` (fraction of real features with D > ½), ``d_acc_adv``
(fraction of adversarial features with D < ½; from the D forward before its update, dropout on) and ``enc_loss``
(−log D(E(x_adv)) before β); per epoch ``val_d_acc_clean`` / ``val_d_acc_adv`` on the first ``eval_subset``
test images (model and D in eval mode, x_adv from the term's own attack).

Resolutions [R] besides the schedule: D's dropout is active in the encoder term (``encoder_term_dropout``; as in
a GAN generator step with D in train mode); features of convolutional layers are flattened for D; with a
named-layer split of a model that calls the module more than once, the first call is the split point.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from robustlab.defenses.base import Batch, Defense, LossOutput, LossTerm, register_defense
from robustlab.defenses.feature_discriminator import (DiscriminatorSettings, FeatureDiscriminatorOptions,
                                                      FeatureDiscriminatorTerm)
from robustlab.models.split import FeatureSplit
from robustlab.predictions import batch_accuracy


# --- the defense ------------------------------------------------------------------------------------------------


class A3TOptions(DiscriminatorSettings):
    alpha: float = Field(0.5, ge=0, le=1)  # weight of CE(x); 1 − α of CE(x_adv)
    d_lr: float = Field(1e-3, gt=0)  # Adam, for D


@register_defense("a3t", A3TOptions)
class A3T(Defense):
    """α CE(f(x)) + (1 − α) CE(f(x_adv)) plus the ``feature_discriminator`` term with β (see the module doc)."""

    def __init__(self, options: A3TOptions, terms: list[LossTerm] | None = None):
        o = options
        shared = {name: copy.copy(getattr(o, name)) for name in DiscriminatorSettings.model_fields}
        self.discriminator = FeatureDiscriminatorTerm(FeatureDiscriminatorOptions(**shared, lr=o.d_lr,
                                                                                  adversary="host"))
        super().__init__(options, [self.discriminator, *(terms or [])])
        self.attack = self.discriminator.attack

    def craft(self, model: nn.Module, batch: Batch, ctx) -> torch.Tensor:
        return self.attack(model, batch.x, batch.y)

    def loss(self, model: nn.Module, batch: Batch, ctx) -> LossOutput:
        o, x, x_adv, y = self.options, batch.x, batch.x_adv, batch.y
        split = FeatureSplit(model, o.layer)
        grad = torch.is_grad_enabled()
        with torch.set_grad_enabled(grad and o.alpha > 0):
            z, logits = split.forward(x)
        with torch.set_grad_enabled(grad and (o.alpha < 1 or o.beta > 0)):
            z_adv, logits_adv = split.forward(x_adv)
        ce_clean = F.cross_entropy(logits, y)
        ce_adv = F.cross_entropy(logits_adv, y)
        if o.alpha == 1:
            loss = ce_clean
        elif o.alpha == 0:
            loss = ce_adv
        else:
            loss = o.alpha * ce_clean + (1 - o.alpha) * ce_adv
        metrics = {"ce_clean": ce_clean.detach(), "ce_adv": ce_adv.detach(), "loss": loss.detach(),
                   "acc": batch_accuracy(logits, y),
                   "acc_adv": batch_accuracy(logits_adv, y)}
        return LossOutput(loss, metrics, x_adv=x_adv, logits_clean=logits, logits_adv=logits_adv,
                          split_features=(o.layer, z, z_adv))
