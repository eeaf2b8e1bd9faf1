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
from pathlib import Path
from typing import TYPE_CHECKING, Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from heat.scheduler.v1 import (
    access_service_pb2,
    access_service_pb2_grpc,
    artifact_service_pb2,
    artifact_service_pb2_grpc,
    registry_service_pb2,
    registry_service_pb2_grpc,
    runner_service_pb2,
    runner_service_pb2_grpc,
    session_service_pb2,
    session_service_pb2_grpc,
)

from scheduler.artifacts.filesystem import FileBlobStore
from scheduler.artifacts.s3 import S3BlobStore, S3Client, S3Config
from scheduler.artifacts.sources import Sources
from scheduler.domain import access as access_rules
from scheduler.domain.artifacts import parse_allowed
from scheduler.domain.clock import SystemClock
from scheduler.domain.dispatch_order import DispatchPolicy
from scheduler.domain.errors import SchedulerError
from scheduler.domain.health import Health
from scheduler.domain.leadership import LeaderView, LeaseSettings
from scheduler.domain.limits import VALIDATION_BUDGET, Limits
from scheduler.domain.ports import BlobStore, Provisioner
from scheduler.domain.provisioning import InstanceSpec
from scheduler.domain.registry import Runner
from scheduler.embedded import EmbeddedPostgres
from scheduler.provisioner.errors import ProvisionerError
from scheduler.provisioner.local import LocalProvisioner
from scheduler.service.access import Access
from scheduler.service.artifacts import Artifacts, ArtifactSettings
from scheduler.service.provisioning import ProvisionSettings, Reconciler
from scheduler.service.registry import Registry
from scheduler.service.runner_protocol import ProtocolSettings, RunnerProtocol
from scheduler.service.sessions import Sessions
from scheduler.service.signals import Signals
from scheduler.service.supervisor import SupervisionSettings, Supervisor
from scheduler.settings import Settings, SettingsError, check, parse_commands, parse_weights
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
from scheduler.transport.tls import CertificateFiles, TlsError

__all__ = ["Running", "database", "migrate_database", "running", "serve"]

if TYPE_CHECKING:
    from scheduler.provisioner.kubernetes import KubernetesProvisioner

log = logging.getLogger("scheduler")

EMBEDDED_DATABASE = "heat"
IDLE_MARGIN = timedelta(seconds=5)
EMBEDDED_CONDITION = "embedded PostgreSQL"
SERVICE_NAMES = (
    registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    session_service_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name,
    runner_service_pb2.DESCRIPTOR.services_by_name["RunnerService"].full_name,
    access_service_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name,
    artifact_service_pb2.DESCRIPTOR.services_by_name["ArtifactService"].full_name,
)


LIVENESS = "liveness"  # SERVING while the process runs: what a liveness probe asks


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
    client_roles = _client_roles(settings)
    certificates = _certificates(settings)
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
        access = Access(
            store, clock, limits, runner_of=protocol.authenticate, client_roles=client_roles
        )
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
        try:
            if certificates is not None:
                port = server.add_secure_port(settings.listen, certificates.credentials())
            else:
                port = server.add_insecure_port(settings.listen)
        except RuntimeError:
            raise SettingsError(
                f"setting listen (--listen / HEAT_LISTEN): cannot listen on {settings.listen}; "
                "the port is taken or the address is not this machine's"
            ) from None
        await server.start()
        await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        health_servicer.start()  # migrations just reached the database; the listener says otherwise

        health_server = await _health_server(settings, health_servicer)

        async def shutdown() -> None:
            signals.close()
            await health_servicer.stop()
            await health_servicer.enter_graceful_shutdown()
            await server.stop(settings.shutdown_grace)
            if health_server is not None:
                await health_server.stop(0)

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


async def _health_server(settings: Settings, servicer: HealthService) -> grpc.aio.Server | None:
    """A plaintext listener with the health service alone (no caller identity is needed for
    it anywhere), for probes that speak no TLS; None unless ``health_listen`` is set."""
    if not settings.health_listen:
        return None
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    try:
        server.add_insecure_port(settings.health_listen)
    except RuntimeError:
        raise SettingsError(
            f"setting health_listen (--health-listen / HEAT_HEALTH_LISTEN): cannot listen on "
            f"{settings.health_listen}; the port is taken or the address is not this machine's"
        ) from None
    await server.start()
    return server


def _client_roles(settings: Settings) -> dict[str, access_rules.Role]:
    try:
        return access_rules.parse_client_roles(settings.client_roles)
    except ValueError as exc:
        raise SettingsError(
            f"setting client_roles (--client-roles / HEAT_CLIENT_ROLES): {exc}"
        ) from None


