"""The leaderboard: every defense trained and evaluated under one protocol, with what its training cost.

    nice -n 10 .venv/bin/python benchmarks/leaderboard.py                  # configs/leaderboard/mnist5k.toml
    .venv/bin/python benchmarks/leaderboard.py --rows standard pgd_at      # some rows only (the others kept)
    .venv/bin/python benchmarks/leaderboard.py --report-only               # from the archive: computes nothing

The protocol is a TOML file (``configs/leaderboard/mnist5k.toml``): the folder of row configs (one training config
per defense, which must agree on everything but ``[defense]`` and the defense's own model modules: checked before
anything runs), the seeds, ε, the test images and the gate's threshold. Per row and seed, on the same first
``test_subset`` test images:

* clean accuracy (a randomised model: the mean over ``clean_draws`` predictions per image);
* robust accuracy under the ``standard`` suite at ε (AutoAttack's attacks and budget; a randomised model gets the
  ``rand`` suite, with EOT), with its masking checks;
* the defense's own training attack (its ``[defense.attack]`` table, AWP's base defense's, AT²L's single attack) on
  the same images: the gate "does not mask its own training attack" (its accuracy at most ``max_gap`` points above
  the suite's);
* the training cost from the run's log: CPU-seconds per epoch and in all, and the classifier's forward and backward
  passes per training image per epoch.

The rows must share the protocol's training attack too: every single training attack at ε, every PGD-type one with
``attack_steps`` steps of 2.5ε/steps, ``eps_ramp_epochs`` of ramp where a defense has one, and no clean warm-up but
where ``clean_warmup`` allows it (checked before anything runs). A row's numbers are the mean and the 95% t
interval over seeds; its paired difference to the baseline row (PGD-AT) is taken seed by seed on the same images
(:mod:`robustlab.paired`: the wider of the seed interval and the crossed seeds × images bootstrap). Rows whose
training diverged on a seed, or that fail a masking check or the gate, are shown, flagged, and ranked below every
row that passes. Runs and measurements are archived beside the document (``docs/leaderboard_runs/``) as the
reproductions do (``benchmarks/reproduce/protocol.py``): a rerun only computes what is missing, and a fresh checkout
reports from the archive. Writes ``docs/leaderboard.md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "reproduce"))

from protocol import (  # noqa: E402
    ROOT, Archive, Arm, Document, Measurements, attack_correct, begin, command_line, compare_arms,
    defense_attack_table, draws_correct, finished_epochs, history, load, machine_line, skip_missing, standard_key,
    standard_outcomes, this_machine, train, training_attack_table, write_document)
from robustlab.attacks import build_attack  # noqa: E402
from robustlab.errors import TrainingDiverged  # noqa: E402
from robustlab.experiment import load_config  # noqa: E402
from robustlab.paired import Comparison, Gate, masking_gate, seed_interval  # noqa: E402

SHARED_TABLES = ("data", "optim", "schedule", "eval")  # besides [run] (but its name) and the base model
RANDOMISED_CHECK = "stable_predictions"  # fails on a noisy model by design: that is what selects the rand suite


@dataclass
class Protocol:
    """The leaderboard's fixed settings (see ``configs/leaderboard/mnist5k.toml``)."""

    path: Path
    title: str
    rows: Path
    out: str
    baseline: str
    eps: float
    seeds: list[int]
    test_subset: int
    clean_draws: int
    max_gap: float
    attack_steps: int
    eps_ramp_epochs: int
    clean_warmup: list[str]

    @classmethod
    def read(cls, path: Path) -> "Protocol":
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        known = set(cls.__dataclass_fields__) - {"path"}
        unknown, missing = set(raw) - known, known - set(raw)
        if unknown or missing:
            raise SystemExit(f"{path}: " + "; ".join(
                part for part in (f"unknown keys {sorted(unknown)}" if unknown else "",
                                  f"missing keys {sorted(missing)}" if missing else "") if part))
        return cls(path=path, **{**raw, "rows": path.parent / raw["rows"]})


