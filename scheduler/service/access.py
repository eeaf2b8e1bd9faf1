"""Access use cases: who a call's caller is, access tokens, the audit trail, and the first
admin token (the bootstrap).

``authenticate`` turns what a call presented into an identity: a runner credential through the
runner protocol's own check, an access token by its digest (cached briefly, so a revocation
takes effect within ``TOKEN_TTL`` without a query per call), else a client certificate through
the ``client_roles`` mapping. ``authorise`` (the domain's table) then decides.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final

from scheduler.domain import access
from scheduler.domain.access import (
    BOOTSTRAP_TOKEN_ID,
    MAX_TOKEN_TTL,
    PERSON_ROLES,
    SYSTEM,
    AccessToken,
    Identity,
    IdentityKind,
    Presented,
    Role,
)
from scheduler.domain.audit import AuditEvent, AuditFilter
from scheduler.domain.clock import Clock
from scheduler.domain.credentials import digest
from scheduler.domain.errors import FieldViolation, InvalidArgument, NotFound, Unauthenticated
from scheduler.domain.limits import Limits
from scheduler.domain.paging import Page, PageRequest
from scheduler.domain.ports import Store
from scheduler.domain.validation import check_text

log = logging.getLogger(__name__)

# Revocation takes effect within this long, without a query per call.
TOKEN_TTL: Final = timedelta(seconds=10)
_CACHED_MAX: Final = 10_000


@dataclass(frozen=True, slots=True)
class Bootstrapped:
    """The outcome of the bootstrap: whether the stored admin token changed."""

    changed: bool


class Access:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        limits: Limits,
        *,
        runner_of: Callable[[str], Awaitable[str]],
        client_roles: Mapping[str, Role] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._limits = limits
        self._runner_of = runner_of
        self._client_roles = dict(client_roles or {})
        self._tokens: dict[bytes, tuple[AccessToken | None, datetime]] = {}

    # -- who is calling ----------------------------------------------------------------------

    async def authenticate(self, presented: Presented) -> Identity | None:
        """The caller's identity; None when the call presented none. A bearer secret that is
        unknown, revoked or expired is UNAUTHENTICATED (never silently anonymous)."""
        secret = presented.bearer
        if secret is not None:
            if not secret:
                raise Unauthenticated("the authorization header holds no bearer secret")
            if access.is_runner_credential(secret):
                runner = await self._runner_of(secret)
                return Identity(IdentityKind.RUNNER_CREDENTIAL, runner, Role.RUNNER, runner)
            token = await self._token(secret)
            if token is None:
                raise Unauthenticated("the access token is unknown, revoked or expired")
            return Identity(IdentityKind.TOKEN, token.id, token.role)
        if presented.certificate_subject or presented.certificate_names:
            found = access.certificate_identity(
                presented.certificate_subject, presented.certificate_names, self._client_roles
            )
            if found is None:
                raise Unauthenticated(
                    "the client certificate maps to no role: the scheduler's client_roles "
                    "setting names neither its subject nor its alternative names"
                )
            return found
        return None

    async def _token(self, secret: str) -> AccessToken | None:
        hashed = digest(secret)
        now = self._clock.now()
        cached = self._tokens.get(hashed)
        if cached is None or cached[1] < now:
            async with self._store.transaction() as work:
                token = await work.access.token_by_digest(hashed)
            if len(self._tokens) > _CACHED_MAX:
                self._tokens.clear()
            cached = (token, now + TOKEN_TTL)
            self._tokens[hashed] = cached
        token = cached[0]
        return token if token is not None and token.usable(now) else None

    async def admit(self, method: str, presented: Presented) -> Identity | None:
        """The identity of a call of ``method``, if it may make it (else Unauthenticated or
        PermissionDenied saying what it needs). Public methods look at nothing presented."""
        if access.is_public(method):
            return None
        identity = await self.authenticate(presented)
        access.authorise(identity, method)
        return identity

    # -- tokens ------------------------------------------------------------------------------

    async def issue_token(
        self, *, by: Identity, role: Role | None, description: str, ttl: timedelta
    ) -> AccessToken:
        violations = check_text(description, "description", max_len=self._limits.max_description)
        if role not in PERSON_ROLES:
            violations.append(
                FieldViolation("role", "is required: ROLE_ADMIN, ROLE_OPERATOR or ROLE_VIEWER")
            )
        if not timedelta(0) <= ttl <= MAX_TOKEN_TTL:
            violations.append(
                FieldViolation("ttl", f"must be 0 (no expiry) to {MAX_TOKEN_TTL.days} days")
            )
        if violations:
            raise InvalidArgument(violations)
        assert role is not None
        secret = access.new_token_secret()
        now = self._clock.now()
        token = AccessToken(
            id=access.new_token_id(),
            role=role,
            description=description,
            created_by=by.subject,
            expire_time=now + ttl if ttl else None,
        )
        async with self._store.transaction() as work:
            stored = await work.access.insert_token(token, digest(secret))
            await work.audit.record(
                [
                    AuditEvent(
                        by,
                        "issue",
                        "access_token",
                        stored.id,
                        {"role": role.value, "expires": str(stored.expire_time or "never")},
                    )
                ]
            )
        return replace(stored, secret=secret)

    async def list_tokens(self, *, show_revoked: bool) -> list[AccessToken]:
        async with self._store.transaction() as work:
            return await work.access.list_tokens(show_revoked=show_revoked)

    async def revoke_token(self, *, by: Identity, token_id: str) -> AccessToken:
        if not token_id:
            raise InvalidArgument([FieldViolation("id", "is required: a token id (tk-…)")])
        async with self._store.transaction() as work:
            revoked = await work.access.revoke_token(token_id)
            if revoked is None:
                raise NotFound("access token", token_id)
            await work.audit.record([AuditEvent(by, "revoke", "access_token", token_id)])
        self._tokens.clear()  # this replica stops honouring it at once
        return revoked

    # -- the audit trail ---------------------------------------------------------------------

    async def audit(self, where: AuditFilter, page: PageRequest) -> Page[AuditEvent]:
        before = 0
        if page.after:
            if not page.after.isdigit():
                raise InvalidArgument(
                    [FieldViolation("page_token", "is not a token from a previous page")]
                )
            before = int(page.after)
        async with self._store.transaction() as work:
            rows = await work.audit.page(where, before, page.size + 1)
        return Page.of(rows, page.size, lambda e: str(e.id))

    # -- the first admin identity ------------------------------------------------------------

    async def bootstrap(self, secret: str, *, source: str, replace: bool = True) -> Bootstrapped:
        """Make ``secret`` the bootstrap admin token (id ``tk-bootstrap``). The same secret
        again changes nothing (so a revoked bootstrap token stays revoked); another secret
        replaces the old one, which stops working, unless ``replace`` is false (then only a
        database without one takes it: the first of several replicas wins)."""
        problem = access.check_given_secret(secret)
        if problem:
            raise InvalidArgument([FieldViolation("admin token", problem)])
        token = AccessToken(
            id=BOOTSTRAP_TOKEN_ID,
            role=Role.ADMIN,
            description=f"the first admin token ({source})",
            created_by=SYSTEM.subject,
        )
        async with self._store.transaction() as work:
            stored = await work.access.replace_token(token, digest(secret), replace=replace)
            if stored is not None:
                await work.audit.record(
                    [AuditEvent(SYSTEM, "issue", "access_token", stored.id, {"source": source})]
                )
        self._tokens.clear()
        return Bootstrapped(changed=stored is not None)

    async def is_bootstrap(self, secret: str) -> bool:
        """Whether ``secret`` is the stored bootstrap token's (revoked or not)."""
        async with self._store.transaction() as work:
            return await work.access.token_digest(BOOTSTRAP_TOKEN_ID) == digest(secret)

    async def bootstrap_exists(self) -> bool:
        async with self._store.transaction() as work:
            return await work.access.token_digest(BOOTSTRAP_TOKEN_ID) is not None
