"""What the services need from the outside world, as protocols the store implements.

The services depend on these protocols only; the app's wiring module hands them the
PostgreSQL store (or, in unit tests, anything else that keeps the promises).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from scheduler.domain.registry import NodeTemplate, Runner, RunnerCredential, SessionTemplate


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
