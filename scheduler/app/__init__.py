"""The wiring: the only module that imports every room and puts the scheduler together."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from heat.scheduler.v1 import (
    access_service_pb2_grpc,
    artifact_service_pb2_grpc,
    registry_service_pb2_grpc,
    runner_service_pb2_grpc,
    session_service_pb2_grpc,
)

from scheduler.app.admin_token import bootstrap_admin
from scheduler.app.backends import (
    advertised,
    artifact_store,
    instance_environment,
    make_provisioner,
)
from scheduler.app.grpc_server import (
    LIVENESS,
    SERVICE_NAMES,
    certificates,
    client_roles,
    connection_options,
    health_server,
    listen,
)
from scheduler.domain.clock import SystemClock
from scheduler.domain.dispatch_order import DispatchPolicy
from scheduler.domain.health import Health
from scheduler.domain.leadership import LeaderView, LeaseSettings
from scheduler.domain.limits import VALIDATION_BUDGET, Limits
from scheduler.domain.ports import Provisioner
from scheduler.embedded import EmbeddedPostgres
from scheduler.service.access import Access
from scheduler.service.artifacts import Artifacts
from scheduler.service.provisioning import ProvisionSettings, Reconciler
from scheduler.service.registry import Registry
from scheduler.service.runner_protocol import ProtocolSettings, RunnerProtocol
from scheduler.service.sessions import Sessions
from scheduler.service.signals import Signals
from scheduler.service.supervisor import SupervisionSettings, Supervisor
from scheduler.settings import Settings, SettingsError, check, parse_weights
from scheduler.store.database import PgStore, migrate_database
from scheduler.store.leadership import LeaseLeadership
from scheduler.store.notifications import Listener
from scheduler.telemetry import SchedulerTelemetry, TelemetryConfig
from scheduler.transport.access import AccessInterceptor, AccessServicer
from scheduler.transport.artifacts import ArtifactServicer
from scheduler.transport.errors import ErrorInterceptor
from scheduler.transport.health import HealthService
from scheduler.transport.registry import RegistryServicer
from scheduler.transport.runner import RunnerServicer
from scheduler.transport.sessions import SessionServicer

__all__ = ["Running", "database", "migrate_database", "running", "serve"]

log = logging.getLogger("scheduler")

EMBEDDED_DATABASE = "heat"
IDLE_MARGIN = timedelta(seconds=5)
EMBEDDED_CONDITION = "embedded PostgreSQL"

DATABASE_CONDITION = "database"


def database_reachable(model: Health, *, up: bool) -> None:
    """The LISTEN connection says whether PostgreSQL can be reached: while it cannot, the
    condition ``database`` takes every service but ``liveness`` NOT_SERVING, so an outage takes
    replicas out of the Service without restarting them."""
    down_before = any(p.name == DATABASE_CONDITION for p in model.problems())
    if up == down_before:
        log.warning("PostgreSQL is %s", "back: ready" if up else "unreachable: not ready")
    model.set(
        DATABASE_CONDITION,
        ok=up,
        reason="" if up else "PostgreSQL cannot be reached (the LISTEN connection is down)",
    )


@dataclass
class Running:
    server: grpc.aio.Server
    port: int
    health: HealthService
    model: Health
    supervisor: Supervisor
    leadership: LeaseLeadership
    store: PgStore
    protocol: RunnerProtocol
    reconciler: Reconciler | None
    access: Access
    telemetry: SchedulerTelemetry
    artifacts: Artifacts
    embedded: EmbeddedPostgres | None


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[str]:
    """The DSN of the configured database, or of an embedded one that lives as long as the block."""
    async with _database(settings) as (dsn, _embedded):
        yield dsn


@asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[tuple[str, EmbeddedPostgres | None]]:
    if settings.database_url:
        yield settings.database_url, None
        return
    embedded = EmbeddedPostgres(settings.data_dir.resolve() / "postgres")
    log.info("starting embedded PostgreSQL", extra={"data_dir": str(embedded.data_dir)})
    async with embedded:
        yield await embedded.database(EMBEDDED_DATABASE), embedded


def replica_name() -> str:
    """This replica's name in leadership and health: the host (a pod's name) and the PID."""
    return f"{socket.gethostname()}:{os.getpid()}"


def lease_settings(settings: Settings) -> LeaseSettings:
    lease = LeaseSettings(
        duration=timedelta(seconds=settings.leader_lease),
        renew_every=timedelta(seconds=settings.leader_renew_interval),
    )
    problem = lease.problem()
    if problem is not None:
        raise SettingsError(
            f"settings leader_lease (--leader-lease / HEAT_LEADER_LEASE) and "
            f"leader_renew_interval (--leader-renew-interval / HEAT_LEADER_RENEW_INTERVAL): "
            f"{problem}"
        )
    return lease


@asynccontextmanager
async def running(
    settings: Settings,
    *,
    provisioner: Provisioner | None = None,
    telemetry: SchedulerTelemetry | None = None,
    supervision: SupervisionSettings | None = None,
) -> AsyncIterator[Running]:
    """The scheduler, serving, for as long as the block runs; stopped gracefully after.

    ``provisioner`` replaces the one the settings name, ``telemetry`` the one the OTEL_*
    environment and the settings configure, ``supervision`` the supervisor's timings (tests
    hand in their own).
    """
    check(settings)
    roles = client_roles(settings)
    tls = certificates(settings)
    if telemetry is None:
        telemetry = SchedulerTelemetry(
            TelemetryConfig.from_env(metrics_listen=settings.metrics_listen)
        )
    lease = lease_settings(settings)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(telemetry.shutdown)  # last: it flushes what others reported
        report = telemetry.reporter
        clock = SystemClock()
        model = Health(SERVICE_NAMES, clock)
        supervisor = Supervisor(model, supervision)
        stack.push_async_callback(supervisor.stop_all)  # whatever is left, last
        dsn, embedded = await stack.enter_async_context(_database(settings))
        await migrate_database(dsn)
        if embedded is not None:
            supervisor.start(
                "embedded postgres",
                lambda: embedded.keep_running(
                    down=lambda why: model.set(EMBEDDED_CONDITION, ok=False, reason=why),
                    up=lambda: model.set(EMBEDDED_CONDITION, ok=True),
                ),
            )
            stack.push_async_callback(supervisor.stop, "embedded postgres")
        limits = Limits(
            max_dag_nodes=settings.max_dag_nodes,
            max_output_bytes=settings.max_output_bytes,
            max_message_bytes=settings.max_message_bytes,
            max_runner_pods=settings.max_runner_pods,
            max_artifact_bytes=settings.max_artifact_bytes,
        )
        artifacts_settings, blobs, sources = await artifact_store(settings, stack)
        policy = dispatch_policy(settings)
        signals = Signals()
        store = await PgStore.open(
            dsn,
            signals,
            max_size=settings.db_pool_size,
            telemetry=report,
            # A request's checks may run inside its transaction for up to their budget.
            idle_limit=max(lease.idle_limit, VALIDATION_BUDGET + IDLE_MARGIN),
            fence_idle_limit=lease.idle_limit,
        )
        stack.push_async_callback(store.close)
        replica = replica_name()

        def seen(view: LeaderView) -> None:
            model.note(f"leader {view.duty.key}", view.describe())

        leadership = LeaseLeadership(dsn, replica, lease, seen=seen)
        protocol = RunnerProtocol(
            store,
            leadership,
            signals,
            clock,
            ProtocolSettings(
                lease_duration=timedelta(seconds=settings.lease_duration),
                heartbeat_interval=timedelta(seconds=settings.heartbeat_interval),
                drain_idle=settings.provisioner != "none",
                dispatch_order=policy,
            ),
            limits,
            supervisor,
            telemetry=report,
        )
        listener = Listener(
            dsn,
            signals,
            on_up=lambda: database_reachable(model, up=True),
            on_down=lambda: database_reachable(model, up=False),
        )
        supervisor.start("postgres listener", listener.run)
        stack.push_async_callback(supervisor.stop, "postgres listener")
        protocol.start()
        stack.push_async_callback(protocol.stop)

        options = [
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            # Two schedulers must not share a port: the second would steal calls silently.
            ("grpc.so_reuseport", 0),
            *connection_options(settings),
        ]
        access = Access(store, clock, limits, runner_of=protocol.authenticate, client_roles=roles)
        await bootstrap_admin(access, settings)
        # Telemetry outermost: its span and status are what the caller sees after the others.
        # Then the error interceptor, so refusals of the access check become statuses.
        server = grpc.aio.server(
            interceptors=[telemetry.interceptor, ErrorInterceptor(), AccessInterceptor(access)],
            options=options,
        )
        registry = Registry(store, limits)
        artifacts = Artifacts(store, blobs, sources, clock, limits, artifacts_settings)
        supervisor.start("artifact janitor", artifacts.run_janitor)
        stack.push_async_callback(supervisor.stop, "artifact janitor")
        registry_service_pb2_grpc.add_RegistryServiceServicer_to_server(
            RegistryServicer(registry, limits), server
        )
        session_service_pb2_grpc.add_SessionServiceServicer_to_server(
            SessionServicer(
                Sessions(
                    store,
                    signals,
                    clock,
                    limits,
                    artifacts,
                    telemetry=report,
                    hand_off=protocol.dispatch,
                    policy=policy,
                ),
                limits,
            ),
            server,
        )
        runner_service_pb2_grpc.add_RunnerServiceServicer_to_server(
            RunnerServicer(protocol, artifacts), server
        )
        artifact_service_pb2_grpc.add_ArtifactServiceServicer_to_server(
            ArtifactServicer(artifacts, limits), server
        )
        access_service_pb2_grpc.add_AccessServiceServicer_to_server(
            AccessServicer(access, limits), server
        )
        health_servicer = HealthService(model, replica)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if settings.reflection_on:
            reflection.enable_server_reflection(
                (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
        port = listen(server, settings.listen, tls)
        await server.start()
        await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        health_servicer.start()  # migrations just reached the database; the listener says otherwise

        health_only = await health_server(settings, health_servicer)

        async def shutdown() -> None:
            signals.close()
            await health_servicer.stop()
            await health_servicer.enter_graceful_shutdown()
            await server.stop(settings.shutdown_grace)
            if health_only is not None:
                await health_only.stop(0)

        stack.push_async_callback(shutdown)
        host = settings.listen.rsplit(":", 1)[0]
        reconciler = None
        if settings.provisioner != "none":
            # Stopped before the server, so local instances can hand their tasks back.
            if provisioner is None:
                provisioner = await make_provisioner(settings)
                close = getattr(provisioner, "close", None)
                if close is not None:
                    stack.push_async_callback(close)
            reconciler = Reconciler(
                store,
                leadership,
                provisioner,
                registry,
                signals,
                clock,
                ProvisionSettings(
                    scheduler_address=settings.advertise_address or advertised(host, port),
                    scheduler_name=settings.scheduler_name,
                    instance_environment=instance_environment(settings),
                ),
                telemetry=report,
            )
            reconciler.start(supervisor)
            stack.push_async_callback(reconciler.stop)
        telemetry.start(store, store.pool_usage)
        stack.push_async_callback(telemetry.stop)  # before the store closes
        if telemetry.metrics_port is not None:
            log.info("serving metrics", extra={"metrics_port": telemetry.metrics_port})
        log.info(
            "serving",
            extra={
                "address": f"{host}:{port}",
                "tls": "mutual" if settings.client_ca else "on" if settings.tls else "off",
                "reflection": "on" if settings.reflection_on else "off",
                "replica": replica,
            },
        )
        yield Running(
            server,
            port,
            health_servicer,
            model,
            supervisor,
            leadership,
            store,
            protocol,
            reconciler,
            access,
            telemetry,
            artifacts,
            embedded,
        )


def dispatch_policy(settings: Settings) -> DispatchPolicy:
    return DispatchPolicy(
        fairness_label=settings.fairness_label,
        weights=parse_weights(settings.fairness_weights),
        priority_ratio=settings.priority_ratio,
        strict_priority=settings.strict_priority,
        critical_path=settings.critical_path,
    )


# The cyclic garbage collector's thresholds for a serving process. Python's (700, 10, 10)
# collect the young generation every 700 new objects: a 100,000-node CreateSession makes about
# a million, and spent half its CPU (0.7-1 s) in 1,300 collections; a settlement of a few
# hundred results pays the same way. Reference counting frees almost everything anyway.
GC_THRESHOLDS: Final = (50_000, 20, 10)


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting and let in-flight calls finish."""
    gc.set_threshold(*GC_THRESHOLDS)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings):
        await stop.wait()
        log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace})
    log.info("stopped")
