"""The Helm chart: linted, rendered with several values files, accepted by the real API server
(server-side dry run), installed, and its Role exactly what the scheduler uses."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
import yaml
from heat.scheduler.v1 import session_pb2 as s

from scheduler.app.backends import make_provisioner
from scheduler.provisioner._k8s_template import load_pod_template
from scheduler.settings import Settings, SettingsError
from scheduler.store.migrations import available_migrations
from tests import support
from tests.conftest import MakeDb
from tests.integration.test_provisioning import apply, finished, submit
from tests.k8s.chart import (
    CHART,
    RELEASE,
    TEST_VALUES,
    VALUES_FILES,
    HelmError,
    Identity,
    helm,
    install,
    render,
)
from tests.k8s.cluster import Cluster, free_port, running_job_controller
from tests.k8s.helpers import until
from tests.k8s.kube import Kube, KubeError, path
from tests.k8s.kubelet import ProcessKubelet
from tests.k8s.scheduling import node, nodes_sleeping, serving

# Where each kind of the chart lives in the API.
PATHS = {
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
}
# What the Kubernetes provisioner calls (scheduler/provisioner/kubernetes.py), and so the Role.
USED = {
    ("pods", "list"), ("pods", "watch"), ("pods", "create"), ("pods", "delete"),
    ("secrets", "get"), ("secrets", "create"), ("secrets", "update"),
}  # fmt: skip


def ids(files: list[Path]) -> list[str]:
    return [f.name.removesuffix("-values.yaml") for f in files]


async def test_the_chart_lints_strictly_with_each_values_file(cluster: Cluster) -> None:
    assert len(VALUES_FILES) >= 3
    for values in VALUES_FILES:
        out = await helm(cluster, "lint", "--strict", str(CHART), "-f", str(values))
        assert "0 chart(s) failed" in out


async def test_values_the_schema_refuses(cluster: Cluster) -> None:
    with pytest.raises(HelmError, match="replicaCount"):
        await render(cluster, *TEST_VALUES, "--set", "replicaCount=-1")
    with pytest.raises(HelmError, match="logLevel"):
        await render(cluster, *TEST_VALUES, "--set", "config.logLevel=LOUD")
    with pytest.raises(HelmError, match=r"database\.url .* or database\.existingSecret"):
        await render(cluster)


async def test_several_replicas_need_a_store_they_all_see(cluster: Cluster) -> None:
    # Each replica's emptyDir is its own: a runner reaching another replica could not read a file.
    with pytest.raises(HelmError, match=r"artifacts\.store .* or set replicaCount to 1"):
        await render(cluster, *TEST_VALUES, "--set", "replicaCount=2")
    for shared in ("artifacts.store=s3://heat-files", "artifacts.persistentVolumeClaim=files"):
        objects = await render(cluster, *TEST_VALUES, "--set", "replicaCount=2", "--set", shared)
        (deployment,) = (o for o in objects if o["kind"] == "Deployment")
        assert deployment["spec"]["replicas"] == 2


@pytest.mark.parametrize("values", VALUES_FILES, ids=ids(VALUES_FILES))
async def test_the_rendered_objects_are_labelled_and_accepted_by_the_api(
    cluster: Cluster, kube: Kube, namespace: str, values: Path
) -> None:
    runners = await cluster.namespace("runners")
    objects = await render(
        cluster, "--namespace", namespace, "-f", str(values),
        "--set", f"runnerPods.namespace={runners}", "--include-crds",
    )  # fmt: skip
    kinds = sorted(o["kind"] for o in objects)
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap", "Pod"} <= set(kinds)
    if not values.name.startswith("existing-secret"):
        assert {"Job", "Secret", "PodDisruptionBudget"} <= set(kinds)
    for obj in objects:
        labels = obj["metadata"]["labels"]
        where = f"{obj['kind']} {obj['metadata']['name']}"
        assert labels["app.kubernetes.io/name"] == "heat-scheduler", where
        assert labels["app.kubernetes.io/instance"] == RELEASE, where
        assert labels["app.kubernetes.io/managed-by"] == "Helm", where
        assert labels["app.kubernetes.io/version"], where
        # Server-side dry run: validation, defaulting, admission (PodSecurity: restricted).
        url = PATHS[obj["kind"]].format(ns=obj["metadata"].get("namespace") or namespace)
        try:
            await kube.post(url, obj, dryRun="All", fieldValidation="Strict")
        except KubeError as exc:
            raise AssertionError(f"the API refuses {where}: {exc}") from None


async def test_helm_install_creates_the_objects(
    cluster: Cluster, kube: Kube, namespace: str
) -> None:
    await install(cluster, namespace)
    status = await helm(cluster, "status", RELEASE, "-n", namespace, namespace=namespace)
    assert "STATUS: deployed" in status
    assert f"{RELEASE}.{namespace}.svc:50051" in status  # NOTES.txt
    for kind in ("ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget",
                 "Role", "RoleBinding"):  # fmt: skip
        made = await kube.get(PATHS[kind].format(ns=namespace) + f"/{RELEASE}")
        assert made["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    deployment = await kube.get(PATHS["Deployment"].format(ns=namespace) + f"/{RELEASE}")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["grpc"] == {"port": 50051, "service": ""}
    assert container["livenessProbe"]["grpc"] == {"port": 50051, "service": "liveness"}


async def test_helm_runs_the_migrations_hook_and_helm_test_checks_health(
    cluster: Cluster, kube: Kube, namespace: str, make_empty_db: MakeDb, tmp_path: Path
) -> None:
    """With hooks, as a user installs it: the pre-install Job migrates the empty database (the
    Job controller makes its pod, the node runs the image's ``heat-scheduler migrate``), and
    ``helm test``'s pod fails while nothing serves and passes once the scheduler does."""
    dsn = await make_empty_db()
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"database": {"url": dsn}, "insecure": True}))
    [job] = [o for o in await render(cluster, "-f", str(values)) if o["kind"] == "Job"]
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]
    venv = Path(sys.executable).parent  # the image's Python and entrypoint, here
    kubelet = ProcessKubelet(
        kube,
        namespace,
        {image: [str(venv / "heat-scheduler")]},
        {**os.environ, "PATH": f"{venv}:{os.environ.get('PATH', '')}"},
        services={f"{RELEASE}.{namespace}.svc:50051": f"127.0.0.1:{free_port()}"},
    )
    await kubelet.start()
    try:
        async with running_job_controller(cluster):
            await helm(
                cluster, "install", RELEASE, str(CHART), "--namespace", namespace,
                "-f", str(values), "--timeout", "120s", namespace=namespace,
            )  # fmt: skip
        conn = await asyncpg.connect(dsn)
        try:
            applied = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")]
        finally:
            await conn.close()
        assert applied == [m.name for m in available_migrations()]
        [migrator] = [
            p for p in kubelet.seen if p["metadata"]["name"].startswith(job["metadata"]["name"])
        ]
        assert migrator["metadata"]["ownerReferences"][0]["kind"] == "Job"
        assert kubelet.containers[migrator["metadata"]["name"]].exit_code == 0
        assert await kube.items(PATHS["Job"].format(ns=namespace)) == []  # hook-succeeded

        with pytest.raises(HelmError, match="test-health"):
            await helm(cluster, "test", RELEASE, "-n", namespace, namespace=namespace)
        async with support.serving(dsn) as sc:
            kubelet.services[f"{RELEASE}.{namespace}.svc:50051"] = sc.address
            out = await helm(cluster, "test", RELEASE, "-n", namespace, namespace=namespace)
        assert f"TEST SUITE:     {RELEASE}-test-health" in out
        assert "Phase:          Succeeded" in out
    finally:
        await kubelet.close()


