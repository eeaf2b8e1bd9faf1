"""The whole scheduler with the Kubernetes provisioner, end to end, pods run as processes.

The emulated API server keeps the pods; :class:`ProcessKubelet` plays the node and runs each
pod as a local process of ``tests/e2e/worker.py`` (a runner built on heat_runtime), with the
environment Kubernetes would give its container. So every step is the real one: the
reconciler creates pods over HTTP, the runners dial the scheduler with the credential from
the Runner's Secret, idle runners drain and exit 0, and the pods that ended are deleted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import runner_pb2
from heat.scheduler.v1 import session_pb2 as s
from kubernetes_asyncio.client import ApiClient, Configuration

from scheduler.provisioner.kubernetes import KubernetesProvisioner
from tests import support
from tests.integration.test_provisioning import apply, finished, submit
from tests.k8s.emulator import ApiServer, ApiStatus, Call, JsonObj
from tests.k8s.helpers import NAMESPACE, Served, eventually
from tests.k8s.kubelet import Kubelet
from tests.support import Scheduler, free_port

WORKER = Path(__file__).parent.parent / "e2e" / "worker.py"
SCHEDULER = "heat-test"
OURS = f"app.kubernetes.io/managed-by=heat-scheduler,heat.io/scheduler={SCHEDULER}"


# --- the kubelet that runs pods ------------------------------------------------------------


@dataclass(eq=False)
class Container:
    """A pod's (only) container: a local process, once it could start."""

    pod: str
    process: asyncio.subprocess.Process | None = None
    terminating: bool = False  # the pod is being deleted: SIGTERM sent
    exit_code: int | None = None


def container_env(api: ApiServer, pod: JsonObj) -> dict[str, str]:
    """The env of the pod's container, resolved as the kubelet does: plain values, Secret keys
    (LookupError or ApiStatus 404 when missing) and fields of the pod."""
    env: dict[str, str] = {}
    for var in pod["spec"]["containers"][0].get("env") or []:
        source = var.get("valueFrom") or {}
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = api.read("secrets", pod["metadata"]["namespace"], ref["name"])
            env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"].split(".")
            env[var["name"]] = str(functools.reduce(lambda obj, key: obj[key], path, pod))
        else:
            env[var["name"]] = var.get("value", "")
    return env


