"""The fake scheduler of the runtime's tests, served on loopback for each test that asks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.unit.fake_scheduler import Server


@pytest_asyncio.fixture(loop_scope="session")
async def server() -> AsyncIterator[Server]:
    server = Server()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
