"""Who may call what, over real gRPC: every RPC of the contract called as every role and as
nobody, against a table written here (not read from the scheduler's); access tokens (expiry,
revocation); the audit trail; the first admin token."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from heat.scheduler.v1 import (
    access_pb2,
    access_service_pb2,
    artifact_service_pb2,
    registry_service_pb2,
    runner_pb2,
    runner_service_pb2,
    session_pb2,
    session_service_pb2,
)
from heat.scheduler.v1 import access_service_pb2_grpc as apb_grpc
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import registry_service_pb2_grpc as rpb_grpc
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc
from heat.scheduler.v1.node_template_pb2 import NodeTemplate
from heat.scheduler.v1.session_template_pb2 import DagNode

from scheduler.domain.access import RULES
from tests.support import Scheduler, authorized_channel, failure, serving

A, OP, V, R = "admin", "operator", "viewer", "runner"
DAG = spb.CreateSessionRequest(dag=spb.Dag(nodes=[DagNode(key="a", node_template="echo")]))
EVERYONE = frozenset({A, OP, V, R, "nobody"})
PEOPLE = frozenset({A, OP, V})

# Who may call each RPC. Written out here, independently of scheduler.domain.access.RULES.
EXPECTED: dict[str, frozenset[str]] = {
    "grpc.health.v1.Health/Check": EVERYONE,
    "grpc.health.v1.Health/Watch": EVERYONE,
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": EVERYONE,
    **{
        f"heat.scheduler.v1.RegistryService/{m}": PEOPLE
        for m in (
            "GetRunner",
            "ListRunners",
            "GetNodeTemplate",
            "ListNodeTemplates",
            "GetSessionTemplate",
            "ListSessionTemplates",
        )
    },
    **{
        f"heat.scheduler.v1.RegistryService/{m}": frozenset({A})
        for m in (
            "CreateRunner",
            "UpdateRunner",
            "DeleteRunner",
            "CreateNodeTemplate",
            "UpdateNodeTemplate",
            "DeleteNodeTemplate",
            "CreateSessionTemplate",
            "UpdateSessionTemplate",
            "DeleteSessionTemplate",
            "ApplyManifest",
            "IssueRunnerCredential",
            "ListRunnerCredentials",
            "RevokeRunnerCredential",
        )
    },
    **{
        f"heat.scheduler.v1.SessionService/{m}": PEOPLE
        for m in ("GetSession", "ListSessions", "WatchSession")
    },
    **{
        f"heat.scheduler.v1.SessionService/{m}": frozenset({A, OP})
        for m in ("CreateSession", "CancelSession", "CancelNode", "UpdateSession")
    },
    **{
        f"heat.scheduler.v1.RunnerService/{m}": frozenset({R})
        for m in ("ClaimTask", "Heartbeat", "PostResult", "ReadArtifact", "WriteArtifact")
    },
    "heat.scheduler.v1.ArtifactService/UploadArtifact": frozenset({A, OP}),
    **{
        f"heat.scheduler.v1.ArtifactService/{m}": PEOPLE
        for m in ("GetArtifact", "ListArtifacts", "DownloadArtifact")
    },
    "heat.scheduler.v1.AccessService/GetCaller": frozenset({A, OP, V, R}),
    **{
        f"heat.scheduler.v1.AccessService/{m}": frozenset({A})
        for m in (
            "IssueAccessToken",
            "ListAccessTokens",
            "RevokeAccessToken",
            "ListAuditEvents",
        )
    },
}

CONTRACT = [
    registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"],
    session_service_pb2.DESCRIPTOR.services_by_name["SessionService"],
    runner_service_pb2.DESCRIPTOR.services_by_name["RunnerService"],
    access_service_pb2.DESCRIPTOR.services_by_name["AccessService"],
    artifact_service_pb2.DESCRIPTOR.services_by_name["ArtifactService"],
]
OTHERS = [
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
]


def methods() -> list[Any]:
    return [m for service in (*CONTRACT, *OTHERS) for m in service.methods]


def test_the_table_names_every_rpc_of_the_contract() -> None:
    contract = {f"{s.full_name}/{m.name}" for s in CONTRACT for m in s.methods}
    assert contract <= set(EXPECTED), contract - set(EXPECTED)
    assert contract <= set(RULES), contract - set(RULES)
    served = {f"{s.full_name}/{m.name}" for s in (*CONTRACT, *OTHERS) for m in s.methods}
    assert served - {"grpc.health.v1.Health/List"} == set(EXPECTED)


@dataclass
class Callers:
    tokens: dict[str, str]  # role -> bearer secret


@pytest_asyncio.fixture
async def callers(scheduler: Scheduler) -> Callers:
    registry = scheduler.registry
    await registry.CreateRunner(
        rpb.CreateRunnerRequest(
            runner=runner_pb2.Runner(
                name="w", container_image="busybox", cpu_limit="1", memory_limit="64Mi"
            )
        )
    )
    issued = await registry.IssueRunnerCredential(rpb.IssueRunnerCredentialRequest(runner="w"))
    tokens = {R: issued.credential.secret}
    access = apb_grpc.AccessServiceStub(scheduler.channel)
    for role in (A, OP, V):
        token = await access.IssueAccessToken(
            access_service_pb2.IssueAccessTokenRequest(
                role=access_pb2.Role.Value(f"ROLE_{role.upper()}"), description=f"{role} test"
            )
        )
        tokens[role] = token.token.secret
    return Callers(tokens)


async def call(channel: grpc.aio.Channel, method: Any, metadata: Any) -> grpc.StatusCode:
    """Call ``method`` with an empty request (or an empty request stream); its status."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    kwargs = {
        "request_serializer": lambda m: m.SerializeToString(),
        "response_deserializer": response_class.FromString,
    }
    try:
        if method.client_streaming and method.server_streaming:
            duplex = channel.stream_stream(path, **kwargs)(iter(()), metadata=metadata)
            async for _ in duplex:
                break
        elif method.server_streaming:
            stream = channel.unary_stream(path, **kwargs)(request_class(), metadata=metadata)
            async for _ in stream:
                break  # a watch: its first answer is enough
            stream.cancel()
        else:
            await channel.unary_unary(path, **kwargs)(
                request_class(), metadata=metadata, timeout=10
            )
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            text = failure(exc).message
            assert "needs" in text, text  # says what the call needs
        return exc.code()
    return grpc.StatusCode.OK


