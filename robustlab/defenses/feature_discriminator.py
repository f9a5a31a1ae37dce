"""A3T's feature discriminator (Erraqabi et al. 2018, §3.3; spec METHODS.md §5) as an add-on loss term.

A discriminator D branched off the layer ℓ of a :class:`~robustlab.models.split.FeatureSplit` learns to tell the
features of real inputs (t = 1) from those of adversarial inputs (t = 0); the encoder learns to fool it, which
pushes ``E(x_adv)`` towards ``E(x)``. The losses, the schedule of the D step and the composition with a host
defense are described in :mod:`robustlab.defenses.a3t`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call

from robustlab.config import AdamBetas, AttackOptions, AttackTable, Fraction, Sizes, attack_table
from robustlab.defenses.adversarial import training_attack
from robustlab.defenses.base import Batch, LossOutput, LossTerm, register_term
from robustlab.errors import ConfigError
from robustlab.models.split import FeatureSplit
from robustlab.modes import model_mode, statistics_frozen

class Discriminator(nn.Module):
    """D: ``in_features → [hidden → ReLU → Dropout]… → 1``; returns the logit of P(real | z), one per example.

    Default ``hidden = (128,)``, ``dropout = 0.5``: the paper's "shallow network with 128 hidden units, a ReLU
    activation and a 0.5-dropout". Inputs with more than two dimensions are flattened.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (128,), dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        width = int(in_features)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(), nn.Dropout(dropout)]
            width = int(h)
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(torch.flatten(z, 1)).squeeze(1)


def discriminator_loss(logit_clean: torch.Tensor, logit_adv: torch.Tensor) -> torch.Tensor:
    """L_D = −log D(z) − log(1 − D(z_adv)) (batch means), from logits."""
    return (F.binary_cross_entropy_with_logits(logit_clean, torch.ones_like(logit_clean))
            + F.binary_cross_entropy_with_logits(logit_adv, torch.zeros_like(logit_adv)))


class DiscriminatorSettings(AttackOptions):
    """What the ``feature_discriminator`` term and the ``a3t`` defense share: D, the split and the term's attack."""

    beta: float = Field(1.0, ge=0)  # weight of the encoder's adversarial term −β log D(E(x_adv)); 0: D observes
    layer: str = "features"  # "features", "encoder" (mlp_a3t: the paper's 256-d z) or a submodule name
    hidden: Sizes = Field(default_factory=lambda: [128])
    dropout: Fraction = 0.5
    d_steps: int = Field(1, ge=1)  # D updates per classifier update (paper: 1)
    encoder_term_dropout: bool = True  # D's dropout on in the encoder term [R]
    # [defense.attack]: crafts x_adv when the host has none (or adversary = "own"), and for val_d_acc_*; the paper:
    # FGSM at ε 0.25
    attack: AttackTable = attack_table("fgsm", 0.25)
    eval_subset: int = Field(500, ge=0)  # per-epoch D accuracy on this many test images (0: off)


class FeatureDiscriminatorOptions(DiscriminatorSettings):
    lr: float = Field(1e-3, gt=0)  # Adam, for D
    adam_betas: AdamBetas = Field(default_factory=lambda: [0.9, 0.999])
    adversary: Literal["host", "own"] = "host"


