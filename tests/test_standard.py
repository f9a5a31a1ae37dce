"""The AutoAttack-strength suites (standard, rand) through the one runner, robustlab.benchmark and `robustlab eval`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import robustlab
from robustlab.attacks import APGDCE
from robustlab.cli import main
from robustlab.evaluation import EvalSettings, evaluate
from robustlab.evaluation.runner import build_stage_attack, plan_units
from robustlab.evaluation.suites import ModelFacts, resolve_suite

from tiny_run import tiny_run_toml


def _acc(model, x, y):
    with torch.no_grad():
        return float(model(x).argmax(1).eq(y).float().mean())


def built_attacks(suite: str, settings: EvalSettings, num_classes: int = 10, randomised: bool = False):
    spec = resolve_suite(suite, settings, ModelFacts(num_classes, (1, 28, 28), randomised=randomised))
    return spec, [(u.name, build_stage_attack(u, transfer_source=None))
                  for u in plan_units(spec, settings)]


def test_standard_composition_is_autoattacks():
    spec, units = built_attacks("standard", EvalSettings(eps=8 / 255))
    assert [name for name, _ in units] == ["apgd_ce", "apgd_t", "fab_t", "square"] and spec.claim and spec.cascade
    apgd_ce, apgd_t, fab_t, square = (a for _, a in units)
    assert (apgd_ce.steps, apgd_ce.restarts, apgd_ce.loss, apgd_ce.top_targets) == (100, 1, "ce", 0)
    assert (apgd_t.steps, apgd_t.loss, apgd_t.top_targets) == (100, "dlr", 9)
    assert (fab_t.steps, fab_t.top_targets) == (100, 9)
    assert square.queries == 5000 and square.eps == 8 / 255
    rand, units = built_attacks("standard", EvalSettings(eps=0.1), randomised=True)  # a randomised model: rand
    assert rand.name == "rand" and rand.final_draws == 10
    assert [(name, a.eot_samples) for name, a in units] == [("apgd_ce_eot", 20), ("apgd_dlr_eot", 20)]
    _, l2 = built_attacks("standard", EvalSettings(norm="L2", eps=0.5))
    assert {a.norm for _, a in l2} == {"l2"}
    _, three = built_attacks("standard", EvalSettings(eps=0.1), num_classes=3)  # the targeted DLR needs 4 classes
    assert [name for name, _ in three] == ["apgd_ce", "fab_t", "square"] and three[1][1].top_targets == 2


@pytest.fixture(scope="module")
def standard_result(robust_digits_cnn, digits):
    return evaluate(robust_digits_cnn, digits.test_x, digits.test_y, EvalSettings(eps=0.15, subset=150),
                    num_classes=10)


def test_standard_suite_is_a_worst_case_over_stages(standard_result, robust_digits_cnn, digits):
    r = standard_result
    x, y = digits.test_x[:150], digits.test_y[:150]
    after = [row["robust_after"] for row in r.rows]
    assert after == sorted(after, reverse=True) and after[-1] == r.robust_accuracy
    assert r.rows[0]["attacked"] == int(r.clean_correct.sum())
    for k, row in enumerate(r.rows[1:], start=1):  # each stage attacks exactly what the ones before left robust
        assert row["attacked"] == round(after[k - 1] * r.n)
    assert sum(row["fooled"] for row in r.rows) == int(r.clean_correct.sum() - r.robust.sum())
    # The per-example outcome is real: every example marked fooled has an adversarial point within ε.
    fooled = torch.tensor([f is not None for f in r.fooled_by])
    assert fooled.any() and (r.x_adv - x).abs().max() <= 0.15 + 1e-6
    with torch.no_grad():
        assert bool(robust_digits_cnn(r.x_adv[fooled]).argmax(1).ne(y[fooled]).all())
    # Stronger than APGD-CE alone, and the checks all ran.
    torch.manual_seed(0)
    assert r.robust_accuracy <= _acc(robust_digits_cnn, APGDCE(0.15)(robust_digits_cnn, x, y), y)
    assert {c.name for c in r.checks} == {"stable_predictions", "input_gradients", "iterative_vs_single",
                                          "blackbox_beats_whitebox", "large_eps", "noise_weaker"}
    assert all(c.passed for c in r.checks), [c.detail for c in r.checks if not c.passed]
    assert r.passes["backward_per_image"] > 0 and r.rows[-1]["backward_per_image"] == 0  # Square: no gradients


class Quantised(nn.Module):
    """A gradient-masked model: a non-differentiable input quantiser (zero gradient) in front of a classifier."""

    def __init__(self, net: nn.Module, levels: int = 4):
        super().__init__()
        self.net, self.levels = net, levels

    def forward(self, x):
        return self.net(torch.round(x * self.levels) / self.levels)


class StraightThrough(Quantised):
    """The same function with the quantiser's gradient taken as the identity (BPDA): the adaptive attack."""

    def forward(self, x):
        q = torch.round(x * self.levels) / self.levels
        return self.net(x + (q - x).detach())


