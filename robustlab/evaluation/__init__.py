"""Evaluation: one runner for every attack suite, the masking checks, reports and plots.

================  ==================================================================================================
``settings``      :class:`EvalSettings`: the threat model, the examples, the budgets, the checks' thresholds
``suites``        suites as data: :class:`Stage`, :class:`Suite`, the presets (standard, rand, fast, quick)
``runner``        :func:`evaluate`: the cascade, resumable and sharded, then the suite's masking checks
``state``         the per-example state a rerun resumes from, in a folder named by the evaluation
``result``        :class:`EvaluationResult`: the one result type
``checks``        the masking checks; ``suite_checks`` runs those a suite declares on its result
``outcome``       one attack on a set of examples (accuracy, per-example outcome, ρ_adv)
``report``        markdown, CSV and JSON; ``plots`` the PNGs
``benchmark``     :func:`benchmark`: your own model, one call
================  ==================================================================================================
"""

from robustlab.evaluation.benchmark import benchmark
from robustlab.evaluation.result import EvaluationResult
from robustlab.evaluation.runner import evaluate
from robustlab.evaluation.settings import EvalSettings
from robustlab.evaluation.state import OtherEvaluationState
from robustlab.evaluation.suites import PRESETS, Stage, Suite, available_suites

__all__ = ["EvalSettings", "EvaluationResult", "OtherEvaluationState", "PRESETS", "Stage", "Suite",
           "available_suites", "benchmark", "evaluate"]
