"""benchmarks/leaderboard.py end to end on two tiny defenses: trains, measures, archives, ranks, flags, reports from
the archive alone, and refuses rows that break the protocol."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import leaderboard  # noqa: E402

SHARED = """[run]
epochs = 6
progress = false

[data]
name = "digits"
batch_size = 64
train_subset = 1200
test_subset = 60

[model]
name = "model_d"
hidden = 64
depth = 2

[optim]
name = "adam"
lr = 0.005

[eval]
every = 0
"""

ROWS = {
    "standard": '[defense]\nname = "standard"\n',
    "pgd_at": '[defense]\nname = "pgd_at"\n\n[defense.attack]\neps = 0.1\nsteps = 2\nstep_size = 0.125\n',
}


def write_protocol(tmp_path: Path, rows: dict[str, str], **changes) -> Path:
    folder = tmp_path / "rows"
    folder.mkdir(exist_ok=True)
    for name, defense in rows.items():
        (folder / f"{name}.toml").write_text(SHARED.replace("epochs = 6", changes.get(name, "epochs = 6")) + defense)
    path = tmp_path / "tiny.toml"
    path.write_text('title = "tiny"\nrows = "rows"\nout = "unused.md"\nbaseline = "pgd_at"\neps = 0.1\n'
                    "seeds = [0, 1]\ntest_subset = 40\nclean_draws = 2\nmax_gap = 40.0\nattack_steps = 2\n"
                    "eps_ramp_epochs = 0\nclean_warmup = []\n")
    return path


def run(tmp_path: Path, protocol: Path, *extra: str) -> int:
    return leaderboard.main(["--protocol", str(protocol), "--runs", str(tmp_path / "runs"),
                             "--out", str(tmp_path / "docs" / "leaderboard.md"), *extra])


def test_the_leaderboard_trains_measures_ranks_and_reports_from_its_archive(tmp_path):
    protocol = write_protocol(tmp_path, ROWS)
    assert run(tmp_path, protocol) == 0
    doc = (tmp_path / "docs" / "leaderboard.md").read_text()
    lines = [ln for ln in doc.splitlines() if ln.startswith("| ")]
    body = {ln.split(" | ")[1]: ln.split(" | ") for ln in lines[1:]}
    assert set(body) == {"standard", "pgd_at"}
    # adversarial training keeps more under the standard suite than standard training, so it ranks first
    assert lines[1].split(" | ")[1] == "pgd_at" and body["standard"][0] == "| 2"
    robust = {name: float(cells[4].split()[0]) for name, cells in body.items()}
    assert robust["pgd_at"] > robust["standard"]
    assert body["standard"][6] == "none" and body["pgd_at"][6] != "none"  # the training attack, where there is one
    # cost: standard training is 1 forward and 1 backward pass per image; PGD-2 adds 2 of each
    assert body["standard"][9] == "1.0, 1.0" and body["pgd_at"][9] == "3.0, 3.0"
    assert body["pgd_at"][2] == body["standard"][2] == "2"  # seeds
    assert (tmp_path / "docs" / "leaderboard.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "docs" / "leaderboard.json").read_text())
    assert [c["method"] for c in summary["comparisons"]] == ["standard"]
    assert summary["comparisons"][0]["mean"] == pytest.approx(robust["standard"] - robust["pgd_at"], abs=0.11)
    archived = sorted(p.name for p in (tmp_path / "docs" / "leaderboard_runs").iterdir())
    assert archived == ["pgd_at_seed0.json", "pgd_at_seed1.json", "standard_seed0.json", "standard_seed1.json"]

    # a fresh checkout: no runs, only the archive; the report is the same document
    import shutil
    shutil.rmtree(tmp_path / "runs")
    assert run(tmp_path, protocol, "--report-only") == 0
    assert (tmp_path / "docs" / "leaderboard.md").read_text() == doc


def test_a_row_that_fails_a_gate_is_flagged_and_ranked_below_every_row_that_passes(tmp_path, monkeypatch):
    protocol = write_protocol(tmp_path, ROWS)
    monkeypatch.setattr(leaderboard, "measure", lambda run_dir, p, device: fake_measure(run_dir))
    monkeypatch.setattr(leaderboard, "train", lambda arm, seed, root, **kw: arm.run_dir(root, seed))
    monkeypatch.setattr(leaderboard, "finished_epochs", lambda run_dir: 6)
    monkeypatch.setattr(leaderboard, "cost", lambda run_dir: {"cpu_s_epoch": 1.0, "cpu_s": 2.0, "forward": 1.0,
                                                              "backward": 1.0})
    assert run(tmp_path, protocol) == 0
    lines = [ln for ln in (tmp_path / "docs" / "leaderboard.md").read_text().splitlines() if ln.startswith("| ")]
    # pgd_at holds more under the suite but its training attack is 60 points above it: flagged, below standard
    assert [ln.split(" | ")[1] for ln in lines[1:]] == ["standard", "pgd_at"]
    assert lines[1].startswith("| 1 |") and lines[2].startswith("| – |") and "FLAGGED" in lines[2]
    assert "not masked" in lines[2] and "FLAGGED" not in lines[1]


def fake_measure(run_dir: Path) -> dict:
    import numpy as np
    masked = run_dir.name.startswith("pgd_at")
    out = {"clean": np.ones(10), "robust": np.r_[np.ones(3 if masked else 2), np.zeros(7 if masked else 8)],
           "suite": "standard", "failed_checks": []}
    if masked:
        out.update(training_attack=np.r_[np.ones(9), np.zeros(1)], training_attack_name="PGD-2")
    return out


def test_rows_that_break_the_protocol_are_refused_before_anything_runs(tmp_path):
    protocol = write_protocol(tmp_path, ROWS, standard="epochs = 5")
    with pytest.raises(SystemExit, match=r"standard.toml: \[run\] differ from pgd_at.toml's"):
        run(tmp_path, protocol)
    protocol = write_protocol(tmp_path, ROWS)
    with pytest.raises(SystemExit, match="--rows: no config for trades"):
        run(tmp_path, protocol, "--rows", "trades")
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit, match="--seeds: 7 not among"):
        run(tmp_path, protocol, "--seeds", "7")
    stepped = dict(ROWS, pgd_at=ROWS["pgd_at"].replace("steps = 2\nstep_size = 0.125", "steps = 3\nstep_size = 0.05"))
    with pytest.raises(SystemExit, match=r"pgd_at.toml: its training attack takes 3 steps of 0.05: the protocol's"):
        run(tmp_path, write_protocol(tmp_path, stepped))
    warm = dict(ROWS, pgd_at=ROWS["pgd_at"].replace('name = "pgd_at"\n', 'name = "pgd_at"\nwarmup_epochs = 1\n'))
    with pytest.raises(SystemExit, match="warmup_epochs = 1: no clean warm-up in this protocol"):
        run(tmp_path, write_protocol(tmp_path, warm))
    protocol = write_protocol(tmp_path, ROWS)
    (tmp_path / "tiny.toml").write_text((tmp_path / "tiny.toml").read_text() + "surprise = 1\n")
    with pytest.raises(SystemExit, match=r"unknown keys \['surprise'\]"):
        run(tmp_path, protocol)


def test_a_row_whose_training_diverges_is_flagged_not_fatal_and_stays_in_the_report(tmp_path, monkeypatch):
    from robustlab.errors import TrainingDiverged

    protocol = write_protocol(tmp_path, ROWS)
    real_train = leaderboard.train

    def train(arm, seed, root, **kw):
        if arm.label == "standard" and seed == 1:
            raise TrainingDiverged("training diverged: the loss is nan at step 3 of 19 in epoch 2")
        return real_train(arm, seed, root, **kw)

    monkeypatch.setattr(leaderboard, "train", train)
    assert run(tmp_path, protocol) == 0
    doc = (tmp_path / "docs" / "leaderboard.md").read_text()
    standard = next(ln for ln in doc.splitlines() if ln.startswith("| – | standard"))
    assert "1 (+1 diverged)" in standard and "stable training (seed 1 diverged: training diverged" in standard
    assert doc.index("| 1 | pgd_at") < doc.index("| – | standard")
    monkeypatch.setattr(leaderboard, "train", real_train)
    assert run(tmp_path, protocol, "--report-only") == 0  # the divergence is archived: reported, not retried
    assert (tmp_path / "docs" / "leaderboard.md").read_text() == doc


@pytest.mark.parametrize("name", ["mnist5k", "cifar10"])
def test_the_shipped_protocols_read_and_every_row_shares_them(name):
    """configs/leaderboard/{mnist5k,cifar10}.toml and their 16 rows (one per defense): the same training set-up and
    training attack, checked as the leaderboard checks them before anything runs."""
    from robustlab.defenses.base import DEFENSES

    protocol = leaderboard.Protocol.read(ROOT / "configs" / "leaderboard" / f"{name}.toml")
    rows = leaderboard.row_configs(protocol, None)
    assert sorted(r.name for r in rows) == sorted(DEFENSES.names())  # every defense robustlab trains
    attacks = {r.name: leaderboard.defense_attack_table(leaderboard.load_config(r.config).defense) for r in rows}
    assert {n for n, t in attacks.items() if t is None} == {"standard", "vat", "margin", "adversary_critic"}
    assert attacks["awp"].name == "pgd" and attacks["at2l"].name == "fgsm"  # through AWP's base, AT²L's one attack


@pytest.mark.slow
def test_the_committed_leaderboard_regenerates_unchanged_from_its_archive(tmp_path):
    """A fresh checkout has no runs/: ``--report-only`` renders docs/leaderboard.md from docs/leaderboard_runs/."""
    import shutil

    shutil.copytree(ROOT / "docs" / "leaderboard_runs", tmp_path / "leaderboard_runs")
    out = tmp_path / "leaderboard.md"
    assert leaderboard.main(["--report-only", "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0

    def body(text):  # the command line and the folder of runs name this test's paths: everything else must match
        return [line for line in text.splitlines() if "benchmarks/leaderboard.py" not in line
                and "finished runs and measurements are reused" not in line]
    assert body(out.read_text()) == body((ROOT / "docs" / "leaderboard.md").read_text())


def test_the_readme_reading_of_the_leaderboard_quotes_only_the_documents_numbers():
    """The README's paragraph on the leaderboard cites numbers; each must stand in docs/leaderboard.md, so a
    regenerated table cannot leave a stale number beside it."""
    import re

    section = (ROOT / "README.md").read_text().split("## Which defense? The leaderboard")[1].split("\n## ")[0]
    document = (ROOT / "docs" / "leaderboard.md").read_text()
    quoted, present = set(re.findall(r"\d+\.\d+", section)), set(re.findall(r"\d+\.\d+", document))
    assert quoted and quoted <= present, quoted - present
