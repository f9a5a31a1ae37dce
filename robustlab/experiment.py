"""A whole experiment's config, validated: the schema (:mod:`robustlab.config`) plus everything the registries
know — the model's options against its builder, the ``[defense]`` table (and its terms) against the defense's
option class, the ``[eval]`` attack names. Every entry point that starts work (``robustlab train``, the demo, a
resume, the benchmarks) loads its config here, so an invalid value fails at load time, before any compute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robustlab.attacks.registry import ATTACKS
from robustlab.config import AttackOptions, Config, parse_config, read_config_file, step_size_left_behind
from robustlab.defenses.base import DEFENSES, TERMS
from robustlab.defenses.registry import validate_defense_section
from robustlab.errors import ConfigError
from robustlab.models.registry import validate_model_options

__all__ = ["config_from_dict", "load_config", "nest_attack_keys", "upgrade_stored_config"]

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


# The flat keys of an adversarial-training defense's attack before it became the nested [defense.attack] table.
FLAT_ATTACK_KEYS = ("eps", "steps", "step_size", "random_start", "attack_mode", "step_ratio")


def nest_attack_keys(table: dict[str, Any]) -> dict[str, Any]:
    """An adversarial-training defense's table with its flat attack keys (``eps``, ``steps``, ... as configs wrote
    them before ``[defense.attack]``) moved into the nested table; ``step_size = 0`` (then: 2.5·ε/steps) is the
    attack's default and is dropped, ``attack_mode`` is the table's ``model_mode``."""
    entry = DEFENSES.get(table.get("name", "standard")) if table.get("name", "standard") in DEFENSES else None
    return nest_attack_keys_of(entry[1] if entry else None, table)


def keep_default_step_size(table: dict[str, Any]) -> dict[str, Any]:
    """A stored defense table whose ``[defense.attack]`` changed ε or steps but not ``step_size``: written when the
    default step size silently applied (it is refused in new configs), so the stored run keeps it."""
    name = table.get("name", "standard")
    options_cls = DEFENSES.get(name)[1] if name in DEFENSES else None
    attack = table.get("attack")
    if options_cls is None or not issubclass(options_cls, AttackOptions) or not isinstance(attack, dict):
        return table
    default = options_cls.model_fields["attack"].default_factory().model_dump()
    if attack.get("name", default["name"]) == default["name"] and step_size_left_behind(default, attack):
        return {**table, "attack": {**attack, "step_size": default["step_size"]}}
    return table


def nest_attack_keys_of(options_cls: type | None, table: dict[str, Any]) -> dict[str, Any]:
    """:func:`nest_attack_keys` for a table of ``options_cls`` (a defense's or a term's); A3T's old
    ``attack = "fgsm" | "pgd"`` is the nested table's name."""
    if options_cls is None or not issubclass(options_cls, AttackOptions) or isinstance(table.get("attack"), dict):
        return table
    table, attack = dict(table), {}
    if isinstance(table.get("attack"), str):
        attack["name"] = table.pop("attack")
    for key in FLAT_ATTACK_KEYS:
        if key in table:
            value = table.pop(key)
            if key == "step_size" and value == 0:
                continue
            attack["model_mode" if key == "attack_mode" else key] = value
    return {**table, "attack": attack} if attack else table


def upgrade_stored_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A stored config (a checkpoint's) in today's shape: renamed keys under their new names
    (:data:`RENAMED_DEFENSE_KEYS`), flat attack keys in ``[defense.attack]`` (:func:`nest_attack_keys`)."""
    raw = {**raw, "defense": dict(raw.get("defense", {}))}
    defense = raw["defense"]
    tables = [("defense", defense)] + [("term", t) for t in defense.get("terms", []) if isinstance(t, dict)]
    for kind, table in tables:
        for (where, old), new in RENAMED_DEFENSE_KEYS.items():
            if where == kind and old in table and new not in table:
                table[new] = table.pop(old)
    defense = keep_default_step_size(nest_attack_keys(defense))
    if isinstance(defense.get("terms"), list):
        defense["terms"] = [nest_attack_keys_of(TERMS.get(t["name"])[1] if t.get("name") in TERMS else None, t)
                            if isinstance(t, dict) else t for t in defense["terms"]]
    if isinstance(defense.get("base_options"), dict):  # AWP's base defense
        base = nest_attack_keys({"name": defense.get("base", "pgd_at"), **defense["base_options"]})
        defense["base_options"] = {k: v for k, v in base.items() if k != "name"}
    raw["defense"] = defense
    return raw
