"""Experiment configuration schema: TOML files parsed into typed sections (the bottom layer: no registries).

A config has the sections ``[run]``, ``[data]``, ``[model]``, ``[optim]``, ``[schedule]``, ``[defense]`` and
``[eval]``. Every section, and every defense's and term's options, is an :class:`Options` class (pydantic v2:
unknown keys forbidden, strict types, constraints next to the field: ``Literal`` choices, ``Field(ge=…)``);
:func:`validate_options` turns pydantic's report into one :class:`~robustlab.errors.ConfigError` line naming the
key (``data.batch_size``) with a did-you-mean. ``[model]`` and ``[defense]`` hold a ``name`` plus that model's or
defense's own options; those, and the attack names of ``[eval]``, are validated against the registries by
:mod:`robustlab.experiment` (``load_config``), the one entry point that checks a whole experiment.
"""

from __future__ import annotations

import functools
import math
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI (a dependency there)
    import tomli as tomllib

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from robustlab.errors import ConfigError, did_you_mean


class Options(BaseModel):
    """Typed options of a config table: unknown keys, wrong types (strict: no "1" for 1, no true for 1; an
    integer is a valid float) and values outside a field's constraints are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class AttackTable(BaseModel):
    """``[defense.attack]``: a training attack by its registry name (``robustlab list attacks``), its ε and the mode
    it sees the model in; every other key is that attack's own option (``steps``, ``step_size``, ...), checked
    against the attack when the defense builds it, at load time."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: str
    eps: float = Field(ge=0)
    model_mode: Literal["eval", "train"] = "eval"

    def options(self) -> dict[str, Any]:
        """The attack's own options (the table's keys besides name, eps and model_mode)."""
        return dict(self.model_extra or {})


def attack_table(name: str, eps: float, **options: Any) -> Any:
    """A defense's default ``[defense.attack]``; a config's partial table overrides it key by key."""
    return Field(default_factory=lambda: AttackTable(name=name, eps=eps, **options))


class AttackOptions(Options):
    """Options of a recipe that crafts with a training attack: ``attack``, the nested ``[defense.attack]`` table
    (subclasses set their default with :func:`attack_table`)."""

    attack: AttackTable = attack_table("pgd", 0.3, steps=7)

    @field_validator("attack", mode="before")
    @classmethod
    def _over_the_default(cls, value: Any) -> Any:
        """A partial table overrides the default attack key by key; naming another attack keeps only the default's
        ε and model mode. A default step size belongs to the default's ε and step count: a table that changes
        either must set ``step_size`` too (kept silently, PGD-7 with a step chosen for PGD-40 is a weak attack)."""
        if not isinstance(value, dict):
            return value
        default = cls.model_fields["attack"].default_factory().model_dump()
        if value.get("name", default["name"]) != default["name"]:
            default = {"eps": default["eps"], "model_mode": default["model_mode"]}
        changed = step_size_left_behind(default, value)
        if changed:
            eps, steps = value.get("eps", default["eps"]), value.get("steps", default.get("steps"))
            hint = f" (2.5·ε/steps = {2.5 * eps / steps:.4g})" if isinstance(steps, int) and steps > 0 else ""
            raise ValueError(
                f"[defense.attack] sets {' and '.join(f'{k} = {value[k]}' for k in changed)} but not step_size: the "
                f"default step_size {default['step_size']} goes with ε {default['eps']} and "
                f"{default.get('steps')} steps; set step_size{hint}")
        return {**default, **value}


def step_size_left_behind(default: dict[str, Any], table: dict[str, Any]) -> list[str]:
    """The keys (ε, steps) a partial ``[defense.attack]`` table changes from ``default`` (a dumped attack table of
    the same attack) while the default's ``step_size``, chosen for the default's ε and steps, would silently stay."""
    if "step_size" not in default or "step_size" in table:
        return []
    return [k for k in ("eps", "steps") if k in table and k in default and table[k] != default[k]]


Fraction = Annotated[float, Field(ge=0, lt=1)]  # in [0, 1): dropout, momentum, label smoothing
AdamBetas = Annotated[list[Fraction], Field(min_length=2, max_length=2)]
Sizes = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)]  # layer widths


