"""Leadership's rules without a database: the holder's count of its lease, the settings that
can work, when a waiting replica looks again, and what a replica does when its term ends
(stops acting, writes nothing, says why) — on a fake clock and in-memory fakes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from scheduler.domain.errors import Unavailable
from scheduler.domain.leadership import (
    Duty,
    LeaderView,
    LeaseSettings,
    NotLeader,
    Tenure,
    Term,
    takeover_wait,
)
from scheduler.domain.provisioning import InstanceSpec, Observed, RunnerWork
from scheduler.domain.sessions import NodeState
from scheduler.service.leadership import lead_forever
from scheduler.telemetry import SchedulerTelemetry, TelemetryConfig
from tests.support import eventually
from tests.unit.fakes import T0, FakeProvisioner, OneReplica
from tests.unit.test_provisioning_rules import Rig
from tests.unit.test_runner_protocol import Rig as ProtocolRig

SETTINGS = LeaseSettings(timedelta(seconds=10), timedelta(seconds=2))


def test_the_holder_counts_its_lease_from_when_it_sent_each_renewal() -> None:
    tenure = Tenure.begun(SETTINGS, sent_at=100.0)
    assert tenure.holds(109.9) and not tenure.holds(110.0)
    assert tenure.next_renewal(100.0) == 102.0
    tenure.renewed(sent_at=102.0)
    assert tenure.valid_until == 112.0
    tenure.renewed(sent_at=101.0)  # a late answer to an older renewal never shortens it
    assert tenure.valid_until == 112.0
    # A failed renewal is retried after its backoff, but never after the lease ends.
    assert tenure.retry_at(now=105.0, wait=0.5) == 105.5
    assert tenure.retry_at(now=111.8, wait=0.5) == 112.0
    assert tenure.time_left(111.0) == 1.0 and tenure.time_left(120.0) == 0.0


@pytest.mark.parametrize(
    ("lease", "renew", "problem"),
    [
        (10, 2, None),
        (9, 3, None),
        (9, 3.5, "at most 1/3 of the lease"),
        (10, 0, "more than 0"),
    ],
)
def test_a_renewal_interval_must_leave_room_for_two_failed_renewals(
    lease: float, renew: float, problem: str | None
) -> None:
    settings = LeaseSettings(timedelta(seconds=lease), timedelta(seconds=renew))
    found = settings.problem()
    assert found == problem if problem is None else problem in (found or "")


def test_a_fenced_transaction_may_idle_until_the_lease_would_end_after_the_last_renewal() -> None:
    # The holder renewed at most renew_every before it paused: its lease ends no sooner than
    # duration - renew_every after the pause, and the database ends the idle transaction by then.
    assert SETTINGS.idle_limit == timedelta(seconds=8)


def test_a_waiting_replica_looks_again_when_the_lease_runs_out_by_the_databases_clock() -> None:
    assert takeover_wait(T0 + timedelta(seconds=3), T0) == 3.0
    assert takeover_wait(T0, T0 + timedelta(seconds=1)) == 0.0


def test_a_term_says_why_it_ended_and_refuses_to_act_after() -> None:
    term = Term(Duty.TIMEKEEPER, asyncio.Event(), 4, "host:1", T0)
    term.check()
    term.end("b took over (epoch 5)")
    term.end("a later reason")
    assert term.reason == "b took over (epoch 5)"
    with pytest.raises(NotLeader, match="b took over"):
        term.check()
    assert term.describe() == "timekeeper, epoch 4, since 2026-03-01T12:00:00+00:00"
    view = LeaderView(Duty.PROVISIONING, "host:1", 4, T0, mine=True)
    assert view.describe() == "host:1 (this replica), epoch 4, since 2026-03-01T12:00:00+00:00"


async def test_a_replica_whose_term_ends_steps_down_says_why_and_waits_to_lead_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    leadership = OneReplica()
    led: list[int | None] = []

    async def lead(term: Term) -> None:
        led.append(term.epoch)
        if len(led) == 1:
            raise NotLeader("b took over (epoch 2)")
        await asyncio.Event().wait()

    with caplog.at_level(logging.INFO, logger="scheduler.service.leadership"):
        task = asyncio.create_task(lead_forever(leadership, Duty.TIMEKEEPER, lead))
        await eventually(lambda: len(led) == 2)
        task.cancel()
    assert led == [1, 2]
    stepped = [r.getMessage() for r in caplog.records if "stepped down" in r.getMessage()]
    assert stepped == [
        "this replica stepped down: it no longer keeps time (expires leases, requeues "
        "retries) (b took over (epoch 2))"
    ]


async def test_a_database_blip_inside_a_term_is_waited_out_without_stepping_down() -> None:
    leadership = OneReplica()
    calls = 0

    async def lead(term: Term) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Unavailable("the database is unavailable (ConnectionRefusedError); retry")
        if calls == 2:
            term.end("done")
            return
        await asyncio.Event().wait()

    await asyncio.wait_for(lead_forever_once(leadership, lead), 5)
    assert calls >= 2 and leadership.terms[0].reason == "done"


async def lead_forever_once(
    leadership: OneReplica, lead: Callable[[Term], Awaitable[None]]
) -> None:
    """lead_forever until its first term ends."""
    task = asyncio.create_task(lead_forever(leadership, Duty.TIMEKEEPER, lead))
    await eventually(lambda: leadership.terms and leadership.terms[0].lost.is_set())
    task.cancel()


TERM = {"heat.leadership.duty": "timekeeper", "heat.leadership.holder": "this"}


def leadership_metrics(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    """The heat.leadership.* points as [(attributes, value)] by metric name."""
    out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name.startswith("heat.leadership."):
                    points = out.setdefault(metric.name, [])
                    for point in metric.data.data_points:
                        points.append((dict(point.attributes or {}), getattr(point, "value", None)))
    return out


async def test_the_metrics_say_which_duty_this_replica_leads_since_when_and_in_which_term() -> None:
    reader = InMemoryMetricReader()
    telemetry = SchedulerTelemetry(TelemetryConfig(), metric_readers=[reader])
    leadership = OneReplica()

    async def lead(term: Term) -> None:
        await term.lost.wait()

    task = asyncio.create_task(
        lead_forever(leadership, Duty.TIMEKEEPER, lead, telemetry=telemetry.reporter)
    )
    try:
        await eventually(lambda: len(leadership.terms) == 1)
        assert leadership_metrics(reader) == {
            "heat.leadership.held": [
                ({"heat.leadership.duty": "timekeeper"}, 1),
                ({"heat.leadership.duty": "provisioning"}, 0),
            ],
            "heat.leadership.term.start_time": [
                ({**TERM, "heat.leadership.epoch": 1}, T0.timestamp())
            ],
        }
        # The moment the term ends the metrics say so, before the replica has done anything.
        leadership.terms[0].end("b took over (epoch 2)")
        assert leadership_metrics(reader) == {
            "heat.leadership.held": [
                ({"heat.leadership.duty": "timekeeper"}, 0),
                ({"heat.leadership.duty": "provisioning"}, 0),
            ]
        }
        await eventually(lambda: len(leadership.terms) == 2)
        started = leadership_metrics(reader)["heat.leadership.term.start_time"]
        assert started == [({**TERM, "heat.leadership.epoch": 2}, T0.timestamp())]
    finally:
        task.cancel()
        await telemetry.shutdown()


# --- the reconciler acts only within its term -----------------------------------------------


async def test_a_pass_after_the_term_ended_creates_and_records_nothing() -> None:
    rig = Rig()
    rig.work(queued=2)
    rig.term.end("b took over (epoch 2)")
    with pytest.raises(NotLeader):
        await rig.reconciler.reconcile(rig.term)
    assert rig.provisioner.created == [] and rig.store.provisioning.statuses == {}
    assert rig.store.fenced_writes == {}


class LosingProvisioner(FakeProvisioner):
    """A backend whose create call outlasts the term (the lease ran out meanwhile)."""

    term: Term | None = None

    async def create(self, spec: InstanceSpec) -> Observed:
        made = await super().create(spec)
        assert self.term is not None
        self.term.end("its lease ran out before a renewal got through")
        return made


async def test_an_instance_created_as_the_term_ends_is_deleted_again() -> None:
    rig = Rig()
    provisioner = LosingProvisioner(clock=rig.clock.now)
    provisioner.term = rig.term
    rig.reconciler._provisioner = provisioner
    rig.store.provisioning.work["w"] = RunnerWork(1, 0)
    with pytest.raises(Unavailable):
        await rig.reconciler.reconcile(rig.term)
    assert provisioner.created == ["w-0"] and provisioner.deleted == ["w-0"]
    assert provisioner.instances == {}


async def test_a_pass_within_the_term_counts_its_writes_against_it() -> None:
    rig = Rig()
    rig.work(queued=1)
    await rig.reconciler.reconcile(rig.term)
    # One fenced transaction per instance created, one for the pass's records.
    assert rig.store.fenced_writes == {rig.term.epoch: 2}


# --- the timekeeper writes only within its term, and a bad row never stops it ------------------


async def test_an_expiry_the_database_refuses_fails_its_attempt_alone() -> None:
    rig = ProtocolRig()
    rig.running("a-1")
    rig.running("a-2")
    rig.store.tasks.unstorable_retries = {"a-1"}
    rig.clock.advance(seconds=31)  # past both leases
    term = OneReplica().term(Duty.TIMEKEEPER)
    await rig.protocol.timekeeper._keep_time(term, rig.clock.now())
    nodes = rig.store.tasks.nodes
    assert nodes["a-2"].state is NodeState.RETRY_WAIT  # retried as ever
    assert nodes["a-1"].state is NodeState.FAILED  # failed alone, with the reason
    (failed,) = [
        w for st in rig.store.tasks.settlements for w in st.writes if w.node.attempt_id == "a-1"
    ]
    assert failed.error is not None
    assert "could not store this attempt's expiry" in failed.error.message


async def test_a_timekeeper_whose_term_ended_expires_nothing() -> None:
    rig = ProtocolRig()
    rig.running("a-1")
    rig.clock.advance(seconds=31)
    term = OneReplica().term(Duty.TIMEKEEPER)
    term.end("b took over (epoch 2)")
    with pytest.raises(NotLeader):
        await rig.protocol.timekeeper._keep_time(term, rig.clock.now())
    assert rig.store.tasks.nodes["a-1"].state is NodeState.RUNNING
    assert rig.store.fenced_writes == {}
