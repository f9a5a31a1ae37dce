"""Adversarial training of a model with learnable noise (Learn2Perturb θ, PNI α): what L2P and PNI share.

The loss is PGD-AT's (``defenses/adversarial.py``: clean warm-up for ``warmup_epochs``, then eq. 11 of
Learn2Perturb, α·CE(x) + β·CE(x') with α = β = 0.5 by default). On top of it:

* the noise parameters are left out of the main optimiser (which carries the weight decay) and get their own
  SGD (``noise_lr``, 0: the run's ``optim.lr``; ``noise_momentum``, ``noise_nesterov``; no weight decay; its
  learning rate follows the run's schedule when ``noise_schedule``), stepped in ``after_backward`` on the
  gradient of the same loss (spec §4 step 3), and checkpointed by the engine as an auxiliary optimiser;
* the noise is switched off before ``noise_start_epoch`` (Learn2Perturb's code: noise from epoch 10, PGD-AT
  from epoch 20) and on from then on (:class:`robustlab.models.noise.noise_enabled`);
* ``labels``: the training attack ascends the loss of the true labels (the paper, default) or of the model's
  predictions (``"predicted"``, the reference code) [R]; the cross-entropy always uses the true labels;
* fp16 AMP is refused (the noise optimiser does not see the loss scaler); bf16 and fp32 work;
* per epoch the mean (and min/max) of the noise parameters goes to the JSONL log.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from robustlab.config import AttackTable, Fraction, attack_table
from robustlab.defenses.adversarial import PGDAdversarialTraining, PGDATOptions
from robustlab.errors import ConfigError
from robustlab.models.noise import mean_of, noise_enabled
from robustlab.modes import model_mode


class NoisyATOptions(PGDATOptions):
    attack: AttackTable = attack_table("pgd", 8 / 255, steps=7, step_size=0.01)  # Learn2Perturb's PGD-7
    mix: Literal["adversarial", "weighted"] = "weighted"
    noise_start_epoch: int = Field(0, ge=0)
    noise_lr: float = Field(0.0, ge=0)  # 0: the run's optim.lr
    noise_momentum: Fraction = 0.9
    noise_nesterov: bool = True
    noise_schedule: bool = True  # the noise optimiser's lr follows the run's lr schedule
    labels: Literal["true", "predicted"] = "true"


class NoisyAdversarialTraining(PGDAdversarialTraining):
    """PGD-AT with a separate optimiser for the model's noise parameters; subclasses say which they are."""

    noise_label = "noise"  # prefix of the logged statistics

    def __init__(self, options: NoisyATOptions, terms=None):
        super().__init__(options, terms)
        self.noise_params: list[nn.Parameter] = []
        self.noise_opt: torch.optim.Optimizer | None = None
        self.noise_base_lr = 0.0

    def noise_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        raise NotImplementedError

    def missing_noise_hint(self) -> str:
        raise NotImplementedError

    # --- setup --------------------------------------------------------------------------------------------------
    def setup(self, model: nn.Module, ctx) -> None:
        self.noise_params = self.noise_parameters(model)
        if not self.noise_params:
            raise ConfigError(f"defense {self.name!r} needs a model with noise parameters: {self.missing_noise_hint()}")
        if ctx.amp_dtype == torch.float16:  # the noise gradients would stay multiplied by the loss scale
            raise ConfigError(f"defense {self.name!r} does not support fp16 AMP (use run.amp = 'bf16' or 'off')")
        o = self.options
        self.noise_base_lr = o.noise_lr or ctx.base_lr
        self.noise_opt = torch.optim.SGD(self.noise_params, lr=self.noise_base_lr, momentum=o.noise_momentum,
                                         nesterov=o.noise_nesterov and o.noise_momentum > 0, weight_decay=0.0)

    def trainable_parameters(self, model: nn.Module):
        noise = {id(p) for p in self.noise_parameters(model)}
        return [p for p in model.parameters() if id(p) not in noise]

    def aux_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"noise_opt": self.noise_opt} if self.noise_opt is not None else {}

    # --- per epoch ----------------------------------------------------------------------------------------------
    def noise_on(self, epoch: int) -> bool:
        return epoch >= self.options.noise_start_epoch

    def on_epoch_start(self, model: nn.Module, ctx) -> None:
        super().on_epoch_start(model, ctx)
        noise_enabled(model, self.noise_on(ctx.epoch))
        factor = ctx.lr_factor if self.options.noise_schedule else 1
        for group in self.noise_opt.param_groups:
            group["lr"] = self.noise_base_lr * factor

    def on_epoch_end(self, model: nn.Module, ctx) -> dict[str, float]:
        row = dict(super().on_epoch_end(model, ctx))
        p = self.noise_params
        row[f"{self.noise_label}_mean"] = round(mean_of(p), 6)
        row[f"{self.noise_label}_min"] = round(min(t.detach().min().item() for t in p), 6)
        row[f"{self.noise_label}_max"] = round(max(t.detach().max().item() for t in p), 6)
        for i, t in enumerate(p):  # per layer (injection point): how far the learned noise moved, and its spread
            row[f"{self.noise_label}_{i}_mean"] = round(t.detach().mean().item(), 6)
            row[f"{self.noise_label}_{i}_std"] = round(t.detach().std(unbiased=False).item(), 6)
        row["noise_on"] = float(self.noise_on(ctx.epoch))
        return row

    # --- per batch ----------------------------------------------------------------------------------------------
    def update_auxiliaries(self, model: nn.Module, batch, ctx) -> dict[str, torch.Tensor]:
        self.noise_opt.zero_grad(set_to_none=True)  # the main backward must start from empty noise gradients
        return {}

    def adversarial_examples(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = y
        if self.options.labels == "predicted":
            with torch.no_grad(), model_mode(model, self.options.attack.model_mode):  # as the attack sees the model
                target = model(x).argmax(1)
        return self.attack(model, x, target)

    def steps_noise_on_loss(self) -> bool:
        """Whether the loss gradient moves the noise parameters (False for Learn2Perturb-R)."""
        return True

    def after_backward(self, ctx) -> None:
        if self.noise_on(ctx.epoch) and self.steps_noise_on_loss():
            self.noise_opt.step()
        self.noise_opt.zero_grad(set_to_none=True)


__all__ = ["NoisyATOptions", "NoisyAdversarialTraining"]
