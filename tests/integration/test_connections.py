"""Connections: a maximum age (so long runner streams move to new replicas) and keepalive."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scheduler.app import connection_options
from scheduler.settings import Settings
from tests.support import serving


async def test_a_stream_outliving_the_maximum_connection_age_is_moved_off(db_dsn: str) -> None:
    async with serving(
        db_dsn, grpc_max_connection_age=0.5, grpc_max_connection_age_grace=0.5
    ) as sc:
        health = health_pb2_grpc.HealthStub(sc.channel)
        stream = health.Watch(health_pb2.HealthCheckRequest())  # never ends by itself
        first = await stream.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async with asyncio.timeout(30):
                while await stream.read() is not grpc.aio.EOF:
                    pass
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        # The client dials again (through the Service, in a cluster: maybe another replica).
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_connection_options_follow_the_settings() -> None:
    default = dict(connection_options(Settings()))
    assert default["grpc.keepalive_time_ms"] == 30_000
    assert default["grpc.keepalive_timeout_ms"] == 10_000
    assert "grpc.max_connection_age_ms" not in default  # never, unless asked
    assert default["grpc.http2.min_ping_interval_without_data_ms"] == 10_000
    aged = dict(
        connection_options(
            Settings(grpc_keepalive_time=0, grpc_max_connection_age=900,
                     grpc_max_connection_age_grace=60)
        )
    )  # fmt: skip
    assert "grpc.keepalive_time_ms" not in aged
    assert (aged["grpc.max_connection_age_ms"], aged["grpc.max_connection_age_grace_ms"]) == (
        900_000,
        60_000,
    )
