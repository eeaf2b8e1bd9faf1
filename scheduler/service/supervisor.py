"""One supervisor for every background task of the scheduler.

A *loop* (the timekeeper, the reconciler, the LISTEN connection, each Runner's dispatcher, the
embedded PostgreSQL's watch) runs for as long as the process does. When one fails, the
supervisor logs the exception with the loop's name and how often it failed in a row, and
starts it again after a backoff (``scheduler.domain.backoff``). After ``failing_after``
failures in a row the loop's health condition (``loop <name>``) fails, so health turns
NOT_SERVING; a run that then lasts ``steady_after`` without failing clears it (a timer, not a
poll). A loop that returns has finished and is not started again.

A *one-off* (a task given back, an idle instance drained) runs once; if it fails, its error is
logged with its name, never left for asyncio to report as "never retrieved".

Loops handle the failures they expect (a database blip is waited out inside them); the
supervisor is for the rest: a bug, a poison value, a dependency that keeps failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

from scheduler.domain.backoff import Backoff
from scheduler.domain.errors import Aborted, Unavailable
from scheduler.domain.health import Health

log = logging.getLogger(__name__)

RESTART: Final = Backoff(timedelta(seconds=0.5), timedelta(seconds=30))
# Failures a one-off may meet in an outage: logged without a traceback.
_EXPECTED: Final = (Unavailable, Aborted, OSError)


@dataclass(frozen=True, slots=True)
class SupervisionSettings:
    backoff: Backoff = RESTART
    failing_after: int = 3
    steady_after: timedelta = timedelta(seconds=30)


@dataclass(slots=True)
class _Loop:
    name: str
    run: Callable[[], Awaitable[None]]
    task: asyncio.Task[None] | None = None
    failures: int = 0
    restarts: int = 0
    steady: asyncio.TimerHandle | None = field(default=None, repr=False)


def condition(name: str) -> str:
    """The health condition of loop ``name``."""
    return f"loop {name}"


class Supervisor:
    def __init__(
        self,
        health: Health,
        settings: SupervisionSettings | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._health = health
        self._settings = settings or SupervisionSettings()
        self._rng = rng or random.Random()  # noqa: S311 (backoff jitter, not secrets)
        self._loops: dict[str, _Loop] = {}
        self._one_offs: set[asyncio.Task[Any]] = set()

    # -- loops ---------------------------------------------------------------------------

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run()`` under supervision until ``stop(name)``; ``name`` is unique."""
        if name in self._loops:
            raise ValueError(f"a loop named {name!r} is already supervised")
        loop = _Loop(name, run)
        self._loops[name] = loop
        # A context of its own: a loop outlives the call that may have started it (its caller,
        # its span).
        loop.task = asyncio.create_task(
            self._supervise(loop), name=name, context=contextvars.Context()
        )

    def running(self, name: str) -> bool:
        loop = self._loops.get(name)
        return loop is not None and loop.task is not None and not loop.task.done()

    def failures(self, name: str) -> int:
        """How often loop ``name`` failed in a row (0 once steady)."""
        loop = self._loops.get(name)
        return loop.failures if loop is not None else 0

    def restarts(self, name: str) -> int:
        """How often loop ``name`` was started again after failing."""
        loop = self._loops.get(name)
        return loop.restarts if loop is not None else 0

    async def stop(self, name: str) -> None:
        loop = self._loops.pop(name, None)
        if loop is None:
            return
        if loop.steady is not None:
            loop.steady.cancel()
        if loop.task is not None:
            loop.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop.task
        self._health.set(condition(name), ok=True)

    async def stop_all(self) -> None:
        """Stop every loop (the last started first) and every one-off."""
        for name in reversed(list(self._loops)):
            await self.stop(name)
        one_offs = list(self._one_offs)
        for task in one_offs:
            task.cancel()
        if one_offs:
            await asyncio.gather(*one_offs, return_exceptions=True)

    async def _supervise(self, loop: _Loop) -> None:
        settings = self._settings
        events = asyncio.get_running_loop()
        while True:
            loop.steady = events.call_later(
                settings.steady_after.total_seconds(), self._steady, loop
            )
            try:
                await loop.run()
            except Exception as exc:
                loop.steady.cancel()
                loop.failures += 1
                loop.restarts += 1
                delay = settings.backoff.delay(loop.failures, self._rng).total_seconds()
                log.error(
                    "background loop %s failed (%d in a row); restarting it in %.1fs",
                    loop.name,
                    loop.failures,
                    delay,
                    exc_info=exc,
                    extra={"loop": loop.name, "failures": loop.failures},
                )
                if loop.failures >= settings.failing_after:
                    self._health.set(
                        condition(loop.name),
                        ok=False,
                        reason=f"failed {loop.failures} times in a row, last: {exc!r}"[:500],
                    )
                await asyncio.sleep(delay)
                continue
            loop.steady.cancel()
            log.info("background loop %s finished", loop.name)
            self._health.set(condition(loop.name), ok=True)
            return

    def _steady(self, loop: _Loop) -> None:
        if loop.failures:
            log.info(
                "background loop %s has run without failing for %gs: recovered",
                loop.name,
                self._settings.steady_after.total_seconds(),
                extra={"loop": loop.name},
            )
        loop.failures = 0
        self._health.set(condition(loop.name), ok=True)

    # -- one-offs ------------------------------------------------------------------------

    def spawn(self, name: str, coro: Coroutine[Any, Any, object]) -> None:
        """Run ``coro`` once, in the background; its failure is logged, named."""
        task = asyncio.create_task(coro, name=name)
        self._one_offs.add(task)
        task.add_done_callback(self._one_off_done)

    def _one_off_done(self, task: asyncio.Task[Any]) -> None:
        self._one_offs.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.warning(
                "background task %s failed: %s",
                task.get_name(),
                exc,
                exc_info=None if isinstance(exc, _EXPECTED) else exc,
                extra={"task": task.get_name()},
            )
