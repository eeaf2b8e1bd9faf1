"""Group commit: everything that arrives while one flush runs goes into the next flush.

A lone item is flushed at once (no waiting for company); under load, batches grow by
themselves to whatever arrived during the previous flush, up to ``max_batch``.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class Batcher(Generic[In, Out]):
    def __init__(
        self, flush: Callable[[Sequence[In]], Awaitable[Sequence[Out]]], *, max_batch: int
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._worker: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> bool:
        """Whether items wait for the next flush."""
        return bool(self._pending)

    async def submit(self, item: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._start()
        return await future

    async def submit_many(self, items: Sequence[In]) -> list[Out]:
        """Several items, answered in order; no task of their own each (a future each)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Out]] = [loop.create_future() for _ in items]
        self._pending += zip(items, futures, strict=True)
        self._start()
        return list(await asyncio.gather(*futures))

    def _start(self) -> None:
        if self._worker is None or self._worker.done():
            # A flush serves every caller in it: it runs in a context of its own, not in that
            # of the call that happened to start it.
            self._worker = asyncio.create_task(self._drain(), context=contextvars.Context())

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = (
                self._pending[: self._max_batch],
                self._pending[self._max_batch :],
            )
            try:
                results = await self._flush([item for item, _ in batch])
            except Exception as exc:  # every waiter hears about it, none hangs
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        if self._worker is not None:
            await asyncio.gather(self._worker, return_exceptions=True)
