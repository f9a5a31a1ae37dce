"""robustlab's suites against torchattacks' AutoAttack composition, on the same model and examples.

    .venv/bin/python benchmarks/eval_speed.py [--n 500] [--eps 0.3] [--device cpu|cuda] [--suites standard ...]
                                              [--out docs/results/eval_speed.md]

The model is the demo's PGD-AT LeNet-5 on MNIST-5k (trained with the demo recipe if `runs/demo/pgd_at` is missing;
`--checkpoint` for another run). The reference is torchattacks 3.5.1's AutoAttack standard composition — APGD-CE,
APGD-T (9 target classes), FAB-T (9 target classes), Square (5,000 queries), each on the examples still robust —
with every iteration count set to 100 explicitly (its own AutoAttack wrapper leaves them at 10). robustlab's
``--suites`` (default: ``standard``, ``adaptive``, ``quick`` and ``fast``) and the reference run in one process, one after the other,
with one torch thread; each is timed in CPU seconds of this process on the CPU (so a busy machine does not skew
the ratio) and in wall-clock seconds on a GPU. Passes are counted with
`robustlab.passes.count_passes` around the same model for all. Writes the markdown report to `--out`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from a3t import machine_facts  # noqa: E402
from common import train_or_reuse, write_between_markers, write_report  # noqa: E402
from robustlab.passes import count_passes  # noqa: E402
from robustlab.strict_json import strict_dumps  # noqa: E402
from robustlab.runs import load_trained_model  # noqa: E402
from robustlab.evaluation import EvalSettings, available_suites, evaluate  # noqa: E402


class Clock:
    """CPU seconds of this process on the CPU; wall-clock seconds (after synchronising) on a GPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return time.perf_counter()
        return time.process_time()


DEFAULT_OUT = ROOT / "docs/results/eval_speed.md"
DEFAULT_SUITES = ["standard", "adaptive", "quick", "fast"]
README_BEGIN, README_END = "<!-- suites table -->", "<!-- /suites table -->"


def suites_table(record: dict) -> str:
    """The README's table of the suites: what each ran on the demo model, its robust accuracy, its cost, and
    whether its number is a claim (from ``docs/results/eval_speed.json``)."""
    base = record["suites"][0]["seconds"]
    unit = "CPU s" if record["device_type"] == "cpu" else "GPU wall-clock s"
    lines = [f"| suite | stages, in order (on the demo model) | robust accuracy | {unit} ({record['n']} images) | "
             f"time / `{record['suites'][0]['suite']}` | a robustness claim? |", "|---|---|---|---|---|---|"]
    for r in record["suites"]:
        if all(row["alone"] for row in r["rows"]):  # not a cascade: each attack on every example
            stages = ", ".join(st["name"] for st in r["stages"]) + " (each on every example)"
        else:  # a cascade: each stage on what the ones before it left, with what it did here
            done = {row["attack"]: row for row in r["rows"]}
            stages = " → ".join(
                st["name"] + " (" + ("if escalated; " if st["when"] == "escalated" else "")
                + (f"a {100 * st['probe']:g}% probe first; " if st["probe"] < 1 else "")
                + f"{done[st['name']]['attacked']} attacked, {done[st['name']]['fooled']} fooled)"
                for st in r["stages"])
        lines.append(f"| `{r['suite']}` | {stages} | {100 * r['robust_accuracy']:.1f}% | {r['seconds']:.0f} | "
                     f"{r['seconds'] / base:.2f} | {'yes' if r['claim'] else 'no'} |")
    return "\n".join(lines)


