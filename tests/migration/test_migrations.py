"""The migrations build exactly ``schema.sql``, once, whoever runs them and however often."""

from __future__ import annotations

import asyncio
import difflib
import shutil
from importlib.resources import files
from pathlib import Path

import asyncpg
import pytest

from scheduler.embedded import PostgresNotInstalled, find_pg_bin
from scheduler.store.migrations import (
    Migration,
    MigrationError,
    available_migrations,
    migrate,
)
from tests.conftest import MakeDb

# Lines of a pg_dump that describe the dump, not the schema. \restrict carries a random key.
_DUMP_NOISE = ("--", "SET ", "SELECT pg_catalog.set_config(", "\\restrict", "\\unrestrict")


def _pg_dump(pg_server) -> Path:
    if pg_server.pg_bin is not None:
        return Path(pg_server.pg_bin, "pg_dump")
    on_path = shutil.which("pg_dump")
    if on_path:
        return Path(on_path)
    try:
        return find_pg_bin() / "pg_dump"
    except PostgresNotInstalled:
        pytest.skip("pg_dump is needed to compare schemas and was not found")


async def _schema_of(pg_server, dsn: str) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        str(_pg_dump(pg_server)),
        "--schema-only",
        "--no-owner",
        "--no-privileges",
        # Migration bookkeeping, which schema.sql rightly lacks.
        "--exclude-table=public.schema_migrations",
        f"--dbname={dsn}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"pg_dump failed: {err.decode()}"
    return [
        line
        for line in out.decode().splitlines()
        if line.strip() and not line.startswith(_DUMP_NOISE)
    ]


async def _run_on(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _migrate(dsn: str, **kwargs) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn, **kwargs)
    finally:
        await conn.close()


async def test_migrations_build_exactly_schema_sql(pg_server, make_empty_db: MakeDb) -> None:
    """Column order counts: a column added by ALTER TABLE goes last in schema.sql too."""
    migrated, from_schema = await make_empty_db(), await make_empty_db()
    await _migrate(migrated)
    await _run_on(from_schema, files("scheduler.store.sql").joinpath("schema.sql").read_text())

    expected = await _schema_of(pg_server, from_schema)
    actual = await _schema_of(pg_server, migrated)

    diff = "\n".join(
        difflib.unified_diff(expected, actual, "schema.sql", "migrations", lineterm="")
    )
    assert actual == expected, f"the migrations do not build schema.sql:\n{diff}"


async def test_migrate_applies_everything_once(make_empty_db: MakeDb) -> None:
    dsn = await make_empty_db()
    every = [m.name for m in available_migrations()]

    assert await _migrate(dsn) == every
    assert await _migrate(dsn) == []


async def test_template_databases_need_no_migration(db_dsn: str) -> None:
    assert await _migrate(db_dsn) == []


async def test_concurrent_migrations_apply_each_once(make_empty_db: MakeDb) -> None:
    dsn = await make_empty_db()
    every = [m.name for m in available_migrations()]

    results = await asyncio.gather(_migrate(dsn), _migrate(dsn))

    assert sorted(results, key=len) == [[], every]
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(every)
    finally:
        await conn.close()


async def test_concurrent_slow_migrations_wait_for_each_other(make_empty_db: MakeDb) -> None:
    """Without the lock both runs would see 0001 pending, and the second CREATE TABLE fails."""
    dsn = await make_empty_db()
    slow = [
        Migration(1, "0001_slow", "CREATE TABLE slow (id int); SELECT pg_sleep(0.2);"),
        Migration(2, "0002_more", "ALTER TABLE slow ADD COLUMN name text;"),
    ]

    results = await asyncio.gather(*(_migrate(dsn, migrations=slow) for _ in range(3)))

    assert sorted(results, key=len) == [[], [], ["0001_slow", "0002_more"]]


async def test_a_newer_database_is_refused(make_empty_db: MakeDb) -> None:
    dsn = await make_empty_db()
    await _migrate(dsn)
    newest = available_migrations()[-1].version
    await _run_on(
        dsn, f"INSERT INTO schema_migrations VALUES ({newest + 1}, '{newest + 1:04d}_future')"
    )

    with pytest.raises(MigrationError, match="database schema is newer than this scheduler"):
        await _migrate(dsn)
    # The refusal released the lock: another run gets as far as refusing too.
    with pytest.raises(MigrationError, match="newer"):
        await asyncio.wait_for(_migrate(dsn), timeout=5)


