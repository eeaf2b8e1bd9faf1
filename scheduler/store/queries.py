"""Named SQL queries, loaded once from the ``.sql`` files under ``sql/queries``.

A file holds blocks that each start with ``-- name --`` and a one-line description.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any, Final, LiteralString, cast

import asyncpg

from scheduler.domain.telemetry import NO_TELEMETRY, Telemetry

_BLOCK = re.compile(r"^-- ([a-z_][a-z0-9_]*) --$", re.MULTILINE)


def _load() -> dict[str, LiteralString]:
    queries: dict[str, LiteralString] = {}
    folder = resources.files("scheduler.store.sql.queries")
    for item in sorted(folder.iterdir(), key=lambda f: f.name):
        if not item.name.endswith(".sql"):
            continue
        parts = _BLOCK.split(item.read_text(encoding="utf-8"))
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in queries:
                raise RuntimeError(f"query {name!r} is defined twice (again in {item.name})")
            # SQL text comes from the package's own files, never from input.
            queries[name] = cast(LiteralString, body.strip())
    return queries


QUERIES: Final = _load()


class JsonText(str):
    """JSON already encoded: a jsonb parameter that is not encoded again."""

    __slots__ = ()


class Statements:
    """The named queries, run on one open transaction's connection; each a database span
    named after its block when telemetry traces the caller."""

    def __init__(self, conn: asyncpg.Connection, telemetry: Telemetry = NO_TELEMETRY) -> None:
        self._conn = conn
        self._telemetry = telemetry if telemetry.tracing else None

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record]
        if self._telemetry is None:
            rows = await self._conn.fetch(QUERIES[query], *args)
            return rows
        with self._telemetry.statement(query):
            rows = await self._conn.fetch(QUERIES[query], *args)
        return rows

    async def copy(
        self, name: str, table: str, columns: Sequence[str], records: Iterable[Sequence[Any]]
    ) -> None:
        """Rows into ``table`` by COPY (binary): the fastest way in for many rows. ``name``
        names it as a block would (its span's name)."""
        if self._telemetry is None:
            await self._conn.copy_records_to_table(table, records=records, columns=list(columns))
            return
        with self._telemetry.statement(name):
            await self._conn.copy_records_to_table(table, records=records, columns=list(columns))
