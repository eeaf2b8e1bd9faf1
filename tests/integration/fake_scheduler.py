"""A fake RunnerService for heat_runtime's tests: a real grpc.aio server on loopback.

The fake keeps what the runtime sent (claim starts, credits, heartbeats, results, metadata),
pushes tasks as credits allow, answers heartbeats and results, and can push heartbeat
responses or drain requests at any time. It speaks the first version of the protocol unless
given a ``grant``: then it answers a ClaimStart that asks with that ClaimStarted, pushes tasks
in batches, takes credits back with results and answers batches of outcomes in one message.
Its files are a dict: ``files[name]`` is served by ReadArtifact (with ``digests[name]`` as the
SHA-256 it claims, when set) and written by WriteArtifact.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import grpc.aio
from google.protobuf import timestamp_pb2
from heat.scheduler.v1 import artifact_pb2 as apb
from heat.scheduler.v1 import runner_service_pb2 as pb
from heat.scheduler.v1 import runner_service_pb2_grpc as pb_grpc
from heat_runtime import HeatRuntime
from heat_runtime._config import RuntimeSettings
from heat_runtime._values import to_struct, to_value

SECRET = "heatrc_s3cret"
TEMPLATE = "probe"


# --- the fake scheduler ------------------------------------------------------------------------


class FakeScheduler(pb_grpc.RunnerServiceServicer):
    """Just enough of the scheduler's side of RunnerService to drive a runtime."""

    def __init__(self, credential: str = SECRET) -> None:
        self.credential = credential
        self.metadata: dict[str, list[dict[str, str]]] = {}
        self.starts: list[pb.ClaimStart] = []
        self.grants: list[int] = []
        self.claims_half_closed = 0
        self.heartbeats: list[pb.HeartbeatRequest] = []
        self.results: list[pb.PostResultRequest] = []
        self.acknowledge = True
        self.verdict: pb.ResultStatus.ValueType = pb.RESULT_STATUS_ACCEPTED
        self.heartbeat_interval: float | None = None
        self.credits = 0
        self.queue: list[pb.Task] = []
        self.files: dict[str, bytes] = {}
        self.digests: dict[str, str] = {}
        self.grant: pb.ClaimStarted | None = None  # None: the first version of the protocol
        self.granted = pb.ClaimStarted()  # what the current claim stream was granted
        self.result_messages: list[pb.PostResultRequest] = []  # as sent (results: each outcome)
        self._claims: asyncio.Queue[pb.ClaimTaskResponse | None] | None = None
        self._heartbeats: asyncio.Queue[pb.HeartbeatResponse | None] | None = None
        self._changed = asyncio.Event()

    # What tests do.

    def push(self, task: pb.Task) -> None:
        self.queue.append(task)
        self._pump()

    def send_heartbeat(self, response: pb.HeartbeatResponse) -> None:
        assert self._heartbeats is not None, "no heartbeat stream open"
        self._heartbeats.put_nowait(response)

    def send_drain(self, request: pb.DrainRequest) -> None:
        assert self._claims is not None, "no claim stream open"
        self._claims.put_nowait(pb.ClaimTaskResponse(drain=request))

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    # The service.

    def _pump(self) -> None:
        batch = max(1, self.granted.max_tasks_per_message)
        while self.credits > 0 and self.queue and self._claims is not None:
            if batch == 1:
                self.credits -= 1
                self._claims.put_nowait(pb.ClaimTaskResponse(task=self.queue.pop(0)))
                continue
            count = min(batch, self.credits, len(self.queue))
            tasks, self.queue = self.queue[:count], self.queue[count:]
            self.credits -= count
            self._claims.put_nowait(pb.ClaimTaskResponse(tasks=pb.TaskBatch(tasks=tasks)))

    def _changed_now(self) -> None:
        self._changed.set()

    async def _authorize(self, stream: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        metadata = {k: str(v) for k, v in context.invocation_metadata() or ()}
        self.metadata.setdefault(stream, []).append(metadata)
        self._changed_now()
        if self.credential and metadata.get("authorization") != f"Bearer {self.credential}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown runner credential")

    async def _serve(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        outgoing: asyncio.Queue[Any],
        read: Callable[[], Any],
    ) -> None:
        reader = asyncio.create_task(read())
        try:
            while (message := await outgoing.get()) is not None:
                await context.write(message)
        finally:
            reader.cancel()

    async def ClaimTask(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        await self._authorize("ClaimTask", context)
        outgoing: asyncio.Queue[pb.ClaimTaskResponse | None] = asyncio.Queue()
        self._claims, self.credits = outgoing, 0
        self.granted = pb.ClaimStarted()

        async def read() -> None:
            async for request in request_iterator:
                if request.HasField("start"):
                    self.starts.append(request.start)
                    self.credits = request.start.credits
                    start = request.start
                    asks = start.max_tasks_per_message > 1 or start.credits_with_results
                    if self.grant is not None and asks:
                        self.granted = self.grant
                        outgoing.put_nowait(pb.ClaimTaskResponse(started=self.grant))
                else:
                    self.grants.append(request.credit.credits)
                    self.credits += request.credit.credits
                self._pump()
                self._changed_now()
            self.claims_half_closed += 1
            self._changed_now()
            outgoing.put_nowait(None)

        await self._serve(context, outgoing, read)

    async def Heartbeat(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        await self._authorize("Heartbeat", context)
        outgoing: asyncio.Queue[pb.HeartbeatResponse | None] = asyncio.Queue()
        self._heartbeats = outgoing

        async def read() -> None:
            async for request in request_iterator:
                self.heartbeats.append(request)
                response = pb.HeartbeatResponse()
                if self.heartbeat_interval is not None:
                    response.heartbeat_interval.FromTimedelta(
                        timedelta(seconds=self.heartbeat_interval)
                    )
                outgoing.put_nowait(response)
                self._changed_now()
            outgoing.put_nowait(None)

        await self._serve(context, outgoing, read)

    async def PostResult(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        await self._authorize("PostResult", context)
        outgoing: asyncio.Queue[pb.PostResultResponse | None] = asyncio.Queue()

        def verdict(request: pb.PostResultRequest) -> pb.PostResultResponse:
            return pb.PostResultResponse(
                attempt_id=request.attempt_id,
                status=self.verdict,
                message="" if self.verdict == pb.RESULT_STATUS_ACCEPTED else "stale",
            )

        async def read() -> None:
            async for request in request_iterator:
                self.result_messages.append(request)
                entries = list(request.batch) or [request]
                self.results += entries
                if self.granted.credits_with_results:
                    self.credits += sum(e.WhichOneof("outcome") != "release" for e in entries)
                    self._pump()
                if self.acknowledge:
                    if request.batch:
                        answer = pb.PostResultResponse(batch=[verdict(e) for e in entries])
                    else:
                        answer = verdict(request)
                    outgoing.put_nowait(answer)
                self._changed_now()
            outgoing.put_nowait(None)

        await self._serve(context, outgoing, read)

    async def ReadArtifact(self, request: Any, context: Any) -> AsyncIterator[Any]:
        await self._authorize("ReadArtifact", context)
        data = self.files.get(request.name)
        if data is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no {request.name}")
            return
        digest = self.digests.get(request.name) or hashlib.sha256(data).hexdigest()
        artifact = apb.Artifact(name=request.name, size_bytes=len(data), sha256=digest)
        yield pb.ReadArtifactResponse(artifact=artifact)
        for start in range(0, len(data), 1000):
            yield pb.ReadArtifactResponse(data=data[start : start + 1000])

    async def WriteArtifact(self, request_iterator: Any, context: Any) -> Any:
        await self._authorize("WriteArtifact", context)
        data = bytearray()
        async for request in request_iterator:
            data += request.data
        name = f"artifacts/{len(self.files):032x}"
        self.files[name] = bytes(data)
        return pb.WriteArtifactResponse(artifact=apb.Artifact(name=name, size_bytes=len(data)))


class Server:
    """A grpc.aio server holding a FakeScheduler; can stop and start again on its port."""

    def __init__(self) -> None:
        self.port = 0
        self.fake = FakeScheduler()
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, fake: FakeScheduler | None = None, *, service: bool = True) -> None:
        self.fake = fake or self.fake
        self._server = grpc.aio.server()
        if service:
            pb_grpc.add_RunnerServiceServicer_to_server(self.fake, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None


def settings(server: Server) -> RuntimeSettings:
    """Quick timings, the fake's address and credential."""
    return {
        "runner": "csv-runner",
        "address": server.address,
        "credential": SECRET,
        "instance_id": "runner-0",
        "capacity": 2,
        "heartbeat_interval": 0.2,
        "reconnect_initial": 0.05,
        "reconnect_max": 0.2,
        "drain_timeout": 5.0,
        "ack_grace": 2.0,
    }


@contextlib.asynccontextmanager
async def serving(runtime: HeatRuntime) -> AsyncIterator[asyncio.Task[int]]:
    """serve() in the background; drained (and checked to exit 0) at the end of the block."""
    served = asyncio.create_task(runtime.serve(handle_signals=False))
    try:
        yield served
        if not served.done():
            runtime.drain("test over")
        assert await asyncio.wait_for(served, 5) == 0
    finally:
        if not served.done():
            served.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await served


def task(
    attempt_id: str = "a-1",
    config: Mapping[str, Any] | None = None,
    *,
    template: str = TEMPLATE,
    inputs: Mapping[str, Any] | None = None,
    deadline_in: float | None = None,
) -> pb.Task:
    message = pb.Task(
        attempt_id=attempt_id,
        session="sessions/s-1",
        node_key="q1",
        node_template=template,
        attempt=1,
        config=to_struct(config or {}),
        parameters=to_struct({"quarter": 1, "label": "Q1"}),
        trace_context={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    for key, value in (inputs or {}).items():
        message.inputs[key].CopyFrom(to_value(value))
    if deadline_in is not None:
        message.attempt_deadline.FromDatetime(datetime.now(UTC) + timedelta(seconds=deadline_in))
    return message


def timestamp_in(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC) + timedelta(seconds=seconds))
    return stamp
