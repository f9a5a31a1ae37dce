"""A broken model gets no robustness number; a diverging run stops; the rough edges a hostile user found are one
clear line each (README: What robustlab refuses)."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import robustlab
from robustlab.cli import main
from robustlab.engine import Trainer
from robustlab.errors import BrokenModel, CheckpointError, ConfigError, TrainingDiverged
from robustlab.evaluation.outcome import accuracy
from robustlab.experiment import config_from_dict, load_config
from robustlab.predictions import batch_accuracy, correct_predictions
from tiny_run import tiny_run_toml


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robustlab: error: "), err
    return err[0]


def nan_mlp() -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    return model.eval()


# --- non-finite logits are never correct ------------------------------------------------------------------------
def test_a_nan_row_is_never_a_correct_prediction():
    logits = torch.tensor([[float("nan")] * 3, [1.0, 0.0, 0.0], [float("inf"), 0.0, 0.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 0, 0, 1])
    assert correct_predictions(logits, y).tolist() == [False, True, False, True]  # argmax of a NaN row is 0
    assert float(batch_accuracy(logits, y)) == 0.5


def test_a_nan_model_gets_no_number_from_benchmark_and_zero_accuracy(digits):
    x, y = digits.test_x[:60], digits.test_y[:60]
    assert (y == 0).any()  # a NaN model would be "right" on these
    assert accuracy(nan_mlp(), x, y) == 0.0
    with pytest.raises(BrokenModel, match="NaN or infinite logits on 60 of 60 clean examples"):
        robustlab.benchmark(nan_mlp(), x, y, eps=0.1)


def test_the_cli_refuses_a_nan_model_before_any_attack(tmp_path, monkeypatch, capsys):
    (tmp_path / "user_nets.py").write_text(
        "import torch\n\n\ndef mlp():\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))\n\n\n"
        "def needs(width):\n    return mlp()\n\n\ndef fails():\n    raise RuntimeError('no such layer')\n")
    save_file(nan_mlp().state_dict(), str(tmp_path / "nan.safetensors"))
    monkeypatch.chdir(tmp_path)
    base = ["eval", "--dataset", "digits", "--eps", "0.1", "--subset", "20"]
    assert main(base + ["--model", "user_nets:mlp", "--weights", "nan.safetensors"]) == 2
    assert "NaN or infinite logits" in error_line(capsys) and not list(tmp_path.glob("runs/**/eval_*.json"))
    assert main(base + ["--model", "user_nets:needs"]) == 2
    assert "must be callable with no arguments, its signature is needs(width)" in error_line(capsys)
    assert main(base + ["--model", "user_nets:fails"]) == 2
    assert "user_nets:fails() raised RuntimeError: no such layer" in error_line(capsys)
    save_file({"1.weight": torch.zeros(5, 64), "1.bias": torch.zeros(5)}, str(tmp_path / "small.safetensors"))
    assert main(base + ["--model", "user_nets:mlp", "--weights", "small.safetensors"]) == 2
    assert "size mismatch for 1.weight" in error_line(capsys)


class NanInEval(nn.Module):
    """Trains normally, outputs NaN in eval mode: a broken model whose training loss looks fine."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        out = self.net(x)
        return out if self.training else out * float("nan")


@pytest.mark.parametrize("suite, columns", [("quick", ("fgsm", "pgd")), ("adaptive", ("adaptive",))])
def test_the_per_epoch_evaluation_counts_a_nan_model_wrong(tmp_path, monkeypatch, suite, columns):
    import robustlab.engine as engine

    monkeypatch.setattr(engine, "build_model_for", lambda *a, **k: NanInEval())
    config = config_from_dict({"run": {"epochs": 1, "progress": False, "out_dir": str(tmp_path / "run")},
                               "data": {"name": "digits"}, "model": {"name": "mlp_a3t"},
                               "optim": {"name": "adam", "lr": 0.01},
                               "eval": {"eps": [0.1], "every": 1, "every_suite": suite, "subset": 50,
                                        "pgd_steps": 2}})
    lines = []
    row = Trainer(config, log=lines.append).fit().history[0]
    assert row["test_acc"] == 0.0 and all(row[f"test_{name}_0.1_acc"] == 0.0 for name in columns)
    assert any("NaN or infinite logits" in line for line in lines)


# --- a diverging run stops -----------------------------------------------------------------------------------------
def test_a_diverging_run_stops_with_one_line_naming_the_epoch_and_step(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_run_toml().format(out=tmp_path / "run"))
    assert main(["train", "--config", str(config), "--set", "optim.lr=1e308"]) == 2
    line = error_line(capsys)
    assert "training diverged: the loss is" in line and "at step" in line and "in epoch 1" in line
    assert "Lower optim.lr (now 1e+308)" in line


def trainer_with_a_changed_step(tmp_path, monkeypatch, epochs: int, change) -> Trainer:
    """A tiny run whose defense's step output is passed through ``change(out, ctx)``."""
    trainer = Trainer(load_config_text(tmp_path, epochs=epochs), log=lambda _m: None)
    step = trainer.defense.step

    def changed(model, batch, ctx):
        out = step(model, batch, ctx)
        change(out, ctx)
        return out

    monkeypatch.setattr(trainer.defense, "step", changed)
    return trainer


