"""The training loop: metrics, checkpoints every epoch, and exact resume after an interruption."""

from __future__ import annotations

import json

import pytest
import torch

from robustlab.checkpoint import load_checkpoint
from robustlab.defenses.adversarial import PGDAdversarialTraining
from robustlab.engine import Trainer, epoch_batches
from robustlab.errors import CheckpointError, ConfigError
from robustlab.experiment import config_from_dict
from robustlab.evaluation import EvalSettings, evaluate
from robustlab.schedule import lr_factor

# model_d has dropout (RNG state must be restored), Adam has state, PGD-AT has random starts.
TINY = {
    "run": {"seed": 3, "epochs": 3, "progress": False},
    "data": {"name": "digits", "batch_size": 128, "train_subset": 600, "test_subset": 200},
    "model": {"name": "model_d", "hidden": 64, "depth": 2},
    "optim": {"name": "adam", "lr": 0.002},
    "defense": {"name": "pgd_at", "warmup_epochs": 1, "attack": {"eps": 0.1, "steps": 2}},
    "eval": {"every": 2, "every_suite": "quick", "subset": 100, "pgd_steps": 3, "eps": [0.1]},
}


def tiny_config(out_dir, **overrides):
    raw = json.loads(json.dumps(TINY))
    raw["run"]["out_dir"] = str(out_dir)
    for section, values in overrides.items():
        raw[section].update(values)
    return config_from_dict(raw)


def test_training_writes_metrics_and_checkpoints(tmp_path):
    result = Trainer(tiny_config(tmp_path / "run"), log=lambda _: None).fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows == result.history
    assert "train_acc" in rows[0] and "train_acc_adv" in rows[1]  # warm-up epoch is clean, then adversarial
    assert "test_pgd_0.1_acc" in rows[1] and "test_pgd_0.1_acc" not in rows[0]
    assert "test_eot_samples" not in rows[1]  # a deterministic model: plain PGD
    assert rows[-1]["test_acc"] > 0.3  # chance is 0.1
    _, state, config = load_checkpoint(tmp_path / "run")
    assert state["epoch"] == 3 and config["defense"]["name"] == "pgd_at"