async def test_every_rpc_as_every_role(scheduler: Scheduler, callers: Callers) -> None:
    assert descriptor_pool.Default().FindServiceByName("heat.scheduler.v1.AccessService")
    outcomes: dict[tuple[str, str], grpc.StatusCode] = {}
    async with grpc.aio.insecure_channel(scheduler.address) as channel:
        for method in methods():
            name = f"{method.containing_service.full_name}/{method.name}"
            if name not in EXPECTED:
                continue
            for who in sorted(EVERYONE):
                metadata = (
                    (("authorization", f"Bearer {callers.tokens[who]}"),)
                    if who in callers.tokens
                    else ()
                )
                outcomes[(name, who)] = await call(channel, method, metadata)
    wrong = []
    for (name, who), code in sorted(outcomes.items()):
        if who in EXPECTED[name]:
            ok = code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
        elif who == "nobody":
            ok = code is grpc.StatusCode.UNAUTHENTICATED
        else:
            ok = code is grpc.StatusCode.PERMISSION_DENIED
        if not ok:
            wrong.append(f"{name} as {who}: {code.name}")
    assert not wrong, "\n".join(wrong)
    assert len(outcomes) == len(EXPECTED) * len(EVERYONE)


async def test_a_refusal_says_what_is_needed_and_shows_no_data(
    scheduler: Scheduler, callers: Callers
) -> None:
    async with authorized_channel(scheduler.address, callers.tokens[A]) as admin:
        await rpb_grpc.RegistryServiceStub(admin).CreateNodeTemplate(
            rpb.CreateNodeTemplateRequest(node_template=NodeTemplate(name="echo", runner="w"))
        )
        created = await spb_grpc.SessionServiceStub(admin).CreateSession(DAG)
    async with authorized_channel(scheduler.address, callers.tokens[V]) as viewer:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await spb_grpc.SessionServiceStub(viewer).CancelSession(
                spb.CancelSessionRequest(name=created.session.name)
            )
    refused = failure(denied.value)
    assert refused.code is grpc.StatusCode.PERMISSION_DENIED
    assert refused.message == (
        "SessionService/CancelSession needs the role admin or operator; "
        "this caller's role is viewer"
    )
    assert refused.reason == "PERMISSION_DENIED"
    async with grpc.aio.insecure_channel(scheduler.address) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await spb_grpc.SessionServiceStub(anonymous).GetSession(
                spb.GetSessionRequest(name=created.session.name)
            )
    assert missing.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in (missing.value.details() or "")
    assert created.session.name not in (missing.value.details() or "")


