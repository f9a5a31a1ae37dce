"""robustlab: train image classifiers that resist adversarial examples, and measure that resistance honestly."""

__version__ = "0.1.0"
