"""The Sessions of the PostgreSQL store (sessions.sql): created whole, read, listed, cancelled."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

import asyncpg

from scheduler.domain import dag
from scheduler.domain.ports import Changes
from scheduler.domain.registry import RetryPolicy
from scheduler.domain.sessions import (
    NewSession,
    Node,
    NodeError,
    NodeRef,
    NodeState,
    Session,
    SessionCursor,
    SessionFilter,
    SessionState,
    StoredEvent,
    StoredSession,
)
from scheduler.store.bookkeeping import Books, doom
from scheduler.store.queries import JsonText, Statements

# The columns a new Session's nodes are copied into (in the order of insert's records).
NODE_COLUMNS: Final = (
    "session_id",
    "idx",
    "key",
    "node_template",
    "runner",
    "config",
    "upstream",
    "downstream",
    "waiting_on",
    "state",
    "max_attempts",
    "initial_backoff_ms",
    "max_backoff_ms",
    "backoff_multiplier",
    "attempt_timeout_ms",
    "ready_time",
    "files",
    "rank",
)


def _ms(value: timedelta) -> int:
    return round(value.total_seconds() * 1000)


class PgSessions:
    def __init__(self, db: Statements, changes: Changes) -> None:
        self._db = db
        self._changes = changes
        self._books = Books(db, changes)

    async def by_request_id(self, request_id: str) -> str | None:
        rows = await self._db.fetch("session_by_request_id", request_id)
        return rows[0]["name"] if rows else None

    async def insert(self, new: NewSession, now: datetime) -> int:
        (row,) = await self._db.fetch(
            "insert_session",
            new.name,
            new.session_template,
            new.parameters,
            new.labels,
            new.request_id,
            len(new.nodes),
            new.trace.trace_id,
            now,
            new.trace.traceparent,
            new.trace.tracestate,
            new.priority,
            new.fairness_key,
        )
        session_id: int = row["id"]
        nodes = new.nodes
        # Per Node Template: its configuration (shared by the nodes that override nothing)
        # encoded once, and its retry settings.
        encoded: dict[int, JsonText] = {}
        policies: dict[tuple[RetryPolicy, timedelta], tuple[int, int, int, float, int]] = {}
        records = []
        ready: set[str] = set()
        queued_at: dict[str, int] = {}  # Runner -> its nodes queued now
        for n in nodes:
            config = encoded.get(id(n.config))
            if config is None:
                config = encoded[id(n.config)] = JsonText(json.dumps(n.config))
            policy = policies.get((n.retry_policy, n.attempt_timeout))
            if policy is None:
                p = n.retry_policy
                policy = policies[(p, n.attempt_timeout)] = (
                    p.max_attempts,
                    _ms(p.initial_backoff),
                    _ms(p.max_backoff),
                    p.backoff_multiplier,
                    _ms(n.attempt_timeout),
                )
            state = n.state
            queued = state is NodeState.QUEUED
            queued_at[n.runner] = queued_at.get(n.runner, 0) + queued
            if queued:
                ready.add(n.runner)
            records.append(
                (
                    session_id,
                    n.idx,
                    n.key,
                    n.node_template,
                    n.runner,
                    config,
                    n.upstream,
                    n.downstream,
                    len(n.upstream),
                    state.value,
                    *policy,
                    now if queued else None,
                    n.files or None,
                    n.rank,
                )
            )
        await self._db.copy("insert_nodes", "nodes", NODE_COLUMNS, records)
        runners = sorted(queued_at)
        await self._db.fetch(
            "insert_queues",
            session_id,
            new.priority,
            new.fairness_key,
            runners,
            [queued_at[r] for r in runners],
        )
        self._changes.ready_runners |= ready
        return session_id

    async def get(
        self, name: str, *, with_nodes: bool, max_nodes: int = 1_000_000
    ) -> StoredSession | None:
        rows = await self._db.fetch("session_by_name", name)
        if not rows:
            return None
        row = rows[0]
        counts = await self._counts([row["id"]])
        nodes: tuple[Node, ...] = ()
        if with_nodes and row["node_count"] <= max_nodes:
            rows = await self._db.fetch("session_nodes", row["id"])
            keys = [n["key"] for n in rows]  # rows are in index order: idx i is keys[i]
            nodes = tuple(_node(n, keys) for n in rows)
        return StoredSession(row["id"], _session(row, counts.get(row["id"], {}), nodes))

    async def _counts(self, ids: Sequence[int]) -> dict[int, dict[NodeState, int]]:
        counts: dict[int, dict[NodeState, int]] = {}
        for row in await self._db.fetch("node_counts", list(ids)):
            counts.setdefault(row["session_id"], {})[NodeState(row["state"])] = row["n"]
        return counts

    async def page(
        self, where: SessionFilter, after: SessionCursor | None, limit: int
    ) -> list[StoredSession]:
        rows = await self._db.fetch(
            "list_sessions",
            after.create_time if after else None,
            after.id if after else None,
            limit,
            [s.value for s in where.states],
            where.session_template,
            where.create_time_after,
            where.create_time_before,
        )
        counts = await self._counts([r["id"] for r in rows])
        return [StoredSession(r["id"], _session(r, counts.get(r["id"], {}), ())) for r in rows]

    async def events_after(self, session_id: int, seq: int, limit: int) -> list[StoredEvent]:
        return [
            StoredEvent(
                seq=r["seq"],
                time=r["time"],
                state=r["state"],
                attempt=r["attempt"],
                detail=r["detail"],
                node_key=r["key"],
                node_template=r["node_template"],
                runner=r["runner"],
            )
            for r in await self._db.fetch("events_after", session_id, seq, limit)
        ]

    async def node(self, session_id: int, key: str) -> NodeRef | None:
        rows = await self._db.fetch("node_index", session_id, key)
        return NodeRef(rows[0]["idx"], NodeState(rows[0]["state"])) if rows else None

    async def count_by_state(self) -> dict[SessionState, int]:
        rows = await self._db.fetch("count_sessions_by_state")
        return {SessionState(r["state"]): r["n"] for r in rows}

    async def cancel(
        self, session_id: int, idxs: Sequence[int] | None, now: datetime, reason: str
    ) -> None:
        rows = await self._db.fetch(
            "cancel_nodes",
            session_id,
            None if idxs is None else list(idxs),
            NodeState.CANCELLED.value,
            now,
        )
        cancelled = [
            dag.CancelledNode(
                r["idx"], NodeState(r["old_state"]), r["attempt"], r["attempt_id"], r["runner"]
            )
            for r in rows
        ]
        changes = dag.cancelled(session_id, cancelled, reason)
        self._changes.cancelled_attempts += dag.interrupted(cancelled)
        whole = idxs is None
        changes += await doom(
            self._db, dag.cancel_doom(session_id, cancelled, whole_session=whole), now
        )
        await self._books.book(changes, now, cancel_reasons={session_id: reason} if whole else None)

    async def set_priority(self, session_id: int, priority: int) -> None:
        await self._db.fetch("set_priority", session_id, priority)


def _node(row: asyncpg.Record, keys: Sequence[str]) -> Node:
    state = NodeState(row["state"])
    return Node(
        key=row["key"],
        node_template=row["node_template"],
        runner=row["runner"],
        config=row["config"],
        depends_on=tuple(keys[i] for i in row["upstream"]),
        state=state,
        attempt=row["attempt"],
        outputs=row["outputs"],
        error=NodeError.from_json(row["error"]),
        ready_time=row["ready_time"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        next_attempt_time=row["not_before"] if state is NodeState.RETRY_WAIT else None,
        files=row["files"] or {},
    )


def _session(row: asyncpg.Record, counts: dict[NodeState, int], nodes: tuple[Node, ...]) -> Session:
    return Session(
        name=row["name"],
        session_template=row["session_template"],
        parameters=row["parameters"],
        state=SessionState(row["state"]),
        labels=row["labels"],
        node_counts=counts,
        create_time=row["create_time"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        state_reason=row["state_reason"],
        trace_id=row["trace_id"],
        nodes=nodes,
        event_seq=row["event_seq"],
        priority=row["priority"],
        fairness_key=row["fairness_key"],
    )
