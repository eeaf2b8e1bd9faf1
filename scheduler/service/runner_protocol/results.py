"""Results: outcomes posted by runners (and by the timekeeper, for expired attempts), settled
by group commit.

Whatever arrives while one settlement runs goes into the next: one transaction judges the
batch (``domain.verdicts``), decides its consequences for the DAG (``domain.dag``) and applies
them. A batch that loses to a concurrent change (a deadlock, a serialization failure) is
tried again after a short backoff.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from scheduler.domain import dag
from scheduler.domain.backoff import Backoff, Retries
from scheduler.domain.clock import Clock
from scheduler.domain.errors import Aborted, PermissionDenied
from scheduler.domain.limits import Limits
from scheduler.domain.ports import Store
from scheduler.domain.runner_protocol import ClaimedTask
from scheduler.domain.verdicts import (
    STALE_UNKNOWN,
    ExpiredAttempt,
    Outcome,
    OutcomeKind,
    Reply,
    ResultStatus,
    expiry_outcome,
    judge,
    remembered,
)
from scheduler.service.batcher import Batcher
from scheduler.service.runner_protocol.authorisation import Authorisation
from scheduler.service.runner_protocol.leases import Leases
from scheduler.service.runner_protocol.settings import ProtocolSettings

CONFLICT_RETRY: Final = Backoff(timedelta(seconds=0.05), timedelta(seconds=1))
CONFLICT_TRIES: Final = 5


@dataclass(frozen=True, slots=True)
class _Posted:
    runner: str | None  # None: the scheduler itself (expiry, an instance gone)
    outcome: Outcome


class Results:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: ProtocolSettings,
        limits: Limits,
        authorisation: Authorisation,
        leases: Leases,
        *,
        rng: random.Random,
    ) -> None:
        self._store = store
        self._clock = clock
        self._limits = limits
        self._authorisation = authorisation
        self._leases = leases
        self._rng = rng
        self._batcher: Batcher[_Posted, Reply] = Batcher(
            self._flush, max_batch=settings.max_result_batch
        )

    async def stop(self) -> None:
        await self._batcher.close()

    async def post(self, runner: str, outcome: Outcome) -> Reply:
        """A runner's outcome for an attempt; PermissionDenied if the attempt is not its own."""
        reply = await self._batcher.submit(_Posted(runner, outcome))
        if reply.status is ResultStatus.FORBIDDEN:
            raise PermissionDenied(reply.message)
        return reply

    async def release(self, task: ClaimedTask) -> None:
        """Give back a task claimed for an instance that went away before it was sent."""
        outcome = Outcome(task.attempt_id, OutcomeKind.RELEASE, message="instance went away")
        await self._batcher.submit(_Posted(None, outcome))

    async def expire(self, expired: Sequence[ExpiredAttempt]) -> None:
        """Fail attempts whose lease or time ran out (retryable)."""
        await self._batcher.submit_many([_Posted(None, expiry_outcome(e)) for e in expired])

    async def _flush(self, items: Sequence[_Posted]) -> list[Reply]:
        retries = Retries(CONFLICT_RETRY, self._rng)
        while True:
            try:
                return await self._settle(items)
            except Aborted:
                if retries.failures + 1 >= CONFLICT_TRIES:
                    raise
                await asyncio.sleep(retries.wait())

    async def _settle(self, items: Sequence[_Posted]) -> list[Reply]:
        now = self._clock.now()
        ids = list(dict.fromkeys(i.outcome.attempt_id for i in items))
        answers: dict[str, Reply] = {}
        async with self._store.transaction() as work:
            earlier = await work.tasks.earlier_verdicts(ids)
            held = await work.tasks.held([i for i in ids if i not in earlier])
            judged: list[dag.Judged] = []
            for item in items:
                attempt_id = item.outcome.attempt_id
                if attempt_id in answers:
                    continue
                if attempt_id in earlier:
                    answers[attempt_id] = earlier[attempt_id]
                    continue
                node = held.get(attempt_id)
                if node is None:
                    answers[attempt_id] = STALE_UNKNOWN
                    continue
                forbidden = self._authorisation.may_settle(item.runner, node)
                if forbidden is not None:
                    answers[attempt_id] = Reply(ResultStatus.FORBIDDEN, forbidden)
                    continue
                verdict = judge(
                    node,
                    item.outcome,
                    now=now,
                    rng=self._rng,
                    max_output_bytes=self._limits.max_output_bytes,
                )
                answers[attempt_id] = verdict.reply
                posted = item.runner is not None
                judged.append(
                    dag.Judged(
                        node,
                        item.outcome,
                        verdict,
                        remembered(item.outcome, posted_by_runner=posted),
                    )
                )
            await work.tasks.settle(dag.settle(judged), now)
        for attempt_id, reply in answers.items():
            if reply.status is not ResultStatus.FORBIDDEN:
                self._leases.forget(attempt_id)
        return [answers[i.outcome.attempt_id] for i in items]
