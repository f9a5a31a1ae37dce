"""Build attacks by name from config values (the evaluation and the defenses both use this).

Attack classes register themselves with ``@register_attack("name")``; the package's ``__init__`` imports
every attack module (``families.py``), so the registry is complete once ``robustlab.attacks`` is imported. ε-bounded attacks take ``eps`` as their first argument; minimal-
perturbation attacks (C&W, DeepFool, ...) set ``bounded = False`` on the class and take no ε.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from robustlab.attacks.base import Attack
from robustlab.errors import ConfigError, did_you_mean
from robustlab.registry import Registry

ATTACKS: Registry[type[Attack]] = Registry("attack")


def register_attack(name: str) -> Callable[[type[Attack]], type[Attack]]:
    return ATTACKS.register(name)


def available_attacks() -> list[str]:
    return ATTACKS.names()


def attack_class(name: str) -> type[Attack]:
    return ATTACKS.get(name)


def build_attack(name: str, eps: float | None = None, **options: Any) -> Attack:
    """``build_attack("pgd", 0.3, steps=40, step_size=0.01)``; unknown names or options raise ConfigError."""
    cls = attack_class(name)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        known = [k for k in params if k not in ("self", "eps")]
        for key in options:
            if key not in known:
                raise ConfigError(f"attack {name!r} has no option {key!r}{did_you_mean(key, known)}; "
                                  f"its options: {', '.join(known)}")
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
