"""A scheduler served in-process on a fresh database, and stubs talking to it over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.support import Scheduler, serving


@pytest_asyncio.fixture
async def scheduler(db_dsn: str) -> AsyncIterator[Scheduler]:
    async with serving(db_dsn) as served:
        yield served


@pytest_asyncio.fixture
async def quick_scheduler(db_dsn: str) -> AsyncIterator[Scheduler]:
    """Leases of a second, so expiry is seen quickly."""
    async with serving(db_dsn, lease_duration=1.0, heartbeat_interval=0.25) as served:
        yield served
