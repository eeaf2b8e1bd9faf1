"""Leases: heartbeats, lease extension, and what Heartbeat streams are told unprompted
(cancellations, drains).

Liveness stays in memory: a heartbeat costs no database write while the lease in PostgreSQL
still has more than half its duration left. Only then is it pushed out, for every due attempt
of every stream in one statement (group commit). This replica remembers which instance holds
each attempt it knows of, so a cancellation reaches the holder's Heartbeat stream at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Final

from scheduler.domain.clock import Clock
from scheduler.domain.ports import Store
from scheduler.domain.runner_protocol import (
    LOST,
    Cancellation,
    ClaimedTask,
    Drain,
    HeartbeatReply,
    Lease,
    LeaseState,
    lease_due,
    lease_state,
)
from scheduler.service.batcher import Batcher
from scheduler.service.runner_protocol.authorisation import Authorisation
from scheduler.service.runner_protocol.settings import ProtocolSettings

Push = Callable[[HeartbeatReply], None]

# Past these sizes the memory is pruned: leases long run out, cancellations long heard.
_PRUNE_LEASES_AT: Final = 50_000
_PRUNE_CANCELLED_AT: Final = 100_000


class Leases:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: ProtocolSettings,
        authorisation: Authorisation,
        *,
        drain_of: Callable[[str], Drain | None],
        released: Callable[[str, str], None],
    ) -> None:
        """``drain_of(instance_id)``: the drain an instance was told, if any;
        ``released(instance_id, attempt_id)``: the instance no longer holds the attempt."""
        self._store = store
        self._clock = clock
        self._settings = settings
        self._authorisation = authorisation
        self._drain_of = drain_of
        self._released = released
        # Which instance holds an attempt, and where its Heartbeat stream takes pushes; a
        # Heartbeat stream may outlive the ClaimTask stream (an instance draining).
        self._holder: dict[str, str] = {}
        self._pushes: dict[str, Push] = {}
        self._known: dict[str, datetime] = {}
        self._cancelled: dict[str, str] = {}
        self._extend: Batcher[tuple[str, str], LeaseState] = Batcher(
            self._flush, max_batch=settings.max_result_batch
        )

    async def stop(self) -> None:
        await self._extend.close()

    # -- what this replica handed out and took back ----------------------------------------

    def leased(self, tasks: Sequence[ClaimedTask], now: datetime) -> None:
        """Leases written by a claim (whoever ends up holding them)."""
        for task in tasks:
            self._known[task.attempt_id] = task.lease_deadline
        if len(self._known) > _PRUNE_LEASES_AT:
            self._prune(now)

    def hold(self, attempt_id: str, instance_id: str) -> None:
        self._holder[attempt_id] = instance_id

    def forget(self, attempt_id: str) -> None:
        """The attempt was settled: nothing about it will come here again."""
        self._known.pop(attempt_id, None)
        self._cancelled.pop(attempt_id, None)
        self._release_holder(attempt_id)

    def _release_holder(self, attempt_id: str) -> None:
        holder = self._holder.pop(attempt_id, None)
        if holder is not None:
            self._released(holder, attempt_id)

    def _prune(self, now: datetime) -> None:
        """Forget leases that ran out long ago: their attempts were settled by another
        replica (or expired), so no heartbeat or result will come here for them."""
        cutoff = now - self._settings.lease_duration
        for attempt_id, deadline in list(self._known.items()):
            if deadline < cutoff:
                del self._known[attempt_id]
        for attempt_id in [a for a in self._holder if a not in self._known]:
            self._release_holder(attempt_id)

    # -- Heartbeat streams -----------------------------------------------------------------

    def attach(self, instance_id: str, push: Push) -> Callable[[], None]:
        """Where to push replies unprompted (cancellations) for this instance's Heartbeat
        stream; the returned call detaches it."""
        self._pushes[instance_id] = push

        def detach() -> None:
            if self._pushes.get(instance_id) is push:
                del self._pushes[instance_id]

        return detach

    async def heartbeat(
        self, runner: str, instance_id: str, attempt_ids: Sequence[str]
    ) -> HeartbeatReply:
        now = self._clock.now()
        ids = list(dict.fromkeys(attempt_ids))
        due = [
            a
            for a in ids
            if a not in self._cancelled
            and lease_due(self._known.get(a), now, self._settings.lease_duration)
        ]
        found = await self._extend.submit_many([(runner, a) for a in due])
        states = dict(zip(due, found, strict=True))
        leases: list[Lease] = []
        cancellations: list[Cancellation] = []
        lost: list[str] = []
        for attempt_id in ids:
            if attempt_id in self._cancelled:
                cancellations.append(Cancellation(attempt_id, self._cancelled[attempt_id]))
                continue
            state = states.get(attempt_id)
            if state is not None and state.cancelled:
                cancellations.append(Cancellation(attempt_id))
            elif state is not None and not state.held:
                lost.append(attempt_id)
            elif attempt_id in self._known:
                leases.append(Lease(attempt_id, self._known[attempt_id]))
                self._holder[attempt_id] = instance_id
        for attempt_id in lost + [c.attempt_id for c in cancellations]:
            self.forget(attempt_id)
        return HeartbeatReply(
            leases,
            cancellations,
            lost,
            self._drain_of(instance_id),
            self._settings.heartbeat_interval,
        )

    async def _flush(self, items: Sequence[tuple[str, str]]) -> list[LeaseState]:
        now = self._clock.now()
        deadline = now + self._settings.lease_duration
        by_runner: dict[str, list[str]] = {}
        for runner, attempt_id in items:
            by_runner.setdefault(runner, []).append(attempt_id)
        extended: set[str] = set()
        async with self._store.transaction() as work:
            for runner, attempt_ids in by_runner.items():
                extended |= await work.tasks.extend_leases(runner, attempt_ids, deadline, now)
            others = [a for _, a in items if a not in extended]
            states = await work.tasks.attempt_states(others) if others else {}
        answers = []
        for runner, attempt_id in items:
            if attempt_id in extended:
                self._known[attempt_id] = deadline
                answers.append(LeaseState(True, deadline))
                continue
            found = states.get(attempt_id)
            if found is not None and not self._authorisation.owns_attempt(runner, found.runner):
                answers.append(LOST)
                continue
            answer = lease_state(found, now)
            if answer.held and answer.deadline is not None:
                self._known[attempt_id] = answer.deadline
            answers.append(answer)
        return answers

    # -- cancellations ---------------------------------------------------------------------

    def cancelled(self, attempt_ids: list[str]) -> None:
        """Attempts were cancelled (here or on another replica): tell their holders now."""
        pushes: dict[str, list[Cancellation]] = {}
        for attempt_id in attempt_ids:
            self._cancelled[attempt_id] = "cancelled"
            self._known.pop(attempt_id, None)
            holder = self._holder.get(attempt_id)
            if holder is not None and holder in self._pushes:
                pushes.setdefault(holder, []).append(Cancellation(attempt_id))
        for holder, cancellations in pushes.items():
            for cancellation in cancellations:
                self._release_holder(cancellation.attempt_id)
            self._pushes[holder](
                HeartbeatReply(
                    [], cancellations, [], self._drain_of(holder), self._settings.heartbeat_interval
                )
            )
        if len(self._cancelled) > _PRUNE_CANCELLED_AT:
            # Attempts cancelled long ago: their runners heard, or their leases ran out.
            for attempt_id in list(self._cancelled)[: _PRUNE_CANCELLED_AT // 2]:
                del self._cancelled[attempt_id]
