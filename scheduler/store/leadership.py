"""Leadership through PostgreSQL session advisory locks: one lock a duty.

The lock lives as long as its dedicated connection, so a replica that dies frees it at once
and a waiting one takes over without any polling. It counts no terms (``Term.epoch`` is
None): a replica cut off from the database learns it lost the lock only when its connection
ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final

import asyncpg

from scheduler.domain.ports import Duty, Term
from scheduler.store.errors import translated

LOCKS: Final = {
    Duty.TIMEKEEPER: 0x48454154544B5052,  # "HEATTKPR"
    Duty.PROVISIONING: 0x4845415450524F56,  # "HEATPROV"
}


class AdvisoryLockLeadership:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn

    @contextlib.asynccontextmanager
    async def lead(self, duty: Duty) -> AsyncIterator[Term]:
        """Block until this replica holds the duty's lock; ``Term.lost`` is set if it is lost."""
        with translated():
            conn = await asyncpg.connect(self._dsn)
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        try:
            with translated():
                await conn.execute("SELECT pg_advisory_lock($1)", LOCKS[duty])
            yield Term(duty, lost)
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)
