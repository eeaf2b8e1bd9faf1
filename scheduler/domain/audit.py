"""The audit trail: who changed what. Every change a caller makes (registry writes, runner
credentials, access tokens, Sessions created or cancelled) records one event per resource it
touched, in the same transaction as the change, and the store logs each once it commits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from scheduler.domain.access import Identity


@dataclass(frozen=True, slots=True)
class AuditEvent:
    actor: Identity
    action: str  # "create", "update", "delete", "issue", "revoke", "cancel"
    resource: str  # "runner", "node_template", "session_template", "runner_credential", …
    name: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    time: datetime | None = None  # set by the store
    id: int = 0  # set by the store, increasing


@dataclass(frozen=True, slots=True)
class AuditFilter:
    subject: str = ""  # the actor's subject, exactly
    resource: str = ""  # a resource kind
    name: str = ""  # a resource name, exactly
