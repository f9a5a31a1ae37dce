"""When does Square fool the examples the white-box stages leave? Its margin per example over the queries, on the zoo.

    python benchmarks/square_trace.py [--n 300] [--only NAME ...] [--out docs/results/square_trace.md]

For each deterministic model of ``benchmarks/zoo.py`` on its first ``--n`` test images at its ε (and the demo's
PGD-AT model, ``runs/demo/pgd_at``, when it is there, on its first 500), one torch thread: APGD-CE (100
iterations) and APGD-T toward the 3 classes nearest in a linearisation (the white-box stages of the ``adaptive``
suite), then Square (L∞, 5,000 queries, margin loss, the suites' settings) on every clean-correct example,
recording each example's best margin z_y − max_{j≠y} z_j at a set of query counts and the query that fooled it.
The question it answers: could Square stop early on the examples whose margin has barely moved (online
discarding, as A³ does for its white-box attack) without losing an example it would fool later — among those the
white-box stages left robust?

Written: ``--out`` (the table of discarding rules: the Square queries each saves and the successes it loses) and
``<out>.json`` (the traces). Each model's trace is cached in ``runs/zoo/square_trace/<model>_n<n>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, write_report  # noqa: E402
from zoo import BY_NAME, RUNS, ZooModel, load  # noqa: E402

from robustlab.attacks import build_attack  # noqa: E402
from robustlab.attacks.active import ActiveSet  # noqa: E402
from robustlab.runs import load_trained_model  # noqa: E402
from robustlab.strict_json import strict_dumps  # noqa: E402

QUERIES = 5000
CHECKPOINTS = (1, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000)  # queries at which margins are kept
DETERMINISTIC = [name for name, entry in BY_NAME.items() if entry.name != "mnist5k_random_resize"]
DEMO = ZooModel("demo_pgd_at", "demo", 0.3, "adversarially trained (the demo's model)")
DEMO_N = 500  # the demo's own evaluation images (README)


@contextlib.contextmanager
def traced_square(n: int):
    """Record, while Square runs, each example's best margin at :data:`CHECKPOINTS` and the query that fooled it:
    Square calls ``ActiveSet.retire(fooled, x_best, x_best, margin[, initial])`` once per query (the first for the
    initial point), with the rows' example indices in ``active.example``; the margin is the second state tensor."""
    margins = {q: torch.full((n,), float("nan")) for q in CHECKPOINTS}
    fooled_at = torch.full((n,), -1, dtype=torch.long)
    calls = {"query": 0}
    original = ActiveSet.retire

    def retire(self, fooled, x_rows, *state):
        calls["query"] += 1
        q, margin = calls["query"], state[1]
        if q in margins:
            margins[q][self.example] = margin.float()
        fooled_at[self.example[fooled]] = q
        return original(self, fooled, x_rows, *state)

    ActiveSet.retire = retire
    try:
        yield margins, fooled_at
    finally:
        ActiveSet.retire = original


def trace(entry: ZooModel, n: int, fresh: bool) -> dict:
    cache = RUNS / "square_trace" / f"{entry.name}_n{n}.json"
    if cache.exists() and not fresh:
        return json.loads(cache.read_text())
    if entry is DEMO:
        model, _, data, _ = load_trained_model(str(ROOT / "runs" / "demo" / "pgd_at"), "cpu")
        model = model.eval()
    else:
        model, data = load(entry)
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = data.test_x[:n], data.test_y[:n]
    started = time.process_time()
    with torch.no_grad():
        correct = model(x).argmax(1).eq(y)
    torch.manual_seed(0)
    white = x.clone()
    for attack in (build_attack("apgd_ce", entry.eps, steps=100),
                   build_attack("apgd_dlr", entry.eps, steps=100, top_targets=min(3, data.num_classes - 1),
                                target_order="linear")):
        todo = correct & ~(model(white).argmax(1).ne(y))
        if todo.any():
            white[todo] = attack(model, x[todo], y[todo])
    with torch.no_grad():
        white_survives = correct & model(white).argmax(1).eq(y)
    idx = correct.nonzero().squeeze(1)
    square = build_attack("square", entry.eps, queries=QUERIES, seed=0)
    with traced_square(len(idx)) as (margins, fooled_at):
        square(model, x[idx], y[idx])
    record = {"model": entry.name, "eps": entry.eps, "n": len(x), "correct": int(correct.sum()),
              "white_survives": white_survives[idx].tolist(), "fooled_at": fooled_at.tolist(),
              "margins": {str(q): [None if m != m else round(float(m), 6) for m in v.tolist()]
                          for q, v in margins.items()},
              "cpu_seconds": time.process_time() - started}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(strict_dumps(record))
    return record