async def test_tokens_expire_and_revoke(scheduler: Scheduler) -> None:
    access = apb_grpc.AccessServiceStub(scheduler.channel)
    issued = (
        await access.IssueAccessToken(
            access_service_pb2.IssueAccessTokenRequest(
                role=access_pb2.ROLE_VIEWER, ttl=Duration(seconds=3600)
            )
        )
    ).token
    assert issued.secret.startswith("heatat_") and issued.HasField("expire_time")
    async with authorized_channel(scheduler.address, issued.secret) as channel:
        me = await apb_grpc.AccessServiceStub(channel).GetCaller(
            access_service_pb2.GetCallerRequest()
        )
        assert me.caller.subject == issued.id and me.caller.role == access_pb2.ROLE_VIEWER
        listed = await access.ListAccessTokens(access_service_pb2.ListAccessTokensRequest())
        assert issued.id in [t.id for t in listed.tokens]
        assert all(not t.secret for t in listed.tokens)  # never shown again
        await access.RevokeAccessToken(access_service_pb2.RevokeAccessTokenRequest(id=issued.id))
        with pytest.raises(grpc.aio.AioRpcError) as revoked:
            await apb_grpc.AccessServiceStub(channel).GetCaller(
                access_service_pb2.GetCallerRequest()
            )
        assert revoked.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # An expired token: its expiry is in the past by the database's own clock.
    expiring = (
        await access.IssueAccessToken(
            access_service_pb2.IssueAccessTokenRequest(
                role=access_pb2.ROLE_ADMIN, ttl=Duration(seconds=1)
            )
        )
    ).token
    store = scheduler.running.store
    async with store._pool.acquire() as conn:
        await conn.execute(
            "UPDATE access_tokens SET expire_time = now() - interval '1 second' WHERE id = $1",
            expiring.id,
        )
    async with authorized_channel(scheduler.address, expiring.secret) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await apb_grpc.AccessServiceStub(channel).GetCaller(
                access_service_pb2.GetCallerRequest()
            )
        assert expired.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await access.IssueAccessToken(
            access_service_pb2.IssueAccessTokenRequest(role=access_pb2.ROLE_RUNNER)
        )
    assert failure(bad.value).violations.keys() == {"role"}


async def test_changes_are_audited_with_the_caller(scheduler: Scheduler) -> None:
    access = apb_grpc.AccessServiceStub(scheduler.channel)
    operator = (
        await access.IssueAccessToken(
            access_service_pb2.IssueAccessTokenRequest(role=access_pb2.ROLE_OPERATOR)
        )
    ).token
    await scheduler.registry.ApplyManifest(
        rpb.ApplyManifestRequest(
            manifest=rpb.Manifest(
                runners=[
                    runner_pb2.Runner(
                        name="w", container_image="busybox", cpu_limit="1", memory_limit="1Gi"
                    )
                ],
                node_templates=[NodeTemplate(name="echo", runner="w")],
            )
        )
    )
    await scheduler.registry.UpdateRunner(
        rpb.UpdateRunnerRequest(
            runner=runner_pb2.Runner(name="w", enabled=False),
            update_mask=FieldMask(paths=["enabled"]),
        )
    )
    async with authorized_channel(scheduler.address, operator.secret) as channel:
        sessions = spb_grpc.SessionServiceStub(channel)
        created = await sessions.CreateSession(DAG)
        await sessions.UpdateSession(
            spb.UpdateSessionRequest(
                session=session_pb2.Session(name=created.session.name, priority=8),
                update_mask=FieldMask(paths=["priority"]),
            )
        )
        await sessions.CancelSession(spb.CancelSessionRequest(name=created.session.name))
    events = (await access.ListAuditEvents(access_service_pb2.ListAuditEventsRequest())).events
    seen = [(e.caller.subject, e.action, e.resource, e.name) for e in reversed(events)]
    assert seen == [
        ("scheduler", "issue", "access_token", "tk-bootstrap"),
        ("tk-bootstrap", "issue", "access_token", operator.id),
        ("tk-bootstrap", "create", "runner", "w"),
        ("tk-bootstrap", "create", "node_template", "echo"),
        ("tk-bootstrap", "update", "runner", "w"),
        (operator.id, "create", "session", created.session.name),
        (operator.id, "update", "session", created.session.name),
        (operator.id, "cancel", "session", created.session.name),
    ]
    first = events[-1]
    assert first.caller.kind == access_pb2.CALLER_KIND_SYSTEM and first.name == "tk-bootstrap"
    update = next(e for e in events if e.action == "update" and e.resource == "runner")
    assert dict(update.detail) == {"fields": "enabled"}
    moved = next(e for e in events if e.action == "update" and e.resource == "session")
    assert dict(moved.detail) == {"priority": 8, "previous_priority": 5}
    page = await access.ListAuditEvents(
        access_service_pb2.ListAuditEventsRequest(page_size=2, subject=operator.id)
    )
    assert [e.action for e in page.events] == ["cancel", "update"] and page.next_page_token


