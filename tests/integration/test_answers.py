"""Same outcome, same answer: repeats across replicas, settled attempts, expired leases, stream
teardown, per-instance state, and instances that fell silent."""

from __future__ import annotations

import asyncio
import gc
import logging

import asyncpg
import grpc
import pytest
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import runner_service_pb2 as pb
from heat.scheduler.v1 import runner_service_pb2_grpc as pb_grpc
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc

from tests.integration.test_protocol import (
    Claimer,
    dag,
    failed,
    post,
    setup_registry,
    success,
)
from tests.support import Scheduler, eventually, serving

ROUNDS = 20


async def test_a_repeat_on_another_replica_gets_the_recorded_answer(db_dsn: str) -> None:
    async with serving(db_dsn) as one, serving(db_dsn) as two:
        secret = await setup_registry(one)
        sessions = spb_grpc.SessionServiceStub(one.channel)
        for _ in range(ROUNDS):
            await sessions.CreateSession(dag(("a", [])))
        claimer = Claimer(one, secret, "i1", credits=ROUNDS)
        try:
            tasks = [await claimer.task() for _ in range(ROUNDS)]
        finally:
            await claimer.close()
        for task in tasks:
            request = success(task.attempt_id, {"v": 1})
            answers = await asyncio.gather(
                post(one, secret, request), post(two, secret, request), post(one, secret, request)
            )
            assert list(answers) == [{task.attempt_id: pb.RESULT_STATUS_ACCEPTED}] * 3


async def test_a_different_outcome_for_a_settled_attempt_is_refused(scheduler: Scheduler) -> None:
    secret = await setup_registry(scheduler)
    await spb_grpc.SessionServiceStub(scheduler.channel).CreateSession(dag(("a", [])))
    claimer = Claimer(scheduler, secret, "i1", credits=1)
    try:
        task = await claimer.task()
    finally:
        await claimer.close()
    assert await post(scheduler, secret, success(task.attempt_id, 1)) == {
        task.attempt_id: pb.RESULT_STATUS_ACCEPTED
    }
    assert await post(scheduler, secret, failed(task.attempt_id)) == {
        task.attempt_id: pb.RESULT_STATUS_REJECTED_STALE
    }
    # In one batch: the first outcome decides, a different second one is refused.
    both = pb_grpc.RunnerServiceStub(scheduler.channel).PostResult(
        iter([success(task.attempt_id, 2), failed(task.attempt_id)]),
        metadata=(("authorization", f"Bearer {secret}"),),
    )
    assert [r.status async for r in both] == [
        pb.RESULT_STATUS_ACCEPTED,
        pb.RESULT_STATUS_REJECTED_STALE,
    ]


async def test_an_expired_lease_is_never_extended(scheduler: Scheduler, db_dsn: str) -> None:
    secret = await setup_registry(scheduler)
    await spb_grpc.SessionServiceStub(scheduler.channel).CreateSession(dag(("a", [])))
    claimer = Claimer(scheduler, secret, "i1", credits=1)
    try:
        task = await claimer.task()
        conn = await asyncpg.connect(db_dsn)
        try:  # the lease ran out; the timekeeper (asleep for the lease's length) has not looked
            await conn.execute("UPDATE nodes SET lease_deadline = now() - interval '1 second'")
        finally:
            await conn.close()
        # The replica's memory still holds the lease as written by the claim: forget it, as a
        # replica that did not hand the task out would not know it.
        scheduler.running.protocol.leases._known.clear()
        stub = pb_grpc.RunnerServiceStub(scheduler.channel)
        beat = stub.Heartbeat(
            iter([pb.HeartbeatRequest(instance_id="i1", attempt_ids=[task.attempt_id])]),
            metadata=claimer.metadata,
        )
        reply = await beat.read()
        assert isinstance(reply, pb.HeartbeatResponse)
        assert list(reply.lost_attempt_ids) == [task.attempt_id]
        assert not reply.leases
    finally:
        await claimer.close()


