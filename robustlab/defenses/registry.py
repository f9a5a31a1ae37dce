"""Build defenses (and their add-on terms) by name from the ``[defense]`` section of a config.

``[defense]`` holds ``name``, the defense's own options and optionally ``terms``, a list of tables each with a
``name`` and that term's options::

    [defense]
    name = "pgd_at"
    eps = 0.3
    [[defense.terms]]
    name = "triplet"
"""

from __future__ import annotations

from typing import Any

from robustlab.config import validate_options
from robustlab.defenses.base import DEFENSES, TERMS, Defense, LossTerm
from robustlab.errors import ConfigError


def available_defenses() -> list[str]:
    return DEFENSES.names()


def available_terms() -> list[str]:
    return TERMS.names()


def validate_defense_section(section: dict[str, Any]) -> None:
    """Check a ``[defense]`` table (name, options, terms) fully: the recipe is built (cheap: networks and optimisers
    come at ``setup``), so every check a defense makes on its options runs at load time, and discarded."""
    build_defense(section.get("name", "standard"), {k: v for k, v in section.items() if k != "name"})


def build_defense(name: str, options: dict[str, Any] | None = None, *, where: str = "defense") -> Defense:
    """Validate ``options`` (and ``options["terms"]``) against the option dataclasses and build the recipe;
    errors name the keys under ``where`` (the config table the options come from)."""
    options = dict(options or {})
    raw_terms = options.pop("terms", [])
    if not isinstance(raw_terms, list) or not all(isinstance(t, dict) for t in raw_terms):
        raise ConfigError(f"{where}.terms must be a list of tables, each with a name ([[defense.terms]])")
    cls, options_cls = DEFENSES.get(name, where=where)
    defense_options = validate_options(options_cls, options, where)
    terms: list[LossTerm] = []
    for i, raw in enumerate(raw_terms):
        raw = dict(raw)
        term_name = raw.pop("name", None)
        if not isinstance(term_name, str):
            raise ConfigError(f"{where}.terms[{i}] needs a name; available: {', '.join(available_terms())}")
        term_cls, term_options_cls = TERMS.get(term_name, where=f"{where}.terms[{i}]")
        terms.append(term_cls(validate_options(term_options_cls, raw, f"{where}.terms[{i}]")))
    return cls(defense_options, terms)
