"""The access rules on their own: the table's refusals, certificate mappings, given tokens,
and the access service on in-memory fakes (token cache, expiry, revocation, bootstrap)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from scheduler.domain import access
from scheduler.domain.access import (
    GRANTS,
    RULES,
    Identity,
    IdentityKind,
    Permission,
    Presented,
    Role,
)
from scheduler.domain.errors import InvalidArgument, PermissionDenied, Unauthenticated
from scheduler.domain.limits import Limits
from scheduler.service.access import TOKEN_TTL, Access
from tests.unit.fakes import FakeClock, MemoryStore

VIEWER = Identity(IdentityKind.TOKEN, "tk-1", Role.VIEWER)
RUNNER = Identity(IdentityKind.RUNNER_CREDENTIAL, "w", Role.RUNNER, "w")


def test_refusals_say_what_is_needed() -> None:
    method = "heat.scheduler.v1.RegistryService/CreateRunner"
    with pytest.raises(Unauthenticated, match="needs a caller identity"):
        access.authorise(None, method)
    with pytest.raises(PermissionDenied) as denied:
        access.authorise(VIEWER, method)
    assert denied.value.message == (
        "RegistryService/CreateRunner needs the role admin; this caller's role is viewer"
    )
    with pytest.raises(PermissionDenied, match="needs a runner credential"):
        access.authorise(VIEWER, "heat.scheduler.v1.RunnerService/ClaimTask")
    with pytest.raises(PermissionDenied, match="admin or operator or viewer"):
        access.authorise(RUNNER, "heat.scheduler.v1.SessionService/GetSession")
    access.authorise(None, "grpc.health.v1.Health/Check")
    with pytest.raises(PermissionDenied, match="not in the scheduler's access table"):
        access.authorise(access.SYSTEM, "heat.scheduler.v1.RegistryService/Unknown")


def test_every_permission_but_public_is_granted_to_someone_and_admin_has_the_most() -> None:
    for permission in set(RULES.values()) - {Permission.PUBLIC}:
        assert access.needed_roles(permission)
    assert GRANTS[Role.VIEWER] < GRANTS[Role.OPERATOR] < GRANTS[Role.ADMIN]
    assert Permission.RUNNER_PROTOCOL not in GRANTS[Role.ADMIN]


def test_client_roles_map_subjects_and_alternative_names() -> None:
    roles = access.parse_client_roles(" operator:CN=heat-api ; viewer:spiffe://heat/ns/x/sa/y;")
    assert roles == {"CN=heat-api": Role.OPERATOR, "spiffe://heat/ns/x/sa/y": Role.VIEWER}
    found = access.certificate_identity("CN=other", ["spiffe://heat/ns/x/sa/y"], roles)
    assert found == Identity(IdentityKind.CERTIFICATE, "spiffe://heat/ns/x/sa/y", Role.VIEWER)
    assert access.certificate_identity("CN=nobody", [], roles) is None
    for bad in ("CN=x", "runner:CN=x", "root:CN=x", "admin:"):
        with pytest.raises(ValueError, match="ROLE:NAME"):
            access.parse_client_roles(bad)


def test_given_tokens_are_long_visible_and_not_runner_credentials() -> None:
    assert access.check_given_secret("a" * 32) is None
    assert "32 to 512" in (access.check_given_secret("short") or "")
    assert "visible ASCII" in (access.check_given_secret("a b" * 20) or "")
    assert "heatrc_" in (access.check_given_secret("heatrc_" + "a" * 40) or "")


async def _runner_of(secret: str) -> str:
    if secret != "heatrc_w":
        raise Unauthenticated("the runner credential is unknown or revoked")
    return "w"


def rig() -> tuple[Access, MemoryStore, FakeClock]:
    store, clock = MemoryStore(), FakeClock()
    service = Access(
        store,  # type: ignore[arg-type]  # a fake of the slice the access service uses
        clock,
        Limits(),
        runner_of=_runner_of,
        client_roles={"CN=svc": Role.OPERATOR},
    )
    return service, store, clock


async def test_tokens_are_cached_briefly_expire_and_revoke() -> None:
    service, store, clock = rig()
    token = await service.issue_token(
        by=access.SYSTEM, role=Role.VIEWER, description="", ttl=timedelta(hours=1)
    )
    who = await service.authenticate(Presented(bearer=token.secret))
    assert who == Identity(IdentityKind.TOKEN, token.id, Role.VIEWER)
    assert [e.action for e in store.audit.events] == ["issue"]
    await store.access.revoke_token(token.id)  # as another replica would
    assert await service.authenticate(Presented(bearer=token.secret)) == who  # cached
    clock.advance(seconds=TOKEN_TTL.total_seconds() + 1)
    with pytest.raises(Unauthenticated, match="unknown, revoked or expired"):
        await service.authenticate(Presented(bearer=token.secret))
    other = await service.issue_token(
        by=access.SYSTEM, role=Role.ADMIN, description="", ttl=timedelta(minutes=1)
    )
    clock.advance(minutes=2)
    with pytest.raises(Unauthenticated):
        await service.authenticate(Presented(bearer=other.secret))
    with pytest.raises(InvalidArgument) as bad:
        await service.issue_token(
            by=access.SYSTEM, role=Role.RUNNER, description="", ttl=timedelta(days=-1)
        )
    assert {v.field for v in bad.value.violations} == {"role", "ttl"}


async def test_runner_credentials_and_certificates() -> None:
    service, _, _ = rig()
    assert await service.authenticate(Presented(bearer="heatrc_w")) == RUNNER
    assert await service.authenticate(Presented()) is None
    with pytest.raises(Unauthenticated):
        await service.authenticate(Presented(bearer=""))
    by_cert = await service.authenticate(Presented(certificate_subject="CN=svc"))
    assert by_cert is not None and by_cert.role is Role.OPERATOR
    with pytest.raises(Unauthenticated, match="maps to no role"):
        await service.authenticate(Presented(certificate_subject="CN=other"))


async def test_the_bootstrap_token_is_replaced_only_by_another_secret() -> None:
    service, store, _ = rig()
    assert not await service.bootstrap_exists()
    assert (await service.bootstrap("a" * 40, source="file")).changed
    assert not (await service.bootstrap("a" * 40, source="file")).changed
    await store.access.revoke_token(access.BOOTSTRAP_TOKEN_ID)
    assert not (await service.bootstrap("a" * 40, source="file")).changed  # stays revoked
    with pytest.raises(Unauthenticated):
        await service.authenticate(Presented(bearer="a" * 40))
    assert (await service.bootstrap("b" * 40, source="file")).changed
    admin = await service.authenticate(Presented(bearer="b" * 40))
    assert admin is not None and admin.role is Role.ADMIN


async def test_public_methods_look_at_nothing_presented() -> None:
    service, _, _ = rig()
    health = "grpc.health.v1.Health/Check"
    assert await service.admit(health, Presented(bearer="heatat_unknown")) is None
    with pytest.raises(Unauthenticated):
        await service.admit("heat.scheduler.v1.SessionService/GetSession", Presented(bearer="x"))
    runner = await service.admit("heat.scheduler.v1.RunnerService/ClaimTask", Presented("heatrc_w"))
    assert runner == RUNNER