async def test_the_role_holds_exactly_the_verbs_the_scheduler_uses(
    cluster: Cluster, kube: Kube, namespace: str, db_dsn: str, tmp_path: Path
) -> None:
    [role] = [o for o in await render(cluster, *TEST_VALUES) if o["kind"] == "Role"]
    granted = {
        (resource, verb)
        for rule in role["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        if rule["apiGroups"] == [""]
    }
    assert granted == USED
    assert all(rule["apiGroups"] == [""] and "resourceNames" not in rule for rule in role["rules"])

    # A scheduler acting as the chart's account does its whole job, and uses all of it.
    identity = await install(cluster, namespace)
    # A Secret without the key: the scheduler replaces it (update), after get and create.
    await kube.post(
        path("secrets", namespace), {"metadata": {"name": "heat-runner-heat-test-w"}, "data": {}}
    )
    async with (
        node(kube, namespace, tmp_path / "worker.log") as kubelet,
        serving(db_dsn, cluster.configuration(identity.token), namespace, free_port()) as sc,
    ):
        await apply(sc, idlePeriod="0.3s")
        done = await finished(sc, await submit(sc, nodes_sleeping(2, 0.1)))
        assert done.state == s.SESSION_STATE_SUCCEEDED
        await until_gone(kube, namespace, kubelet)
    used = audited_use(cluster, identity)
    assert used["denied"] == set(), "the Role was not enough"
    assert used["allowed"] == USED, "the Role grants what the scheduler never uses"


async def until_gone(kube: Kube, namespace: str, kubelet: ProcessKubelet) -> None:
    async def left() -> int:
        return len(await kube.items(path("pods", namespace)))

    await until(left, 0, timeout=10)
    assert kubelet.containers


def audited_use(cluster: Cluster, identity: Identity) -> dict[str, set[tuple[str, str]]]:
    used: dict[str, set[tuple[str, str]]] = {"allowed": set(), "denied": set()}
    for event in cluster.audit(identity.user):
        if event.get("stage") not in ("ResponseStarted", "ResponseComplete"):
            continue
        ref = event.get("objectRef") or {}
        code = int((event.get("responseStatus") or {}).get("code") or 200)
        decision = (event.get("annotations") or {}).get("authorization.k8s.io/decision")
        kind = "denied" if code == 403 or decision == "forbid" else "allowed"
        used[kind].add((ref.get("resource", ""), event["verb"]))
    return used


# --- the runner pod template from the chart, at the scheduler's start ------------------------


@pytest_asyncio.fixture
async def scheduler_kubeconfig(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> AsyncIterator[Path]:
    identity = await install(cluster, namespace)
    yield cluster.kubeconfig(tmp_path / "kubeconfig", namespace=namespace, token=identity.token)


def template_settings(kubeconfig: Path, template: Path) -> Settings:
    return Settings(
        provisioner="kubernetes",
        kubeconfig=str(kubeconfig),
        k8s_pod_template=str(template),
        scheduler_name="heat-test",
    )


async def test_the_charts_pod_template_is_used_at_start(
    cluster: Cluster, scheduler_kubeconfig: Path, tmp_path: Path
) -> None:
    full = next(f for f in VALUES_FILES if f.name.startswith("full"))
    [config] = [
        o
        for o in await render(cluster, "-f", str(full))
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == RELEASE  # (not the dashboard)
    ]
    assert config["data"]["HEAT_K8S_POD_TEMPLATE"] == "/etc/heat-scheduler/pod-template.yaml"
    template = tmp_path / "pod-template.yaml"
    template.write_text(config["data"]["pod-template.yaml"])
    loaded = load_pod_template(template)
    assert loaded["spec"]["nodeSelector"] == {"pool": "heat-runners"}
    # The chart's ServiceAccount may dry-run its pods: the template is checked and accepted.
    loaded["spec"].pop("priorityClassName")  # (no such class in the test cluster)
    template.write_text(yaml.safe_dump(loaded))
    provisioner = await make_provisioner(template_settings(scheduler_kubeconfig, template))
    await provisioner.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ({"spec": {"tolerations": [{"key": "gpu", "operator": "Equalz"}]}},
         'spec.tolerations[0].operator: Unsupported value: "Equalz"'),
        ({"spec": {"containers": [{"name": "runner",
                                   "securityContext": {"allowPrivilegeEscalation": True}}]}},
         'violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false'),
    ],
    ids=["bad-value", "breaks-pod-security"],
)  # fmt: skip
async def test_a_template_the_api_refuses_stops_the_start(
    scheduler_kubeconfig: Path, tmp_path: Path, template: dict[str, Any], words: str
) -> None:
    path_ = tmp_path / "template.yaml"
    path_.write_text(yaml.safe_dump(template))
    with pytest.raises(SettingsError) as caught:
        await make_provisioner(template_settings(scheduler_kubeconfig, path_))
    assert "setting k8s_pod_template" in str(caught.value)
    assert words in str(caught.value)


