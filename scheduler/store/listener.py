"""LISTEN on a dedicated connection, and leadership through a session advisory lock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

import asyncpg

log = logging.getLogger(__name__)

_RETRY_MAX_S: Final = 5.0


class Listener:
    """Calls ``handlers[channel](payload)`` for every NOTIFY; reconnects when the server goes.

    Notifications sent while the connection was down are lost, so ``on_reconnect`` runs after
    every (re)connection: callers re-check whatever they might have missed.
    """

    def __init__(
        self,
        dsn: str,
        handlers: Mapping[str, Callable[[str], None]],
        on_reconnect: Callable[[], None],
    ) -> None:
        self._dsn = dsn
        self._handlers = handlers
        self._on_reconnect = on_reconnect
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _dispatch(self, _conn: Any, _pid: int, channel: str, payload: object) -> None:
        handler = self._handlers.get(channel)
        if handler is not None:
            handler(str(payload))

    async def _run(self) -> None:
        delay = 0.1
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("LISTEN connection failed; retrying", extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            try:
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                for channel in self._handlers:
                    await conn.add_listener(channel, self._dispatch)
                delay = 0.1
                self.connected.set()
                self._on_reconnect()
                await lost.wait()
                log.warning("LISTEN connection lost; reconnecting")
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("LISTEN connection broke; reconnecting", extra={"error": str(exc)})
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)


@contextlib.asynccontextmanager
async def leadership(dsn: str, key: int) -> AsyncIterator[asyncio.Event]:
    """Block until this replica holds the lock ``key``; yield an event set if it is lost.

    The lock lives as long as the dedicated connection, so a replica that dies frees it at
    once and a waiting one takes over without any polling.
    """
    conn = await asyncpg.connect(dsn)
    lost = asyncio.Event()
    conn.add_termination_listener(lambda _c: lost.set())
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", key)
        yield lost
    finally:
        with contextlib.suppress(Exception):
            await conn.close(timeout=1)
