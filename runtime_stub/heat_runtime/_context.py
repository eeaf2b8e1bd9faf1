"""The task a processor is working on, through a context variable."""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["TaskInfo", "current_task"]


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """What a processor may want to know about the attempt it is running."""

    attempt_id: str
    """Fencing token of this attempt (unique per attempt: use it to make side effects
    idempotent)."""
    session: str
    """Name of the Session."""
    node_key: str
    """Key of the node within the Session."""
    node_template: str
    """Node Template being processed."""
    attempt: int
    """Attempt number, from 1."""
    parameters: Mapping[str, Any]
    """The Session's parameters, as plain values."""
    trace_context: Mapping[str, str]
    """W3C trace context (``traceparent``, ``tracestate``) of the Session's trace."""
    attempt_deadline: datetime | None
    """When the attempt times out (UTC), if the scheduler set a deadline."""


_CURRENT: contextvars.ContextVar[TaskInfo] = contextvars.ContextVar("heat_runtime_task")


def current_task() -> TaskInfo:
    """The task being processed, from inside ``validate()``/``process()`` (and any coroutine or
    task they start). Raises ``LookupError`` when called outside a task."""
    try:
        return _CURRENT.get()
    except LookupError:
        raise LookupError(
            "current_task() was called outside a task; call it from validate() or process()"
        ) from None


def set_current(info: TaskInfo) -> None:
    """Make ``info`` the current task of the running context (the attempt's own task)."""
    _CURRENT.set(info)
