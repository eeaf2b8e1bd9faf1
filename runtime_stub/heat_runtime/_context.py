"""The task a processor is working on, through a context variable."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    """W3C trace context (``traceparent``, ``tracestate``) of the scheduler's dispatch span of
    this attempt, in the Session's trace (empty when nothing traces it)."""
    attempt_deadline: datetime | None
    """When the attempt times out (UTC), if the scheduler set a deadline."""
    stop_event: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    """Set when the runtime stops the attempt (see ``stop_requested()``)."""

    def stop_requested(self) -> bool:
        """Whether the runtime has stopped this attempt: the task was cancelled, its lease
        lost, its attempt deadline passed, or a drain handed it back. An async hook is
        cancelled then; a synchronous one (running in a thread) cannot be, so a long one
        should check this now and then and return early; its result is discarded anyway."""
        return self.stop_event.is_set()

    def wait_for_stop(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` seconds until the attempt is stopped; True if it was. For a
        synchronous hook, in place of ``time.sleep()``."""
        return self.stop_event.wait(timeout)


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
