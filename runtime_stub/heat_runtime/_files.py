"""Files between nodes: artefact references in, file contents out, through the scheduler.

A task never carries a file: its inputs hold references, ``{"$artifact": "artifacts/<id>"}``.
``resolve`` replaces each with the content, read in chunks from RunnerService.ReadArtifact
under the attempt's lease and checked against the SHA-256 the scheduler sends first: up to
``inline_file_bytes`` as ``bytes``, larger as a binary file object spooled to a temporary file
(deleted when the attempt ends), so a large file is never held whole in memory.

``store`` does the reverse for what process() returns: ``bytes`` (or a bytearray or
memoryview) and binary file objects anywhere in the outputs are written with
RunnerService.WriteArtifact in chunks and replaced by their references. An object holding the
key ``"$artifact"`` is refused in outputs: only the runtime writes references.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import PurePath
from typing import IO, Any, Final, Protocol

import grpc
import grpc.aio
from heat.scheduler.v1 import artifact_pb2 as apb
from heat.scheduler.v1 import runner_service_pb2 as pb
from heat.scheduler.v1 import runner_service_pb2_grpc as pb_grpc

from heat_runtime._values import NotJsonable

__all__ = [
    "REFERENCE_KEY",
    "AttemptFiles",
    "FileClient",
    "Files",
    "resolve",
    "store",
]

REFERENCE_KEY: Final = "$artifact"
CHUNK_BYTES: Final = 1024 * 1024
_NAME_PREFIX: Final = "artifacts/"

FileContent = bytes | IO[bytes]


class Files(Protocol):
    """An attempt's way to its files (the scheduler's, or the testing kit's memory)."""

    async def fetch(self, name: str) -> FileContent: ...
    async def store(self, content: bytes | memoryview | IO[bytes], path: str) -> str:
        """Keep ``content``; the artefact name to refer to it by."""
        ...


def reference_name(value: Any) -> str | None:
    """The artefact a JSON value refers to, when it is a reference."""
    if isinstance(value, Mapping) and len(value) == 1:
        name = value.get(REFERENCE_KEY)
        if isinstance(name, str) and name.startswith(_NAME_PREFIX):
            return name
    return None


async def resolve(value: Any, files: Files | None) -> Any:
    """``value`` with every artefact reference replaced by the file's content."""
    name = reference_name(value)
    if name is not None:
        if files is None:
            raise RuntimeError(f"the task refers to the file {name} and no scheduler is at hand")
        return await files.fetch(name)
    if isinstance(value, dict):
        return {key: await resolve(item, files) for key, item in value.items()}
    if isinstance(value, list):
        return [await resolve(item, files) for item in value]
    return value


def _is_file(value: Any) -> bool:
    return callable(getattr(value, "read", None)) and not isinstance(value, str | bytes)


