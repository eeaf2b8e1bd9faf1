"""Run a duty on one replica at a time, for as long as this process lives.

While it leads, the duty's loop runs; a database error inside it is waited out (with backoff)
without giving the duty up: only the lease decides who leads (``scheduler.domain.leadership``).
When the term ends (taken over, the lease ran out, a fence refused a write), the loop stops
acting, the step-down is logged with its reason, and the replica waits to lead again. Any
other error leaves for the supervisor, which logs and restarts the whole loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Final

from scheduler.domain.backoff import Backoff, Retries
from scheduler.domain.errors import Aborted, Unavailable
from scheduler.domain.leadership import Duty, NotLeader, Term
from scheduler.domain.ports import Leadership
from scheduler.domain.telemetry import NO_TELEMETRY, Telemetry

log = logging.getLogger(__name__)

# What losing the database (or a backend's connection) looks like, or a concurrent change
# winning: waited out and tried again. Anything else is a fault for the supervisor.
TRANSIENT: Final = (Unavailable, Aborted, OSError)
RETRY: Final = Backoff(timedelta(seconds=0.1), timedelta(seconds=5))


async def lead_forever(
    leadership: Leadership,
    duty: Duty,
    lead: Callable[[Term], Awaitable[None]],
    *,
    what: str = "",
    telemetry: Telemetry = NO_TELEMETRY,
) -> None:
    """Wait to hold ``duty``; run ``lead(term)`` while holding it (it returns once
    ``term.lost`` is set, or is stopped then); then wait for the duty again. Telemetry hears
    of every term (the leadership metrics)."""
    retries = Retries(RETRY)
    text = duty.value + (f" ({what})" if what else "")
    while True:
        try:
            async with leadership.lead(duty) as term:
                log.info("this replica leads: it %s", text, extra={"term": term.describe()})
                telemetry.leading(term)
                retries.reset()
                await _while_held(term, lead, text)
            await asyncio.sleep(0)  # let the rest of the process run before waiting again
        except TRANSIENT as exc:
            log.warning("lost the database while waiting to lead (%s); retrying", exc)
            await asyncio.sleep(retries.wait())


async def _while_held(term: Term, lead: Callable[[Term], Awaitable[None]], text: str) -> None:
    """Run ``lead(term)`` until the term ends, waiting out database errors; the moment the
    term ends, say so and stop the loop, even in the middle of a call (to a database that
    does not answer, say: a fenced write would be refused anyway)."""
    retries = Retries(RETRY)
    lost = asyncio.ensure_future(term.lost.wait())
    try:
        while not term.lost.is_set():
            work = asyncio.ensure_future(lead(term))
            await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                _stepped_down(term, text)
                work.cancel()
                await asyncio.wait({work})
                failed = None if work.cancelled() else work.exception()
                if failed is not None and not isinstance(failed, (NotLeader, *TRANSIENT)):
                    raise failed
                return
            try:
                work.result()
            except NotLeader as exc:
                term.end(str(exc))
            except TRANSIENT as exc:
                wait = retries.wait()
                log.warning("the database failed while this replica %s (%s); retrying", text, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(lost), wait)
            else:
                retries.reset()
        _stepped_down(term, text)
    finally:
        lost.cancel()


def _stepped_down(term: Term, text: str) -> None:
    log.warning(
        "this replica stepped down: it no longer %s (%s)",
        text,
        term.reason,
        extra={"term": term.describe()},
    )
