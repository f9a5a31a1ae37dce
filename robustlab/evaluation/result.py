"""What an evaluation measured: one type for every suite, a single ε or a curve.

``robust_accuracy``, ``robust``, ``fooled_by`` and ``x_adv`` are at the headline ε (the largest); ``curve`` holds the
worst case at every ε and ``rows`` one entry per stage and ε (for a minimal attack: its accuracy, success rate and
ρ_adv). ``robust`` per example is a fraction of draws for a randomised model (``final_draws`` > 1), else 0 or 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from robustlab.evaluation.checks import Check, any_failed
from robustlab.evaluation.settings import EvalSettings

NORM_NAMES = {"linf": "L∞", "l2": "L2", "l0": "L0"}
NOT_ATTACKED = -2  # a gallery column's prediction where its stage did not attack the example


@dataclass
class GalleryColumn:
    """The first examples under one stage (or clean): the points and the predictions on them (-2 where the stage
    did not attack the example, -1 for non-finite logits)."""

    x: torch.Tensor
    pred: torch.Tensor


@dataclass
class EvaluationResult:
    suite: str
    claim: bool
    cascade: bool
    norm: str
    eps: float
    n: int
    clean: float
    robust_accuracy: float
    rows: list[dict]
    curve: dict[float, float]
    checks: list[Check]
    clean_correct: torch.Tensor = field(repr=False)
    robust: torch.Tensor = field(repr=False)
    fooled_by: list[str | None] = field(repr=False)
    settings: EvalSettings = field(repr=False)
    stages: list[dict] = field(default_factory=list, repr=False)
    randomised: bool = False
    seconds: float = 0.0
    passes: dict = field(default_factory=dict)
    x_adv: torch.Tensor | None = field(default=None, repr=False)
    gallery: dict[tuple[str, float | None], GalleryColumn] = field(default_factory=dict, repr=False)
    gallery_clean: GalleryColumn | None = field(default=None, repr=False)
    labels: torch.Tensor | None = field(default=None, repr=False)
    state_dir: str | None = None

    @property
    def eps_list(self) -> list[float]:
        return sorted(self.curve)

    def bounded_rows(self) -> list[dict]:
        return [r for r in self.rows if r["kind"] == "bounded"]

    def minimal_rows(self) -> list[dict]:
        return [r for r in self.rows if r["kind"] == "minimal"]

    def accuracy_of(self, stage: str) -> dict[float, float]:
        """ε → the accuracy under ``stage`` alone, at each ε where that is known (every row of a suite that is not
        a cascade; only the first stage of a cascade, the others attacked what the ones before them left)."""
        return {r["eps"]: r["accuracy"] for r in self.rows
                if r["attack"] == stage and r["kind"] == "bounded" and r["alone"]}

    def to_dict(self) -> dict:
        return {"suite": self.suite, "claim": self.claim, "cascade": self.cascade, "norm": self.norm, "eps": self.eps,
                "examples": self.n,
                "clean": self.clean, "clean_error": 1.0 - self.clean, "robust_accuracy": self.robust_accuracy,
                "robust_error": 1.0 - self.robust_accuracy,
                "curve": [{"eps": e, "robust_accuracy": a} for e, a in sorted(self.curve.items())],
                "rows": self.rows, "checks": [c.to_dict() for c in self.checks],
                "checks_passed": not any_failed(self.checks), "randomised": self.randomised,
                "seconds": self.seconds, "passes": self.passes, "settings": self.settings.to_dict(),
                "stages": self.stages, "state_dir": self.state_dir,
                "per_example": {"robust": self.robust.tolist(), "fooled_by": self.fooled_by}}


def mean(t: torch.Tensor) -> float:
    return float(t.double().mean()) if len(t) else math.nan
