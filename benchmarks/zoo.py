"""The validation zoo: models on which an evaluation suite must be as strong as AutoAttack's standard version.

    python benchmarks/zoo.py [--only NAME ...]      # train what is missing into runs/zoo/ (resumable)

Ten models from three defenses (PGD-AT, TRADES, MART), on three tasks from data we ship or install (MNIST-5k, the
8×8 digits, the digits 0–3 as a 4-class task), one undefended, and three kinds of gradient masking: a
non-differentiable input binariser, a randomised input transformation (Xie et al.'s random resize-and-pad) and
saturated logits (vanishing cross-entropy gradients). The masked models are trained models behind a wrapper of
``robustlab/models/masked.py``, applied at evaluation. Each model is trained from ``configs/zoo/<config>.toml``
with seed 0 on the CPU (deterministic: a rerun gives the same weights).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, train_or_reuse  # noqa: E402

from robustlab.models.masked import masked  # noqa: E402
from robustlab.runs import load_trained_model  # noqa: E402

RUNS = ROOT / "runs" / "zoo"


@dataclass(frozen=True)
class ZooModel:
    """A trained config, the ε it is evaluated at, and a masking wrapper (``mask``) applied at evaluation."""

    name: str
    config: str
    eps: float
    kind: str                         # "adversarially trained", "undefended" or "masked: <how>"
    mask: str | None = None
    mask_options: dict = field(default_factory=dict)


ZOO = [
    ZooModel("mnist5k_standard", "mnist5k_standard", 0.3, "undefended"),
    ZooModel("mnist5k_pgd_at", "mnist5k_pgd_at", 0.3, "adversarially trained"),
    ZooModel("mnist5k_trades", "mnist5k_trades", 0.3, "adversarially trained"),
    ZooModel("mnist5k_mart", "mnist5k_mart", 0.3, "adversarially trained"),
    ZooModel("digits_pgd_at", "digits_pgd_at", 0.1, "adversarially trained"),
    ZooModel("digits_trades", "digits_trades", 0.1, "adversarially trained"),
    ZooModel("digits4_pgd_at", "digits4_pgd_at", 0.1, "adversarially trained (4 classes)"),
    ZooModel("mnist5k_pgd_at_binarised", "mnist5k_pgd_at", 0.3, "masked: input binariser (shattered gradients)",
             mask="input_quantizer", mask_options={"levels": 1}),
    ZooModel("mnist5k_pgd_at_saturated", "mnist5k_pgd_at", 0.3, "masked: logits × 10⁴ (vanishing gradients)",
             mask="logit_scale", mask_options={"scale": 1e4}),
    ZooModel("mnist5k_random_resize", "mnist5k_random_resize", 0.3,
             "masked: random resize-and-pad (randomised input transformation)"),
]
BY_NAME = {m.name: m for m in ZOO}


def train(entry: ZooModel, log=print) -> Path:
    """Train (or reuse) the run behind ``entry``; returns its directory."""
    run_dir = RUNS / entry.config
    train_or_reuse(f"configs/zoo/{entry.config}.toml", run_dir, entry.config, seed=0, log=log)
    return run_dir


def load(entry: ZooModel, device: str = "cpu"):
    """(model, test data) of a trained zoo entry, behind its masking wrapper."""
    model, _, data, _ = load_trained_model(str(RUNS / entry.config), device)
    if entry.mask:
        model = masked(model, entry.mask, **entry.mask_options)
    return model.eval(), data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(BY_NAME), help="train only these (default: every model)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    for entry in [BY_NAME[n] for n in args.only] if args.only else ZOO:
        train(entry)


if __name__ == "__main__":
    main()
