"""Provisioning with the local backend: runner processes follow the work, then go away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import session_pb2 as s
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc

from scheduler.domain.provisioning import InstanceSpec, Phase
from scheduler.domain.registry import Runner
from scheduler.provisioner.errors import ProvisionerError
from scheduler.provisioner.local import LocalProvisioner
from tests.support import Scheduler, eventually, serving

WORKER = Path(__file__).parent.parent / "e2e" / "worker.py"
FINAL = {s.SESSION_STATE_SUCCEEDED, s.SESSION_STATE_FAILED, s.SESSION_STATE_CANCELLED}


async def apply(sc: Scheduler, **runner: Any) -> None:
    manifest = {
        "runners": [
            {
                "name": "w",
                "containerImage": "busybox",
                "cpuLimit": "1",
                "memoryLimit": "64Mi",
                "tasksPerPod": 2,
                "maxPods": 3,
                "idlePeriod": "1s",
                **runner,
            }
        ],
        "nodeTemplates": [{"name": "echo", "runner": "w", "multipleInputs": True}],
    }
    await sc.registry.ApplyManifest(
        json_format.ParseDict({"manifest": manifest}, rpb.ApplyManifestRequest())
    )


async def submit(sc: Scheduler, nodes: list[dict[str, Any]]) -> str:
    created = await spb_grpc.SessionServiceStub(sc.channel).CreateSession(
        json_format.ParseDict({"dag": {"nodes": nodes}}, spb.CreateSessionRequest())
    )
    name: str = created.session.name
    return name


async def finished(sc: Scheduler, name: str, timeout: float = 60) -> s.Session:
    stub = spb_grpc.SessionServiceStub(sc.channel)
    async with asyncio.timeout(timeout):
        async for item in stub.WatchSession(spb.WatchSessionRequest(name=name)):
            if item.WhichOneof("event") == "snapshot" and item.snapshot.state in FINAL:
                break
            if item.WhichOneof("event") == "session_change" and item.session_change.state in FINAL:
                break
    got = await stub.GetSession(spb.GetSessionRequest(name=name))
    return got.session


def local(log: Path, command: str | None = None) -> dict[str, Any]:
    command = command or f"{sys.executable} {WORKER}"
    return {
        "provisioner": "local",
        "local_runners": f"w={command}",
        "local_runner_env": "HEAT_TEST_LOG",  # where the worker logs (tests only)
        "lease_duration": 2.0,
        "heartbeat_interval": 0.5,
    }


async def test_instances_follow_the_work_and_go_away_when_idle(
    db_dsn: str, tmp_path: Path, monkeypatch: Any
) -> None:
    log = tmp_path / "worker.log"
    monkeypatch.setenv("HEAT_TEST_LOG", str(log))
    async with serving(db_dsn, **local(log)) as sc:
        await apply(sc)
        reconciler = sc.running.reconciler
        assert reconciler is not None
        provisioner = reconciler._provisioner
        started = time.monotonic()
        name = await submit(
            sc,
            [{"key": f"n{i}", "nodeTemplate": "echo", "config": {"sleep": 0.5}} for i in range(8)],
        )
        # Eight tasks, two per instance, at most three instances.
        await eventually(lambda: sum(o.live for o in provisioner.observed()) == 3, timeout=30)
        created = min(o.created for o in provisioner.observed() if o.created is not None)
        session = await spb_grpc.SessionServiceStub(sc.channel).GetSession(
            spb.GetSessionRequest(name=name)
        )
        ready_at = session.session.create_time.ToDatetime(tzinfo=created.tzinfo)
        done = await finished(sc, name)
        assert done.state == s.SESSION_STATE_SUCCEEDED
        ran_on = {
            line.split()[5] for line in log.read_text().splitlines() if line.startswith("done")
        }
        assert len(ran_on) == 3
        runner = (await sc.registry.GetRunner(rpb.GetRunnerRequest(name="w"))).runner
        assert runner.status.queued_tasks == 0 and runner.status.running_tasks == 0
        # Idle for a second, each instance drains, exits 0 and is removed: no leftovers.
        last_result = max(n.end_time.ToDatetime(tzinfo=created.tzinfo) for n in done.nodes)
        await eventually(lambda: not provisioner.observed(), timeout=30)
        gone_at = datetime.now(UTC)
        elapsed = time.monotonic() - started
        # The pass that removed the last instance records the status as it ends.
        for _ in range(200):
            runner = (await sc.registry.GetRunner(rpb.GetRunnerRequest(name="w"))).runner
            if not runner.status.observed_pods:
                break
            await asyncio.sleep(0.05)
        assert runner.status.observed_pods == 0 and runner.status.desired_pods == 0
        assert not runner.status.last_provisioning_error
        print(
            f"\nscale 0 -> 3 -> 0 for 8 tasks in {elapsed:.2f}s; first ready task -> instance "
            f"created {(created - ready_at).total_seconds() * 1000:.1f} ms; last result -> "
            f"last instance gone {(gone_at - last_result).total_seconds():.2f} s (idle period 1 s)"
        )


async def test_a_busy_instance_is_never_drained(
    db_dsn: str, tmp_path: Path, monkeypatch: Any
) -> None:
    log = tmp_path / "worker.log"
    monkeypatch.setenv("HEAT_TEST_LOG", str(log))
    async with serving(db_dsn, **local(log)) as sc:
        await apply(sc, idlePeriod="0.3s", tasksPerPod=1)
        name = await submit(sc, [{"key": "long", "nodeTemplate": "echo", "config": {"sleep": 3}}])
        done = await finished(sc, name)
        assert done.state == s.SESSION_STATE_SUCCEEDED
        assert done.nodes[0].attempt == 1, "the instance holding the task was never drained"


async def test_a_crashing_runner_backs_off_and_is_reported(db_dsn: str, tmp_path: Path) -> None:
    crash = f"{sys.executable} -c 'raise SystemExit(7)'"
    async with serving(db_dsn, **local(tmp_path / "log", crash)) as sc:
        await apply(sc, tasksPerPod=1, maxPods=1)
        await submit(sc, [{"key": "a", "nodeTemplate": "echo"}])
        reconciler = sc.running.reconciler
        assert reconciler is not None

        async def status() -> Any:
            return (await sc.registry.GetRunner(rpb.GetRunnerRequest(name="w"))).runner.status

        deadline = time.monotonic() + 20
        while "exit code 7" not in (await status()).last_provisioning_error:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        failures_at = reconciler._backoff["w"].failures
        await asyncio.sleep(3)
        # Backing off 1s, 2s, 4s…: a handful of restarts in three seconds, not hundreds.
        assert 1 <= reconciler._backoff["w"].failures - failures_at <= 3
        ended = [o for o in reconciler._provisioner.observed() if o.phase is Phase.FAILED]
        assert len(ended) <= 1, "failed instances are removed, not piled up"


async def test_one_replica_provisions_and_another_takes_over(
    db_dsn: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("HEAT_TEST_LOG", str(tmp_path / "worker.log"))
    stacks = [contextlib.AsyncExitStack() for _ in range(2)]
    replicas = [await st.enter_async_context(serving(db_dsn, **local(tmp_path))) for st in stacks]
    try:
        await apply(replicas[0], idlePeriod="60s")
        reconcilers = [r.running.reconciler for r in replicas if r.running.reconciler is not None]
        assert len(reconcilers) == 2
        await eventually(lambda: sum(r.passes > 0 for r in reconcilers) == 1, timeout=30)
        leader = next(i for i, r in enumerate(reconcilers) if r.passes > 0)
        follower = 1 - leader
        name = await submit(replicas[follower], [{"key": "a", "nodeTemplate": "echo"}])
        assert (await finished(replicas[follower], name)).state == s.SESSION_STATE_SUCCEEDED
        assert reconcilers[follower].passes == 0
        # The leader goes away (its runner processes with it); the other replica takes over.
        taken_over = time.monotonic()
        await stacks[leader].aclose()
        await eventually(lambda: reconcilers[follower].passes > 0, timeout=30)
        print(f"\nleader failover in {time.monotonic() - taken_over:.2f}s")
        name = await submit(replicas[follower], [{"key": "b", "nodeTemplate": "echo"}])
        assert (await finished(replicas[follower], name)).state == s.SESSION_STATE_SUCCEEDED
    finally:
        for stack in stacks:
            await stack.aclose()


async def test_a_local_runner_gets_an_allow_listed_environment(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """No database URL, token or collector credential reaches a runner process; what it needs
    does (its credential, the scheduler's address, TLS files, PATH, locale, telemetry)."""
    seen = tmp_path / "env.json"
    for name, value in {
        "HEAT_DATABASE_URL": "postgresql://heat:secret@db/heat",
        "HEAT_TOKEN": "heatat_secret",
        "HEAT_ADMIN_TOKEN_FILE": "/run/secrets/admin-token",
        "PGPASSWORD": "secret",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=secret",
        "OTEL_SERVICE_NAME": "heat",
        "LANG": "C.UTF-8",
        "EXTRA_ALLOWED": "yes",
    }.items():
        monkeypatch.setenv(name, value)
    dump = f"import json, os; json.dump(dict(os.environ), open({str(seen)!r}, 'w'))"
    provisioner = LocalProvisioner(
        {"w": [sys.executable, "-c", dump]}, inherit=["EXTRA_ALLOWED"], max_processes=1
    )
    changed = asyncio.Event()
    await provisioner.start(changed.set)
    await provisioner.store_credential("w", "heatrc_its_own")
    runner = Runner(name="w", container_image="busybox", cpu_limit="1", memory_limit="64Mi")
    spec = InstanceSpec(runner, "127.0.0.1:1", "heat", (("HEAT_TLS_CA", "/etc/heat/ca.pem"),))
    await provisioner.create(spec)
    with pytest.raises(ProvisionerError, match="at most 1 processes"):
        await provisioner.create(spec)  # the global ceiling
    await asyncio.wait_for(changed.wait(), 30)
    env = json.loads(seen.read_text())
    assert not {"HEAT_DATABASE_URL", "HEAT_TOKEN", "HEAT_ADMIN_TOKEN_FILE"} & env.keys()
    assert not {"PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "OTEL_EXPORTER_OTLP_HEADERS"} & env.keys()
    assert not any("secret" in value for value in env.values())
    assert env["HEAT_RUNNER_CREDENTIAL"] == "heatrc_its_own" and env["HEAT_RUNNER"] == "w"
    assert env["HEAT_SCHEDULER_ADDRESS"] == "127.0.0.1:1"
    assert env["HEAT_TLS_CA"] == "/etc/heat/ca.pem"
    assert env["PATH"] == os.environ["PATH"] and env["LANG"] == "C.UTF-8"
    assert env["OTEL_SERVICE_NAME"] == "heat" and env["EXTRA_ALLOWED"] == "yes"
    await provisioner.stop()
