"""SessionService over real gRPC: create, read, list, cancel, watch with resumable cursors."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import runner_service_pb2 as pb
from heat.scheduler.v1 import session_pb2 as s
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc

from tests.integration.test_protocol import Claimer, dag, post, setup_registry, success
from tests.support import Scheduler, failure


def sessions(sc: Scheduler) -> Any:
    return spb_grpc.SessionServiceStub(sc.channel)


async def make_template(sc: Scheduler) -> None:
    template = {
        "name": "pipeline",
        "nodes": [
            {"key": "load", "nodeTemplate": "step", "config": {"path": "/in"}},
            {"key": "sum", "nodeTemplate": "step", "dependsOn": ["load"]},
        ],
        "defaultParameters": {"day": "mon", "region": "eu"},
    }
    await sc.registry.CreateSessionTemplate(
        json_format.ParseDict({"sessionTemplate": template}, rpb.CreateSessionTemplateRequest())
    )


async def test_create_from_template_copies_it(scheduler: Scheduler) -> None:
    await setup_registry(scheduler)
    await make_template(scheduler)
    request = json_format.ParseDict(
        {"sessionTemplate": "pipeline", "parameters": {"day": "tue"}, "labels": {"team": "x"}},
        spb.CreateSessionRequest(),
    )
    created = (await sessions(scheduler).CreateSession(request)).session
    assert created.state == s.SESSION_STATE_PENDING and created.session_template == "pipeline"
    assert json_format.MessageToDict(created.parameters) == {"day": "tue", "region": "eu"}
    assert {n.key: n.state for n in created.nodes} == {
        "load": s.NODE_STATE_QUEUED,
        "sum": s.NODE_STATE_WAITING,
    }
    assert list(created.nodes[1].depends_on) == ["load"]
    assert created.node_counts == {"NODE_STATE_QUEUED": 1, "NODE_STATE_WAITING": 1}
    # Editing the template later does not reach the Session.
    await scheduler.registry.DeleteSessionTemplate(
        rpb.DeleteSessionTemplateRequest(name="pipeline")
    )
    again = (await sessions(scheduler).GetSession(spb.GetSessionRequest(name=created.name))).session
    assert [n.key for n in again.nodes] == ["load", "sum"]
    assert json_format.MessageToDict(again.nodes[0].config) == {"path": "/in"}


async def test_request_id_makes_create_idempotent(scheduler: Scheduler) -> None:
    await setup_registry(scheduler)
    request = dag(("a", []))
    request.request_id = "import-2026-11-28"
    first = (await sessions(scheduler).CreateSession(request)).session
    second = (await sessions(scheduler).CreateSession(request)).session
    assert first.name == second.name
    listed = await sessions(scheduler).ListSessions(spb.ListSessionsRequest())
    assert [x.name for x in listed.sessions] == [first.name]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "source"),
        ({"sessionTemplate": "nope"}, None),
        ({"dag": {"nodes": []}}, "dag.nodes"),
        ({"dag": {"nodes": [{"key": "a", "nodeTemplate": "ghost"}]}}, "dag.nodes[0].node_template"),
        (
            {"dag": {"nodes": [{"key": "a", "nodeTemplate": "step", "dependsOn": ["a"]}]}},
            "dag.nodes[0].depends_on[0]",
        ),
    ],
    ids=["no-source", "unknown-template", "empty", "unknown-node-template", "self-loop"],
)
async def test_bad_create_is_refused(
    scheduler: Scheduler, body: dict[str, Any], field: str | None
) -> None:
    await setup_registry(scheduler)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sessions(scheduler).CreateSession(
            json_format.ParseDict(body, spb.CreateSessionRequest())
        )
    got = failure(caught.value)
    if field is None:
        assert got.code is grpc.StatusCode.NOT_FOUND
    else:
        assert got.code is grpc.StatusCode.INVALID_ARGUMENT and field in got.violations, got
    listed = await sessions(scheduler).ListSessions(spb.ListSessionsRequest())
    assert not listed.sessions, "a refused create writes nothing"


async def test_list_pages_newest_first_and_filters(scheduler: Scheduler) -> None:
    await setup_registry(scheduler)
    await make_template(scheduler)
    names = []
    for i in range(5):
        request = spb.CreateSessionRequest(session_template="pipeline") if i % 2 else dag(("a", []))
        names.append((await sessions(scheduler).CreateSession(request)).session.name)
    await sessions(scheduler).CancelSession(spb.CancelSessionRequest(name=names[0]))
    seen: list[str] = []
    token = ""
    while True:
        page = await sessions(scheduler).ListSessions(
            spb.ListSessionsRequest(page_size=2, page_token=token)
        )
        seen += [x.name for x in page.sessions]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(names))
    templated = await sessions(scheduler).ListSessions(
        spb.ListSessionsRequest(session_template="pipeline")
    )
    assert [x.name for x in templated.sessions] == [names[3], names[1]]
    cancelled = await sessions(scheduler).ListSessions(
        spb.ListSessionsRequest(states=[s.SESSION_STATE_CANCELLED])
    )
    assert [x.name for x in cancelled.sessions] == [names[0]]


async def test_cancel_session_and_node(scheduler: Scheduler) -> None:
    await setup_registry(scheduler)
    created = (
        await sessions(scheduler).CreateSession(dag(("a", []), ("b", ["a"]), ("c", [])))
    ).session
    node = (
        await sessions(scheduler).CancelNode(
            spb.CancelNodeRequest(session=created.name, key="a", reason="not needed")
        )
    ).node
    assert node.state == s.NODE_STATE_CANCELLED
    got = (await sessions(scheduler).GetSession(spb.GetSessionRequest(name=created.name))).session
    assert {n.key: n.state for n in got.nodes} == {
        "a": s.NODE_STATE_CANCELLED,
        "b": s.NODE_STATE_UPSTREAM_FAILED,
        "c": s.NODE_STATE_QUEUED,
    }
    assert got.state == s.SESSION_STATE_PENDING, "c can still run"
    ended = (
        await sessions(scheduler).CancelSession(
            spb.CancelSessionRequest(name=created.name, reason="operator")
        )
    ).session
    assert ended.state == s.SESSION_STATE_CANCELLED and ended.state_reason == "operator"
    again = await sessions(scheduler).CancelSession(spb.CancelSessionRequest(name=created.name))
    assert again.session.state == s.SESSION_STATE_CANCELLED, "cancelling twice is harmless"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sessions(scheduler).CancelNode(spb.CancelNodeRequest(session=created.name, key="c"))
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION


async def test_cancel_reaches_the_running_task(scheduler: Scheduler) -> None:
    secret = await setup_registry(scheduler)
    created = (await sessions(scheduler).CreateSession(dag(("a", [])))).session
    claimer = Claimer(scheduler, secret, "i1", credits=1)
    try:
        task = await claimer.task()
    finally:
        await claimer.close()
    stub = __import__(
        "heat.scheduler.v1.runner_service_pb2_grpc", fromlist=["x"]
    ).RunnerServiceStub(scheduler.channel)
    outbox: asyncio.Queue[pb.HeartbeatRequest] = asyncio.Queue()

    async def beats() -> Any:
        while True:
            yield await outbox.get()

    call = stub.Heartbeat(beats(), metadata=(("authorization", f"Bearer {secret}"),))
    outbox.put_nowait(pb.HeartbeatRequest(instance_id="i1", attempt_ids=[task.attempt_id]))
    first = await asyncio.wait_for(call.read(), 10)
    assert [lease.attempt_id for lease in first.leases] == [task.attempt_id]
    await sessions(scheduler).CancelSession(spb.CancelSessionRequest(name=created.name))
    pushed = await asyncio.wait_for(call.read(), 10)
    assert [c.attempt_id for c in pushed.cancellations] == [task.attempt_id], "pushed unprompted"
    call.cancel()
    verdict = await post(scheduler, secret, success(task.attempt_id, 1))
    assert verdict == {task.attempt_id: pb.RESULT_STATUS_REJECTED_CANCELLED}


async def collect(call: Any, until: Any) -> list[spb.WatchSessionResponse]:
    got = []
    async for item in call:
        got.append(item)
        if until(item):
            break
    return got


async def test_watch_streams_changes_and_resumes_from_a_cursor(scheduler: Scheduler) -> None:
    secret = await setup_registry(scheduler)
    created = (await sessions(scheduler).CreateSession(dag(("a", []), ("b", ["a"])))).session
    watch = sessions(scheduler).WatchSession(spb.WatchSessionRequest(name=created.name))
    snapshot = await asyncio.wait_for(watch.read(), 10)
    assert snapshot.WhichOneof("event") == "snapshot"
    assert [n.key for n in snapshot.snapshot.nodes] == ["a", "b"]
    claimer = Claimer(scheduler, secret, "i1", credits=2)
    try:
        a = await claimer.task()
        running = await asyncio.wait_for(watch.read(), 10)
        assert (running.node_change.node.key, running.node_change.node.state) == (
            "a",
            s.NODE_STATE_RUNNING,
        )
        first = await asyncio.wait_for(watch.read(), 10)
        assert first.session_change.state == s.SESSION_STATE_RUNNING, "the Session started"
        watch.cancel()  # the watcher goes away mid-session...
        await post(scheduler, secret, success(a.attempt_id, 1))
        b = await claimer.task()
        await post(scheduler, secret, success(b.attempt_id, 2))
    finally:
        await claimer.close()
    # ...and resumes from its last cursor: nothing missed, nothing repeated, then the end.
    resumed = sessions(scheduler).WatchSession(
        spb.WatchSessionRequest(name=created.name, cursor=first.cursor)
    )
    rest = await asyncio.wait_for(
        collect(resumed, lambda m: m.WhichOneof("event") == "session_change"), 10
    )
    changes = [
        (m.node_change.node.key, s.NodeState.Name(m.node_change.node.state))
        if m.WhichOneof("event") == "node_change"
        else ("session", s.SessionState.Name(m.session_change.state))
        for m in rest
    ]
    assert changes == [
        ("a", "NODE_STATE_SUCCEEDED"),
        ("b", "NODE_STATE_QUEUED"),
        ("b", "NODE_STATE_RUNNING"),
        ("b", "NODE_STATE_SUCCEEDED"),
        ("session", "SESSION_STATE_SUCCEEDED"),
    ]
    at_end = sessions(scheduler).WatchSession(
        spb.WatchSessionRequest(name=created.name, cursor=rest[-1].cursor)
    )
    assert [m async for m in at_end] == [], "a cursor at the end of an ended Session: done"
    cursors = [int(m.cursor) for m in rest]
    assert cursors == list(range(int(first.cursor) + 1, int(first.cursor) + 6))
    # A watch of an ended Session sends the snapshot and ends.
    done = [
        m
        async for m in sessions(scheduler).WatchSession(spb.WatchSessionRequest(name=created.name))
    ]
    assert len(done) == 1 and done[0].snapshot.state == s.SESSION_STATE_SUCCEEDED


async def test_bad_watch_cursor_is_invalid(scheduler: Scheduler) -> None:
    await setup_registry(scheduler)
    created = (await sessions(scheduler).CreateSession(dag(("a", [])))).session
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in sessions(scheduler).WatchSession(
            spb.WatchSessionRequest(name=created.name, cursor="yesterday")
        ):
            pass
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_expired_lease_makes_a_new_attempt(quick_scheduler: Scheduler) -> None:
    secret = await setup_registry(quick_scheduler)
    created = (await sessions(quick_scheduler).CreateSession(dag(("a", [])))).session
    silent = Claimer(quick_scheduler, secret, "silent", credits=1)
    first = await silent.task()
    # No heartbeat: after the one-second lease the timekeeper requeues the task.
    other = Claimer(quick_scheduler, secret, "other", credits=1)
    try:
        second = await other.task(timeout=15)
        assert second.node_key == "a" and second.attempt == 2
        late = await post(quick_scheduler, secret, success(first.attempt_id, "late"))
        assert late == {first.attempt_id: pb.RESULT_STATUS_REJECTED_STALE}
        ok = await post(quick_scheduler, secret, success(second.attempt_id, "ok"))
        assert ok == {second.attempt_id: pb.RESULT_STATUS_ACCEPTED}
    finally:
        await silent.close()
        await other.close()
    got = (
        await sessions(quick_scheduler).GetSession(spb.GetSessionRequest(name=created.name))
    ).session
    assert got.state == s.SESSION_STATE_SUCCEEDED
    outputs: Any = json_format.MessageToDict(got.nodes[0].outputs)
    assert outputs == "ok"
    assert "lease expired" in got.nodes[0].error.message


async def test_large_sessions_come_back_without_their_nodes_where_they_would_not_fit(
    scheduler: Scheduler,
) -> None:
    await setup_registry(scheduler)
    created = (
        await sessions(scheduler).CreateSession(dag(*((f"n{i}", []) for i in range(1500))))
    ).session
    assert not created.nodes, "CreateSession acknowledges a large Session without its nodes"
    assert created.node_counts == {"NODE_STATE_QUEUED": 1500}
    got = (await sessions(scheduler).GetSession(spb.GetSessionRequest(name=created.name))).session
    assert len(got.nodes) == 1500 and got.nodes[1499].key == "n1499"