def test_a_gradient_masked_model_is_caught_and_not_overstated(trained_digits_mlp, digits):
    x, y = digits.test_x[:120], digits.test_y[:120]
    masked, adaptive = Quantised(trained_digits_mlp), StraightThrough(trained_digits_mlp)
    result = evaluate(masked, x, y, EvalSettings(eps=0.15), num_classes=10)
    torch.manual_seed(0)
    gradient_only = _acc(masked, APGDCE(0.15)(masked, x, y), y)
    true_value = _acc(masked, APGDCE(0.15)(adaptive, x, y), y)  # BPDA points, judged on the masked model
    failed = {c.name for c in result.checks if not c.passed}
    assert {"input_gradients", "blackbox_beats_whitebox"} <= failed
    assert gradient_only > result.clean - 0.05  # APGD alone is blind here ...
    assert result.robust_accuracy <= true_value + 0.10  # ... the standard suite is not (Square finds them)
    assert result.robust_accuracy < gradient_only - 0.3


def test_randomised_model_gets_the_rand_suite(digits):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    noisy = nn.Sequential(_Noise(0.3), net)
    r = evaluate(noisy, digits.test_x[:40], digits.test_y[:40],
                 EvalSettings(eps=0.1, steps=5, eot_samples=2, final_draws=3), num_classes=10)
    assert r.suite == "rand" and r.randomised and [row["attack"] for row in r.rows] == ["apgd_ce_eot",
                                                                                      "apgd_dlr_eot"]
    thirds = r.robust * 3  # fractions of the 3 final draws
    assert torch.allclose(thirds, thirds.round(), atol=1e-5)
    assert not next(c for c in r.checks if c.name == "stable_predictions").passed


def test_a_randomised_model_under_adaptive_gets_a_cheap_eot_pass_then_every_stage_of_rand(trained_digits_mlp, digits):
    torch.manual_seed(0)
    noisy = nn.Sequential(_Noise(0.1), trained_digits_mlp)
    x, y = digits.test_x[:40], digits.test_y[:40]
    settings = EvalSettings(eps=0.1, steps=5, eot_samples=4, adaptive_eot_samples=1, final_draws=3)
    adaptive = evaluate(noisy, x, y, settings, suite="adaptive", num_classes=10)
    rand = evaluate(noisy, x, y, settings, suite="rand", num_classes=10)
    rows = {row["attack"]: row for row in adaptive.rows}
    assert adaptive.suite == "adaptive_rand" and not adaptive.claim and list(rows) == ["apgd_ce_eot_cheap",
                                                                                        "apgd_ce_eot", "apgd_dlr_eot"]
    partly_correct = int((adaptive.clean_correct > 0).sum())
    assert rows["apgd_ce_eot_cheap"]["attacked"] == partly_correct > rows["apgd_ce_eot"]["attacked"] > 0
    assert adaptive.robust_accuracy <= rand.robust_accuracy + 1 / 40


class _Noise(nn.Module):
    def __init__(self, std):
        super().__init__()
        self.std = std

    def forward(self, x):
        return x + self.std * torch.randn_like(x)


