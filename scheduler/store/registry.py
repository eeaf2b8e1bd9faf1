"""The registry of the PostgreSQL store (registry.sql): Runners, templates, credentials."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg

from scheduler.domain.dispatch_order import Durations
from scheduler.domain.errors import AlreadyExists, InUse
from scheduler.domain.ports import Changes, RunnerFilter
from scheduler.domain.registry import NodeTemplate, Runner, RunnerCredential, SessionTemplate
from scheduler.store import records
from scheduler.store.queries import Statements

T = TypeVar("T")


def _in_order(
    rows: Sequence[records.Row], names: Sequence[str], build: Callable[[records.Row], T]
) -> list[T]:
    """Rows of a batch statement, in the order of the batch (RETURNING keeps none)."""
    by_name = {row["name"]: build(row) for row in rows}
    return [by_name[name] for name in names]


class PgRegistry:
    def __init__(self, db: Statements, changes: Changes) -> None:
        self._db = db
        self._changes = changes

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self._db.fetch(query, *args)

    async def _write(self, kind: str, query: str, *args: Any) -> list[asyncpg.Record]:
        try:
            return await self._fetch(query, *args)
        except asyncpg.UniqueViolationError as exc:
            # A concurrent writer took the name between our check and our insert.
            raise AlreadyExists(
                kind, str(exc.detail or ""), f"{kind} already exists: {exc.detail}"
            ) from exc
        except asyncpg.ForeignKeyViolationError as exc:
            raise InUse(kind, "", "others", [str(exc.detail or "")]) from exc

    # -- Runners ---------------------------------------------------------------------------

    async def runners_by_name(
        self, names: Sequence[str], *, lock: bool = False
    ) -> dict[str, Runner]:
        if lock:
            await self._fetch("lock_runners", list(names))
        rows = await self._fetch("runners_by_name", list(names))
        return {row["name"]: records.runner_from(row) for row in rows}

    async def all_runners(self) -> list[Runner]:
        return [records.runner_from(r) for r in await self._fetch("all_runners")]

    async def runner_ids_taken(self, ids: Sequence[int]) -> dict[int, str]:
        return {row["id"]: row["name"] for row in await self._fetch("runner_ids_taken", list(ids))}

    async def insert_runners(self, runners: Sequence[Runner]) -> list[Runner]:
        await self._fetch("bump_runner_id_sequence", max((r.id for r in runners), default=0))
        rows = await self._write(
            "runner", "insert_runners", [records.runner_row(r) for r in runners]
        )
        await self._fetch("bump_runner_id_sequence", 0)
        return _in_order(rows, [r.name for r in runners], records.runner_from)

    async def update_runners(self, runners: Sequence[Runner]) -> list[Runner]:
        rows = await self._write(
            "runner", "update_runners", [records.runner_row(r) for r in runners]
        )
        # One of them may have been enabled: its dispatchers look for work again.
        self._changes.ready_runners |= {r.name for r in runners}
        return _in_order(rows, [r.name for r in runners], records.runner_from)

    async def delete_runner(self, name: str) -> bool:
        return bool(await self._write("runner", "delete_runner", name))

    async def list_runners(self, after: str, limit: int, where: RunnerFilter) -> list[Runner]:
        rows = await self._fetch(
            "list_runners", after, limit, where.enabled, where.feature_internal_name
        )
        return [records.runner_from(row) for row in rows]

    # -- Node Templates --------------------------------------------------------------------

    async def node_templates_by_name(
        self, names: Sequence[str], *, lock: bool = False
    ) -> dict[str, NodeTemplate]:
        if lock:
            await self._fetch("lock_node_templates", list(names))
        rows = await self._fetch("node_templates_by_name", list(names))
        return {row["name"]: records.node_template_from(row) for row in rows}

    async def node_templates_of_runner(self, runner: str) -> list[str]:
        return [row["name"] for row in await self._fetch("node_templates_of_runner", runner)]

    async def insert_node_templates(self, templates: Sequence[NodeTemplate]) -> list[NodeTemplate]:
        rows = await self._write(
            "node template",
            "insert_node_templates",
            [records.node_template_row(t) for t in templates],
        )
        return _in_order(rows, [t.name for t in templates], records.node_template_from)

    async def update_node_templates(self, templates: Sequence[NodeTemplate]) -> list[NodeTemplate]:
        rows = await self._write(
            "node template",
            "update_node_templates",
            [records.node_template_row(t) for t in templates],
        )
        return _in_order(rows, [t.name for t in templates], records.node_template_from)

    async def delete_node_template(self, name: str) -> bool:
        return bool(await self._write("node template", "delete_node_template", name))

    async def list_node_templates(self, after: str, limit: int, runner: str) -> list[NodeTemplate]:
        rows = await self._fetch("list_node_templates", after, limit, runner)
        return [records.node_template_from(row) for row in rows]

    async def durations(self, names: Sequence[str]) -> dict[str, Durations]:
        rows = await self._fetch("template_durations", list(names))
        return {
            row["node_template"]: Durations(
                tuple(timedelta(milliseconds=ms) for ms in row["samples_ms"])
            )
            for row in rows
        }

    # -- Session Templates -----------------------------------------------------------------

    async def session_templates_by_name(
        self, names: Sequence[str], *, lock: bool = False
    ) -> dict[str, SessionTemplate]:
        if lock:
            await self._fetch("lock_session_templates", list(names))
        rows = await self._fetch("session_templates_by_name", list(names))
        return {row["name"]: records.session_template_from(row) for row in rows}

    async def session_templates_using(self, node_templates: Sequence[str]) -> list[SessionTemplate]:
        names = [
            row["name"]
            for row in await self._fetch("session_templates_using", list(node_templates))
        ]
        found = await self.session_templates_by_name(names)
        return [found[name] for name in names]

    async def insert_session_templates(
        self, templates: Sequence[SessionTemplate]
    ) -> list[SessionTemplate]:
        rows = [records.session_template_row(t) for t in templates]
        await self._write("session template", "insert_session_templates", rows)
        await self._write("session template", "insert_session_template_nodes", rows)
        return await self._reread(templates)

    async def update_session_templates(
        self, templates: Sequence[SessionTemplate]
    ) -> list[SessionTemplate]:
        rows = [records.session_template_row(t) for t in templates]
        await self._write("session template", "update_session_templates", rows)
        await self._fetch("delete_session_template_nodes", [t.name for t in templates])
        await self._write("session template", "insert_session_template_nodes", rows)
        return await self._reread(templates)

    async def _reread(self, templates: Sequence[SessionTemplate]) -> list[SessionTemplate]:
        found = await self.session_templates_by_name([t.name for t in templates])
        return [found[t.name] for t in templates]

    async def delete_session_template(self, name: str) -> bool:
        return bool(await self._write("session template", "delete_session_template", name))

    async def list_session_templates(
        self, after: str, limit: int, node_template: str
    ) -> list[SessionTemplate]:
        names = [
            row["name"]
            for row in await self._fetch("list_session_templates", after, limit, node_template)
        ]
        found = await self.session_templates_by_name(names)
        return [found[name] for name in names]

    # -- Credentials -----------------------------------------------------------------------

    async def insert_credential(
        self, credential: RunnerCredential, secret_hash: bytes
    ) -> RunnerCredential:
        (row,) = await self._write(
            "runner credential",
            "insert_credential",
            credential.id,
            credential.runner,
            secret_hash,
            credential.description,
        )
        return records.credential_from(row)

    async def list_credentials(self, runner: str, *, show_revoked: bool) -> list[RunnerCredential]:
        return [
            records.credential_from(r)
            for r in await self._fetch("list_credentials", runner, show_revoked)
        ]

    async def revoke_credential(self, credential_id: str) -> RunnerCredential | None:
        rows = await self._fetch("revoke_credential", credential_id)
        return records.credential_from(rows[0]) if rows else None

    async def runner_of_credential(self, secret_hash: bytes) -> str | None:
        rows = await self._fetch("runner_of_credential", secret_hash)
        return rows[0]["runner"] if rows else None
