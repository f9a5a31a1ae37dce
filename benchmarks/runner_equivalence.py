"""The standard suite before and after a change to the evaluation code: the same per-example outcomes?

Runs the `standard` suite of an earlier commit (``--before``, default the last commit with the two evaluation
frameworks) and of this checkout on the same model and examples, each in its own process with one torch thread,
and compares the per-example robustness, the attack that fooled each example and the adversarial points.

    python benchmarks/runner_equivalence.py [--before da9b2c9] [--n 500] [--checkpoint RUN]

Without ``--checkpoint`` it trains (or reuses) the demo's PGD-AT LeNet-5 in ``runs/demo/pgd_at``. Writes
``docs/results/runner_equivalence.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, train_or_reuse, write_report  # noqa: E402

# One evaluation in a fresh process: the robustlab found first on sys.path (an earlier commit's tree, or this one).
CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from robustlab.runs import load_trained_model
model, _, data, _ = load_trained_model(sys.argv[2])
x, y, n = data.test_x, data.test_y, int(sys.argv[3])
t = time.process_time()
try:
    from robustlab.evaluation import EvalSettings, evaluate
    r = evaluate(model, x, y, EvalSettings(eps=0.3, subset=n), suite="standard", num_classes=data.num_classes,
                 device="cpu")
except ImportError:  # before the evaluation package
    from robustlab.standard import StandardSettings, evaluate_standard
    r = evaluate_standard(model, x, y, StandardSettings(eps=0.3, subset=n), num_classes=data.num_classes,
                          device="cpu")
seconds = time.process_time() - t
torch.save({"robust": r.robust, "fooled_by": r.fooled_by, "x_adv": r.x_adv}, sys.argv[4])
print(json.dumps({"robust_accuracy": r.robust_accuracy, "clean": r.clean, "cpu_s": seconds,
                  "rows": [[row["attack"], row["attacked"], row["fooled"]] for row in r.rows]}))
"""


def run(tree: Path, run_dir: Path, n: int, out: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(run_dir), str(n), str(out)],
                         capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="da9b2c9", help="the earlier commit (default: two frameworks)")
    parser.add_argument("--n", type=int, default=500, help="test examples (default 500)")
    parser.add_argument("--checkpoint", help="a run directory (default: the demo's PGD-AT run, trained if needed)")
    parser.add_argument("--out", default=str(ROOT / "docs/results/runner_equivalence.md"))
    args = parser.parse_args()
    run_dir = Path(args.checkpoint) if args.checkpoint else ROOT / "runs/demo/pgd_at"
    if not args.checkpoint:
        train_or_reuse("robustlab/recipes/demo_pgd_at.toml", run_dir, "pgd_at", seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        before_tree = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before_tree), args.before],
                       check=True, capture_output=True)
        try:
            before = run(before_tree, run_dir.resolve(), args.n, Path(tmp) / "before.pt")
            after = run(ROOT, run_dir.resolve(), args.n, Path(tmp) / "after.pt")
            a = torch.load(Path(tmp) / "before.pt", weights_only=True)
            b = torch.load(Path(tmp) / "after.pt", weights_only=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before_tree)], check=True)
    same = {"robust": torch.equal(a["robust"], b["robust"]), "fooled_by": a["fooled_by"] == b["fooled_by"],
            "x_adv": torch.equal(a["x_adv"], b["x_adv"])}
    print(json.dumps({"before": before, "after": after, "identical": same}, indent=1))
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    lines = ["# The standard suite before and after the one evaluation runner", "",
             f"`python benchmarks/runner_equivalence.py --before {args.before} --n {args.n}"
             + (f" --checkpoint {args.checkpoint}" if args.checkpoint else "") + f"` on `{run_dir}` "
             f"(the demo's PGD-AT LeNet-5 unless `--checkpoint`), the first {args.n} MNIST-5k test images, L∞ ε 0.3, "
             f"each evaluation in its own process with one torch thread; after = `{head}` (with any uncommitted "
             "changes of the checkout).", "",
             "| code | robust accuracy (%) | clean (%) | CPU s | per stage: attacked / fooled |",
             "|---|---|---|---|---|"]
    for label, r in (("before", before), ("after", after)):
        stages = ", ".join(f"{name} {att}/{fooled}" for name, att, fooled in r["rows"])
        lines.append(f"| {label} | {100 * r['robust_accuracy']:.1f} | {100 * r['clean']:.1f} | {r['cpu_s']:.0f} | "
                     f"{stages} |")
    lines += ["", "Per example: " + ", ".join(f"{k} {'identical' if v else 'DIFFERENT'}" for k, v in same.items())
              + ". CPU seconds are of two processes run one after the other on a shared machine: compare them only "
                "as a ratio."]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