def test_an_interrupted_evaluation_resumes_to_the_same_outcome(robust_digits_cnn, digits, tmp_path):
    x, y = digits.test_x[:80], digits.test_y[:80]
    settings = EvalSettings(eps=0.15, batch_size=20, steps=10, square_queries=100)
    whole = evaluate(robust_digits_cnn, x, y, settings, num_classes=10)

    def stop_after_apgd_t(message):
        if message.lstrip().startswith("apgd_t ε=0.15: attacked"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(robust_digits_cnn, x, y, settings, num_classes=10, state_dir=tmp_path, log=stop_after_apgd_t)
    (folder,) = tmp_path.iterdir()  # one folder, named by the evaluation
    saved = json.loads((folder / "rank0.json").read_text())
    assert saved["done"] == {"apgd_ce": 4, "apgd_t": len(range(0, whole.rows[1]["attacked"], 20))}
    lines = []
    resumed = evaluate(robust_digits_cnn, x, y, settings, num_classes=10, state_dir=tmp_path, log=lines.append)
    assert torch.equal(resumed.robust, whole.robust) and resumed.fooled_by == whole.fooled_by
    assert torch.equal(resumed.x_adv, whole.x_adv)  # the points found before the interruption come back too
    assert resumed.rows[0]["seconds"] == pytest.approx(saved["stats"]["apgd_ce"]["seconds"], abs=1e-3)
    assert [r["resumed"] for r in resumed.rows] == [True, True, False, False]
    assert [r["attacked"] for r in resumed.rows] == [r["attacked"] for r in whole.rows]
    assert [r["robust_after"] for r in resumed.rows] == [r["robust_after"] for r in whole.rows]
    text = "\n".join(lines)
    assert f"apgd_ce ε=0.15: attacked {whole.rows[0]['attacked']}," in text
    assert "(resumed: 4 of 4 batches from the saved state, 0.0 s now)" in text  # not the old seconds as new
    assert "batch 1/4 done" not in text and "fab_t ε=0.15: batch 1/" in text  # per-batch progress of new work
    # Another threat model from the same place is another evaluation, in its own folder: no refusal, no mix-up.
    other = evaluate(robust_digits_cnn, x, y, EvalSettings(norm="l2", eps=0.5, batch_size=20, steps=5,
                                                            square_queries=50), num_classes=10, state_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2 and other.norm == "l2" and other.state_dir != resumed.state_dir
    again = evaluate(robust_digits_cnn, x, y, settings, num_classes=10, state_dir=tmp_path, log=lines.append)
    assert all(r["resumed"] for r in again.rows) and torch.equal(again.robust, whole.robust)


@pytest.mark.parametrize("x, y, match", [
    (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), "empty"),
    (torch.full((4, 1, 8, 8), 200, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), "uint8"),
    (torch.full((4, 1, 8, 8), 200.0), torch.zeros(4, dtype=torch.long), "0–255"),
    (torch.full((4, 1, 8, 8), float("nan")), torch.zeros(4, dtype=torch.long), "NaN"),
    (torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 10, 2]), r"labels must lie in \[0, 10\)"),
    (torch.rand(4, 1, 8, 8), torch.tensor([0.0, 1.0, 2.0, 3.0]), "integer class labels"),
    (torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long), "does not accept inputs of shape"),
])
def test_benchmark_refuses_bad_inputs_with_one_clear_error(trained_digits_mlp, x, y, match):
    with pytest.raises(ValueError, match=match):
        robustlab.benchmark(trained_digits_mlp, x, y, eps=0.1)


@pytest.mark.parametrize("options, match", [({"eps": 1.5}, "above 1"), ({"eps": float("nan")}, "finite"),
                                            ({"eps": 0.1, "norm": "L1"}, "norm"),
                                            ({"eps": 0.1, "suite": "fastest"}, "unknown suite 'fastest'"),
                                            ({"eps": 0.1, "stepz": 3}, "no option 'stepz'.*did you mean 'steps'"),
                                            ({"eps": 0.1, "suite": [("pgd", {"stepz": 3})]}, "has no option 'stepz'"),
                                            ({"eps": 0.1, "norm": "l2", "suite": ["pgd"]}, "works in the linf norm"),
                                            ({"eps": 0.1, "adaptive_eot_samples": 0}, "adaptive_eot_samples must be >= 1"),
                                            ({"eps": 0.1, "square_probe": 0.0}, "square_probe must be in"),
                                            ({"eps": 0.1, "square_give_up": [[5000, 0.5]]},
                                             r"square_give_up: .*integer in \[2, 5000\)")])
def test_benchmark_refuses_bad_settings(trained_digits_mlp, digits, options, match):
    with pytest.raises(ValueError, match=match):
        robustlab.benchmark(trained_digits_mlp, digits.test_x[:4], digits.test_y[:4], **options)


