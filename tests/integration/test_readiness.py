"""Readiness follows PostgreSQL: NOT_SERVING while it is unreachable, SERVING once it is back;
liveness stays SERVING (a database outage takes replicas out of the Service, not down)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scheduler.app.grpc_server import LIVENESS, SERVICE_NAMES
from tests.support import serving

ROOT = Path(__file__).resolve().parents[2]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def next_status(stream: Any, wanted: int) -> None:
    """Read the Watch stream until it says ``wanted`` (the test waits; nothing polls)."""
    async with asyncio.timeout(60):
        while True:
            answer = await stream.read()
            assert answer is not grpc.aio.EOF, "the health stream ended"
            if answer.status == wanted:
                return


class Postgres:
    """tests/integration/postgres_control.py, steered through its stdin."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def line(self) -> str:
        assert self.process.stdout is not None
        async with asyncio.timeout(60):
            return (await self.process.stdout.readline()).decode().strip()

    async def do(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        assert await self.line() == "ok"

    async def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        await self.process.wait()


@contextlib.asynccontextmanager
async def postgres_of_its_own(folder: Path) -> AsyncIterator[tuple[Postgres, str]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.postgres_control", str(folder),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    postgres = Postgres(process)
    try:
        yield postgres, await postgres.line()
    finally:
        await postgres.close()


async def test_readiness_follows_postgresql(open_tmp_path: Path) -> None:
    async with (
        postgres_of_its_own(open_tmp_path / "pg") as (postgres, dsn),
        serving(dsn, shutdown_grace=0.5) as sc,
    ):
        health = health_pb2_grpc.HealthStub(sc.channel)
        overall = health.Watch(health_pb2.HealthCheckRequest(service=""))
        await next_status(overall, SERVING)

        await postgres.do("stop")
        await next_status(overall, NOT_SERVING)
        for name in SERVICE_NAMES:
            answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert answer.status == NOT_SERVING, name
        alive = await health.Check(health_pb2.HealthCheckRequest(service=LIVENESS))
        assert alive.status == SERVING

        await postgres.do("start")  # on the same port
        await next_status(overall, SERVING)
        for name in SERVICE_NAMES:
            answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert answer.status == SERVING, name
        overall.cancel()
