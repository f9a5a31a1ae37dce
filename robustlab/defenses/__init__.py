"""Defenses as recipe objects (see ``base.py`` for the contract the engine calls)."""

from robustlab.defenses.base import Defense, LossTerm, Recipe, register_defense, register_term
from robustlab.defenses.context import Batch, LossOutput, TrainContext
from robustlab.defenses.registry import available_defenses, available_terms, build_defense, validate_defense_section

__all__ = ["Batch", "Defense", "LossOutput", "LossTerm", "Recipe", "TrainContext", "available_defenses", "available_terms",
           "build_defense", "register_defense", "register_term", "validate_defense_section"]

import robustlab.defenses.families  # noqa: E402,F401  (every defense and term registered: the registry is complete)