# -- the first admin token -------------------------------------------------------------------


@pytest_asyncio.fixture
async def data_dir(open_tmp_path: Path) -> AsyncIterator[Path]:
    yield open_tmp_path / "heat-data"


async def whoami(address: str, token: str) -> str:
    async with authorized_channel(address, token) as channel:
        reply = await apb_grpc.AccessServiceStub(channel).GetCaller(
            access_service_pb2.GetCallerRequest()
        )
    return f"{reply.caller.subject}:{access_pb2.Role.Name(reply.caller.role)}"


async def test_the_first_start_writes_an_admin_token_0600_and_later_starts_keep_it(
    db_dsn: str, data_dir: Path
) -> None:
    async with serving(db_dsn, admin_token_file="", data_dir=data_dir) as sc:
        path = data_dir / "admin-token"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        token = path.read_text().strip()
        assert await whoami(sc.address, token) == "tk-bootstrap:ROLE_ADMIN"
        # Revoked, it stays revoked across a restart: the same file is not a new token.
        async with authorized_channel(sc.address, token) as channel:
            await apb_grpc.AccessServiceStub(channel).RevokeAccessToken(
                access_service_pb2.RevokeAccessTokenRequest(id="tk-bootstrap")
            )
    async with serving(db_dsn, admin_token_file="", data_dir=data_dir) as sc:
        with pytest.raises(grpc.aio.AioRpcError) as revoked:
            await whoami(sc.address, token)
        assert revoked.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # Another data folder on the same database writes no second bootstrap token.
    other = data_dir.parent / "other"
    async with serving(db_dsn, admin_token_file="", data_dir=other):
        assert not (other / "admin-token").exists()


async def test_a_token_file_given_by_a_setting_is_the_admin_and_rotates(
    db_dsn: str, open_tmp_path: Path
) -> None:
    secret = open_tmp_path / "secret"
    secret.write_text("a" * 40 + "\n")
    secret.chmod(0o600)
    async with serving(db_dsn, admin_token_file=str(secret)) as sc:
        assert await whoami(sc.address, "a" * 40) == "tk-bootstrap:ROLE_ADMIN"
    secret.write_text("b" * 40)
    async with serving(db_dsn, admin_token_file=str(secret)) as sc:
        assert await whoami(sc.address, "b" * 40) == "tk-bootstrap:ROLE_ADMIN"
        with pytest.raises(grpc.aio.AioRpcError) as old:
            await whoami(sc.address, "a" * 40)
        assert old.value.code() is grpc.StatusCode.UNAUTHENTICATED
    secret.write_text("short")
    with pytest.raises(Exception, match="32 to 512 characters"):
        async with serving(db_dsn, admin_token_file=str(secret)):
            pass
    with pytest.raises(Exception, match="does not exist"):
        async with serving(db_dsn, admin_token_file=str(open_tmp_path / "missing")):
            pass


async def test_reflection_can_be_turned_off(db_dsn: str) -> None:
    async with serving(db_dsn, reflection="off") as sc:
        method = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].methods[0]
        assert await call(sc.channel, method, ()) is grpc.StatusCode.UNIMPLEMENTED


async def test_runners_stay_under_the_operators_ceiling_of_instances(db_dsn: str) -> None:
    async with serving(db_dsn, max_runner_pods=5) as sc:
        for fields in ({"max_pods": 6}, {"min_pods": 6, "max_pods": 6}):
            pods: dict[str, Any] = fields
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await sc.registry.CreateRunner(
                    rpb.CreateRunnerRequest(
                        runner=runner_pb2.Runner(
                            name="w",
                            container_image="busybox",
                            cpu_limit="1",
                            memory_limit="64Mi",
                            **pods,
                        )
                    )
                )
            violations = failure(refused.value).violations
            assert any("at most 5" in v or "0 to 5" in v for v in violations.values()), violations
        await sc.registry.CreateRunner(
            rpb.CreateRunnerRequest(
                runner=runner_pb2.Runner(
                    name="w", container_image="busybox", cpu_limit="1", memory_limit="64Mi",
                    min_pods=5, max_pods=5,
                )
            )
        )  # fmt: skip
