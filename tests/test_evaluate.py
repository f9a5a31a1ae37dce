"""Evaluation: the exploratory suites (fast, quick) through the runner, the worst case, ρ_adv, the masking checks and
the report files."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import Attack, DeepFool, MinimalAttack, MinimalResult
from robustlab.cli import main
from robustlab.evaluation import EvalSettings, evaluate
from robustlab.evaluation.checks import any_failed
from robustlab.evaluation.outcome import accuracy, attack_outcome, minimal_attack_outcome
from robustlab.evaluation.report import write_report
from robustlab.strict_json import json_safe
from robustlab.evaluation.suites import ModelFacts, Stage, fast, fast_row_names
from tiny_run import tiny_run_toml

PNG = b"\x89PNG\r\n\x1a\n"
BOUNDED_ROWS = {"fgsm", "ll", "ifgsm", "ill", "pgd", "pgd_targeted", "apgd_ce", "apgd_dlr_t", "pgd_l2", "transfer",
                "eot_pgd"}
MINIMAL_ROWS = {"cw_l2", "deepfool", "critic_hc", "few_pixel_1", "few_pixel_3"}
CHECKS = {"stable_predictions", "input_gradients", "iterative_vs_single", "whitebox_vs_blackbox", "large_eps",
          "monotone_in_eps", "noise_weaker"}


def tiny(**overrides) -> EvalSettings:
    """Suite settings small enough for a test on the 8×8 digits MLP (each attack a few milliseconds)."""
    base = dict(eps=[0.1, 0.2], subset=60, minimal_subset=8, deepfool_subset=8, few_pixel_subset=4, check_subset=40,
                pgd_steps=3, pgd_restarts=2, ifgsm_steps=2, apgd_steps=3, apgd_targets=2, cw_iterations=10,
                cw_binary_steps=2, deepfool_iterations=5, critic_iterations=5, few_pixel_population=8,
                few_pixel_iterations=2, eot_samples=2, gallery=3)
    return EvalSettings(**{**base, **overrides})


@pytest.fixture(scope="module")
def full_result(trained_digits_mlp, digits):
    source = copy.deepcopy(trained_digits_mlp)
    return evaluate(trained_digits_mlp, digits.test_x, digits.test_y, tiny(eot=True), suite="fast",
                    transfer_source=source)


def checks_by_name(result):
    return {c.name: c for c in result.checks}


# --- the suite ------------------------------------------------------------------------------------------------

def test_full_suite_has_every_row_and_check(full_result):
    r = full_result
    assert r.n == 60 and 0.8 < r.clean <= 1.0 and not r.claim and not r.cascade
    rows = {}
    for p in r.bounded_rows():
        rows.setdefault(p["attack"], set()).add(p["eps"])
        assert 0.0 <= p["accuracy"] <= r.clean + 1e-9 and p["examples"] == 60
    assert set(rows) == BOUNDED_ROWS
    assert all(eps == {0.1, 0.2} for name, eps in rows.items() if name != "pgd_l2")
    assert rows["pgd_l2"] == {0.2, 0.4}  # its own ε list: ε·√64/4
    assert {m["attack"]: m["examples"] for m in r.minimal_rows()} == {"cw_l2": 8, "deepfool": 8, "critic_hc": 8,
                                                                      "few_pixel_1": 4, "few_pixel_3": 4}
    for m in r.minimal_rows():
        assert 0 <= m["success_rate"] <= 1 and m["rho_with_failures"] >= 0
        assert math.isnan(m["rho"]) == (m["success_rate"] == 0)
    assert set(checks_by_name(r)) == CHECKS and len(r.checks) == len(CHECKS)
    for c in r.checks:
        assert isinstance(c.passed, bool) and c.detail
    assert not checks_by_name(r)["whitebox_vs_blackbox"].skipped  # transfer and few-pixel are both present
    assert "few_pixel_1 on 4:" in checks_by_name(r)["whitebox_vs_blackbox"].detail  # compared on its own subset
    # An honest, deterministic, differentiable model passes the checks that measure the model itself.
    for name in ("stable_predictions", "input_gradients", "large_eps", "noise_weaker"):
        assert checks_by_name(r)[name].passed, checks_by_name(r)[name].detail
    assert not r.randomised


def test_worst_case_is_at_most_every_member_example_by_example(full_result, trained_digits_mlp, digits):
    r = full_result
    assert sorted(r.curve) == [0.1, 0.2] and r.eps == 0.2 and r.robust_accuracy == r.curve[0.2]
    for e, worst in r.curve.items():
        members = [p["accuracy"] for p in r.bounded_rows() if p["eps"] == e and p["norm"] == "linf"]
        assert len(members) == len(BOUNDED_ROWS) - 1 and worst <= min(members) + 1e-12
    # Per example at the headline ε: robust means no row fooled it; x_adv is a real adversarial point within ε.
    x, y = digits.test_x[:60], digits.test_y[:60]
    fooled = torch.tensor([f is not None for f in r.fooled_by])
    assert torch.equal(fooled, (r.clean_correct > 0) & (r.robust == 0))
    with torch.no_grad():
        assert bool(trained_digits_mlp(r.x_adv[fooled]).argmax(1).ne(y[fooled]).all())
    assert (r.x_adv - x).abs().max() <= 0.2 + 1e-6


def test_suite_json_is_strict_and_complete(full_result):
    data = json.loads(json.dumps(json_safe(full_result.to_dict()), allow_nan=False))
    assert {"examples", "clean", "curve", "rows", "checks", "stages", "settings", "per_example"} <= set(data)
    assert {p["attack"] for p in data["rows"] if p["kind"] == "bounded"} == BOUNDED_ROWS
    assert {"attack", "eps", "accuracy", "examples", "norm", "seconds", "resumed"} <= set(data["rows"][0])
    minimal = [p for p in data["rows"] if p["kind"] == "minimal"]
    assert {m["attack"] for m in minimal} == MINIMAL_ROWS
    assert {"rho", "rho_with_failures", "success_rate", "accuracy", "examples"} <= set(minimal[0])
    assert {c["name"] for c in data["checks"]} == CHECKS
    cw = next(st for st in data["stages"] if st["name"] == "cw_l2")
    assert cw["subset"] == 8 and "binary steps" in cw["settings"]


def test_report_writes_pngs_markdown_and_csv(full_result, tmp_path):
    files = write_report(full_result, tmp_path, stem="eval_fast", title="digits MLP")
    for key in ("plot_accuracy", "plot_rho", "plot_gallery"):
        assert files[key].read_bytes()[:8] == PNG, key
    md = files["markdown"].read_text()
    assert "Masking checks" in md and "worst case" in md and "ρ_adv" in md and "not a robustness claim" in md
    for row in BOUNDED_ROWS | MINIMAL_ROWS | CHECKS:
        assert row.upper() in md or row in md, row
    csv_lines = files["csv"].read_text().splitlines()
    assert csv_lines[0].startswith("attack,kind,norm,eps,examples,accuracy,error")
    assert len(csv_lines) == 1 + 1 + len(full_result.rows) + len(full_result.curve)
    assert len(files["csv_checks"].read_text().splitlines()) == 1 + len(CHECKS)
    assert json.loads(files["json"].read_text())["files"]["plot_gallery"].endswith("eval_fast_gallery.png")


# --- masking checks on broken models ---------------------------------------------------------------------------

class ZeroGradient(nn.Module):
    """Identity in the forward pass, zero input gradient: a gradient-masking layer in front of the model."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.detach() + 0 * x)


