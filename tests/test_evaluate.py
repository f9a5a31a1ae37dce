"""Evaluation: the attack suites, the worst-case ensemble, ρ_adv, the masking checks and the report files."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import FGSM, IFGSM, PGD, Attack, DeepFool, MinimalAttack, MinimalResult
from robustlab.checks import any_failed
from robustlab.cli import main
from robustlab.evaluation.outcome import accuracy, attack_outcome, minimal_attack_outcome, worst_case_ensemble
from robustlab.report import json_safe, write_suite_report
from robustlab.suite import SuiteSettings, evaluate_suite
from tiny_run import tiny_run_toml

PNG = b"\x89PNG\r\n\x1a\n"
BOUNDED_ROWS = {"fgsm", "ll", "ifgsm", "ill", "pgd", "pgd_targeted", "apgd_ce", "apgd_dlr_t", "pgd_l2", "transfer",
                "eot_pgd"}
MINIMAL_ROWS = {"cw_l2", "deepfool", "critic_hc", "few_pixel_1", "few_pixel_3"}
CHECKS = {"stable_predictions", "input_gradients", "iterative_vs_single", "whitebox_vs_blackbox", "large_eps",
          "monotone_in_eps", "noise_weaker"}


def tiny(**overrides) -> SuiteSettings:
    """Suite settings small enough for a test on the 8×8 digits MLP (each attack a few milliseconds)."""
    base = dict(eps=[0.1, 0.2], subset=60, minimal_subset=8, deepfool_subset=8, few_pixel_subset=4, check_subset=40,
                pgd_steps=3, pgd_restarts=2, ifgsm_steps=2, apgd_steps=3, apgd_targets=2, cw_iterations=10,
                cw_binary_steps=2, deepfool_iterations=5, critic_iterations=5, few_pixel_population=8,
                few_pixel_iterations=2, eot_samples=2, gallery=3)
    return SuiteSettings(**{**base, **overrides})


@pytest.fixture(scope="module")
def full_result(trained_digits_mlp, digits):
    source = copy.deepcopy(trained_digits_mlp)
    return evaluate_suite(trained_digits_mlp, digits.test_x, digits.test_y, tiny(eot=True), transfer_source=source)


def checks_by_name(result):
    return {c.name: c for c in result.checks}


# --- the suite ------------------------------------------------------------------------------------------------

def test_full_suite_has_every_row_and_check(full_result):
    r = full_result
    assert r.n == 60 and 0.8 < r.clean <= 1.0
    rows = {}
    for p in r.points:
        rows.setdefault(p.attack, set()).add(p.eps)
        assert 0.0 <= p.accuracy <= r.clean + 1e-9 and p.n == 60
    assert set(rows) == BOUNDED_ROWS
    assert all(eps == {0.1, 0.2} for name, eps in rows.items() if name != "pgd_l2")
    assert rows["pgd_l2"] == {0.2, 0.4}  # its own ε list: ε·√64/4
    assert {m.attack: m.n for m in r.minimal} == {"cw_l2": 8, "deepfool": 8, "critic_hc": 8, "few_pixel_1": 4,
                                                  "few_pixel_3": 4}
    for m in r.minimal:
        assert 0 <= m.success_rate <= 1 and m.rho_with_failures >= 0
        assert math.isnan(m.rho) == (m.success_rate == 0)
    assert set(checks_by_name(r)) == CHECKS and len(r.checks) == len(CHECKS)
    for c in r.checks:
        assert isinstance(c.passed, bool) and c.detail
    assert not checks_by_name(r)["whitebox_vs_blackbox"].skipped  # transfer and few-pixel are both present
    # An honest, deterministic, differentiable model passes the checks that measure the model itself.
    for name in ("stable_predictions", "input_gradients", "large_eps", "noise_weaker"):
        assert checks_by_name(r)[name].passed, checks_by_name(r)[name].detail
    assert not r.randomised


def test_worst_case_rows_are_at_most_every_member(full_result):
    r = full_result
    assert [row["eps"] for row in r.ensemble] == [0.1, 0.2]
    for row in r.ensemble:
        assert set(row["attacks"]) == BOUNDED_ROWS - {"pgd_l2"}
        members = [p.accuracy for p in r.points if p.eps == row["eps"] and p.attack in row["attacks"]]
        assert row["accuracy"] <= min(members) + 1e-12
        robust = r.masks[("worst_case", row["eps"])]
        for name in row["attacks"]:
            assert not (robust & ~r.masks[(name, row["eps"])]).any()


def test_suite_json_is_strict_and_complete(full_result):
    data = json.loads(json.dumps(json_safe(full_result.to_dict()), allow_nan=False))
    assert {"examples", "clean", "curve", "ensemble", "minimal", "checks", "attacks", "settings"} <= set(data)
    assert {p["attack"] for p in data["curve"]} == BOUNDED_ROWS
    assert {"attack", "eps", "accuracy", "error", "n", "norm"} <= set(data["curve"][0])
    assert {m["attack"] for m in data["minimal"]} == MINIMAL_ROWS
    assert {"rho", "rho_with_failures", "success_rate", "accuracy", "error", "n"} <= set(data["minimal"][0])
    assert {c["name"] for c in data["checks"]} == CHECKS
    assert data["attacks"]["cw_l2"]["examples"] == 8 and "binary steps" in data["attacks"]["cw_l2"]["settings"]


def test_report_writes_pngs_markdown_and_csv(full_result, tmp_path):
    files = write_suite_report(full_result, tmp_path, stem="eval_fast", title="digits MLP")
    for key in ("plot_accuracy", "plot_rho", "plot_gallery"):
        assert files[key].read_bytes()[:8] == PNG, key
    md = files["markdown"].read_text()
    assert "Masking checks" in md and "worst case" in md and "ρ_adv" in md
    for row in BOUNDED_ROWS | MINIMAL_ROWS | CHECKS:
        assert row.upper() in md or row in md, row
    csv_lines = files["csv"].read_text().splitlines()
    assert csv_lines[0] == "attack,norm,eps,examples,accuracy,error"
    assert len(csv_lines) == 1 + 1 + len(full_result.points) + len(full_result.ensemble)
    assert len(files["csv_rho"].read_text().splitlines()) == 1 + len(MINIMAL_ROWS)
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


QUICK = dict(suite="quick", eps=[0.1, 0.3], subset=100, pgd_steps=5, check_subset=100, eot_samples=2, gallery=0)


@pytest.mark.parametrize("wrapper", [ZeroGradient, Quantised])
def test_obfuscated_gradients_fail_the_checks(trained_digits_mlp, digits, wrapper):
    model = wrapper(trained_digits_mlp).eval()
    r = evaluate_suite(model, digits.test_x, digits.test_y, SuiteSettings(**QUICK))
    checks = checks_by_name(r)
    assert r.clean > 0.9  # the model still classifies well: only the attack is blinded
    assert not checks["input_gradients"].passed and "100/100" in checks["input_gradients"].detail
    assert not checks["large_eps"].passed or not checks["noise_weaker"].passed
    assert any_failed(r.checks)


def test_honest_model_passes_quick_checks_without_eot(trained_digits_mlp, digits):
    r = evaluate_suite(trained_digits_mlp, digits.test_x, digits.test_y, SuiteSettings(**{**QUICK, "pgd_steps": 10}))
    assert {p.attack for p in r.points} == {"fgsm", "pgd"}
    assert not any_failed(r.checks), [c.detail for c in r.checks if not c.passed]
    assert not r.randomised


@pytest.mark.parametrize("wrapper", [NoisyInput, EvalDropout])
def test_randomised_model_fails_stability_and_gets_eot(trained_digits_mlp, digits, wrapper):
    model = wrapper(trained_digits_mlp).eval()
    r = evaluate_suite(model, digits.test_x, digits.test_y, SuiteSettings(**QUICK))
    stable = checks_by_name(r)["stable_predictions"]
    assert not stable.passed and "randomised" in stable.detail and "EOT" in stable.detail
    assert r.randomised
    assert {p.attack for p in r.points} == {"fgsm", "pgd", "eot_pgd"}
    assert r.attacks["eot_pgd"]["settings"].startswith("2 EOT samples")
    assert "EOTPGD" in checks_by_name(r)["large_eps"].detail


# --- the worst-case ensemble -----------------------------------------------------------------------------------

class Counting(Attack):
    """Wraps an attack and counts the examples it is asked to attack."""

    def __init__(self, inner: Attack):
        super().__init__(model_mode="keep")
        self.inner = inner
        self.seen = 0

    def perturb(self, model, x, y):
        self.seen += len(x)
        return self.inner(model, x, y)


def test_ensemble_attacks_only_robust_examples_and_is_the_worst_case(trained_digits_mlp, digits):
    model, x, y = trained_digits_mlp, digits.test_x[:120], digits.test_y[:120]
    inner = {"fgsm": FGSM(0.1), "ifgsm": IFGSM(0.1, steps=3, step_size=0.04),
             "pgd": PGD(0.1, steps=5, random_start=False)}
    counting = {name: Counting(a) for name, a in inner.items()}
    res = worst_case_ensemble(model, x, y, counting, batch_size=50)

    clean = attack_outcome(model, x, y).correct
    robust_before = [int(clean.sum())] + [s["robust_after"] for s in res.stages[1:-1]]
    assert [counting[n].seen for n in inner] == robust_before  # each attack sees only what is still robust
    assert [s["attacked"] for s in res.stages[1:]] == robust_before
    assert res.stages[-1]["robust_after"] == int(res.robust.sum())
    assert not (res.robust & ~clean).any()

    individual = [accuracy(model, x, y, attack=a, batch_size=50) for a in inner.values()]
    assert res.accuracy <= min(individual) + 1 / len(x)  # (+1 example: float rounding differs with the batch size)
    assert res.accuracy < max(individual)
    fooled = clean & ~res.robust
    assert fooled.any()
    assert model(res.x_adv[fooled]).argmax(1).ne(y[fooled]).all()
    assert torch.equal(res.x_adv[res.robust], x[res.robust])
    assert (res.x_adv - x).abs().max() <= 0.1 + 1e-6


def test_ensemble_reuses_known_outcomes(trained_digits_mlp, digits):
    model, x, y = trained_digits_mlp, digits.test_x[:80], digits.test_y[:80]
    pgd_mask = attack_outcome(model, x, y, PGD(0.1, steps=5)).correct
    fgsm = Counting(FGSM(0.1))
    res = worst_case_ensemble(model, x, y, {"pgd": None, "fgsm": fgsm}, known={"pgd": pgd_mask})
    clean = attack_outcome(model, x, y).correct
    assert res.stages[1] == {"attack": "pgd", "attacked": 0, "reused": True, "robust_after": int((clean & pgd_mask).sum())}
    assert fgsm.seen == int((clean & pgd_mask).sum())
    fgsm_mask = attack_outcome(model, x, y, FGSM(0.1)).correct
    assert torch.equal(res.robust, clean & pgd_mask & fgsm_mask)
    with pytest.raises(ValueError, match="not in known"):
        worst_case_ensemble(model, x, y, {"pgd": None})


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
    data = json.loads((out / "eval_fast.json").read_text())
    assert data["suite"] == "fast" and data["examples"] == 40
    assert {p["attack"] for p in data["curve"]} == {"fgsm", "pgd", "apgd_dlr_t", "pgd_l2", "transfer"}
    assert {p["eps"] for p in data["curve"] if p["norm"] == "linf"} == {0.1, 0.2}  # ε/2 and ε of the run's eps
    assert {m["attack"]: m["n"] for m in data["minimal"]} == {"deepfool": 4, "few_pixel_1": 2}
    assert data["attacks"]["pgd"]["settings"].startswith("2 steps")
    assert {c["name"] for c in data["checks"]} == CHECKS
    for name in ("eval_fast_accuracy_vs_eps.png", "eval_fast_rho.png", "eval_fast_gallery.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert (out / "eval_fast.md").exists() and (out / "eval_fast_rho.csv").exists()


def test_cli_quick_suite_json_path_and_fail_on_check(tiny_run, tmp_path, capsys):
    target = tmp_path / "res" / "mine.json"
    rc = main(["eval", "--checkpoint", str(tiny_run), "--suite", "quick", "--subset", "30", "--out", str(target),
               "--fail-on-check"])
    data = json.loads(target.read_text())
    assert rc == (0 if data["checks_passed"] else 1)
    assert data["examples"] == 30 and {p["attack"] for p in data["curve"]} == {"fgsm", "pgd"}
    assert {c["name"] for c in data["checks"]} == CHECKS
    assert (target.parent / "mine.md").exists() and (target.parent / "mine_checks.csv").exists()
    assert "stable_predictions" in capsys.readouterr().out


def test_cli_fast_suite_unknown_row_is_one_error_line(tiny_run, capsys):
    assert main(["eval", "--checkpoint", str(tiny_run), "--suite", "fast", "--attacks", "pgd,nope",
                 "--subset", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robustlab: error: ") and "nope" in err[0]


def test_paper_settings_and_suite_rows():
    from robustlab.suite import build_suite

    paper = SuiteSettings.paper(eps=[0.3])
    assert (paper.cw_iterations, paper.cw_binary_steps, paper.cw_initial_const, paper.cw_lr) == (1000, 9, 1e-3, 1e-2)
    assert (paper.deepfool_iterations, paper.deepfool_max_step, paper.eot_samples) == (500, 0.1, 80)
    rows = [e.label for e in build_suite(SuiteSettings(eps=[0.3]), num_classes=10, in_shape=(1, 28, 28))]
    assert rows == ["fgsm", "ll", "ifgsm", "ill", "pgd", "pgd_targeted", "apgd_ce", "apgd_dlr_t", "pgd_l2", "cw_l2",
                    "deepfool", "critic_hc", "few_pixel_1", "few_pixel_3"]
    l2 = next(e for e in build_suite(SuiteSettings(eps=[0.3]), num_classes=10, in_shape=(1, 28, 28))
              if e.label == "pgd_l2")
    assert l2.eps == [2.1]  # 0.3·√784/4
    three = [e.label for e in build_suite(SuiteSettings(eps=[0.3]), num_classes=3, in_shape=(1, 8, 8),
                                          randomised=True)]
    assert "apgd_dlr_t" not in three and "eot_pgd" in three  # targeted DLR needs 4 classes
    with pytest.raises(ValueError, match="suite must be one of"):
        SuiteSettings(suite="everything")


def test_minimal_subset_larger_than_subset_attacks_that_many_images(trained_digits_mlp, digits):
    """--minimal-subset N > --subset: DeepFool and C&W run on the first N test images, not on the subset."""
    r = evaluate_suite(trained_digits_mlp, digits.test_x, digits.test_y,
                       tiny(subset=20, minimal_subset=50, deepfool_subset=70, attacks=["fgsm", "cw_l2", "deepfool"]))
    sizes = {m.attack: m.n for m in r.minimal}
    assert sizes == {"cw_l2": 50, "deepfool": 70}
    assert r.n == 20 and {p.n for p in r.points} == {20}
