"""Noise that stays on at inference: Learn2Perturb feature noise and PNI weight noise (spec METHODS.md §4).

* **Learn2Perturb** (:class:`PerturbationInjection`): ``out ← out + θ ⊙ ε``, ε ~ N(0, I), one learnable θ per
  element of the feature map (shape C×H×W, read off a dummy forward pass [R]), θ₀ = 0.25. Each example draws its
  own ε by default (the paper: "each feature independently") [R]; ``shared_draw = True`` draws one ε for the whole
  batch, as the reference code does.
* **PNI** (:class:`PNIConv2d`, :class:`PNILinear`; He et al. 2019, code elliothe/CVPR_2019_PNI): the layer
  computes with ``W̃ = W + α·η``, η ~ N(0, std(W)²) drawn without gradient (std over the whole weight tensor),
  α₀ = 0.25, α one scalar per layer (``"layer"``), per output channel (``"channel"``) or per weight
  (``"element"``). Every Conv2d and Linear layer gets it, as in the PNI code.

The noise ignores train/eval mode: it is the defense, so it is on whenever the model runs, unless switched off
with :class:`noise_enabled` (``noise_enabled(model, False)`` now, or ``with noise_enabled(model, False): ...``).

**Placement** (:func:`insert_perturbations`): ``"inject"`` replaces the ResNets' ``inject`` placeholders (after the
stem conv+BN before its ReLU, after every residual addition before the block's ReLU: the reference code's
placement); ``"conv"`` adds a module after every ``Conv2d`` (before its activation, the analogue for models without
placeholders, e.g. LeNet-5: after ``conv.0`` and ``conv.3``); ``"activation"`` after every ReLU module that follows
a convolution (after each conv+activation block); ``layers = [...]`` names the submodules explicitly. ``"auto"``:
``"inject"`` if the model has placeholders, else ``"conv"``. A module that is not a placeholder is wrapped as
:class:`InjectAfter` (``layer`` then ``noise``), so its weights move to ``<name>.layer.*``.

The registered model ``noisy`` builds any zoo model and adds the noise, so a checkpoint of a noisy model is
rebuilt, noise modules and all, from its ``[model]`` section before its weights are loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.models.base import RobustModel
from robustlab.models.layers import INJECT_ATTR, ModelConfigError, check_args, check_positive_float, injection_points
from robustlab.models.registry import build_model, register_model

PLACEMENTS = ("auto", "inject", "conv", "activation")
PNI_MODES = ("layer", "channel", "element")
NOISE_KINDS = ("l2p", "pni")


class NoiseSource(nn.Module):
    """A module whose forward pass draws noise while ``noise_on`` (independent of ``training``)."""

    noise_on: bool = True


# --- Learn2Perturb --------------------------------------------------------------------------------------------
class PerturbationInjection(NoiseSource):
    """``x + θ ⊙ ε`` with learnable θ of ``shape`` (C, H, W) initialised to ``theta0``; ε ~ N(0, I)."""

    def __init__(self, shape: Sequence[int], theta0: float = 0.25, shared_draw: bool = False):
        super().__init__()
        self.theta = nn.Parameter(torch.full(tuple(int(s) for s in shape), float(theta0)))
        self.shared_draw = bool(shared_draw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.noise_on:
            return x
        if x.shape[1:] != self.theta.shape:
            raise RuntimeError(f"PerturbationInjection: feature map {tuple(x.shape[1:])} does not match θ "
                               f"{tuple(self.theta.shape)} (θ is sized for the model's input shape)")
        if self.shared_draw:
            eps = torch.randn(self.theta.shape, device=x.device, dtype=x.dtype)
        else:
            eps = torch.randn_like(x)
        return x + self.theta.to(x.dtype) * eps

    def extra_repr(self) -> str:
        return f"shape={tuple(self.theta.shape)}, shared_draw={self.shared_draw}, noise_on={self.noise_on}"


class InjectAfter(nn.Module):
    """``noise(layer(x))``: places a noise module after a layer that is not an ``inject`` placeholder."""

    def __init__(self, layer: nn.Module, noise: nn.Module):
        super().__init__()
        self.layer = layer
        self.noise = noise

    def forward(self, *args, **kwargs):
        return self.noise(self.layer(*args, **kwargs))


def placement_targets(model: nn.Module, placement: str = "auto", layers: Sequence[str] = ()) -> list[str]:
    """Names of the submodules whose output gets noise (forward-definition order); see the module doc."""
    if layers:
        names = list(layers)
        known = dict(model.named_modules())
        for name in names:
            if not name or name not in known:
                raise ModelConfigError(f"noise layer {name!r} is not a submodule of {type(model).__name__}")
        return names
    if placement not in PLACEMENTS:
        raise ModelConfigError(f"noise placement must be one of {PLACEMENTS}, got {placement!r}")
    inject = injection_points(model)
    if placement == "inject" or (placement == "auto" and inject):
        if not inject:
            raise ModelConfigError(f"{type(model).__name__} has no 'inject' placeholders; use placement 'conv', "
                                   f"'activation' or name the layers")
        return inject
    named = [(n, m) for n, m in model.named_modules() if n]
    if placement in ("auto", "conv"):
        names = [n for n, m in named if isinstance(m, nn.Conv2d)]
    else:  # activation: the first ReLU after each convolution, in registration order
        names, after_conv = [], False
        for n, m in named:
            if isinstance(m, nn.Conv2d):
                after_conv = True
            elif after_conv and isinstance(m, nn.ReLU):
                names.append(n)
                after_conv = False
    if not names:
        raise ModelConfigError(f"placement {placement!r} finds no layer in {type(model).__name__}")
    return names


def output_shapes(model: nn.Module, names: Sequence[str], in_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of each named submodule on one zero input of ``in_shape`` (eval mode)."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name in names:
        def hook(_m, _inputs, output, name=name):
            shapes.setdefault(name, tuple(output.shape[1:]))
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), noise_enabled(model, False):
            model(torch.zeros(1, *in_shape, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in shapes]
    if missing:
        raise ModelConfigError(f"noise layers {missing} are not used in {type(model).__name__}'s forward pass")
    return shapes


def insert_perturbations(model: nn.Module, in_shape: Sequence[int], *, placement: str = "auto",
                         layers: Sequence[str] = (), theta0: float = 0.25, shared_draw: bool = False) -> list[str]:
    """Add a :class:`PerturbationInjection` after each target (in place); returns the target names."""
    if theta0 <= 0:
        raise ModelConfigError(f"theta0 must be > 0, got {theta0}")
    names = placement_targets(model, placement, layers)
    shapes = output_shapes(model, names, in_shape)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        noise = PerturbationInjection(shapes[name], theta0, shared_draw)
        old = getattr(parent, child)
        if child == INJECT_ATTR and isinstance(old, nn.Identity):
            setattr(parent, child, noise)
        else:
            setattr(parent, child, InjectAfter(old, noise))
    return names


# --- PNI weight noise -----------------------------------------------------------------------------------------
class WeightNoise(NoiseSource):
    """Mixin for a layer with ``weight``: :meth:`noisy_weight` = W + α·η, η ~ N(0, std(W)²), no gradient in η."""

    alpha: nn.Parameter

    def init_alpha(self, mode: str, alpha0: float) -> None:
        if mode not in PNI_MODES:
            raise ModelConfigError(f"PNI mode must be one of {PNI_MODES}, got {mode!r}")
        w = self.weight
        shape = {"layer": (1,), "channel": (w.shape[0],) + (1,) * (w.dim() - 1), "element": tuple(w.shape)}[mode]
        self.pni_mode = mode
        self.alpha = nn.Parameter(torch.full(shape, float(alpha0), device=w.device, dtype=w.dtype))

    def noisy_weight(self) -> torch.Tensor:
        if not self.noise_on:
            return self.weight
        with torch.no_grad():
            eta = torch.randn_like(self.weight) * self.weight.std()
        return self.weight + self.alpha * eta


class PNIConv2d(WeightNoise, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.noisy_weight(), self.bias)


class PNILinear(WeightNoise, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.noisy_weight(), self.bias)


def _to_pni(layer: nn.Module, mode: str, alpha0: float) -> nn.Module:
    if isinstance(layer, nn.Conv2d):
        new: WeightNoise = PNIConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                                     padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                                     bias=layer.bias is not None, padding_mode=layer.padding_mode)
    else:
        new = PNILinear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    new.weight, new.bias = layer.weight, layer.bias  # share the trained (or initialised) parameters
    new.init_alpha(mode, alpha0)
    return new


def insert_weight_noise(model: nn.Module, *, mode: str = "layer", alpha0: float = 0.25) -> list[str]:
    """Turn every Conv2d / Linear of ``model`` into its PNI version (in place); returns their names."""
    if alpha0 < 0:
        raise ModelConfigError(f"alpha0 must be >= 0, got {alpha0}")
    names = [n for n, m in model.named_modules()
             if n and isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, WeightNoise)]
    if not names:
        raise ModelConfigError(f"{type(model).__name__} has no Conv2d or Linear layer for PNI")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _to_pni(getattr(parent, child), mode, alpha0))
    return names


# --- switch and parameters ------------------------------------------------------------------------------------
def noise_modules(model: nn.Module) -> list[NoiseSource]:
    return [m for m in model.modules() if isinstance(m, NoiseSource)]


class noise_enabled:  # noqa: N801  (used like a function and as a context manager)
    """Switch every noise module of ``model`` on or off now; as a context manager, restore the old state on exit."""

    def __init__(self, model: nn.Module, on: bool = True):
        self.saved = [(m, m.noise_on) for m in noise_modules(model)]
        for m, _ in self.saved:
            m.noise_on = bool(on)

    def __enter__(self) -> "noise_enabled":
        return self

    def __exit__(self, *exc) -> None:
        for m, state in self.saved:
            m.noise_on = state


def theta_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The θ of every :class:`PerturbationInjection` (Learn2Perturb)."""
    return [m.theta for m in model.modules() if isinstance(m, PerturbationInjection)]


