"""The model zoo: every model takes [0,1] images and exposes ``features`` / ``head``."""

from robustlab.models.base import Normalize, RobustModel
from robustlab.models.layers import ModelConfigError, injection_points, replace_injections
from robustlab.models.registry import available_models, build_model, model_options, register_model

__all__ = ["ModelConfigError", "Normalize", "RobustModel", "available_models", "build_model", "injection_points",
           "model_options", "register_model", "replace_injections"]

from robustlab.models import zoo  # noqa: E402,F401  (every model family registered: the registry is complete)
