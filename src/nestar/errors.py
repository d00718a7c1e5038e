"""The base of every expected, user-facing error.

`nestar` commands print a `UserError` as one line on stderr (`nestar <command>: error: ...`) and
exit with status 2; anything else is a bug and keeps its traceback. Messages name the field, file
or option at fault and the fix. Subclasses keep their historical bases (ValueError,
FileNotFoundError, ...) so existing `except` clauses still catch them.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the input (config, data, checkpoint, device, option values), not by a bug."""


class ConfigError(UserError, ValueError):
    """A config value or field is invalid; the message names the field."""


class DataError(UserError, ValueError):
    """A dataset on disk cannot be used as configured (unreadable images, labels out of range, ...)."""


class RunLockedError(UserError):
    """Another process is writing the same run directory."""
