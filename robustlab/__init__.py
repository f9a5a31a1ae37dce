"""robustlab: train image classifiers that resist adversarial examples, and measure that resistance honestly.

``robustlab.benchmark(model, x, y, eps=...)``: AutoAttack-strength robust accuracy of any model on [0,1] inputs
(:mod:`robustlab.evaluation.benchmark`).
"""

__version__ = "0.1.0"
__all__ = ["benchmark"]


def __getattr__(name: str):
    if name == "benchmark":  # imported on first use: `import robustlab` stays light
        from robustlab.evaluation.benchmark import benchmark

        return benchmark
    raise AttributeError(f"module 'robustlab' has no attribute {name!r}")