def reference_autoattack(model, x, y, eps: float, norm: str, n_classes: int, device, batch_size: int,
                         seed: int = 0):
    """torchattacks' AutoAttack standard composition with 100 iterations, every attack seeded with ``seed``:
    (robust accuracy, per-example robust)."""
    import torchattacks

    norm_name = "Linf" if norm == "linf" else "L2"
    attacks = [torchattacks.APGD(model, norm=norm_name, eps=eps, steps=100, n_restarts=1, loss="ce", seed=seed),
               torchattacks.APGDT(model, norm=norm_name, eps=eps, steps=100, n_restarts=1, n_classes=n_classes,
                                  seed=seed),
               torchattacks.FAB(model, norm=norm_name, eps=eps, steps=100, n_restarts=1, multi_targeted=True,
                                n_classes=n_classes, seed=seed),
               torchattacks.Square(model, norm=norm_name, eps=eps, n_queries=5000, n_restarts=1, seed=seed)]
    multi = torchattacks.MultiAttack(attacks)
    multi.set_model_training_mode(model_training=False)
    robust = []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
        x_adv = multi(xb, yb)
        with torch.no_grad():
            robust.append(model(x_adv).argmax(1).eq(yb).cpu())
    robust = torch.cat(robust)
    return float(robust.float().mean()), robust


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a run directory (default: the demo's PGD-AT model)")
    parser.add_argument("--n", type=int, default=500, help="test examples (default 500)")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--norm", choices=["linf", "l2"], default="linf")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--suites", nargs="+", default=DEFAULT_SUITES, choices=available_suites(),
                        help="robustlab's suites to time (the first is compared with the reference)")
    parser.add_argument("--skip-reference", action="store_true", help="time robustlab only")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    run_dir = Path(args.checkpoint) if args.checkpoint else ROOT / "runs/demo/pgd_at"
    if not args.checkpoint:
        train_or_reuse("robustlab/recipes/demo_pgd_at.toml", run_dir, "pgd_at", seed=0)
    model, _, data, state = load_trained_model(str(run_dir), device)
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = data.test_x[: args.n], data.test_y[: args.n]
    clock = Clock(device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else machine_facts()
    print(f"{run_dir} (epoch {state['epoch']}) on {args.n} test images, {args.norm} ε {args.eps}, {device_name}, "
          f"{args.threads} thread(s)")

    results, rows = {}, []
    for suite in args.suites:
        t0 = clock.now()
        with count_passes(model) as passes:
            results[suite] = evaluate(model, x, y, EvalSettings(norm=args.norm, eps=args.eps,
                                                                batch_size=args.batch_size),
                                      suite=suite, num_classes=data.num_classes, device=device, log=print)
        seconds = clock.now() - t0
        print(f"robustlab {suite}: {100 * results[suite].robust_accuracy:.1f}% in {seconds:.1f} s")
        claim = "" if results[suite].claim else " (not a robustness claim)"
        rows.append((f"robustlab `{suite}` suite{claim}", results[suite].robust_accuracy, seconds, passes,
                     results[suite].robust.bool()))
    ours = results[args.suites[0]]
    if not args.skip_reference:
        t0 = clock.now()
        with count_passes(model) as ref_passes:
            ref_acc, ref_robust = reference_autoattack(model, x, y, args.eps, args.norm, data.num_classes, device,
                                                       args.batch_size)
        ref_s = clock.now() - t0
        print(f"torchattacks AutoAttack (100 iterations): {100 * ref_acc:.1f}% in {ref_s:.1f} s")
        rows.append(("torchattacks AutoAttack composition, 100 iterations", ref_acc, ref_s, ref_passes, ref_robust))

    unit = "wall-clock s" if device.type == "cuda" else "CPU s"
    first = rows[0]
    lines = ["# Evaluation speed: robustlab's suites vs torchattacks' AutoAttack", "",
             "Command:", "", "```bash",
             f".venv/bin/python benchmarks/eval_speed.py --n {args.n} --eps {args.eps} --norm {args.norm} "
             f"--device {args.device} --threads {args.threads} --suites {' '.join(args.suites)}", "```", "",
             f"Model: {run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir} (epoch "
             f"{state['epoch']}), the first {args.n} MNIST-5k test images, {args.norm} ε {args.eps}; device: "
             f"{device_name}, {args.threads} torch thread(s), batch {args.batch_size}. Clean accuracy "
             f"{100 * ours.clean:.1f}%. Time relative to the first row; the last columns count the examples robust "
             f"under the first row and fooled by this one, and the other way round.", "",
             f"| evaluation | robust accuracy (%) | {unit} | time / first row | forward passes / image | "
             f"backward passes / image | first-row robust, fooled here | robust here, fooled by first row |",
             "|---|---|---|---|---|---|---|---|"]
    for name, acc, seconds, passes, robust in rows:
        per = passes.per_image(args.n)
        lines.append(f"| {name} | {100 * acc:.1f} | {seconds:.1f} | {seconds / first[2]:.2f} | "
                     f"{per['forward_per_image']:.0f} | {per['backward_per_image']:.0f} | "
                     f"{int((first[4] & ~robust).sum())} | {int((robust & ~first[4]).sum())} |")
    for suite, result in results.items():
        lines += ["", f"robustlab's `{suite}` stages:", "", "| stage | attacked | fooled | robust after (%) | "
                  "seconds | forward / image | backward / image |", "|---|---|---|---|---|---|---|"]
        for r in result.rows:
            robust_after = r.get("robust_after", r["accuracy"])  # a minimal attack's row: its accuracy
            lines.append(f"| {r['attack']} | {r['attacked']} | {r['fooled']} | {100 * robust_after:.1f} | "
                         f"{r['seconds']:.1f} | {r['forward_per_image']:.0f} | {r['backward_per_image']:.0f} |")
        lines += ["", "Masking checks: " + "; ".join(f"{c.name} {c.status}" for c in result.checks)]
    write_report(args.out, lines)
    print("\n".join(lines))
    record = {"model": str(run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir), "n": args.n,
              "eps": args.eps, "norm": args.norm, "device": device_name, "device_type": device.type,
              "suites": [{"suite": suite, "claim": result.claim, "robust_accuracy": result.robust_accuracy,
                          "seconds": row[2], **row[3].per_image(args.n), "stages": result.stages,
                          "rows": result.rows} for (suite, result), row in zip(results.items(), rows)]}
    Path(args.out).with_suffix(".json").write_text(strict_dumps(record, indent=1))
    documented = (args.n, args.eps, args.norm, device.type, args.suites) == (500, 0.3, "linf", "cpu", DEFAULT_SUITES)
    if Path(args.out) == DEFAULT_OUT and not args.checkpoint and documented:  # the run the README describes
        write_between_markers(ROOT / "README.md", README_BEGIN, README_END, suites_table(record))


if __name__ == "__main__":
    main()
