"""Adversary critic defense (Matyasko & Chau 2018, "Improved network robustness with adversary critic"; spec §2).

A critic D (:class:`~robustlab.models.critic.AdversaryCritic`) learns to tell real pairs (x, y) from adversarial
pairs (x̂, ŷ), x̂ = A_f(x) the classifier's own differentiable high-confidence attack
(:mod:`robustlab.attacks.critic_unrolled`), ŷ = argmax f(x̂). The classifier learns to make its adversarial
examples look real to D, i.e. to need perturbations that really change the class.

Per batch (the engine's adversary stage ``craft``, then ``update_auxiliaries``, then ``loss``; the schedule of
the reference code):

1. ``craft``: clean logits → running confidence m updated (:class:`RunningConfidence`, [R] before the attack
   reads it); t = closest boundary from the predicted label; x̂ = A_f(x) with C = m[t], its graph to the weights
   kept for step 3 (the model does not change before then, so the critic step sees the same x̂, detached);
2. ``update_auxiliaries``: ŷ = argmax f(x̂), then ``critic_steps`` (1) critic Adam steps (lr 1e-3, β1 0.5) on
   (:func:`~robustlab.defenses.critic_losses.critic_loss`) L_D = BCE(D(x)_y, 1) + BCE(D(x̂)_ŷ, 0) + λ_grad·[mean(‖∇ₓD(x)_y‖ − 1)² + mean(‖∇_x̂ D(x̂)_ŷ‖ − 1)²],
   the gradient penalty at the real and at the adversarial points separately (no interpolation);
3. the classifier loss (paper eqs. 3, 6), M = {i : argmax f(x̂_i) ≠ argmax f(x_i)}:
   L_f = CE(f(x), y) + λ·mean_M BCE(D(x̂)_ŷ, 1) + λ_rec·mean_M ‖x − x_rec‖₂² (``cycle = "squared"``, the code) or
   ‖x − x_rec‖₂ (``"l2"``, the paper's eq. 6) [R], x_rec = A_f(stopgrad(x̂)) toward argmax f(x) with per-example
   C = max softmax f(x) (detached) [R]. x̂ and x_rec keep their graph: the gradient reaches the weights through the
   attacks (second order). D's parameters enter L_f detached, so the main backward never touches D. Empty M: the
   two terms are 0.

Pretraining (``warmup_epochs`` = 1): CE + ``pretrain_weight_decay``·½Σ‖W‖² over the weight matrices of every layer
but the output layer (the last ``nn.Linear``, [R]); m is updated there too, so the attack starts from an estimate.
The critic's learning rate follows the classifier's schedule (halved every 40 epochs in the paper) [R].
D's noise layers are on in both steps (train mode). m is saved in the checkpoint (``extra_state``): resume is exact.
D starts He-normal with zero biases (``critic_init``, the authors' code). Go/no-go: after epoch ``go_no_go_epoch``
(6) the log says whether D's mean accuracy on adversarial pairs that epoch reached ``go_no_go_accuracy`` (0.65);
below it, D has not learned and the method is not being exercised (raise ``critic_steps``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call

from robustlab.attacks.critic_unrolled import RunningConfidence, training_target, unrolled_high_confidence_attack
from robustlab.attacks.perturbation import flat_norm
from robustlab.config import AdamBetas, Fraction, Options, Sizes
from robustlab.defenses.base import Batch, Defense, LossOutput, register_defense
from robustlab.defenses.critic_losses import critic_loss, cycle_distance, hidden_weight_decay, output_layer
from robustlab.distributed import sum_over_processes
from robustlab.models.critic import INITS, AdversaryCritic
from robustlab.predictions import batch_accuracy


class AdversaryCriticOptions(Options):
    lam: float = Field(0.5, ge=0)  # λ: weight of the critic term (paper: 0.5 FC, 0.1 LeNet-5)
    lam_rec: float = Field(0.01, ge=0)  # λ_rec: cycle-consistency weight
    lam_grad: float = Field(10.0, ge=0)  # λ_grad: gradient-penalty weight in the critic loss
    cycle: Literal["squared", "l2"] = "squared"  # code / paper eq. (6) [R]
    steps: int = Field(5, ge=1)  # N unrolled attack steps
    overshoot: float = Field(0.05, ge=0)
    attack_eps: float = Field(1e-8, gt=0)
    confidence_momentum: Fraction = 0.5  # running-mean momentum μ [R]
    warmup_epochs: int = Field(1, ge=0)
    pretrain_weight_decay: float = Field(5e-6, ge=0)
    critic_lr: float = Field(1e-3, gt=0)
    critic_betas: AdamBetas = Field(default_factory=lambda: [0.5, 0.999])
    critic_hidden: Sizes = Field(default_factory=lambda: [1200, 1200])
    critic_input_noise: float = Field(0.1, ge=0)
    critic_hidden_noise: float = Field(0.5, ge=0)
    critic_negative_slope: float = Field(0.2, ge=0)
    critic_init: Literal[INITS] = "he_normal"  # the authors' code; or torch_default
    critic_steps: int = Field(1, ge=1)  # critic updates per classifier step, on the same (x, x̂) [R]
    go_no_go_epoch: int = Field(6, ge=0)  # after this epoch: is the critic learning? (0: no check)
    go_no_go_accuracy: float = Field(0.65, ge=0)  # ... its mean accuracy on adversarial pairs must reach this


@register_defense("adversary_critic", AdversaryCriticOptions)
class AdversaryCriticDefense(Defense):
    """x̂ in ``craft``, critic steps in ``update_auxiliaries``, the classifier loss in ``loss`` (module docstring)."""

    def __init__(self, options: AdversaryCriticOptions, terms=None):
        super().__init__(options, terms)
        self.critic: AdversaryCritic | None = None
        self.critic_opt: torch.optim.Optimizer | None = None
        self.confidence: RunningConfidence | None = None
        self._adv_accuracy = [0.0, 0]  # this epoch's sum of critic_acc_adv over batches, and the batch count

    # --- state ---------------------------------------------------------------------------------------------------
    def setup(self, model: nn.Module, ctx) -> None:
        o, data = self.options, ctx.dataset
        self.critic = AdversaryCritic(data.train_x[0].numel(), data.num_classes, o.critic_hidden,
                                      o.critic_input_noise, o.critic_hidden_noise, o.critic_negative_slope,
                                      o.critic_init).to(ctx.device)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=o.critic_lr, betas=tuple(o.critic_betas))
        self.confidence = RunningConfidence(data.num_classes, o.confidence_momentum)
        output_layer(model)  # fail early on a model without one

    def aux_modules(self) -> dict[str, nn.Module]:
        return {"critic": self.critic} if self.critic is not None else {}

    def aux_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic_opt": self.critic_opt} if self.critic_opt is not None else {}

    def extra_state(self) -> dict:
        return {"confidence": self.confidence.state_dict()["mean"]} if self.confidence is not None else {}

    def load_extra_state(self, state: dict) -> None:
        if "confidence" in state:
            self.confidence.load_state_dict({"mean": state["confidence"]})

    def on_epoch_start(self, model: nn.Module, ctx) -> None:
        factor = ctx.lr_factor
        for group in self.critic_opt.param_groups:
            group["lr"] = self.options.critic_lr * factor

    def on_epoch_end(self, model: nn.Module, ctx) -> dict[str, float]:
        out = {"confidence_mean": round(float(self.confidence.mean.mean()), 6)}
        total, batches = self._adv_accuracy
        self._adv_accuracy = [0.0, 0]
        total = float(total)
        o = self.options
        if o.go_no_go_epoch and ctx.epoch + 1 == o.go_no_go_epoch and batches:
            accuracy = total / batches
            out["critic_go"] = float(accuracy >= o.go_no_go_accuracy)
            if accuracy >= o.go_no_go_accuracy:
                ctx.log(f"critic go: after epoch {ctx.epoch + 1} its accuracy on adversarial pairs is "
                        f"{accuracy:.2f} (>= {o.go_no_go_accuracy}): the critic is learning")
            else:
                ctx.log(f"critic NO-GO: after epoch {ctx.epoch + 1} its accuracy on adversarial pairs is only "
                        f"{accuracy:.2f} (< {o.go_no_go_accuracy}): the critic has not learned, so the method is "
                        f"not being exercised; raise defense.critic_steps (now {o.critic_steps})")
        return out

    def pretraining(self, ctx) -> bool:
        return ctx.epoch < self.options.warmup_epochs

    # --- per batch -----------------------------------------------------------------------------------------------
    def craft(self, model: nn.Module, batch: Batch, ctx) -> torch.Tensor | None:
        """Update m; unless pretraining: x̂ = A_f(x), its graph kept (the classifier's loss differentiates it)."""
        if self.pretraining(ctx):
            with torch.no_grad():
                self.confidence.update(model(batch.x), reduce=sum_over_processes)
            return None
        target, logits = training_target(model, batch.x)
        self.confidence.update(logits, reduce=sum_over_processes)
        o = self.options
        return unrolled_high_confidence_attack(model, batch.x, target, self.confidence[target], steps=o.steps,
                                               overshoot=o.overshoot, eps=o.attack_eps, differentiable=True)

    def update_auxiliaries(self, model: nn.Module, batch: Batch, ctx) -> dict[str, torch.Tensor]:
        """ŷ = f(x̂) and ``critic_steps`` critic steps on (x, y) vs (x̂, ŷ)."""
        if batch.x_adv is None:
            return {}
        x, x_hat, o = batch.x, batch.x_adv, self.options
        with torch.no_grad():
            batch.y_adv = model(x_hat).argmax(1)
        self.critic.train()
        for _ in range(o.critic_steps):
            loss, metrics = critic_loss(self.critic, x, batch.y, x_hat.detach(), batch.y_adv, o.lam_grad)
            self.critic_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.critic_opt.step()
        self._adv_accuracy[0] += metrics["critic_acc_adv"]  # a tensor: no device sync per batch
        self._adv_accuracy[1] += 1
        metrics["rho_adv"] = (flat_norm(x_hat.detach() - x) / flat_norm(x).clamp_min(1e-12)).mean()
        return metrics

    def critic_logit_for_classifier(self, x_hat: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        """D(x̂)_ŷ with D's parameters detached: its gradient reaches x̂ (and through it f) only."""
        params = {name: p.detach() for name, p in self.critic.named_parameters()}
        return functional_call(self.critic, params, (x_hat, y_hat))

    def loss(self, model: nn.Module, batch: Batch, ctx) -> LossOutput:
        o, x, y = self.options, batch.x, batch.y
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        metrics = {"ce": ce.detach(), "acc": batch_accuracy(logits, y)}
        if batch.x_adv is None:
            loss = ce + o.pretrain_weight_decay * hidden_weight_decay(model)
            metrics["loss"] = loss.detach()
            return LossOutput(loss, metrics, logits_clean=logits)
        x_hat, y_hat = batch.x_adv, batch.y_adv
        predicted = logits.detach().argmax(1)
        fooled = y_hat.ne(predicted)
        metrics["fooled"] = fooled.float().mean()
        adv_term = rec_term = torch.zeros((), dtype=logits.dtype, device=x.device)
        if fooled.any():
            z = self.critic_logit_for_classifier(x_hat[fooled], y_hat[fooled])
            adv_term = F.binary_cross_entropy_with_logits(z, torch.ones_like(z))
            confidence = F.softmax(logits.detach()[fooled], dim=1).amax(1)
            x_rec = unrolled_high_confidence_attack(model, x_hat[fooled].detach(), predicted[fooled], confidence,
                                                    steps=o.steps, overshoot=o.overshoot, eps=o.attack_eps)
            rec_term = cycle_distance(x[fooled], x_rec, o.cycle == "squared").mean()
        loss = ce + o.lam * adv_term + o.lam_rec * rec_term
        metrics.update({"adv_term": adv_term.detach(), "rec_term": rec_term.detach(), "loss": loss.detach()})
        return LossOutput(loss, metrics, x_adv=x_hat, logits_clean=logits)


__all__ = ["AdversaryCriticDefense", "AdversaryCriticOptions"]
