"""The emulated API server (tests/k8s/emulator.py) in the real one's place, for faults the real
server cannot produce on demand: 500s, hangs, dropped connections, stalled and broken watches.

The fixtures keep the names of ``tests/k8s/conftest.py``'s, so the tests read alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import kmock
import pytest
import pytest_asyncio
from kubernetes_asyncio.client import ApiClient, Configuration

from tests.k8s.emulator import ApiServer
from tests.k8s.helpers import NAMESPACE, Served
from tests.k8s.kube import Kube
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
def namespace() -> str:
    return NAMESPACE


@pytest_asyncio.fixture
async def kube(served: Served) -> AsyncIterator[Kube]:
    async with Kube(served.url) as client:
        yield client


@pytest.fixture
def kubelet(kube: Kube) -> Kubelet:
    return Kubelet(kube, NAMESPACE)


@pytest_asyncio.fixture
async def client(served: Served) -> AsyncIterator[ApiClient]:
    async with ApiClient(Configuration(host=served.url)) as api_client:
        yield api_client
