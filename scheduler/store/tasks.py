"""The tasks of the PostgreSQL store (tasks.sql): nodes as the runner protocol sees them.

Claims, settlements, lease extensions, expiries and retry promotions, each as few set-based
statements as the work allows. What a statement's rows mean for the DAG and the Sessions is
decided in ``scheduler.domain.dag`` and ``scheduler.domain.ledger``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta

from scheduler.domain import dag
from scheduler.domain.artifacts import task_inputs
from scheduler.domain.ledger import NodeChange, QueueMove, queue_moves
from scheduler.domain.ports import Changes, ClaimPlanner
from scheduler.domain.registry import RetryPolicy
from scheduler.domain.runner_protocol import AttemptState, ClaimedTask, ClaimRequest
from scheduler.domain.sessions import NodeState, TraceContext
from scheduler.domain.verdicts import (
    EarlierVerdict,
    ExpiredAttempt,
    ExpiryReason,
    HeldNode,
    OutcomeKind,
    RecordedVerdict,
    Reply,
    ResultStatus,
)
from scheduler.store.bookkeeping import Books, doom, verdict_columns
from scheduler.store.queries import Statements


class PgTasks:
    def __init__(self, db: Statements, changes: Changes) -> None:
        self._db = db
        self._changes = changes
        self._books = Books(db, changes)

    async def claim(self, request: ClaimRequest) -> list[ClaimedTask]:
        tasks, changes = await self._claim(request)
        await self._books.book(changes, request.now)
        return tasks

    async def claim_along(
        self, requests: Sequence[ClaimRequest], now: datetime
    ) -> list[list[ClaimedTask]]:
        claimed, changes = await self._claims(requests)
        await self._books.book(changes, now)
        return claimed

    async def _claims(
        self, requests: Sequence[ClaimRequest], pending: Sequence[QueueMove] = ()
    ) -> tuple[list[list[ClaimedTask]], list[NodeChange]]:
        """Several claims, and their changes for the books (which the caller writes); each
        sees the queues moved by ``pending`` (the transaction's changes not booked yet) and by
        the claims before it. A Runner whose queue a claim emptied needs nobody woken for it."""
        claimed: list[list[ClaimedTask]] = []
        changes: list[NodeChange] = []
        for request in requests:
            tasks, moved = await self._claim(request, [*pending, *queue_moves(changes)])
            claimed.append(tasks)
            changes += moved
        self._changes.ready_runners -= dag.drained(
            (r.runner, r.templates, len(r.owners), len(t))
            for r, t in zip(requests, claimed, strict=True)
        )
        return claimed, changes

    async def _claim(
        self, request: ClaimRequest, pending: Sequence[QueueMove] = ()
    ) -> tuple[list[ClaimedTask], list[NodeChange]]:
        """The claim, and its changes for the books (which the caller writes); ``pending``:
        the queue moves of this transaction that are not booked yet."""
        policy = request.policy
        pending = [m for m in pending if m.runner == request.runner and m.queued]
        rows = await self._db.fetch(
            "claim",
            request.runner,
            len(request.owners),
            list(request.owners),
            request.lease_deadline,
            request.now,
            None if request.templates is None else list(request.templates),
            request.max_attempt_timeout // timedelta(milliseconds=1),
            request.max_inputs_bytes,
            [key for key, _ in policy.weights],
            [weight for _, weight in policy.weights],
            policy.strict_priority,
            policy.priority_ratio,
            policy.quantum,
            [m.session_id for m in pending],
            [m.runner for m in pending],
            [m.queued for m in pending],
        )
        if not rows:
            return [], []
        rows.sort(key=lambda r: (r["session_id"], r["idx"]))
        moved = [
            dag.Moved(r["session_id"], r["idx"], r["attempt"], request.runner, r["turns"])
            for r in rows
        ]
        tasks = [
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
                # None: too heavy to send (the dispatch fails the node); files add references.
                inputs=None if r["inputs"] is None else task_inputs(r["inputs"], r["files"]),
                parameters=r["parameters"],
                runner=request.runner,
                trace=TraceContext(r["traceparent"], r["tracestate"]),
                ready_time=r["ready_time"],
                inputs_bytes=r["inputs_bytes"],
                heartbeat_interval=request.heartbeat_interval,
            )
            for r in rows
        ]
        return tasks, dag.claimed(moved)

    async def held(self, attempt_ids: Sequence[str]) -> dict[str, HeldNode]:
        rows = await self._db.fetch("held_nodes", list(attempt_ids))
        return {
            r["attempt_id"]: HeldNode(
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
                downstream=tuple(r["downstream"]),
                started=r["start_time"],
                trace=TraceContext(r["traceparent"] or ""),
            )
            for r in rows
        }

    async def earlier_verdicts(self, attempt_ids: Sequence[str]) -> dict[str, EarlierVerdict]:
        rows = await self._db.fetch("earlier_verdicts", list(attempt_ids))
        return {
            r["attempt_id"]: EarlierVerdict(
                Reply(ResultStatus(r["status"]), r["message"]),
                OutcomeKind(r["outcome"]) if r["outcome"] else None,
            )
            for r in rows
        }

    async def settle(
        self, settlement: dag.Settlement, now: datetime, claims: ClaimPlanner | None = None
    ) -> list[list[ClaimedTask]]:
        changes: list[NodeChange] = []
        ready: set[str] = set()
        if settlement.writes:
            changes, ready = await self._apply(settlement, now)
        claimed: list[list[ClaimedTask]] = []
        if claims is not None:
            # The claims see the queues the books will write: a Session whose queue was empty
            # and got a node ready here is dispatched in its turn now, not at the next claim.
            claimed, moved = await self._claims(claims(ready), queue_moves(changes))
            changes += moved
        # The books last, once: Session rows are locked after every node row, in id order;
        # the verdicts go in with them (or alone when nothing changed).
        if changes:
            await self._books.book(changes, now, verdicts=settlement.verdicts)
        else:
            await self._remember(settlement.verdicts, now)
        if settlement.retry_at is not None:
            self._changes.deadlines.append(settlement.retry_at)
        return claimed

    async def _apply(
        self, settlement: dag.Settlement, now: datetime
    ) -> tuple[list[NodeChange], set[str]]:
        """The held nodes' new states, then what depends on them: the changes to book, and the
        Runners that got work ready."""
        writes = settlement.writes
        await self._db.fetch(
            "settle_nodes",
            [w.node.session_id for w in writes],
            [w.node.idx for w in writes],
            [w.state.value for w in writes],
            [json.dumps(w.outputs) if w.state is NodeState.SUCCEEDED else None for w in writes],
            [w.error.as_json() if w.error else None for w in writes],
            [w.not_before for w in writes],
            [w.node.attempt_id for w in writes],
            now,
            [w.outputs_bytes for w in writes],
        )
        changes = list(settlement.changes)
        ready = set(settlement.ready_runners)
        if settlement.released:
            rows = await self._db.fetch(
                "release_upstream",
                [k.session_id for k in settlement.released],
                [k.idx for k in settlement.released],
                now,
            )
            became, runners = dag.became_ready(
                dag.ReleasedChild(r["session_id"], r["idx"], NodeState(r["state"]), r["runner"])
                for r in rows
            )
            changes += became
            ready |= runners
        for doomed in settlement.doomed:
            changes += await doom(self._db, doomed, now)
        self._changes.ready_runners |= ready
        return changes, ready

    async def _remember(self, verdicts: Sequence[RecordedVerdict], now: datetime) -> None:
        if not verdicts:
            return
        await self._db.fetch("insert_verdicts", *verdict_columns(verdicts, now))

    async def extend_leases(
        self, runner: str, attempt_ids: Sequence[str], deadline: datetime, now: datetime
    ) -> set[str]:
        rows = await self._db.fetch("extend_leases", list(attempt_ids), deadline, runner, now)
        return {r["attempt_id"] for r in rows}

    async def attempt_states(self, attempt_ids: Sequence[str]) -> dict[str, AttemptState]:
        rows = await self._db.fetch("attempt_states", list(attempt_ids))
        return {
            r["attempt_id"]: AttemptState(NodeState(r["state"]), r["lease_deadline"], r["runner"])
            for r in rows
        }

    async def expire_leases_of(self, instance_ids: Sequence[str], now: datetime) -> int:
        if not instance_ids:
            return 0
        (row,) = await self._db.fetch("expire_leases_of", list(instance_ids), now)
        count: int = row["n"]
        if count:
            self._changes.deadlines.append(None)
        return count

    async def expired(self, now: datetime, limit: int) -> list[ExpiredAttempt]:
        rows = await self._db.fetch("expired_attempts", now, limit)
        return [
            ExpiredAttempt(
                r["attempt_id"],
                ExpiryReason(r["why"]),
                timedelta(milliseconds=r["attempt_timeout_ms"]),
            )
            for r in rows
        ]

    async def promote_due_retries(self, now: datetime, limit: int) -> int:
        rows = await self._db.fetch("due_retries", now, limit)
        moved = [dag.Moved(r["session_id"], r["idx"], r["attempt"], r["runner"]) for r in rows]
        await self._books.book(dag.requeued(moved), now)
        self._changes.ready_runners |= {r["runner"] for r in rows}
        return len(rows)

    async def next_deadline(self) -> datetime | None:
        (row,) = await self._db.fetch("next_deadline")
        at: datetime | None = row["at"]
        return at