def rule_outcome(record: dict, rule: list[tuple[int, float]]) -> tuple[int, int, float]:
    """Square with the discarding ``rule`` (checkpoints (q, r) as ``Square``'s ``give_up``: at q queries, an
    example not yet fooled whose best margin is above r × its margin at the initial point stops), replayed on the
    trace: (Square's successes on the white-box survivors in the full run, those the rule loses, the share of
    the survivors' Square queries it saves)."""
    margins = record["margins"]
    wanted = lost = 0
    spent = saved = 0.0
    for i, survives in enumerate(record["white_survives"]):
        if not survives:
            continue
        fooled = record["fooled_at"][i]
        used = fooled if fooled > 0 else QUERIES
        spent += used
        stop = next((q for q, r in rule if (fooled < 0 or fooled > q) and margins[str(q)][i] is not None
                     and margins[str(q)][i] > r * margins["1"][i]), None)
        if stop is not None:
            saved += used - stop
        if fooled > 0:
            wanted += 1
            lost += int(stop is not None)
    return wanted, lost, saved / spent if spent else 0.0


RULES = [[(q, r)] for q in (200, 500, 1000) for r in (0.5, 0.65, 0.8)] + [
    [(500, 0.65), (1000, 0.45)], [(500, 0.65), (1000, 0.45), (2000, 0.35)],
    [(200, 0.85), (500, 0.65), (1000, 0.45), (2000, 0.35), (3000, 0.3)]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--only", nargs="*", choices=[*DETERMINISTIC, DEMO.name])
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--out", default="docs/results/square_trace.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.only or [*DETERMINISTIC, DEMO.name]
    records = []
    for name in names:
        entry = DEMO if name == DEMO.name else BY_NAME[name]
        if entry is DEMO and not (ROOT / "runs" / "demo" / "pgd_at").exists():
            print(f"[square_trace] {name}: runs/demo/pgd_at is not there (make demo): skipped", flush=True)
            continue
        record = trace(entry, DEMO_N if entry is DEMO else args.n, args.fresh)
        survivors = sum(record["white_survives"])
        late = sum(1 for s, f in zip(record["white_survives"], record["fooled_at"]) if s and f > 0)
        print(f"[square_trace] {name}: {survivors} white-box survivors, Square fools {late} of them "
              f"({record['cpu_seconds']:.0f} CPU-s)", flush=True)
        records.append(record)
    header = "| rule: at q queries, stop if margin > r × initial | " + " | ".join(
        rec["model"] for rec in records) + " |"
    lines = [header, "|---" * (len(records) + 1) + "|"]
    for rule in RULES:
        cells = []
        for rec in records:
            wanted, lost, saved = rule_outcome(rec, rule)
            cells.append(f"{lost}/{wanted} lost, {100 * saved:.0f}% saved")
        lines.append("| " + ", ".join(f"({q}, {r:g})" for q, r in rule) + " | " + " | ".join(cells) + " |")
    command = "python benchmarks/square_trace.py" + (f" --n {args.n}" if args.n != 300 else "")
    text = f"""# Square's margin over its queries on the examples the white-box stages leave

`{command}` (one torch thread; the first {args.n} test images of each zoo model, {DEMO_N} of the demo's).
Per model: the white-box survivors (APGD-CE, then APGD-T toward 3 linearisation-ranked classes), how many of them Square (5,000 queries)
fools, and for each discarding rule the survivors' Square successes it would lose and the share of the survivors'
Square queries it would save.

{chr(10).join(lines)}
"""
    out = ROOT / args.out
    write_report(out, text.splitlines())
    out.with_suffix(".json").write_text(strict_dumps({"command": command, "records": records}))


if __name__ == "__main__":
    main()