class ProcessKubelet:
    """Watches the emulator's pods and runs each new one as a process.

    The image names the command (``commands``); an image it does not know cannot be pulled
    (ImagePullBackOff). A started process makes the pod Running and Ready; its exit makes it
    Succeeded (0) or Failed (reason Error, with the exit code). A graceful deletion SIGTERMs
    the process, and its exit completes the deletion; a pod removed outright is killed.
    """

    def __init__(
        self, served: Served, commands: Mapping[str, Sequence[str]], env: Mapping[str, str]
    ) -> None:
        self.api = served.api
        self.url = served.url
        self.kubelet = Kubelet(served.api, NAMESPACE)  # writes the pods' status
        self.commands = commands
        self.env = dict(env)
        self.containers: dict[str, Container] = {}
        self._waiters: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._watch = asyncio.create_task(self._run(), name="process-kubelet")

    def running(self) -> list[str]:
        return [
            c.pod
            for c in self.containers.values()
            if c.process is not None and c.process.returncode is None
        ]

    async def _run(self) -> None:
        url = f"{self.url}/api/v1/namespaces/{NAMESPACE}/pods"
        forever = aiohttp.ClientTimeout(total=None)
        async with (
            aiohttp.ClientSession(timeout=forever) as http,
            http.get(url, params={"watch": "true"}) as response,
        ):
            response.raise_for_status()
            async for line in response.content:
                event = json.loads(line)
                await self._on(event["type"], event["object"])

    async def _on(self, kind: str, pod: JsonObj) -> None:
        name = pod["metadata"]["name"]
        container = self.containers.get(name)
        if container is None:
            if kind == "ADDED":
                await self._start(pod)
        elif kind == "DELETED":  # removed outright (grace 0): nothing waits for the process
            if container.process is not None and container.process.returncode is None:
                container.process.kill()
        elif pod["metadata"].get("deletionTimestamp") and not container.terminating:
            container.terminating = True
            if container.process is None or container.process.returncode is not None:
                self._write(self.api.remove, "pods", NAMESPACE, name)
            else:
                container.process.send_signal(signal.SIGTERM)

    async def _start(self, pod: JsonObj) -> None:
        name = pod["metadata"]["name"]
        container = self.containers[name] = Container(name)
        if not self._write(self.kubelet.schedule, name):
            return
        image = pod["spec"]["containers"][0]["image"]
        command = self.commands.get(image)
        if command is None:
            self._write(self.kubelet.wait, name, "ImagePullBackOff", f'pulling "{image}" failed')
            return
        try:
            env = container_env(self.api, pod)
        except (ApiStatus, LookupError) as exc:
            self._write(self.kubelet.wait, name, "CreateContainerConfigError", str(exc))
            return
        container.process = await asyncio.create_subprocess_exec(
            *command, env={**self.env, **env}, stdin=asyncio.subprocess.DEVNULL
        )
        self._write(self.kubelet.run, name)
        waiter = asyncio.create_task(self._wait(container))
        self._waiters.add(waiter)
        waiter.add_done_callback(self._waiters.discard)

    async def _wait(self, container: Container) -> None:
        assert container.process is not None
        code = await container.process.wait()
        container.exit_code = code if code >= 0 else 128 - code  # killed by a signal
        if container.terminating:
            self._write(self.api.remove, "pods", NAMESPACE, container.pod)
        elif code == 0:
            self._write(self.kubelet.succeed, container.pod)
        else:
            self._write(self.kubelet.fail, container.pod, exit_code=container.exit_code)

    @staticmethod
    def _write(change: Callable[..., object], *args: Any, **kwargs: Any) -> bool:
        """Apply a change to the API; False when the pod is gone already."""
        try:
            change(*args, **kwargs)
        except ApiStatus as exc:
            if exc.code != 404:
                raise
            return False
        return True

    async def close(self) -> None:
        """Stop watching; SIGTERM every process still running, and kill what lingers. A watch
        that broke is raised then (it fails the test)."""
        broken = None
        if self._watch is not None:
            if self._watch.done():
                broken = self._watch.exception()
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        processes = [c.process for c in self.containers.values() if c.process is not None]
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        if self._waiters:
            await asyncio.wait(self._waiters, timeout=5)
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        if broken is not None:
            raise broken


@pytest.fixture
def worker_log(tmp_path: Path) -> Path:
    return tmp_path / "worker.log"


@pytest_asyncio.fixture
async def process_kubelet(served: Served, worker_log: Path) -> AsyncIterator[ProcessKubelet]:
    """A node of the emulated cluster: image ``busybox`` runs the test worker, ``crash``
    exits 1 at once, any other image cannot be pulled."""
    kubelet = ProcessKubelet(
        served,
        {
            "busybox": [sys.executable, str(WORKER)],
            "crash": [sys.executable, "-c", "raise SystemExit(1)"],
        },
        {**os.environ, "HEAT_TEST_LOG": str(worker_log), "HEAT_DRAIN_TIMEOUT": "5"},
    )
    kubelet.start()
    try:
        yield kubelet
    finally:
        await kubelet.close()


# --- schedulers on the emulator -------------------------------------------------------------


@asynccontextmanager
async def serving(
    dsn: str, served: Served, port: int, **overrides: Any
) -> AsyncIterator[Scheduler]:
    """A scheduler in-process whose provisioner makes pods on the emulator, as its own client;
    it listens on (and advertises) ``port``, so a restart can take its runners back."""
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
    async with ApiClient(Configuration(host=served.url)) as client:
        provisioner = KubernetesProvisioner(
            client, namespace=NAMESPACE, scheduler_name=settings["scheduler_name"],
            request_timeout=1.0,
        )  # fmt: skip
        async with support.serving(dsn, backend=provisioner, **settings) as sc:
            yield sc


async def runner_status(sc: Scheduler) -> runner_pb2.RunnerStatus:
    return (await sc.registry.GetRunner(rpb.GetRunnerRequest(name="w"))).runner.status


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


