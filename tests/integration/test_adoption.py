"""A scheduler SIGKILLed under its local runner processes: the restarted one adopts them, counts
them against max_pods, and an orphan's death puts its task back at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from google.protobuf import json_format
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import registry_service_pb2_grpc as rpb_grpc
from heat.scheduler.v1 import session_pb2 as s
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc

from tests.support import Served, authorized_channel, eventually, free_port, open_tmp_dir, serve

WORKER = Path(__file__).parent.parent / "e2e" / "worker.py"
LEASE = 60.0  # an orphan's task must come back long before its lease would run out


def _serve(dsn: str, data_dir: Path, port: int) -> Served:
    return serve(
        "--database-url",
        dsn,
        "--data-dir",
        str(data_dir),
        "--provisioner",
        "local",
        "--local-runners",
        f"w={sys.executable} {WORKER}",
        "--lease-duration",
        str(LEASE),
        "--heartbeat-interval",
        "0.5",
        port=port,
    )


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:
    """Wait until the (remote) ``check()`` holds, asking a tenth of a second apart."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 (the state is the scheduler's, asked by RPC)
            await asyncio.sleep(0.1)


async def _count(nodes: Awaitable[list[s.Node]], n: int) -> bool:
    return len(await nodes) >= n


async def _equals(value: Awaitable[int], n: int) -> bool:
    return await value == n


def _instances(records: Path) -> dict[str, int]:
    """The live runner processes the records name: instance -> pid."""
    found = {}
    for path in records.glob("*.json"):
        pid = json.loads(path.read_text())["pid"]
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        found[path.stem] = pid
    return found


@pytest.mark.slow
async def test_a_restarted_scheduler_adopts_its_runner_processes(db_dsn: str) -> None:
    data_dir = open_tmp_dir()
    records = data_dir / "local-instances" / "heat-scheduler"
    port = free_port()
    first = _serve(db_dsn, data_dir, port)
    address = first.address
    second: Served | None = None
    try:
        async with authorized_channel(address) as channel:
            registry = rpb_grpc.RegistryServiceStub(channel)
            manifest = {
                "runners": [
                    {
                        "name": "w",
                        "containerImage": "busybox",
                        "cpuLimit": "1",
                        "memoryLimit": "64Mi",
                        "maxPods": 2,
                        "idlePeriod": "600s",
                    }
                ],
                "nodeTemplates": [{"name": "echo", "runner": "w"}],
            }
            await registry.ApplyManifest(
                json_format.ParseDict({"manifest": manifest}, rpb.ApplyManifestRequest())
            )
            nodes = [
                {"key": f"n{i}", "nodeTemplate": "echo", "config": {"sleep": 600}} for i in range(4)
            ]
            created = await spb_grpc.SessionServiceStub(channel).CreateSession(
                json_format.ParseDict({"dag": {"nodes": nodes}}, spb.CreateSessionRequest())
            )
            name = created.session.name

            async def running() -> list[s.Node]:
                got = await spb_grpc.SessionServiceStub(channel).GetSession(
                    spb.GetSessionRequest(name=name)
                )
                return [n for n in got.session.nodes if n.state == s.NODE_STATE_RUNNING]

            await eventually(lambda: len(_instances(records)) == 2, timeout=60)
            await until(lambda: _count(running(), 2))
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(30)
        orphans = _instances(records)
        assert len(orphans) == 2, "the runner processes outlive a SIGKILLed scheduler"

        second = _serve(db_dsn, data_dir, port)
        async with authorized_channel(address) as channel:
            registry = rpb_grpc.RegistryServiceStub(channel)

            async def observed() -> int:
                got = await registry.GetRunner(rpb.GetRunnerRequest(name="w"))
                return got.runner.status.observed_pods

            await until(lambda: _equals(observed(), 2))
            # Adopted and counted: max_pods holds, no third or fourth process was started.
            assert _instances(records) == orphans
            # An orphan dies: its attempt ends at once (not after its lease) and its task is
            # retried, while a new instance of the restarted scheduler takes its place.
            victim, pid = sorted(orphans.items())[0]
            os.kill(pid, signal.SIGKILL)
            sessions = spb_grpc.SessionServiceStub(channel)

            async def retried() -> bool:
                got = await sessions.GetSession(spb.GetSessionRequest(name=name))
                return any("lease expired" in n.error.message for n in got.session.nodes)

            await until(retried, timeout=LEASE / 2)
            await eventually(lambda: len(_instances(records)) == 2, timeout=60)
            assert victim not in _instances(records)
    finally:
        for served in (first, second):
            if served is not None and served.process.poll() is None:
                served.stop()
        for pid in _instances(records).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
