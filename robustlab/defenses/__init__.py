"""Defenses as recipe objects (see ``base.py`` for the contract the engine calls)."""

from robustlab.defenses.base import Defense, LossOutput, LossTerm, Recipe, register_defense, register_term
from robustlab.defenses.registry import (available_defenses, available_terms, build_defense, defense_options_class,
                                         validate_defense_section)

__all__ = ["Defense", "LossOutput", "LossTerm", "Recipe", "available_defenses", "available_terms", "build_defense",
           "defense_options_class", "register_defense", "register_term", "validate_defense_section"]