async def test_stream_getters_end_with_their_call(
    scheduler: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    secret = await setup_registry(scheduler)
    # A channel of its own: the shared one's client interceptors keep tasks of their own.
    channel = grpc.aio.insecure_channel(scheduler.address)
    stub = pb_grpc.RunnerServiceStub(channel)
    metadata = (("authorization", f"Bearer {secret}"),)
    before = len(asyncio.all_tasks())
    caplog.set_level(logging.ERROR, logger="asyncio")
    for _ in range(20):
        call = stub.PostResult(metadata=metadata)
        await call.write(failed("00000000-0000-4000-8000-000000000000"))
        await call.read()
        await asyncio.sleep(0.02)  # the server waits for the next answer, then the call ends
        call.cancel()
        beat = stub.Heartbeat(metadata=metadata)
        await beat.write(pb.HeartbeatRequest(instance_id="gone"))
        await beat.read()
        await asyncio.sleep(0.02)
        beat.cancel()

    def settled() -> bool:
        gc.collect()
        return len(asyncio.all_tasks()) <= before + 2

    # The server notices the cancellations in its own time (longer on a loaded machine); 40
    # leaked getters would never go away, so waiting for them proves nothing was leaked.
    await eventually(settled, timeout=30, interval=0.1)
    await channel.close()
    assert "Task was destroyed but it is pending" not in caplog.text
    assert "never retrieved" not in caplog.text


async def test_another_runners_heartbeat_leaves_the_instance_alone(scheduler: Scheduler) -> None:
    secret = await setup_registry(scheduler)
    other = await scheduler.registry.IssueRunnerCredential(
        rpb.IssueRunnerCredentialRequest(runner="other")
    )
    sessions = spb_grpc.SessionServiceStub(scheduler.channel)
    created = await sessions.CreateSession(dag(("a", [])))
    claimer = Claimer(scheduler, secret, "i1", credits=1)
    stub = pb_grpc.RunnerServiceStub(scheduler.channel)
    mine = stub.Heartbeat(metadata=claimer.metadata)
    try:
        task = await claimer.task()
        await mine.write(pb.HeartbeatRequest(instance_id="i1", attempt_ids=[task.attempt_id]))
        first = await mine.read()
        assert isinstance(first, pb.HeartbeatResponse)
        assert first.leases[0].attempt_id == task.attempt_id
        theirs = stub.Heartbeat(
            iter([pb.HeartbeatRequest(instance_id="i1")]),
            metadata=(("authorization", f"Bearer {other.credential.secret}"),),
        )
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await theirs.read()
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
        # The cancellation is still pushed to the instance's own Heartbeat stream.
        await sessions.CancelSession(spb.CancelSessionRequest(name=created.session.name))
        pushed = await asyncio.wait_for(mine.read(), 10)
        assert isinstance(pushed, pb.HeartbeatResponse)
        assert [c.attempt_id for c in pushed.cancellations] == [task.attempt_id]
    finally:
        mine.cancel()
        await claimer.close()


async def test_a_silent_instance_gets_no_new_task(db_dsn: str) -> None:
    """A frozen runner (SIGSTOP) keeps its stream open but stops heartbeating: the work goes
    to an instance that is heard from."""
    async with serving(db_dsn, lease_duration=4.0, heartbeat_interval=0.5) as sc:
        secret = await setup_registry(sc)
        sessions = spb_grpc.SessionServiceStub(sc.channel)
        await sessions.CreateSession(dag(("first", [])))
        frozen = Claimer(sc, secret, "frozen", credits=2)
        awake = Claimer(sc, secret, "awake", credits=0)
        stub = pb_grpc.RunnerServiceStub(sc.channel)
        beats = stub.Heartbeat(metadata=awake.metadata)
        try:
            held = await frozen.task()
            assert held.node_key == "first"
            await beats.write(pb.HeartbeatRequest(instance_id="awake"))
            await beats.read()
            await asyncio.sleep(2.2)  # longer than the silence allowed (half a lease: 2 s)
            await beats.write(pb.HeartbeatRequest(instance_id="awake"))
            await beats.read()
            awake.credit(1)
            created = await sessions.CreateSession(dag(("second", [])))
            task = await awake.task()
            assert (task.session, task.node_key) == (created.session.name, "second")
        finally:
            beats.cancel()
            await frozen.close()
            await awake.close()
