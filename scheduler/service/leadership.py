"""Run a duty on one replica at a time, for as long as this process lives."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import asyncpg

from scheduler.domain.errors import Unavailable
from scheduler.domain.ports import Store

log = logging.getLogger(__name__)

# What losing the database looks like, from the store or from the lock's own connection.
DATABASE_ERRORS: Final = (Unavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def lead_forever(
    store: Store, lock: int, duty: str, lead: Callable[[asyncio.Event], Awaitable[None]]
) -> None:
    """Wait for the advisory lock, run ``lead(lost)`` while holding it; on a database error,
    back off (0.1 s doubling to 5 s) and wait for the lock again."""
    delay = 0.1
    while True:
        try:
            async with store.leadership(lock) as lost:
                log.info("this replica %s", duty)
                delay = 0.1
                await lead(lost)
        except DATABASE_ERRORS as exc:
            log.warning("lost the database while it %s (%s); retrying", duty, exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
