"""The one evaluation runner: a suite's stages, example by example, resumable, sharded, with the masking checks.

:func:`evaluate` runs every suite (:mod:`robustlab.evaluation.suites`). A *unit* is one stage at one ε; the units of
one ε that count in the worst case form its group. In a cascade suite a unit attacks only the examples every unit
before it in the group left robust (an example fooled by one stage is not attacked by the next); otherwise it
attacks every clean-correct example, so that it has its own accuracy. A curve is this loop over each ε; minimal
attacks (no ε) run once.

Speed comes from doing less work, never from a smaller budget: an example leaves every iterative attack at its
first adversarial point (:mod:`robustlab.attacks.active`), the clean predictions are computed once, and the model
runs in channels_last memory order when that is faster.

Reproducible: each (unit, batch) draws its randomness from its own seed (:func:`robustlab.rng.derived_seed`), so a
unit's result on a batch does not depend on what ran before it. Resumable: with ``state_dir``, the per-example
outcome is saved after every batch in a folder named by the evaluation's identity
(:mod:`robustlab.evaluation.state`), and a rerun continues where it stopped. Sharded: under ``torchrun`` each
process evaluates a contiguous share of the examples; the shares are gathered so that every rank holds the whole
result (rank 0 runs the masking checks). A prediction from non-finite logits is never correct.
"""

from __future__ import annotations

import inspect
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from robustlab.attacks import Attack, build_attack
from robustlab.attacks.base import check_batch, model_classes
from robustlab.attacks.perturbation import example_ratios, flat_norm
from robustlab.attacks.registry import attack_class
from robustlab.attacks.transfer import TransferAttack
from robustlab.distributed import DistributedEnv
from robustlab.errors import BrokenModel, ConfigError
from robustlab.evaluation import checks as masking
from robustlab.evaluation.memory_format import channels_last, has_conv2d
from robustlab.evaluation.outcome import nonfinite_outputs
from robustlab.evaluation.result import NOT_ATTACKED, EvaluationResult, GalleryColumn, mean
from robustlab.evaluation.settings import EvalSettings
from robustlab.evaluation.state import EvaluationState, evaluation_identity, state_key
from robustlab.evaluation.suite_checks import run_suite_checks
from robustlab.evaluation.suites import ModelFacts, Stage, StageSpec, Suite, resolve_suite
from robustlab.modes import model_mode
from robustlab.passes import count_passes
from robustlab.predictions import correct_predictions, predicted_class
from robustlab.rng import derived_seed, seeded

HEARTBEAT_S = 30.0  # a line from inside a long batch at most this often


@dataclass(frozen=True)
class Unit:
    """One stage at one radius (``eps`` None for a minimal attack); ``group`` the ε whose worst case it is part of."""

    name: str
    stage: Stage
    eps: float | None
    norm: str | None
    group: float | None


def plan_units(suite: Suite, settings: EvalSettings) -> list[Unit]:
    """The units of work in the order they run: each ε's stages, then stages at their own radii, then minimal.

    A unit's randomness is seeded by its stage and batch, not its ε (:func:`_run_unit`): a point of a curve is the
    same whether or not other radii were asked for, and a single-ε run keeps the seeds it always had.
    """
    radii = settings.eps_list
    units = []
    for e in radii:
        for st in suite.stages:
            if st.kind == "bounded" and not st.radii:
                name = st.name if len(radii) == 1 else f"{st.name}@{e!r}"
                units.append(Unit(name, st, e, settings.norm, e if st.worst_case else None))
    for st in suite.stages:
        if st.kind == "bounded" and st.radii:
            units += [Unit(f"{st.name}@{float(r)!r}", st, float(r), st.norm or settings.norm, None) for r in st.radii]
    units += [Unit(st.name, st, None, st.norm, None) for st in suite.stages if st.kind == "minimal"]
    return units


def takes_option(cls: type, name: str) -> bool:
    """Whether ``cls(...)`` accepts the keyword ``name`` (following ``**options`` up to the base class)."""
    for klass in cls.__mro__:
        params = inspect.signature(klass.__init__).parameters if "__init__" in vars(klass) else None
        if params is None:
            continue
        if name in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
    return False


