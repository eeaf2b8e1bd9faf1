"""Errors a runner author sees: a permanent failure to raise, a configuration error to read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ConfigError", "PermanentError"]


class PermanentError(Exception):
    """Raised by ``process()`` (or ``validate()``) for a failure another attempt would repeat.

    The task fails with ``FAILURE_KIND_PERMANENT`` and is not retried. ``details`` (JSON-able)
    are added to the failure's details, next to the exception type::

        raise PermanentError("column 'amount' holds 'n/a' in row 3", details={"row": 3})
    """

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details: dict[str, Any] = dict(details or {})


class ConfigError(ValueError):
    """A setting of the runtime has a value it cannot use; the message names the setting
    (its environment variable) and what would be accepted."""
