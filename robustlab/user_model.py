"""``robustlab eval --model package.module:function [--weights file.safetensors]``: a model the user brings.

``function()`` must return an ``nn.Module`` that takes [0,1] NCHW images and returns logits. Weights load from a
safetensors file (tensors only: nothing is unpickled); the model is put in eval mode.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

from torch import nn

from robustlab.errors import ConfigError


def load_user_model(spec: str, weights: str | None = None) -> nn.Module:
    """Import ``module:function``, call it, and load ``weights`` (safetensors) into the returned module."""
    module_name, sep, func_name = spec.partition(":")
    if not sep or not module_name or not func_name:
        raise ConfigError(f"--model must look like package.module:function, got {spec!r}")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m` does: a module in the current directory is found
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--model: cannot import {module_name!r}: {exc}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"--model: {module_name!r} has no function {func_name!r}")
    try:
        inspect.signature(func).bind()
    except TypeError:
        raise ConfigError(f"--model: {spec} must be callable with no arguments, its signature is "
                          f"{func_name}{inspect.signature(func)}") from None
    except ValueError:  # a builtin without a signature: let the call say
        pass
    try:
        model = func()
    except Exception as exc:  # the user's code: any error it raises is theirs to fix, said in one line
        raise ConfigError(f"--model: {spec}() raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model: {spec}() returned {type(model).__name__}, not a torch.nn.Module")
    if weights:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(weights)
        except (OSError, SafetensorError) as exc:
            raise ConfigError(f"--weights {weights}: not a readable safetensors file ({exc})") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
            raise ConfigError(f"--weights {weights} do not fit {spec}(): " + ("; ".join(details[:2]) or str(exc))
                              ) from None
    return model.eval()
