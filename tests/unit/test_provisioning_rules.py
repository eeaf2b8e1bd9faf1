"""Provisioning without a cluster or a database: how many instances a Runner wants, what a
pass creates and removes, and how crashing instances back off, on a fake clock."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from scheduler.domain.backoff import Backoff
from scheduler.domain.leadership import Duty
from scheduler.domain.limits import Limits
from scheduler.domain.provisioning import (
    CrashBackoff,
    Observed,
    Phase,
    RunnerWork,
    desired_instances,
    plan,
)
from scheduler.domain.registry import Runner
from scheduler.service.provisioning import ProvisionSettings, Reconciler
from scheduler.service.registry import Registry
from scheduler.service.signals import Signals
from tests.unit.fakes import T0, FakeClock, FakeProvisioner, MemoryStore, OneReplica


def runner(**kw: object) -> Runner:
    values: dict[str, object] = {
        "name": "w",
        "container_image": "busybox",
        "cpu_limit": "1",
        "memory_limit": "64Mi",
        "tasks_per_pod": 2,
        "max_pods": 3,
    }
    values.update(kw)
    return Runner(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("queued", "running", "settings", "desired"),
    [
        (0, 0, {}, 0),
        (1, 0, {}, 1),
        (3, 2, {}, 3),  # five tasks, two a pod
        (40, 0, {}, 3),  # at most max_pods
        (0, 0, {"min_pods": 2}, 2),
        (5, 0, {"enabled": False}, 0),
    ],
)
def test_desired_instances_follow_the_work_within_min_and_max(
    queued: int, running: int, settings: dict[str, object], desired: int
) -> None:
    assert desired_instances(runner(**settings), queued, running) == desired


def observed(name: str, phase: Phase, **kw: object) -> Observed:
    return Observed(name, "w", f"uid-{name}", phase, **kw)  # type: ignore[arg-type]


def test_a_plan_creates_what_is_missing_and_removes_what_ended() -> None:
    instances = [
        observed("a", Phase.RUNNING, ready=True),
        observed("b", Phase.PENDING),
        observed("c", Phase.SUCCEEDED),
        observed("d", Phase.FAILED),
        observed("e", Phase.FAILED, deleting=True),
    ]
    steps = plan(runner(), 3, instances, now=T0, backoff=CrashBackoff())
    assert steps.create == 1
    assert [o.name for o in steps.delete] == ["c", "d"]


def test_crashes_back_off_exponentially_and_hold_creation_until_then() -> None:
    rule = Backoff(timedelta(seconds=1), timedelta(seconds=5), spread=0)
    draws = random.Random(1)  # noqa: S311 (spread=0 draws nothing; any generator will do)
    backoff = CrashBackoff()
    waits = []
    for _ in range(5):
        backoff = backoff.after_failure(T0, rule, draws)
        assert backoff.until is not None
        waits.append((backoff.until - T0).total_seconds())
    assert waits == [1, 2, 4, 5, 5]
    assert not backoff.allows(T0 + timedelta(seconds=4))
    assert backoff.allows(T0 + timedelta(seconds=5))
    assert plan(runner(), 2, [], now=T0, backoff=backoff).create == 0


class Rig:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.store = MemoryStore()
        self.store.registry.runners["w"] = runner()
        self.provisioner = FakeProvisioner(clock=self.clock.now)
        self.leadership = OneReplica()
        self.term = self.leadership.term(Duty.PROVISIONING)
        self.reconciler = Reconciler(
            self.store,  # type: ignore[arg-type]
            self.leadership,
            self.provisioner,
            Registry(self.store, Limits()),  # type: ignore[arg-type]
            Signals(),
            self.clock,
            ProvisionSettings("127.0.0.1:50051", "heat-test"),
        )

    def work(self, queued: int, running: int = 0) -> None:
        self.store.provisioning.work["w"] = RunnerWork(queued, running)


async def test_a_pass_creates_instances_with_a_credential_and_records_the_status() -> None:
    rig = Rig()
    rig.work(queued=3)
    assert await rig.reconciler.reconcile(rig.term) is None
    assert rig.provisioner.created == ["w-0", "w-1"]
    assert rig.provisioner.credentials["w"].startswith("heatrc_")
    assert set(rig.store.registry.credentials.values()) == {"w"}
    status = rig.store.provisioning.statuses["w"]
    assert (status.desired, status.observed, status.ready, status.last_error) == (2, 2, 0, "")
    assert await rig.reconciler.reconcile(rig.term) is None
    assert len(rig.provisioner.created) == 2  # nothing missing: nothing more


async def test_a_failed_instance_is_removed_reported_and_replaced_after_a_backoff() -> None:
    rig = Rig()
    rig.work(queued=1)
    await rig.reconciler.reconcile(rig.term)
    rig.provisioner.set_phase("w-0", Phase.FAILED, reason="exit code 7")
    next_pass = await rig.reconciler.reconcile(rig.term)
    assert rig.provisioner.deleted == ["w-0"]
    assert next_pass == T0 + timedelta(seconds=1)
    assert "exit code 7" in rig.store.provisioning.statuses["w"].last_error
    assert rig.provisioner.created == ["w-0"]  # not yet: backing off
    rig.clock.advance(seconds=1)
    await rig.reconciler.reconcile(rig.term)
    assert rig.provisioner.created == ["w-0", "w-1"]


async def test_a_backend_that_refuses_is_reported_and_asked_again_later() -> None:
    rig = Rig()
    rig.work(queued=1)
    rig.provisioner.fail_creates = True
    next_pass = await rig.reconciler.reconcile(rig.term)
    assert next_pass == T0 + timedelta(seconds=1)
    error = rig.store.provisioning.statuses["w"].last_error
    assert error == "cannot create an instance: the backend refused"
    rig.provisioner.fail_creates = False
    rig.clock.advance(seconds=1)
    await rig.reconciler.reconcile(rig.term)
    assert rig.provisioner.created == ["w-0"]


async def test_instances_of_deleted_runners_are_removed() -> None:
    rig = Rig()
    rig.provisioner.instances["gone-0"] = Observed("gone-0", "gone", "uid", Phase.RUNNING)
    await rig.reconciler.reconcile(rig.term)
    assert rig.provisioner.deleted == ["gone-0"]
