"""The `adaptive` suite is never weaker than `standard`: on two small models of the validation zoo (configs/zoo),
one adversarially trained and one behind a masking wrapper, with less work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import robustlab
from robustlab.engine import Trainer
from robustlab.errors import ConfigError
from robustlab.evaluation import EvalSettings, evaluate
from robustlab.evaluation.runner import probe_split
from robustlab.evaluation.state import EvaluationState
from robustlab.evaluation.suites import ModelFacts, Stage, Suite, adaptive
from robustlab.experiment import load_config
from robustlab.models.masked import masked
from robustlab.runs import load_trained_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def zoo_digits_pgd_at(tmp_path_factory):
    """configs/zoo/digits_pgd_at.toml, shortened to 8 epochs (a few CPU seconds)."""
    out = tmp_path_factory.mktemp("zoo") / "digits_pgd_at"
    config = load_config(ROOT / "configs/zoo/digits_pgd_at.toml",
                         [f"run.out_dir={json.dumps(str(out))}", "run.epochs=8", 'run.device="cpu"'])
    Trainer(config, log=lambda _m: None).fit()
    model, _, data, _ = load_trained_model(str(out))
    return model.eval(), data


@pytest.mark.parametrize("mask", [None, ("input_quantizer", {"levels": 1}), ("logit_scale", {"scale": 1e4})])
def test_adaptive_is_as_strong_as_standard_for_less_work(zoo_digits_pgd_at, mask):
    model, data = zoo_digits_pgd_at
    if mask:
        model = masked(model, mask[0], **mask[1])
    x, y = data.test_x[:120], data.test_y[:120]
    standard = robustlab.benchmark(model, x, y, eps=0.1, suite="standard", square_queries=1000)
    adaptive = robustlab.benchmark(model, x, y, eps=0.1, suite="adaptive", square_queries=1000)
    assert adaptive.suite == "adaptive" and not adaptive.claim  # not a claim before the zoo validates it
    assert 0 < standard.clean == adaptive.clean
    assert adaptive.robust_accuracy <= standard.robust_accuracy + 0.001, (adaptive.rows, standard.rows)
    rows = {r["attack"]: r for r in adaptive.rows}
    if mask:  # the masking is caught: no shortcuts, Square on every example still robust, then APGD-T (9), FAB-T
        assert not next(c for c in adaptive.checks if c.name == "input_gradients").passed
        assert rows["square"]["attacked"] == round(rows["apgd_t"]["robust_after"] * len(x))
        assert rows["fab_t"]["attacked"] == round(rows["apgd_t9"]["robust_after"] * len(x))
    elif rows["square"]["fooled"] == 0:  # the fast path held: a Square probe only, no escalation stages
        assert rows["square"]["attacked"] < round(rows["apgd_t"]["robust_after"] * len(x))
        assert rows["apgd_t9"]["attacked"] == rows["fab_t"]["attacked"] == 0
        assert adaptive.passes["forward_per_image"] < standard.passes["forward_per_image"] / 3


def test_the_probe_takes_the_lowest_margins_and_a_random_share():
    todo = torch.arange(100)
    margin = torch.linspace(1.0, 0.0, 100)  # example 99 has the smallest margin
    probe, rest = probe_split(todo, margin, 0.2, seed=1)
    assert len(probe) == 20 and len(rest) == 80 and not set(probe.tolist()) & set(rest.tolist())
    assert set(range(90, 100)) <= set(probe.tolist())  # the 10 lowest margins
    assert margin[rest].tolist() == sorted(margin[rest].tolist())  # the rest: smallest margin first
    again, _ = probe_split(todo, margin, 0.2, seed=1)
    assert torch.equal(again, probe)


def test_square_give_up_and_an_escalation_without_fab_reach_the_suite_and_cut_work_on_a_masked_model(
        zoo_digits_pgd_at):
    """On the binarised digits model (escalated: Square on every survivor), discarding the stalled examples spends
    fewer Square queries, and dropping FAB-T from the escalation removes its stage; neither is weaker here."""
    model, data = zoo_digits_pgd_at
    model = masked(model, "input_quantizer", levels=1)
    x, y = data.test_x[:120], data.test_y[:120]
    plain = robustlab.benchmark(model, x, y, eps=0.1, suite="adaptive", square_queries=1000)
    lean = robustlab.benchmark(model, x, y, eps=0.1, suite="adaptive", square_queries=1000, escalate_fab=False,
                               square_give_up=[[100, 0.65], [200, 0.45], [400, 0.35]])
    square = {run: next(r for r in result.rows if r["attack"] == "square") for run, result in
              (("plain", plain), ("lean", lean))}
    assert "stops at 100 queries" in square["lean"]["settings"]
    assert square["lean"]["attacked"] == square["plain"]["attacked"]
    assert square["lean"]["forward_per_image"] < 0.8 * square["plain"]["forward_per_image"]
    assert "fab_t" in {r["attack"] for r in plain.rows} and "fab_t" not in {r["attack"] for r in lean.rows}
    assert lean.robust_accuracy <= plain.robust_accuracy + 0.001, (lean.rows, plain.rows)


def test_a_masking_alarm_skips_the_probe_and_so_its_discarding(zoo_digits_pgd_at):
    """On the binarised digits model (zero input gradients: escalated from the start) every example meets Square at
    its full budget, with or without the probe's discarding: the same run, pass for pass."""
    model, data = zoo_digits_pgd_at
    model = masked(model, "input_quantizer", levels=1)
    x, y = data.test_x[:120], data.test_y[:120]
    default = robustlab.benchmark(model, x, y, eps=0.1, suite="adaptive", square_queries=1000)
    without = robustlab.benchmark(model, x, y, eps=0.1, suite="adaptive", square_queries=1000, probe_give_up=[])
    square = {run: next(r for r in result.rows if r["attack"] == "square") for run, result in
              (("default", default), ("without", without))}
    assert "in the probe an example stops at 500 queries" in square["default"]["settings"]
    assert square["default"]["forward_per_image"] == square["without"]["forward_per_image"] > 0
    assert torch.equal(default.robust, without.robust)


