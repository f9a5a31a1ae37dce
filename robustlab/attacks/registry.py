"""Build attacks by name from config values (the evaluation and the defenses both use this)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from robustlab.attacks.base import Attack
from robustlab.attacks.fgsm import FGSM
from robustlab.attacks.pgd import PGD
from robustlab.errors import ConfigError

_ATTACKS: dict[str, Callable[..., Attack]] = {
    "fgsm": FGSM,
    "pgd": PGD,
}


def available_attacks() -> list[str]:
    return sorted(_ATTACKS)


def build_attack(name: str, eps: float, **options: Any) -> Attack:
    """``build_attack("pgd", 0.3, steps=40, step_size=0.01)``; unknown names or options raise ConfigError."""
    if name not in _ATTACKS:
        close = difflib.get_close_matches(name, _ATTACKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown attack {name!r}{hint}; available: {', '.join(available_attacks())}")
    try:
        return _ATTACKS[name](eps, **options)
    except TypeError as exc:
        raise ConfigError(f"attack {name!r}: {exc}") from None