async def test_a_migration_added_below_an_applied_one_is_refused(make_empty_db: MakeDb) -> None:
    dsn = await make_empty_db()
    first, second = Migration(1, "0001_a", "SELECT 1"), Migration(2, "0002_b", "SELECT 1")
    await _migrate(dsn, migrations=[second])

    with pytest.raises(MigrationError, match="0001"):
        await _migrate(dsn, migrations=[first, second])


async def test_a_failing_migration_leaves_no_trace(make_empty_db: MakeDb) -> None:
    dsn = await make_empty_db()
    good = Migration(1, "0001_good", "CREATE TABLE good (id int)")
    bad = Migration(2, "0002_bad", "CREATE TABLE half (id int); SELECT 1/0;")

    with pytest.raises(asyncpg.DivisionByZeroError):
        await _migrate(dsn, migrations=[good, bad])

    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT array_agg(version) FROM schema_migrations") == [1]
        assert await conn.fetchval("SELECT to_regclass('half')") is None
    finally:
        await conn.close()


async def test_migrate_refuses_a_connection_in_a_transaction(db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        async with conn.transaction():
            with pytest.raises(MigrationError, match="transaction"):
                await migrate(conn)
    finally:
        await conn.close()


def test_shipped_migrations_are_numbered_from_one_without_gaps() -> None:
    versions = [m.version for m in available_migrations()]
    assert versions == list(range(1, len(versions) + 1))


@pytest.mark.parametrize(
    "file_name", ["1_short.sql", "0002-dash.sql", "0003_Upper.sql", "0004.sql", "0005_.sql"]
)
def test_malformed_file_names_are_refused(tmp_path: Path, file_name: str) -> None:
    (tmp_path / file_name).write_text("SELECT 1")

    with pytest.raises(MigrationError, match="malformed"):
        available_migrations(tmp_path)


def test_duplicate_numbers_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_one.sql").write_text("SELECT 1")
    (tmp_path / "0001_other.sql").write_text("SELECT 2")

    with pytest.raises(MigrationError, match="two migrations numbered 0001"):
        available_migrations(tmp_path)


def test_migrations_are_read_in_numeric_order(tmp_path: Path) -> None:
    for name in ("0010_ten.sql", "0002_two.sql", "0001_one.sql", "README.md"):
        (tmp_path / name).write_text(f"-- {name}")

    assert [(m.version, m.name) for m in available_migrations(tmp_path)] == [
        (1, "0001_one"),
        (2, "0002_two"),
        (10, "0010_ten"),
    ]


async def test_nodes_belong_to_an_existing_session(make_empty_db: MakeDb) -> None:
    """The statement-level check that replaced the foreign key: same promises, per statement."""
    dsn = await make_empty_db()
    await _migrate(dsn)
    conn = await asyncpg.connect(dsn)
    node = (
        "INSERT INTO nodes (session_id, idx, key, node_template, runner, config, upstream,"
        " downstream, waiting_on, state, max_attempts, initial_backoff_ms, max_backoff_ms,"
        " backoff_multiplier, attempt_timeout_ms)"
        " SELECT $1, i, 'n' || i, 't', 'r', '{}', '{}', '{}', 0, 'queued', 1, 1, 1, 1, 1"
        " FROM generate_series(0, 2) AS i"
    )
    try:
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="existing session"):
            await conn.execute(node, 999)
        session = await conn.fetchval(
            "INSERT INTO sessions (name, session_template, parameters, labels, state,"
            " node_count, open_nodes, trace_id, create_time)"
            " VALUES ('s', '', '{}', '{}', 'pending', 3, 3, '', now()) RETURNING id"
        )
        await conn.execute(node, session)
        assert await conn.fetchval("SELECT count(*) FROM nodes") == 3
        await conn.execute("DELETE FROM sessions WHERE id = $1", session)
        assert await conn.fetchval("SELECT count(*) FROM nodes") == 0
    finally:
        await conn.close()
