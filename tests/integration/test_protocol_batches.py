"""Fewer messages per task (issue 13), spoken by hand over real gRPC: an instance that asks gets
tasks in batches and its credits back with its results, posts outcomes in one message and gets
one answer; a settlement claims the work it makes ready in its own transaction. An instance
that asks for none of it (the first version: HEAT's Go runner, an old heat_runtime) is
answered exactly as before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import json_format
from heat.scheduler.v1 import runner_service_pb2 as pb
from heat.scheduler.v1 import runner_service_pb2_grpc as pb_grpc
from heat.scheduler.v1 import session_pb2
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc

from tests.integration.test_protocol import dag, post, session_state, setup_registry, success
from tests.support import Scheduler


class BatchClaimer:
    """A ClaimTask stream that asks for batches and for credits back with results."""

    def __init__(
        self,
        s: Scheduler,
        secret: str,
        instance: str,
        credits: int,
        *,
        batch: int = 8,
        credits_with_results: bool = True,
    ) -> None:
        self.metadata = (("authorization", f"Bearer {secret}"),)
        self.requests: asyncio.Queue[pb.ClaimTaskRequest | None] = asyncio.Queue()
        self.requests.put_nowait(
            pb.ClaimTaskRequest(
                start=pb.ClaimStart(
                    runner="w",
                    instance_id=instance,
                    credits=credits,
                    max_tasks_per_message=batch,
                    credits_with_results=credits_with_results,
                )
            )
        )
        stub = pb_grpc.RunnerServiceStub(s.channel)
        self.call = stub.ClaimTask(self._requests(), metadata=self.metadata)

    async def _requests(self) -> AsyncIterator[pb.ClaimTaskRequest]:
        while (item := await self.requests.get()) is not None:
            yield item

    async def read(self) -> pb.ClaimTaskResponse:
        response = await asyncio.wait_for(self.call.read(), 10)
        assert isinstance(response, pb.ClaimTaskResponse), response
        return response

    async def tasks(self, count: int) -> list[pb.Task]:
        """``count`` tasks, however they are grouped into messages (each a TaskBatch)."""
        got: list[pb.Task] = []
        while len(got) < count:
            response = await self.read()
            assert response.WhichOneof("response") == "tasks", response
            got += response.tasks.tasks
        assert len(got) == count
        return got

    async def close(self) -> None:
        self.requests.put_nowait(None)
        self.call.cancel()


async def post_batch(
    s: Scheduler, secret: str, *entries: pb.PostResultRequest
) -> list[pb.PostResultResponse]:
    """One message with every outcome; its one answer."""
    stub = pb_grpc.RunnerServiceStub(s.channel)
    call = stub.PostResult(
        iter([pb.PostResultRequest(batch=entries)]),
        metadata=(("authorization", f"Bearer {secret}"),),
    )
    answers = [r async for r in call]
    assert len(answers) == 1
    return list(answers[0].batch)


async def node_states(s: Scheduler, name: str) -> dict[str, int]:
    return {n.key: n.state for n in (await session_state(s, name)).session.nodes}


async def test_batches_out_and_in_and_credits_back_with_results(scheduler: Scheduler) -> None:
    secret = await setup_registry(scheduler)
    sessions = spb_grpc.SessionServiceStub(scheduler.channel)
    keys = [f"n{i}" for i in range(6)]
    created = await sessions.CreateSession(dag(*((k, []) for k in keys)))
    claimer = BatchClaimer(scheduler, secret, "i1", credits=4)
    try:
        started = await claimer.read()
        assert started.WhichOneof("response") == "started"
        assert started.started == pb.ClaimStarted(
            max_tasks_per_message=8, credits_with_results=True, result_batches=True
        )
        first = await claimer.tasks(4)
        verdicts = await post_batch(
            scheduler, secret, *(success(t.attempt_id, {"k": t.node_key}) for t in first)
        )
        assert [(v.attempt_id, v.status) for v in verdicts] == [
            (t.attempt_id, pb.RESULT_STATUS_ACCEPTED) for t in first
        ]
        # No ClaimCredit was sent: the results gave the credits back, and the settlement that
        # accepted them claimed the rest in its own transaction (running before the answer).
        states = await node_states(scheduler, created.session.name)
        assert (
            sorted(states.values())
            == [session_pb2.NODE_STATE_RUNNING] * 2 + [session_pb2.NODE_STATE_SUCCEEDED] * 4
        )
        rest = await claimer.tasks(2)
        assert sorted(t.node_key for t in first + rest) == keys
        again = await post_batch(
            scheduler, secret, *(success(t.attempt_id, None) for t in rest + first[:1])
        )
        # A repeat gets its first answer again, within the same batch as new outcomes.
        assert [v.status for v in again] == [pb.RESULT_STATUS_ACCEPTED] * 3
    finally:
        await claimer.close()
    got = await session_state(scheduler, created.session.name)
    assert got.session.state == session_pb2.SESSION_STATE_SUCCEEDED


async def test_a_result_makes_its_child_ready_and_the_same_transaction_claims_it(
    scheduler: Scheduler,
) -> None:
    secret = await setup_registry(scheduler)
    sessions = spb_grpc.SessionServiceStub(scheduler.channel)
    created = await sessions.CreateSession(dag(("a", []), ("b", ["a"])))
    claimer = BatchClaimer(scheduler, secret, "i1", credits=1)
    try:
        assert (await claimer.read()).WhichOneof("response") == "started"
        (a,) = await claimer.tasks(1)
        await post_batch(scheduler, secret, success(a.attempt_id, {"n": 1}))
        (b,) = await claimer.tasks(1)
        assert b.node_key == "b"
        assert json_format.MessageToDict(b.inputs["a"]) == {"n": 1.0}
        nodes = {
            n.key: n for n in (await session_state(scheduler, created.session.name)).session.nodes
        }
        # One transaction: a's result, b ready, b claimed (one timestamp for all three).
        assert nodes["a"].end_time == nodes["b"].ready_time == nodes["b"].start_time
        await post_batch(scheduler, secret, success(b.attempt_id, None))
    finally:
        await claimer.close()


async def test_a_first_version_instance_gets_one_task_per_message_and_sends_credits(
    scheduler: Scheduler,
) -> None:
    """The old runtime's case: no ClaimStarted, a Task per message, and a result frees nothing
    until the instance grants the credit."""
    secret = await setup_registry(scheduler)
    sessions = spb_grpc.SessionServiceStub(scheduler.channel)
    created = await sessions.CreateSession(dag(("a", []), ("b", []), ("c", [])))
    claimer = BatchClaimer(scheduler, secret, "old", credits=2, batch=0, credits_with_results=False)
    try:
        first = [await claimer.read(), await claimer.read()]
        assert [r.WhichOneof("response") for r in first] == ["task", "task"]
        done = first[0].task
        assert await post(scheduler, secret, success(done.attempt_id, None)) == {
            done.attempt_id: pb.RESULT_STATUS_ACCEPTED
        }
        states = await node_states(scheduler, created.session.name)
        assert sorted(states.values()) == [
            session_pb2.NODE_STATE_QUEUED,
            session_pb2.NODE_STATE_RUNNING,
            session_pb2.NODE_STATE_SUCCEEDED,
        ]
        claimer.requests.put_nowait(pb.ClaimTaskRequest(credit=pb.ClaimCredit(credits=1)))
        third = await claimer.read()
        assert third.WhichOneof("response") == "task"
        assert {first[0].task.node_key, first[1].task.node_key, third.task.node_key} == {
            "a",
            "b",
            "c",
        }
    finally:
        await claimer.close()


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (
            pb.PostResultRequest(
                attempt_id="00000000-0000-0000-0000-000000000001",
                batch=[pb.PostResultRequest(attempt_id="00000000-0000-0000-0000-000000000002")],
            ),
            "batch",
        ),
        (
            pb.PostResultRequest(
                batch=[
                    pb.PostResultRequest(
                        attempt_id="00000000-0000-0000-0000-000000000002",
                        success=pb.TaskSuccess(),
                        batch=[pb.PostResultRequest()],
                    )
                ]
            ),
            "batch[0].batch",
        ),
        (pb.PostResultRequest(batch=[pb.PostResultRequest(attempt_id="x")]), "batch[0]"),
    ],
)
async def test_a_malformed_batch_is_refused(
    scheduler: Scheduler, request_: pb.PostResultRequest, field: str
) -> None:
    secret = await setup_registry(scheduler)
    stub = pb_grpc.RunnerServiceStub(scheduler.channel)
    call = stub.PostResult(iter([request_]), metadata=(("authorization", f"Bearer {secret}"),))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        _ = [r async for r in call]
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (raised.value.details() or "")