def test_divergence_keeps_the_last_good_checkpoint_as_latest(tmp_path, monkeypatch):
    def nan_in_the_third_epoch(out, ctx):
        if ctx.epoch == 2:
            out.loss = out.loss * float("nan")

    trainer = trainer_with_a_changed_step(tmp_path, monkeypatch, 3, nan_in_the_third_epoch)
    with pytest.raises(TrainingDiverged, match=r"in epoch 3; the last good checkpoint, epoch-0002, stays the latest"):
        trainer.fit()
    run = tmp_path / "run"
    assert (run / "checkpoints" / "latest").read_text().strip() == "epoch-0002"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    resumed = Trainer(load_config_text(tmp_path, epochs=3), resume=True, log=lambda _m: None)
    assert resumed.start_epoch == 2  # --resume continues from the last good epoch


def load_config_text(tmp_path, epochs: int):
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_run_toml().format(out=tmp_path / "run").replace("epochs = 1", f"epochs = {epochs}"))
    return load_config(path, [])


def test_metrics_are_strict_json_even_with_a_nan_metric(tmp_path, monkeypatch):
    def nan_metric(out, ctx):
        out.metrics["odd"] = torch.tensor(float("nan"))

    trainer_with_a_changed_step(tmp_path, monkeypatch, 1, nan_metric).fit()
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "NaN" not in text and json.loads(text.splitlines()[0])["train_odd"] is None


# --- config bounds ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("section, match", [
    ({"schedule": {"name": "multistep", "milestones": [1], "gamma": -1}}, "schedule.gamma must be > 0, got -1"),
    ({"schedule": {"name": "multistep", "milestones": [3, 2]}}, "milestones must be increasing epochs >= 1"),
    ({"schedule": {"name": "one_cycle", "peak": 1.5}}, "schedule.peak must be < 1"),
    ({"optim": {"momentum": 1.5}}, "optim.momentum must be < 1"),
    ({"optim": {"name": "adam", "betas": [0.9, 1.0]}}, r"betas must be in \[0, 1\)"),
    ({"eval": {"pgd_step_size": -0.01}}, "eval.pgd_step_size must be >= 0, got -0.01"),
])
def test_schedule_optimiser_and_eval_options_are_bounded(section, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(section)


# --- inputs a later stage could not take: refused once, up front --------------------------------------------------
def test_integer_labels_of_any_dtype_work(trained_digits_mlp, digits):
    x, y = digits.test_x[:30], digits.test_y[:30]
    base = robustlab.benchmark(trained_digits_mlp, x, y, eps=0.1, steps=3, square_queries=20)
    for dtype in (torch.int32, torch.uint8, torch.int16):
        r = robustlab.benchmark(trained_digits_mlp, x, y.to(dtype), eps=0.1, steps=3, square_queries=20)
        assert torch.equal(r.robust, base.robust)


class FlattenMLP(nn.Module):
    def __init__(self, inputs: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(inputs, 10))

    def forward(self, x):
        return self.net(x)


class OneRow(nn.Module):
    """Returns one row whatever the batch: a model that reduces over the batch by mistake."""

    def forward(self, x):
        return x.flatten(1).mean(0, keepdim=True)[:, :10]


@pytest.mark.parametrize("model, x, match", [
    (FlattenMLP(64), torch.rand(6, 8, 8, 1), r"needs images \(N, C, H, W\).*channels last\?"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(10)), torch.rand(6, 8, 8),
     "does not accept inputs of shape"),
    (OneRow(), torch.rand(6, 1, 8, 8), r"one row per example: for a batch of 2 inputs .* it returned \(1, 10\)"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 1)), torch.rand(6, 1, 8, 8), "at least 2 classes"),
])
def test_a_model_or_batch_a_later_stage_cannot_take_is_refused_up_front(model, x, match):
    y = torch.zeros(len(x), dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        robustlab.benchmark(model, x, y, eps=0.1)


# --- files and disks ------------------------------------------------------------------------------------------------
def test_a_corrupt_epoch_in_the_state_file_names_the_file(tmp_path):
    config = load_config_text(tmp_path, epochs=1)
    Trainer(config, log=lambda _m: None).fit()
    state_file = next((tmp_path / "run" / "checkpoints").glob("epoch-*/state.json"))
    state = json.loads(state_file.read_text())
    state["epoch"] = "one"
    state_file.write_text(json.dumps(state))
    manifest = state_file.with_name("manifest.json")
    digests = json.loads(manifest.read_text())
    import hashlib

    digests["state.json"] = hashlib.sha256(state_file.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(digests))
    with pytest.raises(CheckpointError, match=r"state.json is corrupt: its epoch or global_step is not an integer"):
        Trainer(load_config_text(tmp_path, epochs=2), resume=True, log=lambda _m: None)


def test_a_dangling_link_as_out_dir_is_named(tmp_path, capsys):
    link = tmp_path / "out"
    os.symlink(tmp_path / "nowhere", link)
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_run_toml().format(out=link))
    assert main(["train", "--config", str(config)]) == 2
    assert "is a symbolic link to" in error_line(capsys)


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch,
                                                                                       capsys):
    import robustlab.checkpoint as checkpoint

    config = tmp_path / "tiny.toml"
    config.write_text(tiny_run_toml().format(out=tmp_path / "run").replace("epochs = 1", "epochs = 2"))
    real = checkpoint.save_file
    calls = {"n": 0}

    def full_disk(tensors, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1's two files are written; epoch 2 finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    assert main(["train", "--config", str(config)]) == 2
    line = error_line(capsys)
    assert "cannot write checkpoint epoch-0002" in line and "No space left on device" in line
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "epoch-0001"
    assert not list(checkpoints.glob(".epoch-*"))  # nothing half-written left behind
    monkeypatch.setattr(checkpoint, "save_file", real)
    assert main(["train", "--config", str(config), "--resume"]) == 0
