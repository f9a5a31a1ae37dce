"""A whole experiment's config, validated: the schema (:mod:`robustlab.config`) plus everything the registries
know — the model's options against its builder, the ``[defense]`` table (and its terms) against the defense's
option class, the ``[eval]`` attack names. Every entry point that starts work (``robustlab train``, the demo, a
resume, the benchmarks) loads its config here, so an invalid value fails at load time, before any compute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robustlab.attacks.registry import ATTACKS
from robustlab.config import Config, parse_config, read_config_file
from robustlab.defenses.registry import validate_defense_section
from robustlab.errors import ConfigError
from robustlab.models.registry import validate_model_options

__all__ = ["config_from_dict", "load_config", "upgrade_stored_config"]

# Keys renamed since configs were first stored: (table, old name) -> new name. A checkpoint's config is read with
# the new names, so that a run trained before a rename resumes (and compares equal to today's config).
RENAMED_DEFENSE_KEYS = {("defense", "pretrain_epochs"): "warmup_epochs", ("term", "start_epoch"): "warmup_epochs"}


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a TOML file, apply ``key=value`` overrides (``data.batch_size=64``) and validate the experiment."""
    return config_from_dict(read_config_file(path, overrides))


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a raw dict (from TOML or from ``Config.to_dict()``) into a :class:`~robustlab.config.Config`."""
    config = parse_config(raw)
    model_options = {k: v for k, v in config.model.items() if k != "name"}
    validate_model_options(config.model["name"], model_options)
    config.model = {"name": config.model["name"], **model_options}
    validate_defense_section(config.defense)
    for name in config.eval.attacks:
        if name not in ATTACKS:
            raise ConfigError(f"eval.attacks: unknown attack {name!r}; available: {', '.join(ATTACKS.names())}")
    return config


def upgrade_stored_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A stored config (a checkpoint's) with renamed keys under their new names (:data:`RENAMED_DEFENSE_KEYS`)."""
    raw = {**raw, "defense": dict(raw.get("defense", {}))}
    defense = raw["defense"]
    tables = [("defense", defense)] + [("term", t) for t in defense.get("terms", []) if isinstance(t, dict)]
    for kind, table in tables:
        for (where, old), new in RENAMED_DEFENSE_KEYS.items():
            if where == kind and old in table and new not in table:
                table[new] = table.pop(old)
    return raw
