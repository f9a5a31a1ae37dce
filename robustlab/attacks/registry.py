"""Build attacks by name from config values (the evaluation and the defenses both use this).

Attack classes register themselves with ``@register_attack("name")``; ``families.py`` imports every attack
module so that the registry is complete. ε-bounded attacks take ``eps`` as their first argument; minimal-
perturbation attacks (C&W, DeepFool, ...) set ``bounded = False`` on the class and take no ε.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from robustlab.attacks.base import Attack
from robustlab.errors import ConfigError, unknown_name

_ATTACKS: dict[str, type[Attack]] = {}


def register_attack(name: str) -> Callable[[type[Attack]], type[Attack]]:
    def decorator(cls: type[Attack]) -> type[Attack]:
        if name in _ATTACKS:
            raise ValueError(f"attack {name!r} registered twice")
        _ATTACKS[name] = cls
        return cls

    return decorator


def _load_all() -> None:
    import robustlab.attacks.families  # noqa: F401


def available_attacks() -> list[str]:
    _load_all()
    return sorted(_ATTACKS)


def attack_class(name: str) -> type[Attack]:
    _load_all()
    if name not in _ATTACKS:
        raise unknown_name("attack", name, _ATTACKS)
    return _ATTACKS[name]


def build_attack(name: str, eps: float | None = None, **options: Any) -> Attack:
    """``build_attack("pgd", 0.3, steps=40, step_size=0.01)``; unknown names or options raise ConfigError."""
    cls = attack_class(name)
    try:
        if getattr(cls, "bounded", True):
            if eps is None:
                raise ConfigError(f"attack {name!r} needs an epsilon")
            return cls(eps, **options)
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"attack {name!r}: {exc}") from None


def build_training_attack(name: str, eps: float | None = None, **options: Any) -> Attack:
    """:func:`build_attack` for crafting training examples: early exit off (``early_stop=False`` where the attack
    has it), so that training sees the last iterate of every example, as the papers' training loops do."""
    attack = build_attack(name, eps, **options)
    if hasattr(attack, "early_stop"):
        attack.early_stop = False
    return attack
