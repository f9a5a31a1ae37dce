"""Defenses as recipe objects (see ``base.py`` for the contract the engine calls)."""

from robustlab.defenses.base import Defense, LossOutput, register_defense
from robustlab.defenses.registry import available_defenses, build_defense, defense_options_class

__all__ = ["Defense", "LossOutput", "available_defenses", "build_defense", "defense_options_class",
           "register_defense"]
