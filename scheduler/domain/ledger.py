"""Session bookkeeping: what a batch of node changes does to their Sessions.

Each change appends one event to its Session's change log (the Watch stream) and moves the
Session's counters; a Session whose last open node becomes final ends, and that change is
logged too. The store locks the Session rows, calls ``book`` and writes what it returns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from scheduler.domain.sessions import NodeState, SessionState


@dataclass(frozen=True, slots=True)
class NodeChange:
    session_id: int
    idx: int
    old_state: NodeState
    state: NodeState
    attempt: int
    detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class SessionBook:
    """The bookkeeping columns of one locked Session row."""

    id: int
    name: str
    state: SessionState
    event_seq: int
    open_nodes: int
    failed_nodes: int
    cancelled_nodes: int
    start_time: datetime | None
    end_time: datetime | None = None
    state_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    session_id: int
    seq: int
    time: datetime
    idx: int | None
    state: str
    attempt: int
    detail: dict[str, Any] | None


def _final_state(book: SessionBook) -> SessionState:
    if book.failed_nodes:
        return SessionState.FAILED
    if book.cancelled_nodes:
        return SessionState.CANCELLED
    return SessionState.SUCCEEDED


def book(
    sessions: Mapping[int, SessionBook],
    changes: Iterable[NodeChange],
    now: datetime,
    *,
    cancel_reasons: Mapping[int, str] | None = None,
) -> tuple[list[SessionBook], list[Event]]:
    """The Sessions' new bookkeeping and the events to append, in sequence order."""
    books = dict(sessions)
    events: list[Event] = []
    touched: list[int] = []
    for change in changes:
        b = books[change.session_id]
        if change.session_id not in touched:
            touched.append(change.session_id)
        seq = b.event_seq + 1
        events.append(
            Event(b.id, seq, now, change.idx, change.state.value, change.attempt, change.detail)
        )
        closes = change.state.final and not change.old_state.final
        b = replace(
            b,
            event_seq=seq,
            open_nodes=b.open_nodes - closes,
            failed_nodes=b.failed_nodes + (closes and change.state is NodeState.FAILED),
            cancelled_nodes=b.cancelled_nodes + (closes and change.state is NodeState.CANCELLED),
        )
        books[change.session_id] = b
        if change.state is NodeState.RUNNING and b.state is SessionState.PENDING:
            started = replace(b, state=SessionState.RUNNING, start_time=b.start_time or now)
            books[change.session_id], event = _logged(started, now)
            events.append(event)
    for session_id, reason in (cancel_reasons or {}).items():
        if session_id not in touched:
            touched.append(session_id)
        b = books[session_id]
        if not b.state.final:
            ended = replace(b, state=SessionState.CANCELLED, end_time=now, state_reason=reason)
            books[session_id], event = _logged(ended, now)
            events.append(event)
    for session_id in touched:
        b = books[session_id]
        if b.open_nodes == 0 and not b.state.final:
            ended = replace(b, state=_final_state(b), end_time=now)
            books[session_id], event = _logged(ended, now)
            events.append(event)
    return [books[i] for i in touched], events


def _logged(b: SessionBook, now: datetime) -> tuple[SessionBook, Event]:
    """``b`` with its own state change appended to its change log."""
    seq = b.event_seq + 1
    detail = {"reason": b.state_reason} if b.state_reason else None
    return replace(b, event_seq=seq), Event(b.id, seq, now, None, b.state.value, 0, detail)