@dataclass
class Row:
    """One defense: its config and, per seed, its measurements."""

    name: str
    config: Path
    results: dict[int, dict] = field(default_factory=dict)  # seed -> measurements
    run_dirs: list[Path] = field(default_factory=list)  # of the measured seeds
    diverged: dict[int, str] = field(default_factory=dict)  # seed -> why its training stopped

    def values(self, key: str) -> dict[int, float]:
        return {s: 100 * float(np.mean(r[key])) for s, r in self.results.items() if key in r}


def row_configs(protocol: Protocol, only: list[str] | None) -> list[Row]:
    """The rows (every ``*.toml`` of the rows folder, or ``only``), after checking that they share the protocol."""
    paths = sorted(protocol.rows.glob("*.toml"))
    if not paths:
        raise SystemExit(f"{protocol.rows}: no row configs (*.toml)")
    configs = {p.stem: load_config(p) for p in paths}
    reference_name = protocol.baseline if protocol.baseline in configs else sorted(configs)[0]
    reference = shared_part(configs[reference_name])
    for name, config in configs.items():
        differs = [k for k, v in shared_part(config).items() if v != reference[k]]
        if differs:
            raise SystemExit(f"{protocol.rows / (name + '.toml')}: {', '.join(differs)} differ from "
                             f"{reference_name}.toml's: every row of the leaderboard shares them")
    for name, config in configs.items():
        broken = attack_breaks_protocol(config, protocol, name)
        if broken:
            raise SystemExit(f"{protocol.rows / (name + '.toml')}: {broken}")
    if protocol.baseline not in configs:
        raise SystemExit(f"{protocol.path}: the baseline row {protocol.baseline!r} has no config in {protocol.rows}")
    unknown = sorted(set(only or []) - set(configs))
    if unknown:
        raise SystemExit(f"--rows: no config for {', '.join(unknown)} in {protocol.rows} (there: "
                         f"{', '.join(sorted(configs))})")
    return [Row(name, protocol.rows / f"{name}.toml") for name in sorted(configs) if not only or name in only]


def shared_part(config) -> dict:
    """What every row must share: [run] but its name and output, the tables of SHARED_TABLES, the base model."""
    raw = config.to_dict()
    run = {k: v for k, v in raw["run"].items() if k not in ("name", "out_dir")}
    model = raw["model"].get("base", raw["model"]["name"])
    return {"[run]": run, **{f"[{t}]": raw.get(t) for t in SHARED_TABLES}, "the base model": model}


def attack_breaks_protocol(config, protocol: Protocol, name: str) -> str | None:
    """What in a row's training attack departs from the protocol's, or None."""
    defense = config.defense
    table = defense_attack_table(defense)
    options = {**defense.get("base_options", {}), **defense}  # AWP: its base defense's ramp and warm-up
    if table is not None and not math.isclose(table.eps, protocol.eps):
        return f"its training attack's ε {table.eps:g} is not the protocol's {protocol.eps:g}"
    if table is not None and "steps" in table.options():
        steps, step = table.options()["steps"], table.options().get("step_size")
        if steps != protocol.attack_steps or step is None or not math.isclose(step, 2.5 * protocol.eps / steps):
            return (f"its training attack takes {steps} steps of {step}: the protocol's is {protocol.attack_steps} "
                    f"of 2.5ε/{protocol.attack_steps} = {2.5 * protocol.eps / protocol.attack_steps:.6g}")
    if "eps_ramp_epochs" in options and options["eps_ramp_epochs"] != protocol.eps_ramp_epochs:
        return f"eps_ramp_epochs = {options['eps_ramp_epochs']}: the protocol ramps ε over {protocol.eps_ramp_epochs}"
    if options.get("warmup_epochs") and name not in protocol.clean_warmup:
        return (f"warmup_epochs = {options['warmup_epochs']}: no clean warm-up in this protocol (clean_warmup lists "
                f"the rows whose paper pretrains: {', '.join(protocol.clean_warmup) or 'none'})")
    return None