@register_term("feature_discriminator", FeatureDiscriminatorOptions)
class FeatureDiscriminatorTerm(LossTerm):
    """The A3T discriminator as an add-on term: one D step per batch, then −β log D(E(x_adv)) for the encoder."""

    def __init__(self, options: FeatureDiscriminatorOptions):
        o = options
        super().__init__(options)
        try:
            self.attack = training_attack(o.attack, o.attack.eps)
        except ValueError as exc:
            raise ConfigError(f"defense.attack: {exc}") from None
        self.disc: Discriminator | None = None
        self.opt: torch.optim.Optimizer | None = None

    # --- hooks -------------------------------------------------------------------------------------------------
    def setup(self, model: nn.Module, ctx) -> None:
        """Build D sized from the feature width at ``layer`` (one training example through the encoder)."""
        split = FeatureSplit(model, self.options.layer)
        probe = ctx.dataset.train_x[:1].to(ctx.device)
        with torch.no_grad(), model_mode(model, "eval"):
            width = split.encoder(probe)[0].numel()
        o = self.options
        self.disc = Discriminator(width, o.hidden, o.dropout).to(ctx.device)
        self.opt = torch.optim.Adam(self.disc.parameters(), lr=o.lr, betas=tuple(o.adam_betas))

    def aux_modules(self) -> dict[str, nn.Module]:
        return {"disc": self.disc} if self.disc is not None else {}

    def aux_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt} if self.opt is not None else {}

    def evaluate(self, model: nn.Module, ctx) -> dict[str, float]:
        """D's accuracy on clean and adversarial features of the first ``eval_subset`` test images."""
        n = self.options.eval_subset
        if not n or self.disc is None:
            return {}
        split = FeatureSplit(model, self.options.layer)
        hits_clean = hits_adv = seen = 0
        x_all, y_all = ctx.dataset.test_x[:n], ctx.dataset.test_y[:n]
        for start in range(0, len(x_all), 500):
            x = x_all[start:start + 500].to(ctx.device)
            y = y_all[start:start + 500].to(ctx.device)
            x_adv = self.attack(model, x, y)
            with torch.no_grad(), model_mode(model, "eval"), model_mode(self.disc, "eval"):
                hits_clean += (self.disc(split.encoder(x).float()) > 0).sum().item()
                hits_adv += (self.disc(split.encoder(x_adv).float()) < 0).sum().item()
            seen += len(x)
        if not seen:
            return {}
        return {"val_d_acc_clean": round(hits_clean / seen, 6), "val_d_acc_adv": round(hits_adv / seen, 6)}

    # --- the per-batch work --------------------------------------------------------------------------------------
    def craft(self, model: nn.Module, batch: Batch, ctx) -> torch.Tensor | None:
        """The term's own x_adv when the host has none (standard training, warm-up) or ``adversary = "own"``."""
        if self.options.adversary == "own" or batch.x_adv is None:
            return self.attack(model, batch.x, batch.y)
        return None

    def adversarial_input(self, batch: Batch) -> torch.Tensor:
        return batch.term_x_adv.get(self, batch.x_adv)

    def update_auxiliaries(self, model: nn.Module, batch: Batch, ctx) -> dict[str, torch.Tensor]:
        """``d_steps`` D steps on E(x) vs E(x_adv) of this batch, the features taken in the model's training mode
        (its batch-norm statistics untouched by this extra pass)."""
        split = FeatureSplit(model, self.options.layer)
        with torch.no_grad(), statistics_frozen(model):
            z_clean, z_adv = split.encoder(batch.x), split.encoder(self.adversarial_input(batch))
        return self.discriminator_step(z_clean, z_adv)

    def term(self, model: nn.Module, batch: Batch, out: LossOutput, ctx
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """β·(−log D(E(x_adv))) for the encoder, on the host's E(x_adv) where its loss computed it at this layer."""
        o = self.options
        if o.beta == 0:
            return torch.zeros((), device=batch.x.device), {}
        x_adv = self.adversarial_input(batch)
        if out.split_features is not None and out.split_features[0] == o.layer and x_adv is batch.x_adv:
            z_adv = out.split_features[2]
        else:
            z_adv = FeatureSplit(model, o.layer).encoder(x_adv)
        enc = self.encoder_loss(z_adv)
        return o.beta * enc, {"enc_loss": enc.detach()}

    def discriminator_step(self, z_clean: torch.Tensor, z_adv: torch.Tensor) -> dict[str, torch.Tensor]:
        """``d_steps`` Adam steps on L_D with detached features (nothing reaches the model); returns metrics
        from the first step's forward pass."""
        zc, za = z_clean.detach().float(), z_adv.detach().float()
        metrics: dict[str, torch.Tensor] = {}
        self.disc.train()
        with torch.autocast(zc.device.type, enabled=False), torch.enable_grad():
            for i in range(self.options.d_steps):
                logit_clean, logit_adv = self.disc(zc), self.disc(za)
                loss = discriminator_loss(logit_clean, logit_adv)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                if i == 0:
                    metrics = {"d_loss": loss.detach(),
                               "d_acc_clean": (logit_clean.detach() > 0).float().mean(),
                               "d_acc_adv": (logit_adv.detach() < 0).float().mean()}
        return metrics

    def encoder_loss(self, z_adv: torch.Tensor) -> torch.Tensor:
        """−log D(E(x_adv)) (batch mean, without β), with D's parameters detached: differentiable in z only."""
        params = {name: p.detach() for name, p in self.disc.named_parameters()}
        mode = "train" if self.options.encoder_term_dropout else "eval"
        with torch.autocast(z_adv.device.type, enabled=False), model_mode(self.disc, mode):
            logit = functional_call(self.disc, params, (z_adv.float(),))
        return F.softplus(-logit).mean()  # −log σ(logit)
