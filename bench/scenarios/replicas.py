"""7. Scale-out: the throughput scenario's work (one Session of N independent nodes, then many
Sessions of 20), drained by R runner processes split between two scheduler replicas on the
same database (half connect to each), next to the same with one replica, in the same run.
tasks/s as in scenario 1 (from the database); CPU per 1,000 tasks per process group (both
schedulers together). One Session's nodes all book into one Session row, which every
settlement locks: the many Sessions show the replicas without that one shared row."""

from __future__ import annotations

import contextlib
from typing import Any

from heat.scheduler.v1 import session_service_pb2_grpc

from bench.context import Context
from bench.harness import (
    CpuMeter,
    Runners,
    create_session,
    independent,
    log,
    span,
    wait_sessions_end,
)


async def _run(ctx: Context, replicas: int, *, many: bool) -> dict[str, Any]:
    sizes = ctx.sizes
    count = sizes.runners
    kind = "many" if many else "one"
    async with ctx.scheduler(f"replicas_{kind}_{replicas}", replicas=replicas) as env:
        async with env.scheduler.channel() as channel:
            stub = session_service_pb2_grpc.SessionServiceStub(channel)
            if many:
                nodes = independent(sizes.many_session_nodes)
                names = [(await create_session(stub, nodes))[0] for _ in range(sizes.many_sessions)]
            else:
                names = [(await create_session(stub, independent(sizes.throughput_nodes)))[0]]
        async with contextlib.AsyncExitStack() as stack:
            groups: list[Runners] = []
            for i, replica in enumerate(env.replicas):
                share = count // replicas + (i < count % replicas)
                group = await Runners.start(
                    replica.address,
                    env.secret,
                    share,
                    sizes.capacity,
                    env.runner_log,
                    prefix=f"rep{kind}{replicas}-{i}-",
                )
                stack.push_async_callback(group.stop)
                groups.append(group)
            meter = CpuMeter(ctx.pg, env.schedulers, [p.pid for g in groups for p in g.processes])
            meter.begin()
            for group in groups:
                await group.go()
            await wait_sessions_end(env.conn, names, 900)
            result = await span(env.conn, names)
            result["cpu_ms_per_1000"] = meter.per_thousand(result["nodes"])
    log(
        f"replicas={replicas}, {len(names)} Session(s): {result['tasks_per_s']:.0f} tasks/s"
        f" with {count} runners"
    )
    return {"replicas": replicas, "runners": count, "sessions": len(names), **result}


async def run(ctx: Context) -> dict[str, Any]:
    one = [await _run(ctx, 1, many=False), await _run(ctx, 2, many=False)]
    many = [await _run(ctx, 1, many=True), await _run(ctx, 2, many=True)]
    return {
        "runs": one + many,
        "second_replica_gain": one[1]["tasks_per_s"] / one[0]["tasks_per_s"],
        "second_replica_gain_many": many[1]["tasks_per_s"] / many[0]["tasks_per_s"],
        "method": __doc__,
    }
