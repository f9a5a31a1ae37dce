"""AutoAttack-strength evaluation: the ``standard`` suite (every robust-accuracy headline) and ``rand``.

``standard`` is AutoAttack's standard version (Croce & Hein 2020), at its settings, each attack run only on the
examples still robust after the ones before it (the worst case per example):

==========  =====================================================================================================
``apgd_ce``  APGD with the cross-entropy, 100 iterations, 1 run
``apgd_t``   APGD-T: the targeted DLR loss toward each of the 9 most likely other classes, 100 iterations each
``fab_t``    FAB-T toward each of the 9 most likely other classes, 100 iterations each
``square``   Square, 5,000 queries, the paper's p schedule, margin loss
==========  =====================================================================================================

``rand`` (randomised models, chosen automatically when two predictions of the same batch differ): APGD-CE and
APGD-DLR with EOT over 20 draws per gradient (AutoAttack's ``rand`` version), every clean-correct example
attacked by both; the final prediction of each adversarial point is repeated ``final_draws`` times and an example
counts as robust in the fraction of draws that classify it correctly (its worst attack); the clean accuracy is
averaged over draws the same way.

Speed comes from doing less work, never from a smaller budget: an example leaves every iterative attack at its
first adversarial point (:mod:`robustlab.attacks.active`), examples fooled by one stage are not attacked by the
next, the clean predictions are computed once, and APGD-T/FAB-T run their targets as one batched call on a GPU.

Reproducible: each (stage, batch) draws its randomness from its own seed (:func:`robustlab.rng.derived_seed`), so a stage's result
on a batch does not depend on what ran before it in the process. Resumable: with ``state_dir``, the per-example
outcome is saved after every batch and a rerun with the same model, data and settings continues where it stopped.
Sharded: under ``torchrun`` each process evaluates a contiguous share of the examples and the per-example outcomes
are gathered so that every rank holds the merged result (rank 0 runs the masking checks and writes the report).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

import robustlab.checks as masking
from robustlab.attacks import Attack, build_attack
from robustlab.attacks.base import check_batch, model_classes
from robustlab.checkpoint import atomic_write_text
from robustlab.distributed import DistributedEnv
from robustlab.errors import ConfigError
from robustlab.modes import model_mode
from robustlab.passes import count_passes
from robustlab.rng import derived_seed, seeded

AA_SUITES = ("standard", "rand")
STATE_FORMAT = 2  # of the resumable state: a state written in another format is another evaluation
NORMS = ("linf", "l2")


@dataclass
class StandardSettings:
    """AutoAttack's settings (the defaults) plus the evaluation's own: examples, batch size, seed, checks."""

    suite: str = "standard"
    norm: str = "linf"
    eps: float = 0.3
    subset: int = 0                         # 0: every example given
    batch_size: int = 500
    seed: int = 0
    steps: int = 100                        # APGD and FAB iterations
    targets: int = 9                        # APGD-T and FAB-T target classes
    square_queries: int = 5000
    eot_samples: int = 20                   # rand: gradients averaged per APGD step
    final_draws: int = 10                   # rand: repeated predictions of each final point
    batched_targets: bool | None = None     # None: batched on a GPU, one target after another on a CPU
    channels_last: bool | None = None       # None: NHWC memory order for models with 2-D convolutions
    check_subset: int = 200                 # large-ε and gradient checks
    large_eps_max_accuracy: float = 0.05
    max_zero_gradients: float = 0.01
    tol: float = masking.DEFAULT_TOL

    def __post_init__(self):
        self.norm = str(self.norm).lower().replace("∞", "inf")
        if self.suite not in AA_SUITES:
            raise ConfigError(f"suite must be one of {AA_SUITES}, got {self.suite!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be 'Linf' or 'L2', got {self.norm!r}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(f"eps must be a finite number > 0, got {self.eps}")
        if self.norm == "linf" and self.eps > 1:
            raise ConfigError(f"an L∞ eps above 1 exceeds the [0,1] image range, got {self.eps}")
        for key in ("batch_size", "steps", "square_queries", "eot_samples", "final_draws"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.subset < 0 or self.targets < 1:
            raise ConfigError(f"subset must be >= 0 and targets >= 1, got {self.subset}, {self.targets}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Stage:
    name: str
    attack: Attack
    settings: str


def build_stages(s: StandardSettings, num_classes: int) -> list[Stage]:
    """The attacks of the suite, in the order they run."""
    norm, eps = s.norm, s.eps
    targets = min(s.targets, num_classes - 1)
    batched = s.batched_targets
    if s.suite == "rand":
        return [Stage(f"apgd_{loss}_eot", build_attack(f"apgd_{loss}", eps, norm=norm, steps=s.steps,
                                                       eot_samples=s.eot_samples),
                      f"{s.steps} iterations, EOT over {s.eot_samples} draws")
                for loss in ("ce", "dlr")]
    stages = [Stage("apgd_ce", build_attack("apgd_ce", eps, norm=norm, steps=s.steps), f"{s.steps} iterations")]
    if num_classes >= 4:  # the targeted DLR loss needs 4 classes
        stages.append(Stage("apgd_t", build_attack("apgd_dlr", eps, norm=norm, steps=s.steps, top_targets=targets,
                                                   batched=batched),
                            f"targeted DLR, {targets} target classes × {s.steps} iterations"))
    stages.append(Stage("fab_t", build_attack("fab", eps, norm=norm, steps=s.steps, top_targets=targets,
                                              batched=batched),
                        f"{targets} target classes × {s.steps} iterations"))
    stages.append(Stage("square", build_attack("square", eps, norm=norm, queries=s.square_queries),
                        f"{s.square_queries} queries, margin loss"))
    return stages


def has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@contextlib.contextmanager
def channels_last(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Run the block with the model in channels_last (NHWC) memory order, then restore NCHW.

    The same arithmetic in another memory layout: on this project's CPU a LeNet-5 forward pass takes half the
    time and a forward + backward 0.78 of it, which is most of the standard suite's cost (Square is 5,000 forward
    passes per robust example). A model already in channels_last is left as it is.
    """
    weights = [p for p in model.parameters() if p.dim() == 4]
    already = bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                                    for p in weights)
    if not enabled or already:
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's parameters and buffers: a resumed evaluation must be of the same weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class StandardResult:
    """What the suite measured (``robust`` per example is a fraction of draws for ``rand``, else 0 or 1)."""

    suite: str
    norm: str
    eps: float
    n: int
    clean: float
    robust_accuracy: float
    rows: list[dict]
    checks: list[masking.Check]
    clean_correct: torch.Tensor = field(repr=False)
    robust: torch.Tensor = field(repr=False)
    fooled_by: list[str | None] = field(repr=False)
    settings: StandardSettings = field(repr=False)
    randomised: bool = False
    seconds: float = 0.0
    passes: dict = field(default_factory=dict)
    x_adv: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"suite": self.suite, "norm": self.norm, "eps": self.eps, "examples": self.n, "clean": self.clean,
                "robust_accuracy": self.robust_accuracy, "robust_error": 1.0 - self.robust_accuracy,
                "rows": self.rows, "checks": [c.to_dict() for c in self.checks],
                "checks_passed": not masking.any_failed(self.checks), "randomised": self.randomised,
                "seconds": self.seconds, "passes": self.passes, "settings": self.settings.to_dict(),
                "per_example": {"robust": self.robust.tolist(), "fooled_by": self.fooled_by}}


