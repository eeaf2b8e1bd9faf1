"""A pgqueuer worker process with a no-op entrypoint, at pgqueuer's defaults (batch size 10,
asyncpg driver, the default durable install), for the peer comparison.

``python -m bench.pgq_worker MODE DSN [RECORD]``: prints ``ready`` once connected, waits for a
``go`` line on stdin, then

- ``drain``: processes ``noop`` jobs until the queue is empty, then exits;
- ``serve``: processes ``noop`` jobs until SIGTERM; with RECORD, appends
  ``<job id>\\t<time.time() as the entrypoint starts>\\t<job.created>`` per job to that file at
  exit (job.created is stamped by the enqueueing transaction, NOW()).

At exit it prints ``cpu <seconds>``: its own CPU time (user + system, every thread) from ``go``.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import sys
import time

import asyncpg
from pgqueuer import AsyncpgDriver, Job, PgQueuer
from pgqueuer.domain.types import QueueExecutionMode


async def main(mode: str, dsn: str, record_path: str | None) -> None:
    conn = await asyncpg.connect(dsn)
    pgq = PgQueuer(AsyncpgDriver(conn))
    record: list[tuple[int, float, float]] = []

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        if record_path:
            record.append((int(job.id), time.time(), job.created.timestamp()))

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, pgq.shutdown.set)
    print("ready", flush=True)
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        return
    run_mode = QueueExecutionMode.drain if mode == "drain" else QueueExecutionMode.continuous
    cpu0 = _cpu()
    try:
        await pgq.run(batch_size=10, mode=run_mode)
    finally:
        print(f"cpu {_cpu() - cpu0:.6f}", flush=True)
        if record_path:
            with open(record_path, "w") as out:  # noqa: PTH123, ASYNC230
                out.writelines(f"{i}\t{t:.6f}\t{c:.6f}\n" for i, t, c in record)
        await conn.close()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
