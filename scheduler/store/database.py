"""The asyncpg pool and the transactions the services run in."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any

import asyncpg

from scheduler.domain.errors import Unavailable
from scheduler.store.listener import leadership
from scheduler.store.provisioning import PgProvisioningTx
from scheduler.store.registry import PgRegistryTx
from scheduler.store.sessions import PgSessionTx

# A lost or refused connection, a server shutting down or starting up.
_DOWN = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


@contextmanager
def _unavailable_when_down() -> Iterator[None]:
    try:
        yield
    except _DOWN as exc:
        raise Unavailable(f"the database is unavailable ({type(exc).__name__}); retry") from exc


class PgTx(PgRegistryTx, PgSessionTx, PgProvisioningTx):
    """Everything the services can do in one transaction."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("jsonb", "json"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection
    )
    return pool


class Store:
    """The PostgreSQL store; every service call runs in one of its transactions."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self.pool = pool
        self.dsn = dsn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgTx]:
        conn: Any
        with _unavailable_when_down():
            async with self.pool.acquire() as conn, conn.transaction():
                yield PgTx(conn)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[PgTx]:
        conn: Any
        with _unavailable_when_down():
            async with (
                self.pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                yield PgTx(conn)

    def leadership(self, key: int) -> AbstractAsyncContextManager[asyncio.Event]:
        return leadership(self.dsn, key)

    async def close(self) -> None:
        await self.pool.close()
