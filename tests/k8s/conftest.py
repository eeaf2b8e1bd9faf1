"""Fixtures: a real kube-apiserver (with etcd) for the session, a fresh namespace per test, the
tests' kubelet on it, and provisioners that talk to it.

The tests that need faults a real server cannot produce on demand (500s, hangs, dropped
connections, a watch that stalls) live in ``faults/``, whose conftest puts the emulator in its
place under the same fixture names.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kubernetes_asyncio.client import ApiClient

from scheduler.provisioner.kubernetes import KubernetesProvisioner
from tests.k8s.cluster import Cluster, k8s_tools, running_cluster
from tests.k8s.helpers import Changes, MakeProvisioner
from tests.k8s.kube import Kube
from tests.k8s.kubelet import Kubelet


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def cluster() -> AsyncIterator[Cluster]:
    """etcd + kube-apiserver, once for the session (about 10 s to start)."""
    tools = k8s_tools()
    folder = Path(tempfile.mkdtemp(prefix="heat-k8s-"))
    try:
        async with running_cluster(folder, tools) as running:
            yield running
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest_asyncio.fixture
async def namespace(cluster: Cluster) -> str:
    """A fresh namespace of this test's own, enforcing the restricted Pod Security Standard."""
    return await cluster.namespace()


@pytest_asyncio.fixture
async def kube(cluster: Cluster) -> AsyncIterator[Kube]:
    """The tests' own client (admin)."""
    async with cluster.kube() as client:
        yield client


@pytest.fixture
def kubelet(kube: Kube, namespace: str) -> Kubelet:
    return Kubelet(kube, namespace)


@pytest_asyncio.fixture
async def client(cluster: Cluster) -> AsyncIterator[ApiClient]:
    async with ApiClient(cluster.configuration()) as api_client:
        yield api_client


@pytest_asyncio.fixture
async def make_provisioner(client: ApiClient, namespace: str) -> AsyncIterator[MakeProvisioner]:
    made: list[KubernetesProvisioner] = []

    def make(scheduler_name: str = "alpha", **kwargs: Any) -> KubernetesProvisioner:
        kwargs.setdefault("namespace", namespace)
        kwargs.setdefault("request_timeout", 5.0)
        provisioner = KubernetesProvisioner(client, scheduler_name=scheduler_name, **kwargs)
        made.append(provisioner)
        return provisioner

    yield make
    for provisioner in made:
        await provisioner.stop()


@pytest.fixture
def changes() -> Changes:
    return Changes()


@pytest_asyncio.fixture
async def provisioner(make_provisioner: MakeProvisioner, changes: Changes) -> KubernetesProvisioner:
    """Scheduler "alpha"'s, started, calling ``changes``."""
    prov = make_provisioner()
    await prov.start(changes)
    return prov
