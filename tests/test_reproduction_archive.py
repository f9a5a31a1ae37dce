"""The reproductions' archive (benchmarks/reproduce/protocol.py): what a run produced outlives ``runs/``.

A later checkout has no ``runs/``; it must report from the committed archive, never measure a run twice, and
refuse to mix the archived measurements with a model trained differently.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from robustlab.engine import Trainer
from robustlab.errors import ConfigError
from robustlab.experiment import config_from_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce"))
import protocol  # noqa: E402


def train_tiny(run_dir: Path, seed: int) -> Path:
    """One epoch of a small MLP on 600 digits images (about a second)."""
    Trainer(config_from_dict({
        "run": {"seed": seed, "epochs": 1, "progress": False, "out_dir": str(run_dir)},
        "data": {"name": "digits", "batch_size": 128, "train_subset": 600, "test_subset": 200},
        "model": {"name": "mlp_a3t"}, "optim": {"name": "adam", "lr": 0.002}, "defense": {"name": "standard"},
        "eval": {"every": 0, "eps": [0.1]}}), log=lambda _: None).fit()
    return run_dir


@pytest.fixture
def archive(tmp_path, monkeypatch):
    monkeypatch.setattr(protocol.Archive, "folder", tmp_path / "document_runs")
    monkeypatch.setattr(protocol.Measurements, "report_only", False)
    return tmp_path / "document_runs"


def test_a_run_is_reported_from_its_archive_after_its_directory_is_gone(tmp_path, archive):
    run = train_tiny(tmp_path / "runs" / "arm_seed0", seed=0)
    protocol.Archive.record_training(run)
    outcomes = protocol.Measurements(run).get("clean n=3", lambda: (np.array([1.0, 0.0, 0.5]), {}))
    log = protocol.history(run)
    shutil.rmtree(tmp_path / "runs")

    assert (archive / "arm_seed0.json").is_file()
    assert protocol.finished_epochs(run) == 1
    assert protocol.history(run) == log and log[0]["epoch"] == 1

    def measured_again():
        raise AssertionError("an archived measurement was computed again")

    np.testing.assert_array_equal(protocol.Measurements(run).get("clean n=3", measured_again), outcomes)
    model, data = protocol.load(run)
    assert len(data.test_x) == 200  # the archived config's test subset
    with pytest.raises(protocol.Missing, match="only its archive is here"):
        model(data.test_x[:2])


def test_a_missing_measurement_of_an_archived_run_is_missing_in_a_report(tmp_path, archive, monkeypatch):
    run = train_tiny(tmp_path / "runs" / "arm_seed0", seed=0)
    protocol.Archive.record_training(run)
    shutil.rmtree(tmp_path / "runs")
    monkeypatch.setattr(protocol.Measurements, "report_only", True)
    with pytest.raises(protocol.Missing, match="arm_seed0: clean n=3"):
        protocol.Measurements(run).get("clean n=3", lambda: (np.ones(3), {}))


def test_retraining_must_reproduce_the_archived_weights(tmp_path, archive):
    run = train_tiny(tmp_path / "runs" / "arm_seed0", seed=0)
    protocol.Archive.record_training(run)
    shutil.rmtree(run)
    protocol.Archive.record_training(train_tiny(run, seed=0))  # deterministic: the same weights, accepted
    shutil.rmtree(run)
    with pytest.raises(RuntimeError, match="differ from the archived ones"):
        protocol.Archive.record_training(train_tiny(run, seed=1))


def test_a_run_archived_with_every_needed_measurement_is_not_trained_again(tmp_path, archive):
    run = train_tiny(tmp_path / "runs" / "arm_seed0", seed=0)
    protocol.Archive.record_training(run)
    protocol.Measurements(run).get("clean n=3", lambda: (np.ones(3), {}))
    shutil.rmtree(tmp_path / "runs")
    arm = protocol.Arm("arm", "no/such/config.toml")  # training it would fail: the config does not exist
    assert protocol.train(arm, 0, tmp_path / "runs", epochs=1, needs=["clean n=3"], log=lambda _: None) == run
    with pytest.raises(ConfigError, match="config file not found"):  # a measurement is missing: it must train
        protocol.train(arm, 0, tmp_path / "runs", epochs=1, needs=["clean n=3", "pgd n=3"], log=lambda _: None)


@pytest.mark.parametrize("archived", [True, False])
def test_two_processes_measuring_one_run_keep_each_others_measurements(tmp_path, archive, monkeypatch, archived):
    if not archived:
        monkeypatch.setattr(protocol.Archive, "folder", None)  # <run>/reproduce.json instead
    run = tmp_path / "runs" / "arm_seed0"
    run.mkdir(parents=True)
    first, second = protocol.Measurements(run), protocol.Measurements(run)  # both opened before either measured
    first.get("deepfool n=2", lambda: (np.array([0.1, 0.2]), {}))
    second.get("cw n=2", lambda: (np.array([0.3, 0.4]), {}))

    def measured_again():
        raise AssertionError("a measurement the other process saved was computed again")

    np.testing.assert_array_equal(second.get("deepfool n=2", measured_again), [0.1, 0.2])
    reopened = protocol.Measurements(run)
    assert set(reopened.data) == {"deepfool n=2", "cw n=2"}
    np.testing.assert_array_equal(reopened.get("cw n=2", measured_again), [0.3, 0.4])


@given(n=st.integers(1, 2000), chunk=st.integers(1, 700))
def test_chunks_cover_the_examples_once_in_order(n, chunk):
    parts = protocol.chunks("eot_pgd", n, chunk)
    assert [a for _, a, _ in parts] == list(range(0, n, chunk))
    assert all(b - a == min(chunk, n - a) for _, a, b in parts)
    assert parts[0][0] == f"eot_pgd n={min(chunk, n)}"
    assert len({key for key, _, _ in parts}) == len(parts)
