"""Cost of the input checks at the attack boundary (`robustlab.attacks.base.check_batch`) against a PGD-40 call.

    .venv/bin/python benchmarks/input_checks.py

On the demo's PGD-AT LeNet-5 (trained by `robustlab demo` if missing) and 500 MNIST-5k test images, one torch
thread, CPU seconds: the check runs once per attack call, never inside the loop, so PGD's speed is unchanged.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import train_or_reuse  # noqa: E402
from robustlab.attacks import PGD  # noqa: E402
from robustlab.attacks.base import check_batch  # noqa: E402
from robustlab.runs import load_trained_model  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    run_dir = ROOT / "runs/demo/pgd_at"
    train_or_reuse("robustlab/recipes/demo_pgd_at.toml", run_dir, "pgd_at", seed=0)
    model, _, data, _ = load_trained_model(str(run_dir))
    x, y = data.test_x[:500], data.test_y[:500]
    check_batch(model, x, y)  # the first call also probes the model once (classes, input shape): cached after
    t0 = time.process_time()
    for _ in range(100):
        check_batch(model, x, y)
    check = (time.process_time() - t0) / 100
    t0 = time.process_time()
    PGD(0.3, steps=40, early_stop=False)(model, x, y)
    pgd = time.process_time() - t0
    print(f"check_batch: {1000 * check:.2f} ms per call on 500 images; PGD-40 (every step): {pgd:.1f} s; "
          f"the check is {100 * check / pgd:.3f}% of a PGD call")


if __name__ == "__main__":
    main()
