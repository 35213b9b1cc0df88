"""User-facing errors: each carries everything the message needs.

The CLI turns any :class:`TfgenError` into one message on stderr and a
non-zero exit code, never a traceback.
"""
from __future__ import annotations


class TfgenError(Exception):
    """Base class of errors that are the user's to fix."""

    exit_code = 2


class ConfigError(TfgenError):
    """A config value is wrong: names the file, key path, value and what is allowed."""

    def __init__(self, file: str | None, key: str | None, message: str,
                 given: object = ..., allowed: str | None = None):
        self.file, self.key, self.message, self.given, self.allowed = file, key, message, given, allowed
        parts = [f"{file or '<config>'}"]
        if key:
            parts[0] += f": {key}"
        text = f"{parts[0]}: {message}"
        if given is not ...:
            text += f"; given {given!r}"
        if allowed:
            text += f"; allowed: {allowed}"
        super().__init__(text)

    def in_file(self, file: str) -> "ConfigError":
        """The same error, attributed to ``file`` (for errors found while building)."""
        return ConfigError(file, self.key, self.message, self.given, self.allowed)


class DataError(TfgenError):
    """A data set cannot be found or read."""


class TrainingDiverged(TfgenError):
    """The loss became NaN or infinite."""

    exit_code = 3
