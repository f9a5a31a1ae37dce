"""Reproduce Table 1 of the adversary-critic paper at CPU scale (spec METHODS.md §2), plus the critic's cost.

Trains the five defenses of ``configs/critic/cpu/`` (reference, FGSM-AT ε 0.1, VAT ε 2.0, L2 margin λ 0.1,
adversary critic) on FC-1200×3 and LeNet-5 (MNIST-5k, real MNIST), then for each model: the test error on the
1,000 test images and ρ_adv = mean ‖r‖₂/‖x‖₂ on the first ``--rho-subset`` test images under DeepFool (500
iterations, steps clipped to 0.1, overshoot 0.02: the paper's setting), C&W-L2 (reduced iterations, see
``--cw-*``) and the test-time critic attack ``critic_hc`` (500 iterations, steps clipped to 0.1), with and without
the failed attacks. Then the cost of one training batch (seconds, peak resident memory) of the critic defense vs
PGD-AT on the same model, each measured in a fresh subprocess. Writes ``docs/results/critic.md``.

Runs go to ``runs/critic_repro/<arch>_<defense>_s<seed>`` (gitignored); finished runs are reused, interrupted ones
resumed. Training is seeded and deterministic on the CPU.

    nice -n 10 .venv/bin/python benchmarks/critic.py                          # FC × 3 seeds, LeNet-5 × 1 seed
    .venv/bin/python benchmarks/critic.py --fc-seeds 1 --lenet-seeds 0 --epochs 2 --train-subset 300 \\
        --rho-subset 20 --docs /tmp/critic --runs /tmp/critic_runs                          # smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.a3t import machine_facts  # noqa: E402
from common import train_or_reuse  # noqa: E402
from robustlab.attacks import build_attack  # noqa: E402
from robustlab.checkpoint import atomic_write_text  # noqa: E402
from robustlab.engine import Trainer  # noqa: E402
from robustlab.evaluation.outcome import accuracy, minimal_attack_outcome  # noqa: E402
from robustlab.experiment import load_config  # noqa: E402

ARCHS = {"fc": "FC-1200×3", "lenet5": "LeNet-5"}
DEFENSES = {"reference": "Reference", "at": "AT (FGSM ε 0.1)", "vat": "VAT (ε 2.0)", "margin": "Margin (λ 0.1)",
            "critic": "Critic"}
PAPER = {  # Table 1: error %, ρ DeepFool, ρ C&W, ρ own attack
    ("fc", "reference"): (1.46, .131, .124, .173), ("fc", "at"): (0.90, .228, .210, .299),
    ("fc", "vat"): (0.84, .244, .215, .355), ("fc", "margin"): (0.84, .262, .230, .453),
    ("fc", "critic"): (1.18, .290, .272, .575),
    ("lenet5", "reference"): (0.64, .157, .148, .207), ("lenet5", "at"): (0.55, .215, .191, .286),
    ("lenet5", "vat"): (0.60, .225, .195, .330), ("lenet5", "margin"): (0.54, .248, .225, .470),
    ("lenet5", "critic"): (0.93, .288, .278, .590),
}
RHO_ATTACKS = ("deepfool", "cw_l2", "critic_hc")


def train_one(arch: str, defense: str, seed: int, args, log) -> Trainer:
    return train_or_reuse(f"configs/critic/cpu/{arch}_{defense}.toml", Path(args.runs) / f"{arch}_{defense}_s{seed}",
                          f"{arch} {defense}", seed=seed, epochs=args.epochs, train_subset=args.train_subset, log=log)


def rho_attacks(args) -> dict[str, object]:
    return {"deepfool": build_attack("deepfool", max_iter=500, max_step=0.1, overshoot=0.02),
            "cw_l2": build_attack("cw_l2", max_iter=args.cw_iterations, binary_search_steps=args.cw_binary_steps,
                                  initial_const=args.cw_initial_const, lr=args.cw_lr),
            "critic_hc": build_attack("critic_hc", max_iter=500)}


def evaluate(trainer: Trainer, args) -> dict[str, float]:
    model, data = trainer.model.eval(), trainer.dataset
    out = {"error": 1.0 - accuracy(model, data.test_x, data.test_y, device="cpu")}
    x, y = data.test_x[:args.rho_subset], data.test_y[:args.rho_subset]
    for name, attack in rho_attacks(args).items():
        summary, _ = minimal_attack_outcome(model, x, y, attack, name=name, batch_size=100, device="cpu")
        out[f"{name}_rho"] = summary.rho
        out[f"{name}_rho_all"] = summary.rho_with_failures
        out[f"{name}_success"] = summary.success_rate
        out[f"{name}_s"] = summary.seconds
    return out


# --- cost: time and peak memory of one training batch, in a fresh process ----------------------------------------
def memory_kb(field_name: str) -> int:
    """A ``/proc/self/status`` field in kB: ``VmRSS`` (resident now) or ``VmHWM`` (resident high-water mark)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def measure_cost(arch: str, defense: str, batches: int) -> dict[str, float]:
    """Child-process body: train ``batches`` batches of 100 twice (memory from the first pass, time from the
    second); the peak resident memory added by training over the process after setup (model, data, optimiser)."""
    torch.set_num_threads(1)
    cpu_config = ROOT / f"configs/critic/cpu/{arch}_{'critic' if defense == 'critic' else 'reference'}.toml"
    sets = ['run.device="cpu"', 'run.out_dir="/nonexistent/critic_cost"', f"data.train_subset={100 * batches}"]
    if defense.startswith("pgd"):
        sets += ['defense.name="pgd_at"', "defense.attack.eps=0.3", f"defense.attack.steps={int(defense[3:])}"]
    config = load_config(cpu_config, sets)
    trainer = Trainer(config, log=lambda m: None)
    epoch = 1 if defense == "critic" else 0  # past the critic's pretraining epoch
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size (Linux ≥ 4.0)
    base = memory_kb("VmRSS")
    trainer.train_epoch(epoch)
    peak = memory_kb("VmHWM")
    row = trainer.train_epoch(epoch)
    seconds = row["train_time_s"] / batches  # training only, not the epoch's test-accuracy pass
    return {"s_per_batch": seconds, "base_rss_mb": base / 1024, "peak_rss_mb": peak / 1024,
            "peak_over_base_mb": (peak - base) / 1024}


