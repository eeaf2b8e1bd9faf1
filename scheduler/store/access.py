"""Access tokens and the audit trail in the PostgreSQL store (access.sql)."""

from __future__ import annotations

from collections.abc import Sequence

from scheduler.domain.access import AccessToken, Identity, IdentityKind, Role
from scheduler.domain.audit import AuditEvent, AuditFilter
from scheduler.store.queries import Statements
from scheduler.store.records import Row


def _token_from(row: Row) -> AccessToken:
    return AccessToken(
        id=row["id"],
        role=Role(row["role"]),
        description=row["description"],
        created_by=row["created_by"],
        create_time=row["create_time"],
        expire_time=row["expire_time"],
        revoke_time=row["revoke_time"],
    )


def _event_from(row: Row) -> AuditEvent:
    return AuditEvent(
        actor=Identity(
            IdentityKind(row["actor_kind"]), row["actor_subject"], Role(row["actor_role"])
        ),
        action=row["action"],
        resource=row["resource"],
        name=row["name"],
        detail=row["detail"],
        time=row["time"],
        id=row["id"],
    )


class PgAccess:
    def __init__(self, db: Statements) -> None:
        self._db = db

    async def insert_token(self, token: AccessToken, secret_hash: bytes) -> AccessToken:
        (row,) = await self._db.fetch(
            "insert_token",
            token.id,
            token.role.value,
            secret_hash,
            token.description,
            token.created_by,
            token.expire_time,
        )
        return _token_from(row)

    async def replace_token(
        self, token: AccessToken, secret_hash: bytes, *, replace: bool = True
    ) -> AccessToken | None:
        rows = await self._db.fetch(
            "replace_token" if replace else "insert_token_if_absent",
            token.id,
            token.role.value,
            secret_hash,
            token.description,
            token.created_by,
        )
        return _token_from(rows[0]) if rows else None

    async def list_tokens(self, *, show_revoked: bool) -> list[AccessToken]:
        return [_token_from(r) for r in await self._db.fetch("list_tokens", show_revoked)]

    async def revoke_token(self, token_id: str) -> AccessToken | None:
        rows = await self._db.fetch("revoke_token", token_id)
        return _token_from(rows[0]) if rows else None

    async def token_by_digest(self, secret_hash: bytes) -> AccessToken | None:
        rows = await self._db.fetch("token_by_digest", secret_hash)
        return _token_from(rows[0]) if rows else None

    async def token_digest(self, token_id: str) -> bytes | None:
        rows = await self._db.fetch("token_digest", token_id)
        return bytes(rows[0]["secret_hash"]) if rows else None


class PgAudit:
    """Records events with the transaction's change; ``recorded`` is logged once it commits."""

    def __init__(self, db: Statements) -> None:
        self._db = db
        self.recorded: list[AuditEvent] = []

    async def record(self, events: Sequence[AuditEvent]) -> None:
        if not events:
            return
        await self._db.fetch(
            "record_audit_events",
            [e.actor.kind.value for e in events],
            [e.actor.subject for e in events],
            [e.actor.role.value for e in events],
            [e.action for e in events],
            [e.resource for e in events],
            [e.name for e in events],
            [dict(e.detail) for e in events],
        )
        self.recorded += events

    async def page(self, where: AuditFilter, before: int, limit: int) -> list[AuditEvent]:
        rows = await self._db.fetch(
            "audit_page", before, where.subject, where.resource, where.name, limit
        )
        return [_event_from(r) for r in rows]
