"""KubernetesProvisioner against the emulated API server, over HTTP, with kubernetes-asyncio."""

from __future__ import annotations

import asyncio
import base64
import itertools
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from scheduler.domain.ports import Provisioner
from scheduler.domain.provisioning import Observed, Phase
from scheduler.provisioner.errors import ProvisionerError
from scheduler.provisioner.kubernetes import KubernetesProvisioner, label_safe
from tests.k8s.emulator import ApiServer
from tests.k8s.helpers import (
    NAMESPACE,
    Changes,
    MakeProvisioner,
    Served,
    eventually,
    spec,
)
from tests.k8s.kubelet import Kubelet

SELECTOR = "app.kubernetes.io/managed-by=heat-scheduler,heat.io/scheduler=alpha"


def _conforms(provisioner: KubernetesProvisioner) -> Provisioner:
    return provisioner  # mypy checks that it keeps the port's promises


def by_name(provisioner: KubernetesProvisioner) -> dict[str, Observed]:
    return {o.name: o for o in provisioner.observed()}


def our_pod(name: str, scheduler: str = "alpha", runner_name: str = "csv-runner") -> dict[str, Any]:
    """A pod as a scheduler (this one before a restart, or another) would have made it."""
    return {
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/managed-by": "heat-scheduler",
                "heat.io/scheduler": scheduler,
                "heat.io/runner": runner_name,
            },
            "annotations": {"heat.io/runner": runner_name},
        },
        "spec": {"containers": [{"name": "runner", "image": "img"}]},
    }


# --- create ---------------------------------------------------------------------------------