def measurement_keys(run_dir: Path, protocol: Protocol) -> list[str]:
    """The archive keys of a run's measurements (a run archived with all of them is not trained again)."""
    n = protocol.test_subset
    keys = [f"clean {protocol.clean_draws} draws n={n}", f"{standard_key(protocol.eps)} n={n}"]
    table = training_attack_table(run_dir)
    return keys if table is None else [*keys, attack_key(table, n)]


def attack_key(table, n: int) -> str:
    return (f"training attack {table.name} eps={table.eps:g} "
            + " ".join(f"{k}={v}" for k, v in sorted(table.options().items())) + f" n={n}")


def measure(run_dir: Path, protocol: Protocol, device: str = "cpu") -> dict:
    """Per-example outcomes of one finished run (archived under keys that spell out the settings)."""
    model, data = load(run_dir)
    x, y = data.test_x[:protocol.test_subset], data.test_y[:protocol.test_subset]
    if device != "cpu" and not Measurements.report_only:
        model, x, y = model.to(device), x.to(device), y.to(device)
    m = Measurements(run_dir)
    n = len(x)
    clean_key, standard, *attack = measurement_keys(run_dir, protocol)
    out: dict = {"clean": m.get(clean_key, lambda: (draws_correct(model, x, y, protocol.clean_draws), {}))}
    robust, failed = standard_outcomes(m, model, x, y, protocol.eps, run_dir, n, chunk=n)
    out["robust"] = robust
    out["suite"] = m.info(standard).get("suite", "standard")
    out["failed_checks"] = [c for c in failed if not (out["suite"] == "rand" and c == RANDOMISED_CHECK)]
    if attack:
        table = training_attack_table(run_dir)
        out["training_attack"] = m.get(attack[0], lambda: attack_correct(
            model, x, y, build_attack(table.name, table.eps, **table.options())))
        steps = table.options().get("steps")
        out["training_attack_name"] = f"{table.name.upper()}-{steps}" if steps else table.name.upper()
    return out


def cost(run_dir: Path) -> dict[str, float]:
    """Training cost from the run's per-epoch log: CPU-seconds per epoch and in all, passes per image per epoch."""
    log = history(run_dir)
    cpu = [r["train_cpu_time_s"] for r in log if "train_cpu_time_s" in r]
    forward = [r["train_forward_per_image"] for r in log if "train_forward_per_image" in r]
    backward = [r["train_backward_per_image"] for r in log if "train_backward_per_image" in r]
    return {"cpu_s_epoch": float(np.mean(cpu)) if cpu else math.nan, "cpu_s": float(np.sum(cpu)) if cpu else math.nan,
            "forward": float(np.mean(forward)) if forward else math.nan,
            "backward": float(np.mean(backward)) if backward else math.nan}


def gates(row: Row, protocol: Protocol) -> list[Gate]:
    """The row's validity conditions: every seed trained to the end, the suite's masking checks passed on every seed,
    and the defense does not mask its own training attack (not checked when it has no single one)."""
    failed = sorted({c for r in row.results.values() for c in r["failed_checks"]})
    out = [Gate("stable training", row.name, "every seed trains to its last epoch (no NaN or infinite loss)",
                "; ".join(f"seed {s} diverged: {why}" for s, why in sorted(row.diverged.items())) or "all finished",
                not row.diverged),
           Gate("masking checks", row.name, "the standard suite's checks pass on every seed",
                "all passed" if not failed else "failed: " + ", ".join(failed), not failed)]
    attack = row.values("training_attack")
    if attack:
        name = next(iter(row.results.values()))["training_attack_name"]
        out.append(masking_gate(row.name, mean(row.values("robust")), mean(attack), protocol.max_gap,
                                attack=f"its training attack ({name})"))
    return out


def mean(values: dict[int, float]) -> float:
    return float(np.mean(list(values.values()))) if values else math.nan


def number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "–"


