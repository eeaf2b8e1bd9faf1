"""Leadership by lease on a real PostgreSQL: renewals, takeovers when a lease runs out or its
holder's connection ends, and fenced writes that a term which is over can never make."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import asyncpg
import pytest

from scheduler.domain.errors import Unavailable
from scheduler.domain.leadership import Duty, LeaderView, LeaseSettings, NotLeader, Term
from scheduler.service.signals import Signals
from scheduler.store.database import PgStore
from scheduler.store.leadership import LeaseLeadership
from tests.support import TcpProxy, eventually

ROOT = Path(__file__).resolve().parents[2]
LEASE = LeaseSettings(timedelta(seconds=1), timedelta(seconds=0.25))
DUTY = Duty.TIMEKEEPER


@contextlib.asynccontextmanager
async def store(dsn: str, lease: LeaseSettings = LEASE) -> AsyncIterator[PgStore]:
    opened = await PgStore.open(dsn, Signals(), max_size=4, fence_idle_limit=lease.idle_limit)
    try:
        yield opened
    finally:
        await opened.close()


class Replica:
    """A replica's leadership of DUTY, held in a task until ``leave()`` (every replica a test
    made leaves after it, whatever happened)."""

    made: ClassVar[list[Replica]] = []

    def __init__(self, dsn: str, name: str, lease: LeaseSettings = LEASE) -> None:
        Replica.made.append(self)
        self.views: list[LeaderView] = []  # who leads, each time this replica learns it
        self.leadership = LeaseLeadership(dsn, name, lease, seen=self.views.append)
        self.term: Term | None = None
        self._leave = asyncio.Event()
        self._task = asyncio.create_task(self._hold())

    async def _hold(self) -> None:
        async with self.leadership.lead(DUTY) as term:
            self.term = term
            await self._leave.wait()

    async def leads(self) -> Term:
        await eventually(lambda: self.term is not None, timeout=30)
        assert self.term is not None
        return self.term

    async def leave(self) -> None:
        self._leave.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, 10)


@pytest.fixture(autouse=True)
async def _replicas_leave() -> AsyncIterator[None]:
    yield
    while Replica.made:
        await Replica.made.pop().leave()


@pytest.fixture
async def admin(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_dsn)
    yield conn
    await conn.close()


async def writes(admin: asyncpg.Connection, epoch: int) -> int:
    count: int = await admin.fetchval(
        "SELECT writes FROM leader_terms WHERE duty = $1 AND epoch = $2", DUTY.key, epoch
    )
    return count


async def locked_holder(admin: asyncpg.Connection) -> int:
    """The holder's backend, once its connection holds the duty's advisory lock."""
    for _ in range(200):
        pid: int | None = await admin.fetchval("SELECT holder_pid FROM leadership")
        if pid is not None:
            return pid
        await asyncio.sleep(0.05)
    raise AssertionError("the holder never took the advisory lock")


async def lock_waiters(admin: asyncpg.Connection, count: int) -> None:
    """Wait until ``count`` backends of this database wait for a lock."""
    for _ in range(200):
        waiting = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} lock waiters never came")


async def run_out(admin: asyncpg.Connection) -> None:
    """The lease runs out now, as if its holder had stopped renewing it."""
    await admin.execute(
        "UPDATE leadership SET expire_time = clock_timestamp() WHERE duty = $1", DUTY.key
    )


async def test_a_renewed_lease_stays_and_a_step_down_hands_it_over_at_once(
    db_dsn: str, admin: asyncpg.Connection
) -> None:
    a = Replica(db_dsn, "a")
    term = await a.leads()
    assert (term.epoch, term.holder) == (1, "a")
    b = Replica(db_dsn, "b")
    first = await admin.fetchval("SELECT expire_time FROM leadership")
    await eventually(lambda: b.views, timeout=5)
    assert b.views[-1].holder == "a" and not b.views[-1].mine
    # Renewals move the lease on: b keeps waiting through several lease lengths.
    await asyncio.sleep(1.5 * LEASE.duration.total_seconds())
    assert await admin.fetchval("SELECT expire_time FROM leadership") > first
    assert b.term is None and not term.lost.is_set()
    await a.leave()
    taken = await b.leads()
    assert (taken.epoch, taken.holder) == (2, "b")
    assert term.reason == "it stepped down"
    await b.leave()


async def test_a_term_holds_its_lock_from_its_first_moment_so_a_step_down_is_seen_at_once(
    db_dsn: str, admin: asyncpg.Connection
) -> None:
    slow = LeaseSettings(timedelta(seconds=60), timedelta(seconds=20))  # no renewal in the test
    a = Replica(db_dsn, "a", slow)
    await a.leads()
    assert await admin.fetchval("SELECT holder_pid FROM leadership") is not None
    b = Replica(db_dsn, "b", slow)
    await lock_waiters(admin, 1)  # b waits on a's lock, not on a 60 s timer
    await a.leave()
    taken = await asyncio.wait_for(b.leads(), 10)
    assert (taken.epoch, taken.holder) == (2, "b")


async def test_a_term_that_ran_out_is_noticed_and_its_fenced_writes_are_refused(
    db_dsn: str, admin: asyncpg.Connection
) -> None:
    a = Replica(db_dsn, "a")
    term = await a.leads()
    async with store(db_dsn) as pg:
        async with pg.fenced(term) as work:
            await work.tasks.promote_due_retries(datetime.now(UTC), 10)
        assert await writes(admin, 1) == 1
        await run_out(admin)
        b = Replica(db_dsn, "b")
        assert (await b.leads()).epoch == 2
        # The former holder hears it at its next renewal, and says who took over.
        await asyncio.wait_for(term.lost.wait(), LEASE.renew_every.total_seconds() * 4)
        assert "b took over (epoch 2)" in term.reason
        with pytest.raises(NotLeader):
            async with pg.fenced(term):
                pass
        # Even a term this replica still believes in is refused once it is not current.
        stale = Term(DUTY, asyncio.Event(), 1, "a")
        with pytest.raises(NotLeader):
            async with pg.fenced(stale):
                pass
        assert stale.lost.is_set()
        assert await writes(admin, 1) == 1
    await a.leave()
    await b.leave()


async def test_a_takeover_waits_for_the_fenced_transaction_of_the_term_it_ends(
    db_dsn: str, admin: asyncpg.Connection
) -> None:
    roomy = LeaseSettings(timedelta(seconds=4), timedelta(seconds=0.5))  # idles 3.5 s at most
    a = Replica(db_dsn, "a", roomy)
    term = await a.leads()
    async with store(db_dsn, roomy) as pg:
        async with pg.fenced(term):
            await run_out(admin)
            b = Replica(db_dsn, "b", roomy)
            await lock_waiters(admin, 1)  # b tries to take over: it waits for this transaction
            assert b.term is None
        taken = await b.leads()
    row = await admin.fetchrow(
        "SELECT (SELECT last_write_time FROM leader_terms WHERE epoch = 1) AS last_write, "
        "(SELECT start_time FROM leader_terms WHERE epoch = 2) AS start"
    )
    assert row is not None and taken.epoch == 2
    assert row["last_write"] < row["start"]
    await a.leave()
    await b.leave()


async def test_a_fenced_transaction_left_idle_is_ended_by_the_database(
    db_dsn: str, admin: asyncpg.Connection
) -> None:
    a = Replica(db_dsn, "a")
    term = await a.leads()
    async with store(db_dsn) as pg:
        with pytest.raises(Unavailable):
            async with pg.fenced(term) as work:
                await work.tasks.promote_due_retries(datetime.now(UTC), 10)
                await asyncio.sleep(LEASE.idle_limit.total_seconds() + 0.5)
    assert await writes(admin, 1) == 0  # rolled back: it never counted
    await a.leave()


async def test_a_holder_that_dies_is_replaced_at_once(
    db_dsn: str, admin: asyncpg.Connection
) -> None:
    a = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.leader_process", db_dsn, "a", "30", "0.25",
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        assert a.stdout is not None
        line = await asyncio.wait_for(a.stdout.readline(), 30)
        assert line.decode().strip() == "leading 1"
        await locked_holder(admin)  # a holds the lock; b will wait on it
        b = Replica(db_dsn, "b", LeaseSettings(timedelta(seconds=30), timedelta(seconds=0.25)))
        await lock_waiters(admin, 1)
        a.kill()
        await a.wait()
        # Far sooner than a's 30 s lease: b waited on the lock a's connection held.
        taken = await asyncio.wait_for(b.leads(), 10)
        assert taken.epoch == 2
        before_the_lease_ran_out = await admin.fetchval(
            "SELECT start_time < (SELECT start_time FROM leader_terms WHERE epoch = 1) "
            "+ interval '30 seconds' FROM leader_terms WHERE epoch = 2"
        )
        assert before_the_lease_ran_out
        await b.leave()
    finally:
        if a.returncode is None:
            a.kill()
            await a.wait()


async def test_a_holder_cut_off_from_the_database_ends_its_term_by_its_own_count(
    db_dsn: str, admin: asyncpg.Connection
) -> None:
    proxy, through_proxy = TcpProxy.to_dsn(db_dsn)
    try:
        a = Replica(through_proxy, "a")
        term = await a.leads()
        b = Replica(db_dsn, "b")
        await eventually(lambda: b.views, timeout=5)
        proxy.freeze()  # a half-open partition: a's connections hang, PostgreSQL sees them open
        await asyncio.wait_for(term.lost.wait(), LEASE.duration.total_seconds() + 1)
        assert "ran out" in term.reason
        taken = await b.leads()
        assert taken.epoch == 2
        proxy.thaw()
        async with store(db_dsn) as pg:
            with pytest.raises(NotLeader):
                async with pg.fenced(term):
                    pass
        assert await writes(admin, 1) == 0
        await a.leave()
        await b.leave()
    finally:
        proxy.stop()
