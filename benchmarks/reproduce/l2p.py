"""Does learning the noise matter? Learn2Perturb vs PGD-AT, PNI and L2P-R (noise not learned), paired seeds, EOT.

The paper (Jeddi et al. 2020): L2P beats PGD-AT (ResNet-V1(20): PGD 51.13 vs 39.1) and PNI (EOT-PGD 53.34 vs 48.65).
Its own argument is that *learning* θ (with the regulariser) is what helps; the control that decides it is the same
network with the same noise not learned from the loss. At CPU scale:

* arms (``configs/l2p/cpu/*.toml`` on ``--train-subset`` Fashion-MNIST training images, LeNet-5 with a
  perturbation module after each convolution, PGD-7 ε 0.1 with eq. 11): **PGD-AT**, **PNI** (learned weight noise),
  **L2P** (θ learned from the loss and moved by the regulariser), **L2P-R** (θ moved by the regulariser only: the
  same noise growth, not learned; the paper's own control, Table 1); with ``--fixed-noise`` also **fixed noise**
  (L2P-R with γ 0 and θ frozen from the first noisy epoch at the mean θ that L2P of the same seed ends at: at this
  scale it is unstable, see the document); seeds 0–4, paired; ``--epochs`` epochs (the learning rate ×0.1 at 80% of
  them), the plateau of the clean accuracy reported;
* per run, on the first ``--test-subset`` test images at ε 0.1: clean (mean over 10 draws for the noisy arms), the
  ``rand`` suite (APGD-CE and APGD-DLR with EOT over 20 draws, each final point predicted 10 times: chosen
  automatically for randomised models; PGD-AT gets ``standard``), EOT-PGD (``--eot-samples`` draws × 20 steps),
  and the paper's own attack, PGD-7 with one noise draw per step (measured last: optional in a report until every
  run has it);
* an EOT convergence check on seed 0's L2P model: 10/40/80 draws × 20/100 steps on 200 images;
* the claims: L2P − PGD-AT, L2P − PNI, L2P − L2P-R (robust accuracy points), paired bootstrap over seeds ×
  images; the robust-vs-clean points of every run (the comparison at matched clean accuracy); θ's mean and spread
  per layer per epoch.

    nice -n 10 .venv/bin/python benchmarks/reproduce/l2p.py             # writes docs/results/reproduction/l2p.md
    .venv/bin/python benchmarks/reproduce/l2p.py --quick                  # smoke run into runs/reproduce_l2p_quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import (  # noqa: E402
    LEFT_OUT, ROOT, Archive, Arm, Measurements, Missing, arm_table, begin, chunked_outcomes, chunks, command_line,
    compare_arms, comparison_table, draws_correct, epoch_table, finished_epochs, gates_section, headline, history, load,
    machine_line, matched_attack_gate, mean_std, plan, skip_missing, standard_key, standard_outcomes, train,
    verdict_lines, write_document)
from robustlab.paired import Gate, floor_gate, masking_gate, mechanism_gate  # noqa: E402
from robustlab.attacks import build_attack  # noqa: E402
from robustlab.checkpoint import find_latest_checkpoint  # noqa: E402
from robustlab.models.noise import noise_modules  # noqa: E402

EPS = 0.1
CHUNK = 100  # test images per measurement (each cached and archived on its own)
L2P = Arm("L2P", "configs/l2p/cpu/l2p.toml")
ARMS = [Arm("PGD-AT", "configs/l2p/cpu/pgd_at.toml"), Arm("PNI", "configs/l2p/cpu/pni.toml"), L2P,
        Arm("L2P-R", "configs/l2p/cpu/l2p_r.toml")]
ROBUST_METRICS = {"suite": "rand / standard suite", "eot_pgd": "EOT-PGD", "worst": "worst of the two, per example"}
PGD7 = ("pgd7", "PGD-7 without EOT")  # the paper's Table 1 attack: one noise draw per gradient step
# L2P − baseline in the paper (Table 1; the fixed-noise arm is compared with L2P-R's effect, the closest control)
PAPER = {"PGD-AT": 51.13 - 39.1, "PNI": 53.34 - 48.65, "L2P-R": 51.13 - 50.23, "fixed noise": 51.13 - 50.23}
# gate thresholds, fixed before the runs are read
FLOOR = 40.0  # PGD-AT's standard-suite accuracy at ε 0.1: half its ~80% clean accuracy, or the recipe is broken
MAX_GAP = 10.0  # EOT-PGD may not beat the suite by more: the suite falling far below PGD is the masking signature
THETA_APART = 0.05  # L2P's final θ must differ from L2P-R's by ≥ 5% (relative) in some layer, or nothing was learned


def gamma_arms(gamma: float) -> tuple[Arm, Arm]:
    """L2P and L2P-R with the regulariser's weight γ (their own run directories)."""
    return (Arm(f"L2P, γ {gamma:g}", "configs/l2p/cpu/l2p.toml", (f"defense.gamma={gamma}",), f"l2p_gamma{gamma:g}"),
            Arm(f"L2P-R, γ {gamma:g}", "configs/l2p/cpu/l2p_r.toml", (f"defense.gamma={gamma}",),
                f"l2p-r_gamma{gamma:g}"))