def span(values: dict[int, float]) -> str:
    """"m [low, high]": the mean of a percentage and its 95% t interval over seeds, clipped to 0–100 ("m" alone
    for one seed)."""
    if not values:
        return "–"
    i = seed_interval(list(values.values()))
    if not math.isfinite(i.width):
        return f"{i.mean:.1f}"
    return f"{i.mean:.1f} [{max(i.low, 0.0):.1f}, {min(i.high, 100.0):.1f}]"


def versus_baseline(row: Row, baseline: Row, protocol: Protocol) -> Comparison | None:
    """The paired difference row − baseline in robust accuracy (points), seed by seed on the same images, behind
    both rows' gates (a flagged row's difference gets no verdict)."""
    if row.name == baseline.name:
        return None
    return compare_arms("robust accuracy", baseline.name, row.name, None,
                        {baseline.name: baseline.results, row.name: row.results}, "robust",
                        gates=[*gates(baseline, protocol), *gates(row, protocol)])


def ranked(rows: list[Row], protocol: Protocol) -> list[tuple[Row, list[Gate]]]:
    """Rows that pass every condition first, each group by mean robust accuracy, best first."""
    measured = [(row, gates(row, protocol)) for row in rows if row.results or row.diverged]

    def key(item):
        robust = mean(item[0].values("robust"))
        return any(g.passed is False for g in item[1]), -robust if math.isfinite(robust) else math.inf
    return sorted(measured, key=key)


