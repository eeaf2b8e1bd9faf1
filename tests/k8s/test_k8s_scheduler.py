"""The whole scheduler with the Kubernetes provisioner, end to end, on the real kube-apiserver.

Each test installs the Helm chart into a namespace of its own (which enforces the restricted
Pod Security Standard), and the scheduler acts as the chart's ServiceAccount, with a token from
TokenRequest and only the chart's Role: the Sessions completing through real pods prove the Role
is enough. :class:`ProcessKubelet` plays the node and runs each pod as a local process of
``tests/e2e/worker.py``. So every step is the real one: the reconciler creates pods through the
API, the runners dial the scheduler with the credential from the Secret the scheduler made,
idle runners drain and exit 0, and the pods that ended are deleted. What the scheduler asked of
the API, and when, comes from the API server's audit log.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import pytest_asyncio
from google.protobuf import json_format
from heat.scheduler.v1 import session_pb2 as s
from kubernetes_asyncio.client import Configuration

from tests.integration.test_provisioning import apply, finished, submit
from tests.k8s.chart import Identity, install
from tests.k8s.cluster import Cluster, free_port
from tests.k8s.helpers import eventually, until
from tests.k8s.kube import Kube, pods
from tests.k8s.kubelet import ProcessKubelet
from tests.k8s.scheduling import (
    OURS,
    SCHEDULER,
    address_of,
    gaps_of,
    node,
    nodes_sleeping,
    ran_on,
    requests,
    sample_while,
    serving,
    status_until,
    to_dt,
)


@pytest.fixture
def worker_log(tmp_path: Path) -> Path:
    return tmp_path / "worker.log"


@pytest_asyncio.fixture
async def identity(cluster: Cluster, namespace: str) -> Identity:
    """The chart, installed: the scheduler's ServiceAccount, Role and RoleBinding."""
    return await install(cluster, namespace)


@pytest.fixture
def config(cluster: Cluster, identity: Identity) -> Configuration:
    return cluster.configuration(identity.token)


@pytest_asyncio.fixture
async def process_kubelet(
    kube: Kube, namespace: str, worker_log: Path
) -> AsyncIterator[ProcessKubelet]:
    async with node(kube, namespace, worker_log) as kubelet:
        yield kubelet


async def test_pods_follow_the_work_from_zero_to_three_and_back_to_zero(
    db_dsn: str, cluster: Cluster, identity: Identity, config: Configuration, kube: Kube,
    namespace: str, process_kubelet: ProcessKubelet, worker_log: Path,
) -> None:  # fmt: skip
    async with serving(db_dsn, config, namespace, free_port()) as sc:
        await apply(sc)  # two tasks per pod, at most three pods, idle for a second
        name = await submit(sc, nodes_sleeping(8, 0.5))
        await eventually(lambda: len(process_kubelet.running()) == 3, timeout=15)
        made = await kube.items(pods(namespace), labelSelector=f"{OURS},heat.io/runner=w")
        assert len(made) == 3
        for pod in made:
            assert pod["metadata"]["labels"] == {
                "app.kubernetes.io/name": "heat-runner",
                "app.kubernetes.io/instance": "w",
                "app.kubernetes.io/managed-by": "heat-scheduler",
                "app.kubernetes.io/component": "runner",
                "heat.io/runner": "w",
                "heat.io/scheduler": SCHEDULER,
            }
        names = {p["metadata"]["name"] for p in made}
        done = await finished(sc, name)
        assert done.state == s.SESSION_STATE_SUCCEEDED
        outputs = {n.key: json_format.MessageToDict(n.outputs) for n in done.nodes}
        assert all(out["node"] == key for key, out in outputs.items()) and len(outputs) == 8
        assert set(ran_on(worker_log).values()) == names

        # Idle for a second, each runner drains, exits 0, and its pod is deleted.
        async def left() -> int:
            return len(await kube.items(pods(namespace)))

        await until(left, 0, timeout=15)
        status = await status_until(sc, lambda st: st.observed_pods == 0)
        assert (status.desired_pods, status.observed_pods, status.ready_pods) == (0, 0, 0)
        assert not status.last_provisioning_error
        containers = process_kubelet.containers.values()
        assert {c.pod: c.exit_code for c in containers} == dict.fromkeys(names, 0)
        assert not any(c.terminating for c in containers), "none was stopped by a deletion"
        # The runners got the credential through the Secret the scheduler made for them.
        assert all(c.env and c.env["HEAT_RUNNER_CREDENTIAL"] for c in containers)

        audited = cluster.audit(identity.user)
        creates = requests(audited, "create")
        deletes = requests(audited, "delete")
        assert [r.code for r in creates] == [201] * 3
        assert sorted(r.name for r in deletes) == sorted(names)
        created_after = creates[0].at - to_dt(done.create_time)
        last_result = max(to_dt(n.end_time) for n in done.nodes)
        deleted_after = deletes[-1].at - last_result
        print(
            f"\nk8s (real API server) scale 0 -> 3 -> 0: first ready task (Session created) -> "
            f"first pod CREATE {created_after.total_seconds() * 1000:.1f} ms; last result -> "
            f"last pod DELETE {deleted_after.total_seconds():.2f} s (idle period 1 s)"
        )


