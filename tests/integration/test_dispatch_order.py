"""Dispatch order over real gRPC and PostgreSQL: fair share across Sessions, fairness keys with
weights, priorities, and the critical path first. A hand-driven instance takes its tasks in
rounds (credits granted, tasks received, results posted), so every figure is an order or a
count of dispatches, never a time."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import runner_service_pb2 as pb
from heat.scheduler.v1 import runner_service_pb2_grpc as pb_grpc
from heat.scheduler.v1 import session_pb2
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc

from scheduler.domain import dispatch_order
from scheduler.domain.dispatch_order import DispatchPolicy, Queue
from scheduler.domain.runner_protocol import ClaimRequest
from tests.integration.test_protocol import (
    Claimer,
    post,
    session_state,
    setup_registry,
    success,
)
from tests.integration.test_protocol_batches import BatchClaimer, post_batch
from tests.support import Scheduler, failure, serving


def nodes(count: int, *, prefix: str = "n", chain: bool = False) -> list[tuple[str, list[str]]]:
    return [(f"{prefix}{i}", [f"{prefix}{i - 1}"] if chain and i else []) for i in range(count)]


def request(
    dag: Sequence[tuple[str, list[str]]], *, team: str = "", priority: int = 0
) -> spb.CreateSessionRequest:
    return json_format.ParseDict(
        {
            "dag": {"nodes": [{"key": k, "nodeTemplate": "step", "dependsOn": d} for k, d in dag]},
            "labels": {"team": team} if team else {},
            "priority": priority,
        },
        spb.CreateSessionRequest(),
    )


async def create(
    s: Scheduler, dag: Sequence[tuple[str, list[str]]], *, team: str = "", priority: int = 0
) -> str:
    stub = spb_grpc.SessionServiceStub(s.channel)
    made = await stub.CreateSession(request(dag, team=team, priority=priority))
    name: str = made.session.name
    return name


@dataclass
class Instance:
    """One runner instance taking ``credits`` tasks a round and finishing them all."""

    s: Scheduler
    secret: str
    credits: int
    claimer: Claimer = field(init=False)
    dispatched: list[tuple[str, str]] = field(default_factory=list)  # (session, node key)

    def __post_init__(self) -> None:
        self.claimer = Claimer(self.s, self.secret, "i1", credits=0)

    async def round(self, tasks: int | None = None) -> list[pb.Task]:
        """Take ``tasks`` (default: the instance's credits), then post them all."""
        wanted = tasks or self.credits
        self.claimer.credit(wanted)
        got = [await self.claimer.task() for _ in range(wanted)]
        self.dispatched += [(t.session, t.node_key) for t in got]
        await post(self.s, self.secret, *(success(t.attempt_id, {}) for t in got))
        return got

    async def close(self) -> None:
        await self.claimer.close()


async def check_queues(dsn: str) -> None:
    """Every queue counts exactly its Session's queued nodes at its Runner."""
    conn = await asyncpg.connect(dsn)
    try:
        drift = await conn.fetch(
            """
            SELECT q.session_id, q.runner, q.queued,
                   (SELECT count(*) FROM nodes AS n WHERE n.session_id = q.session_id
                      AND n.runner = q.runner AND n.state = 'queued') AS actual
            FROM queues AS q
            """
        )
    finally:
        await conn.close()
    assert [dict(r) for r in drift if r["queued"] != r["actual"]] == []


async def test_a_small_session_behind_a_huge_one_finishes_within_twice_its_time_alone(
    scheduler: Scheduler, db_dsn: str
) -> None:
    secret = await setup_registry(scheduler)
    worker = Instance(scheduler, secret, credits=4)
    try:
        # Alone: a chain of 3 takes 3 rounds (one node ready at a time).
        alone = await create(scheduler, nodes(3, chain=True))
        rounds_alone = 0
        while sum(1 for s, _ in worker.dispatched if s == alone) < 3:
            await worker.round(tasks=1)
            rounds_alone += 1
        # Behind 10,000 ready nodes of another Session, submitted first and already running.
        huge = await create(scheduler, nodes(10_000))
        for _ in range(3):
            await worker.round()
        small = await create(scheduler, nodes(3, chain=True))
        rounds_behind = 0
        while sum(1 for s, _ in worker.dispatched if s == small) < 3:
            assert rounds_behind < 10, "the small Session waits behind the huge one"
            await worker.round()
            rounds_behind += 1
        assert rounds_alone == 3
        assert rounds_behind <= 2 * rounds_alone
        # The huge one kept the rest of the instance's capacity meanwhile.
        assert sum(1 for s, _ in worker.dispatched if s == huge) == 4 * (3 + rounds_behind) - 3
    finally:
        await worker.close()
    await check_queues(db_dsn)


async def test_a_settlement_claims_along_the_node_it_makes_ready_in_a_session_with_an_empty_queue(
    scheduler: Scheduler, db_dsn: str
) -> None:
    """A result makes the next node of a chain ready while its Session has nothing else queued
    and another Session has a backlog: the settlement's own claim (the hand-off, for the credit
    the result gave back) sees that Session's queue filled again, at the front, and takes it."""
    secret = await setup_registry(scheduler)
    huge = await create(scheduler, nodes(60))
    claimer = BatchClaimer(scheduler, secret, "i1", credits=4)
    try:
        assert (await claimer.read()).WhichOneof("response") == "started"
        held = await claimer.tasks(4)
        # The small Session comes while every credit is out; the next results bring it in.
        small = await create(scheduler, nodes(2, chain=True))
        await post_batch(scheduler, secret, *(success(t.attempt_id, {}) for t in held))
        held = await claimer.tasks(4)
        (first,) = [t for t in held if t.session == small]
        assert first.node_key == "n0"
        # Its queue is empty now: n1 waits on n0. n0's result gives one credit back.
        await post_batch(scheduler, secret, success(first.attempt_id, {}))
        (handed,) = await claimer.tasks(1)
        assert (handed.session, handed.node_key) == (small, "n1")
        nodes_of = {n.key: n for n in (await session_state(scheduler, small)).session.nodes}
        # One transaction: n0's result, n1 ready, n1 claimed.
        assert nodes_of["n0"].end_time == nodes_of["n1"].start_time
        others = [t for t in held if t.session == huge]
        await post_batch(scheduler, secret, *(success(t.attempt_id, {}) for t in [*others, handed]))
    finally:
        await claimer.close()
    await check_queues(db_dsn)


async def test_fairness_keys_share_by_their_weights_and_sessions_share_within_a_key(
    db_dsn: str,
) -> None:
    async with serving(db_dsn, fairness_weights="finance=3,research=1") as s:
        secret = await setup_registry(s)
        a1 = await create(s, nodes(300), team="finance")
        a2 = await create(s, nodes(300), team="finance")
        b = await create(s, nodes(300), team="research")
        worker = Instance(s, secret, credits=8)
        try:
            for _ in range(20):
                await worker.round()
        finally:
            await worker.close()
        count = Counter(session for session, _ in worker.dispatched)
        finance, research = count[a1] + count[a2], count[b]
        assert finance + research == 160
        assert 2.7 <= finance / research <= 3.3
        assert abs(count[a1] - count[a2]) <= 2
        got = await spb_grpc.SessionServiceStub(s.channel).GetSession(spb.GetSessionRequest(name=b))
        assert got.session.fairness_key == "research"
    await check_queues(db_dsn)


async def test_a_high_priority_session_overtakes_a_low_priority_backlog(
    scheduler: Scheduler,
) -> None:
    secret = await setup_registry(scheduler)
    low = await create(scheduler, nodes(200), priority=3)
    worker = Instance(scheduler, secret, credits=4)
    try:
        await worker.round()
        high = await create(scheduler, nodes(20), priority=7)
        before = len(worker.dispatched)
        for _ in range(6):
            await worker.round()
    finally:
        await worker.close()
    after = [session for session, _ in worker.dispatched[before:]]
    assert after[:20] == [high] * 20
    assert after[20:] == [low] * 4


@pytest.mark.parametrize("strict", [False, True], ids=["shared", "strict"])
async def test_a_lower_level_progresses_unless_priority_is_strict(
    db_dsn: str, strict: bool
) -> None:
    async with serving(db_dsn, strict_priority=strict) as s:
        secret = await setup_registry(s)
        high = await create(s, nodes(300), priority=6)
        low = await create(s, nodes(300), priority=5)
        worker = Instance(s, secret, credits=10)
        try:
            for _ in range(11):
                await worker.round()
        finally:
            await worker.close()
    count = Counter(session for session, _ in worker.dispatched)
    assert count[high] + count[low] == 110
    if strict:
        assert count[low] == 0
    else:  # the default: the level below gets a tenth of what the level above gets, in turns
        assert 5 <= count[low] <= 15


async def test_the_priority_of_a_running_session_can_be_changed(scheduler: Scheduler) -> None:
    secret = await setup_registry(scheduler)
    sessions = spb_grpc.SessionServiceStub(scheduler.channel)
    first = await create(scheduler, nodes(100))
    second = await create(scheduler, nodes(100))
    worker = Instance(scheduler, secret, credits=4)
    try:
        await worker.round()
        raised = await sessions.UpdateSession(
            spb.UpdateSessionRequest(
                session=session_pb2.Session(name=second, priority=8),
                update_mask=field_mask_pb2.FieldMask(paths=["priority"]),
            )
        )
        assert raised.session.priority == 8
        before = len(worker.dispatched)
        for _ in range(5):
            await worker.round()
    finally:
        await worker.close()
    assert [s for s, _ in worker.dispatched[before:]] == [second] * 20
    for bad, where in (
        (
            spb.UpdateSessionRequest(session=session_pb2.Session(name=first, priority=10)),
            "session.priority",
        ),
        (
            spb.UpdateSessionRequest(
                session=session_pb2.Session(name=first, priority=6),
                update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
            ),
            "update_mask.paths[0]",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await sessions.UpdateSession(bad)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert where in failure(refused.value).violations
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await sessions.UpdateSession(
            spb.UpdateSessionRequest(session=session_pb2.Session(name="s-nope", priority=6))
        )
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND


async def test_a_session_template_gives_its_sessions_a_default_priority(
    scheduler: Scheduler,
) -> None:
    await setup_registry(scheduler)
    template = {
        "name": "urgent",
        "defaultPriority": 8,
        "nodes": [{"key": "a", "nodeTemplate": "step"}],
    }
    await scheduler.registry.CreateSessionTemplate(
        json_format.ParseDict({"sessionTemplate": template}, rpb.CreateSessionTemplateRequest())
    )
    sessions = spb_grpc.SessionServiceStub(scheduler.channel)
    default = await sessions.CreateSession(spb.CreateSessionRequest(session_template="urgent"))
    chosen = await sessions.CreateSession(
        spb.CreateSessionRequest(session_template="urgent", priority=2)
    )
    inline = await sessions.CreateSession(request(nodes(1)))
    assert (default.session.priority, chosen.session.priority, inline.session.priority) == (8, 2, 5)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await sessions.CreateSession(request(nodes(1), priority=12))
    assert "priority" in failure(refused.value).violations
    template["defaultPriority"] = -1
    with pytest.raises(grpc.aio.AioRpcError) as bad_template:
        await scheduler.registry.CreateSessionTemplate(
            json_format.ParseDict({"sessionTemplate": template}, rpb.CreateSessionTemplateRequest())
        )
    assert "session_template.default_priority" in failure(bad_template.value).violations


# --- the critical path --------------------------------------------------------------------------

# Five one-node branches listed first, then a chain of four: in DAG order the branches go first;
# by the critical path the chain does, until its last node ties with the branches (rank 1).
BRANCHES_THEN_CHAIN = [*nodes(5, prefix="b"), *nodes(4, prefix="c", chain=True)]


@pytest.mark.parametrize("critical_path", [True, False], ids=["critical-path", "dag-order"])
async def test_a_session_takes_its_longest_remaining_path_first(
    db_dsn: str, critical_path: bool
) -> None:
    async with serving(db_dsn, critical_path=critical_path) as s:
        secret = await setup_registry(s)
        await create(s, BRANCHES_THEN_CHAIN)
        worker = Instance(s, secret, credits=1)
        try:
            for _ in range(9):
                await worker.round()
        finally:
            await worker.close()
    order = [key for _, key in worker.dispatched]
    if critical_path:
        assert order == ["c0", "c1", "c2", "b0", "b1", "b2", "b3", "b4", "c3"]
    else:
        assert order == ["b0", "b1", "b2", "b3", "b4", "c0", "c1", "c2", "c3"]


async def test_paths_are_weighed_by_measured_durations_once_known(
    scheduler: Scheduler, db_dsn: str
) -> None:
    secret = await setup_registry(scheduler)
    manifest = {
        "nodeTemplates": [
            {"name": "slow", "runner": "w"},
            {"name": "fast", "runner": "w"},
        ]
    }
    await scheduler.registry.ApplyManifest(
        json_format.ParseDict({"manifest": manifest}, rpb.ApplyManifestRequest())
    )
    sessions = spb_grpc.SessionServiceStub(scheduler.channel)

    def dag(*spec: tuple[str, str, list[str]]) -> spb.CreateSessionRequest:
        return json_format.ParseDict(
            {"dag": {"nodes": [{"key": k, "nodeTemplate": t, "dependsOn": d} for k, t, d in spec]}},
            spb.CreateSessionRequest(),
        )

    # A chain of three fast nodes beside one slow node.
    shape: tuple[tuple[str, str, list[str]], ...] = (
        ("f0", "fast", []),
        ("f1", "fast", ["f0"]),
        ("f2", "fast", ["f1"]),
        ("s", "slow", []),
    )
    worker = Instance(scheduler, secret, credits=1)
    try:
        # Nothing measured yet: paths are node counts, so the chain goes first.
        await sessions.CreateSession(dag(*shape))
        assert [t.node_key for t in await worker.round()] == ["f0"]
        for _ in range(3):
            await worker.round()
        # Five Sessions measure both: slow attempts are held a while, fast ones are not.
        for _ in range(dispatch_order.MIN_DURATION_SAMPLES):
            await sessions.CreateSession(dag(("a", "fast", []), ("b", "slow", [])))
        held = Claimer(scheduler, secret, "i2", credits=10)
        try:
            tasks = [await held.task() for _ in range(10)]
            fast = [t for t in tasks if t.node_template == "fast"]
            slow = [t for t in tasks if t.node_template == "slow"]
            await post(scheduler, secret, *(success(t.attempt_id, {}) for t in fast))
            await asyncio.sleep(0.3)
            await post(scheduler, secret, *(success(t.attempt_id, {}) for t in slow))
        finally:
            await held.close()
        # Now the slow node is the longer path.
        await sessions.CreateSession(dag(*shape))
        assert [t.node_key for t in await worker.round()] == ["s"]
    finally:
        await worker.close()
    conn = await asyncpg.connect(db_dsn)
    try:
        rows = await conn.fetch(
            "SELECT node_template, cardinality(samples_ms) AS n FROM template_durations"
        )
        counts = {r["node_template"]: r["n"] for r in rows}
    finally:
        await conn.close()
    assert counts == {"fast": 8, "slow": 6}


# --- the claim statement against the rule it applies --------------------------------------------


async def test_the_claim_statement_takes_the_turns_the_rule_gives(
    scheduler: Scheduler, db_dsn: str
) -> None:
    """Random queues (levels, keys, shares had, sizes): one claim of the store takes, per
    Session, as many tasks as ``dispatch_order.grants`` gives, in every policy, and charges
    their queues the same virtual time."""
    await setup_registry(scheduler)
    rng = random.Random(17)  # noqa: S311 (test data)
    for _ in range(24):
        await create(
            scheduler,
            nodes(rng.choice([1, 2, 5, 30])),
            team=rng.choice(["", "a", "b", "c"]),
            priority=rng.choice([4, 5, 5, 5, 5, 6]),
        )
    conn = await asyncpg.connect(db_dsn)
    store = scheduler.running.store
    policies = [
        DispatchPolicy(),
        DispatchPolicy(weights=(("a", 3.0), ("b", 1.0), ("c", 2.0))),
        DispatchPolicy(weights=(("a", 5.0),), strict_priority=True),
        DispatchPolicy(priority_ratio=1.5),
        DispatchPolicy(weights=(("b", 4.0),), priority_ratio=1.0),
    ]
    try:
        for trial in range(20):
            await conn.execute(
                "UPDATE queues SET vtime = floor(random() * 40), dispatched = floor(random() * 5)"
            )
            rows = await conn.fetch(
                "SELECT session_id, priority, fairness_key, queued, dispatched, vtime FROM queues"
            )
            queues = [Queue(**dict(r)) for r in rows]
            policy = policies[trial % len(policies)]
            credits = rng.choice([1, 3, 8, 40, 100])
            expected = dispatch_order.grants(queues, credits, policy)
            now = datetime.now(UTC)
            claim = ClaimRequest(
                "w",
                None,
                tuple(f"x{i}" for i in range(credits)),
                now + timedelta(minutes=1),
                now,
                policy=policy,
            )
            async with store.transaction() as work:
                tasks = await work.tasks.claim(claim)
            got = Counter(t.session_id for t in tasks)
            assert dict(got) == {k: g.tasks for k, g in expected.items()}, (trial, credits)
            before = {q.session_id: q.vtime for q in queues}
            for row in await conn.fetch("SELECT session_id, vtime FROM queues"):
                grant = expected.get(row["session_id"])
                want = before[row["session_id"]] + (grant.turns if grant else 0.0)
                assert row["vtime"] == pytest.approx(want), (trial, row["session_id"])
            # Back to every node queued, for the next trial.
            await conn.execute("UPDATE nodes SET state = 'queued' WHERE state = 'running'")
            await conn.execute(
                """UPDATE queues AS q SET queued = (SELECT count(*) FROM nodes AS n
                   WHERE n.session_id = q.session_id AND n.state = 'queued')"""
            )
    finally:
        await conn.close()


async def test_an_instance_taking_some_templates_gets_their_work_whatever_is_ahead(
    scheduler: Scheduler,
) -> None:
    secret = await setup_registry(scheduler)
    manifest = {"nodeTemplates": [{"name": "other-step", "runner": "w"}]}
    await scheduler.registry.ApplyManifest(
        json_format.ParseDict({"manifest": manifest}, rpb.ApplyManifestRequest())
    )
    sessions = spb_grpc.SessionServiceStub(scheduler.channel)
    ahead = json_format.ParseDict(
        {"dag": {"nodes": [{"key": f"o{i}", "nodeTemplate": "other-step"} for i in range(20)]}},
        spb.CreateSessionRequest(),
    )
    await sessions.CreateSession(ahead)
    mine = await create(scheduler, nodes(3), priority=2)
    start = pb.ClaimStart(runner="w", instance_id="i-steps", credits=5, node_templates=["step"])
    stop = asyncio.Event()

    async def requests() -> AsyncIterator[pb.ClaimTaskRequest]:
        yield pb.ClaimTaskRequest(start=start)
        await stop.wait()  # the stream stays open: a half-closed one takes no more tasks

    call = pb_grpc.RunnerServiceStub(scheduler.channel).ClaimTask(
        requests(), metadata=(("authorization", f"Bearer {secret}"),)
    )
    got = []
    try:
        for _ in range(3):
            response = await asyncio.wait_for(call.read(), 10)
            assert isinstance(response, pb.ClaimTaskResponse)
            got.append(response.task)
    finally:
        stop.set()
        call.cancel()
    assert {(t.session, t.node_template) for t in got} == {(mine, "step")}
