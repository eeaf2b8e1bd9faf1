"""RunnerService: the three streams of the runner protocol, through its door."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc
from heat.scheduler.v1 import runner_service_pb2 as pb
from heat.scheduler.v1 import runner_service_pb2_grpc as pb_grpc

from scheduler.domain.artifacts import Upload
from scheduler.domain.errors import FieldViolation, InvalidArgument, raise_if
from scheduler.domain.limits import (
    INSTANCE_ID_MAX_LENGTH,
    MAX_CREDITS,
    MAX_HEARTBEAT_ATTEMPTS,
    MAX_PENDING_RESULTS,
    MAX_RESULT_BATCH,
    MAX_TEMPLATES_PER_CLAIM,
)
from scheduler.domain.runner_protocol import ClaimedTask, Drain, HeartbeatReply, stream_terms
from scheduler.domain.validation import check_dns_label, check_text
from scheduler.domain.verdicts import Reply
from scheduler.service.artifacts import Artifacts
from scheduler.service.runner_protocol import RunnerProtocol
from scheduler.transport import convert_sessions as convert
from scheduler.transport.access import runner_caller
from scheduler.transport.artifacts import artifact_message, read_messages, uploaded

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
_END = object()


def check_attempt_id(value: str, field: str) -> list[FieldViolation]:
    try:
        uuid.UUID(value)
    except ValueError:
        return [FieldViolation(field, f"{value[:64]!r} is not an attempt id from a Task")]
    return []


async def _next(iterator: AsyncIterator[T]) -> T | None:
    with contextlib.suppress(StopAsyncIteration):
        return await anext(iterator)
    return None


class RunnerServicer(pb_grpc.RunnerServiceServicer):
    def __init__(self, protocol: RunnerProtocol, artifacts: Artifacts) -> None:
        self._protocol = protocol
        self._artifacts = artifacts

    async def _runner(self, context: Context) -> str:
        """The Runner of the call's credential (the access interceptor authenticated it)."""
        return runner_caller()

    async def ClaimTask(
        self, request_iterator: AsyncIterator[pb.ClaimTaskRequest], context: Context
    ) -> AsyncIterator[pb.ClaimTaskResponse]:
        runner = await self._runner(context)
        first = await _next(request_iterator)
        if first is None or first.WhichOneof("request") != "start":
            raise InvalidArgument(
                [FieldViolation("start", "the first message must be a ClaimStart")]
            )
        start = first.start
        violations = check_text(
            start.instance_id, "start.instance_id", max_len=INSTANCE_ID_MAX_LENGTH
        )
        if not start.instance_id:
            violations.append(FieldViolation("start.instance_id", "is required: a unique id"))
        if not 0 <= start.credits <= MAX_CREDITS:
            violations.append(FieldViolation("start.credits", f"must be 0 to {MAX_CREDITS}"))
        if len(start.node_templates) > MAX_TEMPLATES_PER_CLAIM:
            violations.append(
                FieldViolation(
                    "start.node_templates", f"names at most {MAX_TEMPLATES_PER_CLAIM} templates"
                )
            )
        else:
            for i, name in enumerate(start.node_templates):
                violations += check_dns_label(
                    name, f"start.node_templates[{i}]", what="node template name"
                )
        if not 0 <= start.max_tasks_per_message <= MAX_CREDITS:
            violations.append(
                FieldViolation("start.max_tasks_per_message", f"must be 0 to {MAX_CREDITS}")
            )
        raise_if(violations)
        protocol = self._protocol
        terms = stream_terms(
            start.max_tasks_per_message,
            start.credits_with_results,
            max_push_batch=protocol.settings.max_push_batch,
        )
        instance = protocol.connect(
            runner,
            start.runner,
            start.instance_id,
            list(start.node_templates),
            start.credits,
            terms,
        )

        async def read_credits() -> None:
            try:
                async for request in request_iterator:
                    if request.WhichOneof("request") == "credit":
                        credits = request.credit.credits
                        if not 0 <= credits <= MAX_CREDITS:
                            raise InvalidArgument(
                                [FieldViolation("credit.credits", f"must be 0 to {MAX_CREDITS}")]
                            )
                        protocol.grant(instance, credits)
            finally:
                protocol.hang_up(instance)  # half-closed (or a bad credit): it stops claiming

        reader = asyncio.create_task(read_credits())
        sending: list[ClaimedTask] = []  # taken for the instance, maybe not received
        try:
            if terms.extended:
                yield pb.ClaimTaskResponse(
                    started=pb.ClaimStarted(
                        max_tasks_per_message=terms.max_batch,
                        credits_with_results=terms.credits_with_results,
                        result_batches=terms.result_batches,
                    )
                )
            async for item in protocol.stream(instance):
                if isinstance(item, Drain):
                    yield pb.ClaimTaskResponse(drain=convert.drain_message(item))
                elif terms.max_batch > 1:
                    sending = item
                    yield pb.ClaimTaskResponse(
                        tasks=pb.TaskBatch(tasks=[convert.task_message(t) for t in item])
                    )
                else:
                    for i, task in enumerate(item):
                        sending = item[i:]
                        yield pb.ClaimTaskResponse(task=convert.task_message(task))
                sending = []
            reader.result()  # a bad credit message ends the stream with its error
        finally:
            reader.cancel()
            protocol.disconnect(instance, unsent=sending)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def Heartbeat(
        self, request_iterator: AsyncIterator[pb.HeartbeatRequest], context: Context
    ) -> AsyncIterator[pb.HeartbeatResponse]:
        runner = await self._runner(context)
        out: asyncio.Queue[HeartbeatReply | object] = asyncio.Queue()
        detach: dict[str, Callable[[], None]] = {}

        async def read_attaching() -> None:
            async for request in request_iterator:
                violations = check_text(
                    request.instance_id, "instance_id", max_len=INSTANCE_ID_MAX_LENGTH
                )
                if len(request.attempt_ids) > MAX_HEARTBEAT_ATTEMPTS:
                    violations.append(
                        FieldViolation(
                            "attempt_ids",
                            f"has {len(request.attempt_ids)} ids; a heartbeat names at most"
                            f" {MAX_HEARTBEAT_ATTEMPTS}",
                        )
                    )
                else:
                    for i, attempt_id in enumerate(request.attempt_ids):
                        violations += check_attempt_id(attempt_id, f"attempt_ids[{i}]")
                raise_if(violations[:12])
                # The heartbeat is answered (and the instance's ownership checked) before its
                # stream becomes the one pushes for the instance go to.
                reply = await self._protocol.heartbeat(
                    runner, request.instance_id, list(request.attempt_ids)
                )
                if request.instance_id not in detach:
                    detach[request.instance_id] = self._protocol.attach_heartbeats(
                        request.instance_id, out.put_nowait
                    )
                out.put_nowait(reply)
            out.put_nowait(_END)

        try:
            # Closed with the stream, not whenever it is collected: its helpers end with it.
            async with contextlib.aclosing(_drain_queue(out, read_attaching())) as replies:
                async for item in replies:
                    assert isinstance(item, HeartbeatReply)
                    yield convert.heartbeat_message(item)
        finally:
            for undo in detach.values():
                undo()

    async def PostResult(
        self, request_iterator: AsyncIterator[pb.PostResultRequest], context: Context
    ) -> AsyncIterator[pb.PostResultResponse]:
        runner = await self._runner(context)
        out: asyncio.Queue[pb.PostResultResponse | object] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()
        # Answers not yet sent, the ones in the queue included: the reader waits past the bound.
        room = asyncio.Semaphore(MAX_PENDING_RESULTS)

        async def answer(request: pb.PostResultRequest) -> None:
            try:
                if request.batch:
                    replies = await self._protocol.post_many(
                        runner, [convert.outcome(r) for r in request.batch]
                    )
                    response = pb.PostResultResponse(
                        batch=[
                            _verdict(r.attempt_id, reply)
                            for r, reply in zip(request.batch, replies, strict=True)
                        ]
                    )
                else:
                    reply = await self._protocol.post(runner, convert.outcome(request))
                    response = _verdict(request.attempt_id, reply)
            except Exception as exc:
                out.put_nowait(exc)
                return
            out.put_nowait(response)

        async def read() -> None:
            async for request in request_iterator:
                raise_if(check_posted(request))
                await room.acquire()
                task = asyncio.create_task(answer(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
            out.put_nowait(_END)

        try:
            async with contextlib.aclosing(_drain_queue(out, read())) as replies:
                async for item in replies:
                    room.release()
                    if isinstance(item, BaseException):
                        raise item
                    assert isinstance(item, pb.PostResultResponse)
                    yield item
        finally:
            # The call ended (or was cancelled): outcomes still being settled are not dropped
            # half-way (settlement runs on in the batcher), but nobody waits for their answer.
            for task in pending:
                task.cancel()

    async def ReadArtifact(
        self, request: pb.ReadArtifactRequest, context: Context
    ) -> AsyncIterator[pb.ReadArtifactResponse]:
        runner = await self._runner(context)
        raise_if(check_attempt_id(request.attempt_id, "attempt_id"))
        transfer = await self._artifacts.read_for(runner, request.attempt_id, request.name)
        async with contextlib.aclosing(read_messages(transfer, self._artifacts)) as messages:
            async for message in messages:
                yield message

    async def WriteArtifact(
        self, request_iterator: AsyncIterator[pb.WriteArtifactRequest], context: Context
    ) -> pb.WriteArtifactResponse:
        runner = await self._runner(context)
        async with uploaded(request_iterator, "write") as (header, chunks):
            raise_if(check_attempt_id(header.attempt_id, "write.attempt_id"))
            stored = await self._artifacts.write_for(
                runner,
                header.attempt_id,
                Upload(header.filename, header.size_bytes, header.sha256),
                chunks,
            )
        return pb.WriteArtifactResponse(artifact=artifact_message(stored, self._artifacts))


def check_posted(request: pb.PostResultRequest) -> list[FieldViolation]:
    """An outcome, or a batch of them (each an outcome, with no batch of its own)."""
    if not request.batch:
        return _check_outcome(request, "")
    violations: list[FieldViolation] = []
    if request.attempt_id or request.WhichOneof("outcome") is not None:
        violations.append(
            FieldViolation("batch", "a batch leaves attempt_id and outcome of its own empty")
        )
    if len(request.batch) > MAX_RESULT_BATCH:
        violations.append(
            FieldViolation(
                "batch", f"has {len(request.batch)} outcomes; at most {MAX_RESULT_BATCH}"
            )
        )
        return violations
    for i, entry in enumerate(request.batch):
        violations += _check_outcome(entry, f"batch[{i}].")
        if entry.batch:
            violations.append(FieldViolation(f"batch[{i}].batch", "a batch is not nested"))
    return violations


def _check_outcome(request: pb.PostResultRequest, prefix: str) -> list[FieldViolation]:
    violations = check_attempt_id(request.attempt_id, f"{prefix}attempt_id")
    if request.WhichOneof("outcome") is None:
        violations.append(
            FieldViolation(f"{prefix}outcome", "is required: success, failure or release")
        )
    return violations


def _verdict(attempt_id: str, reply: Reply) -> pb.PostResultResponse:
    return pb.PostResultResponse(
        attempt_id=attempt_id, status=convert.RESULT_STATUSES[reply.status], message=reply.message
    )


async def _drain_queue(
    queue: asyncio.Queue[Any], producer: Awaitable[None]
) -> AsyncGenerator[Any, None]:
    """Items of ``queue`` until the producer puts the end marker; its errors end the stream."""
    task = asyncio.ensure_future(producer)
    getter: asyncio.Task[Any] | None = None
    try:
        while True:
            getter = asyncio.create_task(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                item = getter.result()
                getter = None
                if item is _END:
                    return
                yield item
                continue
            getter.cancel()
            getter = None
            task.result()  # raises the producer's error
            while not queue.empty():
                item = queue.get_nowait()
                if item is _END:
                    return
                yield item
            return
    finally:
        # Cancelled with the call: a getter left waiting would take an item off the queue
        # for nobody, and be destroyed pending.
        if getter is not None:
            getter.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