def gamma_pilot(root: Path, measured_gammas: list[float], epochs: int) -> str:
    """The θ pilot at other γ: L2P and L2P-R trained (not measured) at a γ this document does not compare, read from
    their archived logs — whether θ learned from the loss moves away from θ moved by the regulariser alone there
    (the θ gate's question), before measuring them is worth its ~35 CPU-minutes per run."""
    if Archive.folder is None:
        return ""
    found = sorted({float(p.name.split("_gamma")[1].split("_seed")[0])
                    for p in Archive.folder.glob("l2p*_gamma*_seed*.json")} - set(measured_gammas))
    rows = []
    for gamma in found:
        method, control = gamma_arms(gamma)
        pattern = f"l2p_gamma{gamma:g}_seed*.json"
        seeds = sorted({int(p.stem.rsplit("_seed", 1)[1]) for p in Archive.folder.glob(pattern)})
        for seed in seeds:
            m_dir, c_dir = method.run_dir(root, seed), control.run_dir(root, seed)
            a, b = history(m_dir), history(c_dir)
            if len(a) >= epochs and len(b) >= epochs:
                gate = theta_gate([m_dir], [c_dir], control.label, method.label)
                rows.append(f"| {gamma:g} | {seed} | {a[-1]['theta_mean']:.4f} | {b[-1]['theta_mean']:.4f} | "
                            f"{gate.measured.removeprefix('largest layer difference ')} | **{gate.status}** |")
    if not rows:
        return ""
    header = ("| γ | seed | L2P final mean θ | L2P-R final mean θ | largest layer difference | θ gate |\n"
              "|---|---|---|---|---|---|\n")
    return ("**θ pilot at other γ** (`benchmarks/reproduce/l2p.py --gammas G --seeds S --train-only`: trained, not "
            "measured; the θ gate decides whether measuring them can show what learning θ does):\n\n" + header
            + "\n".join(rows) + "\n")


def theta_gate(l2p_dirs: list[Path], control_dirs: list[Path], control: str, subject: str = "L2P") -> Gate:
    """(c) Learning moved θ: L2P's final per-layer mean θ differs from the control's (same seed) by ≥ 5% in some
    layer, on every seed."""
    cells, passed = [], True
    for a, b in zip(l2p_dirs, control_dirs):
        ha, hb = history(a), history(b)
        if not ha or not hb:
            return mechanism_gate(subject, "θ learned: differs from the control's", "not logged", None)
        layers = sorted(k for k in ha[-1] if k.startswith("theta_") and k.endswith("_mean") and k.count("_") == 2)
        apart = max((abs(ha[-1][k] - hb[-1][k]) / max(abs(hb[-1][k]), 1e-12) for k in layers if k in hb[-1]),
                    default=float("nan"))
        passed = passed and apart >= THETA_APART
        cells.append(f"seed {a.name.rsplit('seed', 1)[-1]}: {100 * apart:.1f}%")
    return mechanism_gate(subject, f"θ learned: in some layer its final mean θ differs from {control}'s by ≥ "
                          f"{100 * THETA_APART:g}% (relative), every seed", "largest layer difference " +
                          ", ".join(cells), passed)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--test-subset", type=int, default=500)
    p.add_argument("--eot-samples", type=int, default=80)
    p.add_argument("--no-eot-check", action="store_true")
    p.add_argument("--gammas", type=float, nargs="+", default=[],
                   help="also L2P and L2P-R with these γ (the configs: 0.01, 100× the paper's 1e-4), compared with "
                        "each other")
    p.add_argument("--fixed-noise", action="store_true",
                   help="also the fixed-noise arm (θ frozen at L2P's final mean)")
    p.add_argument("--runs", default="runs/reproduce_l2p")
    p.add_argument("--out", default="docs/results/reproduction/l2p.md")
    p.add_argument("--report-only", action="store_true", help="compute nothing: write the document from what is done")
    p.add_argument("--train-only", action="store_true", help="train (or resume) the runs, measure nothing")
    p.add_argument("--quick", action="store_true", help="2 seeds, 3 epochs, 1,000 training / 100 test images")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.train_subset, args.test_subset, args.eot_samples = [0, 1], 3, 1000, 100, 4
        args.no_eot_check = True
    return args


