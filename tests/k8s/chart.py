"""The Helm chart (helm/heat-scheduler) in the tests: helm run against the test cluster, and the
scheduler's identity made by installing the chart (its ServiceAccount, Role and RoleBinding) and
asking the API for that account's token (TokenRequest)."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.k8s.cluster import ROOT, Cluster

CHART = ROOT / "helm" / "heat-scheduler"
VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "heat-scheduler"  # the release's full name is the chart's: heat-scheduler
# Needed by the chart; with --no-hooks its Secret (a hook) is not made, and no pod reads it.
TEST_VALUES = [
    "--set", "database.url=postgresql://unused@db.invalid/heat", "--set", "insecure=true",
]  # fmt: skip


class HelmError(Exception):
    pass


async def helm(cluster: Cluster, *args: str, namespace: str = "default") -> str:
    """Run helm against the test cluster; its stdout. HelmError with stderr if it fails."""
    with tempfile.TemporaryDirectory(prefix="heat-helm-") as home:
        kubeconfig = cluster.kubeconfig(Path(home) / "kubeconfig", namespace=namespace)
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": home,
            "HELM_CACHE_HOME": f"{home}/cache",
            "HELM_CONFIG_HOME": f"{home}/config",
            "HELM_DATA_HOME": f"{home}/data",
            "KUBECONFIG": str(kubeconfig),
        }
        process = await asyncio.create_subprocess_exec(
            str(cluster.tools / "helm"), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        out, err = await process.communicate()
    if process.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} failed ({process.returncode}):\n{err.decode()}")
    return out.decode()


async def render(cluster: Cluster, *args: str) -> list[dict[str, Any]]:
    """`helm template` of the chart: its objects."""
    text = await helm(cluster, "template", RELEASE, str(CHART), *args)
    return [doc for doc in yaml.safe_load_all(text) if doc]


@dataclass
class Identity:
    """What the chart made for the scheduler, and the token to act as it."""

    namespace: str
    service_account: str
    token: str

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


async def install(cluster: Cluster, namespace: str, *values: str) -> Identity:
    """`helm install` the chart into ``namespace`` without its hooks (the migration Job: these
    tests migrate their database themselves; the hook's own test runs it), then a token of the
    chart's ServiceAccount from TokenRequest."""
    await helm(
        cluster, "install", RELEASE, str(CHART), "--namespace", namespace, "--no-hooks",
        *TEST_VALUES, *values, namespace=namespace,
    )  # fmt: skip
    return Identity(namespace, RELEASE, await cluster.token(namespace, RELEASE))