def cost_in_subprocess(arch: str, defense: str, batches: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--cost-child", f"{arch}:{defense}:{batches}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- formatting -----------------------------------------------------------------------------------------------------
def fmt(values: list[float], digits: int = 3, scale: float = 1.0) -> str:
    values = [scale * v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(results: dict, arch: str) -> list[str]:
    lines = ["| defense | seeds | error % | ρ DeepFool | ρ C&W | ρ critic attack | ρ DF / C&W / critic, with "
             "failures | success DF / C&W / critic | paper: error / ρ DF / ρ C&W / ρ critic |",
             "|---|---|---|---|---|---|---|---|---|"]
    for defense, label in DEFENSES.items():
        rows = results.get(f"{arch}_{defense}")
        if not rows:
            continue
        col = lambda key, **kw: fmt([r[key] for r in rows], **kw)  # noqa: E731
        paper = PAPER[(arch, defense)]
        lines.append(
            f"| {label} | {len(rows)} | {col('error', digits=2, scale=100)} | {col('deepfool_rho')} | "
            f"{col('cw_l2_rho')} | {col('critic_hc_rho')} | "
            f"{' / '.join(col(a + '_rho_all') for a in RHO_ATTACKS)} | "
            f"{' / '.join(col(a + '_success', digits=2) for a in RHO_ATTACKS)} | "
            f"{paper[0]:.2f} / {paper[1]:.3f} / {paper[2]:.3f} / {paper[3]:.3f} |")
    return lines


def mean_of(results: dict, key: str, metric: str) -> float:
    values = [r[metric] for r in results.get(key, []) if not math.isnan(r[metric])]
    return statistics.fmean(values) if values else math.nan


def std_of(results: dict, key: str, metric: str) -> float:
    values = [r[metric] for r in results.get(key, []) if not math.isnan(r[metric])]
    return statistics.stdev(values) if len(values) > 1 else 0.0


def verdict(results: dict, arch: str) -> list[str]:
    """Does the critic raise ρ over AT, VAT and margin (per attack), and at what error cost vs the reference?"""
    crit = f"{arch}_critic"
    if crit not in results:
        return []
    out = []
    for attack, name in zip(RHO_ATTACKS, ("DeepFool", "C&W", "critic attack")):
        metric = f"{attack}_rho"
        c = mean_of(results, crit, metric)
        parts = []
        for other in ("at", "vat", "margin"):
            o = mean_of(results, f"{arch}_{other}", metric)
            if math.isnan(o):
                continue
            spread = math.hypot(std_of(results, crit, metric), std_of(results, f"{arch}_{other}", metric))
            word = "higher" if c > o else "lower"
            clear = "" if abs(c - o) > spread else " (within the seed spread)"
            parts.append(f"{word} than {DEFENSES[other].split(' ')[0]} ({c:.3f} vs {o:.3f}){clear}")
        out.append(f"- {ARCHS[arch]}, ρ {name}: critic " + "; ".join(parts) + ".")
    err_c, err_r = 100 * mean_of(results, crit, "error"), 100 * mean_of(results, f"{arch}_reference", "error")
    out.append(f"- {ARCHS[arch]}, error cost: critic {err_c:.2f} % vs reference {err_r:.2f} % "
               f"({err_c - err_r:+.2f} points; the paper: "
               f"{PAPER[(arch, 'critic')][0] - PAPER[(arch, 'reference')][0]:+.2f}).")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fc-seeds", type=int, default=3)
    parser.add_argument("--lenet-seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=0, help="override run.epochs (0: the configs')")
    parser.add_argument("--train-subset", type=int, default=0, help="override data.train_subset (0: the configs')")
    parser.add_argument("--rho-subset", type=int, default=50, help="test images attacked for ρ")
    parser.add_argument("--cw-iterations", type=int, default=100, help="paper: 1000")
    parser.add_argument("--cw-binary-steps", type=int, default=5, help="paper: 9")
    parser.add_argument("--cw-initial-const", type=float, default=0.1, help="paper: 1e-3")
    parser.add_argument("--cw-lr", type=float, default=0.1, help="paper: 1e-2")
    parser.add_argument("--cost-batches", type=int, default=3, help="batches of 100 timed per cost measurement")
    parser.add_argument("--runs", default="runs/critic_repro")
    parser.add_argument("--docs", default="docs/results")
    parser.add_argument("--cost-child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.chdir(ROOT)
    if args.cost_child:
        arch, defense, batches = args.cost_child.split(":")
        print(json.dumps(measure_cost(arch, defense, int(batches))))
        return 0
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, list[dict]] = {}
    epoch_times: dict[str, list[float]] = {}
    plan = [("fc", s) for s in range(args.fc_seeds)] + [("lenet5", s) for s in range(args.lenet_seeds)]
    for arch, seed in plan:
        for defense in DEFENSES:
            trainer = train_one(arch, defense, seed, args, print)
            t0 = time.perf_counter()
            res = evaluate(trainer, args)
            results.setdefault(f"{arch}_{defense}", []).append(res)
            critic_epochs = [r["train_time_s"] for r in trainer.history if "train_critic_loss" in r]
            epoch_times.setdefault(f"{arch}_{defense}", []).extend(
                critic_epochs or [r["train_time_s"] for r in trainer.history])
            print(f"[{arch} {defense} seed {seed}] error {100 * res['error']:.2f} % "
                  + ", ".join(f"{a} ρ {res[a + '_rho']:.3f} ({res[a + '_success']:.2f})" for a in RHO_ATTACKS)
                  + f" (eval {time.perf_counter() - t0:.0f} s)", flush=True)
            atomic_write_text(Path(args.runs) / "results.json", json.dumps(results, indent=2))
    costs = {}
    for arch in dict.fromkeys(a for a, _ in plan):
        for defense in ("critic", "pgd7", "pgd40"):
            costs[(arch, defense)] = cost_in_subprocess(arch, defense, args.cost_batches)
            print(f"[cost {arch} {defense}] {costs[(arch, defense)]}", flush=True)
    total = time.perf_counter() - started

    train_subset = args.train_subset or 1000
    epochs = args.epochs or 5
    cost_lines = ["| model | training | s / batch of 100 | s / epoch (train set) | RSS after setup, MB | "
                  "peak RSS in training, MB | training's extra memory (peak − setup), MB |",
                  "|---|---|---|---|---|---|---|"]
    for (arch, defense), c in costs.items():
        label = {"critic": "adversary critic (A_f 5 steps ×2, critic step)", "pgd7": "PGD-AT, 7 steps, ε 0.3",
                 "pgd40": "PGD-AT, 40 steps, ε 0.3"}[defense]
        cost_lines.append(f"| {ARCHS[arch]} | {label} | {c['s_per_batch']:.3f} | "
                          f"{c['s_per_batch'] * train_subset / 100:.1f} | {c['base_rss_mb']:.0f} | "
                          f"{c['peak_rss_mb']:.0f} | "
                          f"{c['peak_over_base_mb']:.0f} |")
    epoch_lines = ["| model | defense | s / epoch in the runs above (mean over epochs and seeds) |", "|---|---|---|"]
    for key, times in epoch_times.items():
        arch, defense = key.split("_", 1)
        epoch_lines.append(f"| {ARCHS[arch]} | {DEFENSES[defense]} | {statistics.fmean(times):.1f} |")
    command = "nice -n 10 .venv/bin/python benchmarks/critic.py" + (
        " " + shlex.join(argv if argv is not None else sys.argv[1:])).rstrip()
    verdicts = [line for arch in ARCHS for line in verdict(results, arch)]
    tables = []
    for arch in ARCHS:
        if any(k.startswith(arch + "_") for k in results):
            tables += [f"**{ARCHS[arch]}**", "", *table(results, arch), ""]
    text = f"""# Adversary critic: Table 1 analogue at CPU scale (Matyasko & Chau 2018)

Generated by `benchmarks/critic.py` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC in
{total / 60:.1f} min (finished runs are reused):

    {command}

Machine: {machine_facts()}; run at nice 10, one thread, on a machine shared with other jobs (times are indicative).

**Setup (reductions from the paper in bold).** MNIST-5k (real MNIST): **the first {train_subset} training images**
(paper: 50,000), the 1,000 test images (paper: 10,000); batch 100, Adam lr 5e-4 β1 0.5 for every model,
**{epochs} epochs, constant learning rate** (paper: 100 epochs, halved every 40); the critic's runs are 1 pretraining
epoch + {epochs - 1} critic epochs (critic Adam 1e-3 β1 0.5, λ 0.5 FC / 0.1 LeNet-5, λ_rec 0.01, λ_grad 10, A_f with
5 steps). Configs: `configs/critic/cpu/` (the full-scale ones in `configs/critic/full/`). **Seeds: FC-1200×3
{args.fc_seeds}, LeNet-5 {args.lenet_seeds}** (cells are mean ± sample std over seeds; one seed: no ±). Error: the 1,000
test images. ρ_adv = mean ‖r‖₂/‖x‖₂ on **the first {args.rho_subset} test images**, under DeepFool (500 iterations,
steps clipped to 0.1, overshoot 0.02: the paper's setting), **C&W-L2 with {args.cw_iterations} iterations ×
{args.cw_binary_steps} binary-search steps, c₀ {args.cw_initial_const:g}, lr {args.cw_lr:g}** (paper: 1000 × 9, c₀
1e-3, lr 1e-2; fewer iterations can only overestimate ‖r‖) and the test-time critic attack `critic_hc` (500
iterations, steps clipped to 0.1, target = closest boundary, C = clean confidence). "ρ": over the successful
attacks; "with failures": failures counted with the attack's last iterate; "success": the attacks' success rate
(a misclassified clean image counts as a success with r = 0).

{chr(10).join(tables)}
**Closing note: did the critic raise ρ over AT, VAT and margin, as in the paper?** ("within the seed spread": the
difference of the means is below the combined std of the two; with one seed there is no spread to compare.)

{chr(10).join(verdicts)}

**Cost of critic training vs PGD-AT on the same model**, each configuration in a fresh process: time per training
batch of 100 (second pass over {args.cost_batches} batches), and resident memory (``/proc/self/status``: RSS after
setup — model, data, optimiser, critic — and the high-water mark VmHWM during the first pass, reset just before
it; the pass includes the epoch's clean test-accuracy pass, the same for every row):

{chr(10).join(cost_lines)}

Per-epoch training time measured in the runs of the table (critic: critic epochs only), {train_subset} images:

{chr(10).join(epoch_lines)}
"""
    atomic_write_text(docs / "critic.md", text)
    atomic_write_text(Path(args.runs) / "results.json",
                      json.dumps({"results": results, "costs": {f"{a}_{d}": c for (a, d), c in costs.items()},
                                  "total_s": total}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
