"""4. Fan-out/fan-in: 1 -> W -> 1. Runners connect after the Session exists. From the database:
the whole run (first claim to last result) per node; fan-out = the source's result to the last
middle node claimed; fan-in = the last middle result to the sink's claim."""

from __future__ import annotations

from typing import Any

from heat.scheduler.v1 import session_service_pb2_grpc

from bench.context import Context
from bench.harness import create_session, fan, log, runners, span, wait_sessions_end


async def run(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    width = sizes.fan_width
    async with ctx.scheduler("fanout") as env:
        async with env.scheduler.channel() as channel:
            stub = session_service_pb2_grpc.SessionServiceStub(channel)
            async with runners(
                env.scheduler.address,
                env.secret,
                sizes.runners,
                sizes.capacity,
                env.runner_log,
                prefix="fan",
            ) as group:
                name, create_s = await create_session(stub, fan(width))
                await group.go()
                await wait_sessions_end(env.conn, [name], 300)
        result = await span(env.conn, [name])
        row = await env.conn.fetchrow(
            """
            SELECT
              extract(epoch FROM max(n.end_time) FILTER (WHERE n.key = 'src')) AS src_end,
              extract(epoch FROM max(n.start_time) FILTER (WHERE n.key LIKE 'n%')) AS mid_claimed,
              extract(epoch FROM max(n.end_time) FILTER (WHERE n.key LIKE 'n%')) AS mid_end,
              extract(epoch FROM max(n.ready_time) FILTER (WHERE n.key = 'sink')) AS sink_ready,
              extract(epoch FROM max(n.start_time) FILTER (WHERE n.key = 'sink')) AS sink_claimed
            FROM nodes AS n JOIN sessions AS s ON s.id = n.session_id WHERE s.name = $1
            """,
            name,
        )
    assert row is not None
    nodes = width + 2
    out = {
        "width": width,
        "nodes": nodes,
        "create_s": create_s,
        "run_s": result["seconds"],
        "per_node_ms": 1000 * result["seconds"] / nodes,
        "fan_out_ms": 1000 * (float(row["mid_claimed"]) - float(row["src_end"])),
        "fan_in_ms": 1000 * (float(row["sink_claimed"]) - float(row["mid_end"])),
        "sink_ready_after_last_mid_ms": 1000 * (float(row["sink_ready"]) - float(row["mid_end"])),
        "method": __doc__,
    }
    log(f"fan 1->{width}->1: {out['per_node_ms']:.3f} ms/node")
    return out