class OtherEvaluationState(ConfigError):
    """The state directory holds another evaluation (model, data, settings or format differ)."""


class _State:
    """Per-example outcome of this process's share, saved after every batch when a directory is given."""

    def __init__(self, path: Path | None, meta: dict, n: int, stages: list[str]):
        self.path, self.meta, self.stages = path, meta, stages
        self.clean: torch.Tensor | None = None
        self.robust = torch.zeros(n)
        self.fooled_by = torch.full((n,), -1, dtype=torch.int64)
        self.by_stage = torch.ones(len(stages), n)  # per stage: the fraction correct after it (1: not attacked)
        self.done: dict[str, int] = {}
        self.stats: dict[str, dict] = {}
        if path is not None and path.with_suffix(".json").exists():
            self._load()

    def _load(self) -> None:
        saved = json.loads(self.path.with_suffix(".json").read_text(encoding="utf-8"))
        if saved.get("meta") != self.meta:
            differ = sorted(k for k in set(saved.get("meta", {})) | set(self.meta)
                            if saved.get("meta", {}).get(k) != self.meta.get(k))
            raise OtherEvaluationState(f"{self.path.parent} holds the state of another evaluation (differs in: "
                              f"{', '.join(differ)}); use another --out or delete it")
        tensors = load_file(str(self.path.with_suffix(".safetensors")))
        self.clean, self.robust, self.fooled_by = tensors.get("clean"), tensors["robust"], tensors["fooled_by"]
        self.by_stage = tensors["by_stage"]
        self.done, self.stats = saved["done"], saved["stats"]

    def _adv_file(self, stage: str, batch: int) -> Path:
        return self.path.parent / f"{self.path.name}_adv_{stage}_{batch}.safetensors"

    def save_adv(self, stage: str, batch: int, index: torch.Tensor, points: torch.Tensor) -> None:
        """The adversarial points a batch found (written once per batch: the state stays small)."""
        if self.path is not None and len(index):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"index": index.contiguous(), "x": points.contiguous()}, str(self._adv_file(stage, batch)))

    def load_adv(self, x_adv: torch.Tensor) -> None:
        """Fill ``x_adv`` with the points of the batches done before a resume, in the order they were found."""
        for stage in self.stages:
            for batch in range(self.done.get(stage, 0)):
                file = self._adv_file(stage, batch)
                if file.exists():
                    saved = load_file(str(file))
                    x_adv[saved["index"]] = saved["x"].to(x_adv.dtype)

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"robust": self.robust, "fooled_by": self.fooled_by, "by_stage": self.by_stage}
        if self.clean is not None:
            tensors["clean"] = self.clean
        tmp = self.path.with_suffix(".tmp.safetensors")
        save_file(tensors, str(tmp))
        tmp.replace(self.path.with_suffix(".safetensors"))
        atomic_write_text(self.path.with_suffix(".json"), json.dumps(
            {"meta": self.meta, "done": self.done, "stats": self.stats}, indent=1))