def _pgd_suite(probe_options: dict | None) -> Suite:
    """PGD-20 without a random start (each example's outcome does not depend on its batch), behind a probe whose
    own attack is weaker (``probe_options``), or on every example (None)."""
    options = {"steps": 20, "random_start": False}
    stage = (Stage("pgd", "pgd", options, probe=0.5, probe_options=probe_options) if probe_options is not None
             else Stage("pgd", "pgd", options))
    return Suite("probe_test", (stage,), cascade=True, checks=())


def test_an_escalated_probe_attacks_again_at_full_strength_what_its_cheaper_attack_left(trained_digits_mlp, digits):
    x, y = digits.test_x[:64], digits.test_y[:64]
    settings = EvalSettings(eps=0.15, batch_size=8)
    full = evaluate(trained_digits_mlp, x, y, settings, suite=_pgd_suite(None), checks=False)
    weak = {"steps": 1, "step_size": 0.06}
    one_step = evaluate(trained_digits_mlp, x, y, settings, suite=Suite("one", (Stage("pgd", "pgd", {
        **weak, "random_start": False}),), checks=()), checks=False)
    assert 0 < full.robust_accuracy < one_step.robust_accuracy - 0.5  # one small step leaves many that PGD-20 fools
    probed = evaluate(trained_digits_mlp, x, y, settings, suite=_pgd_suite(weak), checks=False)
    row = probed.rows[0]
    assert row["attacked"] == int(full.clean * len(x))  # escalated: every clean-correct example, each counted once
    assert torch.equal(probed.robust, full.robust)  # the probe's survivors met PGD-20 too