def build_stage_attack(unit: Unit, *, transfer_source: nn.Module | None, probe: bool = False) -> Attack:
    """The attack of ``unit``: the stage's attack at the unit's radius, in its norm where the attack takes one
    (``probe``: with the stage's ``probe_options``)."""
    st = unit.stage
    options = {**st.options, **(st.probe_options if probe else {})}
    if st.kind == "minimal":
        attack = build_attack(st.attack, **options)
    else:
        if st.step_rule is not None:
            cap, fraction = st.step_rule
            options["step_size"] = min(cap, fraction * unit.eps)
        if takes_option(attack_class(st.attack), "norm") and "norm" not in options:
            options["norm"] = unit.norm
        attack = build_attack(st.attack, unit.eps, **options)
        own = getattr(attack, "norm", "linf")
        if own != unit.norm:
            raise ConfigError(f"stage {st.name!r}: attack {st.attack!r} works in the {own} norm, the evaluation "
                              f"in {unit.norm}")
    if st.transfer:
        if transfer_source is None:
            raise ConfigError(f"stage {st.name!r} is a transfer attack: give a transfer source model")
        attack = TransferAttack(transfer_source, attack)
    return attack


def check_image_shape(suite: Suite, x: torch.Tensor) -> None:
    """Refuse, before any attack, inputs a stage of the suite cannot take (Square and few-pixel need images)."""
    for st in suite.stages:
        if attack_class(st.attack).needs_images and (x.dim() != 4 or x.shape[2] < 2 or x.shape[3] < 2):
            hint = " (channels last? use x.permute(0, 3, 1, 2))" if x.dim() == 4 and x.shape[-1] in (1, 3) else ""
            raise ValueError(f"stage {st.name!r} ({st.attack}) needs images (N, C, H, W) with H, W >= 2, got x of "
                             f"shape {tuple(x.shape)}{hint}")


