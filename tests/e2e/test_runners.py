"""Sessions run to the end by real runner processes, through failures of every kind."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from typing import Any

import asyncpg
from google.protobuf import json_format
from heat.scheduler.v1 import session_pb2 as s
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc

from tests.e2e.conftest import QUICK, Cluster
from tests.support import serve


def query(dsn: str, sql: str) -> list[Any]:
    async def run() -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(run())


def node(key: str, *after: str, template: str = "echo", **config: Any) -> dict[str, Any]:
    return {"key": key, "nodeTemplate": template, "dependsOn": list(after), "config": config}


def outputs(session: s.Session) -> dict[str, Any]:
    return {n.key: json_format.MessageToDict(n.outputs) for n in session.nodes}


def accepted_once(dsn: str) -> collections.Counter[int]:
    """How many accepted verdicts each node got: exactly one for every success."""
    rows = query(
        dsn, "SELECT count(*) AS n FROM results WHERE status = 'accepted' GROUP BY session_id, idx"
    )
    return collections.Counter(r["n"] for r in rows)


def test_diamond_outputs_flow_downstream(cluster: Cluster) -> None:
    cluster.start_runner("r1")
    name = cluster.submit(
        [node("a", v=1), node("b", "a", v=2), node("c", "a", v=3), node("d", "b", "c")]
    )
    done = cluster.wait(name)
    assert done.state == s.SESSION_STATE_SUCCEEDED
    got = outputs(done)
    assert got["a"] == {"node": "a", "inputs": {}, "config": {"v": 1}}
    assert got["b"]["inputs"] == {"a": got["a"]}
    assert got["d"]["inputs"] == {"b": got["b"], "c": got["c"]}


def test_fan_out_fan_in_of_200(cluster: Cluster) -> None:
    cluster.start_runner("r1", capacity=16)
    cluster.start_runner("r2", capacity=16)
    middle = [node(f"m{i}", "src") for i in range(200)]
    name = cluster.submit([node("src"), *middle, node("sink", *(m["key"] for m in middle))])
    done = cluster.wait(name, timeout=90)
    assert done.state == s.SESSION_STATE_SUCCEEDED
    assert len(outputs(done)["sink"]["inputs"]) == 200
    assert accepted_once(cluster.dsn) == {1: 202}


def test_retry_then_success(cluster: Cluster) -> None:
    cluster.start_runner("r1")
    name = cluster.submit([node("a", fail_until=3), node("b", "a")])
    done = cluster.wait(name)
    assert done.state == s.SESSION_STATE_SUCCEEDED
    a = done.nodes[0]
    assert a.attempt == 3 and "flaky failure on attempt 2" in a.error.message
    ends = [line[0] for line in cluster.lines() if line[2] == "a" and line[0] != "started"]
    assert ends == ["failed", "failed", "done"]


def test_retries_exhausted_fail_the_session(cluster: Cluster) -> None:
    cluster.start_runner("r1")
    name = cluster.submit(
        [
            node("a", fail_until=99),
            node("b", "a"),
            node("c", "b"),
            node("other", permanent=True),
            node("ok"),
        ]
    )
    done = cluster.wait(name)
    assert done.state == s.SESSION_STATE_FAILED
    states = {n.key: s.NodeState.Name(n.state) for n in done.nodes}
    assert states == {
        "a": "NODE_STATE_FAILED",
        "b": "NODE_STATE_UPSTREAM_FAILED",
        "c": "NODE_STATE_UPSTREAM_FAILED",
        "other": "NODE_STATE_FAILED",
        "ok": "NODE_STATE_SUCCEEDED",
    }
    by_key = {n.key: n for n in done.nodes}
    assert by_key["a"].attempt == 3 and by_key["a"].error.retryable
    assert by_key["other"].attempt == 1 and not by_key["other"].error.retryable, "no retry"


def test_cancel_reaches_running_process(cluster: Cluster) -> None:
    cluster.start_runner("r1")
    name = cluster.submit([node("slow", sleep=60), node("after", "slow")])
    deadline = time.monotonic() + 30
    with cluster.channel() as channel:
        stub = spb_grpc.SessionServiceStub(channel)
        while (
            stub.GetSession(spb.GetSessionRequest(name=name)).session.nodes[0].state
            != s.NODE_STATE_RUNNING
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        while (
            not any(line[0] == "started" for line in cluster.lines())
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        stub.CancelSession(spb.CancelSessionRequest(name=name, reason="test"))
    done = cluster.wait(name)
    assert done.state == s.SESSION_STATE_CANCELLED
    while len(cluster.lines()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [line[0] for line in cluster.lines()] == ["started", "cancelled"], "process() cancelled"


def wait_for_line(cluster: Cluster, event: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not any(line[0] == event for line in cluster.lines()):
        assert time.monotonic() < deadline, f"no {event!r} line within {within}s"
        time.sleep(0.05)


def test_a_sync_process_longer_than_three_leases_is_accepted(cluster: Cluster) -> None:
    """Leases of 2 s (QUICK): a plain-def process() sleeping 7 s runs in a worker thread
    while the runtime's event loop heartbeats, so its one attempt is accepted."""
    cluster.start_runner("r1", capacity=1)
    name = cluster.submit(
        [node("slow", template="sync-echo", sleep=7), node("after", "slow", template="sync-echo")]
    )
    done = cluster.wait(name)
    assert done.state == s.SESSION_STATE_SUCCEEDED
    slow = done.nodes[0]
    assert slow.key == "slow" and slow.attempt == 1 and not slow.error.message
    assert outputs(done)["slow"]["thread"] == "heat-hook-0"
    assert outputs(done)["after"]["inputs"]["slow"]["config"] == {"sleep": 7}
    assert [line[0] for line in cluster.lines() if line[2] == "slow"] == ["started", "done"]
    assert accepted_once(cluster.dsn) == {1: 2}


