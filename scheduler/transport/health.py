"""grpc.health.v1.Health, following the health model (``scheduler.domain.health``).

Statuses change the moment a condition does (Watch streams hear it at once). Every Check
answer carries, as trailing metadata, what an operator asks next (``grpcurl -v`` prints it):

    heat-replica        this replica's name
    heat-leader-<duty>  who leads the duty, its epoch and since when, as this replica knows it
    heat-problem        each failing condition: its name, since when, why
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from scheduler.domain.health import Health

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_MAX_VALUE = 1000


def _value(text: str) -> str:
    """Metadata values are printable ASCII."""
    return _UNPRINTABLE.sub("?", text)[:_MAX_VALUE]


class HealthService(health.aio.HealthServicer):  # type: ignore[misc]  # (no stubs)
    def __init__(self, model: Health, replica: str) -> None:
        super().__init__()
        self._model = model
        self._replica = replica
        self._changed = asyncio.Event()
        self._unsubscribe = model.subscribe(self._changed.set)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Show the model's statuses now and after every change."""
        self._changed.set()
        self._task = asyncio.create_task(self._publish(), name="health")

    async def stop(self) -> None:
        self._unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _publish(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            for service, serving in self._model.statuses().items():
                await self.set(service, SERVING if serving else NOT_SERVING)

    def details(self) -> list[tuple[str, str]]:
        """The trailing metadata of a Check answer."""
        found = [("heat-replica", _value(self._replica))]
        for key, text in self._model.notes().items():
            found.append((f"heat-{key.replace(' ', '-')}", _value(text)))
        for problem in self._model.problems():
            since = problem.since.isoformat(timespec="seconds")
            text = f"{problem.name} (since {since}): {problem.reason}"
            found.append(("heat-problem", _value(text)))
        return found

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        context.set_trailing_metadata(self.details())
        answer: health_pb2.HealthCheckResponse = await super().Check(request, context)
        return answer