@torch.no_grad()
def outcome_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the fraction of ``draws`` predictions that are correct (1 draw: 0 or 1; non-finite logits:
    wrong), and the logit margin z_y − max_{j≠y} z_j of the first draw (−inf for non-finite logits)."""
    hits = torch.zeros(len(x), device=x.device)
    margin = None
    for _ in range(draws):
        logits = model(x)
        hits += correct_predictions(logits, y).float()
        if margin is None:
            true = logits.gather(1, y[:, None]).squeeze(1)
            other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
            margin = torch.where(torch.isfinite(logits).all(1), true - other, torch.full_like(true, float("-inf")))
    return (hits / draws).cpu(), margin.float().cpu()


def shard_range(n: int, env: DistributedEnv) -> tuple[int, int]:
    return n * env.rank // env.world_size, n * (env.rank + 1) // env.world_size


class Heartbeat:
    """A line from inside a long batch (every ``HEARTBEAT_S`` seconds, counted on the model's forward passes)."""

    def __init__(self, model: nn.Module, log: Callable[[str], None]):
        self.log, self.label, self.started, self.last, self.passes = log, "", 0.0, 0.0, 0
        self.handle = model.register_forward_hook(self._tick)

    def start(self, label: str) -> None:
        self.label, self.started, self.passes = label, time.perf_counter(), 0
        self.last = self.started

    def _tick(self, _module, _inputs, output) -> None:
        self.passes += int(output.shape[0]) if isinstance(output, torch.Tensor) else 0
        now = time.perf_counter()
        if self.label and now - self.last >= HEARTBEAT_S:
            self.last = now
            self.log(f"{'':>14}{self.label}: running for {now - self.started:.0f} s, {self.passes} forward passes")

    def close(self) -> None:
        self.handle.remove()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: EvalSettings | None = None, *,
             suite: str | Suite | Sequence[StageSpec] = "standard", num_classes: int | None = None,
             device: torch.device | str | None = None, state_dir: str | Path | None = None,
             env: DistributedEnv | None = None, log: Callable[[str], None] | None = None, progress: bool = False,
             transfer_source: nn.Module | None = None, fingerprint: str | None = None, checks: bool = True,
             fresh: bool = False) -> EvaluationResult:
    """Run ``suite`` (a preset name, a :class:`Suite` or a list of stages) on the first ``settings.subset`` of
    ``(x, y)`` at each of ``settings.eps``, then the suite's masking checks (``checks=False``: none).

    ``state_dir``: resume from (and save to) the per-example state in a folder under it named by the evaluation
    (``fresh``: discard that folder's state first).
    ``env``: this process's place under ``torchrun``. ``log``: a line per stage and per batch (``print`` on a
    terminal); ``progress``: a tqdm bar per stage. ``fingerprint``: what identifies the model in the saved state
    (default: a hash of its weights).
    """
    s = settings or EvalSettings()
    say = log or (lambda _msg: None)
    env = env or DistributedEnv()
    t_start = time.perf_counter()
    dev = torch.device(device) if device is not None else next(model.parameters(), torch.empty(0)).device
    model = model.to(dev)
    n = min(s.subset, len(x)) if s.subset else len(x)
    check_batch(model, x[:n], y[:n])  # once, here: the attacks check their own batches once per call
    y = y.long()  # any integer labels
    lo, hi = shard_range(n, env)
    broken = nonfinite_outputs(model, x[:n], batch_size=s.batch_size, device=dev)  # every rank: all stop together
    if broken:
        raise BrokenModel(f"the model outputs NaN or infinite logits on {broken} of {n} clean examples: a broken "
                         f"model gets no robustness number (check its weights and its forward pass)")
    if num_classes is None:
        num_classes = model_classes(model, x)
    with model_mode(model, "eval"):
        stability = masking.stable_predictions(model, x[: min(n, s.batch_size)], batch_size=s.batch_size)
    facts = ModelFacts(num_classes, tuple(x.shape[1:]), randomised=not stability.passed,
                       has_transfer_source=transfer_source is not None)
    spec = resolve_suite(suite, s, facts)
    if facts.randomised and isinstance(suite, str) and spec.name != suite:
        say(f"the model's predictions are not repeatable: a randomised model, evaluated with the {spec.name} "
            f"suite (EOT)")
    elif facts.randomised and any(st.attack == "eot_pgd" for st in spec.stages):
        say("the model's predictions are not repeatable: a randomised model, adding EOT-PGD")
    units = plan_units(spec, s)
    check_image_shape(spec, x)
    attacks = {u.name: build_stage_attack(u, transfer_source=transfer_source) for u in units}  # refused up front
    probe_attacks = {u.name: build_stage_attack(u, transfer_source=transfer_source, probe=True)
                     for u in units if u.stage.probe_options}
    xs, ys = x[lo:hi], y[lo:hi]
    folder = None
    if state_dir is not None:
        identity = evaluation_identity(spec, s, model, x[:n], y[:n], num_classes=num_classes,
                                       world_size=env.world_size, fingerprint=fingerprint,
                                       transfer_source=transfer_source)
        folder = Path(state_dir) / state_key(identity)
    else:
        identity = {}
    if fresh and folder is not None and folder.exists() and env.is_main:
        shutil.rmtree(folder)
    if env.enabled:
        dist.barrier()
    state = EvaluationState(folder, env.rank, {**identity, "shard": [lo, hi]}, hi - lo, [u.name for u in units])
    draws = spec.final_draws
    bs = s.batch_size
    keep = min(s.gallery, hi - lo) if env.is_main else 0
    found: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {u.name: state.load_points(u.name) for u in units}
    gallery: dict[tuple[str, float | None], GalleryColumn] = {}
    for u in units:
        saved = state.load_gallery(u.name) if keep else None
        if saved is not None:
            gallery[(u.stage.name, u.eps)] = GalleryColumn(*saved)

    alarm, precomputed = False, {}
    if any(st.probe < 1 or st.when == "escalated" for st in spec.stages):  # shortcuts only without an alarm
        m = min(s.check_subset, n) if s.check_subset else n
        with model_mode(model, "eval"):
            precomputed["input_gradients"] = masking.input_gradients(model, x[:m], y[:m], batch_size=s.batch_size,
                                                                     max_fraction=s.max_zero_gradients)
        alarm = facts.randomised or not precomputed["input_gradients"].passed
        if alarm:
            say("masking alarm (randomised predictions or zero input gradients): no shortcuts, every stage runs on "
                "every example still robust")
    nhwc = s.channels_last if s.channels_last is not None else x.dim() == 4 and has_conv2d(model)
    heartbeat = Heartbeat(model, say)
    try:
        with model_mode(model, "eval"), count_passes(model) as passes, channels_last(model, nhwc):
            if state.clean is None:
                with seeded(derived_seed(s.seed, "clean"), dev):
                    parts = [outcome_of(model, xs[i:i + bs].to(dev), ys[i:i + bs].to(dev), draws)
                             for i in range(0, len(xs), bs)]
                state.clean = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0)
                state.clean_margin = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0)
                state.save()
            say(f"clean accuracy {100 * mean(state.clean):.1f}% on {hi - lo} examples"
                + (f" (mean of {draws} draws)" if draws > 1 else ""))
            run = _Run(spec, s, units, attacks, probe_attacks, state, model, xs, ys, lo, dev, draws, nhwc, passes,
                       heartbeat, found, gallery, keep, say, progress, escalated=alarm)
            for k, unit in enumerate(units):
                _run_unit(run, k, unit)
    finally:
        heartbeat.close()

    clean, outcome, rho, l2, stats = _gather(state, env)
    result = _assemble(spec, s, units, n, clean, outcome, rho, l2, stats, state.resumed, facts.randomised)
    if env.world_size == 1:
        result.x_adv = _adversarial_points(xs, units, found, result.eps)
        result.gallery = gallery
        result.labels = ys[:keep].cpu()
        if keep:
            with torch.no_grad(), model_mode(model, "eval"):
                result.gallery_clean = GalleryColumn(xs[:keep].cpu(), predicted_class(model(xs[:keep].to(dev))).cpu())
    result.state_dir = str(folder) if folder is not None else None
    if env.is_main and checks:
        t0 = time.perf_counter()
        with seeded(derived_seed(s.seed, "checks"), dev):
            result.checks = run_suite_checks(model, x[:n], y[:n], result, spec, stability=stability,
                                             outcomes=_unit_outcomes(units, clean, outcome), device=dev,
                                             precomputed=precomputed)
        say(f"masking checks ({time.perf_counter() - t0:.1f} s): " + masking.summary_line(result.checks))
    result.seconds = time.perf_counter() - t_start
    return result


