"""Domain exceptions.

Every failure a user can cause (bad data, bad recipe, missing files) is raised as a
`VisionDeckError` carrying a *hint*: the one thing to do next. The CLI turns them into a
clean message and an exit code, the API into an HTTP status, so nothing user-caused ever
surfaces as a traceback.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "DataValidationError",
    "DatasetNotFoundError",
    "SplitMismatchError",
    "VisionDeckError",
]


class VisionDeckError(Exception):
    """Base class: a message for humans plus an optional hint on how to fix it."""

    #: process exit code the CLI uses for this kind of error
    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\nHint: {self.hint}" if self.hint else self.message


class ConfigError(VisionDeckError):
    """A recipe or a `key=value` override is invalid."""

    exit_code = 2


class DataError(VisionDeckError):
    """The data given cannot be used as asked."""

    exit_code = 4


class DataValidationError(DataError):
    """The data set failed validation in a way that blocks the requested step."""


class DatasetNotFoundError(DataError):
    """A built-in or user data set could not be located (and could not be fetched)."""


class SplitMismatchError(DataError):
    """The files on disk no longer match the split that was written for them."""
