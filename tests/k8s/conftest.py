"""Fixtures: an emulated API server over real HTTP, a kubelet, and provisioners on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
import pytest_asyncio
from kubernetes_asyncio.client import ApiClient, Configuration

from scheduler.provisioner.kubernetes import KubernetesProvisioner
from tests.k8s.emulator import ApiServer
from tests.k8s.helpers import NAMESPACE, Changes, MakeProvisioner, Served
from tests.k8s.kubelet import Kubelet


@pytest_asyncio.fixture
async def served() -> AsyncIterator[Served]:
    async with ApiServer() as api, kmock.Server(api) as server:
        try:
            yield Served(api, str(server.url).rstrip("/"))
        finally:
            api.close()
            await asyncio.sleep(0.01)  # let watches and hangs see it
        # An emulator bug is a test failure, not a 500 the client shrugs off.
        assert not api.errors, api.errors


@pytest.fixture
def api(served: Served) -> ApiServer:
    return served.api


@pytest.fixture
def kubelet(api: ApiServer) -> Kubelet:
    return Kubelet(api, NAMESPACE)


@pytest_asyncio.fixture
async def client(served: Served) -> AsyncIterator[ApiClient]:
    async with ApiClient(Configuration(host=served.url)) as api_client:
        yield api_client


@pytest_asyncio.fixture
async def make_provisioner(client: ApiClient) -> AsyncIterator[MakeProvisioner]:
    made: list[KubernetesProvisioner] = []

    def make(scheduler_name: str = "alpha", **kwargs: Any) -> KubernetesProvisioner:
        kwargs.setdefault("namespace", NAMESPACE)
        kwargs.setdefault("request_timeout", 2.0)
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
