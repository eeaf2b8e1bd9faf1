"""Session bookkeeping: what a batch of node changes does to their Sessions.

Each change appends one event to its Session's change log (the Watch stream) and moves the
Session's counters; a Session whose last open node becomes final ends, and that change is
logged too. Changes into or out of QUEUED move the Session's queue at the node's Runner (the
queues the claim shares a Runner by, ``dispatch_order``); a claim also charges the queue the
virtual time of its turns. The store locks the Session rows, calls ``book`` and writes what it
returns.
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
    runner: str = ""  # needed when the change moves the node into or out of QUEUED
    turns: float = 0.0  # a claim's charge to its queue (virtual time)


@dataclass(frozen=True, slots=True)
class QueueMove:
    """What a batch of changes does to one Session's queue at one Runner."""

    session_id: int
    runner: str
    queued: int  # tasks that joined (+) or left (-) the queue
    dispatched: int
    turns: float


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


@dataclass(slots=True)
class _Tally:
    """One Session's bookkeeping while a batch is booked: counters move in place (a frozen
    SessionBook replaced per change costs more than the rest of booking it)."""

    book: SessionBook  # state, times and reason as of its last state change
    seq: int
    open: int
    failed: int
    cancelled: int

    @classmethod
    def of(cls, b: SessionBook) -> _Tally:
        return cls(b, b.event_seq, b.open_nodes, b.failed_nodes, b.cancelled_nodes)

    def current(self) -> SessionBook:
        b = self.book
        if (b.event_seq, b.open_nodes, b.failed_nodes, b.cancelled_nodes) != (
            self.seq,
            self.open,
            self.failed,
            self.cancelled,
        ):
            b = replace(
                b,
                event_seq=self.seq,
                open_nodes=self.open,
                failed_nodes=self.failed,
                cancelled_nodes=self.cancelled,
            )
        return b

    def logged(self, b: SessionBook, now: datetime) -> Event:
        """``b`` (a state change of the current book) appended to the change log."""
        self.book, event = _logged(b, now)
        self.seq = self.book.event_seq
        return event


def book(
    sessions: Mapping[int, SessionBook],
    changes: Iterable[NodeChange],
    now: datetime,
    *,
    cancel_reasons: Mapping[int, str] | None = None,
) -> tuple[list[SessionBook], list[Event]]:
    """The Sessions' new bookkeeping and the events to append, in sequence order."""
    tallies: dict[int, _Tally] = {}  # the touched Sessions, in the order first touched
    events: list[Event] = []
    for change in changes:
        t = tallies.get(change.session_id)
        if t is None:
            t = tallies[change.session_id] = _Tally.of(sessions[change.session_id])
        t.seq += 1
        events.append(
            Event(
                t.book.id, t.seq, now, change.idx, change.state.value, change.attempt, change.detail
            )
        )
        if change.state.final and not change.old_state.final:
            t.open -= 1
            t.failed += change.state is NodeState.FAILED
            t.cancelled += change.state is NodeState.CANCELLED
        if change.state is NodeState.RUNNING and t.book.state is SessionState.PENDING:
            b = t.current()
            started = replace(b, state=SessionState.RUNNING, start_time=b.start_time or now)
            events.append(t.logged(started, now))
    for session_id, reason in (cancel_reasons or {}).items():
        t = tallies.get(session_id)
        if t is None:
            t = tallies[session_id] = _Tally.of(sessions[session_id])
        if not t.book.state.final:
            ended = replace(
                t.current(), state=SessionState.CANCELLED, end_time=now, state_reason=reason
            )
            events.append(t.logged(ended, now))
    for t in tallies.values():
        if t.open == 0 and not t.book.state.final:
            b = t.current()
            events.append(t.logged(replace(b, state=_final_state(b), end_time=now), now))
    return [t.current() for t in tallies.values()], events


def queue_moves(changes: Iterable[NodeChange]) -> list[QueueMove]:
    """The queues the changes move, in (Session, Runner) order."""
    moves: dict[tuple[int, str], QueueMove] = {}
    for change in changes:
        joins = change.state is NodeState.QUEUED and change.old_state is not NodeState.QUEUED
        leaves = change.old_state is NodeState.QUEUED and change.state is not NodeState.QUEUED
        if not (joins or leaves):
            continue
        if not change.runner:
            raise ValueError(f"a change into or out of QUEUED without its Runner: {change}")
        key = (change.session_id, change.runner)
        move = moves.get(key) or QueueMove(change.session_id, change.runner, 0, 0, 0.0)
        dispatched = leaves and change.state is NodeState.RUNNING
        moves[key] = replace(
            move,
            queued=move.queued + (1 if joins else -1),
            dispatched=move.dispatched + dispatched,
            turns=move.turns + change.turns,
        )
    return [moves[k] for k in sorted(moves)]


def _logged(b: SessionBook, now: datetime) -> tuple[SessionBook, Event]:
    """``b`` with its own state change appended to its change log."""
    seq = b.event_seq + 1
    detail = {"reason": b.state_reason} if b.state_reason else None
    return replace(b, event_seq=seq), Event(b.id, seq, now, None, b.state.value, 0, detail)
