"""Bad input from a careless or hostile client: a clear status at the edge, and poison values
that get past it (stored before a bound existed, or written by hand) never stop a loop."""

from __future__ import annotations

import asyncio
import base64
import http.server
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import runner_service_pb2 as pb
from heat.scheduler.v1 import runner_service_pb2_grpc as pb_grpc
from heat.scheduler.v1 import session_pb2
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc

from scheduler.domain.limits import FAILURE_MESSAGE_MAX_LENGTH, JSON_MAX_DEPTH
from scheduler.domain.verdicts import Outcome, OutcomeKind, ResultStatus
from tests.integration.test_protocol import (
    Claimer,
    dag,
    post,
    session_state,
    setup_registry,
    success,
)
from tests.support import Scheduler, failure, serving

M = TypeVar("M")
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def build(cls: type[M], **fields: Any) -> M:
    """A message from plain values (dicts for nested messages), out-of-range ones included."""
    return cls(**fields)


async def refused(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


def node_template(**fields: Any) -> rpb.CreateNodeTemplateRequest:
    return json_format.ParseDict(
        {"nodeTemplate": {"name": "t", "runner": "w", **fields}}, rpb.CreateNodeTemplateRequest()
    )


def _varint(n: int) -> bytes:
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([low])
        out += bytes([low | 0x80])


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def deep_parameters(levels: int) -> bytes:
    """A CreateSessionRequest whose parameters nest ``levels`` objects deep, encoded by hand:
    protobuf itself refuses to build (or decode) one past its depth limit."""
    value = _field(3, b"x")  # Value.string_value
    for _ in range(levels - 1):
        value = _field(5, _field(1, _field(1, b"a") + _field(2, value)))  # {"a": value}
    return _field(3, _field(1, _field(1, b"a") + _field(2, value)))


async def test_each_kind_of_bad_field_is_invalid_argument(scheduler: Scheduler) -> None:
    """The kinds that got INTERNAL (with a traceback) or UNKNOWN before the edge's sweep."""
    await setup_registry(scheduler)
    registry = scheduler.registry
    sessions = spb_grpc.SessionServiceStub(scheduler.channel)
    nul = "a\x00b"
    nan_struct = struct_pb2.Struct()
    nan_struct.fields["x"].number_value = float("nan")
    inf_struct = struct_pb2.Struct()
    inf_struct.fields["x"].number_value = float("inf")
    nul_key = struct_pb2.Struct()
    nul_key.fields["a\x00"].string_value = "v"
    nul_value = struct_pb2.Struct()
    nul_value.fields["a"].string_value = nul
    calls = {
        "runner list filter": registry.ListRunners(
            rpb.ListRunnersRequest(feature_internal_name=nul)
        ),
        "template list filter": registry.ListNodeTemplates(
            rpb.ListNodeTemplatesRequest(runner=nul)
        ),
        "session-template filter": registry.ListSessionTemplates(
            rpb.ListSessionTemplatesRequest(node_template=nul)
        ),
        "session list filter": sessions.ListSessions(spb.ListSessionsRequest(session_template=nul)),
        "page token": registry.ListRunners(rpb.ListRunnersRequest(page_token=nul)),
        "label key": sessions.CreateSession(
            spb.CreateSessionRequest(session_template="x", labels={nul: "v"})
        ),
        "label value": sessions.CreateSession(
            spb.CreateSessionRequest(session_template="x", labels={"k": nul})
        ),
        "request id": sessions.CreateSession(
            spb.CreateSessionRequest(session_template="x", request_id=nul)
        ),
        "cancel reason": sessions.CancelSession(spb.CancelSessionRequest(name="s", reason=nul)),
        "cancel node key": sessions.CancelNode(spb.CancelNodeRequest(session="s", key=nul)),
        "update mask path": sessions.UpdateSession(
            build(spb.UpdateSessionRequest, session={"name": "s"}, update_mask={"paths": [nul]})
        ),
        "priority 2^31 - 1": sessions.UpdateSession(
            build(spb.UpdateSessionRequest, session={"name": "s", "priority": 2**31 - 1})
        ),
        "priority -1 at creation": sessions.CreateSession(
            spb.CreateSessionRequest(session_template="x", priority=-1)
        ),
        "credential description": registry.IssueRunnerCredential(
            rpb.IssueRunnerCredentialRequest(runner="w", description=nul)
        ),
        "credential id": registry.RevokeRunnerCredential(rpb.RevokeRunnerCredentialRequest(id=nul)),
        "NUL in a parameter": sessions.CreateSession(
            spb.CreateSessionRequest(session_template="x", parameters=nul_value)
        ),
        "NUL in a JSON key": sessions.CreateSession(
            spb.CreateSessionRequest(session_template="x", parameters=nul_key)
        ),
        "NaN": sessions.CreateSession(
            spb.CreateSessionRequest(session_template="x", parameters=nan_struct)
        ),
        "Infinity in a default config": registry.CreateNodeTemplate(
            build(
                rpb.CreateNodeTemplateRequest,
                node_template={"name": "t", "runner": "w", "default_config": inf_struct},
            )
        ),
        "idle period 1e15 s": registry.CreateRunner(
            build(
                rpb.CreateRunnerRequest,
                runner={
                    "name": "r2",
                    "container_image": "busybox",
                    "cpu_limit": "1",
                    "memory_limit": "1Gi",
                    "idle_period": {"seconds": 10**15},
                },
            )
        ),
        "timestamp past year 9999": sessions.ListSessions(
            build(spb.ListSessionsRequest, create_time_after={"seconds": 10**13})
        ),
        "negative timestamp nanos": sessions.ListSessions(
            build(spb.ListSessionsRequest, create_time_before={"seconds": 1, "nanos": -1})
        ),
        "attempt timeout of 10,000 years": registry.CreateNodeTemplate(
            node_template(attemptTimeout=f"{315_360_000_000}s")
        ),
        "backoff multiplier 1e300": registry.CreateNodeTemplate(
            node_template(retryPolicy={"backoffMultiplier": 1e300})
        ),
        "backoff of a year": registry.CreateNodeTemplate(
            node_template(retryPolicy={"initialBackoff": "1s", "maxBackoff": "31536000s"})
        ),
        "max pods 10^9": registry.CreateRunner(
            build(
                rpb.CreateRunnerRequest,
                runner={
                    "name": "r3",
                    "container_image": "busybox",
                    "cpu_limit": "1",
                    "memory_limit": "1Gi",
                    "max_pods": 10**9,
                },
            )
        ),
        "a string of 100,000 characters": registry.GetRunner(
            rpb.GetRunnerRequest(name="a" * 100_000)
        ),
    }
    for what, call in calls.items():
        assert await refused(call) is INVALID, what
    # Over-deep JSON: protobuf's decoder refuses it before any servicer runs.
    create = scheduler.channel.unary_unary(
        "/heat.scheduler.v1.SessionService/CreateSession",
        request_serializer=lambda raw: raw,
        response_deserializer=spb.CreateSessionResponse.FromString,
    )
    for levels in (JSON_MAX_DEPTH + 1, 40, 200):
        with pytest.raises(grpc.aio.AioRpcError) as deep:
            await create(deep_parameters(levels))
        assert deep.value.code() is INVALID, levels
        assert "nest" in failure(deep.value).message
    # A session page token naming a row id beyond int64.
    token = base64.urlsafe_b64encode(b"k1:2026-01-01T00:00:00+00:00|99999999999999999999").decode()
    assert (
        await refused(sessions.ListSessions(spb.ListSessionsRequest(page_token=token))) is INVALID
    )


async def test_a_huge_id_in_not_found_fits_the_trailer(scheduler: Scheduler) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scheduler.registry.RevokeRunnerCredential(
            rpb.RevokeRunnerCredentialRequest(id="x" * 60_000)
        )
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert len(failure(caught.value).message) <= 1000


async def test_runner_protocol_requests_out_of_bounds(scheduler: Scheduler) -> None:
    secret = await setup_registry(scheduler)
    stub = pb_grpc.RunnerServiceStub(scheduler.channel)
    metadata = (("authorization", f"Bearer {secret}"),)
    start = pb.ClaimTaskRequest(
        start=pb.ClaimStart(runner="w", instance_id="i1", credits=1, node_templates=["st\x00ep"])
    )
    with pytest.raises(grpc.aio.AioRpcError) as nul_template:
        await stub.ClaimTask(iter([start]), metadata=metadata).read()
    assert nul_template.value.code() is INVALID
    many = pb.HeartbeatRequest(
        instance_id="i1", attempt_ids=["00000000-0000-4000-8000-000000000000"] * 10_001
    )
    with pytest.raises(grpc.aio.AioRpcError) as heartbeat:
        await stub.Heartbeat(iter([many]), metadata=metadata).read()
    assert heartbeat.value.code() is INVALID
    outputs = pb.PostResultRequest(attempt_id="00000000-0000-4000-8000-000000000000")
    outputs.success.outputs.string_value = "\x00"
    with pytest.raises(grpc.aio.AioRpcError) as nul_output:
        await stub.PostResult(iter([outputs]), metadata=metadata).read()
    assert nul_output.value.code() is INVALID
    failed = pb.PostResultRequest(
        attempt_id="00000000-0000-4000-8000-000000000000",
        failure=pb.TaskFailure(message="bad\x00"),
    )
    with pytest.raises(grpc.aio.AioRpcError) as nul_message:
        await stub.PostResult(iter([failed]), metadata=metadata).read()
    assert nul_message.value.code() is INVALID


# -- poison values past the edge never stop a loop ------------------------------------------


async def test_a_stored_attempt_timeout_of_10000_years_does_not_stop_claims(
    scheduler: Scheduler, db_dsn: str
) -> None:
    secret = await setup_registry(scheduler)
    sessions = spb_grpc.SessionServiceStub(scheduler.channel)
    poisoned = await sessions.CreateSession(dag(("a", [])))
    conn = await asyncpg.connect(db_dsn)
    try:  # as written before the bound existed
        await conn.execute("UPDATE nodes SET attempt_timeout_ms = 315360000000000")
    finally:
        await conn.close()
    ordinary = await sessions.CreateSession(dag(("b", [])))
    claimer = Claimer(scheduler, secret, "i1", credits=2)
    try:
        tasks = {(t.session, t.node_key): t for t in [await claimer.task(), await claimer.task()]}
    finally:
        await claimer.close()
    assert set(tasks) == {(poisoned.session.name, "a"), (ordinary.session.name, "b")}
    deadline = tasks[(poisoned.session.name, "a")].attempt_deadline.ToDatetime()
    assert deadline.year < 9999


async def test_a_stored_poison_backoff_does_not_stop_the_timekeeper(db_dsn: str) -> None:
    async with serving(db_dsn, lease_duration=1.0, heartbeat_interval=0.25) as sc:
        secret = await setup_registry(sc, max_attempts=100, backoff="1s")
        sessions = spb_grpc.SessionServiceStub(sc.channel)
        created = await sessions.CreateSession(dag(("a", []), ("b", [])))
        conn = await asyncpg.connect(db_dsn)
        try:  # as written before the bounds existed
            await conn.execute(
                "UPDATE nodes SET attempt = 50, backoff_multiplier = 1e300,"
                " max_backoff_ms = 315360000000000 WHERE key = 'a'"
            )
        finally:
            await conn.close()
        claimer = Claimer(sc, secret, "i1", credits=2)
        try:
            first = [await claimer.task(), await claimer.task()]
        finally:
            await claimer.close()
        # Neither is heartbeated: the timekeeper expires both, the poisoned one included, and
        # goes on to requeue the ordinary one when its backoff passes.
        claimer = Claimer(sc, secret, "i2", credits=1)
        try:
            again = await claimer.task(timeout=30)
        finally:
            await claimer.close()
        assert again.node_key == "b" and again.attempt == 2
        assert {t.node_key for t in first} == {"a", "b"}
        got = (await session_state(sc, created.session.name)).session
        a = next(n for n in got.nodes if n.key == "a")
        assert a.state == session_pb2.NODE_STATE_RETRY_WAIT
        assert a.next_attempt_time.ToDatetime().year < 9999


async def test_a_poison_result_fails_its_attempt_not_the_batch(scheduler: Scheduler) -> None:
    """Defence in depth: an outcome PostgreSQL cannot store (a NUL the edge would refuse),
    settled in one batch with valid ones, fails alone."""
    secret = await setup_registry(scheduler)
    sessions = spb_grpc.SessionServiceStub(scheduler.channel)
    created = [await sessions.CreateSession(dag((f"n{i}", []))) for i in range(6)]
    claimer = Claimer(scheduler, secret, "i1", credits=6)
    try:
        tasks = [await claimer.task() for _ in created]
    finally:
        await claimer.close()
    protocol = scheduler.running.protocol
    outcomes = [
        Outcome(t.attempt_id, OutcomeKind.SUCCESS, outputs={"n": i}) for i, t in enumerate(tasks)
    ]
    outcomes[2] = Outcome(tasks[2].attempt_id, OutcomeKind.SUCCESS, outputs={"bad": "\x00"})
    replies = await asyncio.gather(*(protocol.post("w", o) for o in outcomes))
    statuses = [r.status for r in replies]
    assert (
        statuses
        == [ResultStatus.ACCEPTED] * 2
        + [ResultStatus.REJECTED_INVALID]
        + [ResultStatus.ACCEPTED] * 3
    )
    assert "could not store" in replies[2].message
    poisoned = next(s for s in created if s.session.name == tasks[2].session)
    got = (await session_state(scheduler, poisoned.session.name)).session
    assert got.nodes[0].state == session_pb2.NODE_STATE_FAILED
    assert "could not store" in got.nodes[0].error.message


async def ended(s: Scheduler, name: str) -> session_pb2.Session:
    """The Session once it has ended (waiting for it through its Watch)."""
    watch = spb_grpc.SessionServiceStub(s.channel).WatchSession(spb.WatchSessionRequest(name=name))
    async for _ in watch:
        pass
    return (await session_state(s, name)).session


# -- sizes ------------------------------------------------------------------------------------


async def test_long_failure_messages_and_details_are_bounded(scheduler: Scheduler) -> None:
    secret = await setup_registry(scheduler, max_attempts=1)
    sessions = spb_grpc.SessionServiceStub(scheduler.channel)
    created = await sessions.CreateSession(dag(("a", [])))
    claimer = Claimer(scheduler, secret, "i1", credits=1)
    try:
        task = await claimer.task()
    finally:
        await claimer.close()
    request = pb.PostResultRequest(
        attempt_id=task.attempt_id, failure=pb.TaskFailure(message="m" * 60_000)
    )
    request.failure.details.update({"blob": "d" * 1_000_000})
    assert await post(scheduler, secret, request) == {task.attempt_id: pb.RESULT_STATUS_ACCEPTED}
    error = (await session_state(scheduler, created.session.name)).session.nodes[0].error
    assert FAILURE_MESSAGE_MAX_LENGTH < len(error.message) < FAILURE_MESSAGE_MAX_LENGTH + 100
    assert "cut" in error.message
    assert "exceed the limit" in json_format.MessageToDict(error.details)["omitted"]


async def test_a_task_too_heavy_to_send_fails_its_node_not_the_stream(db_dsn: str) -> None:
    async with serving(db_dsn, max_message_bytes=3_000_000, max_output_bytes=1_200_000) as sc:
        secret = await setup_registry(sc)
        sessions = spb_grpc.SessionServiceStub(sc.channel)
        created = await sessions.CreateSession(
            dag(("a", []), ("b", []), ("c", []), ("heavy", ["a", "b", "c"]))
        )
        claimer = Claimer(sc, secret, "i1", credits=3)
        try:
            ups = [await claimer.task() for _ in range(3)]
            for t in ups:
                verdict = await post(sc, secret, success(t.attempt_id, {"blob": "x" * 1_100_000}))
                assert verdict == {t.attempt_id: pb.RESULT_STATUS_ACCEPTED}
            claimer.credit(1)
            light = await sessions.CreateSession(dag(("light", [])))
            task = await claimer.task()  # the same stream goes on
            assert (task.session, task.node_key) == (light.session.name, "light")
        finally:
            await claimer.close()
        got = await ended(sc, created.session.name)
        heavy = next(n for n in got.nodes if n.key == "heavy")
        assert heavy.state == session_pb2.NODE_STATE_FAILED
        assert "a task carries at most" in heavy.error.message
        assert got.state == session_pb2.SESSION_STATE_FAILED
        # The Session's outputs together exceed one message: the largest are left out.
        assert sum(n.HasField("outputs") for n in got.nodes) < 3


# -- JSON Schemas -----------------------------------------------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []  # noqa: RUF012

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = b'{"type": "string"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def schema_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_schema_references_are_never_fetched(
    scheduler: Scheduler, schema_server: str
) -> None:
    await setup_registry(scheduler)
    _Recorder.hits.clear()
    for ref in (f"{schema_server}/secret.json", "file:///etc/hostname", "other.json"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await scheduler.registry.CreateNodeTemplate(
                node_template(configSchema={"properties": {"x": {"$ref": ref}}})
            )
        assert caught.value.code() is INVALID, ref
        assert "never fetched" in failure(caught.value).message
    assert _Recorder.hits == []
    # The metaschemas are bundled: referring to one works, offline.
    await scheduler.registry.CreateNodeTemplate(
        node_template(
            configSchema={
                "properties": {"s": {"$ref": "https://json-schema.org/draft/2020-12/schema"}}
            }
        )
    )


async def test_schema_patterns_run_in_linear_time(scheduler: Scheduler) -> None:
    await setup_registry(scheduler)
    with pytest.raises(grpc.aio.AioRpcError) as backreference:
        await scheduler.registry.CreateNodeTemplate(
            node_template(configSchema={"properties": {"x": {"pattern": "(a)\\1"}}})
        )
    assert backreference.value.code() is INVALID
    assert "RE2" in failure(backreference.value).message
    # Catastrophic for a backtracking engine (2^60 steps), immediate for RE2.
    await scheduler.registry.CreateNodeTemplate(
        node_template(
            configSchema={
                "properties": {"x": {"type": "string", "pattern": "^(a+)+$"}},
                "patternProperties": {"^(b+)+$": {"type": "integer"}},
            }
        )
    )
    sessions = spb_grpc.SessionServiceStub(scheduler.channel)
    request = json_format.ParseDict(
        {
            "dag": {
                "nodes": [
                    {
                        "key": "n",
                        "nodeTemplate": "t",
                        "config": {"x": "a" * 60 + "!", "b" * 60 + "!": "not checked"},
                    }
                ]
            }
        },
        spb.CreateSessionRequest(),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(sessions.CreateSession(request), 60)
    assert caught.value.code() is INVALID
    assert "does not match" in failure(caught.value).message
