"""Announcements between replicas over PostgreSQL NOTIFY/LISTEN: the wire format, and the
listener that turns what arrives back into ``Changes`` for the ``ChangeFeed``.

Channels and payloads (text):

    heat_ready    a Runner's name: it has claimable work
    heat_session  a Session's id: its change log grew
    heat_cancel   attempt ids, comma-separated (a NOTIFY holds at most 8000 bytes): cancelled
    heat_tick     an ISO 8601 time, or empty for "now": a deadline the timekeeper must see

Every unit of work sends what it changed in one statement before it commits (PostgreSQL
delivers NOTIFYs at commit, so listeners see what was written). Nothing outside the store
knows these names or formats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

import asyncpg
from asyncpg.exceptions import InternalClientError

from scheduler.domain.backoff import Backoff, Retries
from scheduler.domain.ports import ChangeFeed, Changes

log = logging.getLogger(__name__)

READY_CHANNEL: Final = "heat_ready"
SESSION_CHANNEL: Final = "heat_session"
CANCEL_CHANNEL: Final = "heat_cancel"
TICK_CHANNEL: Final = "heat_tick"
CHANNELS: Final = (READY_CHANNEL, SESSION_CHANNEL, CANCEL_CHANNEL, TICK_CHANNEL)
# Attempt ids are 36 characters; 150 of them with commas stay well below 8000 bytes.
_CANCEL_IDS_PER_NOTIFY: Final = 150
RECONNECT: Final = Backoff(timedelta(seconds=0.1), timedelta(seconds=5))
# A connection that cannot be made, or breaks (the driver's complaints about a connection in
# a broken state included).
_CONNECTION_ERRORS: Final = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    InternalClientError,
)


def encode(changes: Changes) -> list[tuple[str, str]]:
    """The (channel, payload) messages that announce ``changes``."""
    messages = [(READY_CHANNEL, r) for r in sorted(changes.ready_runners)]
    messages += [(SESSION_CHANNEL, str(i)) for i in sorted(changes.sessions)]
    cancelled = changes.cancelled_attempts
    messages += [
        (CANCEL_CHANNEL, ",".join(cancelled[i : i + _CANCEL_IDS_PER_NOTIFY]))
        for i in range(0, len(cancelled), _CANCEL_IDS_PER_NOTIFY)
    ]
    ticks = dict.fromkeys(at.isoformat() if at else "" for at in changes.deadlines)
    messages += [(TICK_CHANNEL, tick) for tick in ticks]
    return messages


def decode(channel: str, payload: str) -> Changes | None:
    """What one message announces; None for a channel or payload that is not ours."""
    try:
        if channel == READY_CHANNEL:
            return Changes(ready_runners={payload})
        if channel == SESSION_CHANNEL:
            return Changes(sessions={int(i) for i in payload.split(",") if i})
        if channel == CANCEL_CHANNEL:
            return Changes(cancelled_attempts=[i for i in payload.split(",") if i])
        if channel == TICK_CHANNEL:
            return Changes(deadlines=[datetime.fromisoformat(payload) if payload else None])
    except ValueError:
        log.warning("ignoring a malformed notification", extra={"channel": channel})
    return None


class Listener:
    """LISTENs on a dedicated connection and hands every announcement to ``feed``; reconnects
    when the server goes.

    Notifications sent while the connection was down are lost, so ``feed.missed()`` runs
    after every (re)connection: waiters re-check whatever they might have missed. The
    connection also says whether PostgreSQL can be reached: ``on_up`` runs after every
    (re)connection, ``on_down`` when it goes or cannot be made (the server stopped,
    restarted, or is unreachable). ``run`` is a background loop (the app runs it under its
    supervisor).
    """

    def __init__(
        self,
        dsn: str,
        feed: ChangeFeed,
        *,
        on_up: Callable[[], None] = lambda: None,
        on_down: Callable[[], None] = lambda: None,
    ) -> None:
        self._dsn = dsn
        self._feed = feed
        self._on_up = on_up
        self._on_down = on_down
        self.connected = asyncio.Event()

    def _dispatch(self, _conn: Any, _pid: int, channel: str, payload: object) -> None:
        changes = decode(channel, str(payload))
        if changes:
            self._feed.changed(changes)

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff."""
        retries = Retries(RECONNECT)
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self._dsn)
            except _CONNECTION_ERRORS as exc:
                log.warning("LISTEN connection failed; retrying", extra={"error": str(exc)})
                self._on_down()
                await asyncio.sleep(retries.wait())
                continue
            try:
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                for channel in CHANNELS:
                    await conn.add_listener(channel, self._dispatch)
                retries.reset()
                self.connected.set()
                self._feed.missed()
                self._on_up()
                await lost.wait()
                log.warning("LISTEN connection lost; reconnecting")
            except _CONNECTION_ERRORS as exc:
                log.warning("LISTEN connection broke; reconnecting", extra={"error": str(exc)})
            finally:
                if self.connected.is_set():
                    self.connected.clear()
                    self._on_down()
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)
            await asyncio.sleep(retries.wait())