async def test_create_makes_a_pod_by_the_conventions(
    provisioner: KubernetesProvisioner, api: ApiServer
) -> None:
    with api.stall():  # the watch tells nothing yet; create() alone must show the pod
        created = await provisioner.create(spec(tasks_per_pod=4, id=42))
        assert provisioner.observed() == [created]
    pod = api.read("pods", NAMESPACE, created.name)
    meta, pod_spec = pod["metadata"], pod["spec"]
    assert created == Observed(
        name=meta["name"],
        runner="csv-runner",
        uid=meta["uid"],
        phase=Phase.PENDING,
        created=created.created,
    )
    assert meta["generateName"] == "csv-runner-" and meta["name"].startswith("csv-runner-")
    assert meta["labels"] == {
        "app.kubernetes.io/name": "heat-runner",
        "app.kubernetes.io/instance": "csv-runner",
        "app.kubernetes.io/managed-by": "heat-scheduler",
        "app.kubernetes.io/component": "runner",
        "heat.io/runner": "csv-runner",
        "heat.io/scheduler": "alpha",
    }
    assert meta["annotations"] == {
        "heat.io/runner": "csv-runner",
        "heat.io/runner-id": "42",
        "heat.io/scheduler": "alpha",
    }
    assert pod_spec["restartPolicy"] == "Never"
    assert pod_spec["terminationGracePeriodSeconds"] == 60
    assert pod_spec["automountServiceAccountToken"] is False
    [container] = pod_spec["containers"]
    assert container["name"] == "runner"
    assert container["image"] == "registry.example/heat/csv-runner:1.2"
    assert "imagePullPolicy" not in container
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "256Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }
    assert container["env"] == [
        {"name": "HEAT_SCHEDULER_ADDRESS", "value": "heat-scheduler.heat.svc:50051"},
        {"name": "HEAT_RUNNER", "value": "csv-runner"},
        {"name": "HEAT_CAPACITY", "value": "4"},
        {"name": "HEAT_INSTANCE_ID",
         "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
        {"name": "HEAT_RUNNER_CREDENTIAL",
         "valueFrom": {"secretKeyRef": {"name": "heat-runner-csv-runner", "key": "credential"}}},
    ]  # fmt: skip


async def test_settings_reach_the_pod(make_provisioner: MakeProvisioner, api: ApiServer) -> None:
    prov = make_provisioner(
        "Team A / nightly", termination_grace_seconds=5, image_pull_policy="Always"
    )
    created = await prov.create(spec("Model_Runner." + "x" * 70, scheduler_name="Team A / nightly"))
    pod = api.read("pods", NAMESPACE, created.name)
    labels = pod["metadata"]["labels"]
    # The emulator rejects bad label values and names, as the API does: these passed.
    assert labels["heat.io/scheduler"] == label_safe("Team A / nightly") != "Team A / nightly"
    assert labels["heat.io/runner"] == labels["app.kubernetes.io/instance"]
    assert len(labels["heat.io/runner"]) <= 63
    assert pod["metadata"]["annotations"]["heat.io/runner"] == "Model_Runner." + "x" * 70
    assert len(pod["metadata"]["generateName"]) <= 58
    assert created.runner == "Model_Runner." + "x" * 70
    assert pod["spec"]["terminationGracePeriodSeconds"] == 5
    assert pod["spec"]["containers"][0]["imagePullPolicy"] == "Always"
    ref = pod["spec"]["containers"][0]["env"][4]["valueFrom"]["secretKeyRef"]["name"]
    assert ref.startswith("heat-runner-model-runner-") and len(ref) <= 253


@pytest.mark.parametrize(
    ("fault", "status", "words"),
    [
        (lambda api: api.fail("create", "pods", status=403, message="exceeded quota: pods=10"),
         403, "exceeded quota"),
        (lambda api: api.fail("create", "pods", status=500), 500, "injected failure"),
        (lambda api: None, 422, "quantities must match"),  # cpu "two" is not a quantity
        (lambda api: api.hang("create", "pods"), None, "did not answer"),
        (lambda api: api.drop("create", "pods"), None, "creating a pod for runner"),
    ],
    ids=["403-quota", "500", "422-invalid", "timeout", "dropped"],
)  # fmt: skip
async def test_create_failures_say_why(
    make_provisioner: MakeProvisioner,
    api: ApiServer,
    fault: Callable[[ApiServer], Any],
    status: int | None,
    words: str,
) -> None:
    prov = make_provisioner(request_timeout=0.3)
    fault(api)
    with pytest.raises(ProvisionerError) as caught:
        await prov.create(spec(cpu_limit="two" if status == 422 else "1"))
    assert caught.value.status == status
    assert words in str(caught.value)
    assert prov.observed() == []


# --- credentials -----------------------------------------------------------------------------


async def test_credential_round_trip(make_provisioner: MakeProvisioner, api: ApiServer) -> None:
    prov = make_provisioner()
    assert not await prov.has_credential("csv-runner")
    await prov.store_credential("csv-runner", "s3cret-1")
    assert await prov.has_credential("csv-runner")
    secret = api.read("secrets", NAMESPACE, "heat-runner-csv-runner")
    assert base64.b64decode(secret["data"]["credential"]) == b"s3cret-1"
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "heat-scheduler"
    assert secret["metadata"]["labels"]["heat.io/scheduler"] == "alpha"
    uid = secret["metadata"]["uid"]

    await prov.store_credential("csv-runner", "s3cret-2")  # exists: replaced
    secret = api.read("secrets", NAMESPACE, "heat-runner-csv-runner")
    assert base64.b64decode(secret["data"]["credential"]) == b"s3cret-2"
    assert secret["metadata"]["uid"] == uid
    assert [c.verb for c in api.calls if c.plural == "secrets"] == [
        "get", "create", "get", "create", "update",
    ]  # fmt: skip


async def test_a_secret_without_the_key_is_no_credential(
    make_provisioner: MakeProvisioner, api: ApiServer
) -> None:
    api.add("secrets", NAMESPACE, {"metadata": {"name": "heat-runner-r"}, "data": {}})
    assert not await make_provisioner().has_credential("r")


@pytest.mark.parametrize(
    ("call", "verb"),
    [("has", "get"), ("store", "create"), ("store", "update")],
)
async def test_credential_failures_say_why(
    make_provisioner: MakeProvisioner, api: ApiServer, call: str, verb: str
) -> None:
    prov = make_provisioner()
    if verb == "update":
        await prov.store_credential("r", "old")
    api.fail(verb, "secrets", status=500, message="etcd is sad")
    with pytest.raises(ProvisionerError) as caught:
        if call == "has":
            await prov.has_credential("r")
        else:
            await prov.store_credential("r", "new")
    assert caught.value.status == 500
    assert "etcd is sad" in str(caught.value) and "heat-runner-r" in str(caught.value)


# --- list and watch --------------------------------------------------------------------------


async def test_the_watch_keeps_observed_current(
    provisioner: KubernetesProvisioner, changes: Changes, kubelet: Kubelet
) -> None:
    name = (await provisioner.create(spec())).name

    def now(phase: Phase, ready: bool = False) -> Callable[[], bool]:
        def check() -> bool:
            o = by_name(provisioner)[name]
            return o.phase is phase and o.ready is ready

        return check

    steps: list[tuple[Callable[[str], object], Phase, bool]] = [
        (kubelet.schedule, Phase.PENDING, False),
        (lambda n: kubelet.run(n, ready=False), Phase.RUNNING, False),
        (kubelet.run, Phase.RUNNING, True),
        (kubelet.succeed, Phase.SUCCEEDED, False),
    ]
    for step, phase, ready in steps:
        changes.reset()
        step(name)
        await eventually(lambda: changes.count)
        assert now(phase, ready)()
        assert changes.count == 1


@pytest.mark.parametrize(
    ("step", "reason"),
    [
        (lambda k, n: k.wait(n, "ImagePullBackOff", "Back-off pulling image"),
         "ImagePullBackOff: Back-off pulling image"),
        (lambda k, n: k.wait(n, "ErrImagePull"), "ErrImagePull"),
        (lambda k, n: k.wait(n, "InvalidImageName"), "InvalidImageName"),
        (lambda k, n: k.wait(n, "CreateContainerConfigError", 'secret "heat-runner-x" not found'),
         'CreateContainerConfigError: secret "heat-runner-x" not found'),
        (lambda k, n: k.wait(n, "CrashLoopBackOff", phase="Running"), "CrashLoopBackOff"),
        (lambda k, n: k.fail(n, reason="OOMKilled", exit_code=137), "OOMKilled (exit code 137)"),
        (lambda k, n: k.fail(n, exit_code=3), "Error (exit code 3)"),
        (lambda k, n: k.evict(n, "The node was low on resource: memory."),
         "Evicted: The node was low on resource: memory."),
    ],
    ids=["ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
         "CrashLoopBackOff", "OOMKilled", "Error", "Evicted"],
)  # fmt: skip
async def test_failures_are_failed_with_the_reason(
    provisioner: KubernetesProvisioner,
    kubelet: Kubelet,
    step: Callable[[Kubelet, str], object],
    reason: str,
) -> None:
    name = (await provisioner.create(spec())).name
    kubelet.schedule(name)
    step(kubelet, name)
    failed = await eventually(lambda: by_name(provisioner)[name].phase is Phase.FAILED)
    assert failed
    assert by_name(provisioner)[name].reason == reason
    assert not by_name(provisioner)[name].live


async def test_a_lost_node_is_pending_not_failed(
    provisioner: KubernetesProvisioner, kubelet: Kubelet, changes: Changes
) -> None:
    name = (await provisioner.create(spec())).name
    kubelet.run(name)
    await eventually(lambda: by_name(provisioner)[name].ready)
    changes.reset()
    kubelet.lose(name)
    await eventually(lambda: changes.count)
    assert by_name(provisioner)[name].phase is Phase.PENDING


async def test_a_restarted_provisioner_adopts_its_pods_and_ignores_others(
    make_provisioner: MakeProvisioner, api: ApiServer, kubelet: Kubelet
) -> None:
    first = make_provisioner("alpha")
    await first.start(Changes())
    mine = {(await first.create(spec(name))).name for name in ("csv-runner", "model-runner")}
    beta = make_provisioner("beta")
    theirs = (await beta.create(spec("csv-runner", scheduler_name="beta"))).name
    api.add("pods", NAMESPACE, {**our_pod("hand-made"), "metadata": {"name": "hand-made"}})
    api.add("pods", "other-namespace", our_pod("alpha-elsewhere"))
    kubelet.run(next(iter(mine)))
    await first.stop()

    changes = Changes()
    second = make_provisioner("alpha")
    await second.start(changes)
    adopted = by_name(second)
    assert set(adopted) == mine  # right after start
    assert {o.runner for o in adopted.values()} == {"csv-runner", "model-runner"}
    assert any(o.ready for o in adopted.values())
    assert api.called("list", "pods")[-1].params["labelSelector"] == SELECTOR
    assert api.called("watch", "pods")[-1].params["labelSelector"] == SELECTOR

    changes.reset()
    kubelet.run(theirs)
    kubelet.run("hand-made")
    api.add("pods", NAMESPACE, our_pod("late"))  # ours: it is seen
    await eventually(lambda: "late" in by_name(second))
    assert changes.count == 1
    assert set(by_name(second)) == {*mine, "late"}


async def test_a_watch_that_ends_is_resumed_from_where_it_was(
    make_provisioner: MakeProvisioner, api: ApiServer, kubelet: Kubelet
) -> None:
    prov = make_provisioner(watch_timeout_seconds=1)
    await prov.start(Changes())
    name = (await prov.create(spec())).name
    api.add("pods", NAMESPACE, our_pod("theirs", scheduler="beta"))  # moves the version on
    version = api.rv
    await eventually(lambda: len(api.called("watch", "pods")) == 2, timeout=3)
    watch = api.called("watch", "pods")[1]
    assert watch.params["resourceVersion"] == str(version)  # from the bookmark
    assert watch.params["timeoutSeconds"] == "1"
    assert len(api.called("list", "pods")) == 1
    kubelet.run(name)
    await eventually(lambda: by_name(prov)[name].ready)

    api.end_watches()  # the server ends it early: resumed too
    await eventually(lambda: len(api.called("watch", "pods")) == 3)
    assert len(api.called("list", "pods")) == 1


@pytest.mark.parametrize(
    "interruption",
    [
        "error-event-410",  # the watch fell behind a compaction
        "http-410",
        "error-event-500",
        "http-500",
        "dropped",
        "hang",
    ],
)
async def test_a_broken_watch_lists_again_and_loses_nothing(
    make_provisioner: MakeProvisioner, api: ApiServer, kubelet: Kubelet, interruption: str
) -> None:
    changes = Changes()
    prov = make_provisioner(request_timeout=0.3)
    await prov.start(changes)
    keep, gone, changed = [(await prov.create(spec())).name for _ in range(3)]
    kubelet.run(keep)
    kubelet.run(changed)
    await eventually(lambda: by_name(prov)[changed].ready)
    changes.reset()

    kind, _, code = interruption.rpartition("-")
    with api.stall():  # what happens now, the watch does not tell
        api.remove("pods", NAMESPACE, gone)
        kubelet.fail(changed, reason="OOMKilled", exit_code=137)
        api.add("pods", NAMESPACE, our_pod("new-one"))
        if kind == "error-event" and code == "410":
            api.compact()
        elif kind == "error-event":
            api.end_watches(error=int(code))
        else:
            if kind == "http":
                api.fail("watch", "pods", status=int(code))
            elif interruption == "dropped":
                api.drop("watch", "pods", times=2)  # aiohttp retries the first by itself
            else:
                api.hang("watch", "pods")
            api.end_watches()
    started = time.monotonic()
    await eventually(lambda: set(by_name(prov)) == {keep, changed, "new-one"})
    assert by_name(prov)[changed].reason == "OOMKilled (exit code 137)"
    assert by_name(prov)[keep].ready
    assert len(prov.observed()) == 3
    assert changes.count >= 1
    assert len(api.called("list", "pods")) == 2
    if code == "410":
        assert time.monotonic() - started < 0.1  # listed again at once
    # And it watches on from the new list.
    await eventually(lambda: api.watch_count == 1)
    assert api.called("watch", "pods")[-1].params["resourceVersion"] == str(api.rv)
    kubelet.succeed(keep)
    await eventually(lambda: by_name(prov)[keep].phase is Phase.SUCCEEDED)


@pytest.mark.parametrize(
    ("fault", "lists", "least_wait"),
    [
        (lambda api: api.fail("list", "pods", status=500, times=3), 4, 0.1 + 0.2 + 0.4),
        (lambda api: api.fail("list", "pods", status=403), 2, 0.1),
        (lambda api: api.hang("list", "pods"), 2, 0.3 + 0.1),
        # aiohttp itself retries an idempotent request once when the connection drops
        (lambda api: api.drop("list", "pods", times=2), 3, 0.1),
        # gone right after listing, again and again: no tight loop either
        (lambda api: api.fail("watch", "pods", status=410, times=2), 3, 0.1 + 0.2),
    ],
    ids=["list-500", "list-403", "list-timeout", "list-dropped", "watch-410-after-list"],
)
async def test_failing_lists_and_watches_back_off_and_recover(
    make_provisioner: MakeProvisioner,
    api: ApiServer,
    fault: Callable[[ApiServer], Any],
    lists: int,
    least_wait: float,
) -> None:
    api.add("pods", NAMESPACE, our_pod("existing"))
    fault(api)
    prov = make_provisioner(request_timeout=0.3)
    started = time.monotonic()
    await prov.start(Changes())  # returns once listed
    await eventually(lambda: api.watch_count == 1)
    assert time.monotonic() - started >= least_wait  # backed off, with jitter, from 0.2 s
    assert set(by_name(prov)) == {"existing"}
    calls = api.called("list", "pods")
    assert len(calls) == lists
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
    if lists == 4:
        assert gaps == sorted(gaps)  # doubling each time (jitter takes at most half off)


async def test_stop_ends_the_watch_and_start_begins_again(
    make_provisioner: MakeProvisioner, api: ApiServer
) -> None:
    prov = make_provisioner()
    await prov.start(Changes())
    await eventually(lambda: api.watch_count == 1)
    await prov.stop()
    await prov.stop()  # idempotent
    api.add("pods", NAMESPACE, our_pod("while-stopped"))
    await prov.start(Changes())
    assert set(by_name(prov)) == {"while-stopped"}
    with pytest.raises(RuntimeError):
        await prov.start(Changes())


async def test_start_can_be_cancelled_while_the_api_is_down(
    make_provisioner: MakeProvisioner, api: ApiServer
) -> None:
    api.fail("list", "pods", status=503, times=100)
    prov = make_provisioner()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await prov.start(Changes())
    calls = len(api.calls)
    await asyncio.sleep(0.5)
    assert len(api.calls) == calls  # nothing runs on


async def test_a_failing_change_callback_does_not_stop_the_watch(
    make_provisioner: MakeProvisioner, kubelet: Kubelet
) -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    prov = make_provisioner()
    await prov.start(broken)
    name = (await prov.create(spec())).name
    kubelet.run(name)
    await eventually(lambda: by_name(prov)[name].ready)
    kubelet.succeed(name)
    await eventually(lambda: by_name(prov)[name].phase is Phase.SUCCEEDED)
    assert len(calls) == 2


# --- delete ----------------------------------------------------------------------------------


async def test_delete_names_the_uid_and_waits_for_the_kubelet(
    provisioner: KubernetesProvisioner, api: ApiServer, kubelet: Kubelet, changes: Changes
) -> None:
    created = await provisioner.create(spec())
    kubelet.run(created.name)
    running = await eventually(lambda: by_name(provisioner)[created.name].ready)
    assert running
    instance = by_name(provisioner)[created.name]

    changes.reset()
    await provisioner.delete(instance)
    [call] = api.called("delete", "pods")
    assert call.name == created.name
    assert call.body["preconditions"] == {"uid": created.uid}
    assert call.body["gracePeriodSeconds"] == 60
    assert call.params["gracePeriodSeconds"] == "60"
    assert by_name(provisioner)[created.name].deleting  # at once
    assert api.read("pods", NAMESPACE, created.name)["metadata"]["deletionTimestamp"]
    await eventually(lambda: changes.count)  # the watch says so too

    changes.reset()
    assert kubelet.finish_deletions() == [created.name]
    await eventually(lambda: provisioner.observed() == [])
    assert changes.count == 1


async def test_delete_leaves_a_pod_that_replaced_it_alone(
    provisioner: KubernetesProvisioner, api: ApiServer, kubelet: Kubelet
) -> None:
    old = await provisioner.create(spec())
    with api.stall():  # the provisioner has not seen the swap
        api.remove("pods", NAMESPACE, old.name)
        api.add("pods", NAMESPACE, our_pod(old.name))
        kubelet.run(old.name)
        await provisioner.delete(old)  # 409: not ours to delete; no error
    replacement = api.read("pods", NAMESPACE, old.name)
    assert replacement["metadata"]["uid"] != old.uid
    assert "deletionTimestamp" not in replacement["metadata"]
    await eventually(lambda: by_name(provisioner)[old.name].uid != old.uid)
    assert not by_name(provisioner)[old.name].deleting
    assert by_name(provisioner)[old.name].ready


async def test_delete_of_a_pod_already_gone_is_fine(
    provisioner: KubernetesProvisioner, api: ApiServer
) -> None:
    created = await provisioner.create(spec())
    api.remove("pods", NAMESPACE, created.name)
    await provisioner.delete(created)
    await eventually(lambda: provisioner.observed() == [])


async def test_delete_failures_say_why(
    provisioner: KubernetesProvisioner, api: ApiServer, kubelet: Kubelet
) -> None:
    created = await provisioner.create(spec())
    kubelet.run(created.name)
    api.fail("delete", "pods", status=500, message="apiserver overloaded")
    with pytest.raises(ProvisionerError) as caught:
        await provisioner.delete(created)
    assert caught.value.status == 500 and "apiserver overloaded" in str(caught.value)
    assert not by_name(provisioner)[created.name].deleting


# --- connect ---------------------------------------------------------------------------------


async def test_connect_with_a_kubeconfig(served: Served, api: ApiServer, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        f"""
apiVersion: v1
kind: Config
clusters:
- name: emulated
  cluster: {{server: "{served.url}"}}
users:
- name: tester
  user: {{token: "t0ken"}}
contexts:
- name: team-a
  context: {{cluster: emulated, user: tester, namespace: team-a}}
- name: team-b
  context: {{cluster: emulated, user: tester}}
current-context: team-a
"""
    )
    prov = await KubernetesProvisioner.connect(
        kubeconfig=str(kubeconfig), context=None, namespace=None, scheduler_name="alpha"
    )
    try:
        await prov.start(Changes())
        created = await prov.create(spec())
        assert api.read("pods", "team-a", created.name)
        assert api.called("create")[-1].namespace == "team-a"
    finally:
        await prov.close()
    assert prov.api.rest_client.pool_manager.closed
    other = await KubernetesProvisioner.connect(
        kubeconfig=str(kubeconfig), context="team-b", namespace=None, scheduler_name="alpha"
    )
    explicit = await KubernetesProvisioner.connect(
        kubeconfig=str(kubeconfig), context="team-b", namespace="ops", scheduler_name="alpha"
    )
    assert (other.namespace, explicit.namespace) == ("default", "ops")
    await other.close()
    await explicit.close()


@pytest.mark.parametrize(
    ("kubeconfig", "context", "environ", "words"),
    [
        ("missing", None, {}, "no kubeconfig"),
        (None, None, {"KUBECONFIG": "/nonexistent/a:/nonexistent/b"}, "KUBERNETES_SERVICE_HOST"),
        ("config", "no-such-context", {}, "no-such-context"),
        (None, None, {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"},
         "token file does not exist"),
    ],
)  # fmt: skip
async def test_connect_says_what_is_missing(
    tmp_path: Path, kubeconfig: str | None, context: str | None, environ: dict[str, str],
    words: str,
) -> None:  # fmt: skip
    (tmp_path / "config").write_text(
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'http://x'}}]\n"
        "contexts: [{name: a, context: {cluster: c}}]\ncurrent-context: a\n"
    )
    with pytest.raises(ProvisionerError, match=words):
        await KubernetesProvisioner.connect(
            kubeconfig=str(tmp_path / kubeconfig) if kubeconfig else None,
            context=context, namespace=None, scheduler_name="alpha",
            service_account_dir=str(tmp_path / "sa"), environ=environ,
        )  # fmt: skip


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl for a CA file")
async def test_connect_in_cluster(tmp_path: Path) -> None:
    openssl = await asyncio.create_subprocess_exec(
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-subj", "/CN=kubernetes", "-days", "1",
        "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "ca.crt"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await openssl.wait() == 0
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "namespace").write_text("heat-prod\n")
    environ = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    prov = await KubernetesProvisioner.connect(
        kubeconfig=None, context=None, namespace=None, scheduler_name="alpha",
        service_account_dir=str(tmp_path), environ=environ,
    )  # fmt: skip
    try:
        assert prov.namespace == "heat-prod"
        assert prov.api.configuration.host == "https://10.0.0.1:443"
        assert prov.api.configuration.api_key["BearerToken"] == "Bearer sa-token"
    finally:
        await prov.close()


async def test_conforms_to_the_port(client: ApiClient) -> None:
    port = _conforms(KubernetesProvisioner(client, namespace="n", scheduler_name="s"))
    assert port.name == "kubernetes"
