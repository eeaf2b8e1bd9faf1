"""2. Dispatch latency: idle runners connected; Sessions submitted at a steady rate of nodes/s.

Each Session has 10 nodes: 5 roots (ready when the Session is created) and 5 children, each
depending on one root (ready when that root's result is accepted). A Session is started every
10/rate seconds on a fixed schedule (a slow CreateSession does not delay the next one).

Latency of a node = t_process - ready_time, where t_process is ``time.time()`` taken by the
no-op processor as process() starts (in the runner process) and ready_time is nodes.ready_time,
stamped by the scheduler with the same machine clock: for a root, the time CreateSession began
its transaction (so the figure includes inserting the Session, reading it back and the commit);
for a child, the time of the transaction that accepted its upstream result. It covers: commit,
wake-up, the claim transaction (a durable commit), the push over gRPC, and the runtime handing
the task to process(). It is also split at nodes.start_time (the scheduler's clock as its claim
transaction begins): ready -> claim, and claim -> process().
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from heat.scheduler.v1 import session_service_pb2_grpc, session_template_pb2

from bench.context import Context
from bench.harness import (
    TEMPLATE,
    create_session,
    independent,
    log,
    percentiles,
    runners,
    wait_sessions_end,
)

PER_SESSION = 10


def _dag() -> list[session_template_pb2.DagNode]:
    roots = [session_template_pb2.DagNode(key=f"a{i}", node_template=TEMPLATE) for i in range(5)]
    children = [
        session_template_pb2.DagNode(key=f"b{i}", node_template=TEMPLATE, depends_on=[f"a{i}"])
        for i in range(5)
    ]
    return roots + children


def _records(folder: Path) -> dict[tuple[str, str], float]:
    seen: dict[tuple[str, str], float] = {}
    for path in folder.glob("*.tsv"):
        for line in path.read_text().splitlines():
            session, key, stamp = line.split("\t")
            at = float(stamp)
            if (session, key) not in seen or at < seen[(session, key)]:
                seen[(session, key)] = at
    return seen


async def run(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    record_dir = ctx.work / "latency-records"
    record_dir.mkdir(exist_ok=True)
    async with ctx.scheduler("latency") as env:
        async with env.scheduler.channel() as channel:
            stub = session_service_pb2_grpc.SessionServiceStub(channel)
            async with runners(
                env.scheduler.address,
                env.secret,
                sizes.runners,
                sizes.capacity,
                env.runner_log,
                record_dir=record_dir,
                prefix="lat",
            ) as group:
                await group.go()
                # Warm up: every runner connected and every code path run once.
                warm, _ = await create_session(stub, independent(sizes.runners * sizes.capacity))
                await wait_sessions_end(env.conn, [warm], 60)
                await asyncio.sleep(1.0)
                period = PER_SESSION / sizes.latency_rate
                count = max(1, round(sizes.latency_seconds / period))
                dag = _dag()
                loop = asyncio.get_running_loop()
                start = loop.time() + 0.05
                pending: list[asyncio.Task[tuple[str, float]]] = []
                for i in range(count):
                    delay = start + i * period - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    pending.append(asyncio.create_task(create_session(stub, dag)))
                made = await asyncio.gather(*pending)
                names = [name for name, _ in made]
                await wait_sessions_end(env.conn, names, 120)
                offered = count * PER_SESSION / (loop.time() - start)
            # The runners wrote their records as they exited.
        rows = await env.conn.fetch(
            """
            SELECT s.name, n.key, extract(epoch FROM n.ready_time) AS ready,
                   extract(epoch FROM n.start_time) AS claimed
            FROM nodes AS n JOIN sessions AS s ON s.id = n.session_id
            WHERE s.name = ANY($1::text[])
            """,
            names,
        )
    started = _records(record_dir)
    roots: list[float] = []
    children: list[float] = []
    to_claim: list[float] = []
    after_claim: list[float] = []
    missing = 0
    for row in rows:
        at = started.get((row["name"], row["key"]))
        if at is None:
            missing += 1
            continue
        ms = (at - float(row["ready"])) * 1000
        (roots if row["key"].startswith("a") else children).append(ms)
        to_claim.append((float(row["claimed"]) - float(row["ready"])) * 1000)
        after_claim.append((at - float(row["claimed"])) * 1000)
    everything = percentiles(roots + children)
    log(
        f"latency: p50 {everything.get('p50', 0):.2f} ms, p99 {everything.get('p99', 0):.2f} ms"
        f" over {everything['count']} nodes"
    )
    create_times = [took * 1000 for _, took in made]
    return {
        "sessions": count,
        "nodes": count * PER_SESSION,
        "offered_nodes_per_s": offered,
        "runners": sizes.runners,
        "capacity_per_runner": sizes.capacity,
        "all_ms": everything,
        "roots_ms": percentiles(roots),
        "children_ms": percentiles(children),
        # The split at nodes.start_time, stamped as the claim transaction begins.
        "ready_to_claim_ms": percentiles(to_claim),
        "claim_to_process_ms": percentiles(after_claim),
        "create_session_ms": percentiles(create_times),
        "missing_records": missing,
        "method": __doc__,
        "measured_at": time.time(),
    }
