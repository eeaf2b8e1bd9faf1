"""The Go example runner (examples/go_runner, built on the generated Go stubs) and the Python
example runner (examples/csv_sum, built on heat_runtime) process one Session together, against
a real scheduler process; the Go runner drains on SIGTERM."""

from __future__ import annotations

import json
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
from heat.scheduler.v1 import session_pb2 as s
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc

from tests.e2e.conftest import QUICK
from tests.support import Served, serve

ROOT = Path(__file__).resolve().parents[2]
GO_RUNNER = ROOT / "examples" / "go_runner"
CSV_RUNNER = ROOT / "examples" / "csv_sum"


@pytest.fixture(scope="session")
def go_runner_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/go_runner, built once (vetted first) against gen/go of this checkout."""
    binary = tmp_path_factory.mktemp("go") / "go_runner"
    for command in (["go", "vet", "."], ["go", "build", "-buildvcs=false", "-o", str(binary), "."]):
        built = subprocess.run(
            command, cwd=GO_RUNNER, capture_output=True, text=True, timeout=600, check=False
        )
        assert built.returncode == 0, built.stdout + built.stderr
    return binary


def manifest() -> dict[str, Any]:
    """The Python example's manifest plus the Go example's (whose template mixes both)."""
    merged: dict[str, list[Any]] = {}
    for folder in (CSV_RUNNER, GO_RUNNER):
        for kind, items in json.loads((folder / "manifest.json").read_text()).items():
            merged.setdefault(kind, []).extend(items)
    return merged


@dataclass
class Mixed:
    """A scheduler, the two example Runners registered, and their runner processes."""

    served: Served
    dsn: str
    log_dir: Path
    secrets: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def channel(self) -> grpc.Channel:
        return self.served.channel()

    def register(self) -> None:
        with self.channel() as channel:
            registry = rpb_grpc.RegistryServiceStub(channel)
            registry.ApplyManifest(
                json_format.ParseDict({"manifest": manifest()}, rpb.ApplyManifestRequest())
            )
            for runner in ("csv-runner", "go-runner"):
                issued = registry.IssueRunnerCredential(
                    rpb.IssueRunnerCredentialRequest(runner=runner)
                )
                self.secrets[runner] = issued.credential.secret

    def start(
        self, command: list[str], runner: str, instance: str, **env: str
    ) -> subprocess.Popen[str]:
        log = (self.log_dir / f"{instance}.log").open("w")
        process = subprocess.Popen(
            command,
            env={
                **os.environ,
                "HEAT_SCHEDULER_ADDRESS": self.served.address,
                "HEAT_RUNNER": runner,
                "HEAT_RUNNER_CREDENTIAL": self.secrets[runner],
                "HEAT_INSTANCE_ID": instance,
                **env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        log.close()
        self.processes.append(process)
        return process

    def restart_scheduler(self) -> None:
        """Kills the scheduler (no goodbye to anyone) and starts another on the same port."""
        self.served.process.send_signal(signal.SIGKILL)
        self.served.process.wait()
        port = int(self.served.address.rsplit(":", 1)[1])
        self.served = serve("--database-url", self.dsn, *QUICK, port=port)

    def log(self, instance: str) -> str:
        return (self.log_dir / f"{instance}.log").read_text()

    def create(self, **request: Any) -> str:
        with self.channel() as channel:
            created = spb_grpc.SessionServiceStub(channel).CreateSession(
                json_format.ParseDict(request, spb.CreateSessionRequest())
            )
            name: str = created.session.name
            return name

    def get(self, name: str) -> s.Session:
        with self.channel() as channel:
            got = spb_grpc.SessionServiceStub(channel).GetSession(spb.GetSessionRequest(name=name))
            return got.session

    def wait_for(self, name: str, done: Any, timeout: float = 60) -> s.Session:
        """The Session once ``done(session)`` holds (polled; fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            session = self.get(name)
            if done(session):
                return session
            time.sleep(0.05)
        raise AssertionError(f"{name} never got there: {self.get(name)}")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.served.process.poll() is None:
            self.served.process.kill()
            self.served.process.wait()


@pytest.fixture
def mixed(db_dsn: str, tmp_path: Path) -> Iterator[Mixed]:
    made = Mixed(serve("--database-url", db_dsn, *QUICK), db_dsn, tmp_path)
    try:
        made.register()
        yield made
    finally:
        made.stop()


def nodes(session: s.Session) -> dict[str, s.Node]:
    return {node.key: node for node in session.nodes}


def outputs(session: s.Session) -> dict[str, Any]:
    return {key: json_format.MessageToDict(node.outputs) for key, node in nodes(session).items()}


def ended(session: s.Session) -> bool:
    return session.state in (
        s.SESSION_STATE_SUCCEEDED,
        s.SESSION_STATE_FAILED,
        s.SESSION_STATE_CANCELLED,
    )


def test_go_and_python_runners_process_one_session(mixed: Mixed, go_runner_binary: Path) -> None:
    go = mixed.start([str(go_runner_binary)], "go-runner", "go-1", HEAT_CAPACITY="2")
    python = mixed.start([sys.executable, str(CSV_RUNNER / "runner.py")], "csv-runner", "py-1")
    name = mixed.create(session_template="csv-scaled")

    done = mixed.wait_for(name, ended)

    assert done.state == s.SESSION_STATE_SUCCEEDED, done
    assert outputs(done) == {
        "q1": {"column": "amount", "sum": 200.5, "rows": 2},
        "q2": {"column": "amount", "sum": 250.75, "rows": 3},
        "doubled": {"sum": 401, "factor": 2, "from": "q1", "runtime": "go"},
        "total": {"total": 651.75, "parts": {"doubled": 401, "q2": 250.75}},
    }
    assert "task finished" in mixed.log("go-1") and "doubled" in mixed.log("go-1")
    for process in (go, python):
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def test_go_runner_drains_on_sigterm(mixed: Mixed, go_runner_binary: Path) -> None:
    """SIGTERM: no more claims; a task that ends within HEAT_DRAIN_TIMEOUT posts its result,
    one that does not is handed back (queued again, not failed); then exit 0."""
    mixed.start([sys.executable, str(CSV_RUNNER / "runner.py")], "csv-runner", "py-1")
    go = mixed.start(
        [str(go_runner_binary)], "go-runner", "go-1", HEAT_CAPACITY="2", HEAT_DRAIN_TIMEOUT="2.5"
    )
    csv = "region,amount\nnorth,10\n"
    name = mixed.create(
        dag={
            "nodes": [
                {"key": "src", "nodeTemplate": "csv-column-sum", "config": {"csv": csv}},
                {"key": "quick", "nodeTemplate": "scale-sum", "dependsOn": ["src"],
                 "config": {"factor": 3, "delay": 1}},
                {"key": "slow", "nodeTemplate": "scale-sum", "dependsOn": ["src"],
                 "config": {"delay": 600}},
            ]
        }
    )  # fmt: skip
    running = s.NODE_STATE_RUNNING
    mixed.wait_for(name, lambda got: {nodes(got)[k].state for k in ("quick", "slow")} == {running})

    go.send_signal(signal.SIGTERM)
    assert go.wait(30) == 0

    after = nodes(mixed.get(name))
    assert after["quick"].state == s.NODE_STATE_SUCCEEDED
    assert json_format.MessageToDict(after["quick"].outputs)["sum"] == 30
    assert after["slow"].state == s.NODE_STATE_QUEUED, after["slow"]
    assert not after["slow"].error.message
    log = mixed.log("go-1")
    assert log.index("draining") < log.index("node_key=quick outcome=success")
    assert "handing back task (drain deadline)" in log
    assert "drained; exiting" in log


def test_go_runner_with_a_wrong_credential_is_refused(mixed: Mixed, go_runner_binary: Path) -> None:
    mixed.secrets["go-runner"] = "heatrc_not-a-credential"
    go = mixed.start([str(go_runner_binary)], "go-runner", "go-1")
    assert go.wait(30) == 3
    assert "the scheduler refused this instance" in mixed.log("go-1")
    assert "Unauthenticated" in mixed.log("go-1")


def test_go_runner_reconnects_and_posts_after_a_scheduler_restart(
    mixed: Mixed, go_runner_binary: Path
) -> None:
    """The scheduler dies while the Go runner processes a task: the runner reconnects to the
    restarted scheduler and the Session ends with the right outputs."""
    mixed.start([sys.executable, str(CSV_RUNNER / "runner.py")], "csv-runner", "py-1")
    mixed.start([str(go_runner_binary)], "go-runner", "go-1")
    csv = "region,amount\nnorth,10\n"
    name = mixed.create(
        dag={
            "nodes": [
                {"key": "src", "nodeTemplate": "csv-column-sum", "config": {"csv": csv}},
                {"key": "x5", "nodeTemplate": "scale-sum", "dependsOn": ["src"],
                 "config": {"factor": 5, "delay": 1}},
            ]
        }
    )  # fmt: skip
    mixed.wait_for(name, lambda got: nodes(got)["x5"].state == s.NODE_STATE_RUNNING)

    mixed.restart_scheduler()

    done = mixed.wait_for(name, ended)
    assert done.state == s.SESSION_STATE_SUCCEEDED, done
    assert outputs(done)["x5"] == {"sum": 50, "factor": 5, "from": "src", "runtime": "go"}
    log = mixed.log("go-1")
    assert log.index("scheduler connection lost; reconnecting") < log.rindex("connected to the")
