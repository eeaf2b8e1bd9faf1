"""The timekeeper: on one replica at a time, it fails attempts whose lease or time ran out and
requeues retries whose backoff passed, sleeping until the earliest such deadline.

It reads the next deadline in a plain transaction and writes only when one has passed, in one
fenced transaction of its term (expiries and retry promotions together), so a replica that
lost the duty writes nothing, and an idle scheduler makes no periodic write here.

Claims only write leases later than now + lease_duration, so sleeping at most that long covers
them without a wake-up; an earlier deadline (a retry's backoff, a short attempt timeout)
arrives through ``deadline_written``, from this replica or, by NOTIFY, from another.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Final

from scheduler.domain.clock import Clock
from scheduler.domain.errors import Internal
from scheduler.domain.leadership import Duty, Term
from scheduler.domain.ports import Leadership, Store
from scheduler.domain.telemetry import NO_TELEMETRY, Telemetry
from scheduler.service.leadership import lead_forever
from scheduler.service.runner_protocol.results import Results
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
        results: Results,
        *,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        """``results`` settles attempts whose lease or time ran out; ``telemetry`` hears of
        this replica's terms."""
        self._store = store
        self._leadership = leadership
        self._clock = clock
        self._settings = settings
        self._results = results
        self._telemetry = telemetry
        self._tick = asyncio.Event()
        self._sleep_until: datetime | None = None

    async def run(self) -> None:
        """Keep time whenever this replica leads, for as long as the process lives."""
        await lead_forever(self._leadership, Duty.TIMEKEEPER, self._lead, telemetry=self._telemetry)

    def deadline_written(self, at: datetime | None) -> None:
        """Somebody wrote a deadline: wake the timekeeper if it sleeps past it."""
        if at is None or self._sleep_until is None or at < self._sleep_until:
            self._tick.set()

    async def _lead(self, term: Term) -> None:
        while not term.lost.is_set():
            self._tick.clear()
            async with self._store.transaction() as work:
                at = await work.tasks.next_deadline()
            now = self._clock.now()
            if at is not None and at <= now:
                await self._keep_time(term, now)
                continue
            wait = self._settings.lease_duration.total_seconds()
            if at is not None:
                wait = min(wait, (at - now).total_seconds() + 0.001)
            self._sleep_until = now + timedelta(seconds=wait)
            waiters = [asyncio.create_task(e.wait()) for e in (self._tick, term.lost)]
            try:
                await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._sleep_until = None
                for waiter in waiters:
                    waiter.cancel()

    async def _keep_time(self, term: Term, now: datetime) -> None:
        """Expire what ran out and requeue what is due, in one transaction of the term; if
        that fails for a reason of the data, expire one attempt at a time (a bad one is failed
        alone, never stops the others), then requeue."""
        judgement = None
        try:
            async with self._store.fenced(term) as work:
                expired = await work.tasks.expired(now, BATCH)
                if expired:
                    judgement = await self._results.expire_in(work, expired, now)
                promoted = await work.tasks.promote_due_retries(now, BATCH)
        except Internal as error:
            log.warning("expiring a batch of attempts failed (%s); one by one", error.message)
            judgement = None
            async with self._store.fenced(term) as work:
                expired = await work.tasks.expired(now, BATCH)
            await self._results.expire_one_by_one(term, expired, now)
            async with self._store.fenced(term) as work:
                promoted = await work.tasks.promote_due_retries(now, BATCH)
        if judgement is not None:
            self._results.committed(judgement, now)
        if expired:
            log.info("expired attempts", extra={"count": len(expired), "epoch": term.epoch})
        if promoted:
            log.debug("requeued retries", extra={"count": promoted, "epoch": term.epoch})
