"""Experiment configuration schema: TOML files parsed into typed sections (the bottom layer: no registries).

A config has the sections ``[run]``, ``[data]``, ``[model]``, ``[optim]``, ``[schedule]``, ``[defense]`` and
``[eval]``. Every key of the fixed sections is checked here: an unknown key, a wrong type or a value outside its
choices raises :class:`~robustlab.errors.ConfigError` naming the key (``data.batch_size``). ``[model]`` and
``[defense]`` hold a ``name`` plus that model's or defense's own options; those, and the attack names of
``[eval]``, are validated against the registries by :mod:`robustlab.experiment` (``load_config``), the one entry
point that checks a whole experiment.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustlab.errors import ConfigError, did_you_mean


def _choices(*values: str) -> dict[str, tuple[str, ...]]:
    return {"choices": values}


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None) -> Any:
    """A dataclass field whose value a config must keep ``>= ge`` (or ``> gt``): the constraint next to the field,
    checked by :func:`build_dataclass` with the key's path in the error."""
    return field(default=default, metadata={"ge": ge, "gt": gt})


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = ""  # default: runs/<name>
    seed: int = 0
    device: str = field(default="auto", metadata=_choices("auto", "cpu", "cuda"))
    epochs: int = 10
    amp: str = field(default="auto", metadata=_choices("auto", "off", "bf16", "fp16"))
    channels_last: bool = False
    compile: bool = False  # torch.compile the model for training (measured slower on this CPU: off by default)
    keep_checkpoints: int = 2
    progress: bool = True
    init_from: str = ""  # start from the weights of this checkpoint (fine-tuning); resume takes precedence


@dataclass
class DataConfig:
    name: str = "mnist5k"
    root: str = ""
    download: bool = False
    batch_size: int = 128
    train_subset: int = 0
    test_subset: int = 0
    augment: str = field(default="none", metadata=_choices("none", "crop_flip"))
    # Keep the whole dataset in device memory, so that batches never cross CPU -> GPU ("auto": on CUDA when the
    # tensors take under 4 GiB).
    on_device: str = field(default="auto", metadata=_choices("auto", "always", "never"))


@dataclass
class OptimConfig:
    name: str = field(default="sgd", metadata=_choices("sgd", "adam"))
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    # "weights": decay only the weight matrices and kernels (tensors of two or more dimensions), not biases or
    # normalisation parameters, as the TLA authors' code does; "all": every trainable parameter.
    weight_decay_on: str = field(default="all", metadata=_choices("all", "weights"))
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    name: str = field(default="constant", metadata=_choices("constant", "multistep", "cosine", "one_cycle"))
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: int = 0
    peak: float = 0.4  # one_cycle: the fraction of training at which the learning rate peaks (Wong et al.: 2/5)