async def store(value: Any, files: Files | None, path: str = "outputs") -> Any:
    """``value`` with every ``bytes`` and binary file object stored and replaced by its
    reference. Without ``files`` (none needed) it is returned unchanged."""
    if isinstance(value, bytes | bytearray | memoryview) or _is_file(value):
        if files is None:
            raise NotJsonable(path, "is a file, and no scheduler is at hand to store it")
        content = bytes(value) if isinstance(value, bytearray) else value
        return {REFERENCE_KEY: await files.store(content, path)}
    if isinstance(value, Mapping):
        if REFERENCE_KEY in value:
            raise NotJsonable(
                path,
                f"holds the key {REFERENCE_KEY!r}, which marks references to files; return the"
                " file's bytes (or a file object) instead, or rename the key",
            )
        return {key: await store(item, files, f"{path}[{key!r}]") for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [await store(item, files, f"{path}[{i}]") for i, item in enumerate(value)]
    return value


class FileClient:
    """RunnerService's artefact calls, on a channel of their own (large transfers do not
    share a connection with the heartbeats)."""

    def __init__(
        self,
        address: str,
        metadata: tuple[tuple[str, str], ...],
        options: list[tuple[str, Any]],
        *,
        inline_bytes: int,
        tls: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._address = address
        self._tls = tls
        self._metadata = metadata or None
        self._options = options
        self._inline_bytes = inline_bytes
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> pb_grpc.RunnerServiceAsyncStub:
        if self._channel is None:
            self._channel = (
                grpc.aio.secure_channel(self._address, self._tls, options=self._options)
                if self._tls is not None
                else grpc.aio.insecure_channel(self._address, options=self._options)
            )
        return pb_grpc.RunnerServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def read(
        self, attempt_id: str, name: str, opened: Callable[[IO[bytes]], None]
    ) -> FileContent:
        """The content of artefact ``name``, checked; a file object is handed to ``opened``
        (to be closed with the attempt) before it is filled."""
        call = self._stub().ReadArtifact(
            pb.ReadArtifactRequest(attempt_id=attempt_id, name=name), metadata=self._metadata
        )
        try:
            first = await call.read()
            if not isinstance(first, pb.ReadArtifactResponse) or not first.HasField("artifact"):
                raise OSError(f"the scheduler sent no artefact for {name}")
            artifact: apb.Artifact = first.artifact
            digest = hashlib.sha256()
            size = 0
            spool: IO[bytes] | None = None
            buffer = bytearray()
            if artifact.size_bytes > self._inline_bytes:
                spool = tempfile.TemporaryFile(prefix="heat-artifact-")  # noqa: SIM115
                opened(spool)
            while True:
                message = await call.read()
                if not isinstance(message, pb.ReadArtifactResponse):
                    break  # the end of the stream
                chunk = message.data
                digest.update(chunk)
                size += len(chunk)
                if spool is not None:
                    await asyncio.to_thread(spool.write, chunk)
                else:
                    buffer += chunk
        except grpc.aio.AioRpcError as error:
            raise OSError(
                f"reading {name} from the scheduler failed: {error.code().name}:"
                f" {error.details() or '(no details)'}"
            ) from None
        if size != artifact.size_bytes or digest.hexdigest() != artifact.sha256:
            raise OSError(
                f"{name} arrived damaged: {size} bytes with SHA-256 {digest.hexdigest()}, not"
                f" {artifact.size_bytes} bytes with SHA-256 {artifact.sha256}"
            )
        if spool is None:
            return bytes(buffer)
        await asyncio.to_thread(spool.seek, 0)
        return spool

    async def write(
        self, attempt_id: str, content: bytes | memoryview | IO[bytes], filename: str
    ) -> str:
        """Store ``content`` for the attempt; the artefact's name."""
        header = pb.ArtifactWrite(attempt_id=attempt_id, filename=filename[:255])
        if not _is_file(content):
            view = memoryview(content)  # type: ignore[arg-type]
            header.size_bytes = view.nbytes
            header.sha256 = hashlib.sha256(view).hexdigest()
        call = self._stub().WriteArtifact(_parts(header, content), metadata=self._metadata)
        try:
            response: pb.WriteArtifactResponse = await call
        except grpc.aio.AioRpcError as error:
            raise OSError(
                f"storing a file with the scheduler failed: {error.code().name}:"
                f" {error.details() or '(no details)'}"
            ) from None
        return response.artifact.name


async def _parts(
    header: pb.ArtifactWrite, content: bytes | memoryview | IO[bytes]
) -> AsyncIterator[pb.WriteArtifactRequest]:
    yield pb.WriteArtifactRequest(write=header)
    if _is_file(content):
        file: IO[bytes] = content  # type: ignore[assignment]
        while True:
            chunk = await asyncio.to_thread(file.read, CHUNK_BYTES)
            if not chunk:
                return
            if not isinstance(chunk, bytes | bytearray):
                raise TypeError("a file in the outputs must be opened in binary mode")
            yield pb.WriteArtifactRequest(data=bytes(chunk))
    view = memoryview(content)  # type: ignore[arg-type]
    for start in range(0, view.nbytes, CHUNK_BYTES):
        yield pb.WriteArtifactRequest(data=bytes(view[start : start + CHUNK_BYTES]))


class AttemptFiles:
    """One attempt's files: read and written under its lease; temporary files closed (and so
    deleted) when the attempt ends."""

    def __init__(self, client: FileClient, attempt_id: str) -> None:
        self._client = client
        self._attempt_id = attempt_id
        self._opened: list[IO[bytes]] = []

    async def fetch(self, name: str) -> FileContent:
        return await self._client.read(self._attempt_id, name, self._opened.append)

    async def store(self, content: bytes | memoryview | IO[bytes], path: str) -> str:
        name = getattr(content, "name", "") if _is_file(content) else ""
        filename = PurePath(name).name if isinstance(name, str) else ""
        return await self._client.write(self._attempt_id, content, filename)

    def close(self) -> None:
        for file in self._opened:
            with contextlib.suppress(OSError, ValueError):
                file.close()
        self._opened.clear()