def test_benchmark_on_your_own_model_l2(trained_digits_mlp, digits):
    x, y = digits.test_x[:60], digits.test_y[:60]
    r = robustlab.benchmark(trained_digits_mlp, x, y, norm="L2", eps=1.0)
    assert r.norm == "l2" and r.n == 60 and r.robust_accuracy < r.clean
    fooled = torch.tensor([f is not None for f in r.fooled_by])
    assert (r.x_adv - x).flatten(1).norm(dim=1).max() <= 1.0 + 1e-5
    assert _acc(trained_digits_mlp, r.x_adv[fooled], y[fooled]) == 0.0
    assert json.loads(json.dumps(r.to_dict()))["per_example"]["robust"] == r.robust.tolist()


def test_cli_eval_of_your_own_model(trained_digits_mlp, tmp_path, monkeypatch, capsys):
    (tmp_path / "my_models.py").write_text(
        "from robustlab.models import build_model\n\n\n"
        "def digits_mlp():\n    return build_model('mlp_a3t', in_shape=(1, 8, 8), num_classes=10)\n")
    save_file(trained_digits_mlp.state_dict(), str(tmp_path / "w.safetensors"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "eval"
    assert main(["eval", "--model", "my_models:digits_mlp", "--weights", "w.safetensors", "--dataset", "digits",
                 "--eps", "0.1", "--subset", "40", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "standard suite at linf ε=0.1 on 40 test examples" in text and "robust accuracy" in text
    data = json.loads((out / "eval_standard_linf_0.1.json").read_text())
    assert data["examples"] == 40 and data["suite"] == "standard" and data["dataset"] == "digits"
    assert data["robust_accuracy"] < data["clean"] and (out / "eval_standard_linf_0.1.md").exists()
    # Weights of another architecture, or no --eps, are one error line each.
    save_file({"w": torch.zeros(3)}, str(tmp_path / "bad.safetensors"))
    for argv in (["--weights", "bad.safetensors", "--eps", "0.1"], ["--weights", "w.safetensors"]):
        assert main(["eval", "--model", "my_models:digits_mlp", "--dataset", "digits", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("robustlab: error: ")


def test_two_threat_models_on_one_model_need_no_out_and_each_resumes(trained_digits_mlp, tmp_path, monkeypatch,
                                                                     capsys):
    (tmp_path / "my_models.py").write_text(
        "from robustlab.models import build_model\n\n\n"
        "def digits_mlp():\n    return build_model('mlp_a3t', in_shape=(1, 8, 8), num_classes=10)\n")
    save_file(trained_digits_mlp.state_dict(), str(tmp_path / "w.safetensors"))
    monkeypatch.chdir(tmp_path)
    base = ["eval", "--model", "my_models:digits_mlp", "--weights", "w.safetensors", "--dataset", "digits",
            "--subset", "30"]
    for argv in (["--eps", "0.1"], ["--norm", "l2", "--eps", "1.5"]):
        assert main(base + argv) == 0
    capsys.readouterr()
    folder = tmp_path / "runs" / "eval" / "my_models.digits_mlp" / "w"
    reports = sorted(p.name for p in folder.glob("eval_*.json"))
    assert reports == ["eval_standard_l2_1.5.json", "eval_standard_linf_0.1.json"]
    assert len(list((folder / "eval_state").iterdir())) == 2
    first = json.loads((folder / "eval_standard_linf_0.1.json").read_text())
    assert main(base + ["--eps", "0.1"]) == 0  # a rerun reuses every stage of its own state
    text = capsys.readouterr().out
    assert text.count("(resumed:") == 4 and "robustlab: error" not in text
    rerun = json.loads((folder / "eval_standard_linf_0.1.json").read_text())
    assert rerun["per_example"] == first["per_example"] and all(r["resumed"] for r in rerun["rows"])


@pytest.mark.slow
def test_sharded_evaluation_under_torchrun_merges_every_example(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_run_toml().format(out=tmp_path / "run"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "robustlab.cli", "train", "--config", str(config)], check=True,
                   capture_output=True, env=env, timeout=300)
    run = tmp_path / "run"
    outputs = {}
    for nproc in (1, 2):
        cmd = ([sys.executable, "-m", "robustlab.cli"] if nproc == 1 else
               [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "robustlab.cli"])
        out = tmp_path / f"eval{nproc}"
        res = subprocess.run(cmd + ["eval", "--checkpoint", str(run), "--subset", "60", "--out", str(out)],
                             capture_output=True, text=True, env=env, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stdout.count("wrote ") == 1  # rank 0 alone reports
        (report,) = out.glob("eval_standard_linf_*.json")
        outputs[nproc] = json.loads(report.read_text())
        if nproc == 2:
            assert len(list((out / "eval_state").glob("*/rank1.json"))) == 1
    one, two = outputs[1], outputs[2]
    assert two["processes"] == 2 and len(two["per_example"]["robust"]) == 60 == two["examples"]
    assert two["clean"] == one["clean"]
    assert abs(two["robust_accuracy"] - one["robust_accuracy"]) <= 3 / 60


def test_the_readme_example_runs():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("**Bring your own model.**", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the project's own documentation
    result, data = namespace["result"], namespace["data"]
    assert 0 < result.robust_accuracy < result.clean and result.checks[0].status == "pass"
    step = namespace["x_adv"] - data.test_x  # the one-attack line: PGD inside the ε-ball, and it fools some
    assert step.abs().max() <= 0.1 + 1e-6 and 0 < step.abs().amax(dim=(1, 2, 3)).gt(0).float().mean()


def test_channels_last_changes_the_speed_not_the_model_or_the_verdict(robust_digits_cnn, digits):
    x, y = digits.test_x[:80], digits.test_y[:80]
    before = {k: v.clone() for k, v in robust_digits_cnn.state_dict().items()}
    fast = dict(eps=0.15, steps=10, square_queries=100)
    nhwc = evaluate(robust_digits_cnn, x, y, EvalSettings(**fast), num_classes=10)
    nchw = evaluate(robust_digits_cnn, x, y, EvalSettings(**fast, channels_last=False), num_classes=10)
    for key, value in robust_digits_cnn.state_dict().items():  # back in NCHW order, the same weights
        assert value.is_contiguous() and torch.equal(value, before[key])
    assert abs(nhwc.robust_accuracy - nchw.robust_accuracy) <= 2 / len(x)


def test_every_preset_and_a_users_own_stages_run_through_benchmark(trained_digits_mlp, digits):
    x, y = digits.test_x[:30], digits.test_y[:30]
    tiny = dict(steps=3, square_queries=20, pgd_steps=2, apgd_steps=2, cw_iterations=2, cw_binary_steps=1,
                deepfool_iterations=2, critic_iterations=2, few_pixel_population=4, few_pixel_iterations=1,
                minimal_subset=4, deepfool_subset=4, few_pixel_subset=2, eot_samples=2, final_draws=2, check_subset=20)
    claims = {}
    for suite in robustlab.evaluation.available_suites():
        r = robustlab.benchmark(trained_digits_mlp, x, y, eps=0.1, suite=suite, **tiny)
        assert r.n == 30 and 0 <= r.robust_accuracy <= r.clean and r.checks, suite
        claims[suite] = r.claim
    assert claims == {"standard": True, "adaptive": False, "adaptive_rand": False, "rand": True, "fast": False,
                      "quick": False}
    own = robustlab.benchmark(trained_digits_mlp, x, y, eps=0.1, suite=["fgsm", ("pgd", {"steps": 5})])
    assert [row["attack"] for row in own.rows] == ["fgsm", "pgd"] and own.suite == "custom" and not own.claim
    assert own.rows[1]["attacked"] == round(own.rows[0]["robust_after"] * 30)  # a cascade: only the robust ones
    assert own.robust_accuracy <= robustlab.benchmark(trained_digits_mlp, x, y, eps=0.1, suite=["fgsm"]).robust_accuracy
    curve = robustlab.benchmark(trained_digits_mlp, x, y, eps=[0.05, 0.1], suite=["pgd"])
    assert sorted(curve.curve) == [0.05, 0.1] and curve.curve[0.1] <= curve.curve[0.05] + 1 / 30
    assert curve.robust_accuracy == curve.curve[0.1] and curve.eps == 0.1


def test_a_long_batch_says_it_is_still_running(trained_digits_mlp, digits, monkeypatch):
    import robustlab.evaluation.runner as runner

    monkeypatch.setattr(runner, "HEARTBEAT_S", 0.0)  # every forward pass is "long" here
    lines: list[str] = []
    robustlab.benchmark(trained_digits_mlp, digits.test_x[:20], digits.test_y[:20], eps=0.1, suite=["apgd_ce"],
                        log=lines.append)
    beats = [line for line in lines if "running for" in line]
    assert beats and all("apgd_ce ε=0.1 batch 1/1: running for" in line for line in beats)
    assert "forward passes" in beats[-1]
