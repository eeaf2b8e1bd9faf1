"""Artefact use cases: uploads, URIs read for a new Session, reads and writes under a task's
lease, downloads, and the janitor that deletes what has expired.

Content never passes through a transaction: a row is inserted ``writing`` (with a deadline),
the content streams into the ``BlobStore`` chunk by chunk, counted and hashed on the way, and
a second transaction marks it ``ready`` with its size and SHA-256. Nothing is held whole in
memory: one chunk at a time (the S3 store buffers one part). Reads hash what the store returns
and end with DATA_LOSS when it is not what was stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from scheduler.domain.access import SYSTEM, Identity
from scheduler.domain.artifacts import (
    Artifact,
    ArtifactState,
    AttemptHolder,
    Content,
    NewArtifact,
    SourceUri,
    Upload,
    Verifier,
    allowed,
    check_upload,
    new_artifact_id,
    parse_name,
    parse_source,
    uri_filename,
)
from scheduler.domain.audit import AuditEvent
from scheduler.domain.clock import Clock
from scheduler.domain.errors import (
    DataLoss,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SchedulerError,
    raise_if,
)
from scheduler.domain.limits import ARTIFACT_CHUNK_BYTES, ARTIFACT_CHUNK_MAX_BYTES, Limits
from scheduler.domain.paging import Page, PageRequest
from scheduler.domain.ports import BlobStore, SourceReader, Store
from scheduler.domain.validation import check_dns_label

log = logging.getLogger(__name__)

_SWEEP_BATCH: Final = 100
_SWEEP_RETRY: Final = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class ArtifactSettings:
    retention: timedelta | None = timedelta(days=7)
    """How long a Session's artefacts outlive its end; None keeps them."""
    unused_upload_ttl: timedelta = timedelta(hours=1)
    """How long an upload waits for a Session to take it (and an unfinished write lasts)."""
    sources: tuple[SourceUri, ...] = ()
    """Where CreateSession may read files by URI; empty: nowhere."""
    sweep_interval: timedelta = timedelta(minutes=5)
    """The janitor looks at least this often (and at the earliest known expiry)."""
    chunk_bytes: int = ARTIFACT_CHUNK_BYTES


@dataclass(slots=True)
class Transfer:
    """An artefact and its content, for a download or a runner's read."""

    artifact: Artifact
    chunks: AsyncGenerator[bytes, None] = field(repr=False)


