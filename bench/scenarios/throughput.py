"""1. Throughput: one Session of N independent nodes, and many Sessions of 20 nodes, drained by
R runner processes. Work is submitted before the runners connect (they start, import, and are
then let go together), so the figure is the engine's, not the submission's. tasks/s = nodes /
(last accepted result - first claim), both read from the database (nodes.start_time of the
first attempt's claim, nodes.end_time of the accepted result).

CPU per 1,000 tasks, per process group (the scheduler, the runner processes, PostgreSQL: the
whole server, exited backends included), from /proc over the window from letting the runners
go to the last Session's end. Messages per task: every message the runner processes wrote and
read on their ClaimTask and PostResult streams (both ways, start to exit), over the nodes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from heat.scheduler.v1 import session_service_pb2_grpc, session_template_pb2

from bench.context import Context, Env
from bench.harness import (
    CpuMeter,
    Postgres,
    create_session,
    independent,
    log,
    messages_per_task,
    proc_cpu_s,
    runners,
    span,
    wait_sessions_end,
)


async def _drain(
    pg: Postgres,
    env: Env,
    names: list[str],
    count: int,
    capacity: int,
    prefix: str,
    messages_dir: Path,
) -> dict[str, Any]:
    async with runners(
        env.scheduler.address,
        env.secret,
        count,
        capacity,
        env.runner_log,
        prefix=prefix,
        messages_dir=messages_dir,
    ) as group:
        meter = CpuMeter(pg, env.schedulers, [p.pid for p in group.processes])
        meter.begin()
        cpu0 = proc_cpu_s(env.scheduler.pid)
        await group.go()
        await wait_sessions_end(env.conn, names, 900)
        cpu1 = proc_cpu_s(env.scheduler.pid)
        result = await span(env.conn, names)
        result["cpu_ms_per_1000"] = meter.per_thousand(result["nodes"])
    result["scheduler_cpu_pct"] = 100 * (cpu1 - cpu0) / result["seconds"]
    result["messages_per_task"] = messages_per_task(messages_dir, result["nodes"])
    return result


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


async def _submit(
    gate: asyncio.Semaphore,
    stub: session_service_pb2_grpc.SessionServiceAsyncStub,
    nodes: list[session_template_pb2.DagNode],
) -> str:
    async with gate:
        made, _ = await create_session(stub, nodes)
        return made


async def run(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    out: dict[str, Any] = {"runs": []}
    for count in sizes.runner_counts:
        async with (
            ctx.scheduler(f"throughput_r{count}") as env,
            env.scheduler.channel() as channel,
        ):
            stub = session_service_pb2_grpc.SessionServiceStub(channel)
            # One big Session.
            name, create_s = await create_session(stub, independent(sizes.throughput_nodes))
            one = await _drain(
                ctx.pg,
                env,
                [name],
                count,
                sizes.capacity,
                f"one{count}-",
                _folder(ctx.work / f"messages-one{count}"),
            )
            one["create_s"] = create_s
            log(
                f"throughput R={count}: 1 x {sizes.throughput_nodes}:"
                f" {one['tasks_per_s']:.0f} tasks/s"
            )
            # Many small Sessions, submitted 8 at a time.
            gate = asyncio.Semaphore(8)
            nodes = independent(sizes.many_session_nodes)
            started = time.perf_counter()
            names = await asyncio.gather(
                *(_submit(gate, stub, nodes) for _ in range(sizes.many_sessions))
            )
            submit_s = time.perf_counter() - started
            many = await _drain(
                ctx.pg,
                env,
                list(names),
                count,
                sizes.capacity,
                f"many{count}-",
                _folder(ctx.work / f"messages-many{count}"),
            )
            many["submit_s"] = submit_s
            many["sessions_created_per_s"] = sizes.many_sessions / submit_s
            log(
                f"throughput R={count}: {sizes.many_sessions} x {sizes.many_session_nodes}:"
                f" {many['tasks_per_s']:.0f} tasks/s"
            )
        out["runs"].append(
            {
                "runners": count,
                "capacity_per_runner": sizes.capacity,
                "one_session": {"nodes": sizes.throughput_nodes, **one},
                "many_sessions": {
                    "sessions": sizes.many_sessions,
                    "nodes_per_session": sizes.many_session_nodes,
                    **many,
                },
            }
        )
    out["method"] = (
        "Work is created first; R runner processes (heat_runtime, no-op processor, HEAT_CAPACITY"
        " each) then connect together. tasks/s = nodes / (max nodes.end_time - min"
        " nodes.start_time) of the Sessions, from the database."
    )
    return out
