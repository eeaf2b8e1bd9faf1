"""Fixtures shared by every test folder: one PostgreSQL server, a fresh database per test.

One server runs for the whole session (``pg_server``). The migrations are applied once, to a
template database (``template_db``); each test that asks for ``db_dsn`` or ``db_pool`` gets its
own ``CREATE DATABASE … TEMPLATE heat_template``, dropped afterwards.

By default ``pg_server`` starts an embedded server (``scheduler.embedded``) in a fresh
folder. Set ``HEAT_TEST_DATABASE_URL`` to a superuser DSN (any database, usually ``postgres``)
to use an existing server instead; the tests create and drop databases on it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

from scheduler.embedded import EmbeddedPostgres
from scheduler.store.migrations import migrate
from tests.support import open_tmp_dir

TEST_DATABASE_URL_ENV = "HEAT_TEST_DATABASE_URL"
TEMPLATE_DB = "heat_template"
MakeDb = Callable[[], Awaitable[str]]


@dataclass(frozen=True)
class PgServer:
    """The server the tests use; ``pg_bin`` is None for an external server."""

    dsn: str
    pg_bin: Path | None

    def dsn_for(self, database: str) -> str:
        parts = urlsplit(self.dsn)
        return urlunsplit(parts._replace(path="/" + quote(database, safe="")))


@pytest.fixture
def open_tmp_path() -> Iterator[Path]:
    """Like ``tmp_path``, but usable as the parent of an embedded server's data folder."""
    path = open_tmp_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_server() -> AsyncIterator[PgServer]:
    """The session's PostgreSQL server: ``HEAT_TEST_DATABASE_URL``, else an embedded one."""
    external = os.environ.get(TEST_DATABASE_URL_ENV)
    if external:
        yield PgServer(dsn=external, pg_bin=None)
        return
    folder = open_tmp_dir()
    try:
        async with EmbeddedPostgres(folder / "data", durable=False) as server:
            yield PgServer(dsn=server.dsn, pg_bin=server.pg_bin)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def template_db(pg_server: PgServer) -> AsyncIterator[str]:
    """The name of a database holding the migrated schema, the template of every test's."""
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {TEMPLATE_DB} TEMPLATE template0")
        conn = await asyncpg.connect(pg_server.dsn_for(TEMPLATE_DB))
        try:
            await migrate(conn)
        finally:
            # CREATE DATABASE … TEMPLATE fails while anyone is connected to the template.
            await conn.close()
        yield TEMPLATE_DB
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
    finally:
        await admin.close()


async def _as_admin(pg_server: PgServer, *statements: str) -> None:
    """Run statements on the server's own database (CREATE/DROP DATABASE cannot run in the
    database they name)."""
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        for statement in statements:
            await admin.execute(statement)
    finally:
        await admin.close()


@pytest_asyncio.fixture(loop_scope="session")
async def db_dsn(pg_server: PgServer, template_db: str) -> AsyncIterator[str]:
    """The DSN of a fresh, migrated database of this test's own."""
    name = f"test_{uuid.uuid4().hex}"
    await _as_admin(pg_server, f"CREATE DATABASE {name} TEMPLATE {template_db}")
    yield pg_server.dsn_for(name)
    await _as_admin(pg_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest_asyncio.fixture(loop_scope="session")
async def db_pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A connection pool on this test's fresh database."""
    # min_size=1: opening the default ten connections up front would slow every test.
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=10)
    try:
        yield pool
    finally:
        await pool.close()


@pytest_asyncio.fixture(loop_scope="session")
async def make_empty_db(pg_server: PgServer) -> AsyncIterator[MakeDb]:
    """Creates empty (unmigrated) databases on demand; the DSN of each; drops them after."""
    names: list[str] = []

    async def make() -> str:
        name = f"test_{uuid.uuid4().hex}"
        await _as_admin(pg_server, f"CREATE DATABASE {name} TEMPLATE template0")
        names.append(name)
        return pg_server.dsn_for(name)

    yield make
    await _as_admin(pg_server, *(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)" for name in names))