def _certificates(settings: Settings) -> CertificateFiles | None:
    if not settings.tls:
        return None
    try:
        return CertificateFiles(
            Path(settings.server_cert),
            Path(settings.server_key),
            Path(settings.client_ca) if settings.client_ca else None,
        )
    except TlsError as exc:
        raise SettingsError(f"setting server_cert / server_key / client_ca: {exc}") from None


def instance_environment(settings: Settings) -> tuple[tuple[str, str], ...]:
    """The TLS variables runner instances get: files on this machine for local processes;
    for pods the CA's content (its path means nothing there; a pod's own client certificate
    comes from its pod template)."""
    env: list[tuple[str, str]] = []
    if settings.runner_tls_ca:
        if settings.provisioner == "kubernetes":
            env.append(("HEAT_TLS_CA", Path(settings.runner_tls_ca).read_text()))
        else:
            env.append(("HEAT_TLS_CA", str(Path(settings.runner_tls_ca).resolve())))
    if settings.runner_tls_cert and settings.provisioner != "kubernetes":
        env.append(("HEAT_TLS_CERT", str(Path(settings.runner_tls_cert).resolve())))
        env.append(("HEAT_TLS_KEY", str(Path(settings.runner_tls_key).resolve())))
    return tuple(env)


async def bootstrap_admin(access: Access, settings: Settings) -> None:
    """The first admin identity, without a window where anyone may call as admin.

    - ``admin_token_file`` given (e.g. a mounted Kubernetes Secret): its content is the
      bootstrap admin token; a changed file replaces it (the old one stops working).
    - Otherwise ``data_dir/admin-token``: at the first start on a database (no bootstrap token
      stored yet) a new token is written there, 0600, and the CLI on this machine finds it by
      default. Such a file only ever fills an empty place: a replica starting later on the same
      database (or losing a race to be first) keeps the token that is stored.
    """
    path = settings.admin_token_path()
    given = bool(settings.admin_token_file)
    if path.exists():
        secret = await asyncio.to_thread(_read_token, path)
    elif given:
        raise SettingsError(
            f"setting admin_token_file (--admin-token-file / HEAT_ADMIN_TOKEN_FILE): {path} "
            "does not exist; point it at the file holding the first admin token, or leave it "
            "empty to have one made in the data folder"
        )
    elif await access.bootstrap_exists():
        log.info(
            "the first admin token was made at an earlier start; it is not in %s (issue more "
            "with: heat-scheduler tokens issue --role admin)",
            path,
        )
        return
    else:
        secret = access_rules.new_token_secret()
        await asyncio.to_thread(_write_token, path, secret)
        log.info("wrote the first admin token", extra={"file": str(path)})
    outcome = await access.bootstrap(secret, source=str(path), replace=given)
    if outcome.changed:
        log.info("the first admin token is set", extra={"file": str(path)})
    elif not given and not await access.is_bootstrap(secret):
        log.warning(
            "%s holds no token of this database (its first admin token was made elsewhere); "
            "remove the file, or issue a token with: heat-scheduler tokens issue --role admin",
            path,
        )


def _read_token(path: Path) -> str:
    mode = path.stat().st_mode
    if mode & 0o077 and not path.is_symlink():
        # Kubernetes mounts Secrets through symlinks, with modes of its own choosing.
        log.warning("the admin token file %s may be read by others (mode %o)", path, mode & 0o777)
    secret = path.read_text(encoding="utf-8").strip()
    problem = access_rules.check_given_secret(secret)
    if problem:
        raise SettingsError(
            f"setting admin_token_file (--admin-token-file / HEAT_ADMIN_TOKEN_FILE): the token "
            f"in {path} {problem}"
        )
    return secret


def _write_token(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: never over another token; 0600 from the start, never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secret + "\n")


async def artifact_store(
    settings: Settings, stack: AsyncExitStack
) -> tuple[ArtifactSettings, BlobStore, Sources]:
    """The artefact store the settings name (closed with ``stack``), and the URI reader."""
    try:
        allowed = parse_allowed(settings.artifact_sources)
    except ValueError as error:
        raise SettingsError(
            f"setting artifact_sources (--artifact-sources / HEAT_ARTIFACT_SOURCES): {error}"
        ) from None
    s3 = None
    if settings.s3_endpoint:
        config = s3_config(settings, settings.artifact_store)
        s3 = S3Client.create(config)
        stack.push_async_callback(s3.close)
    blobs: BlobStore
    try:
        if settings.artifact_store.startswith("s3://"):
            blobs = await S3BlobStore.open(s3_config(settings, settings.artifact_store))
        else:
            folder = settings.artifact_store.removeprefix("file://")
            path = Path(folder) if folder else settings.data_dir / "artifacts"
            blobs = await FileBlobStore.open(path.resolve())
    except SchedulerError as error:
        raise SettingsError(
            f"setting artifact_store (--artifact-store / HEAT_ARTIFACT_STORE): {error}"
        ) from None
    stack.push_async_callback(blobs.close)
    retention = settings.artifact_retention
    log.info("artefact store", extra={"store": blobs.description})
    return (
        ArtifactSettings(
            retention=None if retention is None else timedelta(seconds=retention),
            sources=allowed,
        ),
        blobs,
        Sources(allowed, s3),
    )


