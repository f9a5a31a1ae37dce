"""Paired comparison of two training arms: the difference, its 95% interval, the power, and a verdict.

The reproduction protocol: a baseline and a method are trained with the same seeds (a seed gives both arms the same
data order and initialisation) and evaluated on the same test images. The effect is the paired difference
method − baseline, in the metric's units (accuracy or error points). Two 95% intervals:

* **over seeds** — the t interval of the mean per-seed difference (n − 1 degrees of freedom);
* **over seeds × test images** (per-example outcomes) — a two-level paired bootstrap: resample the seeds, then the
  test images (the same images for both arms), and take the difference of the mean outcomes.

The verdict uses the wider of the two (the t interval alone ignores that the test set is a sample; the bootstrap
alone is too narrow with few seeds):

* **reproduced** — the interval excludes 0 on the paper's side;
* **contradicted** — the interval excludes the paper's effect (and does not reproduce it);
* **inconclusive** — the interval holds both 0 and the paper's effect.

The power is the chance that an experiment with this spread (standard error) would have excluded 0, were the true
effect the paper's; ``detectable`` is the effect it detects with 80% power (2.8 standard errors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"


@dataclass(frozen=True)
class Interval:
    """A mean with its interval; ``se`` and ``critical`` (the quantile used) give the power."""

    mean: float
    low: float
    high: float
    se: float
    critical: float
    source: str  # "seeds" | "seeds × images"
    df: int | None = None  # t degrees of freedom (None: normal)

    @property
    def width(self) -> float:
        return self.high - self.low

    def power(self, effect: float) -> float:
        """P(the interval excludes 0) if the true difference were ``effect`` (two-sided, this spread)."""
        if not math.isfinite(self.se) or self.se <= 0:
            return float("nan") if not math.isfinite(self.se) else 1.0
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


def bootstrap_interval(baseline: np.ndarray, method: np.ndarray, *, resamples: int = 4000, seed: int = 0,
                       level: float = LEVEL) -> Interval:
    """Percentile interval of mean(method) − mean(baseline) under a seeds × images paired bootstrap.

    ``baseline`` and ``method`` are (seeds, images) arrays of per-example outcomes (1 = correct, or a fraction for
    randomised models; any per-example score), row ``i`` of both from seed ``i``, column ``j`` the same image.
    """
    a, b = np.asarray(baseline, dtype=float), np.asarray(method, dtype=float)
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"bootstrap_interval needs two (seeds, images) arrays of one shape, got {a.shape} and "
                         f"{b.shape}")
    if resamples < 100:
        raise ValueError(f"bootstrap_interval: resamples must be >= 100, got {resamples}")
    diff = b - a
    n_seeds, n_images = diff.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    means = np.empty(resamples)
    for r in range(resamples):  # images resampled independently for every resampled seed
        images = rng.integers(0, n_images, size=(n_seeds, n_images))
        means[r] = diff[seeds[r][:, None], images].mean()
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(diff.mean()), float(low), float(high), float(means.std(ddof=1)),
                    float(stats.norm.ppf(0.5 + level / 2)), "seeds × images")


def verdict(interval: Interval, paper_effect: float) -> str:
    """reproduced / contradicted / inconclusive (module docstring); a paper effect of 0 cannot be reproduced."""
    if not math.isfinite(interval.width):
        return INCONCLUSIVE
    sign = 1.0 if paper_effect >= 0 else -1.0
    low, high = sorted((sign * interval.low, sign * interval.high))  # in the paper's direction
    if paper_effect != 0 and low > 0:
        return REPRODUCED
    if high < abs(paper_effect) or low > abs(paper_effect):
        return CONTRADICTED
    return INCONCLUSIVE


def qualifier(interval: Interval, paper_effect: float) -> str:
    """For a reproduced claim whose interval also excludes the paper's effect: smaller or larger than claimed."""
    if verdict(interval, paper_effect) != REPRODUCED:
        return ""
    sign = 1.0 if paper_effect >= 0 else -1.0
    low, high = sorted((sign * interval.low, sign * interval.high))
    if high < abs(paper_effect):
        return "smaller than the paper's"
    if low > abs(paper_effect):
        return "larger than the paper's"
    return ""