def alpha_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The α of every PNI layer."""
    return [m.alpha for m in model.modules() if isinstance(m, WeightNoise)]


def mean_of(params: Sequence[torch.Tensor]) -> float:
    """Mean over all elements of all tensors (NaN if none)."""
    if not params:
        return float("nan")
    with torch.no_grad():
        return float(sum(p.sum() for p in params) / sum(p.numel() for p in params))


# --- the registered model -------------------------------------------------------------------------------------
@register_model("noisy")
def noisy(in_shape, num_classes, mean, std, base: str = "resnet_v1", base_options: dict[str, Any] | None = None,
          noise: str = "l2p", placement: str = "auto", layers: list[str] | None = None, theta0: float = 0.25,
          shared_draw: bool = False, pni_mode: str = "layer", alpha0: float = 0.25) -> RobustModel:
    """Zoo model ``base`` (options ``base_options``) with Learn2Perturb (``noise = "l2p"``: ``placement`` /
    ``layers``, ``theta0``, ``shared_draw``) or PNI (``noise = "pni"``: ``pni_mode``, ``alpha0``) noise."""
    shape = check_args("noisy", in_shape, num_classes, mean, std)
    if base == "noisy":
        raise ModelConfigError("model 'noisy' cannot wrap itself")
    if noise not in NOISE_KINDS:
        raise ModelConfigError(f"model 'noisy': noise must be one of {NOISE_KINDS}, got {noise!r}")
    model = build_model(base, in_shape=shape, num_classes=num_classes, mean=mean, std=std, **dict(base_options or {}))
    if noise == "l2p":
        insert_perturbations(model, shape, placement=placement, layers=layers or (),
                             theta0=check_positive_float("noisy", "theta0", theta0), shared_draw=shared_draw)
    else:
        insert_weight_noise(model, mode=pni_mode, alpha0=alpha0)
    return model


__all__ = ["InjectAfter", "NoiseSource", "PNIConv2d", "PNILinear", "PerturbationInjection", "WeightNoise",
           "alpha_parameters", "insert_perturbations", "insert_weight_noise", "mean_of", "noise_enabled",
           "noise_modules", "noisy", "output_shapes", "placement_targets", "theta_parameters"]
