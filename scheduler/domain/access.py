"""Who may call what: caller identities, their roles, and the one table of permissions.

Every call but health checking (and server reflection, where it is on) needs a caller
identity:

- an **access token** the scheduler issued (``heatat_…``; stored as a digest, with a role and
  an optional expiry), sent as ``authorization: Bearer <token>``;
- a **client certificate** (mTLS) whose subject or a subject alternative name is mapped to a
  role by the ``client_roles`` setting;
- a **runner credential** (``heatrc_…``), which may call the runner protocol only, and there
  only for its own Runner (``scheduler.service.runner_protocol.authorisation``).

``RULES`` names the permission every RPC needs and ``GRANTS`` the permissions of each role;
``authorise`` is the only place that reads them. A method missing from the table is refused
(fail closed): a new RPC is callable only once the table names it.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from scheduler.domain.errors import PermissionDenied, Unauthenticated


class Role(enum.Enum):
    ADMIN = "admin"  # everything: registry writes, credentials, tokens, the audit trail
    OPERATOR = "operator"  # create, cancel, reprioritise and watch Sessions; read the registry
    VIEWER = "viewer"  # read-only
    RUNNER = "runner"  # the runner protocol, for its own Runner only


PERSON_ROLES: Final = (Role.ADMIN, Role.OPERATOR, Role.VIEWER)  # what tokens and certs carry


class Permission(enum.Enum):
    PUBLIC = "anyone, without an identity"
    IDENTIFIED = "any caller identity"
    READ = "read the registry and Sessions"
    RUN_SESSIONS = "create, cancel and reprioritise Sessions"
    ADMINISTER = "change the registry, credentials and tokens; read the audit trail"
    RUNNER_PROTOCOL = "the runner protocol"


GRANTS: Final[Mapping[Role, frozenset[Permission]]] = {
    Role.ADMIN: frozenset(
        {Permission.IDENTIFIED, Permission.READ, Permission.RUN_SESSIONS, Permission.ADMINISTER}
    ),
    Role.OPERATOR: frozenset({Permission.IDENTIFIED, Permission.READ, Permission.RUN_SESSIONS}),
    Role.VIEWER: frozenset({Permission.IDENTIFIED, Permission.READ}),
    Role.RUNNER: frozenset({Permission.IDENTIFIED, Permission.RUNNER_PROTOCOL}),
}

_REGISTRY: Final = "heat.scheduler.v1.RegistryService/"
_SESSIONS: Final = "heat.scheduler.v1.SessionService/"
_RUNNERS: Final = "heat.scheduler.v1.RunnerService/"
_ACCESS: Final = "heat.scheduler.v1.AccessService/"
_ARTIFACTS: Final = "heat.scheduler.v1.ArtifactService/"

# The permission each RPC needs, by its full method name. tests/integration/test_access.py
# calls every RPC of the contract as every role and checks the answers against this.
RULES: Final[Mapping[str, Permission]] = {
    "grpc.health.v1.Health/Check": Permission.PUBLIC,
    "grpc.health.v1.Health/Watch": Permission.PUBLIC,
    "grpc.health.v1.Health/List": Permission.PUBLIC,
    # Reflection shows only the public contract; whether it is served at all is a setting
    # (on by default only on loopback).
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Permission.PUBLIC,
    **{
        _REGISTRY + m: Permission.READ
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
        _REGISTRY + m: Permission.ADMINISTER
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
    **{_SESSIONS + m: Permission.READ for m in ("GetSession", "ListSessions", "WatchSession")},
    **{
        _SESSIONS + m: Permission.RUN_SESSIONS
        for m in ("CreateSession", "CancelSession", "CancelNode", "UpdateSession")
    },
    **{
        _RUNNERS + m: Permission.RUNNER_PROTOCOL
        # Reading and writing files also needs the lease of a running attempt of the Runner's.
        for m in ("ClaimTask", "Heartbeat", "PostResult", "ReadArtifact", "WriteArtifact")
    },
    # Uploads are files for new Sessions; what Sessions hold, their readers may read.
    _ARTIFACTS + "UploadArtifact": Permission.RUN_SESSIONS,
    **{
        _ARTIFACTS + m: Permission.READ
        for m in ("GetArtifact", "ListArtifacts", "DownloadArtifact")
    },
    _ACCESS + "GetCaller": Permission.IDENTIFIED,
    **{
        _ACCESS + m: Permission.ADMINISTER
        for m in ("IssueAccessToken", "ListAccessTokens", "RevokeAccessToken", "ListAuditEvents")
    },
}


class IdentityKind(enum.Enum):
    TOKEN = "token"  # noqa: S105 (a kind, not a secret)
    CERTIFICATE = "certificate"
    RUNNER_CREDENTIAL = "runner credential"
    SYSTEM = "system"  # the scheduler acting on its own (provisioning, the bootstrap token)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: ``subject`` is a token id, a certificate's subject or name, a Runner's
    name (for its credentials), or ``scheduler``."""

    kind: IdentityKind
    subject: str
    role: Role
    runner: str = ""  # the Runner of a runner credential

    def __str__(self) -> str:
        return f"{self.kind.value} {self.subject} ({self.role.value})"


SYSTEM: Final = Identity(IdentityKind.SYSTEM, "scheduler", Role.ADMIN)