def split_batches(index: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [index[i:i + size] for i in range(0, len(index), size)]


def probe_split(todo: torch.Tensor, margin: torch.Tensor, share: float, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(probe, rest) of the examples ``todo``: the probe is the ``share``/2 with the smallest margin seen so far
    (the likeliest to fall) and a random ``share``/2 of the others (a masking alarm that does not depend on
    margins); the rest, attacked only if the probe fools an example."""
    half = max(1, math.ceil(share * len(todo) / 2))
    order = margin[todo].argsort(stable=True)
    lowest, others = todo[order[:half]], todo[order[half:]]
    gen = torch.Generator().manual_seed(seed % 2**63)
    pick = torch.randperm(len(others), generator=gen)[:half]
    chosen = torch.zeros(len(others), dtype=torch.bool)
    chosen[pick] = True
    return torch.cat([lowest, others[chosen]]), others[~chosen]


def _group_before(k: int, unit: Unit, units: list[Unit]) -> list[int]:
    """The units of ``unit``'s worst-case group (its ε) that run before unit ``k``."""
    return [j for j in range(k) if units[j].group is not None and units[j].group == unit.group]


def _smallest_margin(k: int, unit: Unit, units: list[Unit], state: EvaluationState) -> torch.Tensor:
    """Per example, the smallest margin seen before unit ``k`` (clean, and the units of its group before it)."""
    before = _group_before(k, unit, units)
    margin = state.clean_margin.clone()
    return torch.minimum(margin, state.margin[before].min(0).values) if before else margin


def _escalate(run: "_Run", k: int, robust_before: torch.Tensor, batches: list, probe: torch.Tensor,
              rest: torch.Tensor, stats: dict, done: int, probe_batches: int) -> None:
    """Probe and escalate: once the probe's batches are done, if it fooled any example, the rest of the stage's
    examples are attacked too, and the suite is escalated (its ``when="escalated"`` stages run). A probe with its
    own options (:class:`Stage`'s ``probe_options``) hands the examples it left robust to the full attack too;
    which those are is kept in ``stats["probe_survivors"]`` (a resumed run must rebuild the same batches after
    they were attacked)."""
    if stats["probe"] is None or done != probe_batches or stats["escalated"]:
        return
    if bool((run.state.outcome[k, probe] < robust_before[probe]).any()):
        stats["attacked"] += len(rest)  # examples, each counted once
        if run.units[k].stage.probe_options:
            if "probe_survivors" not in stats:
                stats["probe_survivors"] = probe[run.state.outcome[k, probe] >= robust_before[probe]].tolist()
            rest = torch.cat([torch.tensor(stats["probe_survivors"], dtype=rest.dtype), rest])
        batches += split_batches(rest, run.s.batch_size)
        stats["escalated"] = run.escalated = True


def _still_robust(k: int, unit: Unit, units: list[Unit], clean: torch.Tensor, outcome: torch.Tensor) -> torch.Tensor:
    """Per example: the worst case of the clean value and the units of ``unit``'s group before ``k``."""
    before = _group_before(k, unit, units)
    if not before:
        return clean.clone()
    return torch.minimum(clean, outcome[before].min(0).values)


@dataclass
class _Run:
    """What every unit of one evaluation shares (this process's share of the examples, from ``lo``)."""

    spec: Suite
    s: EvalSettings
    units: list[Unit]
    attacks: dict[str, Attack]
    probe_attacks: dict[str, Attack]  # the probe's own attack of a unit whose stage has probe_options
    state: EvaluationState
    model: nn.Module
    xs: torch.Tensor
    ys: torch.Tensor
    lo: int
    dev: torch.device
    draws: int
    nhwc: bool
    passes: object
    heartbeat: Heartbeat
    found: dict
    gallery: dict
    keep: int
    say: Callable[[str], None]
    progress: bool
    escalated: bool  # a masking alarm rang before the suite, or a probe fooled an example: no more shortcuts


def _run_unit(run: _Run, k: int, unit: Unit) -> None:
    """Attack, batch by batch, the examples ``unit`` is to attack; save the state after every batch."""
    spec, s, units, state, model, xs, ys = run.spec, run.s, run.units, run.state, run.model, run.xs, run.ys
    lo, dev, draws, passes, heartbeat, say = run.lo, run.dev, run.draws, run.passes, run.heartbeat, run.say
    found, gallery, keep = run.found, run.gallery, run.keep
    st = unit.stage
    limit = min(st.subset, len(state.clean) + lo) if st.subset else len(state.clean) + lo
    in_subset = torch.arange(len(state.clean)) + lo < limit
    robust_before = _still_robust(k, unit, units, state.clean, state.outcome)
    if spec.cascade and unit.group is not None:
        todo = ((robust_before > 0) & in_subset).nonzero().squeeze(1)
    else:
        todo = ((state.clean > 0) & in_subset).nonzero().squeeze(1)
    if st.when == "escalated" and not run.escalated:
        todo = todo[:0]  # the fast path held: no probe fooled an example and no masking alarm rang
    probing = st.probe < 1 and not run.escalated and len(todo) > 1
    seen = _smallest_margin(k, unit, units, state)
    first_part, rest = probe_split(todo, seen, st.probe, derived_seed(s.seed, st.name, "probe")) \
        if probing else (todo, todo[:0])
    batches = split_batches(first_part, s.batch_size)
    stats = state.stats.setdefault(unit.name, {"seconds": 0.0, "forward": 0, "backward": 0})
    stats.update(attacked=len(first_part), probe=len(first_part) if probing else None, escalated=False)
    done_before = state.done.get(unit.name, 0)
    if not done_before:
        stats.pop("probe_survivors", None)
    probe_batches = len(batches)  # the probe's (when probing): the first batches
    own_probe_attack = probing and bool(st.probe_options)
    label = unit.name if unit.eps is None or "@" in unit.name else f"{unit.name} ε={unit.eps:g}"
    seconds_now = 0.0
    bar = tqdm(total=len(todo), desc=label, disable=not run.progress, leave=False, unit="ex")

    def escalate_after(done: int) -> None:  # an escalated probe adds batches (its survivors, attacked again)
        _escalate(run, k, robust_before, batches, first_part, rest, stats, done, probe_batches)
        bar.total = max(len(todo), sum(len(i) for i in batches))

    b = 0
    while b < len(batches):
        idx = batches[b]
        b += 1
        if b <= done_before:
            bar.update(len(idx))
            escalate_after(b)
            continue
        t0, before = time.perf_counter(), passes.copy()
        heartbeat.start(f"{label} batch {b}/{len(batches)}")
        xb, yb = xs[idx].to(dev), ys[idx].to(dev)
        if run.nhwc:
            xb = xb.contiguous(memory_format=torch.channels_last)
        first = idx < keep
        attack = run.probe_attacks[unit.name] if own_probe_attack and b <= probe_batches else run.attacks[unit.name]
        with seeded(derived_seed(s.seed, st.name, b - 1), dev):  # the final draws too: a resume draws the same
            if st.kind == "minimal":
                res = attack.run(model, xb, yb)
                adv = res.x_adv
                state.rho[k, idx] = example_ratios(xb.cpu(), res.x_last.cpu())
                moved = flat_norm((res.x_adv - xb).double()).cpu()
                state.l2[k, idx] = torch.where(res.success.cpu().bool(), moved,
                                               torch.full_like(moved, float("nan")))
            else:
                adv = attack(model, xb, yb)
            frac, margin = outcome_of(model, adv, yb, draws)
            if first.any():
                with torch.no_grad():
                    pred = predicted_class(model(adv[first])).cpu()
        state.outcome[k, idx] = frac
        state.margin[k, idx] = margin
        if unit.group is not None:
            worse = frac < robust_before[idx]
            state.save_points(unit.name, b - 1, idx[worse], adv[worse].cpu())
            found[unit.name].append((idx[worse], adv[worse].detach().cpu()))
        if first.any():
            column = gallery.setdefault((st.name, unit.eps), GalleryColumn(xs[:keep].clone(),
                                                                           torch.full((keep,), NOT_ATTACKED)))
            column.x[idx[first]] = adv[first].detach().cpu().to(column.x.dtype)
            column.pred[idx[first]] = pred
            state.save_gallery(unit.name, column.x, column.pred)
        state.done[unit.name] = b
        escalate_after(b)
        spent = time.perf_counter() - t0
        seconds_now += spent
        stats["seconds"] += spent
        stats["forward"] += (passes - before).forward
        stats["backward"] += (passes - before).backward
        state.save()
        heartbeat.start("")
        bar.update(len(idx))
        if len(batches) > 1:
            left = int(sum(len(i) for i in batches[b:]))
            say(f"{'':>14}{label}: batch {b}/{len(batches)} done in {spent:.1f} s, {left} examples left")
    bar.close()
    state.stats[unit.name] = stats
    if unit.group is not None:
        after = torch.minimum(robust_before, state.outcome[k])
        what = f"robust after it {100 * mean(after):.1f}%" if spec.cascade else \
            f"accuracy {100 * mean(torch.minimum(state.clean, state.outcome[k])):.1f}%"
    else:
        part = torch.minimum(state.clean, state.outcome[k])[in_subset]
        what = f"accuracy {100 * mean(part):.1f}% on {int(in_subset.sum())}"
    resumed = f" (resumed: {done_before} of {len(batches)} batches from the saved state, {seconds_now:.1f} s now)" \
        if done_before else ""
    probe = "" if stats["probe"] is None else (
        f"; a probe of {stats['probe']} " + ("fooled some: escalated to every example and to the suite's "
                                             "escalation stages" if stats["escalated"]
                                             else "fooled none: the rest not attacked"))
    if st.when == "escalated" and not run.escalated:
        probe = "; not run (no escalation)"
    attacked = f"{stats['attacked']}" + (f" of {len(todo)}" if stats["attacked"] != len(todo) else "")
    say(f"{label:>14}: attacked {attacked}, {what} ({stats['seconds']:.1f} s){probe}"
        f"{resumed}")


def _gather(state: EvaluationState, env: DistributedEnv):
    """The shards' per-example outcomes concatenated in example order, and their summed statistics."""
    local = (state.clean, state.outcome, state.rho, state.l2, state.stats)
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
    return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts], dim=1),
            torch.cat([p[2] for p in parts], dim=1), torch.cat([p[3] for p in parts], dim=1), stats)


