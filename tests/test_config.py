"""Config validation: every bad key, type or value is one clear ConfigError naming the key."""

from __future__ import annotations

import pytest

from robustlab.config import apply_override
from robustlab.errors import ConfigError
from robustlab.experiment import config_from_dict, load_config


def write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_and_values_round_trip(tmp_path):
    cfg = load_config(write(tmp_path, '[data]\nname = "digits"\nbatch_size = 32\n[defense]\nname = "pgd_at"\n'
                                      '[defense.attack]\neps = 0.1\n'))
    assert cfg.data.batch_size == 32 and cfg.defense == {"name": "pgd_at", "attack": {"eps": 0.1}}
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("text, match", [
    ("[data]\nbatchsize = 3\n", r"unknown config key data\.batchsize \(did you mean 'batch_size'\?\)"),
    ("[dat]\nname = 'x'\n", r"unknown config key \[dat\]"),
    ("[data]\nbatch_size = 'big'\n", r"data\.batch_size must be an integer, got str"),
    ("[data]\nbatch_size = 1.5\n", r"data\.batch_size must be an integer"),
    ("[run]\nprogress = 1\n", r"run\.progress must be true or false"),
    ("[optim]\nlr = 'fast'\n", r"optim\.lr must be a number"),
    ("[run]\ndevice = 'tpu'\n", r"run\.device must be one of"),
    ("[data]\nbatch_size = 0\n", r"data\.batch_size must be > 0"),
    ("[eval]\neps = [0.1, 'a']\n", r"eval\.eps\[1\] must be a number"),
    ("[eval]\nattacks = ['fgsm', 'zzz']\n", r"unknown attack 'zzz'"),
    ("[model]\nname = 'lenet6'\n", r"unknown model 'lenet6' \(did you mean 'lenet5'\?\)"),
    ("[model]\nname = 'resnet_v1'\ndepht = 20\n", r"unknown config key model\.depht"),
    ("[model]\nname = 'resnet_v1'\ndepth = '20'\n", r"model\.depth must be an integer"),
    ("[defense]\nname = 'pgd_att'\n", r"unknown defense 'pgd_att' \(did you mean 'pgd_at'\?\)"),
    ("[defense]\nname = 'pgd_at'\n[defense.attack]\neps = 'many'\n", r"defense\.attack\.eps must be a number"),
    ("[defense]\nname = 'pgd_at'\nmix = 'both'\n", r"defense\.mix must be one of"),
    ("[defense]\nname = 'standard'\neps = 0.3\n", r"unknown config key defense\.eps"),
    ("[data\n", r"invalid TOML"),
    # a default step size belongs to the default's ε and steps (TLA: PGD-40 × 0.01; Learn2Perturb: ε 8/255)
    ("[defense]\nname = 'tla'\n[defense.attack]\nsteps = 7\n",
     r"sets steps = 7 but not step_size: the default step_size 0\.01 goes with ε 0\.3 and 40 steps; set step_size "
     r"\(2\.5·ε/steps = 0\.1071\)"),
    ("[defense]\nname = 'l2p'\n[defense.attack]\neps = 0.1\n", r"sets eps = 0\.1 but not step_size"),
])
def test_bad_config_raises_one_clear_error(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


def test_a_partial_attack_table_that_sets_its_step_size_keeps_the_rest_of_the_default(tmp_path):
    cfg = load_config(write(tmp_path, "[defense]\nname = 'tla'\n[defense.attack]\nsteps = 7\nstep_size = 0.1\n"))
    assert cfg.defense["attack"] == {"steps": 7, "step_size": 0.1}
    from robustlab.defenses import build_defense

    options = {k: v for k, v in cfg.defense.items() if k != "name"}
    attack = build_defense("tla", options).options.attack
    assert (attack.eps, attack.options()) == (0.3, {"steps": 7, "step_size": 0.1})


def test_a_stored_run_that_kept_a_default_step_size_resumes_with_it():
    """Runs stored before the step-size rule (a partial table changing steps) keep the step they trained with."""
    from robustlab.experiment import upgrade_stored_config

    stored = {"defense": {"name": "tla", "attack": {"eps": 0.3, "steps": 7}}}
    config = config_from_dict(upgrade_stored_config(stored))
    assert config.defense["attack"] == {"eps": 0.3, "steps": 7, "step_size": 0.01}
    same = {"defense": {"name": "tla", "attack": {"steps": 7, "step_size": 0.1}}}
    assert upgrade_stored_config(same)["defense"]["attack"] == {"steps": 7, "step_size": 0.1}


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_overrides_parse_toml_values_and_bare_strings(tmp_path):
    cfg = load_config(write(tmp_path, ""), ["data.batch_size=16", "eval.eps=[0.1, 0.2]", "data.name=digits",
                                            "run.progress=false", "defense.name=fgsm_at", "defense.lam=0.3"])
    assert cfg.data.batch_size == 16 and cfg.eval.eps == [0.1, 0.2] and cfg.data.name == "digits"
    assert cfg.run.progress is False and cfg.defense["lam"] == 0.3
    with pytest.raises(ConfigError, match="key=value"):
        apply_override({}, "data.batch_size")
    with pytest.raises(ConfigError, match="section.key"):
        apply_override({}, "batch_size=3")


def test_a_stored_config_with_flat_attack_keys_reads_as_the_nested_table():
    """Runs stored before [defense.attack] (flat eps/steps/step_size/attack_mode; A3T's attack = "pgd") resume."""
    from robustlab.experiment import upgrade_stored_config

    flat = {"defense": {"name": "pgd_at", "eps": 0.1, "steps": 3, "step_size": 0.0, "attack_mode": "train",
                        "mix": "weighted",
                        "terms": [{"name": "feature_discriminator", "attack": "pgd", "eps": 0.2, "steps": 2}]}}
    assert upgrade_stored_config(flat)["defense"] == {
        "name": "pgd_at", "mix": "weighted", "attack": {"eps": 0.1, "steps": 3, "model_mode": "train"},
        "terms": [{"name": "feature_discriminator", "attack": {"name": "pgd", "eps": 0.2, "steps": 2}}]}
    awp = {"defense": {"name": "awp", "base": "trades", "base_options": {"eps": 0.1, "beta": 3.0}}}
    assert upgrade_stored_config(awp)["defense"]["base_options"] == {"beta": 3.0, "attack": {"eps": 0.1}}
    at2l = {"defense": {"name": "at2l", "eps": 0.3, "pretrain_epochs": 2}}  # its own attack set: eps stays
    assert upgrade_stored_config(at2l)["defense"] == {"name": "at2l", "eps": 0.3, "warmup_epochs": 2}
    config = config_from_dict(upgrade_stored_config(flat))
    assert config.defense["attack"]["steps"] == 3
