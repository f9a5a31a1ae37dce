"""Strict JSON (RFC 8259 has no NaN or Infinity): every file robustlab writes parses in any JSON reader."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping


def json_safe(obj):
    """``obj`` with every NaN/inf float replaced by ``None``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def strict_dumps(obj, **kwargs) -> str:
    """``json.dumps`` of :func:`json_safe` ``(obj)``, refusing anything else that is not strict JSON."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)
