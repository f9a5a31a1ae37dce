"""A model split at a layer ℓ into an encoder E (layers 1…ℓ) and a residual R (the rest), ``R(E(x)) = f(x)``.

``layer = "features"`` (every registry model's ``features`` / ``head`` split), ``"encoder"`` (models with
``encoder`` / ``residual``: ``mlp_a3t``), or the dotted name of any submodule (``"fc1"``, ``"conv.3"``,
``"layer2.0"``): the encoder output is that module's output, captured with a forward hook that stops the forward
pass there, so only the layers before it run and receive gradient. With a model that calls the named module more
than once, the first call is the split point. Used by A3T's feature discriminator.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

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
