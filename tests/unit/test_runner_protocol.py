"""The runner protocol's parts on a fake clock and an in-memory store: dispatch allocation,
lease decisions, settlement answers, and who may do what."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

import pytest

from scheduler.domain import credentials
from scheduler.domain.errors import Aborted, PermissionDenied, Unauthenticated
from scheduler.domain.health import Health
from scheduler.domain.limits import Limits
from scheduler.domain.runner_protocol import (
    LOST,
    AttemptState,
    ClaimedTask,
    Drain,
    HeartbeatReply,
    LeaseState,
    StreamTerms,
    allocate,
    hand_off_wanted,
    lease_due,
    lease_state,
    stream_terms,
)
from scheduler.domain.sessions import NodeState
from scheduler.domain.verdicts import Outcome, OutcomeKind, ResultStatus, credits_back
from scheduler.service.runner_protocol import ProtocolSettings, RunnerProtocol
from scheduler.service.signals import Signals
from scheduler.service.supervisor import Supervisor
from tests.support import eventually
from tests.unit.fakes import T0, FakeClock, MemoryStore, OneReplica
from tests.unit.test_dag_rules import held

LEASE = timedelta(seconds=30)
SETTINGS = ProtocolSettings(lease_duration=LEASE, heartbeat_interval=timedelta(seconds=10))


class Rig:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.store = MemoryStore()
        self.signals = Signals()
        self.health = Health(["heat.scheduler.v1.RunnerService"], self.clock)
        self.supervisor = Supervisor(self.health)
        self.protocol = RunnerProtocol(
            self.store,  # type: ignore[arg-type]
            OneReplica(),
            self.signals,
            self.clock,
            SETTINGS,
            Limits(max_output_bytes=100),
            self.supervisor,
            rng=random.Random(5),  # noqa: S311 (jitter, not secrets)
        )
        self.store.registry.credentials[credentials.digest("heatrc_w")] = "w"

    def task(self, attempt_id: str) -> ClaimedTask:
        return ClaimedTask(
            session_id=7,
            session="s-1",
            idx=int(attempt_id.rsplit("-", 1)[-1]),
            node_key=attempt_id,
            node_template="t",
            attempt=1,
            attempt_id=attempt_id,
            owner="",
            lease_deadline=T0,
            attempt_deadline=T0 + timedelta(hours=1),
            config={},
            inputs={},
            parameters={},
        )

    def running(self, attempt_id: str, runner: str = "w") -> None:
        node = held(1, attempt_id=attempt_id, runner=runner, downstream=())
        self.store.tasks.running(node, self.clock.now() + LEASE)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    made = Rig()
    yield made
    await made.protocol.stop()
    await made.supervisor.stop_all()


async def next_item(
    stream: AsyncIterator[list[ClaimedTask] | Drain],
) -> ClaimedTask | Drain:
    """The next item of a first-version stream: a drain, or a task (one at a time)."""
    item = await asyncio.wait_for(anext(stream), 1)
    if isinstance(item, list):
        (task,) = item
        return task
    return item


# --- dispatch ---------------------------------------------------------------------------------


def test_credits_are_allocated_round_robin() -> None:
    assert allocate([("a", 3), ("b", 1), ("c", 0), ("d", 2)], 5) == ["a", "b", "d", "a", "d"]
    assert allocate([("a", 1)], 5) == ["a"]
    assert allocate([("a", 4)], 0) == []


async def test_a_claim_spreads_over_instances_and_gives_back_unused_credits(rig: Rig) -> None:
    rig.store.tasks.queued = [rig.task(f"a-{i}") for i in range(2)]
    first = rig.protocol.connect("w", "w", "i-1", [], 2)
    second = rig.protocol.connect("w", "w", "i-2", [], 1)
    got = [
        await next_item(rig.protocol.stream(first)),
        await next_item(rig.protocol.stream(second)),
    ]
    (request,) = [r for r in rig.store.tasks.claims if len(r.owners) == 3]
    assert request.owners == ("i-1", "i-2", "i-1")
    assert request.lease_deadline == T0 + LEASE
    assert [t.owner for t in got if isinstance(t, ClaimedTask)] == ["i-1", "i-2"]
    assert all(
        isinstance(t, ClaimedTask) and t.heartbeat_interval == SETTINGS.heartbeat_interval
        for t in got
    )
    assert first.credits == 1 and second.credits == 0  # the credit no task took is back
    assert first.held == {"a-0"} and second.held == {"a-1"}


async def test_what_an_instance_did_not_receive_goes_back_to_the_queue(rig: Rig) -> None:
    rig.running("a-0")
    instance = rig.protocol.connect("w", "w", "i-1", [], 0)
    rig.protocol.dispatch.hand_out([_claimed(rig, "a-0", owner="i-1")])
    rig.protocol.hang_up(instance)
    assert [item async for item in rig.protocol.stream(instance)] == []
    rig.protocol.disconnect(instance)
    await eventually(lambda: rig.store.tasks.settlements)
    (settlement,) = rig.store.tasks.settlements
    assert [(w.node.attempt_id, w.state) for w in settlement.writes] == [("a-0", NodeState.QUEUED)]
    assert settlement.verdicts == ()  # a release is not remembered


async def test_an_instance_id_stays_with_its_runner(rig: Rig) -> None:
    rig.protocol.connect("w", "w", "i-1", [], 0)
    with pytest.raises(PermissionDenied, match="connected for runner 'w'"):
        rig.protocol.connect("x", "x", "i-1", [], 0)
    with pytest.raises(PermissionDenied, match="belongs to runner 'w'"):
        await rig.protocol.heartbeat("x", "i-1", [])
    with pytest.raises(PermissionDenied, match="not 'other'"):
        rig.protocol.connect("w", "other", "i-2", [], 0)


async def test_a_drain_reaches_the_stream_and_every_heartbeat(rig: Rig) -> None:
    instance = rig.protocol.connect("w", "w", "i-1", [], 0)
    assert rig.protocol.dispatch.drain("i-1", "scale down")
    assert await next_item(rig.protocol.stream(instance)) == Drain("scale down")
    reply = await rig.protocol.heartbeat("w", "i-1", [])
    assert reply.drain == Drain("scale down")
    assert not rig.protocol.dispatch.drain("i-unknown", "nobody")


# --- leases -----------------------------------------------------------------------------------


def test_a_lease_is_written_only_once_half_of_it_is_used() -> None:
    assert not lease_due(T0 + LEASE, T0, LEASE)
    assert not lease_due(T0 + LEASE, T0 + timedelta(seconds=14), LEASE)
    assert lease_due(T0 + LEASE, T0 + timedelta(seconds=15), LEASE)
    assert lease_due(None, T0, LEASE)
    before = T0 - timedelta(seconds=1)
    assert lease_state(None, before) == LOST
    assert lease_state(AttemptState(NodeState.RUNNING, T0, "w"), before) == LeaseState(True, T0)
    assert lease_state(AttemptState(NodeState.CANCELLED, None, "w"), before).cancelled
    assert lease_state(AttemptState(NodeState.SUCCEEDED, None, "w"), before) == LOST
    # A lease that ran out is lost, though the timekeeper has not failed its attempt yet.
    assert lease_state(AttemptState(NodeState.RUNNING, T0, "w"), T0) == LOST


async def test_heartbeats_cost_no_write_until_the_lease_runs_short(rig: Rig) -> None:
    rig.running("a-0")
    rig.running("a-1")
    rig.protocol.leases.leased([_claimed(rig, "a-0"), _claimed(rig, "a-1")], rig.clock.now())
    quiet = await rig.protocol.heartbeat("w", "i-1", ["a-0", "a-1", "a-0"])
    assert rig.store.tasks.extended == []
    assert [lease.attempt_id for lease in quiet.leases] == ["a-0", "a-1"]
    rig.clock.advance(seconds=20)
    due = await rig.protocol.heartbeat("w", "i-1", ["a-0", "a-1"])
    assert rig.store.tasks.extended == [("w", ["a-0", "a-1"])]  # one statement for both
    assert {lease.deadline for lease in due.leases} == {rig.clock.now() + LEASE}
    assert due.interval == SETTINGS.heartbeat_interval


async def test_attempts_of_another_runner_or_unknown_ones_are_lost(rig: Rig) -> None:
    rig.running("a-0", runner="other")
    reply = await rig.protocol.heartbeat("w", "i-1", ["a-0", "a-9"])
    assert reply.leases == [] and reply.lost == ["a-0", "a-9"]


async def test_a_cancellation_is_pushed_to_the_holder_and_answered_after(rig: Rig) -> None:
    rig.running("a-0")
    instance = rig.protocol.connect("w", "w", "i-1", [], 0)
    rig.protocol.dispatch.hand_out([_claimed(rig, "a-0", owner="i-1")])
    pushed: list[HeartbeatReply] = []
    detach = rig.protocol.attach_heartbeats("i-1", pushed.append)
    rig.signals.cancelled(["a-0"])
    assert [c.attempt_id for p in pushed for c in p.cancellations] == ["a-0"]
    assert instance.held == set()  # the holder lets go of it at once
    reply = await rig.protocol.heartbeat("w", "i-1", ["a-0"])
    assert [c.attempt_id for c in reply.cancellations] == ["a-0"] and reply.leases == []
    detach()
    rig.running("a-1")
    rig.protocol.dispatch.hand_out([_claimed(rig, "a-1", owner="i-1")])
    rig.signals.cancelled(["a-1"])
    assert len(pushed) == 1  # detached: nothing more arrives


def _claimed(rig: Rig, attempt_id: str, owner: str = "") -> ClaimedTask:
    return replace(rig.task(attempt_id), owner=owner, lease_deadline=rig.clock.now() + LEASE)


# --- results ----------------------------------------------------------------------------------


async def test_a_result_is_accepted_once_and_a_repeat_gets_the_same_answer(rig: Rig) -> None:
    rig.running("a-0")
    success = Outcome("a-0", OutcomeKind.SUCCESS, outputs={"n": 1}, outputs_size=10)
    first = await rig.protocol.post("w", success)
    again = await rig.protocol.post("w", success)
    assert first.status is ResultStatus.ACCEPTED and again == first
    repeat = rig.store.tasks.settlements[-1]
    assert repeat.writes == () and repeat.verdicts == ()  # the repeat wrote nothing


async def test_unknown_attempts_are_stale_and_foreign_ones_forbidden(rig: Rig) -> None:
    rig.running("a-0", runner="other")
    unknown = await rig.protocol.post("w", Outcome("a-9", OutcomeKind.SUCCESS))
    assert unknown.status is ResultStatus.REJECTED_STALE
    with pytest.raises(PermissionDenied, match="belongs to runner 'other', not 'w'"):
        await rig.protocol.post("w", Outcome("a-0", OutcomeKind.SUCCESS))
    assert rig.store.tasks.nodes["a-0"].state is NodeState.RUNNING


async def test_a_batch_that_loses_to_a_concurrent_change_is_tried_again(rig: Rig) -> None:
    rig.running("a-0")
    rig.store.tasks.conflicts = 2
    reply = await rig.protocol.post("w", Outcome("a-0", OutcomeKind.FAILURE, message="x"))
    assert reply.status is ResultStatus.ACCEPTED
    assert rig.store.tasks.nodes["a-0"].state is NodeState.RETRY_WAIT


async def test_five_lost_tries_surface_as_aborted(rig: Rig) -> None:
    rig.running("a-0")
    rig.store.tasks.conflicts = 5
    with pytest.raises(Aborted):
        await rig.protocol.post("w", Outcome("a-0", OutcomeKind.SUCCESS))


# --- credentials ------------------------------------------------------------------------------


async def test_a_credential_names_its_runner_and_revocation_shows_within_seconds(
    rig: Rig,
) -> None:
    with pytest.raises(Unauthenticated, match="no runner credential"):
        await rig.protocol.authenticate(None)
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        await rig.protocol.authenticate("heatrc_nobody")
    assert await rig.protocol.authenticate("heatrc_w") == "w"
    asked = rig.store.transactions
    rig.store.registry.credentials.clear()  # revoked
    assert await rig.protocol.authenticate("heatrc_w") == "w"  # cached, no query
    assert rig.store.transactions == asked
    rig.clock.advance(seconds=11)
    with pytest.raises(Unauthenticated):
        await rig.protocol.authenticate("heatrc_w")


# --- fewer messages per task (issue 13) -------------------------------------------------------


def test_stream_terms_grant_batches_within_the_schedulers_bound() -> None:
    assert stream_terms(0, False, max_push_batch=64) == StreamTerms()
    assert stream_terms(1, False, max_push_batch=64) == StreamTerms()
    assert not StreamTerms().extended
    assert stream_terms(500, True, max_push_batch=64) == StreamTerms(64, True, True)
    assert stream_terms(8, False, max_push_batch=64) == StreamTerms(8, False, True)
    assert stream_terms(0, True, max_push_batch=64) == StreamTerms(1, True, True)
    assert stream_terms(0, True, max_push_batch=64).extended


def test_a_settlement_claims_along_only_with_credits_and_likely_work() -> None:
    assert hand_off_wanted(became_ready=True, backlog=False, credits=3)
    assert hand_off_wanted(became_ready=False, backlog=True, credits=1)
    assert not hand_off_wanted(became_ready=False, backlog=False, credits=3)
    assert not hand_off_wanted(became_ready=True, backlog=True, credits=0)


def test_results_give_credits_back_hand_backs_do_not() -> None:
    outcomes = [
        Outcome("a-1", OutcomeKind.SUCCESS),
        Outcome("a-2", OutcomeKind.FAILURE, message="x"),
        Outcome("a-3", OutcomeKind.RELEASE, message="draining"),
    ]
    assert credits_back(outcomes) == ["a-1", "a-2"]


async def test_a_result_returns_its_credit_and_its_settlement_claims_the_next_task(
    rig: Rig,
) -> None:
    rig.store.tasks.queued = [rig.task(f"a-{i}") for i in range(3)]
    terms = StreamTerms(8, credits_with_results=True, result_batches=True)
    instance = rig.protocol.connect("w", "w", "i-1", [], 2, terms)
    stream = rig.protocol.stream(instance)
    first = await asyncio.wait_for(anext(stream), 1)
    assert isinstance(first, list) and [t.attempt_id for t in first] == ["a-0", "a-1"]
    assert instance.credits == 0
    for task in first:
        rig.running(task.attempt_id)
    replies = await rig.protocol.post_many(
        "w", [Outcome(t.attempt_id, OutcomeKind.SUCCESS) for t in first]
    )
    assert [r.status for r in replies] == [ResultStatus.ACCEPTED] * 2
    # The settlement claimed with the two credits the results gave back (one task was left).
    (settlement_claim,) = [r for r in rig.store.tasks.claims if r.owners == ("i-1", "i-1")][1:]
    assert settlement_claim.now == rig.clock.now()
    second = await asyncio.wait_for(anext(stream), 1)
    assert isinstance(second, list) and [t.attempt_id for t in second] == ["a-2"]
    assert instance.credits == 1  # the credit no task took is back


async def test_a_first_version_stream_gets_no_credit_from_results(rig: Rig) -> None:
    rig.store.tasks.queued = [rig.task(f"a-{i}") for i in range(2)]
    instance = rig.protocol.connect("w", "w", "i-1", [], 1)
    task = await next_item(rig.protocol.stream(instance))
    assert isinstance(task, ClaimedTask)
    rig.running(task.attempt_id)
    await rig.protocol.post("w", Outcome(task.attempt_id, OutcomeKind.SUCCESS))
    assert instance.credits == 0
    assert [t.attempt_id for t in rig.store.tasks.queued] == ["a-1"]  # nothing claimed along


async def test_credits_come_back_only_to_the_stream_the_task_was_pushed_on(rig: Rig) -> None:
    rig.store.tasks.queued = [rig.task("a-0")]
    terms = StreamTerms(8, credits_with_results=True, result_batches=True)
    old = rig.protocol.connect("w", "w", "i-1", [], 1, terms)
    (task,) = await asyncio.wait_for(anext(rig.protocol.stream(old)), 1)  # type: ignore[misc]
    rig.running(task.attempt_id)
    new = rig.protocol.connect("w", "w", "i-1", [], 1, terms)  # the instance reconnected
    await rig.protocol.post("w", Outcome(task.attempt_id, OutcomeKind.SUCCESS))
    assert (old.credits, new.credits) == (0, 1)  # the new ClaimStart counted the slot itself