def _unit_outcomes(units: list[Unit], clean: torch.Tensor, outcome: torch.Tensor) -> dict:
    """(stage name, radius) → per example of the stage's subset: "still correct" (clean-wrong counts as wrong)."""
    found = {}
    for k, u in enumerate(units):
        m = min(u.stage.subset, len(clean)) if u.stage.subset else len(clean)
        found[(u.stage.name, u.eps)] = torch.minimum(clean, outcome[k])[:m] > 0.5
    return found


def _assemble(spec: Suite, s: EvalSettings, units: list[Unit], n: int, clean, outcome, rho, l2, stats,
              resumed: set[str], randomised: bool) -> EvaluationResult:
    """Rows, curve and per-example outcome from the units' outcomes. A row's ``accuracy`` is the accuracy under
    its attack alone (``alone`` True) where the attack ran on every clean-correct example of its subset: not a
    cascade, or the first stage of one; a later stage of a cascade only attacked what the ones before it left, so
    its ``accuracy`` is the robust accuracy after it (``alone`` False)."""
    rows, curve = [], {}
    robust_at: dict[float, torch.Tensor] = {}
    fooled_at: dict[float, torch.Tensor] = {}
    for k, unit in enumerate(units):
        st, sts = unit.stage, stats.get(unit.name, {})
        m = min(st.subset, n) if st.subset else n
        alone = torch.minimum(clean, outcome[k])[:m]
        row = {"attack": st.name, "kind": st.kind, "norm": unit.norm, "eps": unit.eps, "settings": st.settings,
               "examples": m, "attacked": int(sts.get("attacked", 0)), "accuracy": mean(alone),
               "seconds": round(sts.get("seconds", 0.0), 3), "forward_per_image": sts.get("forward", 0) / n,
               "backward_per_image": sts.get("backward", 0) / n, "resumed": unit.name in resumed}
        row["alone"] = not spec.cascade or unit.group is None or unit.group not in robust_at
        if unit.group is not None:
            prev = robust_at.get(unit.group, clean.clone())
            now = torch.minimum(prev, outcome[k])
            fooled = fooled_at.setdefault(unit.group, torch.full((n,), -1, dtype=torch.int64))
            fooled[now < prev] = k
            robust_at[unit.group] = now
            row["robust_after"] = mean(now)
            row["fooled"] = int((now < prev).sum())
            if not row["alone"]:
                row["accuracy"] = row["robust_after"]
        else:
            row["fooled"] = int(((clean[:m] > 0) & (alone < clean[:m])).sum())
        if st.kind == "minimal":
            ratio = torch.where(clean[:m] > 0, rho[k, :m], torch.zeros(m, dtype=rho.dtype))
            success = (alone < 0.5) | (clean[:m] == 0)
            dist_l2 = torch.where(clean[:m] > 0, l2[k, :m], torch.zeros(m, dtype=l2.dtype))
            row.update(success_rate=mean(success.float()),
                       rho=float(ratio[success].mean()) if success.any() else math.nan,
                       rho_with_failures=float(ratio.mean()) if m else math.nan,
                       mean_l2=float(dist_l2[success].nanmean()) if success.any() else math.nan)
        rows.append(row)
    for group, robust in robust_at.items():
        curve[group] = mean(robust)
    # Only minimal attacks (or radii of another norm): no worst case at the evaluation's ε, no robust accuracy.
    headline = max(curve) if curve else max(s.eps_list)
    robust = robust_at.get(headline, torch.full((n,), math.nan))
    names = [u.stage.name for u in units]
    fooled_by = [names[i] if i >= 0 else None for i in fooled_at[headline].tolist()] if curve else [None] * n
    total = {"forward_per_image": sum(r["forward_per_image"] for r in rows),
             "backward_per_image": sum(r["backward_per_image"] for r in rows)}
    return EvaluationResult(spec.name, spec.claim, spec.cascade, s.norm, headline, n, mean(clean),
                            curve.get(headline, math.nan), rows, curve, [], clean, robust, fooled_by, s,
                            stages=[st.to_dict() for st in spec.stages], randomised=randomised, passes=total)


def _adversarial_points(xs: torch.Tensor, units: list[Unit], found: dict, eps: float) -> torch.Tensor:
    """Per example, the last point that lowered its outcome at the headline ε (the clean input where none did)."""
    x_adv = xs.detach().cpu().clone()
    for unit in units:
        if unit.group == eps:
            for index, points in found[unit.name]:
                x_adv[index] = points.to(x_adv.dtype)
    return x_adv