def s3_config(settings: Settings, store: str) -> S3Config:
    bucket, _, prefix = store.removeprefix("s3://").partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return S3Config(
        endpoint=settings.s3_endpoint,
        bucket=bucket,
        prefix=prefix,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
        session_token=settings.s3_session_token,
    )


def connection_options(settings: Settings) -> list[tuple[str, int]]:
    """Keepalive (dead peers and NAT entries go away) and a maximum connection age (runner
    streams move to new replicas after a rollout: told to go away, they reconnect through the
    Service)."""
    options = [
        # runners keep streams open for hours: let them ping on them every 10 s or more
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if settings.grpc_keepalive_time > 0:
        options += [
            ("grpc.keepalive_time_ms", int(settings.grpc_keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(settings.grpc_keepalive_timeout * 1000)),
        ]
    if settings.grpc_max_connection_age > 0:
        options += [
            ("grpc.max_connection_age_ms", int(settings.grpc_max_connection_age * 1000)),
            (
                "grpc.max_connection_age_grace_ms",
                int(settings.grpc_max_connection_age_grace * 1000),
            ),
        ]
    return options


def dispatch_policy(settings: Settings) -> DispatchPolicy:
    return DispatchPolicy(
        fairness_label=settings.fairness_label,
        weights=parse_weights(settings.fairness_weights),
        priority_ratio=settings.priority_ratio,
        strict_priority=settings.strict_priority,
        critical_path=settings.critical_path,
    )


def advertised(host: str, port: int) -> str:
    """The address instances on this machine dial when we listen on every interface."""
    if host in ("0.0.0.0", "[::]", ""):  # noqa: S104 (compared, not bound)
        host = "127.0.0.1"
    return f"{host}:{port}"


async def make_provisioner(settings: Settings) -> Provisioner:
    if settings.provisioner == "kubernetes":
        from scheduler.provisioner._k8s_template import TemplateError, load_pod_template
        from scheduler.provisioner.kubernetes import KubernetesProvisioner

        template = None
        if settings.k8s_pod_template:
            try:
                template = load_pod_template(Path(settings.k8s_pod_template))
            except TemplateError as exc:
                raise SettingsError(
                    "setting k8s_pod_template (--k8s-pod-template / HEAT_K8S_POD_TEMPLATE): "
                    f"{settings.k8s_pod_template}: {exc}"
                ) from None
        provisioner = await KubernetesProvisioner.connect(
            kubeconfig=settings.kubeconfig or None,
            context=settings.k8s_context or None,
            namespace=settings.k8s_namespace or None,
            scheduler_name=settings.scheduler_name,
            pod_template=template,
        )
        if template:
            try:
                await check_pod_template(provisioner, settings)
            except BaseException:
                await provisioner.close()
                raise
        return provisioner
    return LocalProvisioner(
        parse_commands(settings.local_runners),
        state_dir=settings.data_dir.resolve() / "local-instances" / settings.scheduler_name,
        inherit=[n.strip() for n in settings.local_runner_env.split(",") if n.strip()],
        max_processes=settings.local_max_processes,
    )


async def check_pod_template(provisioner: KubernetesProvisioner, settings: Settings) -> None:
    """Refuse to start when the API will not admit a pod built from the template (its types,
    values, the namespace's Pod Security admission, our permission to create pods); a server
    that does not answer is only logged: the provisioner retries on its own."""
    probe = Runner(
        name="template-check",
        container_image="registry.invalid/heat/template-check:0",
        cpu_limit="100m",
        memory_limit="64Mi",
    )
    spec = InstanceSpec(
        probe, settings.advertise_address or settings.listen, settings.scheduler_name
    )
    try:
        await provisioner.check_template(spec)
    except ProvisionerError as exc:
        if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (408, 429):
            raise SettingsError(
                "setting k8s_pod_template (--k8s-pod-template / HEAT_K8S_POD_TEMPLATE): "
                f"{settings.k8s_pod_template}: the Kubernetes API refuses its pods: {exc}"
            ) from None
        log.warning("could not check the runner pod template with the API: %s", exc)


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
