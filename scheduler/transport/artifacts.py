"""ArtifactService, and the artefact streams of RunnerService: proto messages <-> chunks.

A stream of chunks begins with one message that says what follows (an ArtifactUpload, an
ArtifactWrite; going out, the Artifact). Reading the rest is the service's pace: the next
message is asked for only once the previous chunk has been written, so gRPC's flow control
holds a fast sender back instead of our memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeAlias

import grpc
from heat.scheduler.v1 import artifact_pb2 as apb
from heat.scheduler.v1 import artifact_service_pb2 as pb
from heat.scheduler.v1 import artifact_service_pb2_grpc as pb_grpc
from heat.scheduler.v1 import runner_service_pb2 as rpb

from scheduler.domain.artifacts import Artifact, FileInput, Upload
from scheduler.domain.errors import FieldViolation, InvalidArgument
from scheduler.domain.limits import Limits
from scheduler.domain.paging import PageRequest
from scheduler.service.artifacts import Artifacts, Transfer
from scheduler.transport.access import caller
from scheduler.transport.convert import to_timestamp

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def artifact_message(artifact: Artifact, artifacts: Artifacts) -> apb.Artifact:
    return apb.Artifact(
        name=artifact.name,
        session=artifact.session,
        node_key=artifact.node_key,
        attempt=artifact.attempt,
        filename=artifact.filename,
        source=artifact.source,
        size_bytes=artifact.size_bytes,
        sha256=artifact.sha256,
        create_time=to_timestamp(artifact.create_time),
        expire_time=to_timestamp(artifact.expires(artifacts.settings.retention)),
    )


def file_input(message: apb.FileInput) -> FileInput:
    return FileInput(
        input=message.input,
        node_key=message.node_key,
        artifact=message.artifact if message.WhichOneof("source") == "artifact" else "",
        uri=message.uri if message.WhichOneof("source") == "uri" else "",
    )


@contextlib.asynccontextmanager
async def uploaded(
    requests: AsyncIterator[Any], header: str
) -> AsyncIterator[tuple[Any, AsyncIterator[bytes]]]:
    """A client stream of chunks: the first message's ``header`` part (InvalidArgument when it
    is something else) and the data of the messages after it. Whatever ends the block, the
    streams are closed, so no half-read generator is left for the garbage collector."""
    chunks = None
    try:
        first = await anext(requests, None)
        if first is None or first.WhichOneof("part") != header:
            raise InvalidArgument(
                [FieldViolation(header, f"the first message must carry the {header}")]
            )
        chunks = _chunks(requests, header)
        yield getattr(first, header), chunks
    finally:
        for stream in (chunks, requests):
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()


async def _chunks(requests: AsyncIterator[Any], header: str) -> AsyncIterator[bytes]:
    """The data of every message after the first, until the caller half-closes."""
    async for request in requests:
        if request.WhichOneof("part") != "data":
            raise InvalidArgument(
                [FieldViolation(header, f"only the first message carries the {header}")]
            )
        if request.data:
            yield request.data


class ArtifactServicer(pb_grpc.ArtifactServiceServicer):
    def __init__(self, artifacts: Artifacts, limits: Limits) -> None:
        self._artifacts = artifacts
        self._limits = limits

    async def UploadArtifact(
        self, request_iterator: AsyncIterator[pb.UploadArtifactRequest], context: Context
    ) -> pb.UploadArtifactResponse:
        async with uploaded(request_iterator, "upload") as (header, chunks):
            upload = Upload(header.filename, header.size_bytes, header.sha256)
            stored = await self._artifacts.upload(upload, chunks, caller())
        return pb.UploadArtifactResponse(artifact=artifact_message(stored, self._artifacts))

    async def GetArtifact(
        self, request: pb.GetArtifactRequest, context: Context
    ) -> pb.GetArtifactResponse:
        found = await self._artifacts.get(request.name)
        return pb.GetArtifactResponse(artifact=artifact_message(found, self._artifacts))

    async def ListArtifacts(
        self, request: pb.ListArtifactsRequest, context: Context
    ) -> pb.ListArtifactsResponse:
        page = await self._artifacts.list(
            request.session, PageRequest.parse(request.page_size, request.page_token, self._limits)
        )
        return pb.ListArtifactsResponse(
            artifacts=[artifact_message(a, self._artifacts) for a in page.items],
            next_page_token=page.next_token,
        )

    async def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest, context: Context
    ) -> AsyncIterator[pb.DownloadArtifactResponse]:
        transfer = await self._artifacts.download(request.name)
        async with contextlib.aclosing(transfer.chunks) as chunks:  # closed if cut short
            yield pb.DownloadArtifactResponse(
                artifact=artifact_message(transfer.artifact, self._artifacts)
            )
            async for chunk in chunks:
                yield pb.DownloadArtifactResponse(data=chunk)


async def read_messages(
    transfer: Transfer, artifacts: Artifacts
) -> AsyncGenerator[rpb.ReadArtifactResponse, None]:
    """RunnerService.ReadArtifact's messages: the artefact, then its chunks."""
    async with contextlib.aclosing(transfer.chunks) as chunks:  # closed if cut short
        yield rpb.ReadArtifactResponse(artifact=artifact_message(transfer.artifact, artifacts))
        async for chunk in chunks:
            yield rpb.ReadArtifactResponse(data=chunk)
