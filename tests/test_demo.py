"""`robustlab demo` end to end at a tiny scale: both models trained, the curve and the standard suite measured, the
table, CSV, JSON and plot written; a rerun reuses the runs and the standard suite's state."""

from __future__ import annotations

import json

import pytest

from robustlab.demo import run_demo

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_demo_writes_its_table_and_reuses_a_finished_run(tmp_path):
    kwargs = dict(epochs_scale=0.1, eval_subset=40, standard_subset=20, pgd_steps=3, pgd_step_size=0.0)
    lines: list[str] = []
    results = run_demo(tmp_path, log=lines.append, **kwargs)
    assert set(results) == {"standard", "pgd_at"}
    table = (tmp_path / "results.md").read_text()
    assert "| STANDARD ε=0.3 |" in table and "| pgd_at |" in table
    assert table.startswith("# robustlab demo: LeNet-5 on MNIST-5k, accuracy (%) — SMOKE RUN (--quick: 0.1× the "
                            "epochs, 40 test images, the standard suite on 20)")  # a cut-down demo says so
    assert "Reused from an earlier run" not in table
    data = json.loads((tmp_path / "results.json").read_text())
    standard_suite = data["pgd_at"][1]
    assert standard_suite["suite"] == "standard" and standard_suite["claim"] and standard_suite["examples"] == 20
    assert (tmp_path / "accuracy_vs_eps.png").read_bytes()[:8] == PNG
    assert len((tmp_path / "results.csv").read_text().splitlines()) > 20
    again: list[str] = []
    run_demo(tmp_path, log=again.append, **kwargs)
    text = "\n".join(again)
    assert "reusing the finished run" in text and "(resumed:" in text and "training" not in text.split("\n")[0]
    assert ("Reused from an earlier run, not recomputed: standard's training, standard's standard suite, pgd_at's "
            "training, pgd_at's standard suite.") in text