async def test_a_template_with_an_unknown_field_is_refused_at_start(tmp_path: Path) -> None:
    """Before the API is even asked: a field a PodTemplateSpec does not have."""
    from scheduler import settings

    bad = tmp_path / "template.yaml"
    bad.write_text("spec:\n  containers:\n  - name: runner\n    imagePullPolcy: Always\n")
    config = settings.load(
        {},
        {
            "HEAT_K8S_POD_TEMPLATE": str(bad),
            "HEAT_PROVISIONER": "kubernetes",
            "HEAT_KUBECONFIG": str(tmp_path / "no-kubeconfig"),
        },
    )
    with pytest.raises(SettingsError) as caught:
        await make_provisioner(config)
    assert "HEAT_K8S_POD_TEMPLATE" in str(caught.value)
    assert "spec.containers[0].imagePullPolcy: unknown field (did you mean imagePullPolicy?)" in (
        str(caught.value)
    )
    with pytest.raises(SettingsError, match="is not a file"):
        settings.load({}, {"HEAT_K8S_POD_TEMPLATE": str(tmp_path / "missing.yaml")})


async def test_metrics_a_service_monitor_and_the_dashboard(cluster: Cluster) -> None:
    # Where the cluster knows ServiceMonitors (the Prometheus Operator's), the chart makes one.
    objects = await render(
        cluster, *TEST_VALUES, "--set", "metrics.dashboard.enabled=true",
        "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
    )  # fmt: skip
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    [endpoint] = by_kind["ServiceMonitor", RELEASE]["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    config = by_kind["ConfigMap", RELEASE]["data"]
    assert config["HEAT_METRICS_LISTEN"] == "0.0.0.0:9464"
    ports = {p["name"]: p for p in by_kind["Service", RELEASE]["spec"]["ports"]}
    assert ports["metrics"]["port"] == 9464 and ports["metrics"]["targetPort"] == "metrics"
    dashboard = by_kind["ConfigMap", f"{RELEASE}-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["heat-scheduler.json"])["uid"] == "heat-scheduler"
    # Where it does not, none; and with metrics off, no port either.
    plain = await render(cluster, *TEST_VALUES, "--set", "metrics.enabled=false")
    assert not [o for o in plain if o["kind"] == "ServiceMonitor"]
    [service] = [o for o in plain if o["kind"] == "Service"]
    assert "metrics" not in [p["name"] for p in service["spec"]["ports"]]
