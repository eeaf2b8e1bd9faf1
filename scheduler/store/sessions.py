"""The Session half of the PostgreSQL store: the DAG engine's tables, one SessionTx per transaction.

Lock order, everywhere: node rows (by session, then index, which is topological), then
Session rows (by id). Claims skip locked nodes; everything else waits in that order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import asyncpg

from scheduler.domain.ledger import NodeChange, SessionBook, book
from scheduler.domain.registry import RetryPolicy
from scheduler.domain.sessions import (
    ClaimedTask,
    HeldNode,
    NewSession,
    Node,
    NodeError,
    NodeState,
    Session,
    SessionFilter,
    SessionState,
    Settled,
    StoredEvent,
)
from scheduler.store.queries import Tx

READY_CHANNEL: Final = "heat_ready"
SESSION_CHANNEL: Final = "heat_session"
CANCEL_CHANNEL: Final = "heat_cancel"
# NOTIFY payloads are limited to 8000 bytes; attempt ids are 36 characters.
_CANCEL_IDS_PER_NOTIFY: Final = 150


def _ms(value: timedelta) -> int:
    return round(value.total_seconds() * 1000)


class PgSessionTx(Tx):
    def __init__(self, conn: asyncpg.Connection) -> None:
        super().__init__(conn)
        self._ready_runners: set[str] = set()
        self._sessions_changed: set[int] = set()
        self._cancelled: list[str] = []

    # -- creating and reading Sessions ---------------------------------------------------------

    async def session_by_request_id(self, request_id: str) -> str | None:
        rows = await self._fetch("session_by_request_id", request_id)
        return rows[0]["name"] if rows else None

    async def insert_session(self, new: NewSession, now: datetime) -> int:
        (row,) = await self._fetch(
            "insert_session",
            new.name,
            new.session_template,
            new.parameters,
            new.labels,
            new.request_id,
            len(new.nodes),
            new.trace_id,
            now,
        )
        session_id: int = row["id"]
        nodes = new.nodes
        await self._fetch(
            "insert_nodes",
            session_id,
            now,
            [n.idx for n in nodes],
            [n.key for n in nodes],
            [n.node_template for n in nodes],
            [n.runner for n in nodes],
            [n.config for n in nodes],
            ["{" + ",".join(map(str, n.upstream)) + "}" for n in nodes],
            ["{" + ",".join(map(str, n.downstream)) + "}" for n in nodes],
            [n.retry_policy.max_attempts for n in nodes],
            [_ms(n.retry_policy.initial_backoff) for n in nodes],
            [_ms(n.retry_policy.max_backoff) for n in nodes],
            [n.retry_policy.backoff_multiplier for n in nodes],
            [_ms(n.attempt_timeout) for n in nodes],
        )
        self._ready_runners |= {n.runner for n in nodes if not n.upstream}
        return session_id

    async def session(
        self, name: str, *, with_nodes: bool, max_nodes: int = 1_000_000
    ) -> tuple[int, Session] | None:
        rows = await self._fetch("session_by_name", name)
        if not rows:
            return None
        row = rows[0]
        counts = await self._counts([row["id"]])
        nodes: tuple[Node, ...] = ()
        if with_nodes and row["node_count"] <= max_nodes:
            rows = await self._fetch("session_nodes", row["id"])
            keys = [n["key"] for n in rows]  # rows are in index order: idx i is keys[i]
            nodes = tuple(_node(n, keys) for n in rows)
        return row["id"], _session(row, counts.get(row["id"], {}), nodes)

    async def _counts(self, ids: Sequence[int]) -> dict[int, dict[NodeState, int]]:
        counts: dict[int, dict[NodeState, int]] = {}
        for row in await self._fetch("node_counts", list(ids)):
            counts.setdefault(row["session_id"], {})[NodeState(row["state"])] = row["n"]
        return counts

    async def list_sessions(
        self, where: SessionFilter, after: tuple[datetime, int] | None, limit: int
    ) -> list[tuple[int, Session]]:
        rows = await self._fetch(
            "list_sessions",
            after[0] if after else None,
            after[1] if after else None,
            limit,
            [s.value for s in where.states],
            where.session_template,
            where.create_time_after,
            where.create_time_before,
        )
        counts = await self._counts([r["id"] for r in rows])
        return [(r["id"], _session(r, counts.get(r["id"], {}), ())) for r in rows]

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
            for r in await self._fetch("events_after", session_id, seq, limit)
        ]

    # -- cancelling ----------------------------------------------------------------------------

    async def node_index(self, session_id: int, key: str) -> tuple[int, NodeState] | None:
        rows = await self._fetch("node_index", session_id, key)
        return (rows[0]["idx"], NodeState(rows[0]["state"])) if rows else None

    async def cancel(
        self, session_id: int, idxs: Sequence[int] | None, now: datetime, reason: str
    ) -> None:
        """Cancel a whole Session (``idxs`` None) or some of its nodes and what depends on them."""
        rows = await self._fetch(
            "cancel_nodes",
            session_id,
            None if idxs is None else list(idxs),
            NodeState.CANCELLED.value,
            now,
        )
        detail = {"reason": reason} if reason else None
        changes = [
            NodeChange(
                session_id,
                r["idx"],
                NodeState(r["old_state"]),
                NodeState.CANCELLED,
                r["attempt"],
                detail,
            )
            for r in rows
        ]
        self._cancelled += [
            r["attempt_id"] for r in rows if r["old_state"] == NodeState.RUNNING.value
        ]
        if idxs is not None:
            changes += await self._upstream_failed(
                session_id, [r["idx"] for r in rows], now, reason="an upstream node was cancelled"
            )
        await self.book(changes, now, cancel_reasons={session_id: reason} if idxs is None else None)

    async def _upstream_failed(
        self, session_id: int, roots: Sequence[int], now: datetime, reason: str
    ) -> list[NodeChange]:
        if not roots:
            return []
        down = [r["idx"] for r in await self._fetch("descendants", session_id, list(roots))]
        if not down:
            return []
        marked = await self._fetch("mark_upstream_failed", [session_id] * len(down), down, now)
        return [
            NodeChange(
                session_id,
                r["idx"],
                NodeState.WAITING,
                NodeState.UPSTREAM_FAILED,
                0,
                {"reason": reason},
            )
            for r in marked
        ]

    # -- bookkeeping ---------------------------------------------------------------------------

    async def book(
        self,
        changes: Sequence[NodeChange],
        now: datetime,
        *,
        cancel_reasons: Mapping[int, str] | None = None,
    ) -> list[SessionBook]:
        """Lock the touched Sessions, log the changes, move counters, end finished Sessions."""
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
            for r in await self._fetch("lock_sessions", ids)
        }
        books, events = book(locked, changes, now, cancel_reasons=cancel_reasons)
        await self._fetch(
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
        )
        self._sessions_changed |= {b.id for b in books}
        return books

    async def notify(self) -> Settled:
        """Queue NOTIFYs for what this transaction changed; they go out at commit."""
        messages = [(READY_CHANNEL, r) for r in sorted(self._ready_runners)]
        messages += [(SESSION_CHANNEL, str(i)) for i in sorted(self._sessions_changed)]
        messages += [
            (CANCEL_CHANNEL, ",".join(self._cancelled[i : i + _CANCEL_IDS_PER_NOTIFY]))
            for i in range(0, len(self._cancelled), _CANCEL_IDS_PER_NOTIFY)
        ]
        if messages:
            await self._fetch("notify", [c for c, _ in messages], [p for _, p in messages])
        return Settled(set(self._ready_runners), set(self._sessions_changed), list(self._cancelled))

    # -- the runner protocol -------------------------------------------------------------------

    async def claim(
        self,
        runner: str,
        templates: Sequence[str] | None,
        owners: Sequence[str],
        lease_deadline: datetime,
        now: datetime,
    ) -> list[ClaimedTask]:
        rows = await self._fetch(
            "claim",
            runner,
            len(owners),
            list(owners),
            lease_deadline,
            now,
            None if templates is None else list(templates),
        )
        if not rows:
            return []
        rows.sort(key=lambda r: (r["session_id"], r["idx"]))
        await self.book(
            [
                NodeChange(
                    r["session_id"], r["idx"], NodeState.QUEUED, NodeState.RUNNING, r["attempt"]
                )
                for r in rows
            ],
            now,
        )
        return [
            ClaimedTask(
                session_id=r["session_id"],
                session=r["session_name"],
                idx=r["idx"],
                node_key=r["key"],
                node_template=r["node_template"],
                attempt=r["attempt"],
                attempt_id=r["attempt_id"],
                owner=r["lease_owner"],
                lease_deadline=r["lease_deadline"],
                attempt_deadline=r["attempt_deadline"],
                config=r["config"],
                inputs=r["inputs"],
                parameters=r["parameters"],
                trace_id=r["trace_id"],
            )
            for r in rows
        ]

    async def held_nodes(self, attempt_ids: Sequence[str]) -> dict[str, tuple[HeldNode, list[int]]]:
        rows = await self._fetch("held_nodes", list(attempt_ids))
        return {
            r["attempt_id"]: (
                HeldNode(
                    session_id=r["session_id"],
                    idx=r["idx"],
                    runner=r["runner"],
                    state=NodeState(r["state"]),
                    attempt=r["attempt"],
                    attempt_id=r["attempt_id"],
                    policy=RetryPolicy(
                        max_attempts=r["max_attempts"],
                        initial_backoff=timedelta(milliseconds=r["initial_backoff_ms"]),
                        max_backoff=timedelta(milliseconds=r["max_backoff_ms"]),
                        backoff_multiplier=r["backoff_multiplier"],
                    ),
                ),
                list(r["downstream"]),
            )
            for r in rows
        }

    async def earlier_verdicts(self, attempt_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        rows = await self._fetch("earlier_verdicts", list(attempt_ids))
        return {r["attempt_id"]: (r["status"], r["message"]) for r in rows}

    async def record_verdicts(
        self, verdicts: Iterable[tuple[HeldNode, str, str]], now: datetime
    ) -> None:
        rows = list(verdicts)
        if not rows:
            return
        await self._fetch(
            "insert_verdicts",
            [n.attempt_id for n, _, _ in rows],
            [n.session_id for n, _, _ in rows],
            [n.idx for n, _, _ in rows],
            [n.attempt for n, _, _ in rows],
            [status for _, status, _ in rows],
            [message for _, _, message in rows],
            [now] * len(rows),
        )

    async def settle(
        self,
        settled: Sequence[tuple[HeldNode, NodeState, Any, NodeError | None, datetime | None]],
        downstream: Mapping[str, list[int]],
        now: datetime,
    ) -> None:
        """Apply new states to held nodes, then release or fail what depends on them."""
        if not settled:
            return
        await self._fetch(
            "settle_nodes",
            [n.session_id for n, *_ in settled],
            [n.idx for n, *_ in settled],
            [state.value for _, state, *_ in settled],
            [
                json.dumps(outputs) if state is NodeState.SUCCEEDED else None
                for _, state, outputs, *_ in settled
            ],
            [error.as_json() if error else None for *_, error, _ in settled],
            [not_before for *_, not_before in settled],
            [n.attempt_id for n, *_ in settled],
            now,
        )
        changes = [
            NodeChange(
                n.session_id,
                n.idx,
                NodeState.RUNNING,
                state,
                n.attempt - (state is NodeState.QUEUED),
                error.as_json() if error else None,
            )
            for n, state, _, error, _ in settled
        ]
        self._ready_runners |= {n.runner for n, state, *_ in settled if state is NodeState.QUEUED}
        children = [
            (n.session_id, child)
            for n, state, *_ in settled
            if state is NodeState.SUCCEEDED
            for child in downstream[n.attempt_id]
        ]
        if children:
            released = await self._fetch(
                "release_upstream", [s for s, _ in children], [c for _, c in children], now
            )
            for r in released:
                if r["state"] == NodeState.QUEUED.value:
                    changes.append(
                        NodeChange(
                            r["session_id"], r["idx"], NodeState.WAITING, NodeState.QUEUED, 0
                        )
                    )
                    self._ready_runners.add(r["runner"])
        failed_roots: dict[int, list[int]] = {}
        for n, state, *_ in settled:
            if state is NodeState.FAILED:
                failed_roots.setdefault(n.session_id, []).append(n.idx)
        for session_id, roots in failed_roots.items():
            changes += await self._upstream_failed(
                session_id, roots, now, reason="an upstream node failed"
            )
        await self.book(changes, now)

    async def extend_leases(
        self, runner: str, attempt_ids: Sequence[str], deadline: datetime
    ) -> set[str]:
        rows = await self._fetch("extend_leases", list(attempt_ids), deadline, runner)
        return {r["attempt_id"] for r in rows}

    async def attempt_states(
        self, attempt_ids: Sequence[str]
    ) -> dict[str, tuple[NodeState, datetime | None, str]]:
        rows = await self._fetch("attempt_states", list(attempt_ids))
        return {
            r["attempt_id"]: (NodeState(r["state"]), r["lease_deadline"], r["runner"]) for r in rows
        }

    async def expired_attempts(self, now: datetime, limit: int) -> list[tuple[str, str, int]]:
        rows = await self._fetch("expired_attempts", now, limit)
        return [(r["attempt_id"], r["why"], r["attempt_timeout_ms"]) for r in rows]

    async def promote_due_retries(self, now: datetime, limit: int) -> int:
        rows = await self._fetch("due_retries", now, limit)
        await self.book(
            [
                NodeChange(
                    r["session_id"], r["idx"], NodeState.RETRY_WAIT, NodeState.QUEUED, r["attempt"]
                )
                for r in sorted(rows, key=lambda r: (r["session_id"], r["idx"]))
            ],
            now,
        )
        self._ready_runners |= {r["runner"] for r in rows}
        return len(rows)

    async def next_deadline(self) -> datetime | None:
        (row,) = await self._fetch("next_deadline")
        at: datetime | None = row["at"]
        return at

    async def runner_of_credential(self, secret_hash: bytes) -> str | None:
        rows = await self._fetch("runner_of_credential", secret_hash)
        return rows[0]["runner"] if rows else None

    async def runner_enabled(self, runner: str) -> bool | None:
        rows = await self._fetch("runner_enabled", runner)
        return rows[0]["enabled"] if rows else None

    async def queued_runners(self) -> list[str]:
        return [r["runner"] for r in await self._fetch("queued_runners")]


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
    )
