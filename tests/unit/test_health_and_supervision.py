"""The health model (conditions -> statuses) and the supervisor of background loops, on a fake
clock and a real event loop; no database."""

from __future__ import annotations

import asyncio
import gc
import logging
from datetime import timedelta

import pytest

from scheduler.domain.backoff import Backoff
from scheduler.domain.health import Health
from scheduler.service.supervisor import SupervisionSettings, Supervisor, condition
from tests.support import eventually
from tests.unit.fakes import T0, FakeClock

SERVICES = ("a.Service", "b.Service")


def model() -> tuple[Health, FakeClock]:
    clock = FakeClock()
    return Health(SERVICES, clock), clock


def test_every_service_serves_while_no_condition_fails() -> None:
    health, _ = model()
    assert health.statuses() == {"a.Service": True, "b.Service": True, "": True}
    assert health.problems() == []


def test_a_condition_takes_down_the_services_it_names_and_the_overall_status() -> None:
    health, clock = model()
    health.set("cache", ok=False, reason="cold", services=["a.Service"])
    assert health.statuses() == {"a.Service": False, "b.Service": True, "": False}
    health.set("postgres", ok=False, reason="down")
    assert health.statuses() == {"a.Service": False, "b.Service": False, "": False}
    clock.advance(seconds=5)
    health.set("postgres", ok=False, reason="still down")
    (problem,) = [p for p in health.problems() if p.name == "postgres"]
    assert problem.since == T0 and problem.reason == "still down"  # since it first failed
    health.set("postgres", ok=True)
    health.set("cache", ok=True)
    assert all(health.statuses().values())


def test_subscribers_hear_changes_only() -> None:
    health, _ = model()
    heard: list[bool] = []
    unsubscribe = health.subscribe(lambda: heard.append(health.serving()))
    health.set("x", ok=True)  # was not failing: no change
    health.set("x", ok=False, reason="r")
    health.set("x", ok=False, reason="r")  # the same: no change
    health.note("leader timekeeper", "me")
    health.set("x", ok=True)
    unsubscribe()
    health.set("x", ok=False, reason="r")
    assert heard == [False, False, True]
    assert health.notes() == {"leader timekeeper": "me"}


# --- the supervisor ------------------------------------------------------------------------------

QUICK = SupervisionSettings(
    backoff=Backoff(timedelta(seconds=0.01), timedelta(seconds=0.02)),
    failing_after=3,
    steady_after=timedelta(seconds=0.2),
)


async def test_a_failing_loop_is_logged_restarted_and_marked_until_it_runs_steadily(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health, _ = model()
    supervisor = Supervisor(health, QUICK)
    runs = 0

    settings: dict[str, int] = {}

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 4:
            settings["missing"]  # a real fault: KeyError
        await asyncio.Event().wait()

    with caplog.at_level(logging.INFO, logger="scheduler.service.supervisor"):
        supervisor.start("flaky", flaky)
        await eventually(lambda: not health.serving(), timeout=5)
        (problem,) = health.problems()
        assert problem.name == condition("flaky") and "KeyError" in problem.reason
        await eventually(lambda: runs == 5, timeout=5)
        assert supervisor.restarts("flaky") == 4 and supervisor.running("flaky")
        await eventually(health.serving, timeout=5)  # a steady run clears it
        assert supervisor.failures("flaky") == 0
        await supervisor.stop_all()
    failed = [r for r in caplog.records if "background loop flaky failed" in r.getMessage()]
    assert len(failed) == 4 and all(r.exc_info for r in failed)
    assert "(3 in a row)" in failed[2].getMessage()
    assert any("recovered" in r.getMessage() for r in caplog.records)


async def test_a_loop_that_returns_has_finished() -> None:
    health, _ = model()
    supervisor = Supervisor(health, QUICK)
    runs: list[int] = []

    async def once() -> None:
        runs.append(1)

    supervisor.start("once", once)
    await eventually(lambda: not supervisor.running("once"), timeout=5)
    await asyncio.sleep(0.05)
    assert runs == [1] and health.serving()
    with pytest.raises(ValueError, match="already supervised"):
        supervisor.start("once", once)
    await supervisor.stop_all()


async def test_a_failed_one_off_is_logged_by_name_never_left_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health, _ = model()
    supervisor = Supervisor(health, QUICK)

    async def broken() -> None:
        raise OSError("connection refused")

    with caplog.at_level(logging.WARNING):
        supervisor.spawn("give back a-1", broken())
        await asyncio.sleep(0.05)
        gc.collect()
    messages = [r.getMessage() for r in caplog.records]
    assert "background task give back a-1 failed: connection refused" in messages
    assert not any("never retrieved" in m for m in messages)
    await supervisor.stop_all()
