"""Leadership by lease in PostgreSQL (the rules: ``scheduler.domain.leadership``).

Each duty has one row in ``leadership`` (the current term: epoch, holder, expiry by the
database's clock) and one row per term in ``leader_terms``. Each replica keeps one connection
per duty it leads or waits for:

- waiting, it reads the row and waits for the lease's end, a known deadline, in one statement:
  ``pg_advisory_lock`` on the duty's lock, which the holder's connection holds, with
  ``lock_timeout`` set to the time left. The statement returns when the lease runs out (then it
  takes over) or at once when the holder's connection ends (a dead holder: it takes over
  without waiting for the lease). A holder without the lock (it took over from a holder that
  was paused with the lock) is waited out with a timer.
- leading, it renews the lease every ``renew_every`` (one UPDATE: the only periodic write),
  holds the advisory lock (taken with the term, or at a renewal once a former holder's
  connection lets go of it), and ends its term (``Term.end``) when a renewal finds
  the term taken over, or when its own count of the lease runs out before a renewal gets
  through (a timer on a known deadline). Leaving the block ends the lease at once.

``PgStore.fenced`` runs the leader's writes; see ``fence`` in sql/queries/leadership.sql.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, Final

import asyncpg
from asyncpg.exceptions import InternalClientError

from scheduler.domain.backoff import Backoff, Retries
from scheduler.domain.errors import Unavailable
from scheduler.domain.leadership import (
    Duty,
    LeaderView,
    LeaseSettings,
    Tenure,
    Term,
    takeover_wait,
)
from scheduler.store.errors import translated
from scheduler.store.queries import QUERIES

log = logging.getLogger(__name__)

LOCKS: Final = {
    Duty.TIMEKEEPER: 0x48454154544B5052,  # "HEATTKPR"
    Duty.PROVISIONING: 0x4845415450524F56,  # "HEATPROV"
}
RENEW_RETRY: Final = Backoff(timedelta(seconds=0.05), timedelta(seconds=1))
# Slack on our side of a statement the server times out itself (lock_timeout).
_SLACK_S: Final = 2.0


def _ms(seconds: float) -> str:
    return f"{max(round(seconds * 1000), 1)}ms"


class _Link:
    """The dedicated connection of one duty, made again when it breaks; whether it holds the
    duty's advisory lock."""

    def __init__(self, dsn: str, duty: Duty) -> None:
        self._dsn = dsn
        self.key = LOCKS[duty]
        self._conn: asyncpg.Connection | None = None
        self.locked = False

    async def connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn, self.locked = None, False
            with translated():
                self._conn = await asyncpg.connect(self._dsn)
        return self._conn

    @property
    def pid(self) -> int | None:
        """Our backend, if this connection holds the advisory lock."""
        return self._conn.get_server_pid() if self._conn is not None and self.locked else None

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await self.connection()
        with translated():
            rows: list[asyncpg.Record] = await conn.fetch(QUERIES[query], *args)
        return rows

    async def try_lock(self) -> None:
        conn = await self.connection()
        with translated():
            self.locked = bool(await conn.fetchval(QUERIES["try_lock"], self.key))

    async def wait_for_lock(self, seconds: float) -> None:
        """Take the advisory lock, waiting at most ``seconds`` (the server keeps the time)."""
        conn = await self.connection()
        try:
            async with asyncio.timeout(seconds + _SLACK_S):
                with translated():
                    await conn.execute(QUERIES["set_lock_timeout"], _ms(seconds))
                await conn.execute(QUERIES["wait_lock"], self.key)
            self.locked = True
        except asyncpg.LockNotAvailableError:
            pass  # the lease's time is up
        except TimeoutError:
            self.broken()  # the server did not answer in time: the connection is not to be trusted
            raise Unavailable("the database did not answer a lock wait in time") from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, InternalClientError) as exc:
            self.broken()
            raise Unavailable(f"the leadership connection failed ({type(exc).__name__})") from exc

    async def unlock(self) -> None:
        if self._conn is not None and self.locked:
            with translated():
                await self._conn.execute(QUERIES["unlock_all"])
        self.locked = False

    def broken(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
        self._conn, self.locked = None, False

    async def close(self) -> None:
        conn, self._conn, self.locked = self._conn, None, False
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 1)
            except Exception:  # the server is gone or slow: drop the socket
                conn.terminate()


