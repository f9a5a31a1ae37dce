"""Attack speed: robustlab's PGD, C&W and DeepFool vs torchattacks and ART, on the same model and batch.

Model: LeNet-5 of ``robustlab.models``, trained for one epoch of plain cross-entropy on the 4,000 MNIST-5k training
images (Adam 1e-3, batch 128, seed 0: ~93% on the benchmark batch, a few seconds). Batch: the first ``--batch`` (256)
MNIST-5k test images, the same tensor for every library, attacked in one call (ART with ``batch_size`` = the
batch). Settings, the same for the three libraries:

* PGD-40 L∞: ε 0.3, step 0.01, uniform random start (ART: ``num_random_init=1``);
* C&W-L2: 100 iterations, 1 binary-search step, c = 1, Adam lr 0.01, κ 0 (robustlab: ``abort_early=False``, so
  it always runs the 100 iterations; torchattacks stops early on its own batch-loss rule; ART runs its own line
  search on the learning rate);
* DeepFool: 50 steps, overshoot 0.02, all 10 classes (ART: ``nb_grads=10``).

Timing: one warm-up call on the first 8 images, then the best of ``--repeats`` (3) calls on the whole batch, fewer
when one call of a slow library already took more than ``--budget`` seconds (the table says how many); torch uses
the machine's default number of threads (printed). Also printed: the accuracy left after each attack, so that a
fast attack is not a weak one, and the forward passes per image (counted with a hook on the model), which shows
the work each library really did (torchattacks' C&W stops early on its own batch-loss rule). A library that is not
installed is reported as such (the benchmark needs neither: ``pip install torchattacks
adversarial-robustness-toolbox`` to compare). Targets (issue "attack suite"): PGD ≥ 1.0× torchattacks and ≥ 1.4×
ART.

    nice -n 10 .venv/bin/python benchmarks/attacks.py [--batch 256] [--repeats 3]
        [--attacks PGD-40,C&W,DeepFool] [--write docs/results/attacks_benchmark.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robustlab.attacks import PGD, CarliniWagnerL2, DeepFool  # noqa: E402
from robustlab.data import load_dataset  # noqa: E402
from robustlab.models import build_model  # noqa: E402

EPS, ALPHA, PGD_STEPS = 0.3, 0.01, 40
CW_STEPS, CW_C, CW_LR = 100, 1.0, 0.01
DF_STEPS, DF_OVERSHOOT = 50, 0.02
WARMUP = 8


def train_lenet(data, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("lenet5", in_shape=data.in_shape, num_classes=data.num_classes, mean=data.mean, std=data.std)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    perm = torch.randperm(len(data.train_x))
    model.train()
    for start in range(0, len(perm), 128):
        idx = perm[start:start + 128]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(data.train_x[idx]), data.train_y[idx]).backward()
        opt.step()
    return model.eval()


AttackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ours(model) -> dict[str, AttackFn]:
    pgd = PGD(EPS, steps=PGD_STEPS, step_size=ALPHA, random_start=True)
    cw = CarliniWagnerL2(max_iter=CW_STEPS, binary_search_steps=1, initial_const=CW_C, lr=CW_LR, kappa=0.0,
                         abort_early=False)
    df = DeepFool(max_iter=DF_STEPS, overshoot=DF_OVERSHOOT)
    return {"PGD-40": lambda x, y: pgd(model, x, y), "C&W": lambda x, y: cw(model, x, y),
            "DeepFool": lambda x, y: df(model, x, y)}


def torchattacks_suite(model) -> tuple[dict[str, AttackFn], str] | str:
    try:
        import torchattacks
    except ImportError:
        return "not installed"
    pgd = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=PGD_STEPS, random_start=True)
    cw = torchattacks.CW(model, c=CW_C, kappa=0, steps=CW_STEPS, lr=CW_LR)
    df = torchattacks.DeepFool(model, steps=DF_STEPS, overshoot=DF_OVERSHOOT)
    return {"PGD-40": pgd, "C&W": cw, "DeepFool": df}, f"torchattacks {torchattacks.__version__}"


def art_suite(model, data, batch: int) -> tuple[dict[str, AttackFn], str] | str:
    try:
        import art
        from art.attacks.evasion import CarliniL2Method, DeepFool as ARTDeepFool, ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier
    except ImportError as exc:
        return f"not installed ({exc})"
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=data.in_shape,
                            nb_classes=data.num_classes, clip_values=(0.0, 1.0), device_type="cpu")
    pgd = ProjectedGradientDescent(clf, norm=np.inf, eps=EPS, eps_step=ALPHA, max_iter=PGD_STEPS, num_random_init=1,
                                   batch_size=batch, verbose=False)
    cw = CarliniL2Method(clf, confidence=0.0, learning_rate=CW_LR, binary_search_steps=1, max_iter=CW_STEPS,
                         initial_const=CW_C, batch_size=batch, verbose=False)
    df = ARTDeepFool(clf, max_iter=DF_STEPS, epsilon=DF_OVERSHOOT, nb_grads=data.num_classes, batch_size=batch,
                     verbose=False)

    def wrap(attack):
        def run(x, y):
            return torch.from_numpy(attack.generate(x=x.numpy(), y=y.numpy()))
        return run

    return {"PGD-40": wrap(pgd), "C&W": wrap(cw), "DeepFool": wrap(df)}, f"ART {art.__version__}"


class ForwardCounter:
    """Counts the images that go through ``model``'s forward pass (a hook: sees every library's calls)."""

    def __init__(self, model: torch.nn.Module):
        self.images = 0
        model.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        self.images += int(inputs[0].shape[0])


def time_attack(fn: AttackFn, x: torch.Tensor, y: torch.Tensor, repeats: int, budget: float,
                counter: ForwardCounter) -> tuple[float, torch.Tensor, int, float]:
    """(best seconds, x_adv, repeats done, forward passes per image of the last call)."""
    fn(x[:WARMUP], y[:WARMUP])
    best, x_adv, done, spent = float("inf"), None, 0, 0.0
    while done < repeats and (done == 0 or spent < budget):
        counter.images = 0
        start = time.perf_counter()
        x_adv = fn(x, y)
        elapsed = time.perf_counter() - start
        best, spent, done = min(best, elapsed), spent + elapsed, done + 1
    return best, x_adv, done, counter.images / len(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="test images attacked (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per attack, best reported (default 3)")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="no further repeat once one library's calls of an attack took this many seconds")
    parser.add_argument("--attacks", default="PGD-40,C&W,DeepFool", help="comma-separated subset of the attacks")
    parser.add_argument("--write", metavar="PATH", help="also write the report (markdown) here")
    args = parser.parse_args(argv)

    data = load_dataset("mnist5k")
    t0 = time.perf_counter()
    model = train_lenet(data)
    x, y = data.test_x[:args.batch].contiguous(), data.test_y[:args.batch].contiguous()
    with torch.no_grad():
        clean = float(model(x).argmax(1).eq(y).double().mean())
    header = [f"LeNet-5 (robustlab.models) trained 1 epoch on MNIST-5k ({time.perf_counter() - t0:.1f} s), "
              f"{len(x)} MNIST-5k test images, clean accuracy {100 * clean:.1f}%",
              f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, "
              f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
              f"load average {os.getloadavg()[0]:.1f} at the start (other jobs on the machine slow every library)"]
    print("\n".join(header), flush=True)

    libraries: dict[str, dict[str, AttackFn] | str] = {"robustlab": ours(model)}
    versions = {"robustlab": "robustlab (this repo)"}
    for name, built in (("torchattacks", torchattacks_suite(model)), ("ART", art_suite(model, data, len(x)))):
        if isinstance(built, str):
            libraries[name] = built
        else:
            libraries[name], versions[name] = built
    wanted = [a.strip() for a in args.attacks.split(",") if a.strip()]
    counter = ForwardCounter(model)
    speed: dict[tuple[str, str], float] = {}
    acc: dict[tuple[str, str], float] = {}
    info: dict[tuple[str, str], str] = {}
    for attack in wanted:
        for lib, suite in libraries.items():
            if isinstance(suite, str):
                continue
            torch.manual_seed(0)
            seconds, x_adv, done, passes = time_attack(suite[attack], x, y, args.repeats, args.budget, counter)
            with torch.no_grad():
                acc[(lib, attack)] = float(model(x_adv.float()).argmax(1).eq(y).double().mean())
            speed[(lib, attack)] = len(x) / seconds
            info[(lib, attack)] = f"{passes:.0f} fwd/img" + ("" if done == args.repeats else f", best of {done}")
            print(f"{attack:>9} {lib:>12}: {speed[(lib, attack)]:9.1f} images/s (best {seconds:.2f} s of {done}), "
                  f"accuracy after {100 * acc[(lib, attack)]:.1f}%, {passes:.0f} forward passes per image",
                  flush=True)

    peers = [lib for lib in libraries if lib != "robustlab"]
    lines = ["| attack | " + " | ".join(f"{lib}: images/s (acc. %; work)" for lib in libraries) + " | "
             + " | ".join(f"ours / {lib}" for lib in peers) + " |",
             "|---|" + "---|" * (len(libraries) + len(peers))]
    for attack in wanted:
        cells = []
        for lib in libraries:
            key = (lib, attack)
            cells.append(f"{speed[key]:.1f} ({100 * acc[key]:.1f}%; {info[key]})" if key in speed else "–")
        ratios = [f"{speed[('robustlab', attack)] / speed[(lib, attack)]:.2f}×" if (lib, attack) in speed else "–"
                  for lib in peers]
        lines.append(f"| {attack} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    table = "\n".join(lines)
    missing = [f"{lib}: {suite}" for lib, suite in libraries.items() if isinstance(suite, str)]
    print("\n" + table)
    if missing:
        print("\n" + "; ".join(missing))
    for lib, target in (("torchattacks", 1.0), ("ART", 1.4)):
        key = ("robustlab", "PGD-40")
        if key in speed and (lib, "PGD-40") in speed:
            ratio = speed[key] / speed[(lib, "PGD-40")]
            print(f"PGD target vs {lib}: ≥ {target:.1f}× — measured {ratio:.2f}× "
                  f"({'met' if ratio >= target else 'NOT met'})")

    if args.write:
        command = "nice -n 10 .venv/bin/python benchmarks/attacks.py " + " ".join(shlex.quote(a) for a in argv or
                                                                                   sys.argv[1:])
        text = ["# Attack speed: robustlab vs torchattacks vs ART", "",
                f"Measured {datetime.date.today().isoformat()} with:", "", "```bash", command.strip(), "```", "",
                *[f"- {h}" for h in header], f"- libraries: {', '.join(versions.values())}",
                f"- settings: PGD-40 L∞ ε {EPS}, step {ALPHA}, random start; C&W-L2 {CW_STEPS} iterations, 1 binary "
                f"step, c {CW_C:g}, lr {CW_LR}, κ 0 (robustlab without early abort); DeepFool {DF_STEPS} steps, "
                f"overshoot {DF_OVERSHOOT}, all classes",
                f"- timing: warm-up on {WARMUP} images, then best of {args.repeats} calls on the batch (fewer when one "
                f"library's calls already took {args.budget:g} s); images/s = batch size / best time; in "
                "parentheses the accuracy left after the attack and the forward passes per image of the model "
                "(counted by a hook)", "", table, ""]
        for lib, target in (("torchattacks", 1.0), ("ART", 1.4)):
            if ("robustlab", "PGD-40") in speed and (lib, "PGD-40") in speed:
                ratio = speed[("robustlab", "PGD-40")] / speed[(lib, "PGD-40")]
                text.append(f"PGD target vs {lib}: ≥ {target:.1f}×, measured {ratio:.2f}× "
                            f"({'met' if ratio >= target else 'not met'}).  ")
        text.append(f"Load average at the end: {os.getloadavg()[0]:.1f}.")
        if missing:
            text.append("Not measured: " + "; ".join(missing))
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text("\n".join(text).rstrip() + "\n")
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