def _shard_range(n: int, env: DistributedEnv) -> tuple[int, int]:
    return n * env.rank // env.world_size, n * (env.rank + 1) // env.world_size


@torch.no_grad()
def _correct_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
    """Fraction of ``draws`` predictions that are correct, per example (1 draw: 0 or 1)."""
    hits = torch.zeros(len(x), device=x.device)
    for _ in range(draws):
        hits += model(x).argmax(1).eq(y).float()
    return (hits / draws).cpu()


def evaluate_standard(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: StandardSettings, *,
                      num_classes: int | None = None, device: torch.device | str | None = None,
                      state_dir: str | Path | None = None, env: DistributedEnv | None = None,
                      log: Callable[[str], None] | None = None, fingerprint: str | None = None
                      ) -> StandardResult:
    """Run the ``standard`` (or ``rand``) suite on the first ``settings.subset`` of ``(x, y)``, then the checks.

    A ``standard`` request on a model whose predictions are not repeatable runs ``rand`` instead (logged).
    ``state_dir``: resume from (and save to) per-example state there. ``env``: this process's place under
    ``torchrun`` (default: a single process). ``fingerprint``: what identifies the evaluated model in the saved
    state (default: a hash of its weights).
    """
    log = log or (lambda _msg: None)
    env = env or DistributedEnv()
    s = dataclasses.replace(settings)
    t_start = time.perf_counter()
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(dev)
    n = min(s.subset, len(x)) if s.subset else len(x)
    check_batch(model, x[:n], y[:n])  # once, here: the attacks check their own batches once per call
    if num_classes is None:
        num_classes = model_classes(model, x)
    with model_mode(model, "eval"):
        stability = masking.stable_predictions(model, x[: min(n, s.batch_size)], batch_size=s.batch_size)
    randomised = not stability.passed
    if randomised and s.suite == "standard":
        log("the model's predictions are not repeatable: a randomised model, evaluated with the rand suite (EOT)")
        s.suite = "rand"
    draws = s.final_draws if s.suite == "rand" else 1
    stages = build_stages(s, num_classes)
    lo, hi = _shard_range(n, env)
    xs, ys = x[lo:hi], y[lo:hi]
    speed_only = ("batched_targets", "channels_last")  # change how fast, not what is computed
    meta = {"format": STATE_FORMAT, "suite": s.suite,
            "settings": {k: v for k, v in s.to_dict().items() if k not in speed_only},
            "n": n, "shard": [lo, hi], "model": fingerprint or model_fingerprint(model), "classes": num_classes}
    path = Path(state_dir) / f"rank{env.rank}" if state_dir is not None else None
    state = _State(path, meta, hi - lo, [st.name for st in stages])
    x_adv = xs.clone() if env.world_size == 1 else None
    if x_adv is not None:
        state.load_adv(x_adv)
    bs = s.batch_size

    nhwc = s.channels_last if s.channels_last is not None else x.dim() == 4 and has_conv2d(model)
    with model_mode(model, "eval"), count_passes(model) as passes, channels_last(model, nhwc):
        if state.clean is None:
            state.clean = torch.cat([_correct_fraction(model, xs[i:i + bs].to(dev), ys[i:i + bs].to(dev), draws)
                                     for i in range(0, len(xs), bs)]) if len(xs) else torch.zeros(0)
            state.robust = state.clean.clone()
            state.save()
        log(f"clean accuracy {100 * _mean(state.clean):.1f}% on {hi - lo} examples"
            + (f" (mean of {draws} draws)" if draws > 1 else ""))
        for k, stage in enumerate(stages):
            t0, before = time.perf_counter(), passes.copy()
            # Examples robust when the stage began: not fooled by an earlier stage (also right on a resume).
            todo = (((state.fooled_by < 0) | (state.fooled_by >= k)) & (state.clean > 0)).nonzero().squeeze(1)
            if s.suite == "rand":
                todo = todo[(state.robust[todo] > 0) | (state.fooled_by[todo] >= k)]
            batches = [todo[i:i + bs] for i in range(0, len(todo), bs)]
            for b, idx in enumerate(batches):
                if b < state.done.get(stage.name, 0):
                    continue
                xb, yb = xs[idx].to(dev), ys[idx].to(dev)
                if nhwc:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with seeded(derived_seed(s.seed, stage.name, b), dev):
                    adv = stage.attack(model, xb, yb)
                frac = _correct_fraction(model, adv, yb, draws)
                worse = frac < state.robust[idx]
                state.robust[idx] = torch.minimum(state.robust[idx], frac)
                state.fooled_by[idx[worse]] = k
                state.by_stage[k, idx] = frac
                state.save_adv(stage.name, b, idx[worse], adv[worse].cpu())
                if x_adv is not None:
                    x_adv[idx[worse]] = adv[worse].cpu().to(x_adv.dtype)
                state.done[stage.name] = b + 1
                stats = state.stats.setdefault(stage.name, {"seconds": 0.0, "forward": 0, "backward": 0})
                stats["seconds"] += time.perf_counter() - t0
                stats["forward"] += (passes - before).forward
                stats["backward"] += (passes - before).backward
                t0, before = time.perf_counter(), passes.copy()
                state.save()
            state.stats.setdefault(stage.name, {"seconds": 0.0, "forward": 0, "backward": 0})
            state.stats[stage.name]["attacked"] = len(todo)
            after = _robust_after(state.clean, state.by_stage, k)
            log(f"{stage.name:>12}: attacked {len(todo)}, robust after it {100 * _mean(after):.1f}% "
                f"({state.stats[stage.name]['seconds']:.1f} s)")

    clean, robust, fooled_by, by_stage, stats = _gather(state, env)
    names = [st.name for st in stages]
    rows = []
    for k, stage in enumerate(stages):
        st = stats[stage.name]
        rows.append({"attack": stage.name, "settings": stage.settings, "attacked": st["attacked"],
                     "fooled": int((fooled_by == k).sum()),
                     "robust_after": _mean(_robust_after(clean, by_stage, k)),
                     "seconds": round(st["seconds"], 3),
                     "forward_per_image": st["forward"] / n, "backward_per_image": st["backward"] / n})
    result = StandardResult(s.suite, s.norm, s.eps, n, _mean(clean), _mean(robust), rows, [], clean, robust,
                            [names[i] if i >= 0 else None for i in fooled_by.tolist()], s, randomised,
                            passes={"forward_per_image": sum(r["forward_per_image"] for r in rows),
                                    "backward_per_image": sum(r["backward_per_image"] for r in rows)},
                            x_adv=x_adv)
    if env.is_main:
        t0 = time.perf_counter()
        result.checks = standard_checks(model, x[:n], y[:n], result, stability=stability, device=dev)
        log(f"masking checks ({time.perf_counter() - t0:.1f} s): " + masking.summary_line(result.checks))
    result.seconds = time.perf_counter() - t_start
    return result


