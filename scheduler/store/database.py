"""The asyncpg pool and the transactions the services run in."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from scheduler.store.registry import PgRegistryTx


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

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgRegistryTx]:
        conn: Any
        async with self.pool.acquire() as conn, conn.transaction():
            yield PgRegistryTx(conn)

    async def close(self) -> None:
        await self.pool.close()
