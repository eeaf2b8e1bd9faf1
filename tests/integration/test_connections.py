"""Connections: a maximum age (so long runner streams move to new replicas) and keepalive; the
store's pool connections, which go back to the pool with nothing sent after the commit."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scheduler.app.grpc_server import connection_options
from scheduler.domain.errors import NotFound
from scheduler.service.signals import Signals
from scheduler.settings import Settings
from scheduler.store.database import PgStore
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


async def _pool_backends(admin: asyncpg.Connection) -> list[asyncpg.Record]:
    """What each other connection to this database last ran, and whether it is in a
    transaction."""
    return await admin.fetch(
        "SELECT query, state FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend'"
    )


async def test_a_unit_of_work_sends_nothing_after_its_commit(db_dsn: str) -> None:
    store = await PgStore.open(db_dsn, Signals(), max_size=2)
    admin = await asyncpg.connect(db_dsn)
    try:
        async with store.transaction() as work:
            assert await work.registry.runners_by_name(["nobody"]) == {}
        # The connection went back to the pool: its last statement is the COMMIT, not the
        # reset asyncpg sends by default (a round trip before the hand-off's push).
        last = [r["query"] for r in await _pool_backends(admin)]
        assert "COMMIT;" in last
        assert not [q for q in last if "pg_advisory_unlock_all" in q or "RESET ALL" in q]

        # A unit of work that fails leaves no transaction open on the connection it returns.
        with pytest.raises(NotFound):
            async with store.transaction() as work:
                await work.registry.runners_by_name(["nobody"])
                raise NotFound("runner", "nobody")  # a caller's error, mid-transaction
        assert {r["state"] for r in await _pool_backends(admin)} == {"idle"}
        async with store.transaction() as work:
            assert await work.registry.runners_by_name(["nobody"]) == {}
    finally:
        await admin.close()
        await store.close()
