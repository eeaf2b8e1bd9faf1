"""KubernetesProvisioner against the real kube-apiserver, with kubernetes-asyncio.

Each test has a namespace of its own, where PodSecurity admission enforces the restricted
standard: every pod the provisioner makes is admitted under it. The faults the real server
cannot produce on demand are in faults/test_k8s_faults.py (against the emulator).
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from scheduler.domain.ports import Provisioner
from scheduler.domain.provisioning import Observed, Phase
from scheduler.provisioner.errors import ProvisionerError
from scheduler.provisioner.kubernetes import KubernetesProvisioner, label_safe
from tests.k8s.cluster import Cluster
from tests.k8s.helpers import Changes, MakeProvisioner, eventually, spec
from tests.k8s.kube import Kube, KubeError, path, pods
from tests.k8s.kubelet import Kubelet

RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


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
        "spec": {
            "containers": [{"name": "runner", "image": "img", "securityContext": RESTRICTED}],
        },
    }


async def remove(kube: Kube, namespace: str, name: str) -> None:
    """The pod goes at once (a force delete)."""
    await kube.delete(pods(namespace, name), {"gracePeriodSeconds": 0}, gracePeriodSeconds="0")


# --- create ---------------------------------------------------------------------------------


async def test_create_makes_a_pod_by_the_conventions(
    provisioner: KubernetesProvisioner, kube: Kube, namespace: str
) -> None:
    created = await provisioner.create(spec(tasks_per_pod=4, id=42))
    assert created in provisioner.observed()  # create() alone shows it, whatever the watch
    pod = await kube.get(pods(namespace, created.name))
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
    # The restricted Pod Security Standard (the namespace enforces it: the pod was admitted).
    assert pod_spec["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod_spec["volumes"] == [{"name": "scratch", "emptyDir": {}}]
    [container] = pod_spec["containers"]
    assert container["name"] == "runner"
    assert container["image"] == "registry.example/heat/csv-runner:1.2"
    assert container["imagePullPolicy"] == "IfNotPresent"  # the API's default for a tag
    assert container["securityContext"] == RESTRICTED
    assert container["volumeMounts"] == [{"name": "scratch", "mountPath": "/tmp"}]
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
         "valueFrom": {"secretKeyRef": {"name": "heat-runner-alpha-csv-runner",
                                        "key": "credential"}}},
    ]  # fmt: skip


async def test_settings_reach_the_pod(
    make_provisioner: MakeProvisioner, kube: Kube, namespace: str
) -> None:
    prov = make_provisioner(
        "Team A / nightly", termination_grace_seconds=5, image_pull_policy="Always"
    )
    created = await prov.create(spec("Model_Runner." + "x" * 70, scheduler_name="Team A / nightly"))
    pod = await kube.get(pods(namespace, created.name))
    labels = pod["metadata"]["labels"]
    # The API rejects bad label values and names: these passed.
    assert labels["heat.io/scheduler"] == label_safe("Team A / nightly") != "Team A / nightly"
    assert labels["heat.io/runner"] == labels["app.kubernetes.io/instance"]
    assert len(labels["heat.io/runner"]) <= 63
    assert pod["metadata"]["annotations"]["heat.io/runner"] == "Model_Runner." + "x" * 70
    assert len(pod["metadata"]["generateName"]) <= 58
    assert created.runner == "Model_Runner." + "x" * 70
    assert pod["spec"]["terminationGracePeriodSeconds"] == 5
    assert pod["spec"]["containers"][0]["imagePullPolicy"] == "Always"
    ref = pod["spec"]["containers"][0]["env"][4]["valueFrom"]["secretKeyRef"]["name"]
    assert ref.startswith("heat-runner-team-a-nightly-model-runner-") and len(ref) <= 253


async def test_the_api_refusing_a_pod_says_why(
    make_provisioner: MakeProvisioner, kube: Kube, namespace: str
) -> None:
    prov = make_provisioner()
    with pytest.raises(ProvisionerError) as caught:  # cpu "two" is not a quantity
        await prov.create(spec(cpu_limit="two"))
    assert caught.value.status in (400, 422)
    assert "quantities must match the regular expression" in str(caught.value)

    # A quota that allows no pods: 403 Forbidden, and the message says which quota.
    quota = {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}
    made = await kube.post(path("resourcequotas", namespace), quota)
    made["status"] = {"hard": {"pods": "0"}, "used": {"pods": "0"}}  # no controller computes it
    await kube.put(path("resourcequotas", namespace, "no-pods", "status"), made)
    with pytest.raises(ProvisionerError) as caught:
        await prov.create(spec())
    assert caught.value.status == 403
    assert "exceeded quota: no-pods" in str(caught.value)
    assert prov.observed() == []


# --- credentials -----------------------------------------------------------------------------


async def test_credential_round_trip(
    make_provisioner: MakeProvisioner, kube: Kube, namespace: str
) -> None:
    prov, other = make_provisioner("alpha"), make_provisioner("beta")
    assert not await prov.has_credential("csv-runner")
    await prov.store_credential("csv-runner", "s3cret-1")
    assert await prov.has_credential("csv-runner")
    assert not await other.has_credential("csv-runner"), "each scheduler has its own Secret"
    secret = await kube.get(path("secrets", namespace, "heat-runner-alpha-csv-runner"))
    assert base64.b64decode(secret["data"]["credential"]) == b"s3cret-1"
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "heat-scheduler"
    assert secret["metadata"]["labels"]["heat.io/scheduler"] == "alpha"
    uid = secret["metadata"]["uid"]

    await prov.store_credential("csv-runner", "s3cret-2")  # exists: replaced
    await other.store_credential("csv-runner", "theirs")
    secret = await kube.get(path("secrets", namespace, "heat-runner-alpha-csv-runner"))
    assert base64.b64decode(secret["data"]["credential"]) == b"s3cret-2"
    assert secret["metadata"]["uid"] == uid
    theirs = await kube.get(path("secrets", namespace, "heat-runner-beta-csv-runner"))
    assert base64.b64decode(theirs["data"]["credential"]) == b"theirs"


async def test_a_secret_without_the_key_is_no_credential(
    make_provisioner: MakeProvisioner, kube: Kube, namespace: str
) -> None:
    await kube.post(path("secrets", namespace), {"metadata": {"name": "heat-runner-alpha-r"}})
    assert not await make_provisioner().has_credential("r")


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

    steps: list[tuple[Callable[[str], Awaitable[object]], Phase, bool]] = [
        (kubelet.schedule, Phase.PENDING, False),
        (lambda n: kubelet.run(n, ready=False), Phase.RUNNING, False),
        (kubelet.run, Phase.RUNNING, True),
        (kubelet.succeed, Phase.SUCCEEDED, False),
    ]
    for step, phase, ready in steps:
        changes.reset()
        await step(name)
        await eventually(now(phase, ready))
        assert changes.count >= 1


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
    step: Callable[[Kubelet, str], Awaitable[object]],
    reason: str,
) -> None:
    name = (await provisioner.create(spec())).name
    await kubelet.schedule(name)
    await step(kubelet, name)
    failed = await eventually(lambda: by_name(provisioner)[name].phase is Phase.FAILED)
    assert failed
    assert by_name(provisioner)[name].reason == reason
    assert not by_name(provisioner)[name].live


async def test_a_lost_node_is_pending_not_failed(
    provisioner: KubernetesProvisioner, kubelet: Kubelet
) -> None:
    name = (await provisioner.create(spec())).name
    await kubelet.run(name)
    await eventually(lambda: by_name(provisioner)[name].ready)
    await kubelet.lose(name)
    await eventually(lambda: not by_name(provisioner)[name].ready)
    assert by_name(provisioner)[name].phase is Phase.PENDING


async def test_a_restarted_provisioner_adopts_its_pods_and_ignores_others(
    make_provisioner: MakeProvisioner, kube: Kube, kubelet: Kubelet, cluster: Cluster,
    namespace: str,
) -> None:  # fmt: skip
    first = make_provisioner("alpha")
    await first.start(Changes())
    mine = {(await first.create(spec(name))).name for name in ("csv-runner", "model-runner")}
    beta = make_provisioner("beta")
    theirs = (await beta.create(spec("csv-runner", scheduler_name="beta"))).name
    await kube.post(pods(namespace), {**our_pod("hand-made"), "metadata": {"name": "hand-made"}})
    elsewhere = await cluster.namespace()
    await kube.post(pods(elsewhere), our_pod("alpha-elsewhere"))
    await kubelet.run(next(iter(mine)))
    await first.stop()

    changes = Changes()
    second = make_provisioner("alpha")
    await second.start(changes)
    adopted = by_name(second)
    assert set(adopted) == mine  # right after start
    assert {o.runner for o in adopted.values()} == {"csv-runner", "model-runner"}
    assert any(o.ready for o in adopted.values())

    changes.reset()
    await kubelet.run(theirs)
    await kubelet.run("hand-made")
    await kube.post(pods(namespace), our_pod("late"))  # ours: it is seen
    await eventually(lambda: "late" in by_name(second))
    assert set(by_name(second)) == {*mine, "late"}


async def test_stop_ends_the_watch_and_start_begins_again(
    make_provisioner: MakeProvisioner, kube: Kube, namespace: str
) -> None:
    prov = make_provisioner()
    await prov.start(Changes())
    await prov.stop()
    await prov.stop()  # idempotent
    await kube.post(pods(namespace), our_pod("while-stopped"))
    await prov.start(Changes())
    assert set(by_name(prov)) == {"while-stopped"}
    with pytest.raises(RuntimeError):
        await prov.start(Changes())


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
    await kubelet.run(name)
    await eventually(lambda: by_name(prov)[name].ready)
    await kubelet.succeed(name)
    await eventually(lambda: by_name(prov)[name].phase is Phase.SUCCEEDED)
    assert len(calls) >= 2


# --- delete ----------------------------------------------------------------------------------


async def test_delete_names_the_uid_and_waits_for_the_kubelet(
    provisioner: KubernetesProvisioner, kube: Kube, kubelet: Kubelet, namespace: str
) -> None:
    created = await provisioner.create(spec())
    await kubelet.run(created.name)
    await eventually(lambda: by_name(provisioner)[created.name].ready)
    instance = by_name(provisioner)[created.name]

    await provisioner.delete(instance)
    assert by_name(provisioner)[created.name].deleting  # at once
    pod = await kube.get(pods(namespace, created.name))  # graceful: the node has to stop it
    assert pod["metadata"]["deletionTimestamp"]
    assert pod["metadata"]["deletionGracePeriodSeconds"] == 60

    assert await kubelet.finish_deletions() == [created.name]
    await eventually(lambda: provisioner.observed() == [])


async def test_delete_leaves_a_pod_that_replaced_it_alone(
    provisioner: KubernetesProvisioner, kube: Kube, kubelet: Kubelet, namespace: str
) -> None:
    old = await provisioner.create(spec())
    await remove(kube, namespace, old.name)
    await kube.post(pods(namespace), our_pod(old.name))
    await kubelet.run(old.name)
    await provisioner.delete(old)  # 409 (its uid is not the old one's): not ours; no error
    replacement = await kube.get(pods(namespace, old.name))
    assert replacement["metadata"]["uid"] != old.uid
    assert "deletionTimestamp" not in replacement["metadata"]
    await eventually(lambda: by_name(provisioner)[old.name].uid != old.uid)
    await eventually(lambda: by_name(provisioner)[old.name].ready)
    assert not by_name(provisioner)[old.name].deleting


async def test_delete_of_a_pod_already_gone_is_fine(
    provisioner: KubernetesProvisioner, kube: Kube, namespace: str
) -> None:
    created = await provisioner.create(spec())
    await remove(kube, namespace, created.name)
    await provisioner.delete(created)
    await eventually(lambda: provisioner.observed() == [])


# --- pod templates ---------------------------------------------------------------------------


async def test_a_template_is_merged_under_what_the_scheduler_sets(
    make_provisioner: MakeProvisioner, kube: Kube, namespace: str
) -> None:
    await kube.post(
        "/apis/scheduling.k8s.io/v1/priorityclasses",
        {"metadata": {"name": f"{namespace}-batch"}, "value": 1000},
    )
    template = {
        "metadata": {"labels": {"team": "data", "heat.io/runner": "not-this"},
                     "annotations": {"example.com/cost-center": "42"}},
        "spec": {
            "imagePullSecrets": [{"name": "registry-creds"}],
            "nodeSelector": {"pool": "batch"},
            "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": f"{namespace}-batch",
            "terminationGracePeriodSeconds": 120,
            "restartPolicy": "Always",  # the scheduler's own: ignored
            "containers": [
                {"name": "runner", "image": "not-this", "imagePullPolicy": "Always",
                 "env": [{"name": "EXTRA", "value": "1"}, {"name": "HEAT_RUNNER", "value": "x"}],
                 "resources": {"limits": {"cpu": "8"}, "requests": {"ephemeral-storage": "1Gi"}},
                 "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}]},
            ],
            "volumes": [{"name": "models", "emptyDir": {}}],
        },
    }  # fmt: skip
    gpu = {
        "spec": {
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "containers": [{"name": "runner", "resources": {"limits": {"nvidia.com/gpu": "1"}},
                            "securityContext": {"readOnlyRootFilesystem": False}}],
        }
    }  # fmt: skip
    prov = make_provisioner(pod_template=template)
    plain = await kube.get(pods(namespace, (await prov.create(spec())).name))
    with_gpu = await kube.get(pods(namespace, (await prov.create(spec(pod_template=gpu))).name))

    meta, pod_spec = plain["metadata"], plain["spec"]
    assert meta["labels"]["team"] == "data" and meta["labels"]["heat.io/runner"] == "csv-runner"
    assert meta["annotations"]["example.com/cost-center"] == "42"
    assert meta["annotations"]["heat.io/runner"] == "csv-runner"
    assert pod_spec["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert pod_spec["nodeSelector"] == {"pool": "batch"}
    assert pod_spec["priorityClassName"] == f"{namespace}-batch"
    assert pod_spec["priority"] == 1000  # the Priority admission plugin resolved it
    assert pod_spec["terminationGracePeriodSeconds"] == 120
    assert pod_spec["restartPolicy"] == "Never"
    assert [v["name"] for v in pod_spec["volumes"]] == ["scratch", "models"]
    [container] = pod_spec["containers"]
    assert container["image"] == "registry.example/heat/csv-runner:1.2"
    assert container["imagePullPolicy"] == "Always"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EXTRA"] == "1" and env["HEAT_RUNNER"] == "csv-runner"
    assert container["resources"] == {
        "limits": {"cpu": "500m", "memory": "256Mi"},
        "requests": {"cpu": "500m", "memory": "256Mi", "ephemeral-storage": "1Gi"},
    }
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp", "/models"]
    assert container["securityContext"] == RESTRICTED
    # The Runner's own template goes over the file's: its tolerations, its GPU, its rootfs.
    gpu_spec = with_gpu["spec"]
    assert gpu_spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert gpu_spec["nodeSelector"] == {"pool": "batch"}
    [container] = gpu_spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["securityContext"]["readOnlyRootFilesystem"] is False
    assert container["securityContext"]["runAsNonRoot"] is True


async def test_the_restricted_namespace_refuses_a_template_that_breaks_the_standard(
    make_provisioner: MakeProvisioner, cluster: Cluster, kube: Kube
) -> None:
    root = {
        "spec": {
            "securityContext": {"runAsNonRoot": False},
            "containers": [
                {"name": "runner", "securityContext": {"allowPrivilegeEscalation": True}}
            ],
        }
    }
    prov = make_provisioner(pod_template=root)
    with pytest.raises(ProvisionerError) as caught:
        await prov.check_template(spec())
    assert caught.value.status == 403
    assert 'violates PodSecurity "restricted:latest"' in str(caught.value)
    assert "allowPrivilegeEscalation != false" in str(caught.value)
    assert "runAsNonRoot != true" in str(caught.value)
    # Where the deployment allows it (a namespace without enforcement), the Runner may.
    relaxed = await cluster.namespace(restricted=False)
    prov = make_provisioner(pod_template=root, namespace=relaxed)
    await prov.check_template(spec())
    assert await kube.items(pods(relaxed)) == [], "a dry run makes nothing"
    made = await kube.get(pods(relaxed, (await prov.create(spec())).name))
    assert made["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is True


async def test_the_api_names_a_bad_value_of_a_template(make_provisioner: MakeProvisioner) -> None:
    bad = {"spec": {"tolerations": [{"key": "gpu", "operator": "Equalz"}]}}
    with pytest.raises(ProvisionerError) as caught:
        await make_provisioner(pod_template=bad).check_template(spec())
    assert caught.value.status == 422
    assert "spec.tolerations[0].operator" in str(caught.value)


# --- connect ---------------------------------------------------------------------------------


async def test_connect_with_a_kubeconfig(cluster: Cluster, kube: Kube, tmp_path: Path) -> None:
    team_a = await cluster.namespace()
    kubeconfig = cluster.kubeconfig(tmp_path / "config", namespace=team_a)
    prov = await KubernetesProvisioner.connect(
        kubeconfig=str(kubeconfig), context=None, namespace=None, scheduler_name="alpha"
    )
    try:
        await prov.start(Changes())
        created = await prov.create(spec())
        assert await kube.get(pods(team_a, created.name))
    finally:
        await prov.close()
    assert prov.api.rest_client.pool_manager.closed
    explicit = await KubernetesProvisioner.connect(
        kubeconfig=str(kubeconfig), context=None, namespace="ops", scheduler_name="alpha"
    )
    assert explicit.namespace == "ops"
    await explicit.close()


async def test_a_forbidden_user_gets_403(cluster: Cluster, namespace: str) -> None:
    """A ServiceAccount with no Role: the API refuses, and the error says so."""
    async with cluster.kube() as kube:
        await kube.post(path("serviceaccounts", namespace), {"metadata": {"name": "nobody"}})
    token = await cluster.token(namespace, "nobody")
    async with ApiClient(cluster.configuration(token)) as client:
        prov = KubernetesProvisioner(client, namespace=namespace, scheduler_name="alpha")
        with pytest.raises(ProvisionerError) as caught:
            await prov.create(spec())
        assert caught.value.status == 403
        assert f"system:serviceaccount:{namespace}:nobody" in str(caught.value)
        assert 'cannot create resource "pods"' in str(caught.value)
    with pytest.raises(KubeError):  # and it is not a fluke of our client
        async with cluster.kube(token) as kube:
            await kube.get(pods(namespace))


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


async def test_connect_in_cluster(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    """The in-cluster configuration: a service-account folder as Kubernetes mounts it."""
    async with cluster.kube() as kube:
        await kube.post(path("serviceaccounts", namespace), {"metadata": {"name": "sched"}})
    shutil.copy(cluster.ca_file, tmp_path / "ca.crt")
    (tmp_path / "token").write_text(await cluster.token(namespace, "sched"))
    (tmp_path / "namespace").write_text(namespace + "\n")
    host, port = cluster.url.removeprefix("https://").rsplit(":", 1)
    environ = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
    prov = await KubernetesProvisioner.connect(
        kubeconfig=None, context=None, namespace=None, scheduler_name="alpha",
        service_account_dir=str(tmp_path), environ=environ,
    )  # fmt: skip
    try:
        assert prov.namespace == namespace
        assert prov.api.configuration.host == cluster.url
        # Its token is the ServiceAccount's, which has no Role here: the API says who it is.
        with pytest.raises(ProvisionerError, match=f"system:serviceaccount:{namespace}:sched"):
            await prov.has_credential("r")
    finally:
        await prov.close()


async def test_conforms_to_the_port(client: ApiClient) -> None:
    port = _conforms(KubernetesProvisioner(client, namespace="n", scheduler_name="s"))
    assert port.name == "kubernetes"
