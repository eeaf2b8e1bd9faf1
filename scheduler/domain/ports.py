"""What the services need from the outside world, as protocols the store implements.

The services depend on these protocols only; the app's wiring module hands them the
PostgreSQL store (or, in unit tests, anything else that keeps the promises).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from scheduler.domain.provisioning import InstanceSpec, Observed
from scheduler.domain.registry import NodeTemplate, Runner, RunnerCredential, SessionTemplate
from scheduler.domain.sessions import (
    ClaimedTask,
    HeldNode,
    NewSession,
    NodeError,
    NodeState,
    Session,
    SessionFilter,
    Settled,
    StoredEvent,
)


@dataclass(frozen=True, slots=True)
class RunnerFilter:
    enabled: bool | None = None
    feature_internal_name: str = ""


class RegistryTx(Protocol):
    """One open transaction over the registry. Reads may lock rows for the change at hand."""

    async def runners_by_name(
        self, names: Sequence[str], *, lock: bool = False
    ) -> dict[str, Runner]: ...
    async def runner_ids_taken(self, ids: Sequence[int]) -> dict[int, str]: ...
    async def insert_runners(self, runners: Sequence[Runner]) -> list[Runner]: ...
    async def update_runners(self, runners: Sequence[Runner]) -> list[Runner]: ...
    async def delete_runner(self, name: str) -> bool: ...
    async def list_runners(self, after: str, limit: int, where: RunnerFilter) -> list[Runner]: ...

    async def node_templates_by_name(
        self, names: Sequence[str], *, lock: bool = False
    ) -> dict[str, NodeTemplate]: ...
    async def node_templates_of_runner(self, runner: str) -> list[str]: ...
    async def insert_node_templates(
        self, templates: Sequence[NodeTemplate]
    ) -> list[NodeTemplate]: ...
    async def update_node_templates(
        self, templates: Sequence[NodeTemplate]
    ) -> list[NodeTemplate]: ...
    async def delete_node_template(self, name: str) -> bool: ...
    async def list_node_templates(
        self, after: str, limit: int, runner: str
    ) -> list[NodeTemplate]: ...

    async def session_templates_by_name(
        self, names: Sequence[str], *, lock: bool = False
    ) -> dict[str, SessionTemplate]: ...
    async def session_templates_using(
        self, node_templates: Sequence[str]
    ) -> list[SessionTemplate]: ...
    async def insert_session_templates(
        self, templates: Sequence[SessionTemplate]
    ) -> list[SessionTemplate]: ...
    async def update_session_templates(
        self, templates: Sequence[SessionTemplate]
    ) -> list[SessionTemplate]: ...
    async def delete_session_template(self, name: str) -> bool: ...
    async def list_session_templates(
        self, after: str, limit: int, node_template: str
    ) -> list[SessionTemplate]: ...

    async def insert_credential(
        self, credential: RunnerCredential, secret_hash: bytes
    ) -> RunnerCredential: ...
    async def list_credentials(
        self, runner: str, *, show_revoked: bool
    ) -> list[RunnerCredential]: ...
    async def revoke_credential(self, credential_id: str) -> RunnerCredential | None: ...


class RegistryStore(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[RegistryTx]:
        """A transaction: committed when the block ends normally, rolled back on an exception."""
        ...


class SessionTx(RegistryTx, Protocol):
    """One open transaction over the registry and the Session tables."""

    async def session_by_request_id(self, request_id: str) -> str | None: ...
    async def insert_session(self, new: NewSession, now: datetime) -> int: ...
    async def session(self, name: str, *, with_nodes: bool) -> tuple[int, Session] | None: ...
    async def list_sessions(
        self, where: SessionFilter, after: tuple[datetime, int] | None, limit: int
    ) -> list[tuple[int, Session]]: ...
    async def events_after(self, session_id: int, seq: int, limit: int) -> list[StoredEvent]: ...
    async def node_index(self, session_id: int, key: str) -> tuple[int, NodeState] | None: ...
    async def cancel(
        self, session_id: int, idxs: Sequence[int] | None, now: datetime, reason: str
    ) -> None: ...
    async def notify(self) -> Settled: ...
    async def claim(
        self,
        runner: str,
        templates: Sequence[str] | None,
        owners: Sequence[str],
        lease_deadline: datetime,
        now: datetime,
    ) -> list[ClaimedTask]: ...
    async def held_nodes(
        self, attempt_ids: Sequence[str]
    ) -> dict[str, tuple[HeldNode, list[int]]]: ...
    async def earlier_verdicts(self, attempt_ids: Sequence[str]) -> dict[str, tuple[str, str]]: ...
    async def record_verdicts(
        self, verdicts: Iterable[tuple[HeldNode, str, str]], now: datetime
    ) -> None: ...
    async def settle(
        self,
        settled: Sequence[tuple[HeldNode, NodeState, Any, NodeError | None, datetime | None]],
        downstream: Mapping[str, list[int]],
        now: datetime,
    ) -> None: ...
    async def extend_leases(
        self, runner: str, attempt_ids: Sequence[str], deadline: datetime
    ) -> set[str]: ...
    async def attempt_states(
        self, attempt_ids: Sequence[str]
    ) -> dict[str, tuple[NodeState, datetime | None, str]]: ...
    async def expired_attempts(self, now: datetime, limit: int) -> list[tuple[str, str, int]]: ...
    async def promote_due_retries(self, now: datetime, limit: int) -> int: ...
    async def next_deadline(self) -> datetime | None: ...
    async def runner_of_credential(self, secret_hash: bytes) -> str | None: ...
    async def queued_runners(self) -> list[str]: ...


class Store(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[SessionTx]:
        """A read-write transaction, committed when the block ends normally."""
        ...

    def snapshot(self) -> AbstractAsyncContextManager[SessionTx]:
        """A read-only, repeatable-read transaction: several reads, one point in time."""
        ...

    def leadership(self, key: int) -> AbstractAsyncContextManager[asyncio.Event]:
        """Held while this replica leads; the event is set if leadership is lost."""
        ...


class Provisioner(Protocol):
    """Starts and stops runner instances: Kubernetes pods, local processes, or nothing.

    The observed state is a cache kept current by the backend (a watch, or process exits);
    ``changed`` is called whenever it changes, so the reconciler never polls.
    """

    name: str

    async def start(self, changed: Callable[[], None]) -> None: ...
    async def stop(self) -> None: ...
    def observed(self) -> list[Observed]:
        """Every instance this scheduler's provisioner manages, live or ended."""
        ...

    async def create(self, spec: InstanceSpec) -> Observed: ...
    async def delete(self, instance: Observed) -> None:
        """Delete exactly this instance (by uid); an instance already gone is not an error."""
        ...

    async def has_credential(self, runner: str) -> bool: ...
    async def store_credential(self, runner: str, secret: str) -> None:
        """Keep the Runner's credential where its instances read it (a Secret, the environment)."""
        ...