class RunConfig(Options):
    name: str = "run"
    out_dir: str = ""  # default: runs/<name>
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    epochs: int = Field(10, gt=0)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    compile: bool = False  # torch.compile the model for training (measured slower on this CPU: off by default)
    keep_checkpoints: int = Field(2, gt=0)
    progress: bool = True
    tensorboard: bool = False  # also write the per-epoch log as TensorBoard scalars (<run dir>/tensorboard/)
    init_from: str = ""  # start from the weights of this checkpoint (fine-tuning); resume takes precedence


class DataConfig(Options):
    name: str = "mnist5k"
    root: str = ""
    download: bool = False
    batch_size: int = Field(128, gt=0)
    train_subset: int = Field(0, ge=0)
    test_subset: int = Field(0, ge=0)
    classes: list[int] = Field(default_factory=list)  # only these classes, relabelled 0, 1, ... ([]: all)
    augment: Literal["none", "crop_flip"] = "none"
    # Keep the whole dataset in device memory, so that batches never cross CPU -> GPU ("auto": on CUDA when the
    # tensors take under 4 GiB).
    on_device: Literal["auto", "always", "never"] = "auto"


class OptimConfig(Options):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    # "weights": decay only the weight matrices and kernels (tensors of two or more dimensions), not biases or
    # normalisation parameters, as the TLA authors' code does; "all": every trainable parameter.
    weight_decay_on: Literal["all", "weights"] = "all"
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: list[float]) -> list[float]:
        if any(not 0 <= b < 1 for b in betas):
            raise ValueError(f"each of Adam's betas must be in [0, 1), got {betas}")
        return betas


class ScheduleConfig(Options):
    name: Literal["constant", "multistep", "cosine", "one_cycle"] = "constant"
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0, le=1)  # multistep: the factor at each milestone (a decay)
    warmup_epochs: int = Field(0, ge=0)
    peak: float = Field(0.4, gt=0, lt=1)  # one_cycle: the fraction of training at which the learning rate peaks

    @field_validator("milestones")
    @classmethod
    def _milestones_increasing(cls, milestones: list[int]) -> list[int]:
        if any(m < 1 for m in milestones) or milestones != sorted(set(milestones)):
            raise ValueError(f"milestones must be increasing epochs >= 1, got {milestones}")
        return milestones


class EvalConfig(Options):
    """What ``robustlab eval`` and the per-epoch evaluation measure."""

    attacks: list[str] = Field(default_factory=lambda: ["fgsm", "pgd"])
    eps: list[float] = Field(default_factory=lambda: [0.3])
    pgd_steps: int = Field(40, gt=0)
    pgd_step_size: float = Field(0.01, ge=0)  # 0: 2.5·ε/steps
    pgd_restarts: int = Field(1, gt=0)
    subset: int = Field(1000, ge=0)  # test examples attacked (0 = all)
    batch_size: int = Field(500, gt=0)
    every: int = Field(0, ge=0)  # robust accuracy on the first ``subset`` test examples every N epochs (0 = only clean)
    # The per-epoch robust accuracy's suite: "adaptive" (AutoAttack's attacks with its shortcuts, at its own budget:
    # ``attacks`` and ``pgd_*`` are not used; a randomised model gets "adaptive_rand") or "quick" (each of
    # ``attacks`` alone: per-attack curves, as in a paper's figure; far cheaper and far weaker).
    every_suite: Literal["adaptive", "quick"] = "adaptive"
    # A randomised model (two predictions differ) is attacked per epoch with each gradient averaged over this many
    # noise draws (EOT); 1 attacks it with one draw per gradient, which overstates its robustness (logged).
    eot_samples: int = Field(10, gt=0)


class Config(BaseModel):
    """A whole experiment: the validated sections, ``model`` and ``defense`` as their tables (name + options)."""

    model_config = ConfigDict(extra="forbid")

    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: dict[str, Any] = Field(default_factory=lambda: {"name": "lenet5"})
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    defense: dict[str, Any] = Field(default_factory=lambda: {"name": "standard"})
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @property
    def out_dir(self) -> Path:
        return Path(self.run.out_dir or f"runs/{self.run.name}")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


