"""Exceptions a user can act on. The CLI prints them as one line and exits non-zero."""

import difflib
from collections.abc import Iterable


class RobustlabError(Exception):
    """Base class: a problem the user can fix (bad config, missing file, corrupt checkpoint)."""


class ConfigError(RobustlabError, ValueError):
    """A configuration key is unknown, has the wrong type or an invalid value (also a ValueError: the library's
    functions refuse a bad argument with it, as Python's do)."""


class DatasetError(RobustlabError):
    """A dataset file is missing, corrupt or in the wrong format."""


class BrokenModel(RobustlabError, ValueError):
    """The model outputs NaN or infinite logits on clean inputs: it gets no robustness number."""


class TrainingDiverged(RobustlabError):
    """The training loss (or the weights) became NaN or infinite: the run stops, its last good checkpoint kept."""


class CheckpointError(RobustlabError):
    """A checkpoint is missing, incomplete or corrupt."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or an empty string."""
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> ConfigError:
    """``unknown <kind> 'name' (did you mean ...?); available: ...`` as a ConfigError to raise."""
    known = sorted(known)
    return ConfigError(f"unknown {kind} {name!r}{did_you_mean(name, known)}; available: {', '.join(known) or 'none'}")
