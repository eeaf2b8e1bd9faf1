"""Session bookkeeping in the database: lock the touched Sessions, let the ledger decide, write
its decision (counters, states, change logs, queues) in one statement. And the one DAG step
both cancelling and settling take: marking what can no longer run.

Lock order, everywhere: node rows (by session, then index), then Session rows (by id), then
their queues (which only the holder of their Session's lock writes, so nobody waits on them).
Claims skip locked nodes; everything else waits in that order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from scheduler.domain import dag
from scheduler.domain.dispatch_order import MAX_DURATION_SAMPLES
from scheduler.domain.ledger import NodeChange, SessionBook, book, queue_moves
from scheduler.domain.ports import Changes
from scheduler.domain.sessions import NodeState, SessionState
from scheduler.domain.verdicts import RecordedVerdict
from scheduler.store.queries import Statements


def verdict_columns(verdicts: Sequence[RecordedVerdict], now: datetime) -> tuple[list[Any], ...]:
    """The parameters that remember ``verdicts`` (answers to repeated results), column by column,
    in the order every statement that writes them takes."""
    return (
        [v.node.attempt_id for v in verdicts],
        [v.node.session_id for v in verdicts],
        [v.node.idx for v in verdicts],
        [v.node.attempt for v in verdicts],
        [v.reply.status.value for v in verdicts],
        [v.reply.message for v in verdicts],
        [now] * len(verdicts),
        [v.outcome.value for v in verdicts],
    )


class Books:
    def __init__(self, db: Statements, changes: Changes) -> None:
        self._db = db
        self._changes = changes

    async def book(
        self,
        changes: Sequence[NodeChange],
        now: datetime,
        *,
        cancel_reasons: Mapping[int, str] | None = None,
        verdicts: Sequence[RecordedVerdict] = (),
    ) -> list[SessionBook]:
        """Log the changes, move the counters, end the Sessions that have nothing left open;
        with ``verdicts`` (a settlement's, to remember), in the same statement. Call it with
        changes when there are verdicts: without any it writes nothing."""
        ids = sorted({c.session_id for c in changes} | set(cancel_reasons or {}))
        if not ids:
            return []
        locked = {
            r["id"]: SessionBook(
                id=r["id"],
                name=r["name"],
                state=SessionState(r["state"]),
                event_seq=r["event_seq"],
                open_nodes=r["open_nodes"],
                failed_nodes=r["failed_nodes"],
                cancelled_nodes=r["cancelled_nodes"],
                start_time=r["start_time"],
            )
            for r in await self._db.fetch("lock_sessions", ids)
        }
        books, events = book(locked, changes, now, cancel_reasons=cancel_reasons)
        moves = queue_moves(changes)
        await self._db.fetch(
            "update_sessions",
            [b.id for b in books],
            [b.event_seq for b in books],
            [b.open_nodes for b in books],
            [b.failed_nodes for b in books],
            [b.cancelled_nodes for b in books],
            [b.state.value for b in books],
            [b.state_reason for b in books],
            [b.start_time for b in books],
            [b.end_time for b in books],
            [e.session_id for e in events],
            [e.seq for e in events],
            [e.time for e in events],
            [e.idx for e in events],
            [e.state for e in events],
            [e.attempt for e in events],
            [e.detail for e in events],
            *verdict_columns(verdicts, now),
            [m.session_id for m in moves],
            [m.runner for m in moves],
            [m.queued for m in moves],
            [m.dispatched for m in moves],
            [m.turns for m in moves],
            MAX_DURATION_SAMPLES,
            now,
        )
        self._changes.sessions |= {b.id for b in books}
        return books


async def doom(db: Statements, doomed: dag.Doom, now: datetime) -> list[NodeChange]:
    """Mark the open descendants of the doomed roots UPSTREAM_FAILED; the changes to log."""
    if not doomed.roots:
        return []
    rows = await db.fetch("descendants", doomed.session_id, list(doomed.roots))
    down = [r["idx"] for r in rows]
    if not down:
        return []
    marked = await db.fetch("mark_upstream_failed", [doomed.session_id] * len(down), down, now)
    return dag.upstream_failed(
        doomed.session_id,
        [dag.Marked(r["idx"], NodeState(r["old_state"]), r["runner"]) for r in marked],
        doomed.reason,
    )