def schedule(args) -> tuple[str, ...]:
    return (f"data.train_subset={args.train_subset}", f"schedule.milestones=[{max(1, round(0.8 * args.epochs))}]",
            "eval.every=0")


def eot_pgd(model, x, y, samples: int, steps: int) -> np.ndarray:
    """Per example, the fraction of 10 draws correct at EOT-PGD's point. A model without noise modules (PGD-AT)
    gives every draw the same gradient: one draw per step is the same attack, ``samples`` times cheaper."""
    torch.manual_seed(1234)
    samples = samples if noise_modules(model) else 1
    attack = build_attack("eot_pgd", EPS, eot_samples=samples, steps=steps, step_size=2.5 * EPS / steps)
    return draws_correct(model, attack(model, x, y), y, 10)


def pgd7_no_eot(model, x, y) -> np.ndarray:
    """Per example, the fraction of 10 draws correct at the final point of PGD-7 with one noise draw per step (the
    paper's Table 1 attack). Its step is not the paper's 0.01 (0.32ε at ε 8/255) but the PGD-AT arm's 2.5ε/7
    (0.36ε). On a noisy model no row leaves early at a draw that fooled it: that draw says little about the 10."""
    torch.manual_seed(1234)
    attack = build_attack("pgd", EPS, steps=7, step_size=2.5 * EPS / 7, early_stop=not noise_modules(model))
    return draws_correct(model, attack(model, x, y), y, 10)


def clean_key(n: int) -> str:
    return f"clean 10 draws n={n}"


def eot_key(samples: int) -> str:
    return f"eot_pgd {samples}x20 eps={EPS}"


def pgd7_key() -> str:
    return f"pgd-7 no eot final point eps={EPS}"


def check_key(samples: int, steps: int) -> str:
    return f"eot check {samples}x{steps}"


# the EOT check's (draws, steps) on EOT_CHECK_IMAGES images, cheapest first (a stopped session keeps the cheap ones)
EOT_CHECK = sorted(((samples, steps) for samples in (10, 40, 80) for steps in (20, 100)), key=lambda c: c[0] * c[1])
EOT_CHECK_IMAGES = 200


def needs(args, eot_check: bool = False) -> list[str]:
    """Every measurement :func:`measure` (and, with ``eot_check``, the EOT check) takes of a run."""
    n = args.test_subset
    keys = [clean_key(n)] + [k for prefix in (standard_key(EPS), eot_key(args.eot_samples), pgd7_key())
                             for k, _, _ in chunks(prefix, n, CHUNK)]
    if eot_check:
        keys += [k for s, t in EOT_CHECK for k, _, _ in chunks(check_key(s, t), EOT_CHECK_IMAGES, CHUNK)]
    return keys


def measure(run_dir: Path, args) -> dict:
    model, data = load(run_dir)
    x, y = data.test_x[:args.test_subset], data.test_y[:args.test_subset]
    m = Measurements(run_dir)
    out = {"clean": m.get(clean_key(len(x)), lambda: (draws_correct(model, x, y, 10), {}))}
    # in chunks of CHUNK images, each archived when done: a session that stops keeps what it finished
    robust, failed = standard_outcomes(m, model, x, y, EPS, run_dir, len(x), chunk=CHUNK)
    out["suite"] = robust  # a noisy model fails stable_predictions by design: that is what selects the rand suite
    out["failed_checks"] = [c for c in failed if c != "stable_predictions"]
    out["eot_pgd"] = chunked_outcomes(m, eot_key(args.eot_samples), len(x), lambda a, b: (
        eot_pgd(model, x[a:b], y[a:b], args.eot_samples, 20), {}), chunk=CHUNK)
    # per example, the stronger of the two attacks (the attacker picks per example, as AutoAttack's worst case)
    out["worst"] = np.minimum(out["suite"], out["eot_pgd"])
    try:  # measured after the rest (its runs retrained for it): a report from an archive without it omits it
        out[PGD7[0]] = chunked_outcomes(m, pgd7_key(), len(x), lambda a, b: (pgd7_no_eot(model, x[a:b], y[a:b]), {}),
                                        chunk=CHUNK)
    except Missing:
        if not Measurements.report_only:
            raise
    return out