@dataclass
class EvalConfig:
    """What ``robustlab eval`` and the per-epoch evaluation measure."""

    attacks: list[str] = field(default_factory=lambda: ["fgsm", "pgd"])
    eps: list[float] = field(default_factory=lambda: [0.3])
    pgd_steps: int = 40
    pgd_step_size: float = 0.01
    pgd_restarts: int = 1
    subset: int = 1000  # test examples attacked (0 = all)
    batch_size: int = 500
    every: int = 0  # robust accuracy on the first ``subset`` test examples every N epochs (0 = only clean)
    # A randomised model (two predictions differ) is attacked per epoch with each gradient averaged over this many
    # noise draws (EOT); 1 attacks it with one draw per gradient, which overstates its robustness (logged).
    eot_samples: int = 10


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "lenet5"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    defense: dict[str, Any] = field(default_factory=lambda: {"name": "standard"})
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def out_dir(self) -> Path:
        return Path(self.run.out_dir or f"runs/{self.run.name}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {f.name: f for f in dataclasses.fields(Config)}


def read_config_file(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The raw table of a TOML file with ``key=value`` overrides (``data.batch_size=64``) applied."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    for item in overrides or []:
        apply_override(raw, item)
    return raw


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``section.key=value`` in a raw config dict; the value is parsed as TOML (bare words stay strings)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set key must look like section.key, got {key!r}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    raw.setdefault(parts[0], {})
    if not isinstance(raw[parts[0]], dict):
        raise ConfigError(f"[{parts[0]}] is not a section")
    raw[parts[0]][parts[1]] = value


def parse_config(raw: dict[str, Any]) -> Config:
    """The schema check of a raw dict (from TOML or ``Config.to_dict()``): the fixed sections fully, ``[model]``
    and ``[defense]`` only for their ``name`` (:func:`robustlab.experiment.config_from_dict` checks the rest)."""
    reject_unknown(raw, _SECTIONS, "")
    _reject_non_finite(raw, "")
    sections: dict[str, Any] = {}
    for name, f in _SECTIONS.items():
        value = raw.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table, got {type(value).__name__}")
        if name in ("model", "defense"):
            value = dict(value)
            default = f.default_factory()["name"]  # type: ignore[misc]
            sections[name] = {"name": check_type(value.pop("name", default), str, f"{name}.name"), **value}
        else:
            sections[name] = build_dataclass(f.default_factory().__class__, value, name)  # type: ignore[misc]
    config = Config(**sections)
    _check_values(config)
    return config


def build_dataclass(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from ``values``, checking names, types and choices; errors name ``prefix.key``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    reject_unknown(values, fields, prefix)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        kwargs[key] = check_type(value, hints[key], f"{prefix}.{key}")
        meta = fields[key].metadata
        if meta.get("choices") and kwargs[key] not in meta["choices"]:
            raise ConfigError(f"{prefix}.{key} must be one of {list(meta['choices'])}, got {kwargs[key]!r}")
        ge, gt = meta.get("ge"), meta.get("gt")
        if (ge is not None and kwargs[key] < ge) or (gt is not None and kwargs[key] <= gt):
            bound = f">= {ge:g}" if ge is not None else f"> {gt:g}"
            raise ConfigError(f"{prefix}.{key} must be {bound}, got {kwargs[key]}")
    return cls(**kwargs)


def check_type(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a simple annotation (int, float, str, bool, list[...], X | None, Any)."""
    if annotation is Any or annotation is typing.Any:
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_type(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key} must be {_type_name(annotation)}, got {_describe(value)}")
    if origin is list:
        (item_type,) = typing.get_args(annotation) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be {_type_name(annotation)}, got {_describe(value)}")
        return [check_type(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be {_type_name(annotation)}, got {_describe(value)}")
        args = typing.get_args(annotation)
        item_type = args[0] if args else Any
        return tuple(check_type(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {_describe(value)}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {_describe(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {_describe(value)}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {_describe(value)}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")


def reject_unknown(values: dict[str, Any], known: Any, prefix: str) -> None:
    for key in values:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else f"[{key}]"
            hint = did_you_mean(key, known)
            raise ConfigError(f"unknown config key {where}{hint}; known: {', '.join(sorted(known))}")


def _reject_non_finite(value: Any, key: str) -> None:
    """No NaN or infinity anywhere (ε, learning rates, weights): refused before any option is interpreted."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            _reject_non_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _reject_non_finite(v, f"{key}[{i}]")


def _check_values(config: Config) -> None:
    positive = {
        "run.epochs": config.run.epochs, "data.batch_size": config.data.batch_size, "optim.lr": config.optim.lr,
        "eval.pgd_steps": config.eval.pgd_steps, "eval.batch_size": config.eval.batch_size,
        "eval.pgd_restarts": config.eval.pgd_restarts, "run.keep_checkpoints": config.run.keep_checkpoints,
        "eval.eot_samples": config.eval.eot_samples,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    nonneg = {"data.train_subset": config.data.train_subset, "data.test_subset": config.data.test_subset,
              "eval.subset": config.eval.subset, "eval.every": config.eval.every,
              "optim.weight_decay": config.optim.weight_decay, "schedule.warmup_epochs": config.schedule.warmup_epochs}
    for key, value in nonneg.items():
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    bad = [e for e in config.eval.eps if not 0 <= e <= 1]
    if bad:
        raise ConfigError(f"eval.eps must lie in [0, 1] (L∞ on [0,1] images), got {bad[0]} in {config.eval.eps}")
    if not 0 < config.schedule.peak < 1:
        raise ConfigError(f"schedule.peak must lie in (0, 1), got {config.schedule.peak}")
    if len(config.optim.betas) != 2:
        raise ConfigError(f"optim.betas must have two values, got {config.optim.betas}")


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}"


# What `--resume` may change: how long and how visibly a run goes on, where it lives, how it is evaluated. Any
# other difference would continue another experiment under the same name.
RESUME_MAY_CHANGE = ("run.epochs", "run.progress", "run.keep_checkpoints", "run.device", "run.out_dir", "run.name",
                     "data.root", "data.download", "eval.")


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, dict):
        out: dict[str, Any] = {}
        for key, value in values.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: values}


def config_differences(stored: dict[str, Any], requested: dict[str, Any],
                       may_change: tuple[str, ...] = RESUME_MAY_CHANGE) -> list[str]:
    """``key: stored → requested`` for every key (dotted) that differs outside ``may_change`` (a trailing ``.``
    allows a whole section)."""
    old, new = _flatten(stored), _flatten(requested)
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key) or any(key == m or (m.endswith(".") and key.startswith(m))
                                               for m in may_change):
            continue
        out.append(f"{key}: {_describe(old.get(key))} → {_describe(new.get(key))}")
    return out
