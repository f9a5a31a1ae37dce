"""Short real training runs on MNIST-5k: the defense must beat its baseline where it should."""

from __future__ import annotations

import pytest

from robustlab.attacks import PGD
from robustlab.engine import Trainer
from robustlab.evaluation.outcome import accuracy
from robustlab.experiment import config_from_dict


def train(tmp_path, name, defense):
    config = config_from_dict({
        "run": {"seed": 0, "epochs": 4, "progress": False, "out_dir": str(tmp_path / name)},
        "data": {"name": "mnist5k", "batch_size": 64, "test_subset": 300},
        "model": {"name": "lenet5"},
        "optim": {"name": "adam", "lr": 0.001},
        "defense": defense,
    })
    trainer = Trainer(config, log=lambda _: None)
    trainer.fit()
    return trainer.model.eval(), trainer.dataset


@pytest.mark.slow
def test_pgd_at_beats_standard_training_under_pgd(tmp_path):
    standard, data = train(tmp_path, "standard", {"name": "standard"})
    robust, _ = train(tmp_path, "pgd_at", {"name": "pgd_at", "eps_ramp_epochs": 2, "attack": {"eps": 0.3, "steps": 3}})
    x, y = data.test_x, data.test_y
    attack = PGD(0.3, steps=20, step_size=0.03)
    clean_std, clean_rob = accuracy(standard, x, y), accuracy(robust, x, y)
    pgd_std, pgd_rob = accuracy(standard, x, y, attack=attack), accuracy(robust, x, y, attack=attack)
    assert clean_std > 0.9 and clean_rob > 0.8
    assert pgd_std < 0.1  # an undefended model is broken at ε 0.3
    assert pgd_rob > pgd_std + 0.2, (pgd_rob, pgd_std)
