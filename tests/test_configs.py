"""Every shipped config (configs/ and the demo recipes) validates against the current code."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustlab.config import load_config
from robustlab.demo import DEMO_RECIPES, recipe_path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.toml")) + [recipe_path(f) for f in DEMO_RECIPES.values()]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path):
    config = load_config(path)
    assert config.run.epochs >= 1
