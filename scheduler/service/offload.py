"""Heavy pure checks (JSON Schemas, configurations of large DAGs) run off the event loop.

A check runs in a worker thread, so every other call goes on while it works; one that takes
the whole validation budget stops and says so (``out_of_time``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

from scheduler.domain.limits import VALIDATION_BUDGET

T = TypeVar("T")


async def off_loop(check: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``check(*args, **kwargs)`` in a worker thread."""
    return await asyncio.to_thread(check, *args, **kwargs)


async def within_budget(check: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``check(*args, out_of_time=..., **kwargs)`` in a worker thread, told when the
    validation budget is spent."""
    deadline = time.monotonic() + VALIDATION_BUDGET.total_seconds()

    def out_of_time() -> bool:
        return time.monotonic() > deadline

    return await asyncio.to_thread(check, *args, out_of_time=out_of_time, **kwargs)
