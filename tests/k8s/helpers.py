"""Helpers of the Kubernetes tests: specs, a change counter, and waiting for the watch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scheduler.domain.provisioning import InstanceSpec
from scheduler.domain.registry import Runner
from scheduler.provisioner.kubernetes import KubernetesProvisioner
from tests.k8s.emulator import ApiServer

NAMESPACE = "heat"

MakeProvisioner = Callable[..., KubernetesProvisioner]


@dataclass
class Served:
    api: ApiServer
    url: str


@dataclass
class Changes:
    """A ``changed`` callback that counts, and can be awaited."""

    count: int = 0
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self) -> None:
        self.count += 1
        self._event.set()

    def reset(self) -> int:
        count, self.count = self.count, 0
        self._event.clear()
        return count


def runner(name: str = "csv-runner", **kwargs: Any) -> Runner:
    kwargs.setdefault("container_image", "registry.example/heat/csv-runner:1.2")
    kwargs.setdefault("cpu_limit", "500m")
    kwargs.setdefault("memory_limit", "256Mi")
    return Runner(name=name, id=kwargs.pop("id", 7), **kwargs)


def spec(name: str = "csv-runner", scheduler_name: str = "alpha", **kwargs: Any) -> InstanceSpec:
    return InstanceSpec(runner(name, **kwargs), "heat-scheduler.heat.svc:50051", scheduler_name)


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Wait until ``check()`` is truthy (the test waits; the code under test never polls)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {check}")
        await asyncio.sleep(0.01)