@dataclass(frozen=True, slots=True)
class Presented:
    """What a call brought to identify its caller (the transport reads it off the call)."""

    bearer: str | None = None
    certificate_subject: str = ""  # e.g. "CN=heat-api,O=heat"
    certificate_names: tuple[str, ...] = ()  # subject alternative names (DNS, URI, IP)


def needed_roles(permission: Permission) -> list[Role]:
    return [role for role in Role if permission in GRANTS[role]]


def _needs(permission: Permission) -> str:
    if permission is Permission.RUNNER_PROTOCOL:
        return "a runner credential (heat-scheduler credentials issue RUNNER)"
    roles = [r.value for r in needed_roles(permission) if r is not Role.RUNNER]
    return "the role " + " or ".join(roles) if len(roles) > 1 else f"the role {roles[0]}"


def is_public(method: str) -> bool:
    """Whether ``method`` needs no identity (nothing a call presents is looked at then)."""
    return RULES.get(method) is Permission.PUBLIC


def authorise(identity: Identity | None, method: str) -> None:
    """Whether ``identity`` may call ``method`` (``package.Service/Method``); raises
    Unauthenticated or PermissionDenied saying what the call needs."""
    short = method.rsplit(".", 1)[-1]
    permission = RULES.get(method)
    if permission is None:
        raise PermissionDenied(f"{short} is not in the scheduler's access table")
    if permission is Permission.PUBLIC:
        return
    if identity is None:
        raise Unauthenticated(
            f"{short} needs a caller identity: send 'authorization: Bearer <token>' (an access "
            "token from heat-scheduler tokens issue) or a client certificate the scheduler maps "
            "to a role"
        )
    if permission not in GRANTS[identity.role]:
        raise PermissionDenied(
            f"{short} needs {_needs(permission)}; this caller's role is {identity.role.value}"
        )


# -- access tokens -----------------------------------------------------------------------------

TOKEN_PREFIX: Final = "heatat_"  # noqa: S105 (a prefix, not a secret)
RUNNER_CREDENTIAL_PREFIX: Final = "heatrc_"
BOOTSTRAP_TOKEN_ID: Final = "tk-bootstrap"  # noqa: S105 (an id, not a secret)
# A token given from outside (a file, a Kubernetes Secret) must be at least this long.
MIN_GIVEN_SECRET: Final = 32
MAX_SECRET: Final = 512


@dataclass(frozen=True, slots=True)
class AccessToken:
    """An operator's or a service's bearer token; ``secret`` is set only when it is issued."""

    id: str
    role: Role
    description: str = ""
    created_by: str = ""
    create_time: datetime | None = None
    expire_time: datetime | None = None
    revoke_time: datetime | None = None
    secret: str = ""

    def usable(self, now: datetime) -> bool:
        return self.revoke_time is None and (self.expire_time is None or now < self.expire_time)


def new_token_id() -> str:
    return "tk-" + secrets.token_hex(8)


def new_token_secret() -> str:
    # The prefix lets secret scanners and operators recognise a leaked token.
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def is_runner_credential(secret: str) -> bool:
    return secret.startswith(RUNNER_CREDENTIAL_PREFIX)


def check_given_secret(secret: str) -> str | None:
    """Why a token given from outside cannot be used (None: it can)."""
    if not MIN_GIVEN_SECRET <= len(secret) <= MAX_SECRET:
        return f"must be {MIN_GIVEN_SECRET} to {MAX_SECRET} characters; it has {len(secret)}"
    if not all("\x21" <= c <= "\x7e" for c in secret):
        return "must be visible ASCII without spaces (it travels in an HTTP/2 header)"
    if is_runner_credential(secret):
        return f"must not start with {RUNNER_CREDENTIAL_PREFIX} (that marks runner credentials)"
    return None


MAX_TOKEN_TTL: Final = timedelta(days=3650)


# -- certificates ----------------------------------------------------------------------------


def parse_client_roles(text: str) -> dict[str, Role]:
    """``ROLE:NAME[;ROLE:NAME…]`` (NAME a certificate subject such as ``CN=heat-api`` or a
    subject alternative name such as ``spiffe://heat/ns/web/sa/api``) into a mapping;
    ValueError saying what is wrong."""
    mapping: dict[str, Role] = {}
    for entry in (e.strip() for e in text.split(";")):
        if not entry:
            continue
        role_text, sep, name = entry.partition(":")
        try:
            role = Role(role_text.strip().lower())
        except ValueError:
            role = None
        if not sep or not name.strip() or role not in PERSON_ROLES:
            raise ValueError(
                f"{entry!r} is not ROLE:NAME with ROLE one of admin, operator, viewer; "
                "e.g. operator:CN=heat-api;viewer:spiffe://heat/ns/web/sa/dashboard"
            )
        mapping[name.strip()] = role
    return mapping


def certificate_identity(
    subject: str, names: Sequence[str], roles: Mapping[str, Role]
) -> Identity | None:
    """The identity a client certificate maps to: its subject first, then its alternative
    names in order; None when the mapping names none of them."""
    for candidate in (subject, *names):
        role = roles.get(candidate)
        if candidate and role is not None:
            return Identity(IdentityKind.CERTIFICATE, candidate, role)
    return None