def test_cancel_asks_a_running_sync_process_to_stop(cluster: Cluster) -> None:
    cluster.start_runner("r1")
    name = cluster.submit([node("slow", template="sync-echo", sleep=60)])
    wait_for_line(cluster, "started")
    with cluster.channel() as channel:
        stub = spb_grpc.SessionServiceStub(channel)
        stub.CancelSession(spb.CancelSessionRequest(name=name, reason="test"))
    assert cluster.wait(name).state == s.SESSION_STATE_CANCELLED
    wait_for_line(cluster, "stopped")  # current_task().wait_for_stop() returned early
    assert [line[0] for line in cluster.lines()] == ["started", "stopped"]


def test_runner_killed_mid_task_runs_again_elsewhere(cluster: Cluster) -> None:
    doomed = cluster.start_runner("doomed", capacity=1)
    name = cluster.submit([node("a", sleep=1.5), node("b", "a")])
    deadline = time.monotonic() + 30
    with cluster.channel() as channel:
        stub = spb_grpc.SessionServiceStub(channel)
        while (
            stub.GetSession(spb.GetSessionRequest(name=name)).session.nodes[0].state
            != s.NODE_STATE_RUNNING
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    cluster.start_runner("survivor")
    done = cluster.wait(name)
    assert done.state == s.SESSION_STATE_SUCCEEDED
    assert done.nodes[0].attempt == 2 and "lease expired" in done.nodes[0].error.message
    finished = [line for line in cluster.lines() if line[0] == "done"]
    assert [(line[2], line[5]) for line in finished] == [("a", "survivor"), ("b", "survivor")]
    assert accepted_once(cluster.dsn) == {1: 2}


def test_scheduler_killed_and_restarted_mid_session(cluster: Cluster) -> None:
    cluster.start_runner("r1", capacity=2)
    nodes = [node(f"n{i}", sleep=0.2) for i in range(20)]
    name = cluster.submit([*nodes, node("end", *(n["key"] for n in nodes))])
    deadline = time.monotonic() + 30
    while sum(line[0] == "done" for line in cluster.lines()) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first = cluster.schedulers[0]
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    # A new scheduler on the same address: the runner reconnects and carries on.
    port = int(first.address.rsplit(":", 1)[1])
    cluster.schedulers[0] = serve("--database-url", cluster.dsn, *QUICK, port=port)
    done = cluster.wait(name, timeout=90)
    assert done.state == s.SESSION_STATE_SUCCEEDED
    assert accepted_once(cluster.dsn) == {1: 21}


def test_two_replicas_accept_each_of_2000_results_exactly_once(cluster: Cluster) -> None:
    cluster.start_scheduler()
    for i in range(4):
        cluster.start_runner(f"r{i}", scheduler=i % 2, capacity=16)
    started = time.monotonic()
    names = [cluster.submit([node(f"t{j}") for j in range(500)], scheduler=i % 2) for i in range(4)]
    for i, name in enumerate(names):
        done = cluster.wait(name, timeout=240, scheduler=(i + 1) % 2)
        assert done.state == s.SESSION_STATE_SUCCEEDED
    elapsed = time.monotonic() - started
    assert accepted_once(cluster.dsn) == {1: 2000}
    finished = [line for line in cluster.lines() if line[0] == "done"]
    assert len({line[4] for line in finished}) == 2000
    per_instance = collections.Counter(line[5] for line in finished)
    assert set(per_instance) == {"r0", "r1", "r2", "r3"}, per_instance
    shares = dict(per_instance)
    print(f"\n2000 tasks over 2 replicas and 4 runners in {elapsed:.2f}s; per runner {shares}")
