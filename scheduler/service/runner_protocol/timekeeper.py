"""The timekeeper: on one replica at a time, it fails attempts whose lease or time ran out and
requeues retries whose backoff passed, sleeping until the earliest such deadline.

Claims only write leases later than now + lease_duration, so sleeping at most that long covers
them without a wake-up; an earlier deadline (a retry's backoff, a short attempt timeout)
arrives through ``deadline_written``, from this replica or, by NOTIFY, from another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Final

from scheduler.domain.clock import Clock
from scheduler.domain.ports import Duty, Leadership, Store, Term
from scheduler.domain.verdicts import ExpiredAttempt
from scheduler.service.leadership import lead_forever
from scheduler.service.runner_protocol.settings import ProtocolSettings

log = logging.getLogger(__name__)

BATCH: Final = 500


class Timekeeper:
    def __init__(
        self,
        store: Store,
        leadership: Leadership,
        clock: Clock,
        settings: ProtocolSettings,
        *,
        expire: Callable[[Sequence[ExpiredAttempt]], Awaitable[None]],
    ) -> None:
        """``expire(attempts)`` settles attempts whose lease or time ran out."""
        self._store = store
        self._leadership = leadership
        self._clock = clock
        self._settings = settings
        self._expire = expire
        self._tick = asyncio.Event()
        self._sleep_until: datetime | None = None

    async def run(self) -> None:
        """Keep time whenever this replica leads, for as long as the process lives."""
        await lead_forever(self._leadership, Duty.TIMEKEEPER, self._lead)

    def deadline_written(self, at: datetime | None) -> None:
        """Somebody wrote a deadline: wake the timekeeper if it sleeps past it."""
        if at is None or self._sleep_until is None or at < self._sleep_until:
            self._tick.set()

    async def _lead(self, term: Term) -> None:
        while not term.lost.is_set():
            self._tick.clear()
            now = self._clock.now()
            busy = await self._expired(now) | await self._requeue(now)
            if busy:
                continue
            async with self._store.transaction() as work:
                at = await work.tasks.next_deadline()
            now = self._clock.now()
            wait = self._settings.lease_duration.total_seconds()
            if at is not None:
                wait = min(wait, max((at - now).total_seconds(), 0.0) + 0.001)
            self._sleep_until = now + timedelta(seconds=wait)
            waiters = [asyncio.create_task(e.wait()) for e in (self._tick, term.lost)]
            try:
                await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._sleep_until = None
                for waiter in waiters:
                    waiter.cancel()

    async def _expired(self, now: datetime) -> bool:
        async with self._store.transaction() as work:
            expired = await work.tasks.expired(now, BATCH)
        if not expired:
            return False
        await self._expire(expired)
        log.info("expired attempts", extra={"count": len(expired)})
        return len(expired) == BATCH

    async def _requeue(self, now: datetime) -> bool:
        async with self._store.transaction() as work:
            count = await work.tasks.promote_due_retries(now, BATCH)
        return count == BATCH
