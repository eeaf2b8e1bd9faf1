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
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from heat.scheduler.v1 import session_service_pb2_grpc

from bench.context import Context, Env
from bench.harness import chain, create_session, independent, log, runners, wait_sessions_end

SMALL = 3


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


async def run(ctx: Context) -> dict[str, Any]:
    return {
        "small_behind_big": await _small_behind_big(ctx),
        "shares_under_weights": await _shares(ctx),
        "method": __doc__,
    }
