"""Every bad input refused at the boundary with one clear error, nothing half-written (README: What robustlab
refuses). The attack inputs are also tested property-based: a correct result within the budget, or the error."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from robustlab.attacks import FGSM, PGD, TransferAttack, build_attack
from robustlab.checkpoint import load_checkpoint, save_checkpoint
from robustlab.cli import main
from robustlab.engine import Trainer
from robustlab.errors import CheckpointError, ConfigError
from robustlab.experiment import config_from_dict, load_config
from robustlab.run_lock import RunLock
from tiny_run import tiny_run_toml


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robustlab: error: "), err
    return err[0]


@pytest.fixture
def tiny(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_run_toml().format(out=tmp_path / "run"))
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (1 epoch) to evaluate and resume."""
    root = tmp_path_factory.mktemp("trained")
    config = root / "tiny.toml"
    config.write_text(tiny_run_toml().format(out=root / "run"))
    assert main(["train", "--config", str(config)]) == 0
    return config, root / "run"


# --- config values ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, match", [
    ("defense.attack.eps=1.5", "above 1 exceeds the"),
    ("defense.attack.eps=inf", "defense.attack.eps must be a finite number"),
    ("defense.attack.eps=nan", "defense.attack.eps must be a finite number"),
    ("optim.lr=nan", "optim.lr must be a finite"),
    ("eval.eps=[0.1, 5.0]", r"eval.eps must lie in \[0, 1\]"),
])
def test_bad_config_values_are_one_line_and_write_nothing(tiny, tmp_path, capsys, override, match):
    assert main(["train", "--config", str(tiny), "--set", override]) == 2
    assert pytest.importorskip("re").search(match, error_line(capsys))
    assert not (tmp_path / "run").exists()


def test_a_config_that_is_not_utf8_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"[run]\nname = \"\xff\xfe\"\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert f"{bad} is not UTF-8 text" in error_line(capsys)


# --- the run directory --------------------------------------------------------------------------------------------
def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder(tiny, tmp_path):
    holder = RunLock(tmp_path / "run").acquire()
    try:
        with pytest.raises(ConfigError, match=f"in use by another robustlab process \\(PID {os.getpid()}\\)"):
            Trainer(load_config(tiny), log=lambda _: None)
    finally:
        holder.release()
    Trainer(load_config(tiny), log=lambda _: None)  # free again once the holder is gone


def test_an_out_dir_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_run_toml().format(out=tmp_path / "file" / "run"))
    assert main(["train", "--config", str(config)]) == 2
    assert "cannot use" in error_line(capsys)


def test_stale_checkpoint_temporaries_are_removed(trained, tmp_path):
    config, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    stale = copy / "checkpoints" / ".epoch-0002.abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    raw = json.loads((copy / "config.json").read_text())
    raw["run"]["out_dir"], raw["run"]["epochs"] = str(copy), 2
    Trainer(config_from_dict(raw), resume=True, log=lambda _: None)  # at start, with the lock held
    assert not stale.exists()


@pytest.mark.parametrize("override, key", [
    ("defense.lam=0.7", "defense.lam"), ('data.name="mnist5k"', "data.name"), ('optim.name="sgd"', "optim.name"),
])
def test_resume_refuses_another_experiment_naming_the_keys(trained, tmp_path, capsys, override, key):
    config, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    argv = ["train", "--config", str(config), "--resume", "--set", f'run.out_dir="{copy}"']
    assert main(argv + ["--set", override]) == 2
    line = error_line(capsys)
    assert "another experiment" in line and key in line
    assert main(argv + ["--set", "run.epochs=2"]) == 0  # more epochs is the same experiment


@pytest.mark.parametrize("manifest", ["{}", "[]", '{"model.safetensors": "00"}'])
def test_a_manifest_must_list_exactly_the_files(trained, tmp_path, manifest):
    _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ckpt = next((copy / "checkpoints").glob("epoch-*"))
    (ckpt / "manifest.json").write_text(manifest)
    with pytest.raises(CheckpointError, match="manifest.json must map exactly"):
        load_checkpoint(copy)


def test_a_file_beside_the_manifest_is_corrupt(tmp_path):
    ckpt = save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, {"epoch": 1}, {})
    (ckpt / "extra.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="extra.bin not in its manifest"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("target, content, match", [
    ("checkpoints/latest", b"\x00\xff../../etc", "latest is corrupt"),
    ("metrics.jsonl", b'{"epoch": 1}\nnot json\n', "line 2 is not JSON"),
])
def test_garbage_in_run_files_is_one_line(trained, tmp_path, capsys, target, content, match):
    config, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / target).write_bytes(content)
    assert main(["train", "--config", str(config), "--resume", "--set", f'run.out_dir="{copy}"',
                 "--set", "run.epochs=2"]) == 2
    assert match in error_line(capsys)