def plot_robust_vs_clean(rows: dict[str, dict[int, dict[str, float]]], path: Path) -> None:
    """One point per run: clean accuracy against the suite's and EOT-PGD's robust accuracy (the comparison at
    matched clean accuracy: an arm better only by trading clean accuracy lies on the others' line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11.4, 3.4), sharex=True)
    for ax, (key, name) in zip(axes, ROBUST_METRICS.items()):
        for i, (label, by_seed) in enumerate(rows.items()):
            ax.scatter([r["clean"] for r in by_seed.values()], [r[key] for r in by_seed.values()], color=f"C{i}",
                       label=label, s=22)
        ax.set_xlabel("clean accuracy (%)")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Learn2Perturb reproduction: one point per run (ε 0.1)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


PGD7_GATE_NOTE = f""" The paper's own attack, PGD-7 without EOT, measured after the other attacks,
gets the same {MAX_GAP:g}-point rule against the suite (added with its measurement): a comparison under it has a
verdict only where neither arm's PGD-7 is more than {MAX_GAP:g} points above its suite."""


FIXED_NOISE = """ **fixed noise** = L2P-R with γ 0, no θ optimiser step and θ₀ = the mean θ
that L2P ends at in the same seed, from the first noisy epoch on."""


FIXED_NOISE_NOTE = """The control first planned (`--fixed-noise`: L2P-R with γ 0, θ frozen from the first noisy epoch
at the mean θ that L2P of the same seed ends at) is not a fair control at this scale: L2P's θ grows from 0.25 to
{theta} over the epochs, and switching a noise of that size on at once destabilises training. Its final clean test
accuracy (the config's test subset, one draw): {fixed}; PGD-AT ends at {pgd_at}%, L2P at {l2p}% (mean over the
seeds here). The control used instead is L2P-R,
the paper's own: θ grows under the same regulariser but is not moved by the loss. Since L2P's θ stays uniform within
each layer (the largest spread of a layer's θ at the last epoch: {spread}), L2P-R's noise is the same noise,
not learned."""


