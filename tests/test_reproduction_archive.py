"""The reproductions' archive (benchmarks/reproduce/protocol.py): what a run produced outlives ``runs/``.

A later checkout has no ``runs/``; it must report from the committed archive, never measure a run twice, and
refuse to mix the archived measurements with a model trained differently.
"""

from __future__ import annotations

import json
import shlex
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


@pytest.fixture
def document(monkeypatch):
    monkeypatch.setattr(protocol.Document, "runs", set())
    monkeypatch.setattr(protocol.Document, "smoke", False)
    monkeypatch.setattr(protocol, "LEFT_OUT", [])
    return protocol.Document


def test_a_report_from_less_than_the_committed_document_is_refused_and_keeps_it(tmp_path, archive, document,
                                                                               monkeypatch):
    path = tmp_path / "doc.md"
    document.runs = {"at_seed0", "tla_seed0"}
    protocol.write_document(path, "# A document\n\nbody")
    committed = path.read_text()
    assert protocol.committed_runs(path) == {"at_seed0", "tla_seed0"}
    monkeypatch.setattr(protocol.Measurements, "report_only", True)
    document.runs = {"at_seed0"}  # a fresh clone without tla_seed0's archive
    with pytest.raises(protocol.ReportRefused, match=r"refusing to overwrite .*doc\.md from less than it holds; "
                                                     r"missing: tla_seed0 \("):
        protocol.write_document(path, "# A document\n\nemptier")
    assert path.read_text() == committed
    document.runs = {"at_seed0", "tla_seed0"}
    protocol.write_document(path, "# A document\n\nbody")  # the same runs: rendered again, unchanged
    assert path.read_text() == committed


def test_a_quick_document_is_titled_a_smoke_run_and_carries_no_verdict(tmp_path, archive, document):
    document.smoke = True
    results = {"AT": {0: {"acc": np.array([1, 0, 1, 0])}, 1: {"acc": np.array([1, 0, 0, 0])}},
               "TLA": {0: {"acc": np.array([1, 1, 1, 0])}, 1: {"acc": np.array([1, 1, 1, 1])}}}
    c = protocol.compare_arms("accuracy", "AT", "TLA", 2.9, results, "acc")
    assert c.verdict is None and c.verdict_text == "no verdict: full protocol (this document) failed"
    path = tmp_path / "doc.md"
    protocol.write_document(path, "# TLA vs AT\n\nbody", [c])
    assert path.read_text().startswith("# TLA vs AT — SMOKE RUN (--quick)\n\n**A smoke run")
    summary = json.loads(path.with_suffix(".json").read_text())
    assert summary["smoke"] and summary["comparisons"][0]["direction"] is None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["l2p", "critic", "tla", "a3t", "at2l"])
def test_a_committed_document_regenerates_unchanged_from_its_archive(tmp_path, name):
    """A fresh checkout has no runs/: ``--report-only`` renders the committed document from the archive alone."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    docs = root / "docs" / "results" / "reproduction"
    shutil.copytree(docs / f"{name}_runs", tmp_path / f"{name}_runs")
    out = tmp_path / f"{name}.md"
    committed = (docs / f"{name}.md").read_text()
    command = next(line for line in committed.splitlines() if f"benchmarks/reproduce/{name}.py" in line)
    args = shlex.split(command.split(f"benchmarks/reproduce/{name}.py", 1)[1])  # the document's own arguments
    spec = importlib.util.spec_from_file_location(f"reproduce_{name}", root / "benchmarks" / "reproduce" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([*args, "--report-only", "--out", str(out)]) == 0

    def body(text):  # the command line names this test's --out: everything else must match
        return [line for line in text.splitlines() if "benchmarks/reproduce/" not in line]
    assert body(out.read_text()) == body(committed)


def test_the_readme_claims_table_is_the_one_the_documents_give():
    import claims

    for path, text in claims.pages().items():  # the README's summary and the protocol page's full table
        assert text == path.read_text(), f"{path.name}: run benchmarks/reproduce/claims.py"
    assert claims.main(["--check"]) == 0
    for name, *_ in claims.CLAIMS:  # a document without a verdict file is listed as withdrawn, and says so itself
        if not (claims.DOCS / f"{name}.json").is_file():
            assert "Withdrawn" in (claims.DOCS / f"{name}.md").read_text().split("\n", 4)[2]