# --- robustlab eval -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, match", [
    (["--eps", "inf"], "finite"), (["--eps", "5"], "above 1"), (["--device", "tpu"], "device must be"),
    (["--suite", "fast", "--minimal-subset", "-3"], "minimal_subset must be >= 0"),
    (["--suite", "quick", "--transfer-source", "x"], "--transfer-source needs the transfer row"),
])
def test_eval_refusals_are_one_line(trained, capsys, argv, match):
    _, run = trained
    assert main(["eval", "--checkpoint", str(run), *argv]) == 2
    assert match in error_line(capsys)


def test_an_unwritable_eval_output_is_refused_before_any_attack(trained, tmp_path, capsys, monkeypatch):
    _, run = trained
    (tmp_path / "file").write_text("")
    import robustlab.evaluation

    def never(*args, **kwargs):
        raise AssertionError("the evaluation ran before the output location was checked")

    monkeypatch.setattr(robustlab.evaluation, "evaluate", never)
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "file" / "out")]) == 2
    assert "cannot write the evaluation's output" in error_line(capsys)


def test_debug_shows_the_traceback(trained):
    _, run = trained
    with pytest.raises(ConfigError, match="device must be"):
        main(["--debug", "eval", "--checkpoint", str(run), "--device", "tpu"])


def test_list_attacks_shows_every_name_eval_accepts(capsys):
    assert main(["list", "attacks"]) == 0
    out = capsys.readouterr().out
    for name in ("square", "fab", "apgd_dlr_t", "pgd_targeted", "few_pixel_1", "transfer", "standard"):
        assert name in out


# --- attack inputs ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)).eval()


@pytest.mark.parametrize("name", ["fgsm", "pgd", "pgd_l2", "apgd_ce", "apgd_dlr", "square", "fab", "deepfool",
                                  "few_pixel", "cw_l2"])
@pytest.mark.parametrize("x, y, match", [
    (torch.full((3, 1, 4, 4), float("nan")), torch.zeros(3, dtype=torch.long), "NaN"),
    (torch.full((3, 1, 4, 4), 255.0), torch.zeros(3, dtype=torch.long), "0–255"),
    (torch.full((3, 1, 4, 4), 7, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), "uint8"),
    (torch.rand(3, 1, 4, 4), torch.tensor([0, 5, 1]), r"labels must lie in \[0, 5\)"),
    (torch.rand(3, 1, 4, 4), torch.tensor([0, -1, 1]), r"labels must lie in \[0, 5\)"),
    (torch.rand(0, 1, 4, 4), torch.zeros(0, dtype=torch.long), "non-empty"),
    (torch.rand(3, 3, 4, 4), torch.zeros(3, dtype=torch.long), "does not accept inputs of shape"),
])
def test_every_attack_refuses_bad_inputs(small_model, name, x, y, match):
    attack = build_attack(name, **({} if name in ("deepfool", "few_pixel", "cw_l2") else {"eps": 0.1}))
    with pytest.raises(ValueError, match=match):
        attack(small_model, x, y)


