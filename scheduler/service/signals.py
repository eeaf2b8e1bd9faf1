"""In-process wake-ups: the ChangeFeed the store announces commits to (this replica's at once,
the other replicas' as they arrive).

Nothing here polls: waiters block on asyncio events, or are called back, when a commit says
what they wait for has changed.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime

from scheduler.domain.ports import Changes


class Signals:
    def __init__(self) -> None:
        self._ready: dict[str, set[Callable[[], None]]] = defaultdict(set)
        self._any_ready: set[Callable[[], None]] = set()
        self._sessions: dict[int, set[asyncio.Event]] = defaultdict(set)
        self._any_session: set[asyncio.Event] = set()
        self._cancel: set[Callable[[list[str]], None]] = set()
        self._deadline: set[Callable[[datetime | None], None]] = set()
        self.closing = False

    # -- the ChangeFeed ------------------------------------------------------------------------

    def changed(self, changes: Changes) -> None:
        self.ready(changes.ready_runners)
        self.sessions_changed(changes.sessions)
        self.cancelled(changes.cancelled_attempts)
        for at in changes.deadlines:
            for callback in list(self._deadline):
                callback(at)

    def missed(self) -> None:
        """Notifications may have been missed: every waiter looks again."""
        self.ready_all()
        self.all_sessions_changed()

    # -- a Runner has claimable work -------------------------------------------------------------

    def on_ready(self, runner: str, callback: Callable[[], None]) -> Callable[[], None]:
        self._ready[runner].add(callback)
        return lambda: self._ready[runner].discard(callback)

    def on_any_ready(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._any_ready.add(callback)
        return lambda: self._any_ready.discard(callback)

    def ready(self, runners: Iterable[str]) -> None:
        woke = False
        for runner in runners:
            woke = True
            for callback in list(self._ready.get(runner, ())):
                callback()
        if woke:
            for callback in list(self._any_ready):
                callback()

    def ready_all(self) -> None:
        """After missed notifications (LISTEN reconnected): every dispatcher looks again."""
        for callbacks in list(self._ready.values()):
            for callback in list(callbacks):
                callback()
        for callback in list(self._any_ready):
            callback()

    # -- a Session changed -----------------------------------------------------------------------

    def watch_session(self, session_id: int) -> asyncio.Event:
        event = asyncio.Event()
        self._sessions[session_id].add(event)
        return event

    def unwatch_session(self, session_id: int, event: asyncio.Event) -> None:
        waiters = self._sessions.get(session_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._sessions[session_id]

    def watch_any_session(self) -> asyncio.Event:
        event = asyncio.Event()
        self._any_session.add(event)
        return event

    def unwatch_any_session(self, event: asyncio.Event) -> None:
        self._any_session.discard(event)

    def sessions_changed(self, session_ids: Iterable[int]) -> None:
        for session_id in session_ids:
            for event in self._sessions.get(session_id, ()):
                event.set()
        for event in self._any_session:
            event.set()

    def all_sessions_changed(self) -> None:
        self.sessions_changed(list(self._sessions))

    def close(self) -> None:
        """Shutting down: end every Watch now (clients resume from their cursor elsewhere)."""
        self.closing = True
        self.all_sessions_changed()

    # -- attempts were cancelled -----------------------------------------------------------------

    def on_cancel(self, callback: Callable[[list[str]], None]) -> Callable[[], None]:
        self._cancel.add(callback)
        return lambda: self._cancel.discard(callback)

    def cancelled(self, attempt_ids: list[str]) -> None:
        if attempt_ids:
            for callback in list(self._cancel):
                callback(attempt_ids)

    # -- a deadline was written ------------------------------------------------------------------

    def on_deadline(self, callback: Callable[[datetime | None], None]) -> Callable[[], None]:
        self._deadline.add(callback)
        return lambda: self._deadline.discard(callback)

    def deadline_written(self, at: datetime | None) -> None:
        """A deadline at ``at`` (None: due now) that only this replica has heard of."""
        for callback in list(self._deadline):
            callback(at)
