"""Build defenses by name from the ``[defense]`` section of a config."""

from __future__ import annotations

import difflib
from typing import Any

from robustlab.defenses.base import Defense, registered_defenses
from robustlab.errors import ConfigError


def _load_all() -> None:
    # Importing the modules runs their @register_defense decorators.
    import robustlab.defenses.adversarial  # noqa: F401
    import robustlab.defenses.standard  # noqa: F401


def available_defenses() -> list[str]:
    _load_all()
    return sorted(registered_defenses())


def defense_options_class(name: str) -> type:
    return _lookup(name)[1]


def build_defense(name: str, options: dict[str, Any] | None = None) -> Defense:
    """Validate ``options`` against the defense's option dataclass and build the recipe."""
    from robustlab.config import build_dataclass

    cls, options_cls = _lookup(name)
    return cls(build_dataclass(options_cls, dict(options or {}), "defense"))


def _lookup(name: str) -> tuple[type[Defense], type]:
    _load_all()
    defenses = registered_defenses()
    if name not in defenses:
        close = difflib.get_close_matches(name, defenses, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown defense {name!r}{hint}; available: {', '.join(sorted(defenses))}")
    return defenses[name]
