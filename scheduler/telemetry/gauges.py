"""The gauges' values, sampled from the database every ``INTERVAL`` while metrics are on.

Tasks queued and running per Runner, the instances the reconciler wants and sees (it records
them with each pass, on whichever replica leads), and Sessions by state: all of them
cluster-wide, so every replica reports the same figures (aggregate them with max, not sum).
The exporters' threads read the last sample; reading the database from them would block
them on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from scheduler.domain.ports import Store
from scheduler.telemetry.instruments import Instruments, Sampled

log = logging.getLogger(__name__)

INTERVAL: Final = 10.0


class Sampler:
    def __init__(self, store: Store, instruments: Instruments, interval: float = INTERVAL) -> None:
        self._store = store
        self._instruments = instruments
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="telemetry-gauges")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> Sampled:
        """Read the gauges' values now."""
        async with self._store.snapshot() as work:
            names = [r.name for r in await work.registry.all_runners()]
            statuses = await work.provisioning.runner_status(names)
            sessions = await work.sessions.count_by_state()
        sampled = Sampled([statuses[n] for n in names if n in statuses], sessions)
        self._instruments.sample(sampled)
        return sampled

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # the database is away: the gauges keep their last values
                log.warning("cannot sample the gauges: %s", exc)
            await asyncio.sleep(self._interval)
