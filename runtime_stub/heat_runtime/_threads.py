"""Worker threads for synchronous hooks, so the event loop keeps heartbeating meanwhile.

A hook defined with plain ``def`` runs on one of at most ``size`` threads (the runtime's
capacity: a held task runs one hook at a time). The threads are daemons, started as needed and
reused: a hook still running when the process exits (after a drain handed its task back) does
not keep the process alive.

Python cannot stop a running thread. ``call()`` therefore, when cancelled (the task was
cancelled, its lease lost, its attempt deadline passed, or a drain handed it back), sets the
attempt's stop event (``current_task().stop_requested()``), waits for the hook to return, and
only then lets the cancellation through: the task keeps its slot until its thread is free
again, so capacity is never exceeded. The hook's result is then discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["HookThreads"]


@dataclass(eq=False, slots=True)
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    context: contextvars.Context
    func: Callable[..., Any]
    args: tuple[Any, ...]


class HookThreads:
    """At most ``size`` daemon threads running synchronous hooks."""

    def __init__(self, size: int, name: str = "heat-hook") -> None:
        if size < 1:
            raise ValueError(f"size must be 1 or more, not {size}")
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    async def call(self, stop: threading.Event | None, func: Callable[..., Any], *args: Any) -> Any:
        """``func(*args)`` on a worker thread, in a copy of the caller's context; see the
        module docstring for what a cancellation does."""
        if self._closed:
            raise RuntimeError("the hook threads are closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.put(_Job(loop, future, contextvars.copy_context(), func, args))
        self._grow()
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if stop is not None:
                stop.set()
            with contextlib.suppress(BaseException):
                # A second cancellation ends this wait (shutdown); the thread is abandoned.
                await asyncio.shield(future)
            raise

    def close(self) -> None:
        """Let idle threads exit; hooks still running finish on their own (daemons)."""
        with self._lock:
            self._closed = True
            for _ in self._threads:
                self._jobs.put(None)

    def _grow(self) -> None:
        with self._lock:
            if len(self._threads) >= self._size:
                return
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                result = job.context.run(job.func, *job.args)
            except BaseException as error:  # handed to the awaiting coroutine
                _settle(job, None, error)
            else:
                _settle(job, result, None)
            del job  # do not keep the last job's result alive while idle


def _settle(job: _Job, result: Any, error: BaseException | None) -> None:
    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        job.loop.call_soon_threadsafe(settle)
