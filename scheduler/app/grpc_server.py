"""The gRPC server's parts that the settings decide: the services it names in health and
reflection, connection options, TLS certificates, client roles, the plaintext health listener."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2_grpc
from heat.scheduler.v1 import (
    access_service_pb2,
    artifact_service_pb2,
    registry_service_pb2,
    runner_service_pb2,
    session_service_pb2,
)

from scheduler.domain import access as access_rules
from scheduler.settings import Settings, SettingsError
from scheduler.transport.health import HealthService
from scheduler.transport.tls import CertificateFiles, TlsError

SERVICE_NAMES = (
    registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    session_service_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name,
    runner_service_pb2.DESCRIPTOR.services_by_name["RunnerService"].full_name,
    access_service_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name,
    artifact_service_pb2.DESCRIPTOR.services_by_name["ArtifactService"].full_name,
)


LIVENESS = "liveness"  # SERVING while the process runs: what a liveness probe asks


async def health_server(settings: Settings, servicer: HealthService) -> grpc.aio.Server | None:
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


def client_roles(settings: Settings) -> dict[str, access_rules.Role]:
    try:
        return access_rules.parse_client_roles(settings.client_roles)
    except ValueError as exc:
        raise SettingsError(
            f"setting client_roles (--client-roles / HEAT_CLIENT_ROLES): {exc}"
        ) from None


def certificates(settings: Settings) -> CertificateFiles | None:
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


def listen(server: grpc.aio.Server, address: str, tls: CertificateFiles | None) -> int:
    """Bind the server to ``address`` (with TLS when given); the port bound."""
    try:
        if tls is not None:
            return server.add_secure_port(address, tls.credentials())
        return server.add_insecure_port(address)
    except RuntimeError:
        raise SettingsError(
            f"setting listen (--listen / HEAT_LISTEN): cannot listen on {address}; "
            "the port is taken or the address is not this machine's"
        ) from None
