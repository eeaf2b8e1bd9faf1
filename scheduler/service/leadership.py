"""Run a duty on one replica at a time, for as long as this process lives."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Final

from scheduler.domain.backoff import Backoff, Retries
from scheduler.domain.errors import Aborted, Internal, Unavailable
from scheduler.domain.ports import Duty, Leadership, Term

log = logging.getLogger(__name__)

# What losing (or failing in) the database, or a backend's connection, looks like: the duty
# is given up and taken again.
DATABASE_ERRORS: Final = (Unavailable, Aborted, Internal, OSError)
RETRY: Final = Backoff(timedelta(seconds=0.1), timedelta(seconds=5))


async def lead_forever(
    leadership: Leadership, duty: Duty, lead: Callable[[Term], Awaitable[None]], *, what: str = ""
) -> None:
    """Wait to hold ``duty``, run ``lead(term)`` while holding it; after it ends, or the
    database fails, back off and wait for the duty again."""
    retries = Retries(RETRY)
    text = duty.value + (f" ({what})" if what else "")
    while True:
        try:
            async with leadership.lead(duty) as term:
                log.info("this replica %s", text)
                retries.reset()
                await lead(term)
        except DATABASE_ERRORS as exc:
            log.warning("lost the database while it %s (%s); retrying", text, exc)
        await asyncio.sleep(retries.wait())
