"""The PostgreSQL store: a pool, and units of work over it, one transaction each.

A unit of work collects what its statements changed (``Changes``); before it commits, one
statement NOTIFYs every replica of all of it, and once it has committed this replica's
``ChangeFeed`` hears of it directly, so its own waiters need not wait for the round trip.
Deadlines are the exception: they reach the timekeeper by NOTIFY only, wherever it runs (this
replica included), so that one written deadline wakes it once. The audit events a unit of work
recorded are logged (logger ``scheduler.audit``) once it has committed. Everything the driver
raises leaves as a domain error (``scheduler.store.errors``).

A leader's unit of work (``fenced``) begins with the fence of its term
(sql/queries/leadership.sql): NotLeader, and nothing written, if the term is over.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

import asyncpg

from scheduler.domain.audit import AuditEvent
from scheduler.domain.leadership import DEFAULT_DURATION, DEFAULT_RENEW_EVERY, NotLeader, Term
from scheduler.domain.ports import ChangeFeed, Changes
from scheduler.domain.telemetry import NO_TELEMETRY, PoolUsage, Telemetry
from scheduler.store import notifications
from scheduler.store.access import PgAccess, PgAudit
from scheduler.store.artifacts import PgArtifacts
from scheduler.store.errors import translated
from scheduler.store.migrations import migrate
from scheduler.store.provisioning import PgProvisioning
from scheduler.store.queries import JsonText, Statements
from scheduler.store.registry import PgRegistry
from scheduler.store.sessions import PgSessions
from scheduler.store.tasks import PgTasks

log = logging.getLogger(__name__)
audit_log = logging.getLogger("scheduler.audit")


def _log_audit(events: list[AuditEvent]) -> None:
    for event in events:
        audit_log.info(
            "audit: %s %s %s",
            event.action,
            event.resource,
            event.name,
            extra={
                "actor": event.actor.subject,
                "actor_kind": event.actor.kind.value,
                "role": event.actor.role.value,
                "action": event.action,
                "resource": event.resource,
                "resource_name": event.name,
            },
        )


class PgUnitOfWork:
    """Every repository, on one transaction's connection."""

    def __init__(self, conn: asyncpg.Connection, telemetry: Telemetry = NO_TELEMETRY) -> None:
        self.db = Statements(conn, telemetry)
        self.changes = Changes()
        self.registry = PgRegistry(self.db, self.changes)
        self.sessions = PgSessions(self.db, self.changes)
        self.tasks = PgTasks(self.db, self.changes)
        self.provisioning = PgProvisioning(self.db)
        self.access = PgAccess(self.db)
        self.audit = PgAudit(self.db)
        self.artifacts = PgArtifacts(self.db)

    async def announce(self) -> None:
        """Queue the NOTIFYs of what this unit of work changed; they go out at commit."""
        messages = notifications.encode(self.changes)
        if messages:
            await self.db.fetch("notify", [c for c, _ in messages], [p for _, p in messages])


def _encode_jsonb(value: Any) -> bytes:
    # jsonb's binary form is a version byte and the JSON text (so COPY's binary format works).
    text = value if type(value) is JsonText else json.dumps(value)
    return b"\x01" + text.encode()


def _decode_jsonb(data: bytes) -> Any:
    return json.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _as_it_is(conn: asyncpg.Connection) -> None:
    """A connection goes back to the pool without asyncpg's reset statement (advisory locks,
    cursors, LISTEN, settings): a round trip after every commit, on the way to the hand-off's
    push, that cleans up nothing. A unit of work changes no session state (its settings are
    ``set_config(..., true)``, its transaction's own; advisory locks and LISTEN live on
    connections of their own, outside the pool), and asyncpg still rolls back a transaction
    left open before it calls this."""


def _milliseconds(duration: timedelta) -> str:
    return f"{max(round(duration.total_seconds() * 1000), 1)}ms"