def table(order: list[tuple[Row, list[Gate]]], baseline: Row | None, protocol: Protocol) -> str:
    lines = ["| rank | defense | seeds | clean % | robust % | robust − " + protocol.baseline + " (points) | "
             "training attack % | CPU-s / epoch | CPU-s in all | passes / image / epoch (fwd, bwd) | checks |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rank = 0
    for row, row_gates in order:
        flagged = any(g.passed is False for g in row_gates)
        rank += 0 if flagged else 1
        costs = [cost(d) for d in row.run_dirs]
        c = {k: float(np.mean([x[k] for x in costs])) if costs else math.nan
             for k in ("cpu_s_epoch", "cpu_s", "forward", "backward")}
        diff = versus_baseline(row, baseline, protocol) if baseline is not None else None
        i = None if diff is None else diff.interval
        d = "–" if i is None else (f"{i.mean:+.1f} [{i.low:+.1f}, {i.high:+.1f}]" if math.isfinite(i.width)
                                   else f"{i.mean:+.1f}")
        attack = row.values("training_attack")
        suite = {r["suite"] for r in row.results.values()}
        status = "pass" if not flagged else "**FLAGGED**: " + "; ".join(
            f"{g.name} ({g.measured})" for g in row_gates if g.passed is False)
        seeds = f"{len(row.results)}" + (f" (+{len(row.diverged)} diverged)" if row.diverged else "")
        name = row.name + ("" if suite <= {"standard"} else " (rand suite)")
        lines.append(f"| {'–' if flagged else rank} | {name} | {seeds} | {span(row.values('clean'))} | "
                     f"{span(row.values('robust'))} | {d} | {span(attack) if attack else 'none'} | "
                     f"{number(c['cpu_s_epoch'], 1)} | {number(c['cpu_s'], 0)} | {number(c['forward'], 1)}, "
                     f"{number(c['backward'], 1)} | {status} |")
    return "\n".join(lines)


def plot(order: list[tuple[Row, list[Gate]]], path: Path, protocol: Protocol) -> None:
    """Robust against clean accuracy, one point per defense with its 95% intervals; marker area grows with the
    training CPU-seconds; a flagged row hollow; rows that land on one spot share one label."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.8))
    costs = {row.name: float(np.mean([cost(d)["cpu_s"] for d in row.run_dirs])) for row, _ in order if row.results}
    largest = max((v for v in costs.values() if math.isfinite(v)), default=1.0) or 1.0
    points: list[tuple[float, float, str]] = []  # (clean, robust, label) of each row drawn
    for row, row_gates in order:
        if not row.results:
            continue
        flagged = any(g.passed is False for g in row_gates)
        clean, robust = (seed_interval(list(row.values(k).values())) for k in ("clean", "robust"))
        error = [[i.mean - max(i.low, 0.0), min(i.high, 100.0) - i.mean] if math.isfinite(i.width) else [0, 0]
                 for i in (clean, robust)]  # the intervals clipped to 0–100, as in the table
        size = 30 + 400 * (costs[row.name] / largest if math.isfinite(costs[row.name]) else 0)  # 30: the cheapest
        ax.errorbar(clean.mean, robust.mean, xerr=[[error[0][0]], [error[0][1]]], yerr=[[error[1][0]], [error[1][1]]],
                    fmt="none", ecolor="grey", elinewidth=0.8, zorder=1)
        ax.scatter(clean.mean, robust.mean, s=size, zorder=2, edgecolors="C3" if flagged else "C0",
                   facecolors="none" if flagged else "C0", alpha=0.6, linewidths=1.5)
        points.append((clean.mean, robust.mean, row.name + (" (flagged)" if flagged else "")))
    # rows close on the axes (a quarter of the clean range, an eighth of the robust range) share one label
    dx = 0.25 * (max(p[0] for p in points) - min(p[0] for p in points) + 1) if points else 0
    dy = 0.12 * (max(p[1] for p in points) - min(p[1] for p in points) + 1) if points else 0
    spots: list[tuple[float, float, list[str]]] = []
    for x, y, name in sorted(points, key=lambda p: (-p[1], p[0])):
        spot = next((s for s in spots if abs(s[0] - x) < dx and abs(s[1] - y) < dy), None)
        spots.append((x, y, [name])) if spot is None else spot[2].append(name)
    for x, y, names in spots:
        text = "\n".join(", ".join(names[i:i + 2]) for i in range(0, len(names), 2))
        ax.annotate(text, (x, y), fontsize=7, xytext=(6, 4), textcoords="offset points", va="bottom")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"robust accuracy (%) at ε {protocol.eps:g} (standard suite; rand if randomised)")
    ax.set_title(f"{protocol.title}: mean and 95% interval over seeds\nmarker area grows with training CPU-seconds; "
                 "hollow red = flagged (a check or gate failed)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", default="configs/leaderboard/mnist5k.toml")
    p.add_argument("--rows", nargs="+", default=None, help="train and measure only these rows (the rest are reported "
                                                             "from what is done)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="only these of the protocol's seeds")
    p.add_argument("--runs", default="runs/leaderboard")
    p.add_argument("--device", default="cpu", help="train and measure on this device (cuda for the GPU protocol)")
    p.add_argument("--out", default=None, help="the document (default: the protocol's)")
    p.add_argument("--report-only", action="store_true", help="compute nothing: write the document from what is done")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    protocol = Protocol.read(ROOT / args.protocol)
    args.out = args.out or protocol.out
    root = begin(args, "leaderboard") / Path(args.protocol).stem
    rows = row_configs(protocol, None)
    row_configs(protocol, args.rows)  # an unknown --rows name is refused
    todo = {r.name for r in rows if args.rows is None or r.name in args.rows}
    unknown = sorted(set(args.seeds or []) - set(protocol.seeds))
    if unknown:
        raise SystemExit(f"--seeds: {', '.join(map(str, unknown))} not among the protocol's seeds "
                         f"{', '.join(map(str, protocol.seeds))}")
    seeds = [s for s in protocol.seeds if args.seeds is None or s in args.seeds]
    for row in rows:
        config = load_config(row.config)
        arm = Arm(row.name, str(row.config), slug=row.name)
        for seed in protocol.seeds:
            run_dir = arm.run_dir(root, seed)
            compute = row.name in todo and seed in seeds and not Measurements.report_only
            if Archive.read(run_dir).get("diverged"):  # reported, not retried (delete its archive and run to retry)
                row.diverged[seed] = Archive.read(run_dir)["diverged"]
                Document.runs.add(run_dir.name)
                continue
            with skip_missing():
                if compute:
                    try:
                        train(arm, seed, root, epochs=config.run.epochs, extra=("run.keep_checkpoints=1",),
                              needs=measurement_keys(run_dir, protocol), device=args.device)
                    except TrainingDiverged as exc:  # a row, flagged: the leaderboard goes on
                        Archive.update(run_dir, diverged=str(exc), machine=this_machine())
                        row.diverged[seed] = str(exc)
                        Document.runs.add(run_dir.name)
                        print(f"[leaderboard {row.name} seed {seed}] {exc}", flush=True)
                        continue
                elif finished_epochs(run_dir) < config.run.epochs:
                    continue
                saved = Measurements.report_only
                Measurements.report_only = saved or not compute
                try:
                    row.results[seed] = measure(run_dir, protocol, args.device)
                    row.run_dirs.append(run_dir)
                finally:
                    Measurements.report_only = saved
                r = row.results[seed]
                print(f"[leaderboard {row.name} seed {seed}] clean {100 * np.mean(r['clean']):.1f}, robust "
                      f"{100 * np.mean(r['robust']):.1f} ({r['suite']})", flush=True)
    baseline = next((r for r in rows if r.name == protocol.baseline and r.results), None)
    order = ranked(rows, protocol)
    if not order:
        raise SystemExit("the leaderboard has no measured row yet: run it without --report-only")
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(order, out.with_suffix(".png"), protocol)
    command = command_line("leaderboard.py", argv, folder="benchmarks")
    missing = [f"{r.name} ({', '.join(str(s) for s in protocol.seeds if s not in r.results and s not in r.diverged)})"
               for r in rows if set(r.results) | set(r.diverged) != set(protocol.seeds)]
    not_yet = "" if not missing else f"\nNot measured yet (the table holds what is done): {'; '.join(missing)}.\n"
    config = load_config(rows[0].config)
    text = f"""# Leaderboard: {protocol.title}

Command (repository root; {machine_line()}; finished runs and measurements are reused from `{args.runs}` and the
archive beside this document):

    {command}

Protocol (`{args.protocol}`, rows in `{protocol.rows.relative_to(ROOT) if protocol.rows.is_relative_to(ROOT)
                                        else protocol.rows}/`): every defense trains the same model
({config.model.get('base', config.model['name'])}) on the same data ({config.data.name}) for {config.run.epochs}
epochs with the same optimiser ({config.optim.name}, learning rate {config.optim.lr:g}) and batch size
({config.data.batch_size}), seeds {', '.join(map(str, protocol.seeds))}; each keeps its own loss hyperparameters
(from its paper, in its row config). Every row is measured on the same first {protocol.test_subset} test images at
ε {protocol.eps:g}: clean accuracy ({protocol.clean_draws} predictions per image for a randomised model), robust
accuracy under the **standard suite** (AutoAttack's APGD-CE, APGD-T, FAB-T and Square at their budget; the `rand`
suite, with EOT, for a randomised model), the suite's masking checks, and the defense's own training attack.
Numbers: mean [95% t interval, clipped to 0–100] over seeds; robust − {protocol.baseline}: the paired difference
seed by seed on the same images (the wider of the seed interval and the crossed seeds × images bootstrap). Cost: the training run's CPU-seconds (one
torch thread) and the classifier's forward and backward passes per training image per epoch, its parts included
(TLA's embeddings, A3T's features; a defense's other networks, such as a critic or a discriminator, not counted).

A row is **flagged**, and ranked below every row that is not, when its training diverged on a seed, when the suite's
masking checks fail on a seed, or when it masks its own training attack: that attack's accuracy more than
{protocol.max_gap:g} points above the suite's (threshold fixed before the runs: {protocol.path.name} says why). The
rank orders the mean robust accuracy; read the intervals before reading a difference of rank as a difference of
robustness (a row with fewer seeds says so in its seeds column).
{not_yet}
{table(order, baseline, protocol)}

![robust vs clean accuracy]({out.with_suffix(".png").name})
"""
    comparisons = [c for row, _ in order
                   if baseline is not None and (c := versus_baseline(row, baseline, protocol)) is not None]
    write_document(out, text, comparisons)
    return 0


if __name__ == "__main__":
    sys.exit(main())
