"""The main job: standard training vs PGD-AT of LeNet-5 on MNIST-5k, evaluated under FGSM, PGD and the standard suite.

The ``STANDARD`` column is the AutoAttack-strength ``standard`` suite (:mod:`robustlab.standard`) at the training
ε 0.3 on the first ``standard_subset`` test images: the robust-accuracy headline. FGSM and PGD give the curve over
ε. Runs in a few minutes on 2 CPU cores with no download. Training resumes if interrupted, and a finished run is
reused (delete the output directory to train again). Writes ``results.md``, ``results.csv``, ``results.json``
and ``accuracy_vs_eps.png`` to the output directory.
"""

from __future__ import annotations

import functools
import json
import shutil
from importlib import resources
from pathlib import Path

import torch

from robustlab.checkpoint import atomic_write_text, find_latest_checkpoint
from robustlab.engine import Trainer
from robustlab.evaluate import CurvePoint, attack_factories, robustness_curve
from robustlab.experiment import load_config
from robustlab.report import markdown_table, plot_accuracy_vs_eps, write_csv
from robustlab.runs import load_trained_model
from robustlab.standard import OtherEvaluationState, StandardSettings, evaluate_standard

DEMO_RECIPES = {"standard": "demo_standard.toml", "pgd_at": "demo_pgd_at.toml"}
DEMO_EPS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
STANDARD_EPS = 0.3  # the PGD-AT model's training ε


def recipe_path(filename: str) -> Path:
    return Path(str(resources.files("robustlab.recipes") / filename))


def run_demo(out_dir: str | Path = "runs/demo", *, epochs_scale: float = 1.0, eval_subset: int = 1000,
             standard_subset: int = 500, pgd_steps: int = 40, pgd_step_size: float = 0.01, log=print) -> dict:
    """Train (or reuse) both demo models, evaluate them on ``eval_subset`` test images (the standard suite on
    ``standard_subset``), write the report."""
    out_dir = Path(out_dir)
    results = {}
    for label, filename in DEMO_RECIPES.items():
        config = load_config(recipe_path(filename), [f"run.out_dir={json.dumps(str(out_dir / label))}"])
        config.run.epochs = max(1, round(config.run.epochs * epochs_scale))
        run_dir = config.out_dir
        ckpt = find_latest_checkpoint(run_dir) if run_dir.exists() else None
        done = ckpt is not None and int(ckpt.name.split("-")[1]) >= config.run.epochs
        if done:
            log(f"[{label}] reusing the finished run in {run_dir} (delete it to train again)")
        else:
            Trainer(config, resume=ckpt is not None, log=log).fit()
        model, config, data, _ = load_trained_model(str(run_dir))
        config.eval.pgd_steps = pgd_steps
        config.eval.pgd_step_size = pgd_step_size  # 0: 2.5ε/steps
        config.eval.attacks = ["fgsm", "pgd"]
        x, y = data.test_x[:eval_subset], data.test_y[:eval_subset]
        log(f"[{label}] evaluating on {len(x)} test images: FGSM and PGD-{pgd_steps} at ε in {DEMO_EPS}")
        clean, points = robustness_curve(model, x, y, attack_factories(config.eval), DEMO_EPS, device="cpu")
        n = min(standard_subset, len(data.test_x))
        log(f"[{label}] standard suite (AutoAttack-strength) at ε {STANDARD_EPS} on {n} test images")
        # The state directory `robustlab eval --checkpoint RUN` uses: a finished evaluation is reused, one of
        # other settings (or of an older robustlab) is replaced.
        state_dir = run_dir / "eval_standard_state"
        evaluate = functools.partial(evaluate_standard, model, data.test_x, data.test_y,
                                     StandardSettings(eps=STANDARD_EPS, subset=n), num_classes=data.num_classes,
                                     device="cpu", log=log, state_dir=state_dir)
        try:
            standard = evaluate()
        except OtherEvaluationState:
            log(f"[{label}] {state_dir} holds another evaluation: evaluating again")
            shutil.rmtree(state_dir)
            standard = evaluate()
        points.append(CurvePoint("standard", STANDARD_EPS, standard.robust_accuracy, n=n))
        results[label] = (clean, points)
    table = markdown_table(results, eps_filter={0.1, 0.3})
    full_table = markdown_table(results)
    atomic_write_text(out_dir / "results.md",
                      "# robustlab demo: LeNet-5 on MNIST-5k, accuracy (%)\n\n" + full_table
                      + f"\nFGSM and PGD-{pgd_steps} on the first {eval_subset} test images; STANDARD: the standard suite "
                        f"(AutoAttack's attacks and settings) on the first {standard_subset}.\n")
    write_csv(results, out_dir / "results.csv")
    atomic_write_text(out_dir / "results.json", json.dumps(
        {m: {"clean": c, "curve": [vars(p) for p in pts]} for m, (c, pts) in results.items()}, indent=2))
    plot_accuracy_vs_eps(results, out_dir / "accuracy_vs_eps.png", title="LeNet-5 on MNIST-5k")
    log("\n" + table)
    log(f"wrote {out_dir / 'results.md'}, results.csv, results.json and accuracy_vs_eps.png")
    return results


if __name__ == "__main__":  # pragma: no cover
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run_demo()
