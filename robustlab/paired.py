"""Paired comparison of two training arms: validity gates, the difference, its 95% interval and a two-axis verdict.

The reproduction protocol: a baseline and a method are trained with the same seeds (a seed gives both arms the same
data order and initialisation) and evaluated on the same test images. The effect is the paired difference
method − baseline, in the metric's units (accuracy or error points). Two 95% intervals:

* **over seeds** — the t interval of the mean per-seed difference (n − 1 degrees of freedom);
* **crossed bootstrap over seeds × test images** — every seed is evaluated on the *same* images (a crossed design),
  so one replicate resamples the seeds and, once, the images, and that one image resample is shared by every
  resampled seed. (Resampling images independently inside each seed would average the image effect away and give
  an interval too narrow.)

The verdict uses the wider of the two.

**Gates first.** A comparison is only read when every :class:`Gate` on it passed: the arms are not masked, the
metric is not at its bound in both arms (or so close to it that the paper's effect has no room), the method's
mechanism engaged. A failed or unmeasured gate gives "no verdict: <gate>", never a verdict.

**Two axes**, each from the interval alone (symmetric: neither side is the default):

* direction — *as the paper* (the interval excludes 0 on the paper's side), *opposite* (excludes 0 on the other
  side) or *undetermined* (holds 0);
* size — *consistent* (the interval holds the paper's effect), *smaller* / *larger* (it lies wholly below / above
  it, measured in the paper's direction) or *undetermined* (no finite interval).

**Power.** :func:`design_power` and :func:`seeds_for_power` size an experiment *before* its main runs, from a
pilot's spread; :meth:`Interval.power` on the finished experiment's own spread is post-hoc power and is labelled so
(with 2–5 degrees of freedom it is a rough figure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

LEVEL = 0.95
AS_PAPER, OPPOSITE, UNDETERMINED = "as the paper", "opposite", "undetermined"
CONSISTENT, SMALLER, LARGER = "consistent with the paper", "smaller", "larger"
POSITIVE, NEGATIVE = "positive", "negative"  # the direction of an ablation with no paper effect


@dataclass(frozen=True)
class Interval:
    """A mean with its interval; ``se`` and ``critical`` (the quantile used) give the power."""

    mean: float
    low: float
    high: float
    se: float
    critical: float
    source: str  # "seeds" | "seeds × images (crossed)"
    df: int | None = None  # t degrees of freedom (None: normal)

    @property
    def width(self) -> float:
        return self.high - self.low

    def power(self, effect: float) -> float:
        """P(the interval excludes 0) if the true difference were ``effect``, with this spread (two-sided).
        NaN when the spread is 0 or unknown: a metric that does not vary says nothing about power."""
        if not math.isfinite(self.se) or self.se <= 0:
            return float("nan")
        shift = abs(effect) / self.se
        normal = float(stats.norm.sf(self.critical - shift) + stats.norm.cdf(-self.critical - shift))
        if self.df is None:
            return normal
        t = float(stats.nct.sf(self.critical, self.df, shift) + stats.nct.cdf(-self.critical, self.df, shift))
        return t if math.isfinite(t) else normal  # scipy's noncentral t fails far in the tail at 1 df

    def detectable(self, power: float = 0.8) -> float:
        """The smallest effect detected with ``power`` (normal approximation: (z_crit + z_power)·se)."""
        return (self.critical + float(stats.norm.ppf(power))) * self.se


def seed_interval(differences: list[float] | np.ndarray, level: float = LEVEL) -> Interval:
    """The t interval of the mean of the per-seed paired differences (needs two seeds for a finite width)."""
    d = np.asarray(differences, dtype=float)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError("seed_interval needs a non-empty 1-d list of per-seed differences")
    mean = float(d.mean())
    if len(d) < 2:
        return Interval(mean, -math.inf, math.inf, math.inf, math.inf, "seeds", 0)
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    crit = float(stats.t.ppf(0.5 + level / 2, len(d) - 1))
    return Interval(mean, mean - crit * se, mean + crit * se, se, crit, "seeds", len(d) - 1)


def crossed_bootstrap_interval(baseline: np.ndarray, method: np.ndarray, *, resamples: int = 4000, seed: int = 0,
                               level: float = LEVEL) -> Interval:
    """Percentile interval of mean(method) − mean(baseline) under the crossed seeds × images bootstrap.

    ``baseline`` and ``method`` are (seeds, images) arrays of per-example outcomes (1 = correct, a fraction for
    randomised models, or any per-example score), row ``i`` of both from seed ``i``, column ``j`` the same image in
    every row. Each replicate draws seeds and images with replacement, one image draw for all its seeds.
    """
    a, b = np.asarray(baseline, dtype=float), np.asarray(method, dtype=float)
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"crossed_bootstrap_interval needs two (seeds, images) arrays of one shape, got {a.shape} "
                         f"and {b.shape}")
    if resamples < 100:
        raise ValueError(f"crossed_bootstrap_interval: resamples must be >= 100, got {resamples}")
    diff = b - a
    n_seeds, n_images = diff.shape
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for r in range(resamples):
        seeds = rng.integers(0, n_seeds, size=n_seeds)
        images = rng.integers(0, n_images, size=n_images)  # shared by every resampled seed
        means[r] = diff[np.ix_(seeds, images)].mean()
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(diff.mean()), float(low), float(high), float(means.std(ddof=1)),
                    float(stats.norm.ppf(0.5 + level / 2)), "seeds × images (crossed)")


def design_power(effect: float, seed_sd: float, n_seeds: int, *, image_se: float = 0.0, level: float = LEVEL) -> float:
    """The power, planned before the main runs, of ``n_seeds`` paired seeds to exclude 0 were the true difference
    ``effect``: ``seed_sd`` is a pilot's standard deviation of the per-seed difference and ``image_se`` the standard
    error the test set adds whatever the number of seeds (normal shift, t critical value with n − 1 df)."""
    if n_seeds < 2:
        return 0.0
    se = math.sqrt(seed_sd ** 2 / n_seeds + image_se ** 2)
    if se <= 0:
        return 1.0 if effect != 0 else 0.0
    crit = float(stats.t.ppf(0.5 + level / 2, n_seeds - 1))
    shift = abs(effect) / se
    return float(stats.norm.sf(crit - shift) + stats.norm.cdf(-crit - shift))


def seeds_for_power(effect: float, seed_sd: float, *, image_se: float = 0.0, power: float = 0.8,
                    level: float = LEVEL, most: int = 50) -> int | None:
    """The fewest seeds with :func:`design_power` ≥ ``power``; None when even ``most`` seeds fall short (the test
    set's own error ``image_se`` can make an effect undetectable at any number of seeds)."""
    return next((n for n in range(2, most + 1)
                 if design_power(effect, seed_sd, n, image_se=image_se, level=level) >= power), None)


@dataclass(frozen=True)
class Verdict:
    """The two axes (module docstring); ``size`` is "" for an ablation that has no paper effect."""

    direction: str
    size: str = ""

    def __str__(self) -> str:
        return f"direction {self.direction}" + (f"; size {self.size}" if self.size else "")


def two_axis_verdict(interval: Interval, paper_effect: float | None) -> Verdict:
    """Direction and size of ``interval`` against the paper's effect (None: an ablation; the direction is then
    positive / negative / undetermined)."""
    finite = math.isfinite(interval.width)
    if paper_effect is None:
        if finite and interval.low > 0:
            return Verdict(POSITIVE)
        if finite and interval.high < 0:
            return Verdict(NEGATIVE)
        return Verdict(UNDETERMINED)
    if paper_effect == 0:
        raise ValueError("a paper effect of 0 has no direction: compare it as an ablation (paper_effect=None)")
    if not finite:
        return Verdict(UNDETERMINED, UNDETERMINED)
    sign = 1.0 if paper_effect > 0 else -1.0
    low, high = sorted((sign * interval.low, sign * interval.high))  # in the paper's direction
    direction = AS_PAPER if low > 0 else OPPOSITE if high < 0 else UNDETERMINED
    size = SMALLER if high < abs(paper_effect) else LARGER if low > abs(paper_effect) else CONSISTENT
    return Verdict(direction, size)


@dataclass(frozen=True)
class Gate:
    """One validity condition on a comparison: ``passed`` None means it could not be measured (counts as failed)."""

    name: str  # "not masked", "baseline floor", "not saturated", "mechanism engaged", "stable training", ...
    subject: str  # the arm or the metric it is about
    rule: str  # what passing means, with its threshold and why
    measured: str  # the numbers behind the status
    passed: bool | None

    @property
    def status(self) -> str:
        return {True: "pass", False: "FAIL", None: "not measured"}[self.passed]

    @property
    def label(self) -> str:
        return f"{self.name} ({self.subject})"


def masking_gate(arm: str, suite_accuracy: float, pgd_accuracy: float, max_gap: float, *,
                 attack: str = "strong PGD") -> Gate:
    """(a) An arm is not masked: its accuracy under the strong suite is not more than ``max_gap`` points below its
    accuracy under ``attack`` (a masked model holds against gradients and falls to the rest of the suite)."""
    gap = pgd_accuracy - suite_accuracy
    return Gate("not masked", arm, f"{attack} − suite ≤ {max_gap:g} points",
                f"{attack} {pgd_accuracy:.1f}, suite {suite_accuracy:.1f} (gap {gap:+.1f})", gap <= max_gap)


def floor_gate(arm: str, value: float, floor: float, metric: str, why: str) -> Gate:
    """(a) A baseline reaches a floor stated (and justified by ``why``) before its runs: a baseline below it is a
    broken recipe, and beating it says nothing about the method."""
    return Gate("baseline floor", arm, f"{metric} ≥ {floor:g} ({why})", f"{metric} {value:.1f}", value >= floor)


def saturation_gate(metric: str, baseline_mean: float, method_mean: float, bounds: tuple[float, float],
                    paper_effect: float | None, tolerance: float) -> Gate:
    """(b) The metric can show the effect: not within ``tolerance`` of the same bound in both arms, and the
    baseline plus the paper's effect inside the metric's range."""
    lo, hi = bounds
    at = [b for b in (lo, hi) if abs(baseline_mean - b) <= tolerance and abs(method_mean - b) <= tolerance]
    target = None if paper_effect is None else baseline_mean + paper_effect
    room = target is None or lo <= target <= hi
    measured = f"baseline {baseline_mean:.1f}, method {method_mean:.1f}" + (
        "" if target is None else f"; baseline + the paper's effect {target:.1f}")
    return Gate("not saturated", metric, f"not within {tolerance:g} of a bound ({lo:g}, {hi:g}) in both arms, and "
                f"room for the paper's effect", measured, not at and room)


def mechanism_gate(arm: str, what: str, measured: str, passed: bool | None) -> Gate:
    """(c) The method's mechanism engaged (the critic above chance, the learned noise moved, ...), as ``what``."""
    return Gate("mechanism engaged", arm, what, measured, passed)


@dataclass(frozen=True)
class Comparison:
    """One claim checked: ``method`` − ``baseline`` on ``metric`` against the paper's effect (None: an ablation)."""

    metric: str
    baseline: str
    method: str
    paper_effect: float | None
    differences: tuple[float, ...]  # per seed
    by_seeds: Interval
    by_images: Interval | None
    gates: tuple[Gate, ...] = field(default=())

    @property
    def interval(self) -> Interval:
        """The wider of the two intervals: the one the verdict and the power use."""
        if self.by_images is None or self.by_seeds.width >= self.by_images.width:
            return self.by_seeds
        return self.by_images

    @property
    def failed_gates(self) -> list[Gate]:
        return [g for g in self.gates if g.passed is not True]

    @property
    def verdict(self) -> Verdict | None:
        """The two-axis verdict; None when a gate failed or was not measured."""
        return None if self.failed_gates else two_axis_verdict(self.interval, self.paper_effect)

    @property
    def verdict_text(self) -> str:
        if self.failed_gates:
            return "no verdict: " + "; ".join(
                f"{g.label} {'not measured' if g.passed is None else 'failed'}" for g in self.failed_gates)
        return str(self.verdict)

    @property
    def power(self) -> float:
        """Post-hoc power (this experiment's own spread) to see the paper's effect; NaN for an ablation."""
        return float("nan") if self.paper_effect is None else self.interval.power(self.paper_effect)

    def to_dict(self) -> dict:
        """JSON-ready (an infinite or undefined number is None)."""
        i, v = self.interval, self.verdict
        return {"metric": self.metric, "baseline": self.baseline, "method": self.method,
                "paper_effect": self.paper_effect, "differences": list(self.differences), "mean": i.mean,
                "interval": _finite([i.low, i.high]), "interval_source": i.source,
                "seed_interval": _finite([self.by_seeds.low, self.by_seeds.high]),
                "image_interval": None if self.by_images is None else _finite([self.by_images.low,
                                                                                 self.by_images.high]),
                "post_hoc_power": _finite(self.power), "detectable": _finite(i.detectable()),
                "gates": [{"name": g.name, "subject": g.subject, "rule": g.rule, "measured": g.measured,
                           "status": g.status} for g in self.gates],
                "direction": None if v is None else v.direction, "size": None if v is None else v.size or None,
                "verdict": self.verdict_text}


def _finite(value):
    """``value`` (a number or a list of numbers) with every infinite or NaN number as None."""
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value if math.isfinite(value) else None


def compare(metric: str, baseline: str, method: str, paper_effect: float | None, baseline_values: dict[int, float],
            method_values: dict[int, float], *, baseline_outcomes: dict[int, np.ndarray] | None = None,
            method_outcomes: dict[int, np.ndarray] | None = None, scale: float = 100.0,
            bounds: tuple[float, float] | None = None, saturation_tolerance: float = 1.0,
            gates: tuple[Gate, ...] | list[Gate] = ()) -> Comparison:
    """Pair the two arms by seed (seeds present in both) and build the :class:`Comparison`.

    ``*_values`` map seed → the metric of that run (in the paper's units, e.g. points); ``*_outcomes`` (optional)
    map seed → per-example outcomes on the same images, multiplied by ``scale`` to reach those units. ``bounds``:
    the metric's range (e.g. 0–100 %), which adds the :func:`saturation_gate`; ``gates``: the experiment's others.
    """
    seeds = sorted(set(baseline_values) & set(method_values))
    if not seeds:
        raise ValueError(f"compare {metric}: no seed is shared by {baseline} and {method}")
    diffs = tuple(float(method_values[s] - baseline_values[s]) for s in seeds)
    by_images = None
    if baseline_outcomes is not None and method_outcomes is not None:
        both = [s for s in seeds if s in baseline_outcomes and s in method_outcomes]
        if both:
            a = np.stack([np.asarray(baseline_outcomes[s], dtype=float) for s in both]) * scale
            b = np.stack([np.asarray(method_outcomes[s], dtype=float) for s in both]) * scale
            by_images = crossed_bootstrap_interval(a, b)
    all_gates = list(gates)
    if bounds is not None:
        all_gates.append(saturation_gate(f"{metric}, {method} − {baseline}",
                                         float(np.mean([baseline_values[s] for s in seeds])),
                                         float(np.mean([method_values[s] for s in seeds])), bounds, paper_effect,
                                         saturation_tolerance))
    return Comparison(metric, baseline, method, paper_effect, diffs, seed_interval(diffs), by_images, tuple(all_gates))


def _span(i: Interval | None, digits: int) -> str:
    if i is None:
        return "–"
    if not math.isfinite(i.width):
        return "(one seed)"
    return f"[{i.low:+.{digits}f}, {i.high:+.{digits}f}]"


def comparison_table(comparisons: list[Comparison], digits: int = 1) -> str:
    """Markdown: one row per claim with the difference, both intervals, the paper's effect, post-hoc power and the
    verdict (or the gate that withheld it)."""
    lines = ["The verdict uses the wider of the two intervals (t over seeds; bootstrap over seeds × images, crossed: "
             "one image resample shared by all seeds). Power is post-hoc (this experiment's own spread).", "",
             "| metric | method − baseline | per-seed differences | mean | 95% CI seeds | 95% CI seeds × images "
             "| paper | post-hoc power | detectable (80%) | verdict |", "|---" * 10 + "|"]
    for c in comparisons:
        i = c.interval
        per_seed = ", ".join(f"{d:+.{digits}f}" for d in c.differences)
        power = "–" if math.isnan(c.power) else f"{100 * c.power:.0f}%"
        detect = "–" if not math.isfinite(i.detectable()) or i.se <= 0 else f"±{i.detectable():.{digits}f}"
        paper = "– (ablation)" if c.paper_effect is None else f"{c.paper_effect:+.{max(digits, 2)}f}"
        lines.append(f"| {c.metric} | {c.method} − {c.baseline} | {per_seed} | {i.mean:+.{digits}f} | "
                     f"{_span(c.by_seeds, digits)} | {_span(c.by_images, digits)} | {paper} | {power} | {detect} "
                     f"| **{c.verdict_text}** |")
    return "\n".join(lines)


def gates_table(gates: list[Gate]) -> str:
    """Markdown: every gate once (a gate shared by several comparisons is listed once), failures first."""
    unique = list(dict.fromkeys(gates))
    unique.sort(key=lambda g: g.passed is True)
    lines = ["| gate | about | rule | measured | status |", "|---|---|---|---|---|"]
    lines += [f"| {g.name} | {g.subject} | {g.rule} | {g.measured} | **{g.status}** |" for g in unique]
    return "\n".join(lines)