def test_a_probe_whose_own_attack_fools_nothing_stops_the_stage_there(trained_digits_mlp, digits):
    """The probe runs its own options, not the stage's: a step too small to fool anything, no escalation."""
    x, y = digits.test_x[:64], digits.test_y[:64]
    probed = evaluate(trained_digits_mlp, x, y, EvalSettings(eps=0.15, batch_size=8),
                      suite=_pgd_suite({"steps": 1, "step_size": 1e-4}), checks=False)
    assert probed.robust_accuracy == probed.clean  # PGD-20 would fool most of them
    assert probed.rows[0]["attacked"] == 32  # the probe: half of the 63 clean-correct examples, rounded up


def _cut_and_resume(model, x, y, settings, suite, state_dir: Path, cut: int, monkeypatch):
    """Evaluate, stopped by an error at the ``cut``-th save of the state, then resumed from the saved state."""

    class Stop(RuntimeError):
        pass

    real_save, saves = EvaluationState.save, []

    def save_until_cut(self):
        if len(saves) == cut:
            raise Stop
        saves.append(1)
        real_save(self)

    monkeypatch.setattr(EvaluationState, "save", save_until_cut)
    with pytest.raises(Stop):
        evaluate(model, x, y, settings, suite=suite, checks=False, state_dir=state_dir)
    monkeypatch.setattr(EvaluationState, "save", real_save)
    return evaluate(model, x, y, settings, suite=suite, checks=False, state_dir=state_dir)


def test_a_probe_with_its_own_options_resumes_to_the_same_outcome_from_any_batch(trained_digits_mlp, digits,
                                                                                  tmp_path, monkeypatch):
    """Cut after the clean pass and after each batch (the probe's, its survivors' again, the rest's): the resumed
    run rebuilds the same batches and reaches the uninterrupted outcome."""
    x, y = digits.test_x[:64], digits.test_y[:64]
    settings = EvalSettings(eps=0.15, batch_size=8)
    suite = _pgd_suite({"steps": 1, "step_size": 0.06})
    real_save, saves = EvaluationState.save, []
    monkeypatch.setattr(EvaluationState, "save", lambda self: (saves.append(1), real_save(self))[1])
    whole = evaluate(trained_digits_mlp, x, y, settings, suite=suite, checks=False, state_dir=tmp_path / "whole")
    monkeypatch.setattr(EvaluationState, "save", real_save)
    assert len(saves) > 9  # the clean pass, 4 probe batches, the survivors' and the rest's batches
    for cut in range(1, len(saves)):
        resumed = _cut_and_resume(trained_digits_mlp, x, y, settings, suite, tmp_path / f"cut{cut}", cut,
                                  monkeypatch)
        assert resumed.rows[0]["resumed"] == (cut > 1), cut  # cut 1: only the clean pass had been saved
        assert torch.equal(resumed.robust, whole.robust), cut
        assert resumed.rows[0]["attacked"] == whole.rows[0]["attacked"]


def test_probe_options_need_a_probe_and_the_adaptive_probe_gives_up_within_the_budget():
    with pytest.raises(ConfigError, match="probe_options need a probe"):
        Stage("pgd", "pgd", {"steps": 20}, probe_options={"steps": 1})
    facts = ModelFacts(num_classes=10, in_shape=(1, 8, 8))
    square = {q: next(st for st in adaptive(EvalSettings(square_queries=q), facts).stages if st.name == "square")
              for q in (5000, 1000, 400)}
    assert square[5000].probe_options == {"give_up": [[500, 0.65], [1000, 0.45], [2000, 0.35]]}
    assert square[1000].probe_options == {"give_up": [[500, 0.65]]}  # the checkpoints within 1,000 queries
    assert square[400].probe_options == {} and square[5000].options == {"queries": 5000}
    everywhere = next(st for st in adaptive(EvalSettings(square_give_up=[[100, 0.5]]), facts).stages
                      if st.name == "square")
    assert everywhere.probe_options == {} and everywhere.options["give_up"] == [[100, 0.5]]
    with pytest.raises(ConfigError, match="probe_give_up"):
        EvalSettings(probe_give_up=[[1, 0.5]])
