"""Why two evaluations of a zoo model disagree: each attack alone on the examples one left robust and the other fooled.

    python benchmarks/zoo_disagreement.py MODEL [--robust-under standard] [--fooled-by reference] [--seeds 0 1 2]

Reads the per-example outcomes ``benchmarks/eval_zoo.py`` cached in ``runs/zoo/eval/MODEL/`` (n = 300), takes the
examples robust under ``--robust-under`` and fooled by ``--fooled-by``, and runs on them alone, once per seed:
torchattacks' APGD-CE, APGD-T and FAB-T and robustlab's APGD-CE, APGD-T and FAB-T at AutoAttack's settings. An
attack that fools an example under some seeds and not others points at random-start variance, not at a weaker
implementation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo import BY_NAME, RUNS, load  # noqa: E402

from robustlab.attacks import build_attack  # noqa: E402
from robustlab.rng import seeded  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=list(BY_NAME))
    parser.add_argument("--robust-under", default="standard")
    parser.add_argument("--fooled-by", default="reference")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    import torchattacks

    entry = BY_NAME[args.model]
    model, data = load(entry)
    for p in model.parameters():
        p.requires_grad_(False)

    def outcome(method: str) -> torch.Tensor:
        path = RUNS / "eval" / entry.name / f"{method}_n{args.n}_cpu.json"
        return torch.tensor(json.loads(path.read_text())["robust"]) > 0.5

    idx = (outcome(args.robust_under) & ~outcome(args.fooled_by)).nonzero().squeeze(1)
    print(f"{entry.name}: {len(idx)} examples robust under {args.robust_under} and fooled by {args.fooled_by}: "
          f"{idx.tolist()}")
    if not len(idx):
        return
    x, y = data.test_x[idx], data.test_y[idx]
    classes = data.num_classes
    for seed in args.seeds:
        reference = {
            "torchattacks apgd_ce": torchattacks.APGD(model, norm="Linf", eps=entry.eps, steps=100, n_restarts=1,
                                                      loss="ce", seed=seed),
            "torchattacks apgd_t": torchattacks.APGDT(model, norm="Linf", eps=entry.eps, steps=100, n_restarts=1,
                                                      n_classes=classes, seed=seed),
            "torchattacks fab_t": torchattacks.FAB(model, norm="Linf", eps=entry.eps, steps=100, n_restarts=1,
                                                   multi_targeted=True, n_classes=classes, seed=seed)}
        ours = {"robustlab apgd_ce": build_attack("apgd_ce", entry.eps, steps=100),
                "robustlab apgd_t": build_attack("apgd_dlr", entry.eps, steps=100, top_targets=min(9, classes - 1)),
                "robustlab fab_t": build_attack("fab", entry.eps, steps=100, top_targets=min(9, classes - 1))}
        for name, attack in {**reference, **ours}.items():
            if name.startswith("torchattacks"):
                attack.set_model_training_mode(model_training=False)
                x_adv = attack(x, y)
            else:
                with seeded(seed):
                    x_adv = attack(model, x, y)
            with torch.no_grad():
                fooled = model(x_adv).argmax(1).ne(y)
            print(f"seed {seed} {name:>22}: fooled {int(fooled.sum())} of {len(idx)} {fooled.int().tolist()}")


if __name__ == "__main__":
    main()
