"""Build models by name. A builder takes ``in_shape``, ``num_classes``, ``mean``, ``std`` and its own options."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any

from robustlab.config import check_type, reject_unknown
from robustlab.errors import ConfigError
from robustlab.models.base import RobustModel
from robustlab.registry import Registry

ModelBuilder = Callable[..., RobustModel]
MODELS: Registry[ModelBuilder] = Registry("model")

#: Arguments every builder receives from the dataset; the rest are model options from the config.
DATASET_ARGS = ("in_shape", "num_classes", "mean", "std")


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: ``@register_model("lenet5") def lenet5(in_shape, num_classes, mean, std, ...)``."""
    return MODELS.register(name)


def available_models() -> list[str]:
    return MODELS.names()


def model_options(name: str) -> dict[str, inspect.Parameter]:
    """The builder's own options (not the dataset arguments), for config validation."""
    builder = MODELS.get(name)
    params = inspect.signature(builder).parameters
    return {k: p for k, p in params.items() if k not in DATASET_ARGS}


def model_option_types(name: str) -> dict[str, Any]:
    """The annotated type of each option (``Any`` where the builder gives none)."""
    hints = typing.get_type_hints(MODELS.get(name))
    return {key: hints.get(key, Any) for key in model_options(name)}


def build_model(
    name: str,
    *,
    in_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **options: Any,
) -> RobustModel:
    """Build a registered model; ``mean``/``std`` default to no normalisation (0 and 1 per channel)."""
    builder = MODELS.get(name)
    channels = int(in_shape[0])
    mean = list(mean) if mean is not None else [0.0] * channels
    std = list(std) if std is not None else [1.0] * channels
    known = model_options(name)
    for key in options:
        if key not in known:
            raise ConfigError(f"model {name!r} has no option {key!r}; options: {sorted(known) or 'none'}")
    return builder(in_shape=tuple(int(s) for s in in_shape), num_classes=int(num_classes), mean=mean, std=std,
                   **options)


def validate_model_options(name: str, options: dict[str, Any]) -> None:
    """Check a ``[model]`` table's options against the builder's signature (in place: numbers become floats)."""
    types_ = model_option_types(name)  # raises ConfigError for an unknown model
    reject_unknown(options, types_, "model")
    for key, value in options.items():
        options[key] = check_type(value, types_[key], f"model.{key}")
