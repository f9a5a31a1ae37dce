"""Every shipped config (configs/ and the demo recipes) validates against the current code."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustlab.demo import DEMO_RECIPES, recipe_path
from robustlab.experiment import load_config

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = sorted((ROOT / "configs" / "leaderboard").glob("*.toml"))  # tests/test_leaderboard.py reads them
CONFIGS = (sorted(set((ROOT / "configs").rglob("*.toml")) - set(PROTOCOLS))
           + [recipe_path(f) for f in DEMO_RECIPES.values()])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path):
    config = load_config(path)
    assert config.run.epochs >= 1


SECOND_ORDER = sorted((ROOT / "configs" / "critic" / "full").glob("*.toml"))


@pytest.mark.parametrize("path", SECOND_ORDER, ids=lambda p: p.name)
def test_the_critic_full_configs_keep_fp32_on_cuda(path):
    """The critic's unrolled attack takes second-order gradients (and its baselines share the settings): no
    autocast, which ``amp = "auto"`` would turn on as bf16 on a GPU."""
    assert SECOND_ORDER and load_config(path).run.amp == "off"


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "l2p" / "full" / "table2").glob("*_pni.toml")),
                         ids=lambda p: p.name)
def test_pni_full_configs_follow_the_pni_authors_recipe(path):
    config = load_config(path)
    assert (config.run.epochs, config.schedule.milestones, config.optim.weight_decay) == (160, [80, 120], 3e-4)
    assert config.defense["warmup_epochs"] == 5 and config.optim.nesterov