class LeaseLeadership:
    """``Leadership`` for replicas sharing one PostgreSQL database."""

    def __init__(
        self,
        dsn: str,
        holder: str,
        settings: LeaseSettings,
        *,
        seen: Callable[[LeaderView], None] = lambda _view: None,
    ) -> None:
        """``holder`` names this replica; ``seen(view)`` hears who leads each duty whenever
        this replica learns it (for health and logs)."""
        self._dsn = dsn
        self.holder = holder
        self.settings = settings
        self._seen = seen
        self._lease_ms = round(settings.duration.total_seconds() * 1000)

    @asynccontextmanager
    async def lead(self, duty: Duty) -> AsyncIterator[Term]:
        """Wait until this replica holds ``duty``; renew it while the block runs."""
        link = _Link(self._dsn, duty)
        try:
            term, tenure, sent = await self._take(link, duty)
            keeper = asyncio.create_task(
                self._keep(link, term, tenure, sent), name=f"lease-{duty.key}"
            )
            try:
                yield term
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
                await self._step_down(link, term)
        finally:
            await link.close()

    # -- waiting -------------------------------------------------------------------------

    async def _take(self, link: _Link, duty: Duty) -> tuple[Term, Tenure, float]:
        loop = asyncio.get_running_loop()
        while True:
            rows = await link.fetch("leader_of", duty.key)
            row = rows[0] if rows else None
            dead_holder = row is not None and link.locked and row["holder_pid"] is not None
            if row is None or row["expire_time"] <= row["now"] or dead_holder:
                if not link.locked:
                    # Held from the term's first moment, so that replicas arriving now wait on
                    # it (and see this one step down or die at once), not on a timer.
                    await link.try_lock()
                await link.fetch("set_lock_timeout", _ms(self.settings.duration.total_seconds()))
                sent = loop.time()
                taken = await link.fetch(
                    "take_lead", duty.key, self.holder, link.pid, self._lease_ms
                )
                if taken:
                    (won,) = taken
                    term = Term(duty, asyncio.Event(), won["epoch"], self.holder, won["start_time"])
                    self._seen(
                        LeaderView(duty, self.holder, term.epoch or 0, won["start_time"], True)
                    )
                    return term, Tenure.begun(self.settings, sent), sent
                continue  # another replica was quicker, or the holder renewed: look again
            self._seen(LeaderView(duty, row["holder"], row["epoch"], row["start_time"], False))
            wait = takeover_wait(row["expire_time"], row["now"])
            if row["holder_pid"] is not None and not link.locked:
                await link.wait_for_lock(wait)
            else:
                # The holder has no lock to lose (or we hold it): let it take the lock, and
                # wait for its lease to run out.
                await link.unlock()
                await asyncio.sleep(wait)

    # -- leading -------------------------------------------------------------------------

    async def _keep(self, link: _Link, term: Term, tenure: Tenure, sent: float) -> None:
        """Renew the term until it is over; end it when it cannot be renewed in time."""
        loop = asyncio.get_running_loop()
        retries = Retries(RENEW_RETRY)
        out_of_time = loop.call_at(
            tenure.valid_until, term.end, "its lease ran out before a renewal got through"
        )
        next_at = tenure.next_renewal(sent)
        try:
            while not term.lost.is_set():
                await asyncio.sleep(max(next_at - loop.time(), 0.0))
                sent = loop.time()
                try:
                    async with asyncio.timeout(tenure.time_left(sent)):
                        if not link.locked:
                            await link.try_lock()
                        renewed = await link.fetch(
                            "renew_lead", term.duty.key, term.epoch, self._lease_ms, link.pid
                        )
                except TimeoutError:
                    link.broken()
                    term.end("its lease ran out before a renewal got through")
                    return
                except Unavailable as exc:
                    link.broken()
                    log.warning(
                        "could not renew the lease of %s (%s); retrying", term.describe(), exc
                    )
                    next_at = tenure.retry_at(loop.time(), retries.wait())
                    continue
                if not renewed:
                    term.end(await self._why_lost(link, term))
                    return
                retries.reset()
                tenure.renewed(sent)
                out_of_time.cancel()
                out_of_time = loop.call_at(
                    tenure.valid_until, term.end, "its lease ran out before a renewal got through"
                )
                next_at = tenure.next_renewal(sent)
        except Exception as exc:  # a fault of ours: stop acting rather than act unrenewed
            log.exception("the lease keeper of %s failed", term.describe())
            term.end(f"its lease keeper failed: {exc!r}")
        finally:
            out_of_time.cancel()

    async def _why_lost(self, link: _Link, term: Term) -> str:
        try:
            rows = await link.fetch("leader_of", term.duty.key)
        except Unavailable:
            rows = []
        if rows and rows[0]["epoch"] != term.epoch:
            row = rows[0]
            self._seen(LeaderView(term.duty, row["holder"], row["epoch"], row["start_time"], False))
            return f"{row['holder']} took over (epoch {row['epoch']})"
        return "its lease ran out before a renewal got through"

    async def _step_down(self, link: _Link, term: Term) -> None:
        """End the lease now if it is still ours, so another replica takes over at once."""
        if term.lost.is_set():
            return
        term.end("it stepped down")
        try:
            async with asyncio.timeout(1):
                await link.fetch("step_down", term.duty.key, term.epoch)
        except (TimeoutError, Unavailable):
            pass  # the lease runs out by itself
