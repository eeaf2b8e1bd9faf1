"""8. The critical path: makespan of one DAG with a long chain and many short branches on
scarce runners, with the critical path first (the default) and without (``--critical-path
false``: a Session's ready nodes in DAG order).

The DAG: B branches of two nodes each, listed first, then a chain of L nodes; every node
sleeps S ms in the runner (``sleep_ms``). One runner process with capacity C, so there is
more work than slots: the chain decides the makespan when it goes first, and adds to it when
it waits behind the branches. Makespan = last result - first claim (from the database); the
lower bound is max(chain alone, all work / C).
"""

from __future__ import annotations

from typing import Any

from heat.scheduler.v1 import session_service_pb2_grpc, session_template_pb2

from bench.context import Context
from bench.harness import TEMPLATE, chain, create_session, log, runners, span, wait_sessions_end


def dag(branches: int, length: int, sleep_ms: float) -> list[session_template_pb2.DagNode]:
    nodes = []
    for b in range(branches):
        nodes += chain(2, f"b{b}-", {"sleep_ms": sleep_ms})
    nodes += chain(length, "c", {"sleep_ms": sleep_ms})
    assert all(n.node_template == TEMPLATE for n in nodes)
    return nodes


async def _makespan(ctx: Context, critical_path: bool) -> float:
    sizes = ctx.sizes
    name = f"critical_path_{'on' if critical_path else 'off'}"
    flag = "true" if critical_path else "false"
    async with (
        ctx.scheduler(name, "--critical-path", flag) as env,
        env.scheduler.channel() as channel,
    ):
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        session, _ = await create_session(
            stub, dag(sizes.cp_branches, sizes.cp_chain, sizes.cp_sleep_ms)
        )
        async with runners(
            env.scheduler.address, env.secret, 1, sizes.cp_capacity, env.runner_log, prefix=name
        ) as group:
            await group.go()
            await wait_sessions_end(env.conn, [session], 600)
        seconds: float = (await span(env.conn, [session]))["seconds"]
    return seconds


async def run(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    on = await _makespan(ctx, True)
    off = await _makespan(ctx, False)
    nodes = 2 * sizes.cp_branches + sizes.cp_chain
    sleep_s = sizes.cp_sleep_ms / 1000
    out = {
        "branches": sizes.cp_branches,
        "chain": sizes.cp_chain,
        "nodes": nodes,
        "sleep_ms": sizes.cp_sleep_ms,
        "runner_capacity": sizes.cp_capacity,
        "lower_bound_s": max(sizes.cp_chain * sleep_s, nodes * sleep_s / sizes.cp_capacity),
        "makespan_critical_path_s": on,
        "makespan_dag_order_s": off,
        "speedup": off / on,
        "method": __doc__,
    }
    log(f"critical path: makespan {on:.2f} s first, {off:.2f} s in DAG order ({off / on:.2f}x)")
    return out
