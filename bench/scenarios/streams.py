"""5. Idle streams: many runner instances connected and heartbeating, no work. The scheduler's
RSS (VmRSS from /proc) before and after they connect, its CPU% over the window (utime + stime
from /proc), and the PostgreSQL writes in the window, scaled to a minute: tuples written to the
scheduler's database and its commits (pg_stat_database), write statements (INSERT/UPDATE/
DELETE, from pg_stat_statements when loaded), WAL records (pg_stat_wal, whole server) and the
tuples written per table (pg_stat_user_tables). The same window is first measured on the same
scheduler with no runner connected (baseline): the difference is what the runners cause."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from bench.context import Context, Env
from bench.harness import (
    PYTHON,
    ROOT,
    delta,
    log,
    proc_cpu_s,
    proc_hwm_mb,
    proc_rss_mb,
    write_counters,
)


async def _window(
    ctx: Context, env: Env, seconds: float
) -> tuple[dict[str, float], dict[str, float], float, float]:
    """Counters moved over a window of ``seconds``: database-wide, per table, CPU s, length."""
    admin = await asyncpg.connect(ctx.pg.admin_dsn)
    try:
        before = await write_counters(admin, env.database, ctx.pg.statements)
        tables0 = await _table_writes(env.conn)
        cpu0 = proc_cpu_s(env.scheduler.pid)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(seconds)
        window = loop.time() - t0
        cpu = proc_cpu_s(env.scheduler.pid) - cpu0
        # Backends report their counters when idle, at most once a second: give them time.
        await asyncio.sleep(1.5)
        after = await write_counters(admin, env.database, ctx.pg.statements)
        tables = delta(await _table_writes(env.conn), tables0)
    finally:
        await admin.close()
    return delta(after, before), {k: v for k, v in tables.items() if v}, cpu, window


async def _table_writes(conn: asyncpg.Connection) -> dict[str, float]:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = await conn.fetch(
        "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del AS n FROM pg_stat_user_tables"
    )
    return {r["relname"]: float(r["n"]) for r in rows}


def _per_minute(moved: dict[str, float], window: float) -> dict[str, float]:
    return {k: v * 60 / window for k, v in moved.items()}


async def run(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    async with ctx.scheduler("streams") as env:
        pid = env.scheduler.pid
        await asyncio.sleep(1.0)
        rss_before = proc_rss_mb(pid)
        # Baseline: the same scheduler with no runner connected.
        log(f"streams: baseline window, no runner connected ({sizes.idle_window:g} s)")
        base, base_tables, base_cpu, base_window = await _window(ctx, env, sizes.idle_window)
        per = -(-sizes.idle_instances // sizes.idle_processes)
        clients: list[asyncio.subprocess.Process] = []
        err = (ctx.work / "streams.clients.log").open("ab")
        for p in range(sizes.idle_processes):
            first = p * per
            count = min(per, sizes.idle_instances - first)
            clients.append(
                await asyncio.create_subprocess_exec(
                    PYTHON,
                    "-m",
                    "bench.idle_streams",
                    env.scheduler.address,
                    env.secret,
                    str(first),
                    str(count),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=err,
                    cwd=ROOT,
                )
            )
        err.close()
        interval = 0.0
        for client in clients:
            assert client.stdout is not None
            line = await asyncio.wait_for(client.stdout.readline(), 180)
            if not line.startswith(b"ready "):
                raise RuntimeError(f"an idle-stream client failed (said {line!r})")
            interval = float(line.split()[1])
        log(f"streams: {sizes.idle_instances} instances connected; measuring")
        await asyncio.sleep(2.0)  # let connection-time work settle
        moved, tables, cpu, window = await _window(ctx, env, sizes.idle_window)
        rss_after = proc_rss_mb(pid)
        hwm = proc_hwm_mb(pid)
        errors = 0
        for client in clients:
            client.terminate()
        for client in clients:
            said, _ = await client.communicate()
            for word in said.split(b"\n"):
                if word.startswith(b"errors "):
                    errors += int(word.split()[1])
    per_minute = _per_minute(moved, window)
    baseline = _per_minute(base, base_window)
    out = {
        "instances": sizes.idle_instances,
        "client_processes": sizes.idle_processes,
        "heartbeat_interval_s": interval,
        "window_s": window,
        "scheduler_rss_mb_before": rss_before,
        "scheduler_rss_mb": rss_after,
        "scheduler_rss_hwm_mb": hwm,
        "scheduler_cpu_pct": 100 * cpu / window,
        "scheduler_cpu_pct_baseline": 100 * base_cpu / base_window,
        "db_per_minute": per_minute,
        "db_per_minute_baseline": baseline,
        "db_per_minute_due_to_runners": {
            k: per_minute[k] - baseline.get(k, 0.0) for k in per_minute
        },
        "tables_written_per_minute": _per_minute(tables, window),
        "tables_written_per_minute_baseline": _per_minute(base_tables, base_window),
        "pg_stat_statements": ctx.pg.statements,
        "stream_errors": errors,
        "method": __doc__,
    }
    log(
        f"streams: RSS {rss_after:.0f} MB, CPU {out['scheduler_cpu_pct']:.1f}%,"
        f" tuples written/min {per_minute['tuples_written']:.0f}"
        f" (baseline {baseline['tuples_written']:.0f})"
    )
    return out
