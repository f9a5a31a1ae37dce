"""Exceptions a user can act on. The CLI prints them as one line and exits non-zero."""


class RobustlabError(Exception):
    """Base class: a problem the user can fix (bad config, missing file, corrupt checkpoint)."""


class ConfigError(RobustlabError):
    """A configuration key is unknown, has the wrong type or an invalid value."""


class DatasetError(RobustlabError):
    """A dataset file is missing, corrupt or in the wrong format."""


class CheckpointError(RobustlabError):
    """A checkpoint is missing, incomplete or corrupt."""
