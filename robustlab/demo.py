"""The main job: standard training vs PGD-AT of LeNet-5 on MNIST-5k, evaluated under FGSM, PGD and the standard suite.

The ``STANDARD`` column is the AutoAttack-strength ``standard`` suite (:mod:`robustlab.evaluation.suites`) at the
training ε 0.3 on the first ``standard_subset`` test images: the robust-accuracy headline. FGSM and PGD give the
curve over ε on the first ``eval_subset`` (by default the same 500). Runs in under 10 minutes on one CPU core with no
download. Training resumes if interrupted, and a finished run is reused (delete the output directory to train
again). Writes ``results.md``, ``results.csv``, ``results.json`` and ``accuracy_vs_eps.png`` to the output directory.
"""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

import torch

from robustlab.checkpoint import atomic_write_text, find_latest_checkpoint
from robustlab.engine import Trainer
from robustlab.evaluation import EvalSettings, EvaluationResult, evaluate
from robustlab.evaluation.plots import plot_models
from robustlab.evaluation.report import comparison_table
from robustlab.experiment import load_config
from robustlab.runs import load_trained_model
from robustlab.strict_json import strict_dumps

DEMO_RECIPES = {"standard": "demo_standard.toml", "pgd_at": "demo_pgd_at.toml"}
DEMO_EPS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
STANDARD_EPS = 0.3  # the PGD-AT model's training ε


def recipe_path(filename: str) -> Path:
    return Path(str(resources.files("robustlab.recipes") / filename))


def run_demo(out_dir: str | Path = "runs/demo", *, epochs_scale: float = 1.0, eval_subset: int = 500,
             standard_subset: int = 500, pgd_steps: int = 40, pgd_step_size: float = 0.01, log=print) -> dict:
    """Train (or reuse) both demo models, evaluate them on ``eval_subset`` test images (the standard suite on
    ``standard_subset``), write the report. One torch thread: training is deterministic for a given thread count,
    so the demo reproduces the README's table exactly. Any setting below the defaults makes it a smoke run, titled
    so; what a rerun reused (training, the standard suite's state) is said under the table."""
    torch.set_num_threads(1)
    out_dir = Path(out_dir)
    smoke = (epochs_scale, eval_subset, standard_subset, pgd_steps) != (1.0, 500, 500, 40)
    results, reused = {}, []
    for label, filename in DEMO_RECIPES.items():
        config = load_config(recipe_path(filename), [f"run.out_dir={json.dumps(str(out_dir / label))}"])
        config.run.epochs = max(1, round(config.run.epochs * epochs_scale))
        run_dir = config.out_dir
        ckpt = find_latest_checkpoint(run_dir) if run_dir.exists() else None
        done = ckpt is not None and int(ckpt.name.split("-")[1]) >= config.run.epochs
        if done:
            log(f"[{label}] reusing the finished run in {run_dir} (delete it to train again)")
            reused.append(f"{label}'s training")
        else:
            Trainer(config, resume=ckpt is not None, log=log).fit()
        model, config, data, _ = load_trained_model(str(run_dir))
        x, y = data.test_x[:eval_subset], data.test_y[:eval_subset]
        log(f"[{label}] evaluating on {len(x)} test images: FGSM and PGD-{pgd_steps} at ε in {DEMO_EPS}")
        curve = evaluate(model, x, y, EvalSettings(eps=DEMO_EPS, attacks=["fgsm", "pgd"], pgd_steps=pgd_steps,
                                                   pgd_step_size=pgd_step_size, pgd_restarts=1),
                         suite="quick", device="cpu", checks=False, log=log)
        n = min(standard_subset, len(data.test_x))
        log(f"[{label}] standard suite (AutoAttack-strength) at ε {STANDARD_EPS} on {n} test images")
        # Under the state folder `robustlab eval --checkpoint RUN` uses: a finished evaluation is reused.
        standard = evaluate(model, data.test_x, data.test_y, EvalSettings(eps=STANDARD_EPS, subset=n),
                            suite="standard", num_classes=data.num_classes, device="cpu", log=log,
                            state_dir=run_dir / "eval_state")
        if any(row.get("resumed") for row in standard.rows):  # its saved state (stages with work left: none)
            reused.append(f"{label}'s standard suite")
        results[label] = [curve, standard]
    title = "robustlab demo: LeNet-5 on MNIST-5k, accuracy (%)"
    if smoke:
        title += (f" — SMOKE RUN (--quick: {epochs_scale:g}× the epochs, {eval_subset} test images, the standard "
                  f"suite on {standard_subset}): it checks the pipeline; these are not the README's numbers")
    note = f"\nReused from an earlier run, not recomputed: {', '.join(reused)}.\n" if reused else ""
    table = comparison_table(results, eps_filter={0.1, 0.3})
    atomic_write_text(out_dir / "results.md",
                      f"# {title}\n\n" + comparison_table(results)
                      + f"\nFGSM and PGD-{pgd_steps} on the first {eval_subset} test images; STANDARD: the standard "
                        f"suite (AutoAttack's attacks and settings) on the first {standard_subset}.\n" + note)
    write_long_csv(results, out_dir / "results.csv")
    atomic_write_text(out_dir / "results.json", strict_dumps(
        {m: [r.to_dict() | {"per_example": None} for r in rs] for m, rs in results.items()}, indent=2))
    plot_models(results, out_dir / "accuracy_vs_eps.png", title="LeNet-5 on MNIST-5k")
    log(f"\n{title}\n\n{table}" + note)
    log(f"wrote {out_dir / 'results.md'}, results.csv, results.json and accuracy_vs_eps.png")
    return results


def write_long_csv(results: dict[str, list[EvaluationResult]], path: Path) -> None:
    """Long format: model, suite, attack, eps, accuracy, error (clean as attack ``none`` at ε 0; a claim suite as its
    worst case, attack ``worst_case``)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "suite", "attack", "eps", "accuracy", "error"])
        for model, rs in results.items():
            writer.writerow([model, "", "none", 0.0, f"{rs[0].clean:.6f}", f"{1 - rs[0].clean:.6f}"])
            for r in rs:
                pairs = [("worst_case", e, a) for e, a in r.curve.items()] if r.claim else \
                    [(row["attack"], row["eps"], row["accuracy"]) for row in r.bounded_rows()]
                for attack, eps, acc in pairs:
                    writer.writerow([model, r.suite, attack, eps, f"{acc:.6f}", f"{1 - acc:.6f}"])


if __name__ == "__main__":  # pragma: no cover
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run_demo()
