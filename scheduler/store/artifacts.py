"""The artefact rows of the PostgreSQL store (artifacts.sql); their content is the
``BlobStore``'s."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg

from scheduler.domain.artifacts import Artifact, ArtifactState, AttemptHolder, NewArtifact
from scheduler.store.queries import Statements


class PgArtifacts:
    def __init__(self, db: Statements) -> None:
        self._db = db

    async def insert(self, new: NewArtifact) -> None:
        await self._db.fetch(
            "insert_artifact",
            new.id,
            new.session_id,
            new.idx,
            new.attempt,
            new.filename,
            new.source,
            new.create_time,
            new.expire_time,
        )

    async def ready(
        self, artifact_id: str, size_bytes: int, sha256: str, expire_time: datetime | None
    ) -> Artifact:
        (row,) = await self._db.fetch(
            "artifact_ready", artifact_id, size_bytes, sha256, expire_time
        )
        return _artifact(row)

    async def get(self, artifact_id: str) -> Artifact | None:
        rows = await self._db.fetch("artifact_by_id", artifact_id)
        return _artifact(rows[0]) if rows else None

    async def page(
        self, session_id: int, after: tuple[datetime, str] | None, limit: int
    ) -> list[Artifact]:
        rows = await self._db.fetch(
            "session_artifacts",
            session_id,
            after[0] if after else None,
            after[1] if after else None,
            limit,
        )
        return [_artifact(r) for r in rows]

    async def owners(self, artifact_ids: Sequence[str]) -> dict[str, int | None]:
        rows = await self._db.fetch("artifact_owners", list(artifact_ids))
        return {r["id"]: r["session_id"] for r in rows}

    async def attach(self, artifact_ids: Sequence[str], session_id: int) -> list[str]:
        rows = await self._db.fetch("attach_artifacts", list(artifact_ids), session_id)
        return [r["id"] for r in rows]

    async def holder(self, attempt_id: str) -> AttemptHolder | None:
        rows = await self._db.fetch("attempt_holder", attempt_id)
        if not rows:
            return None
        r = rows[0]
        return AttemptHolder(
            session_id=r["session_id"],
            idx=r["idx"],
            attempt=r["attempt"],
            attempt_id=r["attempt_id"],
            runner=r["runner"],
            running=r["running"],
        )

    async def stamp_ended(self, retention: timedelta, limit: int) -> int:
        return len(await self._db.fetch("stamp_ended_artifacts", retention, limit))

    async def due(self, now: datetime, limit: int) -> list[str]:
        return [r["id"] for r in await self._db.fetch("due_artifacts", now, limit)]

    async def delete(self, artifact_ids: Sequence[str]) -> None:
        await self._db.fetch("delete_artifacts", list(artifact_ids))

    async def next_expiry(self) -> datetime | None:
        rows = await self._db.fetch("next_artifact_expiry")
        at: datetime | None = rows[0]["at"]
        return at


def _artifact(row: asyncpg.Record) -> Artifact:
    return Artifact(
        id=row["id"],
        state=ArtifactState(row["state"]),
        source=row["source"],
        create_time=row["create_time"],
        session=row["session_name"] or "",
        session_id=row["session_id"],
        node_key=row["node_key"] or "",
        attempt=row["attempt"] or 0,
        filename=row["filename"],
        size_bytes=row["size_bytes"],
        sha256=row["sha256"],
        expire_time=row["expire_time"],
        session_end_time=row["session_end_time"],
    )
