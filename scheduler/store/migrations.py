"""Forward-only numbered migrations.

Each migration is a file ``scheduler/store/sql/migrations/NNNN_description.sql`` (four digits,
then lower-case words joined by ``_``). ``migrate`` applies the pending ones in order, each in
its own transaction together with its row in ``schema_migrations``, so a failing migration
leaves nothing behind. Statements that cannot run in a transaction (``CREATE INDEX
CONCURRENTLY``) are therefore not allowed in a migration.

The whole run holds a session advisory lock: replicas starting together apply each migration
once; the others wait, then find nothing pending.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Final

import asyncpg

__all__ = [
    "MIGRATIONS_LOCK_ID",
    "MIGRATIONS_PACKAGE",
    "Migration",
    "MigrationError",
    "available_migrations",
    "migrate",
]

log = logging.getLogger(__name__)

MIGRATIONS_PACKAGE: Final = "scheduler.store.sql.migrations"
# Any constant works as long as nothing else in the database uses it: "HEATMIGR" in ASCII.
MIGRATIONS_LOCK_ID: Final = 0x484541544D494752

_FILE_NAME: Final = re.compile(r"(?P<version>\d{4})_[a-z0-9]+(?:_[a-z0-9]+)*\.sql")

_CREATE_TABLE: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version int PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(Exception):
    """The migration files or the database's migration history are not as they must be."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: ``name`` is its file name without ``.sql`` (``0001_initial``)."""

    version: int
    name: str
    sql: str


def available_migrations(source: Traversable | None = None) -> list[Migration]:
    """The migrations shipped in ``source`` (default: the package's folder), by version.

    Raises ``MigrationError`` on a ``.sql`` file whose name is not ``NNNN_description.sql``, on
    version 0000, and on two files with the same number.
    """
    folder = files(MIGRATIONS_PACKAGE) if source is None else source
    by_version: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue  # __init__.py, __pycache__
        match = _FILE_NAME.fullmatch(entry.name)
        if match is None:
            raise MigrationError(
                f"malformed migration file name {entry.name!r}: expected NNNN_description.sql "
                "(four digits, an underscore, lower-case words joined by underscores)"
            )
        version = int(match["version"])
        if version == 0:
            raise MigrationError(f"migration {entry.name!r}: numbering starts at 0001")
        if version in by_version:
            raise MigrationError(
                f"two migrations numbered {version:04d}: "
                f"{by_version[version].name}.sql and {entry.name}"
            )
        by_version[version] = Migration(
            version=version, name=entry.name.removesuffix(".sql"), sql=entry.read_text("utf-8")
        )
    return [by_version[v] for v in sorted(by_version)]


async def migrate(
    conn: asyncpg.Connection, *, migrations: Sequence[Migration] | None = None
) -> list[str]:
    """Apply the pending migrations (default: ``available_migrations()``); their names.

    ``conn`` must not be inside a transaction: each migration gets a transaction of its own.
    Raises ``MigrationError`` when the database holds migrations this code does not know (it
    was migrated by a newer scheduler) or when a known one is missing below an applied one.
    """
    known = list(available_migrations() if migrations is None else migrations)
    if conn.is_in_transaction():
        raise MigrationError("migrate() needs a connection that is not inside a transaction")
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATIONS_LOCK_ID)
    try:
        await conn.execute(_CREATE_TABLE)
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        applied = {row["version"]: row["name"] for row in rows}
        pending = _pending(known, applied)
        names = []
        for migration in pending:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info("applied migration %s", migration.name)
            names.append(migration.name)
        return names
    finally:
        # A closed connection has already dropped its session lock.
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATIONS_LOCK_ID)


def _pending(known: Sequence[Migration], applied: dict[int, str]) -> list[Migration]:
    known_versions = {m.version for m in known}
    newest_known = max(known_versions, default=0)
    unknown = sorted(set(applied) - known_versions)
    if unknown:
        listed = _describe((v, applied[v]) for v in unknown)
        if unknown[-1] > newest_known:
            raise MigrationError(
                f"database schema is newer than this scheduler: it has {listed} applied, and "
                f"the newest migration this scheduler knows is {newest_known:04d}; run a "
                "scheduler at least as new as the one that migrated this database"
            )
        raise MigrationError(
            f"the database has {listed} applied, which this scheduler does not know "
            "(a migration file was removed or renumbered)"
        )
    for m in known:
        if m.version in applied and applied[m.version] != m.name:
            log.warning(
                "migration %04d was applied as %r and is now named %r",
                m.version,
                applied[m.version],
                m.name,
            )
    pending = [m for m in known if m.version not in applied]
    newest_applied = max(applied, default=0)
    # Forward-only means in order: one applied late would run against a schema it never saw.
    late = [m for m in pending if m.version < newest_applied]
    if late:
        raise MigrationError(
            f"{_describe((m.version, m.name) for m in late)} not applied, but the database "
            f"is already at {newest_applied:04d}: a migration was added below an applied one; "
            "renumber it above the newest"
        )
    return pending


def _describe(versions: Iterable[tuple[int, str]]) -> str:
    items = [f"{v:04d} ({name})" for v, name in versions]
    return ("migration " if len(items) == 1 else "migrations ") + ", ".join(items)
