"""3. DAG size: a layered Session (fixed layer width, each node depending on 3 nodes of the
layer before) of each size: the seconds CreateSession takes (client clock, the whole call), and
the run cost per node = (last accepted result - first claim) / nodes, from the database, with
the runners connecting after the Session exists. The same width at every size keeps the
parallelism the same, so the per-node figures compare the engine at different DAG sizes."""

from __future__ import annotations

from typing import Any

from heat.scheduler.v1 import session_service_pb2_grpc

from bench.context import Context
from bench.harness import create_session, layered, log, proc_cpu_s, runners, span, wait_sessions_end


async def run(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    out: dict[str, Any] = {"runs": [], "method": __doc__}
    for n in sizes.dag_sizes:
        async with ctx.scheduler(f"dag_{n}") as env:
            nodes = layered(n, layers=max(2, n // sizes.dag_width))
            edges = sum(len(node.depends_on) for node in nodes)
            async with env.scheduler.channel() as channel:
                stub = session_service_pb2_grpc.SessionServiceStub(channel)
                async with runners(
                    env.scheduler.address,
                    env.secret,
                    sizes.runners,
                    sizes.capacity,
                    env.runner_log,
                    prefix=f"dag{n}-",
                ) as group:
                    name, create_s = await create_session(stub, nodes)
                    cpu0 = proc_cpu_s(env.scheduler.pid)
                    await group.go()
                    await wait_sessions_end(env.conn, [name], 900)
                    cpu1 = proc_cpu_s(env.scheduler.pid)
            result = await span(env.conn, [name])
        per_node_ms = 1000 * result["seconds"] / n
        run = {
            "nodes": n,
            "edges": edges,
            "width": sizes.dag_width,
            "create_s": create_s,
            "run_s": result["seconds"],
            "per_node_ms": per_node_ms,
            "tasks_per_s": result["tasks_per_s"],
            "scheduler_cpu_pct": 100 * (cpu1 - cpu0) / result["seconds"],
        }
        log(f"dag {n}: create {create_s:.2f} s, {per_node_ms:.3f} ms/node")
        out["runs"].append(run)
    runs = out["runs"]
    if len(runs) >= 2:
        out["per_node_growth"] = runs[-1]["per_node_ms"] / runs[0]["per_node_ms"]
    return out
