"""Imports every defense and term module so their registration decorators run (one line per module)."""

import robustlab.defenses.a3t  # noqa: F401
import robustlab.defenses.adversarial  # noqa: F401
import robustlab.defenses.standard  # noqa: F401
import robustlab.defenses.at2l  # noqa: F401
import robustlab.defenses.triplet  # noqa: F401