def creates(api: ApiServer) -> list[Call]:
    return api.called("create", "pods")


def address_of(call: Call) -> str:
    """The scheduler address a pod CREATE request gives its runner."""
    env = call.body["spec"]["containers"][0]["env"]
    return str(next(v["value"] for v in env if v["name"] == "HEAT_SCHEDULER_ADDRESS"))


def wall(monotonic: float) -> datetime:
    """The wall-clock time of a ``time.monotonic()`` reading (when a request arrived)."""
    return datetime.now(UTC) - timedelta(seconds=time.monotonic() - monotonic)


def ran_on(log: Path) -> dict[str, str]:
    """Node key -> the instance (pod) whose process finished it."""
    lines = [line.split() for line in log.read_text().splitlines()]
    return {words[2]: words[5] for words in lines if words[0] == "done"}


def gaps_of(times: list[float]) -> list[float]:
    return [round(b - a, 2) for a, b in itertools.pairwise(times)]


def to_dt(timestamp: Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


async def sample_while(seconds: float, sample: Callable[[], int]) -> int:
    """The largest value ``sample()`` takes over ``seconds`` (looked at every 20 ms)."""
    peak = sample()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        peak = max(peak, sample())
    return peak


# --- the tests ------------------------------------------------------------------------------


async def test_pods_follow_the_work_from_zero_to_three_and_back_to_zero(
    db_dsn: str, served: Served, process_kubelet: ProcessKubelet, worker_log: Path
) -> None:
    api = served.api
    async with serving(db_dsn, served, free_port()) as sc:
        await apply(sc)  # two tasks per pod, at most three pods, idle for a second
        name = await submit(sc, nodes_sleeping(8, 0.5))
        await eventually(lambda: len(process_kubelet.running()) == 3, timeout=15)
        pods = api.select("pods", NAMESPACE, f"{OURS},heat.io/runner=w")
        assert len(pods) == 3
        for pod in pods:
            assert pod["metadata"]["labels"] == {
                "app.kubernetes.io/name": "heat-runner",
                "app.kubernetes.io/instance": "w",
                "app.kubernetes.io/managed-by": "heat-scheduler",
                "app.kubernetes.io/component": "runner",
                "heat.io/runner": "w",
                "heat.io/scheduler": SCHEDULER,
            }
        done = await finished(sc, name)
        assert done.state == s.SESSION_STATE_SUCCEEDED
        outputs = {n.key: json_format.MessageToDict(n.outputs) for n in done.nodes}
        assert all(out["node"] == key for key, out in outputs.items()) and len(outputs) == 8
        assert set(ran_on(worker_log).values()) == {p["metadata"]["name"] for p in pods}

        # Idle for a second, each runner drains, exits 0, and its pod is deleted.
        await eventually(lambda: not api.select("pods", NAMESPACE), timeout=15)
        status = await status_until(sc, lambda st: st.observed_pods == 0)
        assert (status.desired_pods, status.observed_pods, status.ready_pods) == (0, 0, 0)
        assert not status.last_provisioning_error
        containers = process_kubelet.containers.values()
        assert {c.pod: c.exit_code for c in containers} == {p["metadata"]["name"]: 0 for p in pods}
        assert not any(c.terminating for c in containers), "none was stopped by a deletion"
        assert len(creates(api)) == 3
        deleted = [str(c.name) for c in api.called("delete", "pods")]
        assert sorted(deleted) == sorted(p["metadata"]["name"] for p in pods)

        created_after = wall(creates(api)[0].at) - to_dt(done.create_time)
        last_result = max(to_dt(n.end_time) for n in done.nodes)
        deleted_after = wall(api.called("delete", "pods")[-1].at) - last_result
        print(
            f"\nk8s scale 0 -> 3 -> 0: Session created -> first pod CREATE "
            f"{created_after.total_seconds() * 1000:.1f} ms; last result -> last pod DELETE "
            f"{deleted_after.total_seconds():.2f} s (idle period 1 s)"
        )


async def test_a_busy_pod_is_never_deleted(
    db_dsn: str, served: Served, process_kubelet: ProcessKubelet, worker_log: Path
) -> None:
    api = served.api
    async with serving(db_dsn, served, free_port()) as sc:
        await apply(sc, idlePeriod="0.3s", tasksPerPod=1)
        name = await submit(sc, nodes_sleeping(1, 3))
        done = await finished(sc, name)
        assert done.state == s.SESSION_STATE_SUCCEEDED
        assert done.nodes[0].attempt == 1, "the pod holding the task was never drained"
        pod = ran_on(worker_log)["n0"]
        succeeded = to_dt(done.nodes[0].end_time)
        early = [c for c in api.called("delete", "pods") if wall(c.at) < succeeded]
        assert not early, f"a pod was deleted while its task ran: {early}"
        # Afterwards it drains like any idle runner: it exits 0 and is deleted then.
        await eventually(lambda: not api.select("pods", NAMESPACE), timeout=10)
        container = process_kubelet.containers[pod]
        assert container.exit_code == 0 and not container.terminating
        assert [c.name for c in api.called("delete", "pods")] == [pod]


@pytest.mark.parametrize(
    ("image", "reason"),
    [("registry.example/heat/missing:1", "ImagePullBackOff"), ("crash", "exit code 1")],
    ids=["image-pull-backoff", "exits-1-at-once"],
)
async def test_a_crash_looping_image_backs_off_and_is_reported(
    db_dsn: str, served: Served, process_kubelet: ProcessKubelet, image: str, reason: str
) -> None:
    api = served.api
    async with serving(db_dsn, served, free_port()) as sc:
        await apply(sc, containerImage=image, tasksPerPod=1, maxPods=1)
        await submit(sc, [{"key": "a", "nodeTemplate": "echo"}])
        status = await status_until(sc, lambda st: reason in st.last_provisioning_error)
        assert "failed" in status.last_provisioning_error
        # Replacements come after 1 s, 2 s, 4 s…: a handful in five seconds, not a flood;
        # failed pods are deleted, not piled up.
        first = creates(api)[0].at
        window = 5.0 - (time.monotonic() - first)
        piled = await sample_while(window, lambda: len(api.select("pods", NAMESPACE)))
        made = [c.at - first for c in creates(api) if c.at - first < 5.0]
        gaps = gaps_of(made)
        print(f"\n{image}: {len(made)} pod CREATEs in 5 s, {gaps} s apart")
        assert piled <= 1, "failed pods are removed, not piled up"
        assert 2 <= len(made) <= 4, f"pods created at {made}"
        assert gaps == sorted(gaps) and gaps[-1] > 1.5 * gaps[0], f"delays do not grow: {gaps}"


async def test_a_restarted_scheduler_adopts_the_pods_it_finds(
    db_dsn: str, served: Served, process_kubelet: ProcessKubelet, worker_log: Path
) -> None:
    api, port = served.api, free_port()
    async with serving(db_dsn, served, port) as a:
        await apply(a, idlePeriod="2s")
        name = await submit(a, nodes_sleeping(6, 1.5))
        await eventually(lambda: len(process_kubelet.running()) == 3, timeout=15)
    # A stopped: its watch ended (the kubelet's is the only one left), its pods did not.
    assert api.watch_count == 1
    pods = sorted(process_kubelet.running())
    assert len(pods) == 3 and not api.called("delete", "pods")
    assert sorted(p["metadata"]["name"] for p in api.select("pods", NAMESPACE)) == pods
    before = len(creates(api))
    assert before == 3

    async with serving(db_dsn, served, port) as b:  # same name, database, port and cluster
        done = await finished(b, name)
        assert done.state == s.SESSION_STATE_SUCCEEDED
        assert len(creates(api)) == before, "the restarted scheduler made pods it had"
        assert set(ran_on(worker_log).values()) <= set(pods)


async def test_one_replica_provisions_and_another_takes_over(
    db_dsn: str, served: Served, process_kubelet: ProcessKubelet
) -> None:
    api = served.api
    async with AsyncExitStack() as outer:
        stacks = [await outer.enter_async_context(AsyncExitStack()) for _ in range(2)]
        replicas = [
            await stack.enter_async_context(serving(db_dsn, served, free_port()))
            for stack in stacks
        ]
        await apply(replicas[0], idlePeriod="0.5s")
        reconcilers = [r.running.reconciler for r in replicas if r.running.reconciler]
        assert len(reconcilers) == 2
        await eventually(lambda: sum(r.passes > 0 for r in reconcilers) == 1)
        leader = next(i for i, r in enumerate(reconcilers) if r.passes > 0)
        follower = replicas[1 - leader]
        name = await submit(follower, nodes_sleeping(2, 0.2))
        assert (await finished(follower, name)).state == s.SESSION_STATE_SUCCEEDED
        assert reconcilers[1 - leader].passes == 0
        assert creates(api) and {address_of(c) for c in creates(api)} == {replicas[leader].address}
        # The leader's runners idle out before it goes, or they would dial a dead address.
        await eventually(lambda: not api.select("pods", NAMESPACE), timeout=10)

        stopping = time.monotonic()
        await stacks[leader].aclose()
        stopped = time.monotonic()
        await eventually(lambda: reconcilers[1 - leader].passes > 0, timeout=10)
        took_over = time.monotonic()
        made = len(creates(api))
        name = await submit(follower, nodes_sleeping(1, 0.2))
        assert (await finished(follower, name)).state == s.SESSION_STATE_SUCCEEDED
        new = creates(api)[made:]
        assert new and {address_of(c) for c in new} == {follower.address}
        print(
            f"\nk8s leader failover: {took_over - stopping:.2f} s from stopping the leader to "
            f"the other replica's first pass ({took_over - stopped:.2f} s after it stopped); "
            f"first pod CREATE {new[0].at - took_over:.2f} s after the new work's submit "
            "(includes the submit)"
        )


async def test_api_errors_back_off_and_leak_nothing(
    db_dsn: str, served: Served, process_kubelet: ProcessKubelet, caplog: pytest.LogCaptureFixture
) -> None:
    api = served.api
    api.fail("create", "pods", times=2)
    hang = api.hang("create", "pods", seconds=3)
    async with serving(db_dsn, served, free_port()) as sc:
        await apply(sc, tasksPerPod=1, maxPods=2, idlePeriod="0.5s")
        # Enough work that two pods are still wanted when the API answers again.
        name = await submit(sc, nodes_sleeping(4, 2))
        await status_until(sc, lambda st: "injected failure" in st.last_provisioning_error)
        await eventually(lambda: hang.hits == 1, timeout=10)
        # The API server made that pod, but its answer never arrives (the client times out).
        lost = api.add("pods", NAMESPACE, creates(api)[-1].body)["metadata"]["name"]
        await eventually(lambda: len(creates(api)) == 4, timeout=10)  # the API answers
        await eventually(lambda: len(process_kubelet.running()) == 2)
        assert lost in process_kubelet.running() and len(api.select("pods", NAMESPACE)) == 2
        assert (await runner_status(sc)).desired_pods == 2, "exactly the desired pods"
        done = await finished(sc, name)
        assert done.state == s.SESSION_STATE_SUCCEEDED
        warnings = [r.getMessage() for r in caplog.records if r.name.startswith("scheduler.")]
        assert any("the Kubernetes API did not answer in time" in w for w in warnings)

        made = [c.at - creates(api)[0].at for c in creates(api)]
        gaps = gaps_of(made)
        print(f"\npod CREATEs (500, 500, hang, then the API answers) at gaps of {gaps} s")
        assert len(made) == 4 and gaps[1] > gaps[0], "the retries back off"
        assert len(process_kubelet.containers) == 2, "no duplicate of the pod whose answer was lost"
        # After the idle period every pod, the one whose answer was lost too, drains and goes.
        await eventually(lambda: not api.select("pods", NAMESPACE), timeout=10)
        assert {c.exit_code for c in process_kubelet.containers.values()} == {0}
        status = await status_until(sc, lambda st: st.observed_pods == 0)
        assert status.desired_pods == 0
        # runner.proto: "The last provisioning error …, empty when the last attempt succeeded."
        assert not status.last_provisioning_error, "an error is shown after the API recovered"