class PgStore:
    """Every service call runs in one of its units of work."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        feed: ChangeFeed,
        telemetry: Telemetry = NO_TELEMETRY,
        *,
        fence_idle_limit: timedelta = DEFAULT_DURATION - DEFAULT_RENEW_EVERY,
    ) -> None:
        """``fence_idle_limit``: how long a leader's transaction may sit idle before the
        database ends it (the leadership lease's ``idle_limit``)."""
        self._pool = pool
        self._feed = feed
        self._telemetry = telemetry
        self._fence_idle_limit = _milliseconds(fence_idle_limit)

    @classmethod
    async def open(
        cls,
        dsn: str,
        feed: ChangeFeed,
        *,
        max_size: int = 20,
        telemetry: Telemetry = NO_TELEMETRY,
        idle_limit: timedelta = DEFAULT_DURATION,
        fence_idle_limit: timedelta = DEFAULT_DURATION - DEFAULT_RENEW_EVERY,
    ) -> PgStore:
        """A pool on ``dsn``. A transaction that sits idle longer than ``idle_limit`` (a
        leader's: ``fence_idle_limit``) is ended by the database, so a replica that is paused,
        or cut off with its connections left half-open, holds no row lock other replicas wait
        on for longer than that, and a leader's never holds a takeover back past its lease."""
        with translated():
            pool: asyncpg.Pool = await asyncpg.create_pool(
                dsn,
                min_size=2,
                max_size=max_size,
                init=_init_connection,
                reset=_as_it_is,
                server_settings={
                    "idle_in_transaction_session_timeout": _milliseconds(idle_limit),
                    # Claims run in many transactions (the dispatcher's, settlements' and
                    # CreateSession's hand-offs) and are estimated over a Runner's whole
                    # backlog: past jit_above_cost, JIT would compile one for seconds.
                    "jit": "off",
                },
            )
        return cls(pool, feed, telemetry, fence_idle_limit=fence_idle_limit)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgUnitOfWork]:
        conn: Any
        with translated():
            async with self._pool.acquire() as conn, conn.transaction():
                work = PgUnitOfWork(conn, self._telemetry)
                yield work
                await work.announce()
        self._committed(work)

    @asynccontextmanager
    async def fenced(self, term: Term) -> AsyncIterator[PgUnitOfWork]:
        term.check()
        if term.epoch is None:
            raise NotLeader(f"a term without an epoch ({term.describe()}) fences nothing")
        conn: Any
        with translated():
            async with self._pool.acquire() as conn, conn.transaction():
                work = PgUnitOfWork(conn, self._telemetry)
                fence = (term.duty.key, term.epoch, self._fence_idle_limit)
                if not await work.db.fetch("fence", *fence):
                    term.end("another replica took over, or its lease ran out")
                    raise NotLeader(f"the term ({term.describe()}) is over")
                yield work
                await work.announce()
        self._committed(work)

    @asynccontextmanager
    async def claiming(self) -> AsyncIterator[PgUnitOfWork]:
        """A transaction whose statements keep their generic plans (JIT is off for every
        connection of the pool).

        Claims come many times a second with the same shape, and PostgreSQL finds the
        claim's custom plan cheaper than its generic one (it knows the batch's size), so it
        would plan it anew each time: 2.7 ms a claim against 6.7 to run it, in the
        throughput benchmark. Every lookup of the claim is written so that the generic
        plan, even one made while the tables were small, reaches rows by index (LIMIT 1
        laterals, row addresses). Set with the BEGIN, in the same round trip. (Claims handed
        off in a settlement's or CreateSession's transaction are planned as usual.)"""
        conn: Any
        with translated():
            async with self._pool.acquire() as conn:
                await conn.execute("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
                try:
                    work = PgUnitOfWork(conn, self._telemetry)
                    yield work
                    await work.announce()
                except BaseException:
                    await conn.execute("ROLLBACK")
                    raise
                await conn.execute("COMMIT")
        self._committed(work)

    def _committed(self, work: PgUnitOfWork) -> None:
        """What follows a commit in this process: the audit log lines, and the changes told to
        this replica's waiters at once (deadlines excepted: they reach the timekeeper, which may
        lead on another replica, by NOTIFY)."""
        _log_audit(work.audit.recorded)
        local = replace(work.changes, deadlines=[])
        if local:
            self._feed.changed(local)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[PgUnitOfWork]:
        conn: Any
        with translated():
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                yield PgUnitOfWork(conn, self._telemetry)

    def pool_usage(self) -> PoolUsage:
        pool = self._pool
        return PoolUsage(pool.get_size(), pool.get_idle_size(), pool.get_max_size())

    async def close(self) -> None:
        await self._pool.close()


async def migrate_database(dsn: str) -> list[str]:
    """Apply the pending migrations to the database at ``dsn``; the names of those applied."""
    with translated():
        conn = await asyncpg.connect(dsn)
        try:
            applied = await migrate(conn)
        finally:
            await conn.close()
    if applied:
        log.info("applied migrations", extra={"migrations": ",".join(applied)})
    return applied