@dataclass(frozen=True)
class Comparison:
    """One claim checked: ``method`` − ``baseline`` on ``metric`` against the paper's effect."""

    metric: str
    baseline: str
    method: str
    paper_effect: float
    differences: tuple[float, ...]  # per seed
    by_seeds: Interval
    by_images: Interval | None
    room: bool = True  # False: baseline + the paper's effect lies outside the metric's range (a floor or ceiling)

    @property
    def interval(self) -> Interval:
        """The wider of the two intervals: the one the verdict and the power use."""
        if self.by_images is None or self.by_seeds.width >= self.by_images.width:
            return self.by_seeds
        return self.by_images

    @property
    def verdict(self) -> str:
        """As :func:`verdict`; inconclusive when the metric has no room for the paper's effect."""
        return verdict(self.interval, self.paper_effect) if self.room else INCONCLUSIVE

    @property
    def verdict_text(self) -> str:
        """The verdict, with "smaller / larger than the paper's" when the interval excludes the paper's effect."""
        if not self.room:
            return f"{INCONCLUSIVE} (no room: the baseline is too close to the metric's bound for the paper's effect)"
        extra = qualifier(self.interval, self.paper_effect)
        return f"{self.verdict} ({extra})" if extra else self.verdict

    @property
    def power(self) -> float:
        return self.interval.power(self.paper_effect)

    def to_dict(self) -> dict:
        i = self.interval
        return {"metric": self.metric, "baseline": self.baseline, "method": self.method,
                "paper_effect": self.paper_effect, "differences": list(self.differences), "mean": i.mean,
                "interval": [i.low, i.high], "interval_source": i.source,
                "seed_interval": [self.by_seeds.low, self.by_seeds.high],
                "image_interval": None if self.by_images is None else [self.by_images.low, self.by_images.high],
                "power": self.power, "detectable": i.detectable(), "verdict": self.verdict}


def compare(metric: str, baseline: str, method: str, paper_effect: float, baseline_values: dict[int, float],
            method_values: dict[int, float], *, baseline_outcomes: dict[int, np.ndarray] | None = None,
            method_outcomes: dict[int, np.ndarray] | None = None, scale: float = 100.0,
            bounds: tuple[float, float] | None = None) -> Comparison:
    """Pair the two arms by seed (seeds present in both) and build the :class:`Comparison`.

    ``*_values`` map seed → the metric of that run (in the paper's units, e.g. points); ``*_outcomes`` (optional)
    map seed → per-example outcomes on the same images, multiplied by ``scale`` to reach those units. ``bounds``:
    the metric's range (e.g. 0–100 %); a baseline whose mean plus the paper's effect leaves it gives no verdict.
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
            by_images = bootstrap_interval(a, b)
    room = True
    if bounds is not None:
        target = float(np.mean([baseline_values[s] for s in seeds])) + paper_effect
        room = bounds[0] <= target <= bounds[1]
    return Comparison(metric, baseline, method, paper_effect, diffs, seed_interval(diffs), by_images, room)


def comparison_table(comparisons: list[Comparison], digits: int = 1) -> str:
    """Markdown: which interval decides, then one row per claim with the difference, both intervals, the paper's
    effect, power and verdict."""
    def span(i: Interval | None) -> str:
        if i is None:
            return "–"
        if not math.isfinite(i.width):
            return "(one seed)"
        return f"[{i.low:+.{digits}f}, {i.high:+.{digits}f}]"

    lines = ["The verdict and the power use the wider of the two intervals (t over seeds; paired bootstrap over "
             "seeds × images).", "",
             "| metric | method − baseline | per-seed differences | mean | 95% CI seeds | 95% CI seeds × images "
             "| paper | power | detectable (80%) | verdict |", "|---" * 10 + "|"]
    for c in comparisons:
        i = c.interval
        per_seed = ", ".join(f"{d:+.{digits}f}" for d in c.differences)
        power = "–" if math.isnan(c.power) else f"{100 * c.power:.0f}%"
        detect = "–" if not math.isfinite(i.detectable()) else f"±{i.detectable():.{digits}f}"
        paper = f"{c.paper_effect:+.{max(digits, 2)}f}"
        lines.append(f"| {c.metric} | {c.method} − {c.baseline} | {per_seed} | {i.mean:+.{digits}f} | "
                     f"{span(c.by_seeds)} | {span(c.by_images)} | {paper} | {power} | {detect} "
                     f"| **{c.verdict_text}** |")
    return "\n".join(lines)