class Quantised(nn.Module):
    """Non-differentiable input quantisation (round to quarters): zero gradient almost everywhere."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


class NoisyInput(nn.Module):
    """A randomised model: Gaussian noise on the input at every forward pass, in eval mode too."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x + 0.05 * torch.randn_like(x))


class EvalDropout(nn.Module):
    """A randomised model: dropout on the input that stays on in eval mode."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(F.dropout(x, 0.2, training=True))


QUICK = dict(eps=[0.1, 0.3], subset=100, pgd_steps=5, check_subset=100, eot_samples=2, gallery=0)


@pytest.mark.parametrize("wrapper", [ZeroGradient, Quantised])
def test_obfuscated_gradients_fail_the_checks(trained_digits_mlp, digits, wrapper):
    model = wrapper(trained_digits_mlp).eval()
    r = evaluate(model, digits.test_x, digits.test_y, EvalSettings(**QUICK), suite="quick")
    checks = checks_by_name(r)
    assert r.clean > 0.9  # the model still classifies well: only the attack is blinded
    assert not checks["input_gradients"].passed and "100/100" in checks["input_gradients"].detail
    assert not checks["large_eps"].passed or not checks["noise_weaker"].passed
    assert any_failed(r.checks)


def test_honest_model_passes_quick_checks_without_eot(trained_digits_mlp, digits):
    r = evaluate(trained_digits_mlp, digits.test_x, digits.test_y, EvalSettings(**{**QUICK, "pgd_steps": 10}),
                 suite="quick")
    assert {p["attack"] for p in r.rows} == {"fgsm", "pgd"}
    assert not any_failed(r.checks), [c.detail for c in r.checks if not c.passed]
    assert not r.randomised


@pytest.mark.parametrize("wrapper", [NoisyInput, EvalDropout])
def test_randomised_model_fails_stability_and_gets_eot(trained_digits_mlp, digits, wrapper):
    model = wrapper(trained_digits_mlp).eval()
    r = evaluate(model, digits.test_x, digits.test_y, EvalSettings(**QUICK), suite="quick")
    stable = checks_by_name(r)["stable_predictions"]
    assert not stable.passed and "randomised" in stable.detail and "EOT" in stable.detail
    assert r.randomised
    assert {p["attack"] for p in r.rows} == {"fgsm", "pgd", "eot_pgd"}
    assert next(p for p in r.rows if p["attack"] == "eot_pgd")["settings"].startswith("2 EOT samples")
    assert "EOT" in checks_by_name(r)["large_eps"].detail


# --- the cascade -----------------------------------------------------------------------------------------------

class Counting(Attack):
    """Wraps an attack and counts the examples it is asked to attack."""

    def __init__(self, inner: Attack):
        super().__init__(model_mode="keep")
        self.inner = inner
        self.seen = 0

    def perturb(self, model, x, y):
        self.seen += len(x)
        return self.inner(model, x, y)


def test_a_cascade_attacks_only_robust_examples_and_is_the_worst_case(trained_digits_mlp, digits, monkeypatch):
    import robustlab.evaluation.runner as runner

    model, x, y = trained_digits_mlp, digits.test_x[:120], digits.test_y[:120]
    seen: dict[str, Counting] = {}
    build = runner.build_stage_attack

    def counted(unit, **kw):
        seen[unit.name] = Counting(build(unit, **kw))
        return seen[unit.name]

    monkeypatch.setattr(runner, "build_stage_attack", counted)
    stages = ["fgsm", ("ifgsm", {"steps": 3, "step_size": 0.04}), ("pgd", {"steps": 5, "random_start": False})]
    res = evaluate(model, x, y, EvalSettings(eps=0.1, batch_size=50), suite=stages, checks=False)

    clean = attack_outcome(model, x, y).correct
    robust_before = [int(clean.sum())] + [round(r["robust_after"] * 120) for r in res.rows[:-1]]
    assert [seen[name].seen for name in ("fgsm", "ifgsm", "pgd")] == robust_before  # only what is still robust
    assert [r["attacked"] for r in res.rows] == robust_before
    assert not (res.robust.bool() & ~clean).any()
    individual = [accuracy(model, x, y, attack=a.inner, batch_size=50) for a in seen.values()]
    assert res.robust_accuracy <= min(individual) + 1 / len(x)
    assert res.robust_accuracy < max(individual)
    fooled = clean & (res.robust == 0)
    assert fooled.any() and model(res.x_adv[fooled]).argmax(1).ne(y[fooled]).all()
    assert torch.equal(res.x_adv[res.robust.bool()], x[res.robust.bool()])
    assert (res.x_adv - x).abs().max() <= 0.1 + 1e-6


# --- ρ_adv ----------------------------------------------------------------------------------------------------

class ScaledPerturbation(MinimalAttack):
    """x_adv = (1 + a_i)·x_i, so ‖r‖₂/‖x‖₂ = a_i exactly; successes and ratios are given per example, in order."""

    def __init__(self, ratios, success):
        super().__init__()
        self.ratios, self.success, self.pos = ratios, success, 0

    def search(self, model, x, y):
        k = len(x)
        a = torch.tensor(self.ratios[self.pos:self.pos + k], dtype=x.dtype).view(-1, 1, 1, 1)
        ok = torch.tensor(self.success[self.pos:self.pos + k])
        self.pos += k
        x_last = x * (1 + a)
        return MinimalResult(torch.where(ok.view(-1, 1, 1, 1), x_last, x), ok, x_last)


def test_rho_on_a_constructed_case():
    torch.manual_seed(0)
    x = torch.rand(5, 1, 2, 2) * 0.5 + 0.1
    y = torch.tensor([0, 1, 0, 1, 1])
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    ratios = [0.1, 0.5, 0.2, 0.3, 0.4]
    success = [True, False, True, True, False]
    summary, out = minimal_attack_outcome(model, x, y, ScaledPerturbation(ratios, success), name="scaled",
                                          batch_size=2)
    assert summary.n == 5 and summary.success_rate == pytest.approx(0.6)
    assert summary.rho == pytest.approx((0.1 + 0.2 + 0.3) / 3)        # successes only
    assert summary.rho_with_failures == pytest.approx(sum(ratios) / 5)  # failures with their last iterate
    norms = x.flatten(1).norm(dim=1)
    assert summary.mean_l2 == pytest.approx(float((0.1 * norms[0] + 0.2 * norms[2] + 0.3 * norms[3]) / 3), rel=1e-5)
    x_adv = torch.where(torch.tensor(success).view(-1, 1, 1, 1), x * (1 + torch.tensor(ratios).view(-1, 1, 1, 1)), x)
    with torch.no_grad():
        expected = model(x_adv).argmax(1).eq(y)
    assert torch.equal(out.correct, expected) and summary.accuracy == pytest.approx(float(expected.double().mean()))
    assert out.rho.tolist() == pytest.approx(ratios)  # per example, failures at their last iterate


def test_rho_of_deepfool_on_a_linear_model_is_the_distance_to_the_boundary():
    # Two classes, logit difference f(x) = w·x + b: DeepFool's step is (|f| + 1e-4)/‖w‖ along w, times 1.02.
    torch.manual_seed(1)
    w = torch.randn(16) * 0.1
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(16), w]))
        model[1].bias.copy_(torch.tensor([0.0, -0.5 * float(w.sum()) + 0.05]))
    x = torch.full((3, 1, 4, 4), 0.5)
    x[1] += 0.01
    x[2] -= 0.01
    with torch.no_grad():
        f = model(x)
    y = f.argmax(1)
    margin = (f[:, 1] - f[:, 0]).abs()
    summary, _ = minimal_attack_outcome(model, x, y, DeepFool(max_iter=10, overshoot=0.02), name="deepfool")
    expected = 1.02 * (margin + 1e-4) / w.norm() / x.flatten(1).norm(dim=1)
    assert summary.success_rate == 1.0
    assert summary.rho == pytest.approx(float(expected.mean()), rel=1e-3)


# --- the command line ----------------------------------------------------------------------------------------

TINY_RUN = tiny_run_toml(defense='name = "standard"', eps="[0.2]")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    config = root / "tiny.toml"
    config.write_text(TINY_RUN.format(out=root / "run"))
    assert main(["train", "--config", str(config)]) == 0
    return root / "run"


def test_cli_fast_suite(tiny_run, tmp_path, capsys):
    # Every row with the suite's default settings is covered above; here the command line on a few rows.
    out = tmp_path / "out"
    rows = "fgsm,pgd,apgd_dlr_t,pgd_l2,transfer,deepfool,few_pixel_1"
    assert main(["eval", "--checkpoint", str(tiny_run), "--suite", "fast", "--attacks", rows, "--subset", "40",
                 "--minimal-subset", "4", "--few-pixel-subset", "2", "--pgd-steps", "2",
                 "--transfer-source", str(tiny_run), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Masking checks" in text and "ρ_adv" in text and "| **worst case** |" in text
    assert "The fast suite is not a robustness claim" in text
    stem = "eval_fast_linf_0.1_0.2"  # ε/2 and ε of the run's eps
    data = json.loads((out / f"{stem}.json").read_text())
    assert data["suite"] == "fast" and data["examples"] == 40
    bounded = [p for p in data["rows"] if p["kind"] == "bounded"]
    assert {p["attack"] for p in bounded} == {"fgsm", "pgd", "apgd_dlr_t", "pgd_l2", "transfer"}
    assert {p["eps"] for p in bounded if p["norm"] == "linf"} == {0.1, 0.2}
    assert {m["attack"]: m["examples"] for m in data["rows"] if m["kind"] == "minimal"} == {"deepfool": 4,
                                                                                          "few_pixel_1": 2}
    assert next(p for p in bounded if p["attack"] == "pgd")["settings"].startswith("2 steps")
    assert {c["name"] for c in data["checks"]} == CHECKS
    for name in ("accuracy_vs_eps.png", "rho.png", "gallery.png"):
        assert (out / f"{stem}_{name}").read_bytes()[:8] == PNG
    assert (out / f"{stem}.md").exists() and (out / f"{stem}.csv").exists()


def test_cli_quick_suite_json_path_and_fail_on_check(tiny_run, tmp_path, capsys):
    target = tmp_path / "res" / "mine.json"
    rc = main(["eval", "--checkpoint", str(tiny_run), "--suite", "quick", "--subset", "30", "--out", str(target),
               "--fail-on-check"])
    data = json.loads(target.read_text())
    assert rc == (0 if data["checks_passed"] else 1)
    assert data["examples"] == 30 and {p["attack"] for p in data["rows"]} == {"fgsm", "pgd"}
    assert {c["name"] for c in data["checks"]} == CHECKS
    assert (target.parent / "mine.md").exists() and (target.parent / "mine_checks.csv").exists()
    assert "stable_predictions" in capsys.readouterr().out


def test_cli_fast_suite_unknown_row_is_one_error_line(tiny_run, capsys):
    assert main(["eval", "--checkpoint", str(tiny_run), "--suite", "fast", "--attacks", "pgd,nope",
                 "--subset", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robustlab: error: ") and "nope" in err[0]


def test_paper_settings_and_suite_rows():
    paper = EvalSettings.paper(eps=[0.3])
    assert (paper.cw_iterations, paper.cw_binary_steps, paper.cw_initial_const, paper.cw_lr) == (1000, 9, 1e-3, 1e-2)
    assert (paper.deepfool_iterations, paper.deepfool_max_step, paper.eot_samples) == (500, 0.1, 80)
    rows = fast(EvalSettings(eps=[0.3]), ModelFacts(10, (1, 28, 28))).stages
    assert [st.name for st in rows] == ["fgsm", "ll", "ifgsm", "ill", "pgd", "pgd_targeted", "apgd_ce", "apgd_dlr_t",
                                        "pgd_l2", "cw_l2", "deepfool", "critic_hc", "few_pixel_1", "few_pixel_3"]
    assert next(st for st in rows if st.name == "pgd_l2").radii == (2.1,)  # 0.3·√784/4
    three = [st.name for st in fast(EvalSettings(eps=[0.3]), ModelFacts(3, (1, 8, 8), randomised=True)).stages]
    assert "apgd_dlr_t" not in three and "eot_pgd" in three  # targeted DLR needs 4 classes
    assert fast_row_names()[-1] == "few_pixel_3" and "transfer" in fast_row_names()
    with pytest.raises(ValueError, match="unknown suite 'everything'"):
        evaluate(nn.Linear(2, 2), torch.rand(2, 2), torch.tensor([0, 1]), EvalSettings(eps=0.1), suite="everything")


def test_subset_caps_every_row(trained_digits_mlp, digits):
    """--subset N caps the minimal and few-pixel rows too (a smoke run stays small)."""
    r = evaluate(trained_digits_mlp, digits.test_x, digits.test_y,
                 tiny(subset=20, minimal_subset=50, deepfool_subset=70, attacks=["fgsm", "cw_l2", "deepfool"]),
                 suite="fast")
    assert {m["attack"]: m["examples"] for m in r.minimal_rows()} == {"cw_l2": 20, "deepfool": 20}
    assert r.n == 20 and {p["examples"] for p in r.bounded_rows()} == {20}


def test_a_stage_is_data_with_refusals():
    with pytest.raises(ValueError, match="kind must be"):
        Stage("x", "pgd", kind="other")
    with pytest.raises(ValueError, match="stage names must be unique"):
        from robustlab.evaluation.suites import custom_suite

        custom_suite(["pgd", "pgd"])


# --- the runner's bookkeeping ---------------------------------------------------------------------------------
def test_a_minimal_stage_over_several_batches_gives_the_same_rho(trained_digits_mlp, digits):
    settings = dict(subset=12, attacks=["fgsm", "deepfool"], deepfool_subset=12, deepfool_iterations=10, eps=0.1)
    one = evaluate(trained_digits_mlp, digits.test_x, digits.test_y, EvalSettings(**settings), suite="fast",
                   checks=False)
    four = evaluate(trained_digits_mlp, digits.test_x, digits.test_y, EvalSettings(**settings, batch_size=4),
                    suite="fast", checks=False)
    (a,), (b,) = one.minimal_rows(), four.minimal_rows()
    assert b["attacked"] == a["attacked"] > 4 and b["rho"] == pytest.approx(a["rho"], rel=1e-6)


def test_only_minimal_rows_give_no_robust_accuracy_but_a_report(trained_digits_mlp, digits, tmp_path):
    r = evaluate(trained_digits_mlp, digits.test_x, digits.test_y,
                 tiny(attacks=["deepfool"], eps=[0.1], subset=10), suite="fast")
    assert math.isnan(r.robust_accuracy) and not r.curve and r.minimal_rows()[0]["examples"] == 8
    files = write_report(r, tmp_path, stem="df")
    assert json.loads(files["json"].read_text())["robust_accuracy"] is None
    assert "no robust accuracy" in files["markdown"].read_text()


def test_a_cascade_row_reports_the_accuracy_after_it_and_the_checks_use_only_what_ran_alone(trained_digits_mlp,
                                                                                          digits):
    r = evaluate(trained_digits_mlp, digits.test_x[:80], digits.test_y[:80], EvalSettings(eps=0.1),
                 suite=["fgsm", ("pgd", {"steps": 10})])
    fgsm, pgd = r.rows
    assert fgsm["alone"] and not pgd["alone"] and pgd["accuracy"] == pgd["robust_after"] <= fgsm["accuracy"]
    assert r.accuracy_of("pgd") == {} and r.accuracy_of("fgsm") == {0.1: fgsm["accuracy"]}
    check = checks_by_name(r)["iterative_vs_single"]
    assert check.skipped and check.passed  # no iterative attack ran on every example: nothing to compare


def test_randomised_outcomes_repeat_in_one_process(trained_digits_mlp, digits):
    model = NoisyInput(trained_digits_mlp).eval()
    x, y = digits.test_x[:40], digits.test_y[:40]
    settings = EvalSettings(eps=0.1, steps=3, eot_samples=2, final_draws=3)
    first = evaluate(model, x, y, settings, checks=False)
    torch.rand(7)  # whatever the global RNG did in between
    second = evaluate(model, x, y, settings, checks=False)
    assert first.suite == "rand" and torch.equal(first.robust, second.robust)


def test_a_curve_point_is_the_single_radius_result(trained_digits_mlp, digits):
    x, y = digits.test_x[:60], digits.test_y[:60]
    stages = [("pgd", {"steps": 5}), "fgsm"]
    curve = evaluate(trained_digits_mlp, x, y, EvalSettings(eps=[0.05, 0.1]), suite=stages, checks=False)
    single = evaluate(trained_digits_mlp, x, y, EvalSettings(eps=0.1), suite=stages, checks=False)
    assert curve.curve[0.1] == single.robust_accuracy and torch.equal(curve.robust, single.robust)


def test_the_state_is_keyed_by_the_examples_and_ignores_check_settings(trained_digits_mlp, digits, tmp_path):
    import numpy as np

    stages = [("pgd", {"steps": np.int64(3)})]  # numpy numbers in options are fine too
    a, b = digits.test_x[:30], digits.test_x[30:60]
    ya, yb = digits.test_y[:30], digits.test_y[30:60]
    first = evaluate(trained_digits_mlp, a, ya, EvalSettings(eps=0.1), suite=stages, state_dir=tmp_path)
    other = evaluate(trained_digits_mlp, b, yb, EvalSettings(eps=0.1), suite=stages, state_dir=tmp_path)
    assert first.state_dir != other.state_dir and len(list(tmp_path.iterdir())) == 2  # same size, other data
    again = evaluate(trained_digits_mlp, a, ya, EvalSettings(eps=0.1, tol=0.05, check_subset=10), suite=stages,
                     state_dir=tmp_path)
    assert again.state_dir == first.state_dir and all(r["resumed"] for r in again.rows)


def test_a_cascade_plot_puts_each_stage_at_its_own_tick_and_skips_rows_without_an_after(tmp_path, monkeypatch):
    """The standard suite's picture: the accuracy left after each attack in turn. A stage missing at one ε keeps the
    next stage on its own tick; a row outside the worst case (no ``robust_after``) is not drawn."""
    import matplotlib.axes

    from robustlab.evaluation import EvalSettings
    from robustlab.evaluation.plots import plot_result
    from robustlab.evaluation.result import EvaluationResult

    def row(attack, eps, after=None):
        return {"attack": attack, "kind": "bounded", "norm": "linf", "eps": eps, "accuracy": after or 0.5,
                "alone": attack == "apgd_ce", **({} if after is None else {"robust_after": after})}

    rows = [row("apgd_ce", 0.1, 0.6), row("apgd_t", 0.1, 0.55), row("square", 0.1, 0.5),
            row("apgd_ce", 0.3, 0.3), row("square", 0.3, 0.2), row("extra_probe", 0.3)]
    result = EvaluationResult("standard", True, True, "linf", 0.3, 10, 0.9, 0.2, rows, {0.1: 0.5, 0.3: 0.2}, [],
                              torch.ones(10, dtype=torch.bool), torch.zeros(10, dtype=torch.bool), [None] * 10,
                              EvalSettings(eps=[0.1, 0.3]))
    drawn = []
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **k: (k.get("linestyle") == "none" and drawn.append((list(a[0]), list(a[1]))),
                                               original(self, *a, **k))[1])  # the markers: one call per ε
    plot_result(result, tmp_path / "cascade.png")
    assert (tmp_path / "cascade.png").stat().st_size > 5_000
    assert [x for x, _ in drawn] == [[0, 1, 2, 3], [0, 1, 3]]  # ε 0.3 has no APGD-T: SQUARE stays on its tick
    assert [y for _, y in drawn] == [pytest.approx([90, 60, 55, 50]), pytest.approx([90, 30, 20])]
