"""The runner protocol spoken by hand over real gRPC: claims, results, leases, credentials."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import runner_service_pb2 as pb
from heat.scheduler.v1 import runner_service_pb2_grpc as pb_grpc
from heat.scheduler.v1 import session_pb2
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc

from tests.support import Scheduler, failure, serving


async def setup_registry(s: Scheduler, *, max_attempts: int = 3, backoff: str = "0s") -> str:
    manifest = {
        "runners": [
            {"name": "w", "containerImage": "busybox", "cpuLimit": "1", "memoryLimit": "64Mi"},
            {"name": "other", "containerImage": "busybox", "cpuLimit": "1", "memoryLimit": "64Mi"},
        ],
        "nodeTemplates": [
            {
                "name": "step",
                "runner": "w",
                "multipleInputs": True,
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": backoff,
                    "maxBackoff": backoff,
                },
            }
        ],
    }
    await s.registry.ApplyManifest(
        json_format.ParseDict({"manifest": manifest}, rpb.ApplyManifestRequest())
    )
    issued = await s.registry.IssueRunnerCredential(rpb.IssueRunnerCredentialRequest(runner="w"))
    secret: str = issued.credential.secret
    return secret


def dag(*nodes: tuple[str, list[str]]) -> spb.CreateSessionRequest:
    return json_format.ParseDict(
        {"dag": {"nodes": [{"key": k, "nodeTemplate": "step", "dependsOn": d} for k, d in nodes]}},
        spb.CreateSessionRequest(),
    )


class Claimer:
    """One runner instance's ClaimTask stream, driven by hand."""

    def __init__(self, s: Scheduler, secret: str, instance: str, credits: int) -> None:
        self.stub = pb_grpc.RunnerServiceStub(s.channel)
        self.metadata = (("authorization", f"Bearer {secret}"),)
        self.requests: asyncio.Queue[pb.ClaimTaskRequest | None] = asyncio.Queue()
        self.requests.put_nowait(
            pb.ClaimTaskRequest(
                start=pb.ClaimStart(runner="w", instance_id=instance, credits=credits)
            )
        )
        self.call = self.stub.ClaimTask(self._requests(), metadata=self.metadata)

    async def _requests(self) -> AsyncIterator[pb.ClaimTaskRequest]:
        while (item := await self.requests.get()) is not None:
            yield item

    async def task(self, timeout: float = 10) -> pb.Task:
        response = await asyncio.wait_for(self.call.read(), timeout)
        assert isinstance(response, pb.ClaimTaskResponse), response
        assert response.WhichOneof("response") == "task", response
        return response.task

    def credit(self, n: int = 1) -> None:
        self.requests.put_nowait(pb.ClaimTaskRequest(credit=pb.ClaimCredit(credits=n)))

    async def close(self) -> None:
        self.requests.put_nowait(None)
        self.call.cancel()


async def post(s: Scheduler, secret: str, *requests: pb.PostResultRequest) -> dict[str, int]:
    stub = pb_grpc.RunnerServiceStub(s.channel)
    call = stub.PostResult(iter(requests), metadata=(("authorization", f"Bearer {secret}"),))
    return {r.attempt_id: r.status async for r in call}


def success(attempt_id: str, outputs: Any) -> pb.PostResultRequest:
    request = pb.PostResultRequest(attempt_id=attempt_id)
    json_format.ParseDict({"outputs": outputs}, request.success)
    return request


def failed(attempt_id: str, *, permanent: bool = False) -> pb.PostResultRequest:
    kind = pb.FAILURE_KIND_PERMANENT if permanent else pb.FAILURE_KIND_RETRYABLE
    return pb.PostResultRequest(
        attempt_id=attempt_id, failure=pb.TaskFailure(kind=kind, message="boom")
    )


async def session_state(s: Scheduler, name: str) -> spb.GetSessionResponse:
    return await spb_grpc.SessionServiceStub(s.channel).GetSession(spb.GetSessionRequest(name=name))


async def test_diamond_outputs_flow_downstream(scheduler: Scheduler) -> None:
    secret = await setup_registry(scheduler)
    sessions = spb_grpc.SessionServiceStub(scheduler.channel)
    created = await sessions.CreateSession(
        dag(("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"]))
    )
    name = created.session.name
    claimer = Claimer(scheduler, secret, "i1", credits=2)
    try:
        first = await claimer.task()
        assert first.node_key == "a" and first.attempt == 1 and first.session == name
        assert (await post(scheduler, secret, success(first.attempt_id, {"n": 1}))) == {
            first.attempt_id: pb.RESULT_STATUS_ACCEPTED
        }
        claimer.credit()
        middle = [await claimer.task(), await claimer.task()]
        assert sorted(t.node_key for t in middle) == ["b", "c"]
        for t in middle:
            assert json_format.MessageToDict(t.inputs["a"]) == {"n": 1.0}
            await post(scheduler, secret, success(t.attempt_id, {"from": t.node_key}))
        claimer.credit()
        last = await claimer.task()
        assert last.node_key == "d"
        assert set(last.inputs) == {"b", "c"}
        await post(scheduler, secret, success(last.attempt_id, [1, 2, 3]))
    finally:
        await claimer.close()
    got = await session_state(scheduler, name)
    assert got.session.state == session_pb2.SESSION_STATE_SUCCEEDED
    outputs = {n.key: json_format.MessageToDict(n.outputs) for n in got.session.nodes}
    assert outputs == {"a": {"n": 1}, "b": {"from": "b"}, "c": {"from": "c"}, "d": [1, 2, 3]}


