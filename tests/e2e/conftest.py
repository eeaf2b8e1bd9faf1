"""End-to-end: schedulers and runners as separate processes, killed and restarted for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import registry_service_pb2_grpc as rpb_grpc
from heat.scheduler.v1 import session_pb2
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc

from tests.support import Served, serve

WORKER = Path(__file__).with_name("worker.py")
FINAL = {
    session_pb2.SESSION_STATE_SUCCEEDED,
    session_pb2.SESSION_STATE_FAILED,
    session_pb2.SESSION_STATE_CANCELLED,
}
QUICK = (
    "--lease-duration", "2", "--heartbeat-interval", "0.5", "--shutdown-grace", "2",
    "--provisioner", "none",
)  # fmt: skip


def manifest(max_attempts: int = 3) -> dict[str, Any]:
    return {
        "runners": [
            {"name": "w", "containerImage": "busybox", "cpuLimit": "1", "memoryLimit": "64Mi"}
        ],
        "nodeTemplates": [
            {
                "name": name,
                "runner": "w",
                "multipleInputs": True,
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "0.2s",
                },
            }
            for name in ("echo", "sync-echo")
        ],
    }


@dataclass
class Cluster:
    """Schedulers (subprocesses on one database), runner processes, and a client."""

    dsn: str
    log: Path
    schedulers: list[Served] = field(default_factory=list)
    runners: list[subprocess.Popen[bytes]] = field(default_factory=list)
    secret: str = ""

    def start_scheduler(self) -> Served:
        served = serve("--database-url", self.dsn, *QUICK)
        self.schedulers.append(served)
        return served

    def channel(self, i: int = 0) -> grpc.Channel:
        return self.schedulers[i].channel()

    def setup(self, max_attempts: int = 3) -> None:
        with self.channel() as channel:
            registry = rpb_grpc.RegistryServiceStub(channel)
            registry.ApplyManifest(
                json_format.ParseDict(
                    {"manifest": manifest(max_attempts)}, rpb.ApplyManifestRequest()
                )
            )
            issued = registry.IssueRunnerCredential(rpb.IssueRunnerCredentialRequest(runner="w"))
            self.secret = issued.credential.secret

    def start_runner(
        self, name: str, *, scheduler: int = 0, capacity: int = 4
    ) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "HEAT_SCHEDULER_ADDRESS": self.schedulers[scheduler].address,
            "HEAT_RUNNER": "w",
            "HEAT_RUNNER_CREDENTIAL": self.secret,
            "HEAT_CAPACITY": str(capacity),
            "HEAT_INSTANCE_ID": name,
            "HEAT_TEST_LOG": str(self.log),
            "HEAT_DRAIN_TIMEOUT": "5",
        }
        process = subprocess.Popen([sys.executable, str(WORKER)], env=env)
        self.runners.append(process)
        return process

    def submit(self, nodes: list[dict[str, Any]], *, scheduler: int = 0) -> str:
        with self.channel(scheduler) as channel:
            created = spb_grpc.SessionServiceStub(channel).CreateSession(
                json_format.ParseDict({"dag": {"nodes": nodes}}, spb.CreateSessionRequest())
            )
            name: str = created.session.name
            return name

    def wait(self, name: str, timeout: float = 60, *, scheduler: int = 0) -> session_pb2.Session:
        """Watch the Session until it ends; then its final state with nodes."""
        deadline = time.monotonic() + timeout
        cursor = ""
        while time.monotonic() < deadline:
            try:
                with self.channel(scheduler) as channel:
                    stub = spb_grpc.SessionServiceStub(channel)
                    watch = stub.WatchSession(
                        spb.WatchSessionRequest(name=name, cursor=cursor),
                        timeout=deadline - time.monotonic(),
                    )
                    for item in watch:
                        cursor = item.cursor
                        if item.WhichOneof("event") == "snapshot" and item.snapshot.state in FINAL:
                            break
                        if (
                            item.WhichOneof("event") == "session_change"
                            and item.session_change.state in FINAL
                        ):
                            break
                    got = stub.GetSession(spb.GetSessionRequest(name=name))
                    return got.session
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    raise
                time.sleep(0.2)  # the scheduler is restarting: reconnect and resume the watch
        raise AssertionError(f"session {name} did not end within {timeout}s")

    def lines(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [line.split() for line in self.log.read_text().splitlines()]

    def stop(self) -> None:
        for process in self.runners:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.runners:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for served in self.schedulers:
            if served.process.poll() is None:
                served.process.kill()
                served.process.wait()


@pytest.fixture
def cluster(db_dsn: str, tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(db_dsn, tmp_path / "worker.log")
    made.start_scheduler()
    made.setup()
    yield made
    made.stop()