def test_tensorboard_scalars_hold_every_number_of_the_epoch_log_and_a_resume_appends(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(tiny_config(tmp_path / "run", run={"tensorboard": True, "epochs": 2}), log=lambda _: None).fit()
    # a resume may switch the scalars on or off (how a run is watched, not what it trains)
    Trainer(tiny_config(tmp_path / "run", run={"tensorboard": True}), resume=True, log=lambda _: None).fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    for key in ("train_loss", "train_acc", "test_acc", "lr", "test_pgd_0.1_acc"):
        logged = {e.step: e.value for e in events.Scalars(key)}
        expected = {r["epoch"]: r[key] for r in rows if key in r}
        assert logged.keys() == expected.keys() and all(logged[s] == pytest.approx(v) for s, v in expected.items())
    assert "epoch" not in events.Tags()["scalars"]


def test_resume_after_interruption_reproduces_uninterrupted_weights(tmp_path, monkeypatch):
    full = Trainer(tiny_config(tmp_path / "full"), log=lambda _: None)
    full.fit()

    calls = {"n": 0}
    original = PGDAdversarialTraining.loss

    def interrupt_in_epoch_3(self, model, batch, ctx):
        if ctx.epoch == 2:
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
        return original(self, model, batch, ctx)

    monkeypatch.setattr(PGDAdversarialTraining, "loss", interrupt_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config(tmp_path / "cut"), log=lambda _: None).fit()
    monkeypatch.setattr(PGDAdversarialTraining, "loss", original)
    assert load_checkpoint(tmp_path / "cut")[1]["epoch"] == 2

    resumed = Trainer(tiny_config(tmp_path / "cut"), resume=True, log=lambda _: None)
    assert resumed.start_epoch == 2
    resumed.fit()
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    def untimed(history):  # cost measurements aside (a resumed epoch adds the attack's 2-image shape probe)
        return [{k: v for k, v in row.items() if "time" not in k and "per_image" not in k} for row in history]

    assert untimed(full.history) == untimed(resumed.history)


def test_run_dir_guards(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        Trainer(tiny_config(tmp_path / "new"), resume=True)
    Trainer(tiny_config(tmp_path / "done", run={"epochs": 1}), log=lambda _: None).fit()
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(tiny_config(tmp_path / "done", run={"epochs": 1}))
    with pytest.raises(CheckpointError, match="model"):
        Trainer(tiny_config(tmp_path / "done", model={"hidden": 32}), resume=True)


def test_data_order_depends_only_on_seed_and_epoch():
    a = torch.cat(list(epoch_batches(100, 32, seed=1, epoch=4)))
    b = torch.cat(list(epoch_batches(100, 32, seed=1, epoch=4)))
    c = torch.cat(list(epoch_batches(100, 32, seed=1, epoch=5)))
    assert torch.equal(a, b) and not torch.equal(a, c) and sorted(a.tolist()) == list(range(100))


def test_learning_rate_schedules():
    cfg = config_from_dict({"schedule": {"name": "multistep", "milestones": [2, 4], "gamma": 0.1}}).schedule
    assert [round(lr_factor(cfg, e, 6), 6) for e in range(6)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    cos = config_from_dict({"schedule": {"name": "cosine", "warmup_epochs": 1}}).schedule
    assert lr_factor(cos, 0, 5) == 0.5 and lr_factor(cos, 1, 5) == 1.0 and lr_factor(cos, 4, 5) < 0.2


def test_add_on_terms_get_hooks_and_their_networks_are_checkpointed(tmp_path):
    """A term with its own network and optimiser: trained alongside, saved, and restored on resume."""
    from robustlab.config import Options
    from robustlab.defenses.base import TERMS, LossTerm, register_term

    class ProbeOptions(Options):
        weight: float = 0.1

    if "probe" not in TERMS:
        @register_term("probe", ProbeOptions)
        class ProbeTerm(LossTerm):
            def setup(self, model, ctx):
                self.net = torch.nn.Linear(10, 1)
                self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1)
                self.steps = 0

            def update_auxiliaries(self, model, batch, ctx):
                self.opt.zero_grad()
                self.net(torch.ones(1, 10)).pow(2).sum().backward()  # drives the probe's output to 0
                self.opt.step()
                self.steps += 1
                return {}

            def term(self, model, batch, out, ctx):
                assert out.x_adv is not None or ctx.epoch == 0  # reuses the defense's adversarial batch
                value = self.options.weight * model(batch.x).pow(2).mean()
                return value, {"value": value.detach()}

            def aux_modules(self):
                return {"net": self.net}

            def aux_optimizers(self):
                return {"opt": self.opt}

            def extra_state(self):
                return {"steps": self.steps}

            def load_extra_state(self, state):
                self.steps = state["steps"]

    config = tiny_config(tmp_path / "run", run={"epochs": 2})
    config.defense["terms"] = [{"name": "probe", "weight": 0.5}]
    trainer = Trainer(config, log=lambda _: None)
    trainer.fit()
    term = trainer.defense.terms[0]
    assert term.steps == 2 * 5  # 600 examples / batch 128 = 5 steps per epoch
    assert "train_probe_value" in trainer.history[-1]
    _, state, _ = load_checkpoint(tmp_path / "run")
    assert state["defense"]["terms"] == [{"steps": 10}]
    assert torch.equal(state["aux_modules"]["term0_probe.net"]["weight"], term.net.weight)
    config = tiny_config(tmp_path / "run", run={"epochs": 3})
    config.defense["terms"] = [{"name": "probe", "weight": 0.5}]
    resumed = Trainer(config, resume=True, log=lambda _: None)
    assert resumed.defense.terms[0].steps == 10
    assert torch.equal(resumed.defense.terms[0].net.weight, term.net.weight)


def test_unknown_term_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown term 'triplett'|unknown term"):
        tiny_config(tmp_path, defense={"terms": [{"name": "triplett"}]})
    with pytest.raises(ConfigError, match="list of tables"):
        tiny_config(tmp_path, defense={"terms": "triplet"})


def test_dataset_on_device_follows_the_policy_and_moves_every_tensor():
    from robustlab.data import load_dataset
    from robustlab.engine import dataset_on

    data = load_dataset("digits").subset(64, 32)
    meta = torch.device("meta")  # stands in for an accelerator: tensors move without memory
    assert dataset_on(data, torch.device("cpu"), "always") is data
    assert dataset_on(data, meta, "never") is data
    assert dataset_on(data, meta, "auto") is data  # "auto" moves only to CUDA
    moved = dataset_on(data, meta, "always")
    assert all(t.device.type == "meta" for t in (moved.train_x, moved.train_y, moved.test_x, moved.test_y))
    assert moved.train_x.shape == data.train_x.shape and moved.num_classes == data.num_classes
    assert moved.mean == data.mean and data.train_x.device.type == "cpu"


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_weight_decay_on_weights_leaves_biases_alone(name):
    """optim.weight_decay_on = "weights" (the TLA authors' choice): with a zero loss gradient, one step shrinks the
    weight matrix by lr·wd (SGD; Adam moves it by lr against the decay's sign) and leaves the bias unchanged."""
    from robustlab.engine import build_optimizer

    layer = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(layer.weight, 1.0)
    torch.nn.init.constant_(layer.bias, 1.0)
    config = config_from_dict({"optim": {"name": name, "lr": 0.1, "momentum": 0.0, "weight_decay": 0.5,
                                         "weight_decay_on": "weights"}})
    opt = build_optimizer(layer.parameters(), config)
    for p in layer.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    expected = 1.0 - 0.1 * 0.5 if name == "sgd" else 1.0 - 0.1
    assert torch.allclose(layer.weight, torch.full_like(layer.weight, expected))
    assert torch.equal(layer.bias, torch.ones_like(layer.bias))
    everything = build_optimizer(layer.parameters(), config_from_dict({"optim": {"name": name, "weight_decay": 0.5}}))
    assert [g["weight_decay"] for g in everything.param_groups] == [0.5]


def test_weight_decay_on_refuses_an_unknown_choice():
    with pytest.raises(ConfigError, match="optim.weight_decay_on"):
        config_from_dict({"optim": {"weight_decay_on": "biases"}})


@pytest.mark.parametrize("eot_samples", [1, 3])
def test_per_epoch_robust_accuracy_of_a_randomised_model_uses_eot_or_says_it_does_not(tmp_path, eot_samples):
    noisy = {"name": "noisy", "base": "resnet_v1", "base_options": {"depth": 8, "width": 0.25}}
    raw = json.loads(json.dumps(TINY))
    raw["run"].update(out_dir=str(tmp_path / "run"), epochs=1)
    raw.update(model=noisy, defense={"name": "standard"})
    raw["eval"].update(every=1, subset=40, eot_samples=eot_samples)
    config = config_from_dict(raw)
    lines: list[str] = []
    row = Trainer(config, log=lines.append).fit().history[0]
    assert row["test_eot_samples"] == eot_samples and "test_pgd_0.1_acc" in row
    warned = [line for line in lines if "one noise draw per gradient" in line]
    assert len(warned) == (1 if eot_samples == 1 else 0)


def test_the_per_epoch_adaptive_suite_attacks_a_randomised_model_with_eot(tmp_path):
    noisy = {"name": "noisy", "base": "resnet_v1", "base_options": {"depth": 8, "width": 0.25}}
    raw = json.loads(json.dumps(TINY))
    raw["run"].update(out_dir=str(tmp_path / "run"), epochs=1)
    raw.update(model=noisy, defense={"name": "standard"})
    raw["eval"] = {"every": 1, "subset": 30, "eps": [0.1], "eot_samples": 3}
    lines: list[str] = []
    row = Trainer(config_from_dict(raw), log=lines.append).fit().history[0]
    assert row["test_eot_samples"] == 3 and 0 <= row["test_adaptive_0.1_acc"] <= 1
    said = [line for line in lines if line.startswith("per-epoch robust accuracy: the adaptive_rand suite")]
    # the cheap pass at adaptive_eot_samples' 2 draws, then rand's stages at the run's eval.eot_samples
    assert len(said) == 1 and "apgd_ce_eot_cheap: 100 iterations, EOT over 2 draws" in said[0]
    assert "apgd_ce_eot: 100 iterations, EOT over 3 draws" in said[0]


def test_the_per_epoch_robust_accuracy_is_the_adaptive_suite_by_default_and_the_log_says_so(tmp_path):
    raw = json.loads(json.dumps(TINY))
    raw["run"].update(out_dir=str(tmp_path / "run"), epochs=2)
    raw["eval"] = {"every": 2, "subset": 60, "eps": [0.1]}
    lines: list[str] = []
    trainer = Trainer(config_from_dict(raw), log=lines.append)
    history = trainer.fit().history
    assert "test_adaptive_0.1_acc" not in history[0] and not any(k.startswith("test_pgd") for k in history[1])
    said = [line for line in lines if line.startswith("per-epoch robust accuracy")]
    assert len(said) == 1 and "the adaptive suite on the first 60 test examples" in said[0] and "not a claim" in said[0]
    assert "apgd_t: targeted DLR, the 3 classes nearest in a linearisation" in said[0]
    data = trainer.dataset
    alone = evaluate(trainer.model, data.test_x, data.test_y, EvalSettings(eps=[0.1], subset=60, gallery=0),
                     suite="adaptive", checks=False)
    assert history[1]["test_adaptive_0.1_acc"] == round(alone.robust_accuracy, 6)
    assert alone.robust_accuracy < alone.clean  # the attacks fool some of the 60


def test_a_run_begun_before_every_suite_existed_says_on_resume_that_its_columns_change(tmp_path):
    from robustlab.checkpoint import MANIFEST_FILE, sha256_of

    adaptive = {"every_suite": "adaptive", "subset": 20}
    Trainer(tiny_config(tmp_path / "run", run={"epochs": 1}, eval=adaptive), log=lambda _: None).fit()
    for ckpt_config in (tmp_path / "run" / "checkpoints").glob("epoch-*/config.json"):
        raw = json.loads(ckpt_config.read_text())
        del raw["eval"]["every_suite"]  # as a version before the key wrote it, with its manifest
        ckpt_config.write_text(json.dumps(raw))
        manifest_file = ckpt_config.parent / MANIFEST_FILE
        manifest = json.loads(manifest_file.read_text())
        manifest["config.json"] = sha256_of(ckpt_config)
        manifest_file.write_text(json.dumps(manifest))
    lines: list[str] = []
    Trainer(tiny_config(tmp_path / "run", run={"epochs": 2}, eval=adaptive), resume=True, log=lines.append).fit()
    assert any("began before eval.every_suite existed" in line for line in lines)


def test_a_run_stored_before_a_key_was_renamed_resumes(tmp_path):
    """AT²L's pretrain_epochs became warmup_epochs: a checkpoint holding the old name still resumes."""
    from robustlab.checkpoint import MANIFEST_FILE, sha256_of

    config = config_from_dict({"run": {"epochs": 1, "progress": False, "out_dir": str(tmp_path / "run")},
                               "data": {"name": "digits", "train_subset": 200, "test_subset": 50},
                               "model": {"name": "mlp_a3t"}, "optim": {"name": "adam", "lr": 1e-3},
                               "defense": {"name": "at2l", "eps": 0.1, "warmup_epochs": 1, "generation": "online"}})
    Trainer(config, log=lambda _: None).fit()
    stored = tmp_path / "run" / "config.json"
    raw = json.loads(stored.read_text())
    raw["defense"]["pretrain_epochs"] = raw["defense"].pop("warmup_epochs")
    stored.write_text(json.dumps(raw))
    for ckpt_config in (tmp_path / "run" / "checkpoints").glob("epoch-*/config.json"):
        ckpt_config.write_text(json.dumps(raw))  # as the old version wrote it, with its manifest
        manifest_file = ckpt_config.parent / MANIFEST_FILE
        manifest = json.loads(manifest_file.read_text())
        manifest["config.json"] = sha256_of(ckpt_config)
        manifest_file.write_text(json.dumps(manifest))
    more = config.model_copy(update={"run": config.run.model_copy(update={"epochs": 2})})
    resumed = Trainer(more, resume=True, log=lambda _: None)
    assert resumed.start_epoch == 1
    resumed.fit()


def test_each_epoch_logs_the_classifiers_passes_per_training_image(tmp_path):
    """Standard training costs one forward and one backward pass per image; PGD-AT with k steps adds k of each
    (every step taken in training), so a clean warm-up epoch reads 1/1 and an adversarial one k + 1 / k + 1."""
    steps = TINY["defense"]["attack"]["steps"]
    Trainer(tiny_config(tmp_path / "run", run={"epochs": 2}), log=lambda _: None).fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert (rows[0]["train_forward_per_image"], rows[0]["train_backward_per_image"]) == (1.0, 1.0)
    assert (rows[1]["train_forward_per_image"], rows[1]["train_backward_per_image"]) == (steps + 1, steps + 1)


def test_passes_a_defense_runs_through_the_models_parts_are_counted(tmp_path):
    """TLA embeds its triplets with ``features`` then ``head``, not the model's forward: those passes are charged
    (at the model's first layer), so with the same attack it costs more than PGD-AT, backward passes included."""
    def passes(defense):
        raw = json.loads(json.dumps(TINY))
        raw["run"].update(epochs=1, out_dir=str(tmp_path / defense["name"]))
        raw["defense"], raw["eval"]["every"] = defense, 0
        trainer = Trainer(config_from_dict(raw), log=lambda _: None)
        trainer.fit()
        return trainer.history[-1]["train_forward_per_image"], trainer.history[-1]["train_backward_per_image"]

    attack = {"eps": 0.1, "steps": 2, "step_size": 0.05}
    pgd = passes({"name": "pgd_at", "attack": attack})
    tla = passes({"name": "tla", "attack": attack, "embedding": "features"})
    assert pgd == (3.0, 3.0)
    assert tla[0] >= pgd[0] + 2 and tla[1] >= pgd[1] + 2  # at least the positive and negative embeddings