_SECTIONS = {name: info.annotation for name, info in Config.model_fields.items()}
_NAMED = {"model": "lenet5", "defense": "standard"}  # tables of a name plus that thing's own options


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
    """Set ``section.key=value`` (or ``section.table.key=value``, e.g. ``defense.attack.eps=0.1``) in a raw config
    dict; the value is parsed as TOML (bare words stay strings)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set key must look like section.key, got {key!r}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    table = raw
    for i, part in enumerate(parts[:-1]):
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{'.'.join(parts[:i + 1])}] is not a section")
    table[parts[-1]] = value


def parse_config(raw: dict[str, Any]) -> Config:
    """The schema check of a raw dict (from TOML or ``Config.to_dict()``): the fixed sections fully, ``[model]``
    and ``[defense]`` only for their ``name`` (:func:`robustlab.experiment.config_from_dict` checks the rest)."""
    reject_unknown(raw, _SECTIONS, "")
    _reject_non_finite(raw, "")
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        value = raw.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table, got {type(value).__name__}")
        if name in _NAMED:
            value = dict(value)
            sections[name] = {"name": check_type(value.pop("name", _NAMED[name]), str, f"{name}.name"), **value}
        else:
            sections[name] = validate_options(cls, value, name)
    config = Config(**sections)
    _check_values(config)
    return config


def validate_options(cls: type[Options], values: dict[str, Any], prefix: str) -> Any:
    """``cls`` built from ``values``, every key checked; the first problem is one ConfigError naming
    ``prefix.key``."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix} must be a table, got {_describe(values)}")
    reject_unknown(values, cls.model_fields, prefix)
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise _one_line(exc, prefix, cls) from None


def check_type(value: Any, annotation: Any, key: str) -> Any:
    """``value`` checked against a type annotation (strict, as the option classes; ``Any`` accepts anything)."""
    if annotation is Any:
        return value
    try:
        return _adapter(annotation).validate_python(value, strict=True)
    except ValidationError as exc:
        raise _one_line(exc, key, None) from None


@functools.lru_cache(maxsize=None)
def _adapter(annotation: Any) -> TypeAdapter:
    return TypeAdapter(annotation)


_TYPE_WORDS = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
               "string_type": "a string", "list_type": "a list", "dict_type": "a table",
               "tuple_type": "a list", "int_from_float": "an integer"}


def _one_line(exc: ValidationError, prefix: str, cls: type | None) -> ConfigError:
    """pydantic's first error as one line: the key's path, what it must be, what it got."""
    error = exc.errors()[0]
    loc = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
    key = f"{prefix}{loc}" if prefix else loc.lstrip(".")
    got, kind, ctx = error.get("input"), error["type"], error.get("ctx") or {}
    if kind == "literal_error":
        field = cls.model_fields[error["loc"][0]] if cls is not None and error["loc"] else None
        choices = list(typing.get_args(field.annotation)) if field is not None else ctx.get("expected")
        return ConfigError(f"{key} must be one of {choices}, got {got!r}")
    bounds = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"), "less_than_equal": ("<=", "le"),
              "less_than": ("<", "lt")}
    if kind in bounds:
        word, name = bounds[kind]
        return ConfigError(f"{key} must be {word} {ctx[name]:g}, got {got}")
    if kind in _TYPE_WORDS:
        return ConfigError(f"{key} must be {_TYPE_WORDS[kind]}, got {_describe(got)}")
    if kind in ("too_short", "too_long"):
        lengths = sorted({ctx.get("min_length"), ctx.get("max_length")} - {None})
        return ConfigError(f"{key} must hold {' to '.join(map(str, lengths))} values, got {got!r}")
    if kind == "value_error":
        return ConfigError(f"{key}: {ctx.get('error', error['msg'])}")
    return ConfigError(f"{key}: {error['msg']}")


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
    bad = [e for e in config.eval.eps if not 0 <= e <= 1]
    if bad:
        raise ConfigError(f"eval.eps must lie in [0, 1] (L∞ on [0,1] images), got {bad[0]} in {config.eval.eps}")
    if not 0 < config.schedule.peak < 1:
        raise ConfigError(f"schedule.peak must lie in (0, 1), got {config.schedule.peak}")
    if len(config.optim.betas) != 2:
        raise ConfigError(f"optim.betas must have two values, got {config.optim.betas}")


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}"


# What `--resume` may change: how long and how visibly a run goes on, where it lives, how it is evaluated. Any
# other difference would continue another experiment under the same name.
RESUME_MAY_CHANGE = ("run.epochs", "run.progress", "run.tensorboard", "run.keep_checkpoints", "run.device",
                     "run.out_dir", "run.name", "data.root", "data.download", "eval.")


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