async def test_results_are_accepted_exactly_once(scheduler: Scheduler) -> None:
    secret = await setup_registry(scheduler)
    sessions = spb_grpc.SessionServiceStub(scheduler.channel)
    await sessions.CreateSession(dag(("a", [])))
    claimer = Claimer(scheduler, secret, "i1", credits=1)
    try:
        task = await claimer.task()
    finally:
        await claimer.close()
    first = await post(scheduler, secret, success(task.attempt_id, {"v": 1}))
    again = await post(scheduler, secret, success(task.attempt_id, {"v": 2}))
    both = await post(
        scheduler, secret, success(task.attempt_id, {"v": 3}), success(task.attempt_id, {"v": 4})
    )
    assert first == again == both == {task.attempt_id: pb.RESULT_STATUS_ACCEPTED}
    unknown = "00000000-0000-4000-8000-000000000000"
    stale = await post(scheduler, secret, success(unknown, 1))
    assert stale == {unknown: pb.RESULT_STATUS_REJECTED_STALE}


async def test_retry_then_success_and_exhaustion(scheduler: Scheduler) -> None:
    secret = await setup_registry(scheduler, max_attempts=2)
    sessions = spb_grpc.SessionServiceStub(scheduler.channel)
    created = await sessions.CreateSession(dag(("a", []), ("b", ["a"]), ("c", ["b"])))
    claimer = Claimer(scheduler, secret, "i1", credits=1)
    try:
        one = await claimer.task()
        await post(scheduler, secret, failed(one.attempt_id))
        claimer.credit()
        two = await claimer.task()
        assert two.node_key == "a" and two.attempt == 2 and two.attempt_id != one.attempt_id
        again = await post(scheduler, secret, failed(one.attempt_id))
        assert again == {one.attempt_id: pb.RESULT_STATUS_ACCEPTED}, (
            "a repeated post keeps its verdict"
        )
        other = await post(scheduler, secret, success(one.attempt_id, 1))
        assert other == {one.attempt_id: pb.RESULT_STATUS_REJECTED_STALE}, (
            "a different outcome for a settled attempt is refused"
        )
        await post(scheduler, secret, failed(two.attempt_id))
    finally:
        await claimer.close()
    got = (await session_state(scheduler, created.session.name)).session
    assert got.state == session_pb2.SESSION_STATE_FAILED
    states = {n.key: n.state for n in got.nodes}
    assert states == {
        "a": session_pb2.NODE_STATE_FAILED,
        "b": session_pb2.NODE_STATE_UPSTREAM_FAILED,
        "c": session_pb2.NODE_STATE_UPSTREAM_FAILED,
    }


async def test_credentials_are_checked(scheduler: Scheduler) -> None:
    await setup_registry(scheduler)
    stub = pb_grpc.RunnerServiceStub(scheduler.channel)
    start = pb.ClaimTaskRequest(start=pb.ClaimStart(runner="w", instance_id="x", credits=1))
    async with grpc.aio.insecure_channel(scheduler.address) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await pb_grpc.RunnerServiceStub(anonymous).ClaimTask(iter([start])).read()
    assert missing.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as admin:  # the channel's admin token
        await stub.ClaimTask(iter([start])).read()
    assert admin.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "needs a runner credential" in failure(admin.value).message
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await stub.ClaimTask(iter([start]), metadata=(("authorization", "Bearer nope"),)).read()
    assert wrong.value.code() is grpc.StatusCode.UNAUTHENTICATED
    other = await scheduler.registry.IssueRunnerCredential(
        rpb.IssueRunnerCredentialRequest(runner="other")
    )
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await stub.ClaimTask(
            iter([start]), metadata=(("authorization", f"Bearer {other.credential.secret}"),)
        ).read()
    assert foreign.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "other" in (failure(foreign.value).message)


async def test_oversize_outputs_are_refused_and_fail_the_attempt(db_dsn: str) -> None:
    async with serving(db_dsn, max_output_bytes=100) as sc:
        secret = await setup_registry(sc)
        created = await spb_grpc.SessionServiceStub(sc.channel).CreateSession(dag(("a", [])))
        claimer = Claimer(sc, secret, "i1", credits=1)
        try:
            task = await claimer.task()
        finally:
            await claimer.close()
        verdict = await post(sc, secret, success(task.attempt_id, {"blob": "x" * 500}))
        assert verdict == {task.attempt_id: pb.RESULT_STATUS_REJECTED_INVALID}
        got = (await session_state(sc, created.session.name)).session
        assert got.state == session_pb2.SESSION_STATE_FAILED
        assert "exceed the limit of 100 bytes" in got.nodes[0].error.message


async def test_a_disabled_runner_gets_no_work_until_enabled(scheduler: Scheduler) -> None:
    secret = await setup_registry(scheduler)
    await scheduler.registry.UpdateRunner(
        json_format.ParseDict(
            {"runner": {"name": "w", "enabled": False}, "updateMask": "enabled"},
            rpb.UpdateRunnerRequest(),
        )
    )
    created = await spb_grpc.SessionServiceStub(scheduler.channel).CreateSession(dag(("a", [])))
    claimer = Claimer(scheduler, secret, "i1", credits=1)
    try:
        await asyncio.sleep(0.5)  # a claimer with credits is connected, yet nothing is leased
        got = (await session_state(scheduler, created.session.name)).session
        assert got.nodes[0].state == session_pb2.NODE_STATE_QUEUED
        await scheduler.registry.UpdateRunner(
            json_format.ParseDict(
                {"runner": {"name": "w", "enabled": True}, "updateMask": "enabled"},
                rpb.UpdateRunnerRequest(),
            )
        )
        task = await claimer.task()
        assert task.node_key == "a"
    finally:
        await claimer.close()
