"""Supervision against real faults: a background loop broken by the database, the embedded
PostgreSQL killed, the database out of reach for two seconds under running work."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from heat.scheduler.v1 import session_pb2 as s

from scheduler.domain.backoff import Backoff
from scheduler.service.supervisor import SupervisionSettings, condition
from tests.integration.test_provisioning import apply, finished, local, submit
from tests.support import TcpProxy, eventually, serving

QUICK = SupervisionSettings(
    backoff=Backoff(timedelta(seconds=0.05), timedelta(seconds=0.2)),
    failing_after=3,
    steady_after=timedelta(seconds=1),
)
# A leadership lease shorter than the outage below, so the outage costs the leadership too.
SHORT_LEASE: dict[str, Any] = {"leader_lease": 1.0, "leader_renew_interval": 0.25}
QUIET = ("Task was destroyed but it is pending", "Task exception was never retrieved")


async def test_a_loop_broken_by_the_database_is_restarted_and_health_follows_it(
    db_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Task leases of a second: the timekeeper looks at its deadlines at least every second.
    async with serving(
        db_dsn, supervision=QUICK, lease_duration=1.0, heartbeat_interval=0.25
    ) as sc:
        model = sc.running.model
        health = health_pb2_grpc.HealthStub(sc.channel)
        admin = await asyncpg.connect(db_dsn)
        try:
            # A real fault: the column the timekeeper's deadline query reads is gone.
            await admin.execute("ALTER TABLE nodes RENAME COLUMN not_before TO not_before_gone")
            await eventually(lambda: not model.serving(), timeout=30)
            call = health.Check(health_pb2.HealthCheckRequest())
            assert (await call).status == health_pb2.HealthCheckResponse.NOT_SERVING
            (problem,) = model.problems()
            assert problem.name == condition("timekeeper") and "UndefinedColumn" in problem.reason
            # The answer says why, and who leads, in its trailing metadata.
            trailers = list(await call.trailing_metadata() or ())
            said = dict(trailers)
            assert said["heat-replica"] == sc.running.leadership.holder
            assert "loop timekeeper (since " in said["heat-problem"]
            assert said["heat-leader-timekeeper"].startswith(sc.running.leadership.holder)
            await admin.execute("ALTER TABLE nodes RENAME COLUMN not_before_gone TO not_before")
            await eventually(model.serving, timeout=30)
        finally:
            await admin.close()
        answer = await health.Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert sc.running.supervisor.restarts("timekeeper") >= 3
    failures = [r for r in caplog.records if "background loop timekeeper failed" in r.getMessage()]
    assert failures and all(r.exc_info for r in failures)


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


async def test_the_embedded_postgresql_is_restarted_when_it_dies_and_sessions_go_on(
    open_tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HEAT_TEST_LOG", str(open_tmp_path / "worker.log"))
    data = open_tmp_path / "heat-data"
    settings: dict[str, Any] = {"data_dir": data, **local(open_tmp_path), **SHORT_LEASE}
    with caplog.at_level(logging.INFO):
        async with serving("", supervision=QUICK, **settings) as sc:
            model = sc.running.model
            seen: list[bool] = []
            model.subscribe(lambda: seen.append(model.serving()))
            await apply(sc, idlePeriod="60s", maxPods=2)
            nodes = [
                {"key": f"n{i}", "nodeTemplate": "echo", "config": {"sleep": 0.5}} for i in range(4)
            ]
            name = await submit(sc, nodes)
            await eventually(lambda: "started" in read(open_tmp_path / "worker.log"), timeout=30)
            before = postmaster_pid(data / "postgres")
            os.kill(before, signal.SIGKILL)  # while runners work and stream
            await eventually(lambda: False in seen, timeout=30)
            await eventually(lambda: seen[-1] is True and model.serving(), timeout=60)
            assert postmaster_pid(data / "postgres") != before
            assert (await finished(sc, name)).state == s.SESSION_STATE_SUCCEEDED
            name = await submit(sc, [{"key": "after", "nodeTemplate": "echo"}])
            assert (await finished(sc, name)).state == s.SESSION_STATE_SUCCEEDED
        gc.collect()
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if any(q in m for q in QUIET)]


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def test_a_database_outage_leaves_local_runners_alone_and_streams_end_quietly(
    db_dsn: str, open_tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setenv("HEAT_TEST_LOG", str(open_tmp_path / "worker.log"))
    proxy, through_proxy = TcpProxy.to_dsn(db_dsn)
    try:
        with caplog.at_level(logging.INFO):
            async with serving(through_proxy, **local(open_tmp_path), **SHORT_LEASE) as sc:
                reconciler = sc.running.reconciler
                assert reconciler is not None
                await apply(sc, idlePeriod="60s", maxPods=2)
                nodes = [
                    {"key": f"n{i}", "nodeTemplate": "echo", "config": {"sleep": 1.5}}
                    for i in range(4)
                ]
                name = await submit(sc, nodes)
                live = await eventually(
                    lambda: [o for o in reconciler._provisioner.observed() if o.live], timeout=30
                )
                await asyncio.sleep(0.5)  # the instances claim and work
                proxy.down()
                await asyncio.sleep(2)
                proxy.up()
                assert (await finished(sc, name)).state == s.SESSION_STATE_SUCCEEDED
                after = [o for o in reconciler._provisioner.observed() if o.live]
                assert {o.uid for o in live} <= {o.uid for o in after}, "runners were stopped"
                name = await submit(sc, [{"key": "after", "nodeTemplate": "echo"}])
                assert (await finished(sc, name)).state == s.SESSION_STATE_SUCCEEDED
            gc.collect()
    finally:
        proxy.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert any("stepped down" in m for m in messages), "the outage outlasted the lease"
    assert not [m for m in messages if any(q in m for q in QUIET)]
