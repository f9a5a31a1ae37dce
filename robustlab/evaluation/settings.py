"""The settings of an evaluation: one type for every suite (the threat model, the examples, the budgets, the checks).

A preset (:mod:`robustlab.evaluation.suites`) reads the budget fields it uses: ``steps``, ``targets``,
``square_queries`` and ``final_draws`` size AutoAttack's ``standard`` and ``rand`` (and, with ``adaptive_targets``,
``square_probe``, ``probe_give_up``, ``square_give_up``, ``escalate_fab`` and ``adaptive_eot_samples``,
``adaptive``); the ``pgd_*``, ``apgd_*``, ``cw_*``, ... fields size the exploratory ``fast`` and ``quick`` suites
(:meth:`EvalSettings.paper` gives the papers' budgets). ``eps`` is one radius or a list of them: a list is a curve,
the runner's loop over ε, and the headline is its largest ε.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from robustlab.attacks.base import check_epsilon, parse_norm
from robustlab.attacks.square import check_give_up
from robustlab.errors import ConfigError

DEFAULT_TOL = 0.01  # masking checks: allowed accuracy difference (+ one example)
# adaptive: Square's discarding in the probe, [queries spent, margin ratio]. Replayed on the zoo's Square traces
# (docs/results/square_trace.md) it let go of none of Square's successes; in every Square of the suite it was weaker
# on MART's model (docs/evaluation.md), so it runs in the probe only and an escalation gives the full budget again.
PROBE_GIVE_UP = ((500, 0.65), (1000, 0.45), (2000, 0.35))

# The papers' budgets for the exploratory suites (slow on a CPU): ``EvalSettings.paper()``.
PAPER_BUDGETS = dict(pgd_steps=40, pgd_restarts=1, apgd_steps=100, apgd_targets=9, cw_iterations=1000,
                     cw_binary_steps=9, cw_initial_const=1e-3, cw_lr=1e-2, deepfool_iterations=500,
                     deepfool_max_step=0.1, critic_iterations=500, few_pixel_population=400, few_pixel_iterations=75,
                     eot_samples=80)


@dataclass
class EvalSettings:
    """Everything an evaluation needs besides the model and the data. Invalid values raise :class:`ConfigError`."""

    norm: str = "linf"
    eps: float | list[float] = 0.3
    subset: int = 0                         # the first ``subset`` examples (0: all); caps every stage
    batch_size: int = 500
    seed: int = 0
    # AutoAttack (standard, rand)
    steps: int = 100                        # APGD and FAB iterations
    targets: int = 9                        # APGD-T and FAB-T target classes
    square_queries: int = 5000
    eot_samples: int = 20                   # gradients averaged per step on a randomised model (rand, EOT-PGD)
    final_draws: int = 10                   # rand: repeated predictions of each final point
    adaptive_targets: int = 3               # adaptive: APGD-T's target classes (ranked by a linearisation)
    square_probe: float = 0.1               # adaptive: Square's probe share (escalated on any success or alarm)
    adaptive_eot_samples: int = 2           # adaptive on a randomised model: the cheap first pass's EOT draws
    # adaptive: Square's discarding in the probe only [queries, ratio] (escalated: the full budget again)
    probe_give_up: list[list[float]] = field(default_factory=lambda: [list(c) for c in PROBE_GIVE_UP])
    square_give_up: list[list[float]] = field(default_factory=list)  # adaptive: Square's discarding [queries, ratio]
    escalate_fab: bool = True               # adaptive: FAB-T among the escalation stages (< 4 classes: always)
    # the exploratory suites (fast, quick)
    attacks: list[str] | None = None        # quick: the attacks to run; fast: only these rows (None: all)
    eps_l2: list[float] | None = None       # fast: PGD-L2's radii (None: ε·√d/4 for each L∞ ε)
    pgd_steps: int = 20
    pgd_step_size: float = 0.0              # 0: 2.5·ε/steps
    pgd_restarts: int = 2
    ifgsm_steps: int = 10
    apgd_steps: int = 20
    apgd_targets: int = 3
    minimal_subset: int = 50                # C&W, the critic attack
    deepfool_subset: int = 100
    few_pixel_subset: int = 20
    cw_iterations: int = 100
    cw_binary_steps: int = 5
    cw_initial_const: float = 0.1
    cw_lr: float = 0.1                      # 10× the paper's 0.01 for 10× fewer iterations (suites.py says why)
    deepfool_iterations: int = 50
    deepfool_max_step: float | None = None
    critic_iterations: int = 100
    few_pixel_pixels: list[int] = field(default_factory=lambda: [1, 3])
    few_pixel_population: int = 40
    few_pixel_iterations: int = 10
    eot: bool = False                       # fast/quick: add EOT-PGD even for a deterministic model
    gallery: int = 6                        # examples kept per stage for the gallery plot
    # masking checks
    check_subset: int = 200                 # large-ε and gradient checks
    large_eps_max_accuracy: float = 0.05
    max_zero_gradients: float = 0.01
    tol: float = DEFAULT_TOL
    # speed only
    batched_targets: bool | None = None     # None: batched on a GPU, one target after another on a CPU
    channels_last: bool | None = None       # None: NHWC memory order for models with 2-D convolutions

    def __post_init__(self):
        try:
            self.norm = parse_norm(self.norm)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        radii = self.eps if isinstance(self.eps, (list, tuple)) else [self.eps]
        if not radii:
            raise ConfigError("eps must be one radius or a non-empty list of radii")
        for e in radii:
            try:
                e = check_epsilon(e, self.norm)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"eps: {exc}") from None
            if e == 0:
                raise ConfigError("eps must be > 0 (ε = 0 is the clean accuracy, measured anyway)")
        self.eps = sorted({float(e) for e in radii}) if isinstance(self.eps, (list, tuple)) else float(self.eps)
        for f in dataclasses.fields(self):  # counts: a negative one would be a Python slice, not a size
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise ConfigError(f"{f.name} must be >= 0, got {value}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
        for key in ("batch_size", "steps", "targets", "adaptive_targets", "adaptive_eot_samples", "square_queries",
                    "eot_samples", "final_draws", "pgd_steps", "pgd_restarts", "ifgsm_steps", "apgd_steps",
                    "apgd_targets"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not 0 < self.square_probe <= 1:
            raise ConfigError(f"square_probe must be in (0, 1], got {self.square_probe}")
        for key, budget in (("probe_give_up", None), ("square_give_up", self.square_queries)):
            try:  # the probe's checkpoints at or past the query budget are left out (a smaller budget keeps its own)
                check_give_up(getattr(self, key), budget)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{key}: {exc}") from None
        if self.pgd_step_size < 0:
            raise ConfigError(f"pgd_step_size must be >= 0 (0: 2.5·ε/steps), got {self.pgd_step_size}")

    @classmethod
    def paper(cls, **overrides) -> "EvalSettings":
        """The papers' budgets for the fast suite (PGD-40, APGD-100 × 9 targets, C&W 1000 × 9 from c₀ 1e-3, ...)."""
        return cls(**{**PAPER_BUDGETS, **overrides})

    @property
    def eps_list(self) -> list[float]:
        """The radii evaluated, in increasing order (one for a single ε)."""
        return list(self.eps) if isinstance(self.eps, list) else [self.eps]

    def l2_eps(self, in_shape: tuple[int, ...]) -> list[float]:
        """PGD-L2's radii in the fast suite: ``eps_l2``, or ε·√d/4 for each L∞ ε (0.3 → 2.1 on 28×28)."""
        if self.eps_l2:
            return list(self.eps_l2)
        scale = math.sqrt(math.prod(in_shape)) / 4
        return [round(e * scale, 3) for e in self.eps_list]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
