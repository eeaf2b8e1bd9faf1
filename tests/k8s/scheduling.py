"""The whole scheduler on a Kubernetes API, for the end-to-end tests: served in-process with the
Kubernetes provisioner, its runner pods run by :class:`tests.k8s.kubelet.ProcessKubelet` as
local processes of ``tests/e2e/worker.py`` (a runner built on heat_runtime)."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import runner_pb2
from kubernetes_asyncio.client import ApiClient, Configuration

from scheduler.provisioner.kubernetes import KubernetesProvisioner
from tests import support
from tests.k8s.kube import JsonObj, Kube
from tests.k8s.kubelet import ProcessKubelet
from tests.support import Scheduler

WORKER = Path(__file__).parent.parent / "e2e" / "worker.py"
SCHEDULER = "heat-test"
OURS = f"app.kubernetes.io/managed-by=heat-scheduler,heat.io/scheduler={SCHEDULER}"


def node_commands() -> dict[str, list[str]]:
    """What the test node runs for an image: ``busybox`` is the test worker, ``crash`` exits 1
    at once; any other image cannot be pulled."""
    return {
        "busybox": [sys.executable, str(WORKER)],
        "crash": [sys.executable, "-c", "raise SystemExit(1)"],
    }


@asynccontextmanager
async def node(kube: Kube, namespace: str, worker_log: Path) -> AsyncIterator[ProcessKubelet]:
    kubelet = ProcessKubelet(
        kube,
        namespace,
        node_commands(),
        {**os.environ, "HEAT_TEST_LOG": str(worker_log), "HEAT_DRAIN_TIMEOUT": "5"},
    )
    await kubelet.start()
    try:
        yield kubelet
    finally:
        await kubelet.close()


@asynccontextmanager
async def serving(
    dsn: str, config: Configuration, namespace: str, port: int, **overrides: Any
) -> AsyncIterator[Scheduler]:
    """A scheduler in-process whose provisioner makes pods through ``config`` (the API and the
    identity it acts as); it listens on (and advertises) ``port``, so a restart can take its
    runners back."""
    address = f"127.0.0.1:{port}"
    settings: dict[str, Any] = {
        "listen": address,
        "advertise_address": address,
        "provisioner": "kubernetes",
        "scheduler_name": SCHEDULER,
        "lease_duration": 2.0,
        "heartbeat_interval": 0.5,
        **overrides,
    }
    async with ApiClient(config) as client:
        provisioner = KubernetesProvisioner(
            client, namespace=namespace, scheduler_name=settings["scheduler_name"],
            request_timeout=1.0,
        )  # fmt: skip
        async with support.serving(dsn, backend=provisioner, **settings) as sc:
            yield sc


async def runner_status(sc: Scheduler) -> runner_pb2.RunnerStatus:
    got = await sc.registry.GetRunner(rpb.GetRunnerRequest(name="w"))
    status: runner_pb2.RunnerStatus = got.runner.status
    return status


async def status_until(
    sc: Scheduler, check: Callable[[runner_pb2.RunnerStatus], bool], timeout: float = 10
) -> runner_pb2.RunnerStatus:
    deadline = time.monotonic() + timeout
    while not check(status := await runner_status(sc)):
        assert time.monotonic() < deadline, f"runner status not reached in time: {status}"
        await asyncio.sleep(0.05)
    return status


def nodes_sleeping(count: int, seconds: float) -> list[dict[str, Any]]:
    return [
        {"key": f"n{i}", "nodeTemplate": "echo", "config": {"sleep": seconds}} for i in range(count)
    ]


def ran_on(log: Path) -> dict[str, str]:
    """Node key -> the instance (pod) whose process finished it."""
    lines = [line.split() for line in log.read_text().splitlines()]
    return {words[2]: words[5] for words in lines if words[0] == "done"}


def gaps_of(times: list[float]) -> list[float]:
    return [round(b - a, 2) for a, b in itertools.pairwise(times)]


def to_dt(timestamp: Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


def address_of(pod: JsonObj) -> str:
    """The scheduler address a pod gives its runner."""
    env = pod["spec"]["containers"][0]["env"]
    return str(next(v["value"] for v in env if v["name"] == "HEAT_SCHEDULER_ADDRESS"))


@dataclass(frozen=True)
class Request:
    """One request to the API server, from its audit log."""

    verb: str
    resource: str
    name: str
    code: int
    at: datetime


def requests(
    events: list[JsonObj], verb: str | None = None, resource: str = "pods"
) -> list[Request]:
    """The audited requests (completed ones) of one user, oldest first."""
    found = []
    for event in events:
        if event.get("stage") != "ResponseComplete":
            continue
        ref = event.get("objectRef") or {}
        kind = ref.get("resource", "") + (
            "/" + ref["subresource"] if ref.get("subresource") else ""
        )
        if (verb is None or event["verb"] == verb) and kind == resource:
            found.append(
                Request(
                    event["verb"],
                    kind,
                    str(ref.get("name") or ""),
                    int((event.get("responseStatus") or {}).get("code") or 0),
                    datetime.fromisoformat(event["requestReceivedTimestamp"]),
                )
            )
    return sorted(found, key=lambda r: r.at)


async def sample_while(seconds: float, sample: Callable[[], Any]) -> int:
    """The largest value ``await sample()`` takes over ``seconds`` (looked at every 20 ms)."""
    peak: int = await sample()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        peak = max(peak, await sample())
    return peak
