"""A scheduler served in-process on a fresh database, and stubs talking to it over loopback;
for heat_runtime's tests, a fake RunnerService (fake_scheduler.py) on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.integration.fake_scheduler import Server
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


@pytest_asyncio.fixture(loop_scope="session")
async def server() -> AsyncIterator[Server]:
    """The fake RunnerService, for a runtime to talk to."""
    server = Server()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