async def test_a_busy_pod_is_never_deleted(
    db_dsn: str, cluster: Cluster, identity: Identity, config: Configuration, kube: Kube,
    namespace: str, process_kubelet: ProcessKubelet, worker_log: Path,
) -> None:  # fmt: skip
    async with serving(db_dsn, config, namespace, free_port()) as sc:
        # (and the Runner's own pod template reaches its pods, through the registry)
        template = {"metadata": {"annotations": {"example.com/team": "data"}}}
        await apply(sc, idlePeriod="0.3s", tasksPerPod=1, podTemplate=template)
        name = await submit(sc, nodes_sleeping(1, 3))
        done = await finished(sc, name)
        assert done.state == s.SESSION_STATE_SUCCEEDED
        assert done.nodes[0].attempt == 1, "the pod holding the task was never drained"
        pod = ran_on(worker_log)["n0"]
        [made] = process_kubelet.seen
        assert made["metadata"]["annotations"]["example.com/team"] == "data"
        succeeded = to_dt(done.nodes[0].end_time)
        early = [r for r in requests(cluster.audit(identity.user), "delete") if r.at < succeeded]
        assert not early, f"a pod was deleted while its task ran: {early}"

        # Afterwards it drains like any idle runner: it exits 0 and is deleted then.
        async def left() -> int:
            return len(await kube.items(pods(namespace)))

        await until(left, 0, timeout=10)
        container = process_kubelet.containers[pod]
        assert container.exit_code == 0 and not container.terminating
        assert [r.name for r in requests(cluster.audit(identity.user), "delete")] == [pod]


@pytest.mark.parametrize(
    ("image", "reason"),
    [("registry.example/heat/missing:1", "ImagePullBackOff"), ("crash", "exit code 1")],
    ids=["image-pull-backoff", "exits-1-at-once"],
)
async def test_a_crash_looping_image_backs_off_and_is_reported(
    db_dsn: str, cluster: Cluster, identity: Identity, config: Configuration, kube: Kube,
    namespace: str, process_kubelet: ProcessKubelet, image: str, reason: str,
) -> None:  # fmt: skip
    async with serving(db_dsn, config, namespace, free_port()) as sc:
        await apply(sc, containerImage=image, tasksPerPod=1, maxPods=1)
        await submit(sc, [{"key": "a", "nodeTemplate": "echo"}])
        status = await status_until(sc, lambda st: reason in st.last_provisioning_error)
        assert "failed" in status.last_provisioning_error
        # Replacements come after 1 s, 2 s, 4 s…: a handful in five seconds, not a flood;
        # failed pods are deleted, not piled up.
        first = requests(cluster.audit(identity.user), "create")[0].at
        elapsed = (requests(cluster.audit(identity.user), "create")[-1].at - first).total_seconds()
        window = max(0.0, 5.0 - elapsed - 0.2)

        async def count() -> int:
            return len(await kube.items(pods(namespace)))

        piled = await sample_while(window, count)
        made = [
            (r.at - first).total_seconds()
            for r in requests(cluster.audit(identity.user), "create")
            if (r.at - first).total_seconds() < 5.0
        ]
        gaps = gaps_of(made)
        print(f"\n{image}: {len(made)} pod CREATEs in 5 s, {gaps} s apart")
        assert piled <= 1, "failed pods are removed, not piled up"
        assert 2 <= len(made) <= 4, f"pods created at {made}"
        assert gaps == sorted(gaps) and gaps[-1] > 1.5 * gaps[0], f"delays do not grow: {gaps}"


async def test_a_restarted_scheduler_adopts_the_pods_it_finds(
    db_dsn: str, cluster: Cluster, identity: Identity, config: Configuration, kube: Kube,
    namespace: str, process_kubelet: ProcessKubelet, worker_log: Path,
) -> None:  # fmt: skip
    port = free_port()
    async with serving(db_dsn, config, namespace, port) as a:
        await apply(a, idlePeriod="2s")
        name = await submit(a, nodes_sleeping(6, 1.5))
        await eventually(lambda: len(process_kubelet.running()) == 3, timeout=15)
    # A stopped: its pods did not.
    running = sorted(process_kubelet.running())
    assert len(running) == 3 and not requests(cluster.audit(identity.user), "delete")
    assert sorted(p["metadata"]["name"] for p in await kube.items(pods(namespace))) == running
    before = len(requests(cluster.audit(identity.user), "create"))
    assert before == 3

    async with serving(db_dsn, config, namespace, port) as b:  # same name, database, port
        done = await finished(b, name)
        assert done.state == s.SESSION_STATE_SUCCEEDED
        after = len(requests(cluster.audit(identity.user), "create"))
        assert after == before, "the restarted scheduler made pods it had"
        assert set(ran_on(worker_log).values()) <= set(running)


async def test_one_replica_provisions_and_another_takes_over(
    db_dsn: str, cluster: Cluster, identity: Identity, config: Configuration, kube: Kube,
    namespace: str, process_kubelet: ProcessKubelet,
) -> None:  # fmt: skip
    async def left() -> int:
        return len(await kube.items(pods(namespace)))

    async with AsyncExitStack() as outer:
        stacks = [await outer.enter_async_context(AsyncExitStack()) for _ in range(2)]
        replicas = [
            await stack.enter_async_context(serving(db_dsn, config, namespace, free_port()))
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
        seen = list(process_kubelet.seen)
        assert seen and {address_of(p) for p in seen} == {replicas[leader].address}
        # The leader's runners idle out before it goes, or they would dial a dead address.
        await until(left, 0, timeout=10)

        stopping = time.monotonic()
        await stacks[leader].aclose()
        stopped = time.monotonic()
        await eventually(lambda: reconcilers[1 - leader].passes > 0, timeout=10)
        took_over = time.monotonic()
        name = await submit(follower, nodes_sleeping(1, 0.2))
        assert (await finished(follower, name)).state == s.SESSION_STATE_SUCCEEDED
        new = process_kubelet.seen[len(seen) :]
        assert new and {address_of(p) for p in new} == {follower.address}
        print(
            f"\nk8s leader failover: {took_over - stopping:.2f} s from stopping the leader to "
            f"the other replica's first pass ({took_over - stopped:.2f} s after it stopped)"
        )