def _mean(t: torch.Tensor) -> float:
    return float(t.double().mean()) if len(t) else math.nan


def _robust_after(clean: torch.Tensor, by_stage: torch.Tensor, k: int) -> torch.Tensor:
    """Per-example robustness after the stages up to ``k``: the worst of the clean value and those stages'."""
    return torch.minimum(clean, by_stage[: k + 1].min(0).values)


def _gather(state: _State, env: DistributedEnv):
    """The shards' per-example outcomes concatenated in example order, and their summed statistics."""
    local = (state.clean, state.robust, state.fooled_by, state.by_stage, state.stats)
    if not env.enabled:
        return local
    parts: list = [None] * env.world_size
    dist.all_gather_object(parts, local)
    stats: dict[str, dict] = {}
    for part in parts:
        for name, st in part[4].items():
            agg = stats.setdefault(name, {"seconds": 0.0, "forward": 0, "backward": 0, "attacked": 0})
            for key in agg:
                agg[key] = max(agg[key], st[key]) if key == "seconds" else agg[key] + st.get(key, 0)
    return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]),
            torch.cat([p[3] for p in parts], dim=1), stats)


def standard_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, result: StandardResult, *,
                    stability: masking.Check, device: torch.device) -> list[masking.Check]:
    """The masking checks for an AutoAttack-strength result (DESIGN.md, "Rules that keep it honest")."""
    s, n = result.settings, result.n
    bs = s.batch_size
    m = min(s.check_subset, n) if s.check_subset else n
    out = [stability, masking.input_gradients(model, x[:m], y[:m], batch_size=bs, max_fraction=s.max_zero_gradients)]
    first = result.rows[0]
    from robustlab.evaluate import attack_outcome

    if s.norm == "linf":
        single = build_attack("fgsm", s.eps)
    else:  # one normalised-gradient step of length ε
        single = build_attack("pgd_l2", s.eps, steps=1, step_size=s.eps, random_start=False)
    single_acc = attack_outcome(model, x, y, single, batch_size=bs, device=device).accuracy
    out.append(masking.iterative_vs_single({s.eps: first["robust_after"]}, {s.eps: single_acc},
                                           names=(first["attack"], "fgsm" if s.norm == "linf" else "fgm_l2"), n=n,
                                           tol=s.tol))
    if any(r["attack"] == "square" for r in result.rows):
        out.append(masking.blackbox_beats_whitebox(sum(f == "square" for f in result.fooled_by), n,
                                                   whitebox=[r["attack"] for r in result.rows
                                                             if r["attack"] != "square"], tol=s.tol))
    big_eps = 1.0 if s.norm == "linf" else math.sqrt(x[0].numel())
    big = build_attack("apgd_ce", big_eps, norm=s.norm, steps=20,
                       eot_samples=s.eot_samples if result.randomised else 1)
    out.append(masking.large_eps(model, x[:m], y[:m], big, eps=big_eps, max_accuracy=s.large_eps_max_accuracy,
                                 batch_size=bs))
    if s.norm == "linf":
        out.append(masking.noise_weaker(model, x, y, {s.eps: result.robust_accuracy}, attack=s.suite, tol=s.tol,
                                        batch_size=bs, seed=s.seed))
    return out
