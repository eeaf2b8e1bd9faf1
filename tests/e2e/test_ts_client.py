"""The TypeScript example client (examples/ts_client, built on the generated npm package) against
a real scheduler process: it creates a Session from a template, follows it with WatchSession,
survives the scheduler being killed and restarted by resuming from its cursor, and prints the
outputs."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import registry_service_pb2_grpc as rpb_grpc
from heat.scheduler.v1 import session_pb2 as s
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc

from tests.e2e.conftest import QUICK, Cluster
from tests.support import admin_token, authorized_sync_channel, serve

ROOT = Path(__file__).resolve().parents[2]
EVENT_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def ts_client() -> Path:
    """examples/ts_client compiled (type-checked against gen/ts's declarations) by tsc."""
    built = subprocess.run(
        ["npm", "run", "--silent", "build", "--workspace=examples/ts_client"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return ROOT / "examples" / "ts_client" / "dist" / "main.js"


class Client:
    """The client process; its JSON lines are read as they come."""

    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(json.loads(line))
        self._lines.put(None)

    def next_event(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Reads events until one is ``wanted``; fails if the client ends first."""
        while True:
            try:
                event = self._lines.get(timeout=EVENT_TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"no wanted event; so far: {self.events}") from None
            if event is None:
                raise AssertionError(f"client ended: {self.events} {self.stderr()}")
            self.events.append(event)
            if wanted(event):
                return event

    def finish(self) -> int:
        code = self.process.wait(EVENT_TIMEOUT)
        while (event := self._lines.get(timeout=EVENT_TIMEOUT)) is not None:
            self.events.append(event)
        return code

    def stderr(self) -> str:
        return self.process.stderr.read() if self.process.stderr else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def relay(cluster: Cluster) -> None:
    """Session Template ``relay``: a → b → c (echo nodes); b takes 2 s, time enough for the
    test to kill the scheduler while it runs."""
    nodes = [
        {"key": "a", "nodeTemplate": "echo", "config": {"v": 1}},
        {"key": "b", "nodeTemplate": "echo", "dependsOn": ["a"], "config": {"sleep": 2}},
        {"key": "c", "nodeTemplate": "echo", "dependsOn": ["b"]},
    ]
    request = {"manifest": {"sessionTemplates": [{"name": "relay", "nodes": nodes}]}}
    with cluster.channel() as channel:
        rpb_grpc.RegistryServiceStub(channel).ApplyManifest(
            json_format.ParseDict(request, rpb.ApplyManifestRequest())
        )


@pytest.fixture
def client_of(ts_client: Path) -> Iterator[Callable[..., Client]]:
    started: list[Client] = []

    def start(*args: str) -> Client:
        client = Client(["node", str(ts_client), "--json", "--token", admin_token(), *args])
        started.append(client)
        return client

    yield start
    for client in started:
        client.stop()


def watched_after(address: str, name: str, cursor: str) -> list[dict[str, Any]]:
    """What a fresh WatchSession from ``cursor`` sends, as the client prints it."""
    events: list[dict[str, Any]] = []
    with authorized_sync_channel(address) as channel:
        stream = spb_grpc.SessionServiceStub(channel).WatchSession(
            spb.WatchSessionRequest(name=name, cursor=cursor), timeout=EVENT_TIMEOUT
        )
        for item in stream:
            if item.WhichOneof("event") == "node_change":
                node = item.node_change.node
                state = s.NodeState.Name(node.state)
                event = {"event": "node", "cursor": item.cursor, "key": node.key}
            else:
                state = s.SessionState.Name(item.session_change.state)
                event = {"event": "session", "cursor": item.cursor}
            events.append({**event, "state": state.split("_STATE_", 1)[1]})
    return events


@pytest.mark.usefixtures("relay")
def test_ts_client_follows_a_session_through_a_scheduler_restart(
    cluster: Cluster, client_of: Callable[..., Client]
) -> None:
    cluster.start_runner("r1")
    first = cluster.schedulers[0]
    client = client_of("--address", first.address, "--template", "relay", "--param", "day=mon")
    name = client.next_event(lambda e: e["event"] == "created")["session"]
    snapshot = client.next_event(lambda e: e["event"] == "snapshot")
    # b runs for 2 s: seen in the snapshot already (a's result and b's claim can be one
    # transaction, done before the Watch starts), or as the change that follows it.
    running = snapshot
    if snapshot["nodes"].get("b") != "RUNNING":
        running = client.next_event(lambda e: e.get("key") == "b" and e["state"] == "RUNNING")

    first.process.send_signal(signal.SIGKILL)  # the connection drops mid-watch
    first.process.wait()
    lost = client.next_event(lambda e: e["event"] == "reconnecting")
    assert lost["cursor"] == running["cursor"]  # it resumes from the last change it saw
    port = int(first.address.rsplit(":", 1)[1])
    second = serve("--database-url", cluster.dsn, *QUICK, port=port)
    cluster.schedulers.append(second)

    assert client.finish() == 0, client.stderr()
    result = client.events[-1]
    assert result["event"] == "outputs" and result["state"] == "SUCCEEDED"
    a = {"node": "a", "inputs": {}, "config": {"v": 1}}
    b = {"node": "b", "inputs": {"a": a}, "config": {"sleep": 2}}
    c = {"node": "c", "inputs": {"b": b}, "config": {}}
    assert result["outputs"] == {"a": a, "b": b, "c": c}

    # Across the disconnect nothing was missed and nothing repeated: the client saw exactly
    # what one uninterrupted watch from its snapshot sees.
    changes = [e for e in client.events if e["event"] in ("node", "session")]
    assert changes == watched_after(second.address, name, snapshot["cursor"])
    with cluster.channel(1) as channel:
        got = spb_grpc.SessionServiceStub(channel).GetSession(spb.GetSessionRequest(name=name))
    assert json_format.MessageToDict(got.session.parameters) == {"day": "mon"}


def test_ts_client_reports_a_missing_template(
    cluster: Cluster, client_of: Callable[..., Client]
) -> None:
    client = client_of("--address", cluster.schedulers[0].address, "--template", "no-such")
    assert client.finish() == 3
    error = client.stderr()
    assert error.startswith("error: [")
    assert "no-such" in error
