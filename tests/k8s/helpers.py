"""Helpers of the Kubernetes tests: specs, a change counter, and waiting for the watch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from scheduler.domain.provisioning import InstanceSpec
from scheduler.domain.registry import Runner
from scheduler.provisioner.kubernetes import KubernetesProvisioner
from tests.k8s.emulator import ApiServer
from tests.support import eventually

__all__ = [
    "NAMESPACE",
    "Changes",
    "MakeProvisioner",
    "Served",
    "eventually",
    "runner",
    "spec",
    "until",
]

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


async def until(sample: Callable[[], Awaitable[Any]], wanted: Any, timeout: float = 5.0) -> None:
    """Wait until ``await sample()`` gives ``wanted`` (a question to the API, say)."""
    deadline = time.monotonic() + timeout
    while (got := await sample()) != wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"still {got!r}, not {wanted!r}, after {timeout}s: {sample}")
        await asyncio.sleep(0.05)