class Artifacts:
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        sources: SourceReader | None,
        clock: Clock,
        limits: Limits,
        settings: ArtifactSettings,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._sources = sources
        self._clock = clock
        self._limits = limits
        self.settings = settings

    # --- writing ----------------------------------------------------------------------------

    async def upload(
        self, upload: Upload, chunks: AsyncIterator[bytes], by: Identity = SYSTEM
    ) -> Artifact:
        """A caller's file, kept for ``unused_upload_ttl`` unless a Session takes it; the
        upload is audited as ``by``'s."""
        raise_if(check_upload(upload, "upload", max_bytes=self._limits.max_artifact_bytes))
        now = self._clock.now()
        expires = now + self.settings.unused_upload_ttl
        new = NewArtifact(new_artifact_id(), "upload", upload.filename, now, expires)
        return await self._write(new, upload, chunks, expires, by)

    async def import_uri(self, uri: str, field: str) -> Artifact:
        """A copy of the file at ``uri`` (which the settings must allow), as an upload."""
        try:
            source = parse_source(uri)
        except ValueError as error:
            raise InvalidArgument([FieldViolation(field, f"{uri[:200]!r} {error}")]) from None
        if not allowed(source, self.settings.sources) or self._sources is None:
            raise PermissionDenied(
                f"{field}: the scheduler may not read {uri[:200]!r}: setting artifact_sources"
                " does not allow it" + ("" if self.settings.sources else " (it allows nothing)")
            )
        now = self._clock.now()
        expires = now + self.settings.unused_upload_ttl
        new = NewArtifact(new_artifact_id(), uri, uri_filename(source), now, expires)
        chunks = self._sources.read(source, self.settings.chunk_bytes)
        return await self._write(new, Upload(filename=new.filename), chunks, expires)

    async def write_for(
        self, runner: str, attempt_id: str, upload: Upload, chunks: AsyncIterator[bytes]
    ) -> Artifact:
        """A file an attempt returns, stored under the attempt's lease."""
        raise_if(check_upload(upload, "write", max_bytes=self._limits.max_artifact_bytes))
        async with self._store.snapshot() as work:
            holder = await work.artifacts.holder(attempt_id)
        holder = _check_lease(holder, runner, attempt_id)
        now = self._clock.now()
        new = NewArtifact(
            new_artifact_id(),
            "output",
            upload.filename,
            now,
            now + self.settings.unused_upload_ttl,
            session_id=holder.session_id,
            idx=holder.idx,
            attempt=holder.attempt,
        )
        return await self._write(new, upload, chunks, None)

    async def _write(
        self,
        new: NewArtifact,
        upload: Upload,
        chunks: AsyncIterator[bytes],
        expires: datetime | None,
        audited: Identity | None = None,
    ) -> Artifact:
        async with self._store.transaction() as work:
            await work.artifacts.insert(new)
        content = Content(upload, self._limits.max_artifact_bytes)
        writer = await self._blobs.writer(new.id)
        try:
            async for chunk in chunks:
                if len(chunk) > ARTIFACT_CHUNK_MAX_BYTES:
                    raise InvalidArgument(
                        [
                            FieldViolation(
                                "data", f"chunks are at most {ARTIFACT_CHUNK_MAX_BYTES} bytes"
                            )
                        ]
                    )
                content.add(chunk)
                await writer.write(chunk)
            digest = content.finish()
            await writer.commit()
        except BaseException:
            await writer.abort()
            with contextlib.suppress(SchedulerError):
                async with self._store.transaction() as work:
                    await work.artifacts.delete([new.id])
            raise
        async with self._store.transaction() as work:
            artifact = await work.artifacts.ready(new.id, content.size, digest, expires)
            if audited is not None:
                detail = {"filename": artifact.filename, "bytes": artifact.size_bytes}
                await work.audit.record(
                    [AuditEvent(audited, "upload", "artifact", artifact.name, detail)]
                )
        log.info(
            "artefact stored",
            extra={
                "artifact": artifact.name,
                "source": artifact.source[:200],
                "bytes": artifact.size_bytes,
                "session": artifact.session,
            },
        )
        return artifact

    # --- reading ----------------------------------------------------------------------------

    async def get(self, name: str, field: str = "name") -> Artifact:
        artifact_id = parse_name(name, field)
        async with self._store.snapshot() as work:
            found = await work.artifacts.get(artifact_id)
        if found is None or found.state is not ArtifactState.READY:
            raise NotFound("artifact", name)
        return found

    async def list(self, session: str, page: PageRequest) -> Page[Artifact]:
        raise_if(check_dns_label(session, "session"))
        after: tuple[datetime, str] | None = None
        if page.after:
            stamp, _, artifact_id = page.after.rpartition("|")
            try:
                after = (datetime.fromisoformat(stamp), artifact_id)
            except ValueError:
                raise InvalidArgument(
                    [FieldViolation("page_token", "is not a token from a previous page")]
                ) from None
        async with self._store.snapshot() as work:
            found = await work.sessions.get(session, with_nodes=False)
            if found is None:
                raise NotFound("session", session)
            rows = await work.artifacts.page(found.id, after, page.size + 1)
        return Page.of(rows, page.size, lambda a: f"{a.create_time.isoformat()}|{a.id}")

    async def download(self, name: str) -> Transfer:
        artifact = await self.get(name)
        return Transfer(artifact, self._content(artifact))

    async def read_for(self, runner: str, attempt_id: str, name: str) -> Transfer:
        """An artefact of the Session of an attempt the runner holds."""
        artifact_id = parse_name(name, "name")
        async with self._store.snapshot() as work:
            holder = await work.artifacts.holder(attempt_id)
            found = await work.artifacts.get(artifact_id)
        holder = _check_lease(holder, runner, attempt_id)
        if found is None or found.state is not ArtifactState.READY:
            raise NotFound("artifact", name)
        if found.session_id != holder.session_id:
            raise PermissionDenied(
                f"artifact {name} is not a file of the Session of attempt {attempt_id}"
            )
        return Transfer(found, self._content(found))

    async def _content(self, artifact: Artifact) -> AsyncGenerator[bytes, None]:
        verifier = Verifier(artifact)
        try:
            async with contextlib.aclosing(
                self._blobs.read(artifact.id, self.settings.chunk_bytes)
            ) as content:
                async for chunk in content:
                    verifier.add(chunk)
                    yield chunk
        except NotFound:
            raise DataLoss(
                f"artefact {artifact.name}: its content is missing from the artefact store"
            ) from None
        verifier.check()

    # --- retention --------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Delete what has expired (content first, then the row); how many were deleted."""
        deleted = 0
        if self.settings.retention is not None:
            while True:
                async with self._store.transaction() as work:
                    stamped = await work.artifacts.stamp_ended(
                        self.settings.retention, _SWEEP_BATCH
                    )
                if stamped < _SWEEP_BATCH:
                    break
        while True:
            async with self._store.transaction() as work:
                due = await work.artifacts.due(self._clock.now(), _SWEEP_BATCH)
                for artifact_id in due:
                    await self._blobs.delete(artifact_id)
                await work.artifacts.delete(due)
            deleted += len(due)
            if len(due) < _SWEEP_BATCH:
                break
        if deleted:
            log.info("expired artefacts deleted", extra={"artifacts": deleted})
        return deleted

    async def run_janitor(self) -> None:
        """Sweep at the earliest known expiry, and at least every ``sweep_interval``. Every
        replica runs one; each takes the rows the others have not locked."""
        while True:
            try:
                await self.sweep()
                async with self._store.snapshot() as work:
                    at = await work.artifacts.next_expiry()
                now = self._clock.now()
                wait = self.settings.sweep_interval
                if at is not None:
                    wait = min(wait, max(at - now, timedelta(0)))
            except SchedulerError as error:
                log.warning("the artefact janitor failed; trying again: %s", error)
                wait = _SWEEP_RETRY
            except Exception:  # a bug must not stop retention for good: logged, tried again
                log.exception("the artefact janitor failed; trying again")
                wait = _SWEEP_RETRY
            await asyncio.sleep(wait.total_seconds())


def _check_lease(holder: AttemptHolder | None, runner: str, attempt_id: str) -> AttemptHolder:
    """The attempt's node, if the attempt is running and the runner's own."""
    if holder is None or holder.attempt_id != attempt_id:
        raise FailedPrecondition(f"attempt {attempt_id} is unknown: no lease authorises this")
    if holder.runner != runner:
        raise PermissionDenied(f"attempt {attempt_id} belongs to runner {holder.runner!r}")
    if not holder.running:
        raise FailedPrecondition(
            f"attempt {attempt_id} no longer holds its task's lease (it ended, expired or was"
            " cancelled)"
        )
    return holder
