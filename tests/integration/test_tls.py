"""TLS and mTLS with certificates made for the test: the good path, a certificate of another
CA, expired certificates, a missing client certificate, client certificates mapped to roles,
certificate files replaced while serving, and the runtime, the CLI and a provisioned runner
process speaking TLS."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from heat.scheduler.v1 import access_pb2, session_pb2
from heat.scheduler.v1 import access_service_pb2 as apb
from heat.scheduler.v1 import access_service_pb2_grpc as apb_grpc
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import registry_service_pb2_grpc as rpb_grpc
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc
from heat_runtime import Runtime

from tests.certs import CertificateAuthority, Issued
from tests.support import Scheduler, admin_token, authorized_channel, free_port, serving

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "e2e" / "worker.py"
ROLES = "operator:CN=svc-a;viewer:spiffe://heat/ns/web/sa/dashboard"


@dataclass
class Pki:
    ca: CertificateAuthority
    other_ca: CertificateAuthority
    server: Issued
    client: Issued  # CN=svc-a: operator
    dashboard: Issued  # a SAN mapped to viewer
    stranger: Issued  # signed by our CA, mapped to nothing
    foreign: Issued  # signed by another CA
    expired_client: Issued
    expired_server: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder / "ca")
    other = CertificateAuthority(folder / "other", name="other-ca")
    server: dict[str, Any] = {"dns": ("localhost",), "ips": ("127.0.0.1",)}
    return Pki(
        ca=ca,
        other_ca=other,
        server=ca.issue("localhost", **server),
        client=ca.issue("svc-a", client=True),
        dashboard=ca.issue("dashboard", uris=("spiffe://heat/ns/web/sa/dashboard",), client=True),
        stranger=ca.issue("stranger", client=True),
        foreign=other.issue("svc-a", client=True, file_name="foreign"),
        expired_client=ca.issue("svc-a", client=True, expired=True, file_name="expired-client"),
        expired_server=ca.issue("localhost", expired=True, file_name="expired-server", **server),
    )


def creds(root: CertificateAuthority, client: Issued | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root.cert_pem,
        client.key_pem if client else None,
        client.cert_pem if client else None,
    )


async def caller(
    address: str, credentials: grpc.ChannelCredentials, token: str | None = None
) -> access_pb2.Caller | grpc.StatusCode:
    """Who the scheduler sees on a new connection, or the status the call ended with."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.secure_channel(address, credentials) as channel:
        try:
            reply = await apb_grpc.AccessServiceStub(channel).GetCaller(
                apb.GetCallerRequest(), metadata=metadata, timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return reply.caller


def tls(pki: Pki, server: Issued | None = None) -> dict[str, Any]:
    server = server or pki.server
    return {"server_cert": str(server.cert), "server_key": str(server.key)}


def mtls(pki: Pki) -> dict[str, Any]:
    return {**tls(pki), "client_ca": str(pki.ca.cert), "client_roles": ROLES}


async def test_tls_good_path_wrong_ca_and_plaintext(db_dsn: str, pki: Pki) -> None:
    async with serving(db_dsn, credentials=creds(pki.ca), **tls(pki)) as sc:
        me = await caller(sc.address, creds(pki.ca), admin_token())
        assert isinstance(me, access_pb2.Caller) and me.subject == "tk-bootstrap"
        anonymous = await caller(sc.address, creds(pki.ca))
        assert anonymous is grpc.StatusCode.UNAUTHENTICATED  # TLS is no identity by itself
        assert await caller(sc.address, creds(pki.other_ca), admin_token()) is (
            grpc.StatusCode.UNAVAILABLE
        )
        async with authorized_channel(sc.address) as plaintext:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await apb_grpc.AccessServiceStub(plaintext).GetCaller(
                    apb.GetCallerRequest(), timeout=10
                )
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_an_expired_server_certificate_is_refused(db_dsn: str, pki: Pki) -> None:
    async with serving(db_dsn, **tls(pki, pki.expired_server)) as sc:
        assert await caller(sc.address, creds(pki.ca), admin_token()) is (
            grpc.StatusCode.UNAVAILABLE
        )


async def test_mtls_maps_client_certificates_to_roles(db_dsn: str, pki: Pki) -> None:
    async with serving(db_dsn, credentials=creds(pki.ca, pki.client), **mtls(pki)) as sc:
        a = await caller(sc.address, creds(pki.ca, pki.client))
        assert isinstance(a, access_pb2.Caller)
        assert (a.kind, a.subject, a.role) == (
            access_pb2.CALLER_KIND_CERTIFICATE,
            "CN=svc-a",
            access_pb2.ROLE_OPERATOR,
        )
        dashboard = await caller(sc.address, creds(pki.ca, pki.dashboard))
        assert isinstance(dashboard, access_pb2.Caller)
        assert dashboard.subject == "spiffe://heat/ns/web/sa/dashboard"
        assert dashboard.role == access_pb2.ROLE_VIEWER
        # A token on a certificate's connection: the token decides.
        both = await caller(sc.address, creds(pki.ca, pki.client), admin_token())
        assert isinstance(both, access_pb2.Caller) and both.role == access_pb2.ROLE_ADMIN
        # Ours but mapped to no role: no identity.
        assert await caller(sc.address, creds(pki.ca, pki.stranger)) is (
            grpc.StatusCode.UNAUTHENTICATED
        )
        # No client certificate, one of another CA, an expired one: no connection at all.
        for refused in (None, pki.foreign, pki.expired_client):
            assert await caller(sc.address, creds(pki.ca, refused), admin_token()) is (
                grpc.StatusCode.UNAVAILABLE
            ), refused
        # The operator's certificate may run Sessions but not change the registry.
        async with grpc.aio.secure_channel(sc.address, creds(pki.ca, pki.client)) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await rpb_grpc.RegistryServiceStub(channel).DeleteRunner(
                    rpb.DeleteRunnerRequest(name="w")
                )
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_replaced_certificate_files_are_served_without_a_restart(
    db_dsn: str, pki: Pki, tmp_path: Path
) -> None:
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    cert.write_bytes(pki.server.cert_pem)
    key.write_bytes(pki.server.key_pem)
    async with serving(db_dsn, server_cert=str(cert), server_key=str(key)) as sc:
        assert isinstance(await caller(sc.address, creds(pki.ca), admin_token()), access_pb2.Caller)
        assert await caller(sc.address, creds(pki.other_ca), admin_token()) is (
            grpc.StatusCode.UNAVAILABLE
        )
        renewed = pki.other_ca.issue(
            "localhost", dns=("localhost",), ips=("127.0.0.1",), file_name="renewed"
        )
        key.write_bytes(renewed.key_pem)
        cert.write_bytes(renewed.cert_pem)
        # The next handshake loads the new files.
        assert isinstance(
            await caller(sc.address, creds(pki.other_ca), admin_token()), access_pb2.Caller
        )
        assert await caller(sc.address, creds(pki.ca), admin_token()) is (
            grpc.StatusCode.UNAVAILABLE
        )


MANIFEST = {
    "runners": [{"name": "w", "containerImage": "busybox", "cpuLimit": "1", "memoryLimit": "64Mi"}],
    "nodeTemplates": [{"name": "echo", "runner": "w", "multipleInputs": True}],
}


async def setup(sc: Scheduler) -> str:
    await sc.registry.ApplyManifest(
        json_format.ParseDict({"manifest": MANIFEST}, rpb.ApplyManifestRequest())
    )
    issued = await sc.registry.IssueRunnerCredential(rpb.IssueRunnerCredentialRequest(runner="w"))
    return issued.credential.secret


async def run_session(sc: Scheduler) -> session_pb2.Session:
    sessions = spb_grpc.SessionServiceStub(sc.channel)
    created = await sessions.CreateSession(
        json_format.ParseDict(
            {"dag": {"nodes": [{"key": "a", "nodeTemplate": "echo"}]}}, spb.CreateSessionRequest()
        )
    )
    name = created.session.name
    async with asyncio.timeout(60):
        async for item in sessions.WatchSession(spb.WatchSessionRequest(name=name)):
            state = (
                item.snapshot.state
                if item.WhichOneof("event") == "snapshot"
                else item.session_change.state
                if item.WhichOneof("event") == "session_change"
                else None
            )
            if state in (session_pb2.SESSION_STATE_SUCCEEDED, session_pb2.SESSION_STATE_FAILED):
                break
    return (await sessions.GetSession(spb.GetSessionRequest(name=name))).session


class Echo:
    TEMPLATE_NAME = "echo"

    async def validate(self, inputs: dict[str, Any], config: dict[str, Any]) -> None:
        return None

    async def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
        return {"ok": True}


async def test_the_runtime_speaks_mtls(db_dsn: str, pki: Pki) -> None:
    runner_cert = pki.ca.issue("runner-w", client=True)
    async with serving(db_dsn, credentials=creds(pki.ca, pki.client), **mtls(pki)) as sc:
        secret = await setup(sc)
        runtime = Runtime.from_env(
            env={
                "HEAT_SCHEDULER_ADDRESS": sc.address,
                "HEAT_RUNNER": "w",
                "HEAT_RUNNER_CREDENTIAL": secret,
                "HEAT_TLS_CA": str(pki.ca.cert),
                "HEAT_TLS_CERT": runner_cert.cert_pem.decode(),  # PEM text works as well
                "HEAT_TLS_KEY": str(runner_cert.key),
            }
        )
        runtime.register(Echo())
        served = asyncio.create_task(runtime.serve(handle_signals=False))
        try:
            done = await run_session(sc)
            assert done.state == session_pb2.SESSION_STATE_SUCCEEDED
        finally:
            runtime.drain("test over")
            assert await asyncio.wait_for(served, 10) == 0


async def test_a_provisioned_runner_process_gets_the_tls_files(
    db_dsn: str, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner_cert = pki.ca.issue("runner-w", client=True, file_name="provisioned")
    async with serving(
        db_dsn,
        credentials=creds(pki.ca, pki.client),
        provisioner="local",
        local_runners=f"w={sys.executable} {WORKER}",
        runner_tls_ca=str(pki.ca.cert),
        runner_tls_cert=str(runner_cert.cert),
        runner_tls_key=str(runner_cert.key),
        **mtls(pki),
    ) as sc:
        await setup(sc)
        # The scheduler requires client certificates: the process got its files, or no task
        # could have reached it.
        done = await run_session(sc)
        assert done.state == session_pb2.SESSION_STATE_SUCCEEDED


def test_the_cli_speaks_mtls_and_tls_with_a_token(db_dsn: str, pki: Pki) -> None:
    async def serve_and_ask() -> tuple[subprocess.CompletedProcess[str], ...]:
        async with serving(db_dsn, **mtls(pki)) as sc:
            base = [sys.executable, "-m", "scheduler.cli", "whoami", "--address", sc.address]
            env = {k: v for k, v in os.environ.items() if not k.startswith("HEAT_")}
            env["HEAT_DATA_DIR"] = "/nonexistent"  # no admin token found by default
            tls_args = ["--tls-ca", str(pki.ca.cert)]

            def run(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [*base, *args], capture_output=True, text=True, timeout=30, env=env
                )

            return await asyncio.gather(
                asyncio.to_thread(
                    run, *tls_args, "--tls-cert", str(pki.client.cert), "--tls-key",
                    str(pki.client.key),
                ),
                asyncio.to_thread(
                    run, *tls_args, "--tls-cert", str(pki.client.cert), "--tls-key",
                    str(pki.client.key), "--token", admin_token(),
                ),
                asyncio.to_thread(run, *tls_args),
            )  # fmt: skip

    certificate, token, missing = asyncio.run(serve_and_ask())
    assert certificate.stdout.strip() == "CN=svc-a (certificate), role operator", certificate
    assert token.stdout.strip() == "tk-bootstrap (token), role admin", token
    assert missing.returncode == 1 and "UNAVAILABLE" in missing.stderr


async def test_probes_get_a_plaintext_health_listener_and_nothing_else(
    db_dsn: str, pki: Pki
) -> None:
    health_address = f"127.0.0.1:{free_port()}"
    async with (
        serving(db_dsn, health_listen=health_address, **tls(pki)),
        grpc.aio.insecure_channel(health_address) as channel,
    ):
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as other:
            await apb_grpc.AccessServiceStub(channel).GetCaller(apb.GetCallerRequest(), timeout=10)
        assert other.value.code() is grpc.StatusCode.UNIMPLEMENTED
