"""6. The limit and the peer, on the same PostgreSQL server as the scheduler's figures.

- pgbench: a one-row UPDATE per transaction (random row of pgbench_accounts), at each client
  count: the commit-rate ceiling of this machine with fsync and synchronous_commit on.
- pgqueuer (asyncpg driver, default durable install, batch size 10): N no-op jobs enqueued
  first, then drained by W worker processes; jobs/s = N / (last 'successful' - first 'picked'
  in pgqueuer_log); CPU per 1,000 jobs of the workers (each reports its own from ``go``) and
  of PostgreSQL (the whole server, from /proc) over the same window. Then the enqueue->start
  latency with one idle worker while jobs are
  enqueued one by one at the dispatch-latency rate: time.time() as the entrypoint starts minus
  job.created (NOW() of the enqueueing transaction) - the same kind of stamp as our
  nodes.ready_time.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path
from typing import Any, Final

import asyncpg
from pgqueuer import AsyncpgDriver, Queries

from bench.context import Context
from bench.harness import PYTHON, ROOT, log, percentiles, postgres_cpu_s

PGBENCH: Final = Path("/usr/lib/postgresql/15/bin/pgbench")
UPDATE_ONE_ROW: Final = (
    "\\set aid random(1, 100000 * :scale)\n"
    "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n"
)


def _pgbench_path() -> Path | None:
    if PGBENCH.exists():
        return PGBENCH
    found = shutil.which("pgbench")
    return Path(found) if found else None


async def _run(*args: str, password: str = "") -> str:
    env = {**os.environ, "PGPASSWORD": password} if password else None
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} failed ({proc.returncode}):\n{text[-2000:]}")
    return text


async def pgbench(ctx: Context) -> dict[str, Any]:
    binary = _pgbench_path()
    if binary is None:
        return {"error": "pgbench not found"}
    await ctx.pg.create_database("pgbench")
    server = ctx.pg.server
    # The embedded server's socket (TCP is off), with its password.
    connection = ["-h", str(server.socket_dir), "-p", str(server.port), "-U", "heat", "pgbench"]
    await _run(str(binary), "-i", "-s", "1", "-q", *connection, password=server.password)
    script = ctx.work / "update_one_row.sql"
    script.write_text(UPDATE_ONE_ROW)
    runs = []
    for clients in ctx.sizes.pgbench_clients:
        text = await _run(
            str(binary), "-n", "-M", "prepared", "-f", str(script),
            "-c", str(clients), "-j", str(min(clients, 2)),
            "-T", str(max(1, round(ctx.sizes.pgbench_seconds))), *connection,
            password=server.password,
        )  # fmt: skip
        match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", text)
        tps = float(match.group(1)) if match else 0.0
        latency = re.search(r"latency average = ([0-9.]+) ms", text)
        runs.append(
            {
                "clients": clients,
                "tps": tps,
                "latency_ms": float(latency.group(1)) if latency else None,
            }
        )
        log(f"pgbench {clients} clients: {tps:.0f} commits/s")
    return {"runs": runs, "ceiling_tps": max(float(r["tps"] or 0.0) for r in runs)}


async def _workers(
    mode: str, dsn: str, count: int, log_file: Path, record: Path | None = None
) -> list[asyncio.subprocess.Process]:
    out = log_file.open("ab")
    procs = []
    for _ in range(count):
        args = [PYTHON, "-m", "bench.pgq_worker", mode, dsn]
        if record is not None:
            args.append(str(record))
        procs.append(
            await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=out,
                cwd=ROOT,
            )
        )
    out.close()
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if line.strip() != b"ready":
            raise RuntimeError(f"a pgqueuer worker did not start (said {line!r}); see {log_file}")
    return procs


async def _go(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()


async def pgqueuer(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    log_file = ctx.work / "pgqueuer.log"
    runs = []
    for workers in sizes.pgqueuer_workers:
        dsn = await ctx.pg.create_database(f"pgq_{workers}")
        conn = await asyncpg.connect(dsn)
        try:
            queries = Queries(AsyncpgDriver(conn))
            await queries.install()
            procs = await _workers("drain", dsn, workers, log_file)
            n = sizes.pgqueuer_jobs
            for first in range(0, n, 1000):
                count = min(1000, n - first)
                await queries.enqueue(["noop"] * count, [None] * count, [0] * count)
            pg_cpu0 = postgres_cpu_s(ctx.pg)
            await _go(procs)
            worker_cpu = 0.0
            for proc in procs:
                assert proc.stdout is not None
                said = await asyncio.wait_for(proc.stdout.read(), 900)
                await asyncio.wait_for(proc.wait(), 60)
                for line in said.decode(errors="replace").splitlines():
                    if line.startswith("cpu "):
                        worker_cpu += float(line.split()[1])
            pg_cpu = postgres_cpu_s(ctx.pg) - pg_cpu0
            row = await conn.fetchrow(
                """
                SELECT extract(epoch FROM min(created) FILTER (WHERE status = 'picked')) AS first,
                       extract(epoch FROM max(created) FILTER (WHERE status = 'successful'))
                           AS last,
                       count(*) FILTER (WHERE status = 'successful') AS done
                FROM pgqueuer_log
                """
            )
        finally:
            await conn.close()
        assert row is not None
        seconds = float(row["last"]) - float(row["first"])
        runs.append(
            {
                "workers": workers,
                "batch_size": 10,
                "jobs": n,
                "done": row["done"],
                "seconds": seconds,
                "jobs_per_s": n / seconds,
                "cpu_ms_per_1000": {
                    "workers": 1e6 * worker_cpu / n,
                    "postgres": 1e6 * pg_cpu / n,
                    "total": 1e6 * (worker_cpu + pg_cpu) / n,
                },
            }
        )
        log(f"pgqueuer {workers} workers: {n / seconds:.0f} jobs/s")

    # Enqueue -> start latency at the dispatch-latency rate, one worker waiting.
    dsn = await ctx.pg.create_database("pgq_latency")
    record = ctx.work / "pgqueuer-latency.tsv"
    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        await queries.install()
        procs = await _workers("serve", dsn, 1, log_file, record)
        await _go(procs)
        await asyncio.sleep(1.0)
        period = 1 / sizes.latency_rate
        count = max(1, round(sizes.latency_seconds * sizes.latency_rate))
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        enqueuer = await asyncpg.connect(dsn)
        try:
            queue = Queries(AsyncpgDriver(enqueuer))
            for i in range(count):
                delay = start + i * period - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await queue.enqueue("noop", None)
        finally:
            await enqueuer.close()
        for _ in range(600):
            left = await conn.fetchval("SELECT count(*) FROM pgqueuer")
            if left == 0:
                break
            await asyncio.sleep(0.1)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 30)
    finally:
        await conn.close()
    latencies = []
    for line in record.read_text().splitlines():
        _, started, created = line.split("\t")
        latencies.append((float(started) - float(created)) * 1000)
    latency = percentiles(latencies)
    log(f"pgqueuer latency: p50 {latency.get('p50', 0):.2f} ms, p99 {latency.get('p99', 0):.2f} ms")
    return {"runs": runs, "latency_ms": latency, "latency_rate": sizes.latency_rate}


async def run(ctx: Context) -> dict[str, Any]:
    return {"pgbench": await pgbench(ctx), "pgqueuer": await pgqueuer(ctx), "method": __doc__}
