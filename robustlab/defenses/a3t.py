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

  *Where the D step happens.* The engine calls ``before_step`` before the host defense's ``loss``, but the host
  crafts x_adv inside ``loss``. Crafting x_adv in ``before_step`` would need every host to learn to reuse it, so
  the D step runs at the start of :meth:`FeatureDiscriminatorTerm.term` instead: ``term`` is called after the
  host's ``loss`` and before the engine's backward and optimiser step, so the model is still the pre-update
  model, and the D step and the classifier step see the same x_adv (the host's ``out.x_adv``). The D step uses
  its own optimiser and a backward on detached features (nothing reaches the model's ``.grad``), and the
  classifier's backward reaches no D parameter (see L_enc), so neither step disturbs the other.

* **Composition**: :class:`FeatureDiscriminatorTerm` is the registered add-on term ``feature_discriminator``
  (``[[defense.terms]]``): it reuses the host's x_adv (``pgd_at``, ``fgsm_at``, ...) and crafts its own with its
  ``attack`` / ``eps`` when the host has none (``standard``, warm-up epochs) or when ``adversary = "own"``.
  The defense ``a3t`` is the α/β classification loss plus that term (built from the same options), and hands the
  term the features of its own forward passes, so the features D sees are exactly those the classifier used.

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

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from robustlab.attacks import FGSM, PGD, Attack
from robustlab.attacks.base import model_mode
from robustlab.defenses.base import Defense, LossOutput, LossTerm, register_defense, register_term
from robustlab.errors import ConfigError

SPECIAL_LAYERS = ("features", "encoder")


# --- the encoder / residual split ---------------------------------------------------------------------------------
class _StopForward(Exception):
    """Raised by the capture hook to end a forward pass at the split layer."""


class FeatureSplit:
    """Split ``model`` into encoder E and residual R at ``layer`` (``R(E(x)) == model(x)``).

    ``"features"``: E = ``model.features``, R = ``model.head``. ``"encoder"``: E = ``model.encoder``,
    R = ``model.residual`` (``mlp_a3t``). Any other string names a submodule (``model.get_submodule``): E(x) is
    that module's output, and the forward pass stops there; R needs x as well (:meth:`residual`).
    """

    def __init__(self, model: nn.Module, layer: str = "features"):
        self.model = model
        self.layer = layer
        self.module: nn.Module | None = None
        if layer == "features":
            if not (callable(getattr(model, "features", None)) and callable(getattr(model, "head", None))):
                raise ConfigError(f"layer 'features' needs a model with features() and head(); "
                                  f"{type(model).__name__} has none")
        elif layer == "encoder":
            if not (callable(getattr(model, "encoder", None)) and callable(getattr(model, "residual", None))):
                raise ConfigError(f"layer 'encoder' needs a model with encoder() and residual() (mlp_a3t); "
                                  f"{type(model).__name__} has none: use 'features' or a submodule name "
                                  f"({', '.join(module_names(model)[:12])}, ...)")
        else:
            try:
                self.module = model.get_submodule(layer)
            except AttributeError:
                names = module_names(model)
                close = difflib.get_close_matches(layer, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"layer {layer!r}{hint} is neither 'features', 'encoder' nor a submodule of "
                                  f"{type(model).__name__}; submodules: {', '.join(names)}") from None

    def encoder(self, x: torch.Tensor) -> torch.Tensor:
        """z = E(x); for a named layer only the layers up to it run."""
        if self.layer == "features":
            return self.model.features(x)
        if self.layer == "encoder":
            return self.model.encoder(x)
        captured: list[torch.Tensor] = []

        def hook(_module, _inputs, output):
            captured.append(output)
            raise _StopForward

        handle = self.module.register_forward_hook(hook)
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return self._check(captured)

    def residual(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Logits R(z). For a named layer the model runs on ``x`` with that module's output replaced by z (the
        layers before it run but do not feed the logits, unless a skip connection bypasses the layer)."""
        if self.layer == "features":
            return self.model.head(z)
        if self.layer == "encoder":
            return self.model.residual(z)
        if x is None:
            raise ValueError(f"residual at the named layer {self.layer!r} needs the input x as well")
        calls = []

        def hook(_module, _inputs, output):
            calls.append(1)
            return z if len(calls) == 1 else output

        handle = self.module.register_forward_hook(hook)
        try:
            return self.model(x)
        finally:
            handle.remove()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E(x), f(x))`` from one forward pass."""
        if self.layer in SPECIAL_LAYERS:
            z = self.encoder(x)
            return z, self.residual(z)
        captured: list[torch.Tensor] = []

        def hook(_module, _inputs, output):
            captured.append(output)

        handle = self.module.register_forward_hook(hook)
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        return self._check(captured), logits

    def _check(self, captured: list) -> torch.Tensor:
        if not captured:
            raise ConfigError(f"layer {self.layer!r} is not called in {type(self.model).__name__}'s forward pass")
        if not isinstance(captured[0], torch.Tensor):
            raise ConfigError(f"layer {self.layer!r} returns {type(captured[0]).__name__}, not a tensor")
        return captured[0]


def module_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


# --- the discriminator ------------------------------------------------------------------------------------------
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


def make_training_attack(kind: str, eps: float, *, steps: int, step_size: float, random_start: bool,
                         model_mode: str) -> Attack:
    """FGSM (paper) or L∞ PGD (``step_size`` 0: 2.5·ε/steps) for crafting the training examples."""
    if kind == "fgsm":
        return FGSM(eps, model_mode=model_mode)
    return PGD(eps, steps=steps, step_size=step_size or None, random_start=random_start, early_stop=False,
               model_mode=model_mode)


def _check_attack_options(o, prefix: str) -> None:
    if o.eps < 0 or o.step_size < 0:
        raise ConfigError(f"{prefix}.eps and step_size must be >= 0")
    if o.steps < 1:
        raise ConfigError(f"{prefix}.steps must be >= 1, got {o.steps}")


# --- the add-on term --------------------------------------------------------------------------------------------
@dataclass
class FeatureDiscriminatorOptions:
    beta: float = 1.0  # weight of the encoder's adversarial term −β log D(E(x_adv)); 0: D only observes
    layer: str = "features"  # "features", "encoder" (mlp_a3t) or a submodule name
    hidden: list[int] = field(default_factory=lambda: [128])
    dropout: float = 0.5
    lr: float = 1e-3  # Adam, for D
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    d_steps: int = 1  # D updates per classifier update (paper: 1)
    encoder_term_dropout: bool = True  # D's dropout on in the encoder term [R]
    adversary: str = field(default="host", metadata={"choices": ("host", "own")})
    # The term's own attack: crafts x_adv when the host has none (or adversary = "own"), and for val_d_acc_*.
    attack: str = field(default="fgsm", metadata={"choices": ("fgsm", "pgd")})
    eps: float = 0.25
    steps: int = 7  # PGD only
    step_size: float = 0.0  # PGD only; 0: 2.5·ε/steps
    random_start: bool = True  # PGD only
    attack_mode: str = field(default="eval", metadata={"choices": ("eval", "train")})
    eval_subset: int = 500  # per-epoch D accuracy on this many test images (0: off)


@register_term("feature_discriminator", FeatureDiscriminatorOptions)
class FeatureDiscriminatorTerm(LossTerm):
    """The A3T discriminator as an add-on term: one D step per batch, then −β log D(E(x_adv)) for the encoder."""

    def __init__(self, options: FeatureDiscriminatorOptions):
        o = options
        prefix = "defense.terms.feature_discriminator"
        if o.beta < 0:
            raise ConfigError(f"{prefix}.beta must be >= 0, got {o.beta}")
        if not 0 <= o.dropout < 1:
            raise ConfigError(f"{prefix}.dropout must be in [0, 1), got {o.dropout}")
        if o.lr <= 0 or len(o.adam_betas) != 2 or not all(0 <= b < 1 for b in o.adam_betas):
            raise ConfigError(f"{prefix}: lr must be > 0 and adam_betas two numbers in [0, 1)")
        if any(h < 1 for h in o.hidden):
            raise ConfigError(f"{prefix}.hidden sizes must be >= 1, got {o.hidden}")
        if o.d_steps < 1 or o.eval_subset < 0:
            raise ConfigError(f"{prefix}.d_steps must be >= 1 and eval_subset >= 0")
        _check_attack_options(o, prefix)
        super().__init__(options)
        self.attack = make_training_attack(o.attack, o.eps, steps=o.steps, step_size=o.step_size,
                                           random_start=o.random_start, model_mode=o.attack_mode)
        self.disc: Discriminator | None = None
        self.opt: torch.optim.Optimizer | None = None
        self._provided: tuple | None = None

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

    def on_epoch_end(self, model: nn.Module, ctx) -> dict[str, float]:
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
    def provide_features(self, x: torch.Tensor, x_adv: torch.Tensor, z_clean: torch.Tensor,
                         z_adv: torch.Tensor) -> None:
        """Let a host that already computed E(x) and E(x_adv) (the ``a3t`` defense) hand them over; used by the
        next :meth:`term` call for the same ``x`` and ``x_adv`` objects, recomputed otherwise."""
        self._provided = (x, x_adv, z_clean, z_adv)

    def term(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: LossOutput, ctx
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        o = self.options
        provided, self._provided = self._provided, None
        x_adv = out.x_adv if o.adversary == "host" and out.x_adv is not None else self.attack(model, x, y)
        if provided is not None and provided[0] is x and provided[1] is x_adv:
            z_clean, z_adv = provided[2], provided[3]
        else:
            split = FeatureSplit(model, o.layer)
            with torch.no_grad():
                z_clean = split.encoder(x)
            with torch.set_grad_enabled(o.beta > 0 and torch.is_grad_enabled()):
                z_adv = split.encoder(x_adv)
        metrics = self.discriminator_step(z_clean, z_adv)
        if o.beta == 0:
            return torch.zeros((), device=x.device), metrics
        enc = self.encoder_loss(z_adv)
        metrics["enc_loss"] = enc.detach()
        return o.beta * enc, metrics

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


# --- the defense ------------------------------------------------------------------------------------------------
@dataclass
class A3TOptions:
    alpha: float = 0.5  # weight of CE(x); 1 − α of CE(x_adv)
    beta: float = 1.0  # weight of −log D(E(x_adv)) for the encoder
    attack: str = field(default="fgsm", metadata={"choices": ("fgsm", "pgd")})
    eps: float = 0.25
    steps: int = 7  # PGD only
    step_size: float = 0.0  # PGD only; 0: 2.5·ε/steps
    random_start: bool = True  # PGD only
    attack_mode: str = field(default="eval", metadata={"choices": ("eval", "train")})
    layer: str = "features"  # the split: "features", "encoder" (mlp_a3t: the paper's 256-d z) or a submodule
    hidden: list[int] = field(default_factory=lambda: [128])
    dropout: float = 0.5
    d_lr: float = 1e-3
    d_steps: int = 1
    encoder_term_dropout: bool = True
    eval_subset: int = 500


@register_defense("a3t", A3TOptions)
class A3T(Defense):
    """α CE(f(x)) + (1 − α) CE(f(x_adv)) plus the ``feature_discriminator`` term with β (see the module doc)."""

    def __init__(self, options: A3TOptions, terms: list[LossTerm] | None = None):
        o = options
        if not 0 <= o.alpha <= 1:
            raise ConfigError(f"defense.alpha must be in [0, 1], got {o.alpha}")
        _check_attack_options(o, "defense")
        self.discriminator = FeatureDiscriminatorTerm(FeatureDiscriminatorOptions(
            beta=o.beta, layer=o.layer, hidden=list(o.hidden), dropout=o.dropout, lr=o.d_lr, d_steps=o.d_steps,
            encoder_term_dropout=o.encoder_term_dropout, adversary="host", attack=o.attack, eps=o.eps,
            steps=o.steps, step_size=o.step_size, random_start=o.random_start, attack_mode=o.attack_mode,
            eval_subset=o.eval_subset))
        super().__init__(options, [self.discriminator, *(terms or [])])
        self.attack = self.discriminator.attack

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx) -> LossOutput:
        o = self.options
        x_adv = self.attack(model, x, y)
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
        self.discriminator.provide_features(x, x_adv, z, z_adv)
        metrics = {"ce_clean": ce_clean.detach(), "ce_adv": ce_adv.detach(), "loss": loss.detach(),
                   "acc": logits.detach().argmax(1).eq(y).float().mean(),
                   "acc_adv": logits_adv.detach().argmax(1).eq(y).float().mean()}
        return LossOutput(loss, metrics, x_adv=x_adv, logits_clean=logits, logits_adv=logits_adv)


def a3t_variant(name: str) -> dict[str, float]:
    """α and β of the paper's four variants (Table 1)."""
    table = {"simple": {"alpha": 1.0, "beta": 0.0}, "at": {"alpha": 0.5, "beta": 0.0},
             "a2t": {"alpha": 1.0, "beta": 1.0}, "a3t": {"alpha": 0.5, "beta": 1.0}}
    if name not in table:
        raise ConfigError(f"unknown A3T variant {name!r}; one of {sorted(table)}")
    return dict(table[name])


__all__ = ["A3T", "A3TOptions", "Discriminator", "FeatureDiscriminatorOptions", "FeatureDiscriminatorTerm",
           "FeatureSplit", "a3t_variant", "discriminator_loss", "make_training_attack"]