def main(argv=None) -> int:
    args = parse_args(argv)
    root = begin(args, "l2p")
    gammas = [gamma_arms(g) for g in args.gammas]
    dirs = [d for s in args.seeds for d in [a.run_dir(root, s) for a in ARMS + [a for pair in gammas for a in pair]]
            + ([root / f"fixed_noise_seed{s}"] if args.fixed_noise else [])]
    to_measure = [d for d in dirs if not Archive.has(d, needs(args))]
    to_train = [d for d in to_measure if find_latest_checkpoint(d) is None or finished_epochs(d) < args.epochs]
    # measured here (one thread, 2026-12-06): a 10-epoch run on 10,000 images 425-470 s (2 clean epochs, then
    # PGD-7); the rand suite plus EOT-PGD 80 × 20 on 500 images: PNI 1,340 s, L2P and L2P-R ≈ 2,100 s, PGD-AT
    # (standard suite) 460 s
    if not args.report_only:
        plan("l2p", len(to_train), len(dirs), 45.0 * args.epochs * args.train_subset / 10000, len(to_measure),
             3.4 * args.test_subset)
    base_labels = [a.label for a in ARMS] + (["fixed noise"] if args.fixed_noise else [])
    labels = base_labels + [a.label for pair in gammas for a in pair]
    results: dict[str, dict[int, dict]] = {label: {} for label in labels}
    run_dirs: dict[str, dict[int, Path]] = {label: {} for label in labels}

    def train_and_measure(arm: Arm, seed: int, eot_check: bool = False) -> None:
        run_dirs[arm.label][seed] = train(arm, seed, root, epochs=args.epochs, extra=schedule(args),
                                          needs=needs(args, eot_check))
        if not args.train_only:
            with skip_missing():
                results[arm.label][seed] = measure(run_dirs[arm.label][seed], args)

    for seed in args.seeds:  # each run measured as soon as it is trained (the fixed-noise arm needs L2P's θ)
        for arm in ARMS:
            with skip_missing():
                train_and_measure(arm, seed, arm is L2P and seed == args.seeds[0] and not args.no_eot_check)
        for pair in gammas:
            for arm in pair:
                with skip_missing():
                    train_and_measure(arm, seed)
        if args.fixed_noise and seed in run_dirs["L2P"]:
            with skip_missing():
                theta = history(L2P.run_dir(root, seed))[-1]["theta_mean"]
                train_and_measure(Arm("fixed noise", "configs/l2p/cpu/l2p.toml",
                                      ("defense.variant='l2p_r'", "defense.gamma=0.0", "defense.noise_lr=0.0",
                                       f"model.theta0={theta}"), "fixed_noise"), seed)
    if args.train_only:
        return 0
    measured = sorted(set.intersection(*(set(by_seed) for by_seed in results.values())))
    rows = {label: {s: {k: 100 * float(np.mean(v)) for k, v in r.items() if k != "failed_checks"}
                    for s, r in by_seed.items()} for label, by_seed in results.items()}
    arm_gates = {}
    for label, by_seed in rows.items():
        if by_seed:
            arm_gates[label] = [masking_gate(label, float(np.mean([r["suite"] for r in by_seed.values()])),
                                             float(np.mean([r["eot_pgd"] for r in by_seed.values()])), MAX_GAP)]
    if rows["PGD-AT"]:
        arm_gates["PGD-AT"].append(floor_gate("PGD-AT", float(np.mean([r["suite"] for r in rows["PGD-AT"].values()])),
                                              FLOOR, "standard-suite accuracy", "half of a ~80% clean accuracy"))
    l2p_dirs = [run_dirs["L2P"][s] for s in measured if s in run_dirs["L2P"]]
    pair_gates = {base: [matched_attack_gate(base, [run_dirs[base][s] for s in measured if s in run_dirs[base]],
                                             "L2P", l2p_dirs)] for base in base_labels if base != "L2P"}
    for control in ("L2P-R", "fixed noise"):
        if control in pair_gates:
            pair_gates[control].append(theta_gate(l2p_dirs, [run_dirs[control][s] for s in measured
                                                             if s in run_dirs[control]], control))
    metrics = (("worst", "robust accuracy, worst of suite and EOT-PGD"),
               ("suite", "robust accuracy, rand/standard suite"),
               ("eot_pgd", f"EOT-PGD ({args.eot_samples} draws × 20 steps)"))
    with_pgd7 = [r for by_seed in results.values() for r in by_seed.values() if PGD7[0] in r]
    all_runs = sum(len(by_seed) for by_seed in results.values())
    if with_pgd7 and len(with_pgd7) == all_runs:  # compared only once every measured run has it
        metrics += ((PGD7[0], f"{PGD7[1]} (the paper's Table 1 attack)"),)

    def metric_gates(key: str, *labels: str) -> list[Gate]:
        """The paper's attack is a measurement to check too: one noise draw per step can overstate a noisy arm, so
        a comparison under it gets a verdict only where it is not far above the suite in both arms."""
        if key != PGD7[0]:
            return []
        return [masking_gate(label, float(np.mean([r["suite"] for r in rows[label].values()])),
                             float(np.mean([r[key] for r in rows[label].values()])), MAX_GAP, attack=PGD7[1])
                for label in labels if rows[label]]
    comparisons = [c for base in base_labels if base != "L2P" for key, name in metrics
                   if (c := compare_arms(name, base, "L2P", PAPER[base], results, key,
                                         gates=[*arm_gates.get(base, []), *arm_gates.get("L2P", []),
                                                *pair_gates.get(base, []), *metric_gates(key, base, "L2P")]))
                   is not None]
    for method, control in gammas:  # learned vs not learned at another γ: the θ gate decides whether it can tell
        m_dirs = [run_dirs[method.label][s] for s in measured if s in run_dirs[method.label]]
        c_dirs = [run_dirs[control.label][s] for s in measured if s in run_dirs[control.label]]
        gates = [*arm_gates.get(control.label, []), *arm_gates.get(method.label, []),
                 matched_attack_gate(control.label, c_dirs, method.label, m_dirs),
                 theta_gate(m_dirs, c_dirs, control.label, method.label)]
        comparisons += [c for key, name in metrics
                        if (c := compare_arms(name, control.label, method.label, PAPER["L2P-R"], results, key,
                                              gates=[*gates, *metric_gates(key, control.label, method.label)]))
                        is not None]
    failed = sorted({c for by_seed in results.values() for r in by_seed.values() for c in r["failed_checks"]})
    columns = {**ROBUST_METRICS, PGD7[0]: PGD7[1]} if with_pgd7 else ROBUST_METRICS  # per run: as measured
    arm_columns = columns if len(with_pgd7) == all_runs else ROBUST_METRICS  # per arm: once every run has it
    points = ["| arm | seed | clean | " + " | ".join(columns.values()) + " |", "|---" * (len(columns) + 3) + "|"]
    for label, by_seed in rows.items():
        for s, r in by_seed.items():
            points.append(f"| {label} | {s} | {r['clean']:.1f} | " + " | ".join(
                f"{r[k]:.1f}" if k in r else "–" for k in columns) + " |")
    pgd7_note = "" if not with_pgd7 else (
        f"{PGD7[1]} (PGD-7, step 2.5ε/7, random start, one noise draw per step, its final point predicted 10 "
        f"times): measured on {len(with_pgd7)} of the {all_runs} runs"
        + (" (the paper's Table 1 attack: compared below like the others)." if len(with_pgd7) == all_runs else
           "; compared once every run has it (the runs are retrained for it: their weights are not kept).")) + "\n\n"
    plot = ROOT / Path(args.out).with_name(f"{Path(args.out).stem}_robust_vs_clean.png")
    plot_robust_vs_clean(rows, plot)
    gaps = [f"{label} {mean_std([r['suite'] - r['eot_pgd'] for r in by_seed.values()])}"
            for label, by_seed in rows.items() if by_seed]
    plateau = []
    for label in labels:
        accs = [[r["test_acc"] for r in history(d)] for d in run_dirs[label].values()]
        change = [100 * (a[-1] - a[-3]) for a in accs if len(a) >= 3]
        plateau.append(f"{label} {mean_std(change)}")
    eot_check = "(not run)"
    if not args.no_eot_check:
        with skip_missing():
            eot_check = "(not measured yet)"
            run_dir = L2P.run_dir(root, args.seeds[0])
            model, data = load(run_dir)
            x, y, m = data.test_x[:EOT_CHECK_IMAGES], data.test_y[:EOT_CHECK_IMAGES], Measurements(run_dir)
            acc = {}
            for s, t in EOT_CHECK:  # cheapest first: a report shows the cells measured so far
                with skip_missing():
                    outcomes = chunked_outcomes(m, check_key(s, t), len(x), lambda a, b, s=s, t=t: (
                        eot_pgd(model, x[a:b], y[a:b], s, t), {}), chunk=CHUNK)
                    acc[s, t] = f"{100 * outcomes.mean():.1f}"
            cells = ["| draws | 20 steps | 100 steps |", "|---|---|---|"]
            cells += [f"| {s} | {acc.get((s, 20), '–')} | {acc.get((s, 100), '–')} |" for s in (10, 40, 80)]
            eot_check = "\n".join(cells)
    layer_keys = sorted({k for d in [L2P.run_dir(root, s) for s in args.seeds] for r in history(d) for k in r
                         if k.startswith("theta_") and (k.endswith("_mean") or k.endswith("_std"))
                         and k.count("_") == 2})
    theta = epoch_table({"L2P": [L2P.run_dir(root, s) for s in args.seeds]},
                        [(k, k.replace("theta_", "θ layer ").replace("_mean", " mean").replace("_std", " std"))
                         for k in layer_keys], sorted({1, 2, 3, args.epochs // 2, args.epochs} - {0}))
    fixed_logs = {s: history(root / f"fixed_noise_seed{s}") for s in args.seeds}
    final = {label: [history(d)[-1] for d in run_dirs[label].values() if history(d)] for label in labels}
    spreads = [v for r in final["L2P"] for k, v in r.items() if k.startswith("theta_") and k.endswith("_std")]
    fixed_noise_note = FIXED_NOISE_NOTE.format(
        theta=mean_std([r["theta_mean"] for r in final["L2P"]], 2),
        fixed=", ".join(f"seed {s} {100 * log[-1]['test_acc']:.1f}% (epoch {log[-1]['epoch']})"
                        for s, log in fixed_logs.items() if log) or "none trained",
        pgd_at=mean_std([100 * r["test_acc"] for r in final["PGD-AT"]]),
        l2p=mean_std([100 * r["test_acc"] for r in final["L2P"]]),
        spread=f"{max(spreads, default=float('nan')):.4f}")
    theta_final = ["| arm | final mean θ, mean ± std over seeds |", "|---|---|"] + [
        f"| {label} | {mean_std([r['theta_mean'] for r in final[label]], 3)} |" for label in labels
        if final[label] and all("theta_mean" in r for r in final[label])]
    pilot = gamma_pilot(root, [g for g in args.gammas], args.epochs)
    command = command_line("l2p.py", argv)
    text = f"""# Learn2Perturb vs PGD-AT, PNI and L2P-R — paired reproduction at CPU scale

Command (repository root; {machine_line()}; finished runs and measurements are reused from
`{args.runs}` and the archive):

    {command}

Setting: LeNet-5 on the first {args.train_subset} Fashion-MNIST training images, {args.epochs} epochs
(`configs/l2p/cpu/`, learning rate ×0.1 at 80% of the epochs); the noisy arms with noise from epoch 1 and
eq. 11 (PGD-7, ε 0.1) from epoch 2. **L2P-R** = θ moved by the regulariser only (the same growth of the noise, not
learned from the loss: the paper's control).{FIXED_NOISE if args.fixed_noise else ""} Seeds
{", ".join(map(str, measured)) or "none"} measured in every arm (of
{", ".join(map(str, args.seeds))} planned), paired. Test: the first
{args.test_subset} test images at ε 0.1; clean over 10 draws; the rand suite for the randomised arms (standard for
PGD-AT); EOT-PGD with {args.eot_samples} draws per gradient × 20 steps (step 2.5ε/20), each final point predicted
10 times (an example counts by its fraction of correct draws); **worst** = per example, the lower of the two (the
attacker picks the stronger attack per example): the headline, since neither attack alone is the worst case for
every arm (see the table).

## Validity gates

{gates_section(comparisons)}

The thresholds were fixed before the runs were read: PGD-AT's floor {FLOOR:g}% under the standard suite (half of
its ~80% clean accuracy; below it the baseline recipe is broken), EOT-PGD at most {MAX_GAP:g} points above the suite
(more is the masking signature), L2P's θ ≥ {100 * THETA_APART:g}% away from the control's in some layer (less: θ was
not learned, and L2P − L2P-R cannot show what learning it does).{PGD7_GATE_NOTE if with_pgd7 else ""}

## Verdicts

{headline(comparisons)}

## Accuracy (%), mean ± std over seeds

{arm_table(rows, [("clean", "clean"), *arm_columns.items()])}

{pgd7_note}Masking checks: {"all passed" if not failed else "failed: " + ", ".join(failed)}. Clean accuracy change over the
last 3 epochs (points; near 0 = plateau): {"; ".join(plateau)}. The rand / standard suite minus EOT-PGD (points,
mean ± std over seeds; positive = EOT-PGD the stronger attack): {"; ".join(gaps)}.

## Paired differences L2P − baseline (points)

The paper's effects: L2P − PGD-AT +12.03 (ResNet-V1(20) PGD), L2P − PNI +4.69 (EOT-PGD), L2P − L2P-R +0.90
(the closest published control).

{comparison_table(comparisons)}

{verdict_lines(comparisons)}

## Robust vs clean accuracy of every run (the comparison at matched clean accuracy)

{chr(10).join(points)}

![robust vs clean accuracy, one point per run]({plot.name})

## The fixed-noise control

{fixed_noise_note}

## EOT convergence (seed {args.seeds[0]}, L2P, {EOT_CHECK_IMAGES} images, accuracy %)

{eot_check}

## θ per layer over epochs (L2P, mean ± std over seeds of each layer's mean and spread)

{theta}

The final mean θ of every arm with learned-noise modules (the θ gate compares them layer by layer):

{chr(10).join(theta_final)}

{pilot}
Earlier tables (`docs/results/l2p.md`: 1,000 training images, 3 seeds, 200 test images) are superseded.

Every finished run's log, weights hash and per-example outcomes are archived in `{Path(args.out).stem}_runs/`
beside this page: the same command in a fresh checkout reports them and only trains and measures what is missing.

## Not finished

{chr(10).join(f"- {item}" for item in LEFT_OUT) or "Nothing: every run and measurement above is done."}
"""
    write_document(ROOT / args.out, text, comparisons)
    return 0


if __name__ == "__main__":
    sys.exit(main())
