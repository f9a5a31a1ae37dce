"""The `adaptive` suite against `standard` and torchattacks' AutoAttack composition on every model of the zoo.

    python benchmarks/eval_zoo.py [--n 300] [--only NAME ...] [--methods standard adaptive reference]
                                  [--device cpu|cuda] [--out docs/results/eval_zoo.md]
                                  [--variant square_probe=0.1 --variant adaptive_targets=4,square_probe=0.3]
                                  [--variant square_queries=1000@mnist5k_pgd_at_binarised,digits4_pgd_at]
                                  [--seeds 1 2 --seeds-on mnist5k_mart]

For each model of ``benchmarks/zoo.py`` (trained if missing), on its first ``--n`` test images at its ε, in one
process with one torch thread: robustlab's `standard` and `adaptive` suites and torchattacks 3.5.1's AutoAttack
standard composition with every iteration count set to AutoAttack's (``eval_speed.reference_autoattack``). Per
method: robust accuracy, CPU seconds (wall-clock on a GPU), forward/backward passes per image, the masking checks
that failed; per pair of methods: the examples robust under one and fooled by the other. Each (model, method)
result is kept in ``runs/zoo/eval/<model>/<method>_n<n>_<device>.json`` and reused by a rerun: the record is named
by the method, not by the suite's definition, so after changing a suite delete its records (or pass ``--fresh``).
``--variant`` adds the `adaptive` suite with other settings (a second table: compute against strength), on the
``--variants-on`` models, or on the models named after its ``@``. ``--seeds`` measures every method again with
other seeds (``standard[seed=1]``, ...; a third table: the spread over seeds, its mean), on the ``--seeds-on``
models. Writes ``--out`` and ``<out>.json``, and the
README's zoo table when it is the README's run (the whole zoo, 300 images, the CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, write_between_markers, write_report  # noqa: E402
from eval_speed import Clock, reference_autoattack  # noqa: E402
from zoo import BY_NAME, RUNS, ZOO, ZooModel, load, train  # noqa: E402

from robustlab.evaluation import EvalSettings, evaluate  # noqa: E402
from robustlab.passes import count_passes  # noqa: E402
from robustlab.strict_json import strict_dumps  # noqa: E402

METHODS = ("standard", "adaptive", "reference")
LABELS = {"standard": "robustlab standard", "adaptive": "robustlab adaptive",
          "reference": "torchattacks AutoAttack"}


def top_level_parts(text: str) -> list[str]:
    """``text`` split at the commas outside brackets: ``"a=1,b=[[500,0.65],[1000,0.45]]"`` -> two parts."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def parse_variant(text: str) -> tuple[dict, list[str] | None]:
    """``"square_probe=0.1,adaptive_targets=4"`` -> (settings of the adaptive suite, None); a ``@model,model`` tail
    names the models it is measured on."""
    text, _, models = text.partition("@")
    named = [m.strip() for m in models.split(",") if m.strip()] or None
    unknown = sorted(set(named or []) - set(BY_NAME))
    if unknown:
        raise SystemExit(f"--variant {text}@...: no zoo model {', '.join(unknown)} (there: {', '.join(BY_NAME)})")
    options = {}
    for part in top_level_parts(text):
        key, _, value = part.partition("=")
        options[key.strip()] = json.loads(value)
    EvalSettings(**options)  # refused here, not after an hour
    return options, named


def measure(entry: ZooModel, method: str, n: int, device: torch.device, fresh: bool,
            variant: dict | None = None) -> dict:
    """One (model, method) measurement, cached in runs/zoo/eval/<model>/<method>.json (with other settings:
    ``adaptive[key=value,...]``; the reference takes ``seed`` only)."""
    name = method if not variant else f"{method}[" + ",".join(
        f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in sorted(variant.items())) + "]"  # as --variant
    if method == "reference" and set(variant or {}) - {"seed"}:
        raise ValueError(f"the reference takes a seed only, got {variant}")
    cache = RUNS / "eval" / entry.name / f"{name}_n{n}_{device.type}.json"
    if cache.exists() and not fresh:
        return json.loads(cache.read_text())
    model, data = load(entry, str(device))
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = data.test_x[:n], data.test_y[:n]
    clock = Clock(device)
    t0 = clock.now()
    with count_passes(model) as passes:
        if method == "reference":
            accuracy, robust = reference_autoattack(model, x, y, entry.eps, "linf", data.num_classes, device, 500,
                                                    seed=(variant or {}).get("seed", 0))
            suite, failed, rows = "torchattacks", [], []
        else:
            result = evaluate(model, x, y, EvalSettings(eps=entry.eps, **(variant or {})), suite=method,
                              num_classes=data.num_classes, device=device)
            accuracy, robust, suite = result.robust_accuracy, result.robust, result.suite
            failed = [c.name for c in result.checks if not c.passed]
            rows = [{k: r[k] for k in ("attack", "attacked", "fooled", "seconds")} for r in result.rows]
    seconds = clock.now() - t0
    record = {"model": entry.name, "method": name, "suite": suite, "n": len(x), "eps": entry.eps,
              "robust_accuracy": accuracy, "seconds": seconds, "forward_per_image": passes.forward / len(x),
              "backward_per_image": passes.backward / len(x), "failed_checks": failed, "rows": rows,
              "robust": [float(v) for v in robust.tolist()]}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(strict_dumps(record))
    return record