def test_a_transfer_source_of_another_shape_is_one_error(small_model):
    other = nn.Sequential(nn.Flatten(), nn.Linear(10, 5))
    with pytest.raises(ValueError, match="does not accept inputs of shape"):
        TransferAttack(other, FGSM(0.1))(small_model, torch.rand(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("eps", [1.5, float("inf"), float("nan"), -0.1])
def test_linf_epsilons_outside_the_box_are_refused(eps):
    with pytest.raises(ValueError, match="epsilon"):
        PGD(eps)


LINF_SPELLINGS = ["linf", "Linf", "LINF", "L∞", "l∞", "inf", "L_inf"]
NORM_TAKING = ["apgd_ce", "apgd_dlr", "fab", "square"]


@pytest.mark.parametrize("spelling", LINF_SPELLINGS)
@pytest.mark.parametrize("name", NORM_TAKING)
def test_every_attack_reads_every_linf_spelling_and_refuses_an_eps_above_1(name, spelling):
    from robustlab.attacks import build_attack

    assert build_attack(name, 0.3, norm=spelling).norm == "linf"
    with pytest.raises(ValueError, match="L∞ epsilon above 1"):
        build_attack(name, 5.0, norm=spelling)
    assert build_attack(name, 5.0, norm="L2").norm == "l2"  # an L2 radius of 5 is a valid one


@pytest.mark.parametrize("name", ["pgd", "ifgsm", "ill", "fgsm", "ll", "eot_pgd", "fgsm_rs", "trades_kl"])
def test_every_linf_only_attack_refuses_an_eps_above_1(name):
    from robustlab.attacks import build_attack

    with pytest.raises(ValueError, match="L∞ epsilon above 1"):
        build_attack(name, 5.0)


@pytest.mark.parametrize("norm", ["L1", "l0", "", "2.0"])
def test_an_unknown_norm_is_refused_naming_the_spellings(norm):
    from robustlab.attacks import Square
    from robustlab.attacks.base import parse_norm

    with pytest.raises(ValueError, match="norm must be 'linf' or 'l2'"):
        parse_norm(norm)
    with pytest.raises(ValueError, match="norm must be"):
        Square(0.1, norm=norm)


DTYPES = st.sampled_from([torch.float32, torch.float64, torch.uint8, torch.int64])


def _batch(n: int, dtype: torch.dtype, special: str | None, label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n 1×4×4 images of ``dtype`` (integer dtypes: 0–255), with a NaN, an inf or 0–255 values, and labels."""
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(n))
    if special == "nan" and n:
        x[0, 0, 0, 0] = float("nan")
    elif special == "inf" and n:
        x[-1, 0, 1, 1] = float("inf")
    elif special == "big":
        x = x * 255
    x = x.to(dtype) if dtype.is_floating_point else (x * (255 if special != "big" else 1)).to(dtype)
    return x, torch.full((n,), label, dtype=torch.long)
SPECIALS = st.sampled_from([None, "nan", "inf", "big"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(0, 4), dtype=DTYPES, special=SPECIALS, label=st.integers(-2, 7),
       name=st.sampled_from(["fgsm", "pgd", "apgd_ce", "square", "fab"]), eps=st.floats(0.0, 1.0))
def test_attack_inputs_give_a_correct_result_or_a_clear_error(small_model, n, dtype, special, label, name, eps):
    x, y = _batch(n, dtype, special, label)
    options = {"steps": 2} if name in ("pgd", "apgd_ce", "fab") else ({"queries": 10} if name == "square" else {})
    attack = build_attack(name, eps, **options)
    valid = n > 0 and dtype == torch.float32 and special is None and 0 <= label < 5  # the model is float32
    if not valid:
        with pytest.raises(ValueError):
            attack(small_model, x, y)
        return
    x_adv = attack(small_model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert bool(torch.isfinite(x_adv).all()) and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= eps + 1e-5


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(0, 5), dtype=DTYPES, special=SPECIALS, label=st.integers(-1, 6))
def test_evaluation_inputs_give_a_correct_outcome_or_a_clear_error(small_model, n, dtype, special, label):
    from robustlab.evaluation.outcome import attack_outcome

    x, y = _batch(n, dtype, special, label)
    valid = n > 0 and dtype == torch.float32 and special is None and 0 <= label < 5
    if not valid:
        with pytest.raises(ValueError):
            attack_outcome(small_model, x, y, FGSM(0.1))
        return
    out = attack_outcome(small_model, x, y, FGSM(0.1), keep=n)
    with torch.no_grad():
        assert torch.equal(out.correct, small_model(out.x_adv).argmax(1).eq(y))  # the outcome of the points
    assert (out.x_adv - x).abs().max() <= 0.1 + 1e-6 and out.x_adv.min() >= 0 and out.x_adv.max() <= 1


@pytest.mark.parametrize("defense, key", [
    ({"name": "pgd_at", "attack": {"steps": 0}}, "defense.attack: steps must be >= 1, got 0"),
    ({"name": "pgd_at", "beta": -0.5}, "defense.beta must be >= 0, got -0.5"),
    ({"name": "fgsm_at", "warmup_epochs": -1}, "defense.warmup_epochs must be >= 0, got -1"),
    ({"name": "vat", "xi": 0.0}, "defense.xi must be > 0, got 0.0"),
])
def test_a_range_error_names_the_offending_option(defense, key):
    with pytest.raises(ConfigError, match=key):
        Trainer(config_from_dict({"defense": defense, "data": {"name": "digits"}, "model": {"name": "mlp_a3t"}}))
