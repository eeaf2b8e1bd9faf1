"""A scheduler served in-process on a fresh database, and stubs talking to it over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest_asyncio
from heat.scheduler.v1 import registry_service_pb2_grpc

from scheduler import app
from scheduler.settings import Settings
from tests.helpers import Scheduler


@asynccontextmanager
async def serving(dsn: str, **overrides: Any) -> AsyncIterator[Scheduler]:
    settings = Settings(
        **{
            "listen": "127.0.0.1:0",
            "database_url": dsn,
            "shutdown_grace": 1.0,
            "provisioner": "none",
            **overrides,
        }
    )
    async with app.running(settings) as running:
        address = f"127.0.0.1:{running.port}"
        async with grpc.aio.insecure_channel(address) as channel:
            yield Scheduler(
                address, channel, registry_service_pb2_grpc.RegistryServiceStub(channel), running
            )


@pytest_asyncio.fixture
async def scheduler(db_dsn: str) -> AsyncIterator[Scheduler]:
    async with serving(db_dsn) as served:
        yield served


@pytest_asyncio.fixture
async def quick_scheduler(db_dsn: str) -> AsyncIterator[Scheduler]:
    """Leases of a second, so expiry is seen quickly."""
    async with serving(db_dsn, lease_duration=1.0, heartbeat_interval=0.25) as served:
        yield served