def disagreement(a: dict, b: dict) -> str:
    """Examples robust under ``a`` and fooled by ``b``, and the other way round (robust: a fraction > 0.5)."""
    ra = torch.tensor(a["robust"]) > 0.5
    rb = torch.tensor(b["robust"]) > 0.5
    return f"{int((ra & ~rb).sum())} / {int((rb & ~ra).sum())}"


DEFAULT_OUT = ROOT / "docs/results/eval_zoo.md"
README_BEGIN, README_END = "<!-- zoo table -->", "<!-- /zoo table -->"


def readme_table(results: dict[str, dict[str, dict]]) -> str:
    """The README's short zoo table: each model's robust accuracy under `standard` and `adaptive`, and what
    `adaptive` cost as a share of `standard`'s time and forward passes (from ``docs/results/eval_zoo.json``)."""
    lines = ["| zoo model | kind | standard | adaptive | adaptive's time / standard's | adaptive's forward passes / "
             "standard's |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        if not {"standard", "adaptive"} <= set(r):
            continue
        std, ada = r["standard"], r["adaptive"]
        lines.append(f"| {name} | {BY_NAME[name].kind} | {100 * std['robust_accuracy']:.1f} | "
                     f"{100 * ada['robust_accuracy']:.1f} | {ada['seconds'] / std['seconds']:.2f} | "
                     f"{ada['forward_per_image'] / std['forward_per_image']:.2f} |")
    return "\n".join(lines)


def seed_of(method: str) -> int | None:
    """The seed of a record measured by ``--seeds`` (``standard[seed=2]`` -> 2), 0 for the default record, None
    for a variant with other settings."""
    if "[" not in method:
        return 0
    settings = method[method.index("[") + 1:-1]
    return int(settings.removeprefix("seed=")) if settings.startswith("seed=") and "," not in settings else None


def seeds_table(results: dict[str, dict[str, dict]], entries: list[ZooModel], methods: list[str]) -> list[str]:
    """Per model measured at several seeds, per method: the robust accuracy at each seed, their mean and the mean
    time relative to `standard`'s (empty when no model has a second seed)."""
    seeds = sorted({seed_of(m) for r in results.values() for m in r} - {None})
    if len(seeds) < 2:
        return []
    lines = ["", "**Over seeds** (`--seeds`: every method again with another seed for its random starts and "
             "draws): robust accuracy (%) per seed, the mean, and the mean time relative to `standard`'s.", "",
             "| model | method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | time / standard's |",
             "|---|---|" + "---|" * (len(seeds) + 2)]
    for entry in entries:
        r = results[entry.name]
        per_seed = lambda method: {seed_of(m): rec for m, rec in r.items()  # noqa: E731
                                   if m.split("[")[0] == method and seed_of(m) is not None}
        std = per_seed("standard")
        for method in methods:
            at = per_seed(method)
            if len(at) < 2:
                continue
            mean = sum(rec["robust_accuracy"] for rec in at.values()) / len(at)
            both = sorted(set(at) & set(std))
            ratio = (f"{sum(at[s]['seconds'] / std[s]['seconds'] for s in both) / len(both):.2f}" if both else "–")
            cells = [f"{100 * at[s]['robust_accuracy']:.1f}" if s in at else "–" for s in seeds]
            lines.append(f"| {entry.name} | {LABELS[method]} | " + " | ".join(cells)
                         + f" | {100 * mean:.2f} | {ratio} |")
    return lines


def report(record: dict) -> None:
    print(f"{record['model']:>26} {record['method']:>9}: {100 * record['robust_accuracy']:5.1f}% in "
          f"{record['seconds']:7.1f} s ({record['forward_per_image']:.0f} fwd, "
          f"{record['backward_per_image']:.0f} bwd per image)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="test examples per model (default 300)")
    parser.add_argument("--only", nargs="*", choices=list(BY_NAME), help="only these zoo models")
    parser.add_argument("--methods", nargs="*", choices=METHODS, default=list(METHODS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fresh", action="store_true", help="measure again instead of reusing runs/zoo/eval/")
    parser.add_argument("--variant", action="append", default=[], type=str,
                        help="the adaptive suite with these settings too, e.g. square_probe=0.1 (repeatable)")
    parser.add_argument("--variants-on", nargs="*", choices=list(BY_NAME),
                        help="measure the variants on these models only (default: every model measured)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[],
                        help="measure every method again at these seeds (a third table: the spread over seeds)")
    parser.add_argument("--seeds-on", nargs="*", choices=list(BY_NAME),
                        help="measure the seeds on these models only (default: every model measured)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    if 0 in args.seeds:
        parser.error("--seeds: seed 0 is every method's own record; give the other seeds")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variant_args = "".join(f" --variant {v}" for v in args.variant) + (
        " --variants-on " + " ".join(args.variants_on) if args.variants_on and args.variant else "") + (
        " --seeds " + " ".join(map(str, args.seeds)) if args.seeds else "") + (
        " --seeds-on " + " ".join(args.seeds_on) if args.seeds_on and args.seeds else "")
    args.variant = [parse_variant(v) for v in args.variant]
    entries = [BY_NAME[n] for n in args.only] if args.only else ZOO
    results: dict[str, dict[str, dict]] = {}
    for entry in entries:
        train(entry)
        for method in args.methods:
            record = measure(entry, method, args.n, device, args.fresh)
            results.setdefault(entry.name, {})[method] = record
            report(record)
        for variant, named in args.variant:
            if entry.name not in (named or args.variants_on or [entry.name]):
                continue
            record = measure(entry, "adaptive", args.n, device, args.fresh, variant)
            results[entry.name][record["method"]] = record
            report(record)
        for seed in args.seeds if entry.name in (args.seeds_on or [entry.name]) else []:
            for method in args.methods:
                record = measure(entry, method, args.n, device, args.fresh, {"seed": seed})
                results[entry.name][record["method"]] = record
                report(record)
    unit = "GPU wall-clock s" if device.type == "cuda" else "CPU s"
    lines = ["# The adaptive suite on the validation zoo", "",
             f"`python benchmarks/eval_zoo.py --n {args.n}" + (f" --device {args.device}" if device.type != "cpu"
                                                                else "") + variant_args
             + "`: each model of `benchmarks/zoo.py` on "
             f"its first {args.n} test images (fewer where the test split is smaller) at its ε, {args.threads} torch "
             "thread(s); each (model, method) is measured once and cached in `runs/zoo/eval/`, possibly while other "
             "jobs shared the machine (CPU seconds of the measuring process: compare them as ratios). Robust accuracy "
             f"(%), {unit}, passes per image; `adaptive / standard` is the ratio of times; the last columns count the "
             "examples robust under the first method and fooled by the second, and the other way round.", "",
             "| model | kind | ε | standard | adaptive | torchattacks AA | adaptive / standard time | "
             "std vs adaptive | std vs torchattacks | failed checks (standard) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for entry in entries:
        r = results[entry.name]

        def cell(method: str) -> str:
            if method not in r:
                return "–"
            m = r[method]
            return (f"{100 * m['robust_accuracy']:.1f} ({m['seconds']:.0f} {unit.split()[0]}, "
                    f"{m['forward_per_image']:.0f}/{m['backward_per_image']:.0f})")

        ratio = (f"{r['adaptive']['seconds'] / r['standard']['seconds']:.2f}" if {"adaptive", "standard"} <= set(r)
                 else "–")
        pair = lambda a, b: disagreement(r[a], r[b]) if {a, b} <= set(r) else "–"  # noqa: E731
        failed = ", ".join(r["standard"]["failed_checks"]) if "standard" in r else "–"
        lines.append(f"| {entry.name} | {entry.kind} | {entry.eps:g} | {cell('standard')} | {cell('adaptive')} | "
                     f"{cell('reference')} | {ratio} | {pair('standard', 'adaptive')} | "
                     f"{pair('standard', 'reference')} | {failed or 'none'} |")
    variants = sorted({m for r in results.values() for m in r if m.startswith("adaptive[") and seed_of(m) is None})
    if variants:
        lines += ["", "**Variants of the adaptive suite** (compute against strength): robust accuracy (%) and time "
                  "relative to `standard`, per model.", "",
                  "| model | standard | adaptive | " + " | ".join(variants) + " |", "|---|" + "---|" * (len(variants) + 2)]
        for entry in entries:
            r = results[entry.name]
            if "standard" not in r:
                continue
            base = r["standard"]
            cells = [f"{100 * r[m]['robust_accuracy']:.1f} ({r[m]['seconds'] / base['seconds']:.2f}×)" if m in r
                     else "–" for m in ["adaptive", *variants]]
            lines.append(f"| {entry.name} | {100 * base['robust_accuracy']:.1f} | " + " | ".join(cells) + " |")
    lines += seeds_table(results, entries, args.methods)
    write_report(args.out, lines)
    Path(args.out).with_suffix(".json").write_text(strict_dumps(results, indent=1))
    if Path(args.out) == DEFAULT_OUT and not args.only and (args.n, device.type) == (300, "cpu"):  # the README's run
        write_between_markers(ROOT / "README.md", README_BEGIN, README_END, readme_table(results))


if __name__ == "__main__":
    main()
