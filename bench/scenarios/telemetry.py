"""7. What telemetry costs: the same work with telemetry off, on at the default sampling, and on
with every trace sampled.

Each mode gets a fresh scheduler (and its runners) with the OTEL_* environment of that mode:
``off`` none; ``default`` traces and metrics exported over OTLP/gRPC to a receiver in this
process (``tests.otlp.Receiver``, counting what it gets), the default sampler (parent-based,
trace-id ratio 0.1) for the scheduler and the runners alike; ``full`` the same with
``OTEL_TRACES_SAMPLER=parentbased_always_on``. The scheduler also serves its Prometheus
endpoint in both "on" modes. Per mode:

- throughput: many Sessions of 20 independent nodes (so the sampling ratio applies per
  Session), created first, then drained by R runners: tasks/s = nodes / (last accepted result -
  first claim), from the database, and the scheduler's CPU over that window (per task too:
  on a shared machine the steadier figure of what telemetry costs the scheduler);
- dispatch latency: idle runners; Sessions of 10 independent nodes submitted at a steady rate;
  per node ready -> claimed (nodes.start_time - nodes.ready_time: the scheduler's own stamps,
  where the dispatch spans and the latency histogram are made).

The modes run in turn, twice (off, default, full, off, default, full); each figure is the
better of its two runs, so a slow moment of the shared machine weighs less.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any, Final

from heat.scheduler.v1 import session_service_pb2_grpc

from bench.context import Context, Env
from bench.harness import (
    create_session,
    independent,
    log,
    percentiles,
    proc_cpu_s,
    runners,
    span,
    wait_sessions_end,
)
from tests.otlp import Receiver
from tests.support import free_port

MODES: Final = ("off", "default", "full")
ROUNDS: Final = 2
LATENCY_PER_SESSION: Final = 10


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """The OTEL_* variables of a mode, for the processes started meanwhile (the scheduler and
    the runners inherit this process's environment)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(values)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("OTEL_")]:
            del os.environ[key]
        os.environ.update(saved)


def mode_env(mode: str, endpoint: str) -> dict[str, str]:
    if mode == "off":
        return {}
    values = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "5000"}
    if mode == "full":
        values["OTEL_TRACES_SAMPLER"] = "parentbased_always_on"
    return values


async def _throughput(env: Env, ctx: Context, tag: str) -> dict[str, Any]:
    sizes = ctx.sizes
    async with env.scheduler.channel() as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        nodes = independent(sizes.many_session_nodes)
        names = [(await create_session(stub, nodes))[0] for _ in range(sizes.many_sessions)]
    async with runners(
        env.scheduler.address, env.secret, sizes.runners, sizes.capacity, env.runner_log,
        prefix=f"{tag}t",
    ) as group:  # fmt: skip
        cpu0 = proc_cpu_s(env.scheduler.pid)
        await group.go()
        await wait_sessions_end(env.conn, names, 900)
        cpu1 = proc_cpu_s(env.scheduler.pid)
    result = await span(env.conn, names)
    result["scheduler_cpu_pct"] = 100 * (cpu1 - cpu0) / result["seconds"]
    # The scheduler's own CPU per task: less sensitive to a busy machine than tasks/s.
    result["scheduler_cpu_ms_per_task"] = 1000 * (cpu1 - cpu0) / result["nodes"]
    return result


async def _latency(env: Env, ctx: Context, tag: str) -> dict[str, Any]:
    sizes = ctx.sizes
    async with env.scheduler.channel() as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        async with runners(
            env.scheduler.address, env.secret, sizes.runners, sizes.capacity, env.runner_log,
            prefix=f"{tag}l",
        ) as group:  # fmt: skip
            await group.go()
            warm, _ = await create_session(stub, independent(sizes.runners * sizes.capacity))
            await wait_sessions_end(env.conn, [warm], 60)
            period = LATENCY_PER_SESSION / sizes.latency_rate
            count = max(1, round(sizes.latency_seconds / period))
            dag = independent(LATENCY_PER_SESSION)
            loop = asyncio.get_running_loop()
            start = loop.time() + 0.05
            pending = []
            for i in range(count):
                delay = start + i * period - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                pending.append(asyncio.create_task(create_session(stub, dag)))
            names = [name for name, _ in await asyncio.gather(*pending)]
            await wait_sessions_end(env.conn, names, 120)
    rows = await env.conn.fetch(
        """
        SELECT extract(epoch FROM n.start_time - n.ready_time) * 1000 AS ms
        FROM nodes AS n JOIN sessions AS s ON s.id = n.session_id
        WHERE s.name = ANY($1::text[])
        """,
        names,
    )
    return percentiles([float(r["ms"]) for r in rows])


async def run(ctx: Context) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    async with Receiver(keep=False) as receiver:
        for round_ in range(1 if ctx.sizes.mode == "tiny" else ROUNDS):
            for mode in MODES:
                tag = f"{mode}{round_}"
                extra = ("--metrics-listen", f"127.0.0.1:{free_port()}") if mode != "off" else ()
                spans_before = receiver.span_count
                with environment(mode_env(mode, receiver.endpoint)):
                    async with ctx.scheduler(f"telemetry_{tag}", *extra) as env:
                        throughput = await _throughput(env, ctx, tag)
                        latency: dict[str, Any] = {"count": 0}
                        if ctx.sizes.mode != "tiny":  # (the smoke test: throughput is enough)
                            latency = await _latency(env, ctx, tag)
                        # The scheduler flushes its spans as it stops, at the end of the block.
                spans = receiver.span_count - spans_before
                log(
                    f"telemetry {mode} (round {round_ + 1}): {throughput['tasks_per_s']:.0f}"
                    f" tasks/s, ready->claim p50 {latency.get('p50', 0):.2f} ms"
                    f" p99 {latency.get('p99', 0):.2f} ms, {spans} spans received"
                )
                runs[mode].append(
                    {"throughput": throughput, "ready_to_claim_ms": latency, "spans": spans}
                )
    out: dict[str, Any] = {"runs": runs}
    for mode in MODES:
        best_tps = max(r["throughput"]["tasks_per_s"] for r in runs[mode])
        best_lat = min(runs[mode], key=lambda r: r["ready_to_claim_ms"].get("p50", 1e9))
        out[mode] = {
            "tasks_per_s": best_tps,
            "ready_to_claim_ms": best_lat["ready_to_claim_ms"],
            "scheduler_cpu_pct": min(r["throughput"]["scheduler_cpu_pct"] for r in runs[mode]),
            "scheduler_cpu_ms_per_task": min(
                r["throughput"]["scheduler_cpu_ms_per_task"] for r in runs[mode]
            ),
            "spans": max(r["spans"] for r in runs[mode]),
        }
    off = out["off"]["tasks_per_s"]
    for mode in MODES[1:]:
        out[mode]["throughput_cost_pct"] = 100 * (1 - out[mode]["tasks_per_s"] / off)
        out[mode]["cpu_per_task_cost_pct"] = 100 * (
            out[mode]["scheduler_cpu_ms_per_task"] / out["off"]["scheduler_cpu_ms_per_task"] - 1
        )
    out["sizes"] = {
        "sessions": ctx.sizes.many_sessions,
        "nodes_per_session": ctx.sizes.many_session_nodes,
        "runners": ctx.sizes.runners,
        "capacity_per_runner": ctx.sizes.capacity,
        "latency_nodes_per_s": ctx.sizes.latency_rate,
        "latency_seconds": ctx.sizes.latency_seconds,
    }
    out["method"] = __doc__
    return out
