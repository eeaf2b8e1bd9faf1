"""7. Fairness: a small Session behind a huge one, and fairness keys sharing a Runner by weight.

Small behind big: R runner processes (no-op processor) are connected and idle; a chain of 3
nodes is submitted and runs alone (its time: Session end - create, from the database). Then a
Session of N independent nodes is submitted; once a tenth of it has run, the same chain is
submitted again. Figure: the chain's time behind the huge Session over its time alone (with
claims in ready-time order, as before issue 17, it waited for the whole huge Session), and
how far the huge one had got when the chain ended.

Shares under weights: a scheduler with ``--fairness-weights a=3,b=1``; a Session of N nodes
labelled ``team=a`` and one labelled ``team=b`` are created before the runners connect.
Figure: of the first N dispatches (both still have work), the ratio of team a's to team b's
(target 3), by claim order (nodes.start_time, then claim batch).

Claims with many queued Sessions: the same backlog (M x 20 queued nodes) as one Session and as
M Sessions of 20, created before anything claims; one instance on the raw stubs grants 1
credit K times, then 32 credits K / 4 times, and times each grant until its last task arrives
(the scheduler's claim transaction, a durable commit, and the push over gRPC; nothing is
posted, no lease runs out meanwhile). The difference between the two is what sharing a
Runner among M Sessions costs a claim.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
from heat.scheduler.v1 import runner_service_pb2 as rpb
from heat.scheduler.v1 import runner_service_pb2_grpc, session_service_pb2_grpc

from bench.context import Context, Env
from bench.harness import (
    CHANNEL_OPTIONS,
    RUNNER,
    chain,
    create_session,
    independent,
    log,
    percentiles,
    runners,
    wait_sessions_end,
)

SMALL = 3
CLAIM_SESSION_NODES = 20


async def _lifetime(conn: asyncpg.Connection, name: str) -> float:
    seconds = await conn.fetchval(
        "SELECT extract(epoch FROM end_time - create_time) FROM sessions WHERE name = $1", name
    )
    return float(seconds)


async def _done(conn: asyncpg.Connection, name: str) -> int:
    count: int = await conn.fetchval(
        """
        SELECT count(*) FROM nodes AS n JOIN sessions AS s ON s.id = n.session_id
        WHERE s.name = $1 AND n.state = 'succeeded'
        """,
        name,
    )
    return count


async def _steps(conn: asyncpg.Connection, name: str) -> list[dict[str, float]]:
    """Each node of a Session: ready -> claimed -> result accepted, in ms."""
    rows = await conn.fetch(
        """
        SELECT n.key, extract(epoch FROM n.start_time - n.ready_time) * 1000 AS to_claim,
               extract(epoch FROM n.end_time - n.start_time) * 1000 AS to_result
        FROM nodes AS n JOIN sessions AS s ON s.id = n.session_id
        WHERE s.name = $1 ORDER BY n.idx
        """,
        name,
    )
    return [
        {
            "key": r["key"],
            "ready_to_claim_ms": float(r["to_claim"]),
            "claim_to_result_ms": float(r["to_result"]),
        }
        for r in rows
    ]


async def _small_behind_big(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    async with (
        ctx.scheduler("fairness_small") as env,
        env.scheduler.channel() as channel,
        runners(
            env.scheduler.address, env.secret, sizes.runners, sizes.capacity, env.runner_log,
            prefix="fair",
        ) as group,
    ):  # fmt: skip
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        await group.go()
        warm, _ = await create_session(stub, independent(sizes.runners * sizes.capacity))
        await wait_sessions_end(env.conn, [warm], 60)
        alone_name, _ = await create_session(stub, chain(SMALL, "s"))
        await wait_sessions_end(env.conn, [alone_name], 60)
        alone = await _lifetime(env.conn, alone_name)
        big, _ = await create_session(stub, independent(sizes.fairness_big))
        while True:  # polled on the database, as wait_sessions_end does
            if await _done(env.conn, big) >= sizes.fairness_big // 10:
                break
            await asyncio.sleep(0.01)
        small, _ = await create_session(stub, chain(SMALL, "s"))
        await wait_sessions_end(env.conn, [small], 600)
        big_done_then = await _done(env.conn, big)
        behind = await _lifetime(env.conn, small)
        alone_steps = await _steps(env.conn, alone_name)
        behind_steps = await _steps(env.conn, small)
        await wait_sessions_end(env.conn, [big], 600)
        big_s = await _lifetime(env.conn, big)
    out = {
        "big_nodes": sizes.fairness_big,
        "small_nodes": SMALL,
        "runners": sizes.runners,
        "capacity_per_runner": sizes.capacity,
        "small_alone_s": alone,
        "small_behind_big_s": behind,
        "ratio": behind / alone,
        "big_s": big_s,
        "big_done_when_small_ended": big_done_then / sizes.fairness_big,
        "small_alone_steps": alone_steps,
        "small_behind_steps": behind_steps,
    }
    log(
        f"fairness: 3-node chain alone {alone * 1000:.0f} ms, behind {sizes.fairness_big} nodes"
        f" {behind * 1000:.0f} ms ({out['ratio']:.2f}x)"
    )
    return out


async def _shares(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    n = sizes.fairness_share_nodes
    async with (
        ctx.scheduler("fairness_shares", "--fairness-weights", "a=3,b=1") as env,
        env.scheduler.channel() as channel,
    ):
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        a, _ = await create_session(stub, independent(n), labels={"team": "a"})
        b, _ = await create_session(stub, independent(n), labels={"team": "b"})
        async with runners(
            env.scheduler.address, env.secret, sizes.runners, sizes.capacity, env.runner_log,
            prefix="share",
        ) as group:  # fmt: skip
            await group.go()
            await wait_sessions_end(env.conn, [a, b], 600)
        first = await _first_dispatches(env, n)
    share_a, share_b = first.get(a, 0), first.get(b, 0)
    out = {
        "nodes_per_team": n,
        "weights": {"a": 3, "b": 1},
        "window_dispatches": n,
        "team_a": share_a,
        "team_b": share_b,
        "ratio": share_a / share_b if share_b else None,
    }
    log(f"fairness: weights 3:1 -> first {n} dispatches {share_a}:{share_b}")
    return out


async def _first_dispatches(env: Env, n: int) -> dict[str, int]:
    rows = await env.conn.fetch(
        """
        SELECT name, count(*)::integer AS n FROM (
            SELECT s.name FROM nodes AS n JOIN sessions AS s ON s.id = n.session_id
            ORDER BY n.start_time, n.attempt_id LIMIT $1
        ) AS first GROUP BY name
        """,
        n,
    )
    return {r["name"]: r["n"] for r in rows}


async def _claim_times(env: Env, credits: int, rounds: int) -> list[float]:
    """Milliseconds from granting ``credits`` to receiving that many tasks, ``rounds`` times."""
    requests: asyncio.Queue[rpb.ClaimTaskRequest] = asyncio.Queue()
    start = rpb.ClaimStart(runner=RUNNER, instance_id=f"claims-{credits}", credits=0)
    await requests.put(rpb.ClaimTaskRequest(start=start))

    async def feed() -> AsyncIterator[rpb.ClaimTaskRequest]:
        while True:
            yield await requests.get()

    times = []
    async with grpc.aio.insecure_channel(env.scheduler.address, options=CHANNEL_OPTIONS) as ch:
        stream = runner_service_pb2_grpc.RunnerServiceStub(ch).ClaimTask(
            feed(), metadata=(("authorization", f"Bearer {env.secret}"),)
        )
        for _ in range(rounds):
            started = time.perf_counter()
            await requests.put(rpb.ClaimTaskRequest(credit=rpb.ClaimCredit(credits=credits)))
            got = 0
            while got < credits:
                response = await stream.read()
                assert isinstance(response, rpb.ClaimTaskResponse)
                got += response.HasField("task")
            times.append((time.perf_counter() - started) * 1000)
        stream.cancel()
    return times


async def _claims(ctx: Context, sessions: int) -> dict[str, Any]:
    sizes = ctx.sizes
    backlog = sizes.claim_sessions * CLAIM_SESSION_NODES
    per_session = backlog // sessions
    async with (
        ctx.scheduler(f"fairness_claims_{sessions}") as env,
        env.scheduler.channel() as channel,
    ):
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        gate = asyncio.Semaphore(8)

        async def submit() -> None:
            async with gate:
                await create_session(stub, independent(per_session))

        await asyncio.gather(*(submit() for _ in range(sessions)))
        rounds = sizes.claim_rounds
        one = await _claim_times(env, 1, rounds)
        batch = await _claim_times(env, 32, max(1, rounds // 4))
    return {
        "sessions": sessions,
        "queued_nodes": backlog,
        "claim_1_ms": percentiles(one),
        "claim_32_ms": percentiles(batch),
    }


async def run(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {
        "small_behind_big": await _small_behind_big(ctx),
        "shares_under_weights": await _shares(ctx),
    }
    one = await _claims(ctx, 1)
    many = await _claims(ctx, ctx.sizes.claim_sessions)
    out["claims"] = {"one_session": one, "many_sessions": many}
    log(
        f"fairness: claim of 1 task with {one['queued_nodes']} queued in 1 Session"
        f" {one['claim_1_ms']['p50']:.2f} ms, in {many['sessions']} Sessions"
        f" {many['claim_1_ms']['p50']:.2f} ms (p50); of 32 tasks"
        f" {one['claim_32_ms']['p50']:.2f} / {many['claim_32_ms']['p50']:.2f} ms"
    )
    out["method"] = __doc__
    return out
