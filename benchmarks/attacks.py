"""Attack speed: robustlab's PGD-L∞, PGD-L2, C&W and DeepFool vs torchattacks and ART, on the same model and batch.

Model: LeNet-5 of ``robustlab.models``, trained for one epoch of plain cross-entropy on the 4,000 MNIST-5k training
images (Adam 1e-3, batch 128, seed 0: ~93% on the benchmark batch, a few seconds). Batch: the first ``--batch`` (256)
MNIST-5k test images, the same tensor for every library, attacked in one call (ART with ``batch_size`` = the
batch). Settings, the same for the three libraries:

* PGD-40 L∞: ε 0.3, step 0.01, uniform random start (ART: ``num_random_init=1``);
* PGD-40 L2: ε 2.0, step 0.1, random start in the ball (each library its own way of drawing it);
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
ART. ``benchmarks/peers.py`` runs this comparison together with the training-loop benchmark.

    nice -n 10 .venv/bin/python benchmarks/attacks.py [--batch 256] [--repeats 3]
        [--attacks PGD-40,PGD-L2,C&W,DeepFool] [--write PATH]
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import write_report  # noqa: E402
from robustlab.attacks import PGD, PGDL2, CarliniWagnerL2, DeepFool  # noqa: E402
from robustlab.data import load_dataset  # noqa: E402
from robustlab.models import build_model  # noqa: E402

EPS, ALPHA, PGD_STEPS = 0.3, 0.01, 40
L2_EPS, L2_ALPHA = 2.0, 0.1
CW_STEPS, CW_C, CW_LR = 100, 1.0, 0.01
DF_STEPS, DF_OVERSHOOT = 50, 0.02
WARMUP = 8


def train_lenet(data, seed: int = 0, device: torch.device = torch.device("cpu")) -> torch.nn.Module:
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
    return model.to(device).eval()


AttackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ours(model) -> dict[str, AttackFn]:
    pgd = PGD(EPS, steps=PGD_STEPS, step_size=ALPHA, random_start=True)
    pgd_l2 = PGDL2(L2_EPS, steps=PGD_STEPS, step_size=L2_ALPHA, random_start=True)
    cw = CarliniWagnerL2(max_iter=CW_STEPS, binary_search_steps=1, initial_const=CW_C, lr=CW_LR, kappa=0.0,
                         abort_early=False)
    df = DeepFool(max_iter=DF_STEPS, overshoot=DF_OVERSHOOT)
    return {"PGD-40": lambda x, y: pgd(model, x, y), "PGD-L2": lambda x, y: pgd_l2(model, x, y),
            "C&W": lambda x, y: cw(model, x, y), "DeepFool": lambda x, y: df(model, x, y)}


def torchattacks_suite(model) -> tuple[dict[str, AttackFn], str] | str:
    try:
        import torchattacks
    except ImportError:
        return "not installed"
    pgd = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=PGD_STEPS, random_start=True)
    pgd_l2 = torchattacks.PGDL2(model, eps=L2_EPS, alpha=L2_ALPHA, steps=PGD_STEPS, random_start=True)
    cw = torchattacks.CW(model, c=CW_C, kappa=0, steps=CW_STEPS, lr=CW_LR)
    df = torchattacks.DeepFool(model, steps=DF_STEPS, overshoot=DF_OVERSHOOT)
    suite = {"PGD-40": pgd, "PGD-L2": pgd_l2, "C&W": cw, "DeepFool": df}
    return suite, f"torchattacks {torchattacks.__version__}"


def art_suite(model, data, batch: int, device: torch.device) -> tuple[dict[str, AttackFn], str] | str:
    try:
        import art
        from art.attacks.evasion import CarliniL2Method, DeepFool as ARTDeepFool, ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier
    except ImportError as exc:
        return f"not installed ({exc})"
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=data.in_shape,
                            nb_classes=data.num_classes, clip_values=(0.0, 1.0),
                            device_type="gpu" if device.type == "cuda" else "cpu")
    pgd = ProjectedGradientDescent(clf, norm=np.inf, eps=EPS, eps_step=ALPHA, max_iter=PGD_STEPS, num_random_init=1,
                                   batch_size=batch, verbose=False)
    pgd_l2 = ProjectedGradientDescent(clf, norm=2, eps=L2_EPS, eps_step=L2_ALPHA, max_iter=PGD_STEPS,
                                      num_random_init=1, batch_size=batch, verbose=False)
    cw = CarliniL2Method(clf, confidence=0.0, learning_rate=CW_LR, binary_search_steps=1, max_iter=CW_STEPS,
                         initial_const=CW_C, batch_size=batch, verbose=False)
    df = ARTDeepFool(clf, max_iter=DF_STEPS, epsilon=DF_OVERSHOOT, nb_grads=data.num_classes, batch_size=batch,
                     verbose=False)

    def wrap(attack):
        def run(x, y):
            return torch.from_numpy(attack.generate(x=x.cpu().numpy(), y=y.cpu().numpy())).to(x.device)
        return run

    suite = {"PGD-40": wrap(pgd), "PGD-L2": wrap(pgd_l2), "C&W": wrap(cw), "DeepFool": wrap(df)}
    return suite, f"ART {art.__version__}"


class ForwardCounter:
    """Counts the images that go through ``model``'s forward pass (a hook: sees every library's calls)."""

    def __init__(self, model: torch.nn.Module):
        self.images = 0
        model.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        self.images += int(inputs[0].shape[0])


def time_once(fn: AttackFn, x: torch.Tensor, y: torch.Tensor, counter: ForwardCounter
              ) -> tuple[float, torch.Tensor, float]:
    """(seconds, x_adv, forward passes per image) of one call.

    On the CPU the seconds are this process's CPU time (``time.process_time``), which other jobs on a shared machine
    do not inflate the way they inflate wall-clock time; on a GPU they are wall-clock time after a synchronize.
    """
    clock = time.perf_counter if x.device.type == "cuda" else time.process_time
    counter.images = 0
    start = clock()
    x_adv = fn(x, y)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - start, x_adv, counter.images / len(x)


TARGETS = {"torchattacks": 1.0, "ART": 1.4}  # issue "performance": PGD at least this many times the peer's speed
TARGETED_ATTACKS = ("PGD-40", "PGD-L2")


@dataclass
class Comparison:
    """The measured speeds (images/s), accuracies after attack and notes, keyed by (library, attack)."""

    header: list[str]
    versions: dict[str, str]
    libraries: list[str]
    attacks: list[str]
    speed: dict[tuple[str, str], float] = field(default_factory=dict)
    acc: dict[tuple[str, str], float] = field(default_factory=dict)
    info: dict[tuple[str, str], str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    rerun: dict[str, Callable[[], torch.Tensor]] = field(default_factory=dict, repr=False)

    def rerun_ours(self, attack: str) -> Callable[[], torch.Tensor]:
        """A zero-argument call of robustlab's ``attack`` on the benchmark batch (for profiling)."""
        return self.rerun[attack]

    @property
    def peers(self) -> list[str]:
        return [lib for lib in self.libraries if lib != "robustlab"]

    def ratio(self, attack: str, peer: str) -> float | None:
        ours, theirs = self.speed.get(("robustlab", attack)), self.speed.get((peer, attack))
        return None if ours is None or theirs is None else ours / theirs

    def table(self) -> str:
        lines = ["| attack | " + " | ".join(f"{lib}: images/s (acc. %; work)" for lib in self.libraries) + " | "
                 + " | ".join(f"ours / {lib}" for lib in self.peers) + " |",
                 "|---|" + "---|" * (len(self.libraries) + len(self.peers))]
        for attack in self.attacks:
            cells = [f"{self.speed[k]:.1f} ({100 * self.acc[k]:.1f}%; {self.info[k]})" if (k := (lib, attack))
                     in self.speed else "–" for lib in self.libraries]
            ratios = [f"{r:.2f}×" if (r := self.ratio(attack, lib)) is not None else "–" for lib in self.peers]
            lines.append(f"| {attack} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        return "\n".join(lines)

    def verdicts(self) -> list[str]:
        out = []
        for attack in TARGETED_ATTACKS:
            for lib, target in TARGETS.items():
                if (r := self.ratio(attack, lib)) is not None:
                    out.append(f"{attack} vs {lib}: target ≥ {target:.1f}×, measured {r:.2f}× "
                               f"({'met' if r >= target else 'NOT met'})")
        return out


def compare(batch: int = 256, repeats: int = 3, budget: float = 120.0, attacks: list[str] | None = None,
            device: str = "cpu", log=print) -> Comparison:
    """Train the LeNet-5, build every installed library's attacks and time them on one batch."""
    dev = torch.device(device)
    data = load_dataset("mnist5k")
    t0 = time.perf_counter()
    model = train_lenet(data, device=dev)
    x, y = data.test_x[:batch].contiguous().to(dev), data.test_y[:batch].contiguous().to(dev)
    with torch.no_grad():
        clean = float(model(x).argmax(1).eq(y).double().mean())
    where = (torch.cuda.get_device_name(dev) if dev.type == "cuda" else
             f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, "
             f"{platform.processor() or platform.machine()}")
    header = [f"LeNet-5 (robustlab.models) trained 1 epoch on MNIST-5k ({time.perf_counter() - t0:.1f} s), "
              f"{len(x)} MNIST-5k test images, clean accuracy {100 * clean:.1f}%",
              f"torch {torch.__version__} on {where}, Python {platform.python_version()}, "
              f"load average {os.getloadavg()[0]:.1f} at the start"]
    log("\n".join(header))
    suites: dict[str, dict[str, AttackFn]] = {"robustlab": ours(model)}
    result = Comparison(header=header, versions={"robustlab": "robustlab (this repo)"}, libraries=["robustlab"],
                        attacks=attacks or list(suites["robustlab"]))
    for name, built in (("torchattacks", torchattacks_suite(model)), ("ART", art_suite(model, data, len(x), dev))):
        if isinstance(built, str):
            result.missing.append(f"{name}: {built}")
        else:
            suites[name], result.versions[name] = built
            result.libraries.append(name)
    result.rerun = {a: (lambda fn=suites["robustlab"][a]: fn(x, y)) for a in result.attacks}
    counter = ForwardCounter(model)
    for attack in result.attacks:
        # Libraries alternate within each round, so that a change in the machine's load hits all of them alike.
        best: dict[str, float] = {}
        spent: dict[str, float] = {}
        done: dict[str, int] = {}
        for lib in result.libraries:
            suites[lib][attack](x[:WARMUP], y[:WARMUP])
            best[lib], spent[lib], done[lib] = float("inf"), 0.0, 0
        for round_index in range(repeats):
            shift = round_index % len(result.libraries)  # rotate who goes first: no library always runs cold
            for lib in result.libraries[shift:] + result.libraries[:shift]:
                if done[lib] and spent[lib] >= budget:
                    continue
                torch.manual_seed(0)
                seconds, x_adv, passes = time_once(suites[lib][attack], x, y, counter)
                best[lib], spent[lib], done[lib] = min(best[lib], seconds), spent[lib] + seconds, done[lib] + 1
                key = (lib, attack)
                with torch.no_grad():
                    result.acc[key] = float(model(x_adv.float()).argmax(1).eq(y).double().mean())
                result.speed[key] = len(x) / best[lib]
                result.info[key] = f"{passes:.0f} fwd/img" + ("" if done[lib] == repeats
                                                              else f", best of {done[lib]}")
                log(f"{attack:>9} {lib:>12}: {len(x) / seconds:9.1f} images/s ({seconds:.2f} s), accuracy after "
                    f"{100 * result.acc[key]:.1f}%, {passes:.0f} forward passes per image")
    return result


def settings_text(repeats: int, budget: float) -> list[str]:
    return [f"settings: PGD-40 L∞ ε {EPS}, step {ALPHA}, random start; PGD-40 L2 ε {L2_EPS}, step {L2_ALPHA}, "
            f"random start; C&W-L2 {CW_STEPS} iterations, 1 binary step, c {CW_C:g}, lr {CW_LR}, κ 0 (robustlab "
            f"without early abort); DeepFool {DF_STEPS} steps, overshoot {DF_OVERSHOOT}, all classes",
            f"timing: warm-up on {WARMUP} images, then {repeats} rounds in which the libraries alternate (the first "
            f"one rotating), one call each on the whole batch; the best call counts (fewer calls for a library "
            f"whose calls already took {budget:g} s); images/s = batch size / best time (CPU time of the process on a "
            f"CPU, wall-clock on a GPU); in parentheses the "
            "accuracy left after the attack and the forward passes per image of the model (counted by a hook)"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="test images attacked (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per attack, best reported (default 3)")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="no further repeat once one library's calls of an attack took this many seconds")
    parser.add_argument("--attacks", default="PGD-40,PGD-L2,C&W,DeepFool", help="comma-separated subset")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", metavar="PATH", help="also write the report (markdown) here")
    args = parser.parse_args(argv)
    wanted = [a.strip() for a in args.attacks.split(",") if a.strip()]
    result = compare(args.batch, args.repeats, args.budget, wanted, args.device,
                     log=lambda m: print(m, flush=True))
    print("\n" + result.table() + "\n" + "\n".join(result.verdicts() + result.missing))
    if args.write:
        command = "nice -n 10 .venv/bin/python benchmarks/attacks.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        text = ["# Attack speed: robustlab vs torchattacks vs ART", "",
                f"Measured {datetime.date.today().isoformat()} with:", "", "```bash", command.strip(), "```", "",
                *[f"- {h}" for h in result.header + settings_text(args.repeats, args.budget)],
                f"- libraries: {', '.join(result.versions.values())}", "", result.table(), "",
                *[f"{v}.  " for v in result.verdicts()], *result.missing]
        write_report(args.write, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
